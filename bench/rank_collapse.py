"""Dong et al. (2021), Figure 2 at initialisation: rank collapse across depth.

Runs the ablation of :mod:`tfkernels.studies.rank_collapse` (attention only, + FFN,
+ FFN without any skip, + skip, the full post-LN block) on random BERT-initialised
models with :func:`tfkernels.token_geometry` and writes, into ``--out``
(default ``results/rank_collapse``):

* ``rank_collapse.png``: the residual ratio ``‖X − 1·mean(X)‖/‖X‖`` against the layer,
  composite norm ``sqrt(‖·‖₁‖·‖_∞)`` and Frobenius norm, median over the models with
  the 10–90 % band (each model's value the mean over its inputs), log scale;
* ``rank_collapse.csv``: one row per variant, norm and layer (median, q10, q90, mean);
* ``rank_collapse.json``: the settings, the same numbers, the successive ratios of
  ``log r`` of the attention-only stack (3 for a doubly exponential collapse with
  Dong et al.'s exponent), versions, machine and wall time.

    python bench/rank_collapse.py                      # the committed figure, ~2-4 min on 2 cores
    python bench/rank_collapse.py --models 8 --out /tmp/rc   # a quick look
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

from tfkernels.studies import output
from tfkernels.studies import rank_collapse as rc
from tfkernels.studies.environment import environment
from tfkernels.studies.serialize import jsonable

#: The band's quantiles over models.
BAND = (0.1, 0.9)
#: Values below this are drawn at it (float64 rounding of the residual: ~1e-16).
FLOOR = 1e-17
NORMS = {"composite": "composite norm sqrt(‖·‖₁‖·‖∞)", "frobenius": "Frobenius norm"}
STYLE = {
    "attention": ("C3", ":"),
    "attention+ffn": ("C1", "--"),
    "attention+ffn (no skips)": ("C5", (0, (1, 1))),
    "attention+skip": ("C2", "-."),
    "transformer": ("C0", "-"),
}


def git_commit():
    """The checkout's commit (and ``+dirty``), or None outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def summarize(values):
    """Median, band and mean over models (axis 0) of ``values`` (n_models, L + 1)."""
    return {
        "median": np.median(values, axis=0),
        f"q{round(100 * BAND[0]):02d}": np.quantile(values, BAND[0], axis=0),
        f"q{round(100 * BAND[1]):02d}": np.quantile(values, BAND[1], axis=0),
        "mean": values.mean(axis=0),
    }


def log_ratios(median, n=4):
    """``log r_{l+1} / log r_l`` for the first layers whose median is above 1e-14."""
    lr = np.log(median)
    out = []
    for layer in range(1, min(n + 1, len(lr) - 1)):
        if median[layer + 1] < 1e-14 or median[layer] >= 1.0:
            break
        out.append(float(lr[layer + 1] / lr[layer]))
    return out


def plot(results, settings, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.3), constrained_layout=True)
    panels = [("composite", "log"), ("composite", "linear"), ("frobenius", "log")]
    for ax, (norm, scale) in zip(axes, panels):
        for variant, res in results.items():
            s = res[norm]
            c, ls = STYLE[variant]
            layer = res["layer"]
            floor = FLOOR if scale == "log" else 0.0
            lo, hi = (np.maximum(s[k], floor) for k in ("q10", "q90"))
            ax.fill_between(layer, lo, hi, color=c, alpha=0.18, lw=0)
            ax.plot(layer, np.maximum(s["median"], floor), color=c, ls=ls, lw=1.6, label=variant)
        if scale == "log":
            ax.axhline(2.0**-52, color="0.5", lw=0.8, ls=":")
            ax.text(layer[-1], 2.0**-52 / 6, "float64 rounding", fontsize=7, ha="right")
            ax.set_yscale("log")
            ax.set_ylim(FLOOR / 2, 2.0)
        else:
            ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("layer l")
        ax.set_title(f"{NORMS[norm]}, {scale} scale", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("‖X − 1·mean(X)‖ / ‖X‖ (median, 10–90 %)")
    axes[1].legend(fontsize=8, loc="center right")
    fig.suptitle(
        f"Rank collapse at initialisation (Dong et al. 2021, Fig. 2): {settings['n_models']} "
        f"random post-LN models × {settings['n_inputs']} inputs, d = {settings['d']}, "
        f"{settings['n_heads']} heads, d_ff = {settings['d_ff']}, T = {settings['seq_len']}",
        fontsize=9.5,
    )
    output.save_figure(fig, path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--d-ff", type=int, default=None, help="default 4d")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--models", type=int, default=64)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/rank_collapse")
    args = ap.parse_args(argv)
    settings = {
        "d": args.d,
        "n_heads": args.heads,
        "d_ff": 4 * args.d if args.d_ff is None else args.d_ff,
        "seq_len": args.seq_len,
        "n_layers": args.layers,
        "n_models": args.models,
        "n_inputs": args.inputs,
        "seed": args.seed,
        "weights": f"N(0, s^2), s = {rc.BERT_STD}*sqrt({rc.BERT_WIDTH}/d) (BERT-base's "
        "variance x fan-in), biases 0, per layer; LayerNorm gain 1, bias 0, eps 1e-12",
        "activation": "gelu",
        "inputs": "x0='normal' (standard normal tokens), seed = seed + model index",
        "method": "euler, dt = 1 (t_final = kernel layers); no skip = damping 1",
        "band": list(BAND),
    }
    commit = git_commit()  # of the code that runs, before anything changes
    t0 = time.time()
    results = {}
    for variant in rc.VARIANTS:
        t1 = time.time()
        r = rc.rank_collapse_by_depth(
            variant,
            d=args.d,
            n_heads=args.heads,
            d_ff=settings["d_ff"],
            seq_len=args.seq_len,
            n_layers=args.layers,
            n_models=args.models,
            n_inputs=args.inputs,
            seed=args.seed,
        )
        results[variant] = {
            "layer": r["layer"],
            "composite": summarize(r["composite"]),
            "frobenius": summarize(r["frobenius"]),
            "n_nonfinite": r["n_nonfinite"],
            "wall_time_s": time.time() - t1,
        }
        med = results[variant]["composite"]["median"]
        print(f"{variant:26s} r_1..4 = " + " ".join(f"{x:.3g}" for x in med[1:5]), flush=True)
    wall = time.time() - t0
    san = results["attention"]["composite"]["median"]
    summary = {
        "attention_log_ratio": log_ratios(san),
        "final_median": {k: float(r["composite"]["median"][-1]) for k, r in results.items()},
    }
    with output.ResultSet(args.out, name="--out") as rs:
        table = {"variant": [], "norm": [], "layer": [], "median": [], "q10": [], "q90": []}
        table["mean"] = []
        for i, res in enumerate(results.values()):
            for j, norm in enumerate(NORMS):
                s = res[norm]
                for layer in res["layer"]:
                    table["variant"].append(i)
                    table["norm"].append(j)
                    table["layer"].append(layer)
                    for k in ("median", "q10", "q90", "mean"):
                        table[k].append(s[k][layer])
        output.write_csv(rs.path("rank_collapse.csv"), table, ("variant", "norm", "layer"))
        plot(results, settings, rs.path("rank_collapse.png"))
        doc = {
            "study": "rank collapse at initialisation (Dong, Cordonnier & Loukas 2021, Fig. 2)",
            "csv_codes": {"variant": list(rc.VARIANTS), "norm": list(NORMS)},
            "settings": settings,
            "summary": summary,
            "results": results,
            "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
            "git_commit": commit,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": wall,
            **environment(),
        }
        output.write_text(rs.path("rank_collapse.json"), json.dumps(jsonable(doc), indent=1))
    print(f"attention-only log r ratios: {summary['attention_log_ratio']}; {wall:.0f} s")
    print("wrote", ", ".join(rs.paths))


if __name__ == "__main__":
    main()
