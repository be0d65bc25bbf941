"""Compile, start-up and memory probes: what a first call and a fresh process cost."""

import tempfile

from .fresh import run_json_script
from .timing import timed


_COMPILE_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import tfkernels as tfk
t1 = time.perf_counter()
dt = np.dtype(sys.argv[1])
p = tfk.TransformerParams.random(16, 2, damping=1.0, dtype=dt)
t2 = time.perf_counter()
x = tfk.random_states(4, 8, 16, dtype=dt)
tfk.integrate(p, x, 4)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_call_s": t3 - t2,
                  "total_s": (t1 - t0) + (t3 - t2)}))
"""


def _compile_subprocess(dtype, cache_dir=None):
    """Run the compile script in a fresh interpreter; return its timings."""
    extra = {} if cache_dir is None else {"NUMBA_CACHE_DIR": cache_dir}
    return run_json_script(_COMPILE_SCRIPT, (dtype,), extra_env=extra)


def first_call(dtype, threads):
    """In this process: time of the first and second call of a tiny flow."""
    import tfkernels as tfk
    from tfkernels.kernels import rows as kernels

    p = tfk.TransformerParams.random(16, 2, damping=1.0, dtype=dtype)
    x = tfk.random_states(4, 8, 16, dtype=dtype)
    before = _cache_counts(kernels.integrate_kernel)
    t_first = timed(lambda: tfk.integrate(p, x, 4, n_threads=threads))
    t_second = timed(lambda: tfk.integrate(p, x, 4, n_threads=threads))
    hits, misses = (a - b for a, b in zip(_cache_counts(kernels.integrate_kernel), before))
    how = "cache miss (compiled)" if misses else "cache hit (loaded)" if hits else \
        "already loaded"
    return {"first_call_s": t_first, "second_call_s": t_second,
            "compile_or_load_s": max(t_first - t_second, 0.0), "how": how}


def _cache_counts(dispatcher):
    stats = getattr(dispatcher, "stats", None)
    if stats is None:
        return 0, 0
    return sum(stats.cache_hits.values()), sum(stats.cache_misses.values())


def compile_section(settings):
    """First call in this process, and cold / warm starts in fresh processes.

    ``cold``: empty ``NUMBA_CACHE_DIR``, import + first call (compiles every kernel
    the first run needs); ``warm``: a second fresh process on that cache (or on the
    package's own cache when only ``warm`` is asked for).
    """
    out = {"mode": settings.compile}
    for dt in settings.dtypes:
        entry = {"in_process": first_call(dt, settings.threads)}
        if settings.compile == "cold":
            with tempfile.TemporaryDirectory(prefix="tfk-cache-") as cache:
                entry["cold"] = _compile_subprocess(dt, cache)
                entry["warm"] = _compile_subprocess(dt, cache)
        elif settings.compile == "warm":
            entry["warm"] = _compile_subprocess(dt)
        out[dt] = entry
    return out


_MEMORY_SCRIPT = r"""
import json, sys
import numpy as np
import tfkernels as tfk

def status():
    d = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            k, v = line.split(":")
            d[k] = int(v.split()[0]) / 1024
    return d

B, T, d, N, threads = (int(v) for v in sys.argv[1:6])
dt = np.dtype(sys.argv[6])
p = tfk.TransformerParams.random(d, 2, damping=1.0, dtype=dt)
tfk.integrate(p, tfk.random_states(64, T, d, dtype=dt), 2, n_threads=threads)
x = tfk.random_states(B, T, d, dtype=dt)
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
    fh.write("5")
before = status()
tfk.integrate(p, x, N, n_threads=threads)
after = status()
print(json.dumps({"rss_before_mb": before["VmRSS"], "rss_peak_mb": after["VmHWM"],
                  "state_mb": x.nbytes / 2**20}))
"""


def memory_section(settings):
    """Peak RSS growth of one :func:`tfkernels.integrate` call, in a fresh process.

    The peak (``VmHWM``) is reset through ``/proc/self/clear_refs`` after the input
    state is allocated and the kernels are loaded (Linux only). ``extra_mb`` is the
    growth of the peak during the call: the output array (one state) plus the
    kernel's scratch; ``beyond_output_mb`` subtracts the output's size, leaving the
    memory the computation itself needs — the figure judged against issue 5's
    memory goal (the input state is allocated before the measurement starts).
    """
    dtype = settings.dtypes[0]
    T, d, N = 8, 16, 8
    rows = []
    for B in settings.memory_batches:
        m = run_json_script(_MEMORY_SCRIPT, (B, T, d, N, settings.threads, dtype))
        if "error" in m:
            rows.append({"B": B, **m})
            continue
        m["extra_mb"] = max(m["rss_peak_mb"] - m["rss_before_mb"], 0.0)
        m["beyond_output_mb"] = m["extra_mb"] - m["state_mb"]
        rows.append({"B": B, "T": T, "d": d, "N": N, "dtype": dtype, **m})
    return {"threads": settings.threads, "limit_mb": 50 + settings.threads, "points": rows}
