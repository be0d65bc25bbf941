"""The perturbation-decay study on a Dask cluster: same kernel, same merge, chunk order.

:func:`tfkernels.perturbation_decay` comes here when it is given a
``dask.distributed.Client``. The study is split into the same chunks as the local run
(``decay._chunks``); every chunk becomes one Dask task that runs the pure function
:func:`tfkernels.decay.decay_chunk` (the same fused kernel) on a worker, and the
per-chunk :class:`~tfkernels.decay.DecayStats` come back to the client, which merges
them with :meth:`DecayStats.merge` strictly in chunk order. The merged statistics are
therefore bit-identical to a local run with the same seed and chunk size, whatever the
number of workers, their thread counts or the order in which chunks finish.

How the run is organised (see :func:`run_chunks`):

* the packed parameters and the chunk configuration are scattered once to every
  worker (``client.scatter(..., broadcast=True)``);
* chunk ``i`` is submitted with the deterministic key ``decay_chunk-<token>-<i>``
  (``token`` derived from the content hashes of the scattered inputs). When a worker
  dies, the scheduler reschedules its running tasks and recomputes lost results
  under the same key; the client merges each chunk index exactly once;
* at most ``window`` chunks (``IN_FLIGHT_PER_THREAD`` × the cluster's worker threads,
  at least ``MIN_IN_FLIGHT``) are submitted and not yet merged at any time, so the
  client never holds more than ``window`` chunk results, and a new chunk is submitted
  as the merge frontier moves on (``distributed.as_completed`` with added futures);
* the tqdm bar advances by a chunk's length when its result arrives.

Nothing here imports dask at module level; :func:`import_distributed` does it on
demand and raises ``ImportError`` with the install hint when it is missing.
"""

import dataclasses
import sys
import threading
import time

import numpy as np

from .. import threads
from . import decay

#: Chunks submitted and not yet merged, per worker thread of the cluster: enough to
#: keep every worker thread busy while the client fetches and merges results.
IN_FLIGHT_PER_THREAD = 3
#: Lower bound of that window (a cluster that is still starting reports no threads).
MIN_IN_FLIGHT = 4
#: How to install the optional dependency.
INSTALL_HINT = 'pip install "tfkernels[dask]"'

#: One fused kernel at a time per worker process: the kernel itself is parallel
#: (``api.run_threads`` on the process's thread pool), so two of a worker's task
#: threads running chunks at once would only oversubscribe its cores.
_KERNEL_LOCK = threading.Lock()
#: Writable copies of the last scattered inputs seen by this worker process.
_WRITABLE = {}


# ============================================================== client side
def import_distributed():
    """Import and return ``dask.distributed``.

    Raises
    ------
    ImportError
        When dask.distributed is not installed, with the install hint.
    """
    try:
        import distributed
    except ImportError as err:
        raise ImportError(
            f"running the study on a Dask cluster needs dask.distributed; "
            f"install it with `{INSTALL_HINT}`") from err
    return distributed


def check_client(client):
    """Check that ``client`` is a running ``dask.distributed.Client``.

    Does not import dask: an object can only be a Client if ``distributed`` has
    already been imported.

    Raises
    ------
    NotImplementedError
        ``client`` is not a ``dask.distributed.Client`` (like STUMPY, other kinds of
        clients are not supported).
    ValueError
        ``client`` is closed.
    """
    dd = sys.modules.get("distributed")
    if dd is None or not isinstance(client, dd.Client):
        raise NotImplementedError(
            f"`client` must be a dask.distributed.Client (or None to run locally), got "
            f"{type(client).__name__}")
    if client.status != "running":
        raise ValueError(
            f"`client` is {client.status!r}, not running; connect a new "
            "dask.distributed.Client")
    return client


def connect(address, timeout=None):
    """Connect a ``dask.distributed.Client`` to the scheduler at ``address``.

    Parameters
    ----------
    address : str
        Scheduler address, e.g. ``"tcp://scheduler:8786"``.
    timeout : float, optional
        Seconds to wait for the connection (Dask's default when None).

    Returns
    -------
    distributed.Client

    Raises
    ------
    ImportError
        dask.distributed is missing (with the install hint).
    OSError
        The scheduler could not be reached; the message names the address.
    """
    dd = import_distributed()
    kw = {} if timeout is None else {"timeout": timeout}
    try:
        return dd.Client(address, **kw)
    except OSError as err:
        raise OSError(f"could not connect to the Dask scheduler `{address}`: {err}") from err


def in_flight_limit(client):
    """Chunks that may be submitted and not yet merged: ``window`` of the run."""
    threads = sum(client.nthreads().values())
    return max(MIN_IN_FLIGHT, IN_FLIGHT_PER_THREAD * threads)


def describe(client):
    """The cluster as recorded in ``DecayResult.meta["cluster"]``."""
    nthreads = client.nthreads()
    return {"scheduler": client.scheduler.address, "n_workers": len(nthreads),
            "n_threads": int(sum(nthreads.values()))}


class OrderedMerge:
    """Merge per-chunk statistics strictly in chunk order, each chunk exactly once.

    Results that arrive early wait in a buffer until every earlier chunk is merged.

    Attributes
    ----------
    stats : DecayStats or None
        Merge of chunks ``0 … next − 1``.
    next : int
        Index of the next chunk to merge (the merge frontier).
    buffer : dict
        Chunk index → statistics, for chunks that arrived before the frontier.
    max_held : int
        Largest number of chunk results held at once (buffered, or just received).
    """

    def __init__(self):
        self.stats = None
        self.next = 0
        self.buffer = {}
        self.max_held = 0

    def add(self, index, part):
        """Take chunk ``index``'s statistics; return False if it was already taken."""
        if index < self.next or index in self.buffer:
            return False
        self.buffer[index] = part
        self.max_held = max(self.max_held, len(self.buffer))
        while self.next in self.buffer:
            part = self.buffer.pop(self.next)
            self.stats = part if self.stats is None else self.stats.merge(part)
            self.next += 1
        return True


def run_chunks(client, packed, cfg, n_trajectories, chunk_size, progress, n_threads=None):
    """Run every chunk of the study on the cluster and merge in chunk order.

    Parameters
    ----------
    client : distributed.Client
        A running client (see :func:`check_client`).
    packed : tuple
        ``kernels.pack_params(params)``; scattered once to every worker.
    cfg : decay.ChunkConfig
        Scattered once to every worker.
    n_trajectories, chunk_size : int
        The chunks are ``decay._chunks(n_trajectories, chunk_size)``, as locally.
    progress : bool
        Show a tqdm bar that advances as chunks complete.
    n_threads : int, optional
        Numba threads of each chunk's kernel on a worker (capped at the worker's
        Numba thread count); default: the worker's thread count.

    Returns
    -------
    stats : DecayStats
        The merged statistics, bit-identical to ``decay._run_chunks``.
    loop_time : float
        Seconds from the scatter to the last merge.
    info : dict
        :func:`describe` plus ``max_in_flight`` (the window) and
        ``max_results_held`` (most chunk results held by the client at once).

    Raises
    ------
    Exception
        Whatever a chunk raised on a worker (e.g. ``KilledWorker`` when a chunk's
        workers died more often than ``distributed.scheduler.allowed-failures``);
        the remaining chunks are cancelled first.
    """
    from tqdm.auto import tqdm

    dd = import_distributed()
    chunks = decay._chunks(n_trajectories, chunk_size)
    window = in_flight_limit(client)
    t0 = time.perf_counter()
    packed_f, cfg_f = client.scatter([packed, cfg], broadcast=True)
    token = _token(packed_f.key, cfg_f.key, n_trajectories, chunk_size)
    merger = OrderedMerge()
    pending = {}                  # key -> (chunk index, future): submitted, not yet seen
    queue = dd.as_completed(loop=client.loop)
    submitted = 0

    def submit_ready():
        nonlocal submitted
        while submitted < min(len(chunks), merger.next + window):
            fut = client.submit(_chunk_task, packed_f, *chunks[submitted], cfg_f, n_threads,
                                key=f"decay_chunk-{token}-{submitted}", pure=True)
            pending[fut.key] = (submitted, fut)
            queue.add(fut)
            submitted += 1

    with tqdm(total=n_trajectories, unit="traj", unit_scale=True, disable=not progress,
              desc="decay", smoothing=0.1) as bar:
        try:
            submit_ready()
            for fut in queue:
                i = pending.pop(fut.key)[0]
                if merger.add(i, fut.result()):
                    bar.update(chunks[i][1])
                del fut                        # release the result on the cluster
                submit_ready()
        finally:
            if pending:                        # a chunk failed: stop the others
                client.cancel([f for _, f in pending.values()])
    _check_complete(merger, len(chunks), n_trajectories)
    info = describe(client)
    info.update(max_in_flight=window, max_results_held=merger.max_held)
    return merger.stats, time.perf_counter() - t0, info


def _token(*parts):
    """Deterministic hash of the study's inputs, for the chunk keys."""
    from dask.base import tokenize

    return tokenize(*parts)


def _check_complete(merger, n_chunks, n_trajectories):
    """Raise RuntimeError unless every chunk was merged exactly once."""
    if merger.next != n_chunks or merger.buffer or \
            merger.stats.n_trajectories != n_trajectories:
        raise RuntimeError(
            f"merged {merger.next} of {n_chunks} chunks "
            f"({merger.stats.n_trajectories if merger.stats else 0} of {n_trajectories} "
            "trajectories); this is a bug in tfkernels.distributed")


# ============================================================== worker side
def _chunk_task(packed, chunk_start, chunk_len, cfg, n_threads):
    """The Dask task of one chunk: :func:`decay.decay_chunk` with the worker's threads.

    Parameters
    ----------
    packed, chunk_start, chunk_len, cfg
        As for :func:`decay.decay_chunk`.
    n_threads : int or None
        Numba threads for the kernel (see :func:`_kernel_threads`).

    Returns
    -------
    DecayStats

    Notes
    -----
    The chunk's result does not depend on the thread count, so any worker gives the
    same bits. Numba compiles the kernel once per machine: its on-disk cache
    (``config.CACHE``) makes a new worker process only load it.
    """
    with _KERNEL_LOCK:
        packed, cfg = _writable(packed, cfg)
        with threads.threads(_kernel_threads(n_threads)):
            return decay.decay_chunk(packed, chunk_start, chunk_len, cfg)


def _kernel_threads(n_threads):
    """Numba threads of a chunk: ``n_threads`` or the worker's thread count.

    Capped at the Numba threads of this process; outside a worker (e.g. a direct
    call) the default is all of them.
    """
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if n_threads is None:
        try:
            worker = import_distributed().get_worker()
        except ValueError:                     # not running on a worker
            return limit
        n_threads = getattr(worker, "state", worker).nthreads
    return max(1, min(int(n_threads), limit))


def _writable(packed, cfg):
    """``packed`` and ``cfg`` with every kernel argument writable.

    Arrays deserialized from the network may be read-only; Numba types those
    differently and would compile (and cache) a second specialization of the kernel.
    Copies are made once per scattered input and kept for the next chunks.
    """
    arrays = _arrays(packed) + [cfg.a, cfg.b, cfg.h, cfg.sigma]
    if all(a.flags.writeable for a in arrays):
        return packed, cfg
    hit = _WRITABLE.get("last")
    if hit is not None and hit[0] is packed and hit[1] is cfg:
        return hit[2]

    def w(a):
        return a if a.flags.writeable else a.copy()

    out = (_map_arrays(w, packed),
           dataclasses.replace(cfg, a=w(cfg.a), b=w(cfg.b), h=w(cfg.h), sigma=w(cfg.sigma)))
    _WRITABLE["last"] = (packed, cfg, out)
    return out


def _arrays(x):
    """Every ndarray inside the nested (named) tuples ``x``."""
    if isinstance(x, tuple):
        return [a for item in x for a in _arrays(item)]
    return [x] if isinstance(x, np.ndarray) else []


def _map_arrays(fn, x):
    """``x`` with ``fn`` applied to every ndarray inside its nested (named) tuples."""
    if isinstance(x, tuple):
        items = [_map_arrays(fn, item) for item in x]
        return type(x)._make(items) if hasattr(x, "_make") else tuple(items)
    return fn(x) if isinstance(x, np.ndarray) else x
