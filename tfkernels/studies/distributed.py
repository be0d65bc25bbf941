"""The runner's Dask path: the same chunk function, on a cluster, merged in chunk order.

:func:`.runner.run_chunks` comes here when it is given a ``dask.distributed.Client``.
The run is split into the same chunks as locally; every chunk becomes one Dask task
that runs the study's pure chunk function on a worker, and the per-chunk statistics
come back to the client, which hands them to the run's :class:`~.runner.OrderedMerge`:
merged strictly in chunk order. The merged statistic is therefore bit-identical to a
local run with the same inputs and chunk size, whatever the number of workers, their
thread counts or the order in which chunks finish. Nothing here knows what a study
computes.

How a run is organised (see :func:`run_on_client`):

* the shared inputs are scattered once to every worker
  (``client.scatter(..., broadcast=True)``), under keys new to this run;
* chunk ``i`` is submitted with the key ``<chunk_fn>-<token>-<i>``, ``token`` being
  unique to the run. Keys are never shared with an earlier run on the same inputs:
  that run's keys may still be being released on the scheduler, which would then
  drop the new run's data ("lost dependencies"). When a worker dies, the scheduler
  reschedules its running tasks and recomputes lost results under the same key; the
  client merges each chunk index exactly once;
* at most ``window`` chunks (``IN_FLIGHT_PER_THREAD`` × the cluster's worker threads,
  at least ``MIN_IN_FLIGHT``) are submitted and not yet merged at any time, so the
  client never holds more than ``window`` chunk results, and a new chunk is submitted
  as the merge frontier moves on (``distributed.as_completed`` with added futures);
* the progress callback gets a chunk's length when its result arrives.

Nothing here imports dask at module level; :func:`import_distributed` does it on
demand and raises ``ImportError`` with the install hint when it is missing.
"""

import dataclasses
import sys
import threading
import uuid

import numpy as np

from .. import threads

#: Chunks submitted and not yet merged, per worker thread of the cluster: enough to
#: keep every worker thread busy while the client fetches and merges results.
IN_FLIGHT_PER_THREAD = 3
#: Lower bound of that window (a cluster that is still starting reports no threads).
MIN_IN_FLIGHT = 4
#: How to install the optional dependency.
INSTALL_HINT = 'pip install "tfkernels[dask]"'

#: One chunk at a time per worker process: a chunk's kernels are themselves parallel
#: (``threads.run_threads`` on the process's thread pool), so two of a worker's task
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
            f"install it with `{INSTALL_HINT}`"
        ) from err
    return distributed


class ClientTypeError(TypeError, NotImplementedError):
    """``client`` is not a ``dask.distributed.Client``: a TypeError like every other
    argument of the wrong type, and still the NotImplementedError that tfkernels 0.1.0
    raised (other kinds of clients are not supported)."""


def check_client(client):
    """Check that ``client`` is a running ``dask.distributed.Client``.

    Does not import dask: an object can only be a Client if ``distributed`` has
    already been imported.

    Raises
    ------
    ClientTypeError
        (a TypeError and a NotImplementedError) ``client`` is not a
        ``dask.distributed.Client`` (like STUMPY, other kinds of clients are not
        supported).
    ValueError
        ``client`` is closed.
    """
    dd = sys.modules.get("distributed")
    if dd is None or not isinstance(client, dd.Client):
        raise ClientTypeError(
            f"`client` must be a dask.distributed.Client (or None to run locally), got "
            f"{type(client).__name__}"
        )
    if client.status != "running":
        raise ValueError(
            f"`client` is {client.status!r}, not running; connect a new dask.distributed.Client"
        )
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
    n = sum(client.nthreads().values())
    return max(MIN_IN_FLIGHT, IN_FLIGHT_PER_THREAD * n)


def describe(client):
    """The cluster as a result records it: scheduler address, workers, threads."""
    nthreads = client.nthreads()
    return {
        "scheduler": client.scheduler.address,
        "n_workers": len(nthreads),
        "n_threads": int(sum(nthreads.values())),
    }


def run_on_client(client, chunk_fn, shared, bounds, merger, update, n_threads=None):
    """Run the chunks ``merger.next …`` of ``bounds`` on the cluster, feeding ``merger``.

    Parameters
    ----------
    client : distributed.Client
        A running client (see :func:`check_client`).
    chunk_fn : callable
        The study's chunk function, ``chunk_fn(chunk_start, chunk_len, *shared)``.
    shared : tuple
        Its shared inputs; each is scattered once to every worker.
    bounds : list of (int, int)
        ``(start, length)`` of every chunk (``runner.chunk_bounds``).
    merger : runner.OrderedMerge
        Takes each chunk's statistic with ``add(index, part)``; its frontier ``next``
        says which chunk to start from and bounds the chunks in flight.
    update : callable
        ``update(chunk_len)`` when a chunk's result is taken (the progress bar).
    n_threads : int, optional
        Numba threads of each chunk on a worker (capped at the worker's Numba thread
        count); default: the worker's thread count.

    Returns
    -------
    dict
        :func:`describe` plus ``max_in_flight`` (the window) and ``max_results_held``
        (most chunk results held by the client at once).

    Raises
    ------
    Exception
        Whatever a chunk raised on a worker (e.g. ``KilledWorker`` when a chunk's
        workers died more often than ``distributed.scheduler.allowed-failures``);
        the remaining chunks are cancelled first.
    """
    dd = import_distributed()
    window = in_flight_limit(client)
    # fresh keys (hash=False): a run must share no key with an earlier run on the same
    # inputs, whose keys' release may still be on its way to the scheduler
    shared_f = client.scatter(list(shared), broadcast=True, hash=False) if shared else []
    name = getattr(chunk_fn, "__name__", "chunk")
    token = uuid.uuid4().hex
    pending = {}  # key -> (chunk index, future): submitted, not yet seen
    queue = dd.as_completed(loop=client.loop)
    submitted = merger.next

    def submit_ready():
        nonlocal submitted
        while submitted < min(len(bounds), merger.next + window):
            fut = client.submit(
                _chunk_task,
                chunk_fn,
                *bounds[submitted],
                n_threads,
                *shared_f,
                key=f"{name}-{token}-{submitted}",
                pure=True,
            )
            pending[fut.key] = (submitted, fut)
            queue.add(fut)
            submitted += 1

    try:
        submit_ready()
        for fut in queue:
            i = pending.pop(fut.key)[0]
            if merger.add(i, fut.result()):
                update(bounds[i][1])
            del fut  # release the result on the cluster
            submit_ready()
    finally:
        if pending:  # a chunk failed: stop the others
            client.cancel([f for _, f in pending.values()])
    info = describe(client)
    info.update(max_in_flight=window, max_results_held=merger.max_held)
    return info


# ============================================================== worker side
def _chunk_task(chunk_fn, chunk_start, chunk_len, n_threads, *shared):
    """The Dask task of one chunk: ``chunk_fn`` with the worker's threads.

    Parameters
    ----------
    chunk_fn, chunk_start, chunk_len, shared
        As for the study's chunk function.
    n_threads : int or None
        Numba threads for the chunk (see :func:`_kernel_threads`).

    Returns
    -------
    The chunk's statistic.

    Notes
    -----
    The chunk's result does not depend on the thread count, so any worker gives the
    same bits. Numba compiles a kernel once per machine: its on-disk cache
    (``config.CACHE``) makes a new worker process only load it.
    """
    with _KERNEL_LOCK:
        shared = _writable_inputs(shared)
        with threads.threads(_kernel_threads(n_threads)):
            return chunk_fn(chunk_start, chunk_len, *shared)


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
        except ValueError:  # not running on a worker
            return limit
        n_threads = getattr(worker, "state", worker).nthreads
    return max(1, min(int(n_threads), limit))


def _writable_inputs(shared):
    """``shared`` with every array inside it writable (see :func:`_writable`).

    Copies are made once per scattered input and kept for the next chunks: the
    worker passes the same deserialized objects to every task.
    """
    hit = _WRITABLE.get("last")
    if (
        hit is not None
        and len(hit[0]) == len(shared)
        and all(a is b for a, b in zip(hit[0], shared))
    ):
        return hit[1]
    out = tuple(_writable(x) for x in shared)
    _WRITABLE["last"] = (shared, out)
    return out


def _writable(x):
    """``x`` with every array inside it writable, rebuilt only where something changed.

    Walks arrays, tuples (named tuples rebuilt with ``type(x)._make``), lists, dicts
    and dataclass instances, recursively; anything else is returned as it is. Arrays
    deserialized from the network may be read-only; Numba types those differently and
    would compile (and cache) a second specialization of every kernel they reach.
    """
    if isinstance(x, np.ndarray):
        return x if x.flags.writeable else x.copy(order="K")
    if isinstance(x, (tuple, list)):
        items = [_writable(a) for a in x]
        if all(a is b for a, b in zip(items, x)):
            return x
        if isinstance(x, list):
            return items
        return type(x)._make(items) if hasattr(x, "_fields") else type(x)(items)
    if isinstance(x, dict):
        items = {k: _writable(a) for k, a in x.items()}
        return x if all(items[k] is a for k, a in x.items()) else type(x)(items)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        changed = {}
        for f in dataclasses.fields(x):
            if f.init:
                a = getattr(x, f.name)
                w = _writable(a)
                if w is not a:
                    changed[f.name] = w
        return dataclasses.replace(x, **changed) if changed else x
    return x
