"""The package's worker threads: every parallel kernel call runs slices of its batch here.

No kernel uses ``prange`` (see ``config.BLOCK``): a driver is a serial, GIL-free
compiled function over a slice of the batch, and :func:`run_threads` runs the slices on
a process-wide pool of Python threads, as many as Numba's current thread count.
"""

import concurrent.futures
import contextlib
import threading

import numba

from . import _validate as v
from . import config


def check_n_threads(n_threads, name="n_threads"):
    """Return ``n_threads`` as an int in ``[1, NUMBA_NUM_THREADS]`` (None stays None);
    errors name the argument ``name``."""
    if n_threads is None:
        return None
    n = v.check_int(name, n_threads, minimum=1)
    if n > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"`{name}`={n} exceeds the {numba.config.NUMBA_NUM_THREADS} threads Numba "
            "started with (set NUMBA_NUM_THREADS before importing numba to raise it)"
        )
    return n


@contextlib.contextmanager
def threads(n_threads):
    """Run the body with ``n_threads`` Numba threads, restoring the old count after."""
    n = check_n_threads(n_threads)
    if n is None:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    """The process-wide worker threads of :func:`run_threads` (started on first use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1),
                thread_name_prefix="tfkernels",
            )
        return _POOL


def run_each(body, n):
    """Run ``body(0)``, …, ``body(n − 1)`` concurrently: ``body(0)`` on the calling
    thread, the rest on the process-wide pool; returns when all are done (re-raising
    the first error). ``body`` must release the GIL (call a ``nogil`` kernel) to run
    in parallel, and ``n`` must not exceed ``NUMBA_NUM_THREADS``."""
    futures = [_pool().submit(body, i) for i in range(1, n)]
    try:
        body(0)
    finally:
        for f in futures:
            f.result()


def run_threads(body, batch):
    """Run ``body(lo, hi)`` on contiguous slices covering ``range(batch)`` in parallel.

    The batch is cut at multiples of ``config.BLOCK`` into as many slices as Numba's
    current thread count (``numba.get_num_threads()``, which :func:`threads` sets) and
    there are blocks; :func:`run_each` runs them. ``body`` calls a kernel that
    releases the GIL (``nogil=True``) on the slice. Every trajectory is computed the
    same way whatever slice it lands in, so results do not depend on the thread
    count. Every parallel driver of the package goes through here (none uses
    ``prange``, see ``config.BLOCK``).

    Parameters
    ----------
    body : callable
        ``body(lo, hi)`` processes trajectories ``lo <= b < hi``.
    batch : int
        Number of trajectories.
    """
    n_blocks = (batch + config.BLOCK - 1) // config.BLOCK
    n = max(1, min(numba.get_num_threads(), n_blocks))
    if n == 1:
        body(0, batch)
        return
    cuts = [min(batch, (n_blocks * i // n) * config.BLOCK) for i in range(n + 1)]
    run_each(lambda i: body(cuts[i], cuts[i + 1]), n)
