"""The scaling section: time against B, N, T and d (fitted exponents) and threads.

Every measurement is one :func:`tfkernels.integrate` call of the preset's base shape
``(T, d, H, N, B)`` with one axis changed; the thread counts are timed interleaved.
"""

import numpy as np

from .settings import Config
from .throughput import Ours, bench_params
from .timing import time_interleaved, wait_quiet


def scaling_runs(settings):
    """The list of ``(axis, value, (T, d, H, N, B), threads)`` scaling measurements."""
    sc = settings.scaling
    T, d, H, N, B = sc["base"]
    runs = [("B", v, (T, d, H, N, v), settings.threads) for v in sc["batch"]]
    runs += [("N", v, (T, d, H, v, B), settings.threads) for v in sc["layers"]]
    runs += [("T", v, (v, d, H, N, B), settings.threads) for v in sc["seq_len"]]
    runs += [("d", v, (T, v, min(H, v), N, B), settings.threads) for v in sc["width"]]
    if sc.get("threads"):
        runs += [("threads", k, (T, d, H, N, B), k) for k in range(1, settings.threads + 1)]
    return runs


def scaling_measure(settings, shape, counts, dtype):
    """Median seconds of one call at ``shape = (T, d, H, N, B)`` for each thread count
    in ``counts`` (a list in that order). Several counts are timed interleaved, with
    the preset's pause between samples, so that no count is timed in a quieter moment
    than another; a single count back to back."""
    import tfkernels as tfk

    T, d, H, N, B = shape
    p = bench_params(Config("s", T, d, H), dtype)
    x0 = tfk.random_states(B, T, d, seed=2, dtype=np.dtype(dtype))
    impls = {k: Ours(p, x0, N, settings.method, k) for k in counts}
    for impl in impls.values():
        impl.setup()
    timed = time_interleaved(
        impls, settings.repeats, settings.min_sample_s, settings.pause_s if len(counts) > 1 else 0.0
    )
    return [timed[k]["median_s"] for k in counts]


def fit_exponent(xs, ys):
    """Least-squares slope of ``log y`` against ``log x`` (None with < 2 points)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if len(xs) < 2 or np.ptp(np.log(xs)) == 0:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def scaling_section(settings, bar):
    """Time against B, N, T, d (exponents) and threads (speed-up, efficiency)."""
    dtype = settings.dtypes[0]
    rows = {}
    runs = scaling_runs(settings)
    by_threads = [run for run in runs if run[0] == "threads"]
    if by_threads:
        bar.set_postfix_str("scaling threads")
        wait_quiet(settings.wait_quiet_s)
        counts = [run[1] for run in by_threads]
        per_count = dict(zip(counts, scaling_measure(settings, by_threads[0][2], counts, dtype)))
    for axis, value, shape, threads in runs:
        bar.set_postfix_str(f"scaling {axis}={value}")
        if axis != "threads" and axis not in rows:
            wait_quiet(settings.wait_quiet_s)
        t = (
            per_count[value]
            if axis == "threads"
            else scaling_measure(settings, shape, [threads], dtype)[0]
        )
        T, d, H, N, B = shape
        rows.setdefault(axis, []).append(
            {
                "value": value,
                "T": T,
                "d": d,
                "heads": H,
                "N": N,
                "B": B,
                "threads": threads,
                "median_s": t,
            }
        )
        bar.update()
    out = {"dtype": dtype, "base": dict(zip("T d heads N B".split(), settings.scaling["base"]))}
    for axis, entries in rows.items():
        xs = [e["value"] for e in entries]
        ts = [e["median_s"] for e in entries]
        if axis == "threads":
            for e in entries:
                e["speedup"] = ts[0] / e["median_s"]
                e["efficiency"] = e["speedup"] / e["value"]
            out[axis] = {"points": entries}
        else:
            out[axis] = {"points": entries, "exponent": fit_exponent(xs, ts)}
    return out
