"""Giorlandino & Goldt (2026): the mean token cosine across 50 post-LN blocks against
their closed-form recursion.

For each width d, random models of :func:`tfkernels.studies.signal_propagation.post_ln_params`
(one head, W_o = I, ReLU MLP of width d, LayerNorm after each sub-step, fresh weights in
every layer; σ_v² = σ_w² = 0.2, σ_b² = 4·10⁻⁴ as in their experiment; softmax β = 1e-4,
the recursion's β → 0) start from equicorrelated tokens (every pairwise cosine p0) and
run through :func:`tfkernels.token_geometry` (Euler, Δt = 1); each model's curve is the
mean cosine over its inputs. Against them: the recursion with the exact 1/T term of
uniform attention and the paper's T → ∞ form. Writes into ``--out`` (default
``results/cosine_propagation``) ``cosine_propagation.png``, ``.csv`` (one row per width
and layer) and ``.json`` (settings, the agreement per width, versions, machine).

    python bench/cosine_propagation.py      # the committed figure, ~3-5 min on 2 cores
    python bench/cosine_propagation.py --widths 32,64 --models 4 --out /tmp/cp
"""

import argparse
import datetime
import json
import math
import os
import sys
import time

import numpy as np

import tfkernels as tfk
from tfkernels.studies import output
from tfkernels.studies import signal_propagation as sp
from tfkernels.studies.environment import environment
from tfkernels.studies.serialize import jsonable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rank_collapse import git_commit


def models_for(d, n_models):
    """Fewer models at large widths (each costs ~d² per layer; their spread ~1/sqrt(d))."""
    return max(4, min(n_models, n_models * 64 // d))


def model_curves(d, seq_len, beta, n_models, seed0, args, var):
    """The per-model mean cosine curves (n_models, L + 1): model k has weights
    ``post_ln_params(d, L, beta=beta, seed=seed0 + k)`` and its own equicorrelated inputs."""
    L = args.layers
    curves = []
    for k in range(n_models):
        seed = seed0 + k
        p = sp.post_ln_params(d, L, beta=beta, seed=seed, **var)
        x0 = sp.equicorrelated_states(args.inputs, seq_len, d, args.p0, seed=seed)
        geo = tfk.token_geometry(
            p, args.inputs, seq_len=seq_len, n_layers=L, t_final=float(L), x0=x0, seed=seed
        )
        if geo.n_nonfinite:
            raise RuntimeError(f"{geo.n_nonfinite} trajectories blew up (d = {d}, beta = {beta})")
        curves.append(geo.metric("mean_cosine"))
    return np.array(curves)


def run_width(d, args, var):
    """Uniform attention (softmax β = --beta) at width d, T = --seq-len."""
    n = models_for(d, args.models)
    return model_curves(d, args.seq_len, args.beta, n, args.seed + 1000 * d, args, var)


def run_rem(beta_sa, args, var):
    """The paper's regime: scores of variance ``β² log T`` (W_q, W_k ~ N(0, 1/d),
    softmax β = β_SA·sqrt(log T)), T = --rem-seq-len, d = --rem-d."""
    T = args.rem_seq_len
    seed0 = args.seed + 7919 * (1 + round(100 * beta_sa))
    beta = beta_sa * math.sqrt(math.log(T))
    return model_curves(args.rem_d, T, beta, args.rem_models, seed0, args, var)


def compare(curves, against, t0):
    """Mean, standard error over models and the largest difference from each curve of
    ``against`` (``{suffix: recursion}``)."""
    mean = curves.mean(axis=0)
    out = {
        "n_models": len(curves),
        "mean": mean,
        "se": curves.std(axis=0, ddof=1) / np.sqrt(len(curves)),
    }
    for suffix, rec in against.items():
        out[f"max_abs_diff{suffix}"] = float(np.abs(mean - rec).max())
    out["wall_time_s"] = time.time() - t0
    return out


def plot(per_width, theory, theory_inf, settings, path, rem=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    n = 3 if rem else 2
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.3), constrained_layout=True)
    ax, ax2 = axes[0], axes[1]
    layer = np.arange(len(theory))
    ax.plot(layer, theory, color="k", lw=1.6, label=f"recursion, T = {settings['seq_len']}")
    ax.plot(layer, theory_inf, color="0.5", lw=1.2, ls="--", label="recursion, T → ∞ (paper)")
    for i, (d, r) in enumerate(per_width.items()):
        c = f"C{i}"
        ax.fill_between(layer, r["mean"] - 2 * r["se"], r["mean"] + 2 * r["se"], color=c, alpha=0.2)
        ax.plot(layer, r["mean"], ".", ms=3.5, color=c, label=f"d = {d} ({r['n_models']} models)")
    ax.set_xlabel("block l")
    ax.set_ylabel("mean token cosine")
    ax.set_title("post-LN blocks, 1 head, ReLU MLP (mean ± 2 s.e. over models)", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    ds = np.array(list(per_width))
    diff = np.array([r["max_abs_diff"] for r in per_width.values()])
    diff_inf = np.array([r["max_abs_diff_inf"] for r in per_width.values()])
    se = np.array([2 * r["se"].max() for r in per_width.values()])
    ax2.loglog(ds, diff, "o-", color="k", label=f"vs recursion, T = {settings['seq_len']}")
    ax2.loglog(ds, diff_inf, "s--", color="0.5", label="vs recursion, T → ∞")
    ax2.loglog(ds, se, "x:", color="C3", label="2 × largest s.e. (noise)")
    ax2.loglog(ds, diff[0] * ds[0] / ds, color="C0", lw=0.8, alpha=0.6, label="∝ 1/d")
    ax2.set_xticks(ds, [str(d) for d in ds])
    ax2.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax2.set_xlabel("width d")
    ax2.set_ylabel("max over blocks of |simulation − recursion|")
    ax2.set_title("agreement against width", fontsize=10)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3, which="both")
    if rem:
        ax3 = axes[2]
        for i, (b, r) in enumerate(rem.items()):
            c = f"C{i + 5}"
            lo, hi = r["mean"] - 2 * r["se"], r["mean"] + 2 * r["se"]
            ax3.fill_between(layer, lo, hi, color=c, alpha=0.25)
            ax3.plot(layer, r["mean"], ".", ms=3.5, color=c, label=f"β = {b}: simulation")
            ax3.plot(layer, r["recursion"], color=c, lw=1.4, label=f"β = {b}: recursion (T → ∞)")
        ax3.plot(layer, rem[next(iter(rem))]["uniform"], color="0.5", ls=":", lw=1.2)
        ax3.plot(
            [], [], color="0.5", ls=":", label=f"uniform attention, T = {settings['rem_seq_len']}"
        )
        ax3.set_xlabel("block l")
        ax3.set_title(
            f"the paper's regime: scores of variance β² log T, T = {settings['rem_seq_len']}, "
            f"d = {settings['rem_d']}",
            fontsize=9,
        )
        ax3.legend(fontsize=7.5, loc="lower right")
        ax3.grid(alpha=0.3)
    fig.suptitle(
        f"Mean-field cosine recursion (Giorlandino & Goldt 2026) vs the kernels: "
        f"{settings['n_layers']} blocks, T = {settings['seq_len']}, p0 = {settings['p0']}, "
        f"σ_v² = σ_w² = {settings['var_w']}, σ_b² = {settings['var_b']}",
        fontsize=9.5,
    )
    output.save_figure(fig, path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="32,64,128,256,512")
    ap.add_argument("--layers", type=int, default=50)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--p0", type=float, default=0.2)
    ap.add_argument("--models", type=int, default=64, help="models at d <= 64 (fewer above)")
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--beta", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rem-betas", default="0.5,3", help="the paper's β (score scale); '' none")
    ap.add_argument("--rem-seq-len", type=int, default=64)
    ap.add_argument("--rem-d", type=int, default=256)
    ap.add_argument("--rem-models", type=int, default=8)
    ap.add_argument("--out", default="results/cosine_propagation")
    args = ap.parse_args(argv)
    var = dict(sp.DEFAULT_VARIANCES)
    widths = [int(w) for w in args.widths.split(",")]
    settings = {
        "widths": widths,
        "n_layers": args.layers,
        "seq_len": args.seq_len,
        "p0": args.p0,
        "inputs_per_model": args.inputs,
        "models": {d: models_for(d, args.models) for d in widths},
        "beta": args.beta,
        **var,
        "d_ff": "d",
        "model": "post_ln_params: post-LN (gain 1, bias 0, eps 1e-12), sequential, one head, "
        "W_o = I, ReLU, fresh weights per layer; Euler, dt = 1",
        "x0": "equicorrelated_states (zero feature mean, |x|^2 = d, all cosines p0)",
        "seed": args.seed,
        "rem_betas": [float(b) for b in args.rem_betas.split(",") if b],
        "rem_seq_len": args.rem_seq_len,
        "rem_d": args.rem_d,
        "rem_models": args.rem_models,
        "rem_scores": "W_q, W_k ~ N(0, 1/d), softmax beta = beta_SA*sqrt(log T): scores of "
        "variance beta_SA^2 log T (the paper's scaling)",
    }
    theory = sp.cosine_recursion(args.p0, args.layers, seq_len=args.seq_len, **var)
    theory_inf = sp.cosine_recursion(args.p0, args.layers, **var)
    commit = git_commit()  # of the code that runs, before anything changes
    t0 = time.time()
    per_width = {}
    for d in widths:
        t1 = time.time()
        per_width[d] = compare(run_width(d, args, var), {"": theory, "_inf": theory_inf}, t1)
        per_width[d]["argmax_layer"] = int(np.abs(per_width[d]["mean"] - theory).argmax())
        se = per_width[d]["se"]
        r = per_width[d]
        print(
            f"d = {d:4d}: {r['n_models']} models, max |sim - recursion| = {r['max_abs_diff']:.4f} "
            f"(layer {r['argmax_layer']}), vs T->inf {r['max_abs_diff_inf']:.4f}, "
            f"2 s.e. {2 * se.max():.4f}, {r['wall_time_s']:.0f} s",
            flush=True,
        )
    rem = {}
    uniform = sp.cosine_recursion(args.p0, args.layers, seq_len=args.rem_seq_len, **var)
    for b in settings["rem_betas"]:
        t1 = time.time()
        rec = sp.cosine_recursion(args.p0, args.layers, beta=b, **var)
        rem[b] = compare(run_rem(b, args, var), {"": rec, "_uniform": uniform}, t1)
        rem[b].update(recursion=rec, uniform=uniform)
        r = rem[b]
        print(
            f"beta_SA = {b}: max |sim - recursion (T->inf)| = {r['max_abs_diff']:.4f}, vs "
            f"uniform attention {r['max_abs_diff_uniform']:.4f}, 2 s.e. "
            f"{2 * r['se'].max():.4f}, {r['wall_time_s']:.0f} s",
            flush=True,
        )
    wall = time.time() - t0
    with output.ResultSet(args.out, name="--out") as rs:
        table = {k: [] for k in ("d", "layer", "mean", "se", "recursion", "recursion_inf")}
        for d, r in per_width.items():
            for layer in range(args.layers + 1):
                table["d"].append(d)
                table["layer"].append(layer)
                table["mean"].append(r["mean"][layer])
                table["se"].append(r["se"][layer])
                table["recursion"].append(theory[layer])
                table["recursion_inf"].append(theory_inf[layer])
        output.write_csv(rs.path("cosine_propagation.csv"), table, ("d", "layer"))
        plot(per_width, theory, theory_inf, settings, rs.path("cosine_propagation.png"), rem)
        doc = {
            "study": "mean token cosine across post-LN blocks vs the recursion of "
            "Giorlandino & Goldt (2026, arXiv:2505.24333)",
            "settings": settings,
            "recursion": theory,
            "recursion_inf": theory_inf,
            "results": {str(d): r for d, r in per_width.items()},
            "rem_regime": {str(b): r for b, r in rem.items()},
            "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
            "git_commit": commit,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_time_s": wall,
            **environment(),
        }
        output.write_text(rs.path("cosine_propagation.json"), json.dumps(jsonable(doc), indent=1))
    print(f"{wall:.0f} s; wrote", ", ".join(rs.paths))


if __name__ == "__main__":
    main()
