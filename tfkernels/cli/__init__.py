"""The ``tfkernels`` command: ``decay``, ``bench``, ``paper``, ``geometry``, ``sweep`` and
``lyapunov`` subcommands.

Each subcommand lives in its own module, which provides ``configure_parser(parser)``,
``check_args(args)`` (the checks of flags that the parser cannot make one flag at a
time; ValueError naming the flags) and ``run_cli(args)``. Only the module of the
subcommand that runs is imported (for ``tfkernels --help``, none), so the command
starts fast and a subcommand never pays for another's imports.

Errors and exit status: 0 success; 2 an expected error (a bad flag, input the study
rejects, a numerical blow-up, an unwritable folder), reported on one line
``tfkernels <command>: error: ...``; 1 an unexpected exception (a bug), also one line;
130 Ctrl-C. ``--debug`` (before or after the subcommand) shows the traceback instead.
"""

import argparse
import importlib
import sys

from . import common

#: subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "decay": ("tfkernels.cli.decay", "Monte Carlo study of perturbation decay across layers"),
    "bench": (
        "tfkernels.cli.bench",
        "throughput and error-scaling sweeps against NumPy/PyTorch/JAX",
    ),
    "paper": ("tfkernels.cli.paper", "reproduce the paper's Figures 1-3 with fitted slopes"),
    "geometry": (
        "tfkernels.cli.geometry",
        "token geometry along the flow (clustering, rank collapse); --beta A:B:N: a "
        "beta x t phase diagram",
    ),
    "sweep": ("tfkernels.cli.sweep", "a study over a grid of one or two settings"),
    "lyapunov": (
        "tfkernels.cli.lyapunov",
        "the k leading Lyapunov exponents (tangents re-orthonormalized by QR)",
    ),
}


def _command_of(argv):
    """The subcommand named in ``argv`` (its first word that is not an option), or None."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


EPILOG = common.epilog()


def build_parser(argv=()):
    """Return the top-level argument parser; only the subcommand named in ``argv`` is
    configured (its module imported), the others are listed with their help line."""
    parser = common.Parser(
        prog="tfkernels",
        description=(
            "Transformer layers as a continuous dynamical system: a stack of N residual "
            "layers X <- X + dt*f(X) is forward Euler on dX/dt = f(X). This command runs "
            "the perturbation-decay study, the benchmark harness and the paper's experiments."
        ),
        epilog=EPILOG,
    )
    common.add_debug(parser)
    parser.subcommands = {}  # name -> its parser, for errors in its name
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _command_of(argv)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EPILOG,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        p.set_defaults(_module=module)
        parser.subcommands[name] = p
        # SUPPRESS: without the flag here, the top-level --debug (or False) stays.
        common.add_debug(p, default=argparse.SUPPRESS)
        if name == chosen:
            importlib.import_module(module).configure_parser(p)
    return parser


def main(argv=None):
    """Entry point of the ``tfkernels`` console script; returns the exit status.

    Expected errors (:data:`common.EXPECTED`) print one line and return 2, any other
    exception one line and 1, Ctrl-C one line and 130 (the shell's code for SIGINT);
    with ``--debug`` the exception propagates instead, with its traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser: "tfkernels decay: error: ..."
        parser.subcommands.get(args.command, parser).error(
            f"unrecognized arguments: {' '.join(extra)}"
        )
    if args.command is None:
        parser.print_help()
        return 0
    from .. import compiling

    module = importlib.import_module(args._module)
    try:
        check = getattr(module, "check_args", None)
        if check is not None:
            check(args)
    except common.EXPECTED as err:
        return common.fail(args.command, err, args)
    try:
        with compiling.notice():
            return module.run_cli(args) or 0
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT, no traceback
        if getattr(args, "debug", False):
            raise
        print(f"tfkernels {args.command}: interrupted", file=sys.stderr)
        return 130
    except common.EXPECTED as err:
        return common.fail(args.command, err, args)
    except Exception as err:  # noqa: BLE001 (the command's boundary: one line, exit 1)
        return common.crash(args.command, err, args)


if __name__ == "__main__":
    sys.exit(main())
