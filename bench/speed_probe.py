"""Quick throughput probe of ``tfk.integrate`` on the configurations of issue 5.

Forward Euler, attention + GELU FFN (m = 4d), damping; prints trajectory-layers/s,
GFLOP/s and the fraction of this machine's peak (2 cores × 2.45 GHz × 32 flop/cycle
float32, half that float64) as the median of ``--repeats`` timed runs after a warm-up.

    python bench/speed_probe.py [--configs tiny,small] [--dtypes float32] [--threads 1]
"""

import argparse
import statistics
import sys
import time

import numpy as np

import tfkernels as tfk

CONFIGS = {"tiny": (8, 16, 2), "small": (16, 32, 4), "medium": (32, 64, 4), "large": (64, 128, 8)}
PEAK = {"float32": 156.5e9, "float64": 78.3e9}


def flops(T, d, H, m):
    """FLOPs per trajectory-layer (the model of issue 5)."""
    return 24 * T * d * d + 4 * T * T * d + 15 * T * T * H + 20 * T * m


def probe(name, dtype, n_layers=16, repeats=5, min_time=0.3, n_threads=None):
    T, d, H = CONFIGS[name]
    p = tfk.TransformerParams.random(d, H, damping=1.0, seed=0, dtype=dtype)
    B = 64
    x0 = tfk.random_states(B, T, d, seed=1, dtype=dtype)
    tfk.integrate(p, x0, n_layers, n_threads=n_threads)  # compile / warm up
    while True:  # grow B until one run takes min_time
        t = time.perf_counter()
        tfk.integrate(p, x0, n_layers, n_threads=n_threads)
        el = time.perf_counter() - t
        if el >= min_time:
            break
        B = int(B * max(2.0, 1.2 * min_time / max(el, 1e-6)))
        x0 = tfk.random_states(B, T, d, seed=1, dtype=dtype)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        tfk.integrate(p, x0, n_layers, n_threads=n_threads)
        times.append(time.perf_counter() - t)
    rate = B * n_layers / statistics.median(times)
    gf = rate * flops(T, d, H, 4 * d)
    return rate, gf, gf / PEAK[np.dtype(dtype).name]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    print(f"{'config':8} {'dtype':8} {'traj-layers/s':>14} {'GFLOP/s':>8} {'% peak':>7}")
    for dt in args.dtypes.split(","):
        for c in args.configs.split(","):
            rate, gf, frac = probe(c, np.dtype(dt), repeats=args.repeats, n_threads=args.threads)
            print(f"{c:8} {dt:8} {rate:14,.0f} {gf / 1e9:8.1f} {100 * frac:6.1f}%", flush=True)


if __name__ == "__main__":
    sys.exit(main())
