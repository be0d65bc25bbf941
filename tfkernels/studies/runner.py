"""The chunked runner that every study runs on: chunks, ordered merge, progress, threads or Dask.

A study plugs in with two things:

* a **chunk function** ``chunk_fn(chunk_start, chunk_len, *shared)`` that computes the
  statistic of trajectories ``chunk_start … chunk_start + chunk_len − 1``. It must be a
  pure function of its arguments (the trajectory indices say which random numbers the
  study draws; nothing may depend on the thread count, the process or the order in
  which chunks run), and a module-level function, so that Dask can ship it by name;
* a **statistic** returned by the chunk function, with ``merge(other)`` returning the
  statistic of ``self``'s trajectories followed by ``other``'s. ``merge`` need be
  neither commutative nor associative in its last bits: the runner always merges in
  chunk order, ``((s_0 · s_1) · s_2) · …``, so the result is bit-identical whatever
  ran the chunks.

:func:`run_chunks` cuts ``range(n_trajectories)`` into :func:`chunk_bounds`, runs the
chunks on this machine (one after another, each with ``n_threads`` Numba threads) or,
given a ``dask.distributed.Client``, as tasks on a cluster (:mod:`.distributed`), and
merges the results with an :class:`OrderedMerge`. A run may start from a merged prefix
(``resume``) and reports each merge to ``on_merge``: the hooks a checkpoint needs.
"""

import dataclasses
import time

from .. import _validate as v
from .. import threads


def check_client(client):
    """Return ``client`` if it is None or a running ``dask.distributed.Client``.

    Imports no dask (see :func:`.distributed.check_client`).

    Raises
    ------
    NotImplementedError
        ``client`` is not a ``dask.distributed.Client``.
    ValueError
        ``client`` is closed.
    """
    if client is None:
        return None
    from . import distributed

    return distributed.check_client(client)


def chunk_bounds(n_trajectories, chunk_size):
    """``(start, length)`` of every chunk of ``range(n_trajectories)``, in order.

    All chunks have ``chunk_size`` trajectories except the last, which holds the rest.
    """
    return [(s, min(chunk_size, n_trajectories - s)) for s in range(0, n_trajectories, chunk_size)]


class OrderedMerge:
    """Merge per-chunk statistics strictly in chunk order, each chunk exactly once.

    Results that arrive early wait in a buffer until every earlier chunk is merged.

    Parameters
    ----------
    first : int
        Index of the first chunk to take (0, or the chunk a resumed run starts at).
    stats : statistic or None
        Merge of chunks ``0 … first − 1`` (None when ``first`` is 0).
    on_merge : callable, optional
        Called as ``on_merge(next, stats)`` after each chunk merged in order.

    Attributes
    ----------
    stats : statistic or None
        Merge of chunks ``0 … next − 1``.
    next : int
        Index of the next chunk to merge (the merge frontier).
    buffer : dict
        Chunk index → statistic, for chunks that arrived before the frontier.
    max_held : int
        Largest number of chunk results held at once (buffered, or just received).
    """

    def __init__(self, first=0, stats=None, on_merge=None):
        self.stats = stats
        self.next = first
        self.buffer = {}
        self.max_held = 0
        self._on_merge = on_merge

    def add(self, index, part):
        """Take chunk ``index``'s statistic; return False if it was already taken."""
        if index < self.next or index in self.buffer:
            return False
        self.buffer[index] = part
        self.max_held = max(self.max_held, len(self.buffer))
        while self.next in self.buffer:
            part = self.buffer.pop(self.next)
            self.stats = part if self.stats is None else self.stats.merge(part)
            self.next += 1
            if self._on_merge is not None:
                self._on_merge(self.next, self.stats)
        return True


@dataclasses.dataclass
class RunResult:
    """What :func:`run_chunks` returns.

    Attributes
    ----------
    stats : statistic
        Merge, in chunk order, of every chunk's statistic (the resumed prefix included).
    n_chunks : int
        Chunks of the whole run (``len(chunk_bounds(n_trajectories, chunk_size))``).
    n_run : int
        Chunks computed by this call (``n_chunks`` minus the resumed prefix).
    loop_time : float
        Seconds from the start of the chunk loop (on Dask: before the scatter) to the
        last merge.
    cluster : dict or None
        On Dask: scheduler address, workers, threads, ``max_in_flight`` (the window)
        and ``max_results_held`` (see :func:`.distributed.run_on_client`); None locally.
    """

    stats: object
    n_chunks: int
    n_run: int
    loop_time: float
    cluster: dict = None


def run_chunks(
    chunk_fn,
    n_trajectories,
    chunk_size,
    *,
    shared=(),
    client=None,
    n_threads=None,
    progress=False,
    desc="chunks",
    resume=None,
    on_merge=None,
):
    """Run ``chunk_fn`` on every chunk of ``range(n_trajectories)`` and merge in order.

    Parameters
    ----------
    chunk_fn : callable
        ``chunk_fn(chunk_start, chunk_len, *shared)`` → a statistic with ``merge``; a
        pure, module-level function (see the module docstring).
    n_trajectories, chunk_size : int
        The chunks are ``chunk_bounds(n_trajectories, chunk_size)``; both >= 1.
    shared : tuple
        Inputs every chunk takes (parameters, configuration), passed after the chunk's
        bounds. On Dask each is scattered once to every worker (``broadcast=True``).
    client : dask.distributed.Client, optional
        Run the chunks as tasks on this cluster (see :mod:`.distributed`); None runs
        them here, one after another, and does not import dask.
    n_threads : int, optional
        Numba threads of each chunk (locally: all by default; on Dask: the worker's
        thread count by default, capped at its Numba threads).
    progress : bool
        Show a tqdm bar over trajectories that advances by a chunk's length when its
        result is taken.
    desc : str
        Label of the progress bar.
    resume : (int, statistic), optional
        ``(next_chunk, stats)``: the merge of chunks ``0 … next_chunk − 1`` from an
        earlier run with the same inputs and chunk size; only the remaining chunks run,
        and the result is bit-identical to an uninterrupted run.
    on_merge : callable, optional
        Called as ``on_merge(next_chunk, stats)`` after each chunk merged in order (on
        the calling thread), e.g. to write a checkpoint that ``resume`` can start from.

    Returns
    -------
    RunResult

    Raises
    ------
    TypeError, ValueError
        On invalid arguments, naming the argument.
    NotImplementedError
        ``client`` is not a ``dask.distributed.Client``.
    Exception
        Whatever a chunk raised (on Dask after cancelling the chunks still pending).
    """
    n_trajectories = v.check_int("n_trajectories", n_trajectories, minimum=1)
    chunk_size = v.check_int("chunk_size", chunk_size, minimum=1)
    if not callable(chunk_fn):
        raise TypeError(f"`chunk_fn` must be callable, got {chunk_fn!r}")
    check_client(client)
    shared = tuple(shared)
    bounds = chunk_bounds(n_trajectories, chunk_size)
    merger = _resumed_merge(resume, len(bounds), on_merge)
    first = merger.next
    done = sum(n for _, n in bounds[:first])
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    with tqdm(
        total=n_trajectories,
        initial=done,
        unit="traj",
        unit_scale=True,
        disable=not progress,
        desc=desc,
        smoothing=0.1,
    ) as bar:
        if client is None:
            with threads.threads(n_threads):
                for i in range(first, len(bounds)):
                    merger.add(i, chunk_fn(*bounds[i], *shared))
                    bar.update(bounds[i][1])
            cluster = None
        else:
            from . import distributed

            cluster = distributed.run_on_client(
                client, chunk_fn, shared, bounds, merger, bar.update, n_threads
            )
    if merger.next != len(bounds) or merger.buffer:
        raise RuntimeError(
            f"merged {merger.next} of {len(bounds)} chunks; this is a bug "
            "in tfkernels.studies.runner"
        )
    return RunResult(
        stats=merger.stats,
        n_chunks=len(bounds),
        n_run=len(bounds) - first,
        loop_time=time.perf_counter() - t0,
        cluster=cluster,
    )


def _resumed_merge(resume, n_chunks, on_merge):
    """The :class:`OrderedMerge` a run starts from: empty, or ``resume``'s prefix."""
    if resume is None:
        return OrderedMerge(on_merge=on_merge)
    try:
        first, stats = resume
    except (TypeError, ValueError):
        raise TypeError(f"`resume` must be a pair (next_chunk, stats), got {resume!r}") from None
    first = v.check_int("resume", first, minimum=0)
    if first > n_chunks:
        raise ValueError(f"`resume` starts at chunk {first} but the run has {n_chunks}")
    if (stats is None) != (first == 0):
        raise ValueError(
            f"`resume` = ({first}, {type(stats).__name__}): the statistics "
            "of the chunks before next_chunk are needed, and only those"
        )
    return OrderedMerge(first, stats, on_merge)
