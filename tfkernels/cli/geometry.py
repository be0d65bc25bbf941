"""``tfkernels geometry``: the token-geometry study from the command line.

Runs :func:`tfkernels.token_geometry` on a model (random attention-only weights, an
ensemble of them with ``--ensemble``, or the sphere model of the clustering papers with
``--model sphere``), prints a summary and
writes ``geometry.csv``, ``geometry.png`` and ``geometry.json`` into ``--out`` as one set
(temporary names renamed at the end, the JSON last; the JSON holds the configuration,
versions and machine). With a range ``--beta a:b:n`` it runs the study at n values of β
from a to b as one sweep (:func:`tfkernels.sweep`) and writes the β × t phase diagram of
``--metric`` (by default ``dens``, the fraction of off-diagonal cosines above 0.999) as a
heat map, ``geometry.png``, beside the tidy table ``geometry.csv`` and ``geometry.json``.

Exit status: 0 done, 2 a bad option or an expected error (one line), 130 Ctrl-C.
"""

import os

from ..methods import METHODS
from . import common, grids

#: The metrics of the study (``studies.geometry.METRICS``; listed here so that
#: ``--help`` imports no NumPy-heavy module).
METRICS = ("mean_cosine", "dens", "clusters", "rank_collapse", "rank_collapse_fro", "energy")


def add_model_options(parser, model_default="random"):
    """The model options shared by ``geometry`` and ``sweep``: the random model (or
    ``--model sphere``, the clustering papers' model) and its size."""
    m = parser.add_argument_group("model")
    m.add_argument(
        "--model",
        default=model_default,
        choices=["random", "sphere"],
        help="random: random weights (variance weight-scale^2/fan_in); sphere: "
        "Q = K = V = O = I, one head, tokens kept on the unit sphere (norm='sphere', "
        "the post-norm retraction of Geshkovski et al.; needs kernels that run block "
        "models)",
    )
    m.add_argument(
        "--seq-len", type=common.integer("--seq-len", 2), default=32, help="tokens T per state"
    )
    m.add_argument("--d", type=common.integer("--d"), default=8, help="token width d")
    m.add_argument(
        "--heads", type=common.integer("--heads"), default=1, help="attention heads (divide --d)"
    )
    m.add_argument(
        "--d-ff",
        type=common.integer("--d-ff", 0),
        default=0,
        help="FFN hidden width of the random model (0: attention only)",
    )
    m.add_argument(
        "--damping", type=common.real("--damping", 0.0), default=0.0, help="damping γ >= 0"
    )
    m.add_argument(
        "--weight-scale",
        type=common.real("--weight-scale", 0.0, strict=True),
        default=1.0,
        help="scale of the random weights",
    )
    common.add_block_options(m)
    common.add_ensemble_options(m)
    m.add_argument(
        "--dtype", default="float64", choices=["float32", "float64"], help="state and weight dtype"
    )


def add_run_options(parser, out_default):
    """The run options shared by ``geometry``, ``lyapunov`` and ``sweep``."""
    r = parser.add_argument_group("run")
    r.add_argument(
        "--chunk-size",
        type=common.integer("--chunk-size"),
        default=None,
        help="trajectories per kernel call (None: the study's default)",
    )
    r.add_argument(
        "--threads",
        type=common.integer("--threads"),
        default=None,
        help="Numba threads, at most NUMBA_NUM_THREADS (None: all)",
    )
    r.add_argument(
        "--scheduler",
        type=common.text("--scheduler"),
        default=None,
        metavar="ADDRESS",
        help="run the chunks on the Dask cluster of this scheduler (needs tfkernels[dask])",
    )
    r.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    r.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="save the merged statistics to this file every few seconds and when "
        "interrupted; the same command run again resumes from it, bit-identically (a "
        "file of other options is refused)",
    )
    r.add_argument(
        "--out",
        default=out_default,
        help="output folder for the JSON, CSV and PNG (created when missing, checked "
        "before the study; the three are replaced together)",
    )


def add_flow_options(g, trajectories, max_trajectories, layers, t_final):
    """``--trajectories``, ``--layers``, ``--t-final`` and ``--method`` in the argument
    group ``g``, with these defaults (and at most ``max_trajectories``)."""
    g.add_argument(
        "--trajectories",
        type=common.integer("--trajectories", 1, max_trajectories),
        default=trajectories,
        help=f"number of trajectories; accepts {trajectories:.0e}".replace("e+0", "e"),
    )
    g.add_argument(
        "--layers", type=common.integer("--layers"), default=layers, help="number of layers N"
    )
    g.add_argument(
        "--t-final",
        type=common.real("--t-final", 0.0, strict=True),
        default=t_final,
        help="final time (dt = t_final / layers)",
    )
    g.add_argument("--method", default="euler", choices=list(METHODS), help="update rule")


def configure_parser(parser):
    """Add the options of ``tfkernels geometry`` to ``parser``."""
    g = parser.add_argument_group("study")
    add_flow_options(g, 2048, 2**34, 100, 10.0)
    g.add_argument(
        "--save-every",
        type=common.integer("--save-every"),
        default=1,
        help="measure every k-th layer (k divides --layers)",
    )
    g.add_argument(
        "--x0",
        default="sphere",
        choices=["sphere", "normal"],
        help="initial tokens: uniform on the unit sphere, or standard normal",
    )
    g.add_argument(
        "--beta",
        type=grids.values("--beta", minimum=0.0, strict=True),
        default=(1.0,),
        metavar="BETA|A:B:N",
        help="inverse temperature β of the attention: one value, or A:B:N (N values from "
        "A to B) for a β × t phase diagram of --metric; for the random model β scales "
        "the scores q·k/sqrt(d_h)",
    )
    g.add_argument(
        "--metric",
        default="dens",
        choices=list(METRICS),
        help="the metric of the phase diagram (with a --beta range; only it is measured)",
    )
    g.add_argument(
        "--metrics",
        type=common.text("--metrics"),
        default=None,
        metavar="NAMES",
        help="comma-separated metrics to measure (default: all for one β, --metric for "
        "a --beta range); each costs its own work per saved layer",
    )
    g.add_argument(
        "--seed", type=common.seed("--seed"), default=0, help="seed of weights and states"
    )
    add_model_options(parser)
    add_run_options(parser, os.path.join("results", "geometry"))


def check_model_args(args):
    """Checks of the model and run options shared by ``geometry``, ``lyapunov`` and
    ``sweep``."""
    from .. import _validate as v
    from ..studies import output

    if args.d % args.heads:
        raise ValueError(f"`--heads`={args.heads} must divide `--d`={args.d}")
    if args.model == "sphere" and (args.heads != 1 or args.d_ff):
        raise ValueError("`--model sphere` has one head and no FFN (--heads 1 --d-ff 0)")
    given = common.random_flags_given(args) if args.model == "sphere" else []
    if given:
        raise ValueError(
            f"`{given[0]}` describes a random model; `--model sphere` has its own block"
        )
    common.check_block_args(args)
    common.check_ensemble_args(args)
    v.check_fits("--damping", args.damping, args.dtype)
    if args.threads is not None:
        from ..threads import check_n_threads

        check_n_threads(args.threads, "--threads")
    output.check_out_dir(args.out, "--out")
    if args.checkpoint is not None:
        from ..studies import checkpoint

        checkpoint.check_path(args.checkpoint, "--checkpoint")


def check_args(args):
    """Check the combinations of ``tfkernels geometry`` options, before any work."""
    check_model_args(args)
    if args.metrics is not None:
        names = tuple(m.strip() for m in args.metrics.split(","))
        for name in names:
            if name not in METRICS:
                raise ValueError(f"`--metrics` must name metrics of {list(METRICS)}, got {name!r}")
        if len(args.beta) > 1 and args.metric not in names:
            raise ValueError(f"`--metrics` must include the diagram's `--metric` {args.metric!r}")
        args.metrics = names
    if args.layers % args.save_every:
        raise ValueError(f"`--save-every`={args.save_every} must divide `--layers`={args.layers}")


def model_from_args(args, beta=1.0):
    """The model the parsed options describe (β = ``beta``)."""
    import math

    import numpy as np

    from ..params import TransformerParams

    if args.model == "sphere":
        eye = np.eye(args.d, dtype=args.dtype)
        # the score is β_model·⟨x_i, x_j⟩/√d (one head): β_model = β·√d gives the paper's β
        return TransformerParams(
            wq=eye,
            wk=eye,
            wv=eye,
            wo=eye,
            n_heads=1,
            beta=beta * math.sqrt(args.d),
            damping=args.damping,
            norm="sphere",
            norm_position="post",
        )
    return common.random_model(
        args,
        d=args.d,
        n_heads=args.heads,
        d_ff=args.d_ff or None,
        ffn=args.d_ff > 0,
        damping=args.damping,
        beta=beta,
        weight_scale=args.weight_scale,
        seed=args.seed,
        dtype=args.dtype,
        **common.block_kwargs(args),
    )


def connect(args):
    """The Dask client of ``--scheduler`` (None without it)."""
    if not getattr(args, "scheduler", None):
        return None
    from ..studies import distributed

    return distributed.connect(args.scheduler)


def run_study(command, args, run, save):
    """Run ``run(client)`` → a result, print its summary and ``save(result)`` it into
    ``--out``, with the one-line errors and exit statuses of the command line.

    A model the kernels do not run yet (``NotImplementedError``) is an expected error.
    """
    from ..studies.runner import StudyInterrupted

    client = None
    try:
        client = connect(args)
        res = run(client)
    except (StudyInterrupted, KeyboardInterrupt):
        ck = getattr(args, "checkpoint", None)
        more = f"; run the same command to resume from {ck}" if ck and os.path.isfile(ck) else ""
        print(f"tfkernels {command}: interrupted: no result written{more}", flush=True)
        return 130
    except NotImplementedError as err:
        return common.fail(command, err, args)
    except common.EXPECTED as err:
        return common.fail(command, err, args)
    finally:
        if client is not None:
            client.close()
    print(res.summary())
    try:
        paths = save(res)
    except (ValueError, OSError) as err:
        return common.fail(command, err, args, f"`--out` {args.out!r}: {err}")
    print("wrote " + ", ".join(paths))
    return 0


def run_cli(args):
    """Run ``tfkernels geometry``: one study, or a β sweep (the phase diagram)."""
    import math

    import numpy as np

    from ..studies import geometry, sweep

    study = dict(
        n_trajectories=args.trajectories,
        seq_len=args.seq_len,
        n_layers=args.layers,
        t_final=args.t_final,
        method=args.method,
        save_every=args.save_every,
        x0=args.x0,
        seed=args.seed,
        chunk_size=args.chunk_size,
        n_threads=args.threads,
        progress=not args.no_progress,
    )
    # the sphere model's score is β_model·⟨x_i, x_j⟩/√d: --beta is the paper's β
    scale = math.sqrt(args.d) if args.model == "sphere" else 1.0

    def one(client):
        p = model_from_args(args, args.beta[0])
        return geometry.token_geometry(
            p, **study, metrics=args.metrics, client=client, checkpoint=args.checkpoint
        )

    def diagram(client):
        p = model_from_args(args, 1.0)
        grid = {"beta": [b * scale for b in args.beta]}
        metrics = args.metrics or (args.metric,)
        res = sweep.sweep(
            "token_geometry",
            p,
            grid,
            metric=args.metric,
            metrics=metrics,
            client=client,
            checkpoint=args.checkpoint,
            **study,
        )
        if scale != 1.0:  # report the paper's β
            res.grid = {"beta": list(args.beta)}
            res.table["beta"] = np.repeat(args.beta, len(res.results[0].t))
        return res

    if len(args.beta) == 1:
        return run_study("geometry", args, one, lambda r: r.save(args.out))
    return run_study("geometry", args, diagram, lambda r: r.save(args.out, stem="geometry"))
