"""The machine a sweep ran on: CPU, peak FLOP rates, GEMM ceiling, versions, git state.

:func:`machine_section` is the ``machine`` entry of a sweep document; its ``peak_used``
is the denominator of every "% peak" of the sweep, its ``facts`` (:func:`cpu_facts`) what
the machine reports about its CPU (model, vector width, cores and threads, clocks; each
"unknown" where it does not say) with the measured FMA peak.
"""

import glob
import os
import platform
import re
import subprocess

import numpy as np

from ..kernels.simd import VECTOR_BYTES
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
    # Set on some hosts for older OpenBLAS builds; they make a current NumPy pick a
    # slower kernel (the ``blas`` entry records the one it picked).
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
)

#: Widest SIMD extension named by the CPU flags → (name, register width in bits), widest
#: first (``flags`` on x86, ``Features`` on AArch64).
VECTOR_ISAS = (
    ("avx512f", "AVX-512", 512),
    ("avx2", "AVX2", 256),
    ("avx", "AVX", 256),
    ("asimd", "NEON", 128),
    ("sse2", "SSE2", 128),
)

#: The value of a machine fact that the machine does not report.
UNKNOWN = "unknown"

#: The dtypes whose measured peak and implied clock the machine facts record.
FACT_DTYPES = ("float32", "float64")


def parse_cpuinfo(text):
    """Every processor block of ``/proc/cpuinfo`` text, as a list of dicts.

    Blocks are separated by blank lines; a key repeated within a block keeps its first
    value. Lines without a colon are ignored.
    """
    blocks, block = [], {}
    for line in text.splitlines():
        if not line.strip():
            if block:
                blocks.append(block)
                block = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            block.setdefault(key.strip(), value.strip())
    if block:
        blocks.append(block)
    return blocks


def vector_isa(cpuinfo):
    """``(ISA name, register bits)`` of the widest SIMD extension in the CPU flags.

    ``(UNKNOWN, UNKNOWN)`` when the block lists no flags (or none of
    :data:`VECTOR_ISAS`).
    """
    flags = set(cpuinfo.get("flags", cpuinfo.get("Features", "")).split())
    for flag, name, bits in VECTOR_ISAS:
        if flag in flags:
            return name, bits
    return UNKNOWN, UNKNOWN


def _read_khz(path):
    """A sysfs frequency file (kHz) in GHz, or None."""
    try:
        with open(path) as fh:
            return int(fh.read().strip()) / 1e6
    except (OSError, ValueError):
        return None


def read_clocks(cpuinfo, cpufreq_root="/sys/devices/system/cpu"):
    """The clocks the machine reports: base, max and min (GHz), and the reported MHz.

    ``base_ghz`` is sysfs ``base_frequency``, else the ``@ x.xxGHz`` of the model name
    (Intel's nominal clock); ``max_ghz`` / ``min_ghz`` are sysfs ``cpuinfo_max_freq`` /
    ``cpuinfo_min_freq`` (the largest over ``cpu*/cpufreq``); ``reported_mhz`` is
    ``/proc/cpuinfo`` ``cpu MHz`` (the current clock, or in a virtual machine the one the
    hypervisor reports). Each is :data:`UNKNOWN` where the machine does not say;
    ``sources`` tells where each value was read.
    """
    dirs = sorted(glob.glob(os.path.join(cpufreq_root, "cpu[0-9]*", "cpufreq")))
    out, sources = {}, {}
    for key, name in (
        ("base_ghz", "base_frequency"),
        ("max_ghz", "cpuinfo_max_freq"),
        ("min_ghz", "cpuinfo_min_freq"),
    ):
        values = [v for v in (_read_khz(os.path.join(d, name)) for d in dirs) if v]
        out[key] = max(values) if values else UNKNOWN
        sources[key] = f"{cpufreq_root}/cpu*/cpufreq/{name}" if values else UNKNOWN
    if out["base_ghz"] == UNKNOWN:
        m = re.search(r"@\s*([0-9.]+)\s*GHz", cpuinfo.get("model name", ""))
        if m:
            out["base_ghz"], sources["base_ghz"] = float(m.group(1)), "/proc/cpuinfo model name"
    try:
        out["reported_mhz"] = float(cpuinfo["cpu MHz"])
        sources["reported_mhz"] = "/proc/cpuinfo 'cpu MHz'"
    except (KeyError, ValueError):
        out["reported_mhz"], sources["reported_mhz"] = UNKNOWN, UNKNOWN
    out["sources"] = sources
    return out


def _int_or_unknown(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return UNKNOWN


def cpu_facts(cpuinfo_path="/proc/cpuinfo", cpufreq_root="/sys/devices/system/cpu"):
    """What the machine reports about its CPU, each fact :data:`UNKNOWN` where it does not.

    Returns
    -------
    dict
        ``model_name``, ``vendor``, ``family``, ``model``; ``vector_isa`` and
        ``vector_bits`` (the widest SIMD registers the flags name: AVX-512 512, AVX2
        256), ``fma_datapath_bits`` (the width the nominal peak counts:
        :func:`tfkernels.bench.flops.simd_features`, 256 for AVX-512 on Zen 4),
        ``kernel_vector_bits`` (the vector of :mod:`tfkernels.kernels.simd`, from LLVM's
        host features), ``fma``; ``logical_cpus``, ``usable_cpus`` (this process's
        affinity), ``sockets``, ``cores_per_socket``, ``physical_cores``,
        ``threads_per_core``; ``clock`` (:func:`read_clocks`).
    """
    try:
        with open(cpuinfo_path) as fh:
            blocks = parse_cpuinfo(fh.read())
    except OSError:
        blocks = []
    first = blocks[0] if blocks else {}
    isa, bits = vector_isa(first)
    has_flags = bool(first.get("flags") or first.get("Features"))
    datapath, fma, _ = flops.simd_features(first) if has_flags else (UNKNOWN, UNKNOWN, "")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = UNKNOWN
    sockets = len({b["physical id"] for b in blocks if "physical id" in b}) or UNKNOWN
    per_socket = _int_or_unknown(first.get("cpu cores"))
    siblings = _int_or_unknown(first.get("siblings"))
    known = lambda *v: UNKNOWN not in v  # noqa: E731
    smt = max(siblings // per_socket, 1) if known(siblings, per_socket) and per_socket else UNKNOWN
    return {
        "model_name": first.get("model name", UNKNOWN),
        "vendor": first.get("vendor_id", UNKNOWN),
        "family": first.get("cpu family", UNKNOWN),
        "model": first.get("model", UNKNOWN),
        "vector_isa": isa,
        "vector_bits": bits,
        "fma_datapath_bits": datapath,
        "kernel_vector_bits": 8 * VECTOR_BYTES,
        "fma": fma,
        "logical_cpus": len(blocks) or os.cpu_count() or UNKNOWN,
        "usable_cpus": usable,
        "sockets": sockets,
        "cores_per_socket": per_socket,
        "physical_cores": sockets * per_socket if known(sockets, per_socket) else UNKNOWN,
        "threads_per_core": smt,
        "clock": read_clocks(first, cpufreq_root),
    }


def blas_info():
    """The BLAS libraries loaded here (NumPy's, SciPy's) as :mod:`threadpoolctl` sees them.

    Each: ``library`` (the folder it was loaded from, e.g. ``numpy.libs``), ``internal_api``,
    ``version``, the kernel ``architecture`` it picked, ``num_threads`` and
    ``threading_layer``. The NumPy peer's workers inherit this process's environment,
    so they pick the same kernel.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [
        {
            "library": os.path.basename(os.path.dirname(lib.get("filepath", ""))) or None,
            **{k: lib.get(k) for k in keys},
        }
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    ]


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
    facts = cpu_facts()
    facts["measured_peak_gflops"] = {dt: peak.measured_gflops(dt, n) for dt in FACT_DTYPES}
    facts["clock"]["implied_ghz"] = {dt: peak.implied_clock_ghz(dt, n) for dt in FACT_DTYPES}
    facts["sweep_threads"] = n
    return {
        "cpu": flops.cpu_model(),
        "facts": facts,
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
        "blas": blas_info(),
        "versions": versions(),
        "git": {"commit": commit, "dirty": dirty},
    }
