"""``tfkernels lyapunov``: the Lyapunov spectrum from the command line.

Runs :func:`tfkernels.lyapunov_spectrum` on a model (random weights, or the sphere model
with ``--model sphere``; the model options of ``tfkernels geometry``), prints a summary
and writes ``lyapunov.csv`` (one row per exponent), ``lyapunov.png`` and
``lyapunov.json`` into ``--out`` as one set (the JSON last, with the configuration,
versions and machine).

Exit status: 0 done, 2 a bad option or an expected error (one line), 130 Ctrl-C.
"""

import os

from . import common
from .geometry import (
    add_flow_options,
    add_model_options,
    add_run_options,
    check_model_args,
    model_from_args,
)


def configure_parser(parser):
    """Add the options of ``tfkernels lyapunov`` to ``parser``."""
    g = parser.add_argument_group("study")
    add_flow_options(g, 1024, 2**63, 200, 10.0)
    g.add_argument(
        "--k",
        type=common.integer("--k"),
        default=None,
        help="number of leading exponents, at most seq-len * d (None: all)",
    )
    g.add_argument(
        "--transient",
        type=common.integer("--transient", 0),
        default=0,
        help="layers run before the exponents are measured (< --layers)",
    )
    g.add_argument(
        "--renorm-every",
        type=common.integer("--renorm-every"),
        default=1,
        help="layers between two QR re-orthonormalizations of the tangents",
    )
    g.add_argument(
        "--x0",
        default="normal",
        choices=["normal", "sphere"],
        help="initial tokens: standard normal, or uniform on the unit sphere",
    )
    g.add_argument(
        "--beta",
        type=common.real("--beta", 0.0, strict=True),
        default=1.0,
        help="inverse temperature of the attention",
    )
    g.add_argument(
        "--seed", type=common.seed("--seed"), default=0, help="seed of weights, states, tangents"
    )
    add_model_options(parser)
    parser.set_defaults(seq_len=4, damping=1.0)
    add_run_options(parser, os.path.join("results", "lyapunov"))


def check_args(args):
    """Check the combinations of ``tfkernels lyapunov`` options, before any work."""
    check_model_args(args)
    size = args.seq_len * args.d
    if args.k is not None and args.k > size:
        raise ValueError(f"`--k`={args.k} must be at most --seq-len * --d = {size}")
    if args.transient >= args.layers:
        raise ValueError(
            f"`--transient`={args.transient} must be less than `--layers`={args.layers}"
        )


def run_cli(args):
    """Run ``tfkernels lyapunov``."""
    from ..studies import lyapunov
    from .geometry import run_study

    def one(client):
        return lyapunov.lyapunov_spectrum(
            model_from_args(args, args.beta),
            args.trajectories,
            args.seq_len,
            args.layers,
            t_final=args.t_final,
            k=args.k,
            transient=args.transient,
            renorm_every=args.renorm_every,
            method=args.method,
            x0=args.x0,
            seed=args.seed,
            chunk_size=args.chunk_size,
            n_threads=args.threads,
            progress=not args.no_progress,
            client=client,
            checkpoint=args.checkpoint,
        )

    return run_study("lyapunov", args, one, lambda r: r.save(args.out))
