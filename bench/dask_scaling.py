"""Chunk-loop time of the decay study locally and on a Dask ``LocalCluster``.

The default model of ``tfkernels decay`` (d = 16, 2 heads, d_ff = 32, T = 4, 32 Euler
layers, float64, pair mode), ``--trajectories`` in chunks of ``--chunk-size``; for
each setup the best of ``--repeats`` runs of ``meta["loop_time_s"]`` (scatter to last
merge), the cluster's workers already started and warm. Prints the README's table and
checks that every setup gives the same statistics.

    python bench/dask_scaling.py [--trajectories 200000] [--chunk-size 16384]
"""

import argparse

import numpy as np

import tfkernels as tfk


def study(params, args, **kw):
    """Best loop time of ``args.repeats`` studies and the last result."""
    best, res = np.inf, None
    for _ in range(args.repeats):
        res = tfk.perturbation_decay(
            params, args.trajectories, 4, 32, seed=0, chunk_size=args.chunk_size, **kw
        )
        best = min(best, res.meta["loop_time_s"])
    return best, res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trajectories", type=int, default=200_000)
    ap.add_argument("--chunk-size", type=int, default=16_384)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    from dask.distributed import Client, LocalCluster

    params = tfk.TransformerParams.random(d=16, n_heads=2, d_ff=32, damping=4.0, seed=0)
    tfk.perturbation_decay(params, 64, 4, 32, seed=0)  # compile / load the cache
    rows = [
        ("local, 1 Numba thread", study(params, args, n_threads=1)),
        ("local, 2 Numba threads", study(params, args, n_threads=2)),
    ]
    for workers in (1, 2):
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            tfk.perturbation_decay(params, 64, 4, 32, seed=0, client=client)  # warm
            rows.append(
                (
                    f"`LocalCluster`, {workers} worker{'s' * (workers > 1)} × 1 thread",
                    study(params, args, client=client),
                )
            )
    base = rows[0][1][0]
    work = args.trajectories * 32
    print("| run | chunk loop | trajectory-layers/s | vs. 1 thread |\n|---|---|---|---|")
    for name, (t, _) in rows:
        print(f"| {name} | {t:.1f} s | {work / t / 1e6:.2f} M | {base / t:.1f} × |")
    ref = rows[0][1][1]
    same = all(
        r.rate == ref.rate and np.array_equal(r.stats["mean"], ref.stats["mean"])
        for _, (_, r) in rows
    )
    print("identical statistics in every setup:", same)


if __name__ == "__main__":
    main()
