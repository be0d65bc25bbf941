"""Throughput of a weight ensemble, and the cost of its in-kernel draw against the flow.

The issue's example (d = 64, one head, d_ff = 64, post-layernorm, weight scale 0.45,
T = 16, 50 layers, t_final = 50): ``decay.log_ratios`` (the kernel of
``perturbation_decay``, pair mode, without the study's λ̂ and statistics) and
``integrate`` of

* the ensemble (one draw per trajectory),
* the ensemble with ``per_layer=True`` (one draw per layer),
* one fixed member (``ens.member(0)``), which runs the same row layout: the flow alone.

The draw's cost is the difference to the fixed member, per draw and as a fraction of
the flow; each timing is the median of ``--repeats`` warm calls.

    python bench/ensemble_cost.py [--trajectories 4096] [--per-layer-trajectories 512]
        [--repeats 5] [--json out.json]

(the per-layer ensemble, ten times as slow, runs on fewer trajectories).
"""

import argparse
import json
import platform
import statistics
import time

import numpy as np

import tfkernels as tfk
from tfkernels.studies import decay

T, D, N = 16, 64, 50


def median_time(fn, repeats):
    """Median wall seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trajectories", type=int, default=4096)
    ap.add_argument("--per-layer-trajectories", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    B = args.trajectories
    base = dict(d=D, n_heads=1, d_ff=64, norm="layernorm", norm_position="post", weight_scale=0.45)
    ens = tfk.WeightEnsemble(**base, seed=0)
    models = {
        "ensemble": ens,
        "ensemble per_layer": ens.replace(per_layer=True),
        "fixed member": ens.member(0),
    }
    sizes = {"ensemble": B, "ensemble per_layer": args.per_layer_trajectories, "fixed member": B}
    out = {"T": T, "d": D, "n_layers": N, "machine": platform.processor(), "sizes": sizes}
    for name, p in models.items():
        n = sizes[name]
        x0 = tfk.random_states(n, T, D, seed=1)
        t_dec = median_time(
            lambda p=p, n=n: decay.log_ratios(p, n, T, N, t_final=50.0, seed=0), args.repeats
        )
        t_int = median_time(lambda p=p, x=x0: tfk.integrate(p, x, N, t_final=50.0), args.repeats)
        out[name] = {
            "decay_s": t_dec,
            "decay_traj_layers_per_s": n * N / t_dec,
            "integrate_s": t_int,
            "integrate_traj_layers_per_s": n * N / t_int,
        }
    fixed = out["fixed member"]
    for name, draws_per_traj in (("ensemble", 1), ("ensemble per_layer", N)):
        r, n = out[name], sizes[name]
        for what in ("decay", "integrate"):
            # the fixed member's time for n trajectories, and the extra of the draws
            base = fixed[f"{what}_s"] * n / B
            extra = r[f"{what}_s"] - base
            r[f"{what}_draw_us"] = 1e6 * extra / (n * draws_per_traj)
            r[f"{what}_draw_vs_flow"] = extra / base
    # one draw against one layer of the flow (integrate: one state per layer)
    layer_us = 1e6 * fixed["integrate_s"] / (B * N)  # wall per trajectory-layer, all threads
    out["flow_layer_us"] = layer_us
    out["draw_vs_one_layer"] = out["ensemble per_layer"]["integrate_draw_us"] / layer_us
    for name in models:
        r = out[name]
        print(
            f"{name:20s} decay {r['decay_traj_layers_per_s']:10.4g} traj-layers/s  "
            f"integrate {r['integrate_traj_layers_per_s']:10.4g} traj-layers/s"
            + (
                f"  draw {r['integrate_draw_us']:.1f} us ({100 * r['integrate_draw_vs_flow']:.1f} "
                f"% of the flow; decay {100 * r['decay_draw_vs_flow']:.1f} %)"
                if "integrate_draw_us" in r
                else ""
            )
        )
    ratio = out["draw_vs_one_layer"]
    print(f"one layer of the flow {layer_us:.1f} us; one draw = {ratio:.2f} layers")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
