"""``tfkernels sweep``: a study over a grid of one or two settings, from the command line.

Runs :func:`tfkernels.sweep` (the perturbation-decay or the token-geometry study at every
grid point, all points' chunks as one run, locally or on Dask with ``--scheduler``) on the
model of the model options, prints a summary and writes ``sweep.csv`` (the tidy table),
``sweep.png`` (a heat map over two settings, or over the setting and t for geometry; a
line for decay over one setting) and ``sweep.json`` (the table, every point's result,
versions and machine) into ``--out`` as one set, the JSON last.

``--grid NAME=VALUES`` (once or twice): VALUES is one value, a comma list or ``A:B:N``
(N values from A to B). The settings are the model's ``beta``, ``damping``,
``norm_eps`` and ``weight_scale``, and the study's ``t_final``, ``dt`` (Δt:
``t_final = dt · layers``), ``noise``, ``c``, and ``eps`` (decay) or ``energy_beta``
(geometry).

``--checkpoint PATH`` saves the merged statistics of every grid point every few seconds
and when interrupted; the same command run again resumes from it, bit-identically.

Exit status: 0 done, 2 a bad option or an expected error (one line), 130 Ctrl-C.
"""

import argparse
import os

from ..methods import METHODS, MODES
from . import common, geometry, grids

#: The grid of ``tfkernels sweep`` without ``--grid``: the decay rate against damping.
DEFAULT_GRID = (("damping", (0.5, 1.0, 2.0, 4.0)),)


class _AppendSetting(argparse.Action):
    """``--grid`` given again adds a setting: the value is a tuple of pairs."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, (getattr(namespace, self.dest) or ()) + (values,))


def configure_parser(parser):
    """Add the options of ``tfkernels sweep`` to ``parser``."""
    g = parser.add_argument_group("sweep")
    g.add_argument(
        "--study", default="decay", choices=["decay", "geometry"], help="the study at every point"
    )
    g.add_argument(
        "--grid",
        type=grids.setting("--grid"),
        action=_AppendSetting,
        default=None,
        metavar="NAME=VALUES",
        help="a setting and its values (one, a comma list, or A:B:N); once or twice, "
        "e.g. --grid beta=0.5:4:8 --grid damping=1,2,4 (None: damping=0.5,1,2,4)",
    )
    g.add_argument(
        "--metric",
        default="dens",
        choices=list(geometry.METRICS),
        help="the geometry metric of the table and figure (geometry only)",
    )
    s = parser.add_argument_group("study")
    s.add_argument(
        "--trajectories",
        type=common.integer("--trajectories", 1, 2**34),
        default=4096,
        help="trajectories per grid point; accepts 4e3",
    )
    s.add_argument(
        "--layers", type=common.integer("--layers"), default=16, help="number of layers N"
    )
    s.add_argument(
        "--t-final",
        type=common.real("--t-final", 0.0, strict=True),
        default=None,
        help="final time (None: 1.0; not with --grid t_final or dt)",
    )
    s.add_argument("--method", default="euler", choices=list(METHODS), help="update rule")
    s.add_argument("--x0", default="normal", choices=["normal", "sphere"], help="initial tokens")
    s.add_argument(
        "--seed", type=common.seed("--seed"), default=0, help="seed of weights and states"
    )
    s.add_argument(
        "--save-every",
        type=common.integer("--save-every"),
        default=1,
        help="geometry: measure every k-th layer (k divides --layers)",
    )
    s.add_argument(
        "--mode", default="pair", choices=list(MODES), help="decay: pair or tangent mode"
    )
    s.add_argument(
        "--beta",
        type=common.real("--beta", 0.0, strict=True),
        default=1.0,
        help="the model's β (when not swept)",
    )
    geometry.add_model_options(parser)
    geometry.add_run_options(parser, os.path.join("results", "sweep"))


def check_args(args):
    """Check the combinations of ``tfkernels sweep`` options, before any work."""
    from ..studies import sweep

    geometry.check_model_args(args)
    if args.grid is None:
        args.grid = DEFAULT_GRID
    if len(args.grid) > 2:
        raise ValueError(f"`--grid` may be given once or twice, got {len(args.grid)} settings")
    names = [name for name, _ in args.grid]
    if len(set(names)) != len(names):
        raise ValueError(f"`--grid` names a setting twice: {names}")
    kind = sweep.STUDIES[args.study]
    valid = sweep.PARAM_SETTINGS + sweep.STUDY_SETTINGS[kind]
    for name in names:
        if name not in valid:
            raise ValueError(f"`--grid` setting {name!r} is unknown; choose from {list(valid)}")
    if args.t_final is not None and {"t_final", "dt"} & set(names):
        raise ValueError("`--t-final` cannot be given with `--grid t_final` or `--grid dt`")
    if args.study == "geometry" and args.layers % args.save_every:
        raise ValueError(f"`--save-every`={args.save_every} must divide `--layers`={args.layers}")


def run_cli(args):
    """Run ``tfkernels sweep``."""
    from ..studies import sweep

    kw = dict(
        n_trajectories=args.trajectories,
        seq_len=args.seq_len,
        n_layers=args.layers,
        method=args.method,
        x0=args.x0,
        seed=args.seed,
        chunk_size=args.chunk_size,
    )
    if args.t_final is not None:
        kw["t_final"] = args.t_final
    if args.study == "geometry":
        kw.update(save_every=args.save_every, metric=args.metric)
    else:
        kw.update(mode=args.mode)
    grid = {name: list(vals) for name, vals in args.grid or DEFAULT_GRID}

    def run(client):
        p = geometry.model_from_args(args, args.beta)
        return sweep.sweep(
            args.study,
            p,
            grid,
            n_threads=args.threads,
            progress=not args.no_progress,
            client=client,
            checkpoint=args.checkpoint,
            **kw,
        )

    return geometry.run_study("sweep", args, run, lambda r: r.save(args.out))
