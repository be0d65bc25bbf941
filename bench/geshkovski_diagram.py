"""Geshkovski, Letrouit, Polyanskiy and Rigollet's clustering phase diagram, timed.

Their script (``phase-diagrams.py`` of github.com/borjanG/2023-transformers-rotf, run with
``--use_softmax``, which sets ``maxtime = 30``) simulates, for each of 90 values of β
from 0.1 to 9, 2,048 systems of n = 32 tokens on the unit circle (d = 2, float64,
``torch.randn`` normalized: uniform on the sphere) with Q = K = V = I:
``X ← normalize(X + Δt·softmax(β X Xᵀ) X)``, Δt = 0.1, 300 steps to t = 30, and records
the fraction of off-diagonal inner products above 0.999 (pooled over the systems) at 200
checkpoints ``linspace(0, 30, 200)``. Here the same model is ``norm="sphere"``,
``norm_position="post"`` (Euler, then each token divided by its norm) with the identity
weights and β_model = β·√2 (tfkernels' score is ``β_model⟨q, k⟩/√d_h``), run through
``tfk.sweep("token_geometry", …, metrics=("dens",))``: every saved layer is measured
inside the fused flow. Differences, stated in the output's JSON:

* the map has all 301 layers (t = 0, 0.1, …, 30); theirs has 200 columns, column k
  being the state after the first step whose time reaches ``linspace(0, 30, 200)[k]``
  (their t = 0 column is after one step). ``their_checkpoint_layers`` lists those
  layers, so their 200 columns are ours at those layers;
* the mean over systems of each system's fraction equals their pooled fraction (every
  system has n(n − 1) pairs);
* the same arithmetic up to rounding, not bit for bit (their PyTorch forms β·⟨x, y⟩
  and its softmax in another order);
* the initial tokens come from tfkernels' counter-based generator (seed 0).

Over the map it draws the boundary of the equiangular model: n tokens with all pairwise
inner products ρ(t) follow ``ρ' = 2(1 − ρ)((n − 1)ρ + 1) / (e^{β(1 − ρ)} + n − 1)``, and
every pair passes 0.999 together at ``t*(β) = ∫_{ρ₀}^{0.999} dρ / ρ'`` (quadrature), with
ρ₀ = 0, the mean inner product of two independent uniform tokens.

With ``--peer-betas K`` (default 3) it also times their algorithm in PyTorch on this
machine (:func:`their_loop_seconds`) at K of the β values and extrapolates to the
grid, so that the speed-up is measured in the same run on the same CPU as well as
against the issue's 21 minutes.

Run (from the repository root; one to two minutes on 2 idle cores, plus about 10 s
per peer β)::

    python bench/geshkovski_diagram.py --out results/geshkovski

writes ``geshkovski.csv`` (β × t of dens, tidy), ``geshkovski.json`` (provenance,
timings, the boundary) and ``geshkovski.png``.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np

#: Their defaults: d, tokens, systems, β grid, t_final, steps.
D, N_TOKENS, SYSTEMS, BETA_MIN, BETA_MAX, N_BETAS, T_FINAL, STEPS = (
    2,
    32,
    2048,
    0.1,
    9.0,
    90,
    30.0,
    300,
)
#: Their threshold of the density map, and of the equiangular boundary.
THRESHOLD = 0.999
#: ρ₀ of the equiangular boundary.
RHO0 = 0.0
#: The wall time of their script on 2 CPU cores, float64, as the issue states it (about
#: 14 s per β value).
THEIR_SECONDS = 21 * 60


def their_loop_seconds(beta, systems=SYSTEMS, threads=None, seed=0, x0=None):
    """Wall time of their algorithm for one β on this machine, in PyTorch on the CPU
    (float64, ``threads`` intra-op threads; None: all cores): the operations of their
    ``simu_xform.step_1`` with ``--use_softmax`` and of ``check_stats`` at each of
    their 200 checkpoints, in their order (a re-implementation from their script, with
    ``'cuda'`` replaced by the CPU, not their file): ``S = β·M Mᵀ``, ``softmax(S)``,
    ``M ← normalize(M + Δt·softmax(S) M)``, then at a checkpoint ``IP = M Mᵀ`` and the
    fraction of off-diagonal entries above 0.999. Returns ``(seconds, dens)``, ``dens``
    the 200 checkpoint values. The initial tokens are ``torch.randn`` normalized, as
    theirs (their values then agree with ours in distribution only), or the array
    ``x0 (systems, 32, 2)``, whose tokens must lie on the unit circle."""
    import torch

    old_threads, old_dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(threads or os.cpu_count())
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        n, step = N_TOKENS, T_FINAL / STEPS
        if x0 is None:
            M = torch.nn.functional.normalize(torch.randn(systems, n, D), dim=2)
        else:
            M = torch.tensor(np.asarray(x0, dtype=np.float64))
            systems = M.shape[0]
        M2 = torch.empty(systems, n, D)
        SM = torch.empty(systems, n, n)
        IP = torch.empty(systems, n, n)
        times = torch.linspace(0, T_FINAL, 200)
        off = ~torch.eye(n).bool().expand(systems, -1, -1)
        dens, ckpt, t = [], 0, 0.0
        while True:
            M2.copy_(M)
            torch.matmul(M2, M.transpose(1, 2), out=SM)
            SM *= beta
            SM = torch.nn.functional.softmax(SM, dim=2)
            torch.matmul(SM, M, out=M2)
            M2 *= step
            M2 += M
            torch.nn.functional.normalize(M2, dim=2, out=M)
            t += step
            if ckpt < len(times) and t >= times[ckpt]:
                torch.matmul(M, M.transpose(1, 2), out=IP)
                pairs = IP[off]
                value = float((pairs > THRESHOLD).sum() / len(pairs))
                while ckpt < len(times) and t >= times[ckpt]:
                    dens.append(value)
                    ckpt += 1
            if t >= T_FINAL:
                break
        return time.perf_counter() - t0, dens
    finally:
        torch.set_num_threads(old_threads)
        torch.set_default_dtype(old_dtype)


def their_checkpoint_layers(t_final=T_FINAL, step=T_FINAL / STEPS, n_ckpt=200):
    """The layer (step count) whose state each of their ``n_ckpt`` checkpoints records:
    their loop adds ``step`` to a float time after every step and fills every
    checkpoint of ``linspace(0, t_final, n_ckpt)`` that the time has reached."""
    ts = np.linspace(0.0, t_final, n_ckpt)
    now, k, steps, layers = 0.0, 0, 0, []
    while k < n_ckpt:
        now += step
        steps += 1
        while k < n_ckpt and now >= ts[k]:
            layers.append(steps)
            k += 1
        if now >= t_final:
            break
    return layers


def boundary(betas, n=N_TOKENS, rho0=RHO0, target=THRESHOLD):
    """``t*(β)``: the time at which the equiangular ρ(t) from ρ₀ reaches ``target``."""
    from scipy.integrate import quad

    def inv_rate(r, b):
        return (math.exp(b * (1.0 - r)) + n - 1) / (2.0 * (1.0 - r) * ((n - 1) * r + 1.0))

    return np.array([quad(inv_rate, rho0, target, args=(b,), limit=200)[0] for b in betas])


def sphere_model(d=D):
    """Q = K = V = O = I, one head, tokens on the sphere (post-norm retraction); β set
    per grid point."""
    import tfkernels as tfk

    eye = np.eye(d)
    return tfk.TransformerParams(
        wq=eye, wk=eye, wv=eye, wo=eye, n_heads=1, beta=1.0, norm="sphere", norm_position="post"
    )


def run(args):
    """Warm up (compile or load the kernels), run the diagram, return the sweep and the
    timings."""
    import tfkernels as tfk

    p = sphere_model()
    betas = np.linspace(BETA_MIN, BETA_MAX, args.betas)
    grid = {"beta": [float(b) * math.sqrt(D) for b in betas]}
    study = dict(
        n_trajectories=args.trajectories,
        seq_len=N_TOKENS,
        n_layers=STEPS,
        t_final=T_FINAL,
        x0="sphere",
        seed=0,
        metrics=tuple(args.metrics.split(",")),
        n_threads=args.threads,
    )
    t0 = time.perf_counter()
    tfk.sweep("token_geometry", p, {"beta": grid["beta"][:1]}, metric="dens",
              **dict(study, n_trajectories=8, n_layers=2, t_final=0.2))  # fmt: skip
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    sw = tfk.sweep("token_geometry", p, grid, metric="dens", progress=args.progress, **study)
    wall = time.perf_counter() - t0
    return sw, betas, warm, wall


def plot(path, t, betas, dens, tstar, systems):
    """The β × t map of dens (linear and log colour scales) with the boundary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    from tfkernels.studies.sweep import _edges

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4), constrained_layout=True)
    inside = tstar <= t[-1]
    for ax, scale in zip(axes, ("linear", "log")):
        norm = mcolors.LogNorm(vmin=1e-3, vmax=1.0) if scale == "log" else None
        mesh = ax.pcolormesh(
            _edges(t), _edges(betas), np.where(dens > 0, dens, np.nan) if norm else dens,
            shading="flat", cmap="RdBu_r", norm=norm, rasterized=True,
        )  # fmt: skip
        fig.colorbar(mesh, ax=ax, label=f"fraction of pairs with ⟨x_i, x_j⟩ > {THRESHOLD}")
        ax.plot(tstar[inside], betas[inside], color="k", lw=1.6,
                label=f"equiangular ODE: ρ(t) = {THRESHOLD} from ρ₀ = {RHO0:g}")  # fmt: skip
        ax.set_xlim(t[0], t[-1])
        ax.set_xlabel("t")
        ax.set_ylabel("β")
        ax.set_title(f"dens ({scale} scale)", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"Geshkovski et al.'s phase diagram: d = {D}, n = {N_TOKENS}, {systems:,} systems, "
        f"Δt = {T_FINAL / STEPS:g}, float64 (tfkernels)",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("results", "geshkovski"))
    ap.add_argument("--trajectories", type=int, default=SYSTEMS)
    ap.add_argument("--betas", type=int, default=N_BETAS)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--metrics", default="dens", help="comma-separated metrics to measure")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument(
        "--peer-betas",
        type=int,
        default=3,
        help="time their algorithm in PyTorch on this machine at this many β values "
        "(the first, last and evenly between), extrapolated to the whole grid; 0: no "
        "same-machine peer (needs torch)",
    )
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    import tfkernels as tfk
    from tfkernels.studies.environment import environment

    sw, betas, warm, wall = run(args)
    peer = None
    if args.peer_betas > 0:
        try:
            import torch
        except ImportError:
            print("torch is not installed: no same-machine peer", file=sys.stderr)
        else:
            picks = np.unique(np.linspace(0, len(betas) - 1, args.peer_betas).round().astype(int))
            secs = [
                their_loop_seconds(float(betas[i]), args.trajectories, args.threads)[0]
                for i in picks
            ]
            per_beta = float(np.median(secs))
            peer = {
                "what": "their algorithm in PyTorch on this machine (their_loop_seconds)",
                "torch": torch.__version__,
                "betas_timed": [float(betas[i]) for i in picks],
                "seconds_per_beta": secs,
                "median_seconds_per_beta": per_beta,
                "whole_grid_s": per_beta * len(betas),
                "speedup": per_beta * len(betas) / wall,
            }
    t = np.asarray(sw.results[0].t)
    dens = sw.values()  # (n_betas, 301)
    tstar = boundary(betas)
    layer_trajectories = len(betas) * args.trajectories * STEPS
    stem = os.path.join(args.out, "geshkovski")
    with open(stem + ".csv", "w") as f:
        f.write("beta,t,layer,dens_mean,dens_std\n")
        std = np.asarray(sw.table["dens_std"]).reshape(dens.shape)
        for i, b in enumerate(betas):
            for s in range(t.size):
                f.write(f"{b!r},{t[s]!r},{s},{dens[i, s]!r},{std[i, s]!r}\n")
    plot(stem + ".png", t, betas, dens, tstar, args.trajectories)
    doc = {
        "what": "Geshkovski et al.'s clustering phase diagram (dens: the fraction of "
        f"off-diagonal inner products above {THRESHOLD}), beta x t",
        "command": "python bench/geshkovski_diagram.py " + " ".join(argv or sys.argv[1:]),
        "their_code": "github.com/borjanG/2023-transformers-rotf phase-diagrams.py "
        "--use_softmax (defaults: dmodel 2, ntokens 32, batch 2048, betamin 0.1, betamax 9, "
        "betas 90, maxtime 30, step 0.1, float64, Q = K = V = I)",
        "setup": {
            "d": D,
            "n_tokens": N_TOKENS,
            "systems": args.trajectories,
            "betas": [float(b) for b in betas],
            "t_final": T_FINAL,
            "steps": STEPS,
            "dt": T_FINAL / STEPS,
            "dtype": "float64",
            "model": "TransformerParams(wq=wk=wv=wo=I, n_heads=1, beta=beta*sqrt(2), "
            "norm='sphere', norm_position='post'), method='euler', x0='sphere', seed=0",
            "metrics": args.metrics.split(","),
        },
        "differences": [
            "301 columns (every layer, t = 0 ... 30) instead of their 200 checkpoints; "
            "their column k is our layer their_checkpoint_layers[k]",
            "mean over systems of each system's fraction = their pooled fraction "
            "(every system has n(n-1) pairs)",
            "same arithmetic up to rounding, not bit for bit (PyTorch forms beta*<x,y> and "
            "its softmax in another order)",
            "initial tokens from tfkernels' counter-based generator (seed 0), not torch.randn",
        ],
        "their_checkpoint_layers": their_checkpoint_layers(),
        "boundary": {
            "definition": "t*(beta) = integral from rho0 to 0.999 of drho / rho'(rho), "
            "rho' = 2(1 - rho)((n - 1) rho + 1) / (exp(beta (1 - rho)) + n - 1): the time "
            "at which every pair of the equiangular configuration passes 0.999",
            "rho0": RHO0,
            "why_rho0": "the mean inner product of two independent uniform tokens",
            "t_star": [float(x) for x in tstar],
        },
        "timing": {
            "warmup_s": warm,
            "wall_s": wall,
            "trajectory_layers": layer_trajectories,
            "trajectory_layers_per_s": layer_trajectories / wall,
            "their_script_s": THEIR_SECONDS,
            "speedup_vs_their_script": THEIR_SECONDS / wall,
            "same_machine_peer": peer,
            "threads": args.threads,
        },
        "sweep_meta": sw.meta,
        "environment": environment(),
        "tfkernels": tfk.__version__,
    }
    from tfkernels.studies.serialize import jsonable

    with open(stem + ".json", "w") as f:
        json.dump(jsonable(doc), f, indent=1)
    print(
        f"{len(betas)} betas x {args.trajectories} systems x {STEPS} steps: {wall:.1f} s "
        f"({layer_trajectories / wall:.3g} trajectory-layers/s; warm-up {warm:.1f} s); "
        f"{THEIR_SECONDS / wall:.1f}x their script's {THEIR_SECONDS / 60:.0f} min "
        "(the issue's figure)"
    )
    if peer is not None:
        print(
            f"their algorithm in PyTorch here: {peer['median_seconds_per_beta']:.2f} s per β "
            f"(median of {len(peer['seconds_per_beta'])}), {peer['whole_grid_s']:.0f} s for "
            f"the grid: {peer['speedup']:.1f}x"
        )
    print("wrote", stem + ".{csv,json,png}")


if __name__ == "__main__":
    main()
