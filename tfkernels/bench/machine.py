"""The machine a sweep ran on: CPU, peak FLOP rates, GEMM ceiling, versions, git state.

:func:`machine_section` is the ``machine`` entry of a sweep document; its ``peak_used``
is the denominator of every "% peak" of the sweep.
"""

import os
import platform
import subprocess

import numpy as np

from . import flops, peers
from .fresh import package_root
from .settings import sweep_threads
from .timing import timed, wait_quiet

#: Timed runs (median) of :func:`tfkernels.bench.flops.measured_peak` per dtype and threads.
PEAK_REPEATS = 5

#: Environment variables recorded with every sweep (they change what is measured).
ENV_KEYS = (
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "XLA_FLAGS",
)


def gemm_gflops(dtype, n=1024, repeats=3):
    """Attainable GFLOP/s of a large NumPy (OpenBLAS) GEMM: a practical ceiling."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    best = min(timed(lambda: a @ b) for _ in range(repeats + 1))
    return 2 * n**3 / best / 1e9


def versions():
    """Versions of Python, the numeric stack and the installed peers (None if absent)."""
    import numba
    import scipy

    import tfkernels

    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "tfkernels": tfkernels.__version__,
    }
    for name in ("torch", "jax"):
        try:
            out[name] = peers.library_version(name)
        except peers.PeerUnavailable:
            out[name] = None
    return out


def git_revision():
    """``(commit, dirty)`` of the source tree, or ``(None, None)`` outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=package_root(),
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=package_root(),
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev or None, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


def threading_layer():
    """Numba's threading layer, or None before any parallel kernel has run."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


def measure_peak(settings):
    """The peak reference of a sweep: nominal, and measured on 1 and the sweep's threads.

    Waits for a quiet machine first (``settings.wait_quiet_s``), like every timed point.

    Returns
    -------
    tfkernels.bench.flops.PeakReference
    """
    wait_quiet(settings.wait_quiet_s)
    return flops.PeakReference.measure(
        threads=sorted({1, sweep_threads(settings)}),
        min_seconds=settings.peak_min_s,
        repeats=PEAK_REPEATS,
    )


def machine_section(settings, peak=None):
    """The machine, its peak and attainable GEMM rate, versions and environment.

    ``peak`` is a :class:`tfkernels.bench.flops.PeakReference` (measured here if None);
    ``peak`` in the result is the nominal peak, ``measured_peak`` the measured one and
    ``peak_used`` the denominator of every "% peak" of the sweep (the larger of the two
    for the sweep's threads).
    """
    peak = measure_peak(settings) if peak is None else peak
    n = sweep_threads(settings)
    commit, dirty = git_revision()
    return {
        "cpu": flops.cpu_model(),
        "platform": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "peak": peak.nominal.as_dict(),
        "measured_peak": peak.as_dict(),
        "peak_used": {
            "threads": n,
            "gflops": {dt: peak.peak_gflops(dt, n) for dt in ("float32", "float64")},
            "nominal_gflops": {
                dt: peak.nominal.peak_gflops(dt, n) for dt in ("float32", "float64")
            },
        },
        "gemm_gflops": {dt: gemm_gflops(dt) for dt in ("float32", "float64")},
        "threads": settings.threads,
        "numba_threading_layer": threading_layer(),
        "env": {k: os.environ.get(k) for k in ENV_KEYS},
        "versions": versions(),
        "git": {"commit": commit, "dirty": dirty},
    }
