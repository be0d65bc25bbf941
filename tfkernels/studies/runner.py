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
(``resume``) and reports each merge to ``on_merge``.

Every study on the runner gets two more things:

* **checkpoints** (``checkpoint=PATH``, :mod:`.checkpoint`): the merged statistics and
  the next chunk index are saved atomically every ``CHECKPOINT_EVERY_S`` seconds, at
  the end and when the run stops; a run with the same path resumes from the file,
  bit-identical to an uninterrupted run, and refuses a file written with another
  configuration (chunk function, ``n_trajectories``, ``chunk_size``, the shared
  inputs' SHA-256 and the study's ``checkpoint_info``);
* **Ctrl-C at a chunk boundary**: locally, a first Ctrl-C (SIGINT) lets the running
  chunk finish and stops before the next (a second one gives the running chunk up:
  it raises as soon as the main thread is back from the compiled kernel); on Dask the
  run stops at once, keeping the chunks merged and cancelling those in flight. Either
  way :class:`StudyInterrupted` (a ``KeyboardInterrupt``) is raised with the partial
  :class:`RunResult`, after the checkpoint (if any) is written. How long the first
  Ctrl-C waits is the time of one chunk: the chunk size decides it
  (``config.CHUNK_SIZE`` is chosen so that a chunk of the default study takes a
  second or less).
"""

import contextlib
import dataclasses
import signal
import threading
import time

from .. import _validate as v
from .. import threads
from . import checkpoint as ckpt

#: Seconds between two checkpoint writes of a run; it also writes when it ends or stops.
CHECKPOINT_EVERY_S = 5.0
#: Keys of a checkpoint's configuration that the runner sets (:func:`run_config`).
CONFIG_KEYS = ("chunk_fn", "n_trajectories", "chunk_size", "shared_sha256")


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
    next_chunk : int
        Chunks merged into ``stats`` (``n_chunks`` unless the run was interrupted).
    n_done : int
        Trajectories merged into ``stats``.
    n_resumed : int
        Of those, the trajectories taken from ``resume`` or the checkpoint.
    checkpoint : str or None
        The checkpoint file of the run.
    """

    stats: object
    n_chunks: int
    n_run: int
    loop_time: float
    cluster: dict = None
    next_chunk: int = None
    n_done: int = None
    n_resumed: int = 0
    checkpoint: str = None

    @property
    def partial(self):
        """Whether chunks are missing from ``stats`` (the run was interrupted)."""
        return self.next_chunk != self.n_chunks


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a study; ``result`` holds what was merged before it.

    It is a ``KeyboardInterrupt``, so code that does not look for it stops as on any
    Ctrl-C. :func:`run_chunks` raises it with its partial :class:`RunResult` (whose
    ``stats`` is None when no chunk was merged), after writing the checkpoint; a study
    catches it and raises it again with its own partial result.

    Attributes
    ----------
    result : RunResult, a study's result, or None
        The statistics merged before the interrupt.
    """

    def __init__(self, result=None, message="study interrupted"):
        super().__init__(message)
        self.result = result


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
    checkpoint=None,
    checkpoint_info=None,
    checkpoint_every=None,
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
        the calling thread).
    checkpoint : str or os.PathLike, optional
        A file that holds the run's merged statistics and next chunk index
        (:mod:`.checkpoint`): written atomically every ``checkpoint_every`` seconds, at
        the end and when the run stops (Ctrl-C or an error). If it exists, the run
        resumes from it (only the remaining chunks run; bit-identical to an
        uninterrupted run); a file written with another configuration is refused.
        The file is kept at the end (running again returns the same statistics
        without running a chunk). Not together with ``resume``. The statistic must be
        a dataclass of arrays, numbers, strings and lists of them
        (:func:`.checkpoint.encode`).
    checkpoint_info : dict, optional
        The study's description of its configuration (JSON-ready values), saved in
        the checkpoint and compared with the file's, beside what the runner compares
        itself: the chunk function, ``n_trajectories``, ``chunk_size`` and the SHA-256
        of ``shared`` (:func:`.checkpoint.fingerprint`).
    checkpoint_every : float, optional
        Seconds between two checkpoint writes (default ``CHECKPOINT_EVERY_S``; 0:
        after every chunk).

    Returns
    -------
    RunResult

    Raises
    ------
    TypeError, ValueError
        On invalid arguments, naming the argument; ``checkpoint`` exists but is not a
        checkpoint, or was written by a run of another configuration (ValueError
        naming ``checkpoint`` and the keys that differ).
    NotImplementedError
        ``client`` is not a ``dask.distributed.Client``.
    StudyInterrupted
        Ctrl-C (or any ``KeyboardInterrupt``) stopped the run, at a chunk boundary
        (see the module docstring); its ``result`` is the partial :class:`RunResult`.
    OSError
        The checkpoint could not be written.
    Exception
        Whatever a chunk raised (on Dask after cancelling the chunks still pending),
        after the checkpoint was written.
    """
    n_trajectories = v.check_int("n_trajectories", n_trajectories, minimum=1)
    chunk_size = v.check_int("chunk_size", chunk_size, minimum=1)
    if not callable(chunk_fn):
        raise TypeError(f"`chunk_fn` must be callable, got {chunk_fn!r}")
    check_client(client)
    shared = tuple(shared)
    bounds = chunk_bounds(n_trajectories, chunk_size)
    saver = None
    if checkpoint is not None:
        if resume is not None:
            raise ValueError("give `resume` or `checkpoint`, not both")
        config = run_config(chunk_fn, n_trajectories, chunk_size, shared, checkpoint_info)
        saver = _Checkpointer(checkpoint, config, bounds, checkpoint_every)
        resume = saver.load()
    elif checkpoint_info is not None or checkpoint_every is not None:
        raise ValueError("`checkpoint_info` and `checkpoint_every` need a `checkpoint`")
    frontier = _Frontier()
    merger = _resumed_merge(resume, len(bounds), frontier.hook(saver, on_merge))
    frontier.state = (merger.next, merger.stats)
    first = merger.next
    resumed = sum(n for _, n in bounds[:first])
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    cluster = None
    try:
        with (
            _deferred_interrupt(client is None) as stop,
            tqdm(
                total=n_trajectories,
                initial=resumed,
                unit="traj",
                unit_scale=True,
                disable=not progress,
                desc=desc,
                smoothing=0.1,
            ) as bar,
        ):
            if client is None:
                with threads.threads(n_threads):
                    for i in range(first, len(bounds)):
                        if stop.requested:
                            break
                        merger.add(i, chunk_fn(*bounds[i], *shared))
                        bar.update(bounds[i][1])
            else:
                from . import distributed

                cluster = distributed.run_on_client(
                    client, chunk_fn, shared, bounds, merger, bar.update, n_threads
                )
        interrupted = stop.requested
    except KeyboardInterrupt:
        interrupted = True
    except BaseException as err:
        if saver is not None:
            saver.flush(frontier, error=err)
        raise
    if saver is not None:
        saver.flush(frontier)
    result = RunResult(
        stats=frontier.stats,
        n_chunks=len(bounds),
        n_run=frontier.next - first,
        loop_time=time.perf_counter() - t0,
        cluster=cluster,
        next_chunk=frontier.next,
        n_done=sum(n for _, n in bounds[: frontier.next]),
        n_resumed=resumed,
        checkpoint=None if saver is None else saver.path,
    )
    if interrupted:
        raise StudyInterrupted(result)
    if merger.next != len(bounds) or merger.buffer:
        raise RuntimeError(
            f"merged {merger.next} of {len(bounds)} chunks; this is a bug "
            "in tfkernels.studies.runner"
        )
    return result


def run_config(chunk_fn, n_trajectories, chunk_size, shared, info=None):
    """The configuration a checkpoint records and a resumed run must match.

    Parameters
    ----------
    chunk_fn, n_trajectories, chunk_size, shared
        As for :func:`run_chunks`.
    info : dict, optional
        The study's description of its configuration (JSON-ready values; its keys
        must differ from the runner's).

    Returns
    -------
    dict
        ``chunk_fn`` (module and name), ``n_trajectories``, ``chunk_size``,
        ``shared_sha256`` (:func:`.checkpoint.fingerprint` of ``shared``) and ``info``'s
        entries, normalized as they read back from the file.
    """
    config = {
        "chunk_fn": f"{chunk_fn.__module__}.{getattr(chunk_fn, '__qualname__', chunk_fn)}",
        "n_trajectories": n_trajectories,
        "chunk_size": chunk_size,
        "shared_sha256": ckpt.fingerprint(shared),
    }
    if info is not None:
        if not isinstance(info, dict) or not all(isinstance(k, str) for k in info):
            raise TypeError(f"`checkpoint_info` must be a dict with str keys, got {info!r}")
        clash = sorted(set(info) & set(CONFIG_KEYS))
        if clash:
            raise ValueError(f"`checkpoint_info` must not set the runner's keys {clash}")
        config.update(info)
    try:
        return ckpt.normalize(config)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`checkpoint_info` must hold JSON-ready values: {err}") from err


class _Frontier:
    """The merge frontier ``(next, stats)``, updated in one assignment after each
    merge, so that an interrupt at any point leaves a consistent pair."""

    def __init__(self):
        self.state = (0, None)

    @property
    def next(self):
        return self.state[0]

    @property
    def stats(self):
        return self.state[1]

    def hook(self, saver, on_merge):
        """The ``on_merge`` of the run's :class:`OrderedMerge`: record the frontier,
        write the checkpoint when it is due, then call the study's ``on_merge``."""

        def merged(next_chunk, stats):
            self.state = (next_chunk, stats)
            if saver is not None:
                saver.maybe_write(next_chunk, stats)
            if on_merge is not None:
                on_merge(next_chunk, stats)

        return merged


class _Checkpointer:
    """Reads a run's checkpoint and writes it when due (see :func:`run_chunks`)."""

    def __init__(self, path, config, bounds, every):
        self.path = ckpt.check_path(path, "checkpoint")
        self.config = config
        self.bounds = bounds
        self.every = (
            CHECKPOINT_EVERY_S
            if every is None
            else v.check_float("checkpoint_every", every, minimum=0.0)
        )
        self.written = 0  # next_chunk of the file (0: no file of this run yet)
        self.last = time.monotonic()

    def load(self):
        """The ``resume`` pair of the file, or None when there is none; refuses a
        file of another configuration (ValueError naming ``checkpoint``)."""
        header, stats = ckpt.read(self.path, "checkpoint")
        if header is None:
            return None
        ckpt.check_config(header, self.config, self.path, "checkpoint")
        k = header.get("next_chunk")
        if not isinstance(k, int) or not 0 < k <= len(self.bounds) or stats is None:
            raise ValueError(
                f"`checkpoint` {self.path!r} is not a readable tfkernels checkpoint: "
                f"next_chunk {k!r} of {len(self.bounds)} chunks"
            )
        self.written = k
        return k, stats

    def maybe_write(self, next_chunk, stats):
        """Write the frontier if ``every`` seconds passed since the last write."""
        if time.monotonic() - self.last >= self.every:
            self.write(next_chunk, stats)

    def write(self, next_chunk, stats):
        n_done = sum(n for _, n in self.bounds[:next_chunk])
        ckpt.write(self.path, self.config, next_chunk, len(self.bounds), n_done, stats)
        self.written = next_chunk
        self.last = time.monotonic()

    def flush(self, frontier, error=None):
        """Write the frontier if the file lags behind it. With ``error`` (the run is
        failing) a write error is only noted on ``error``."""
        next_chunk, stats = frontier.state
        if next_chunk <= self.written:
            return
        if error is None:
            self.write(next_chunk, stats)
            return
        try:
            self.write(next_chunk, stats)
        except (OSError, TypeError, ValueError) as write_err:
            if hasattr(error, "add_note"):
                error.add_note(f"the checkpoint {self.path!r} was not updated: {write_err}")


class _StopRequest:
    """Whether a deferred Ctrl-C asked the run to stop (see :func:`_deferred_interrupt`)."""

    requested = False


@contextlib.contextmanager
def _deferred_interrupt(enabled=True):
    """Turn the first SIGINT of the body into a stop request at the next chunk boundary.

    Only when ``enabled``, on the main thread, and while SIGINT has Python's default
    handler (which raises ``KeyboardInterrupt``): the handler then sets ``requested``
    and puts the default back, so a second Ctrl-C raises at once. Python runs signal
    handlers on the main thread between bytecodes: while a compiled kernel runs on
    it, the request is seen when the kernel returns. The previous handler is restored
    on exit. Otherwise the body runs as it is and Ctrl-C raises ``KeyboardInterrupt``.
    """
    stop = _StopRequest()
    if not (
        enabled
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        yield stop
        return

    def request(signum, frame):
        stop.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, request)
    try:
        yield stop
    finally:
        if signal.getsignal(signal.SIGINT) is request:
            signal.signal(signal.SIGINT, signal.default_int_handler)


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
