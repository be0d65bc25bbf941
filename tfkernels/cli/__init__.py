"""The ``tfkernels`` command: ``decay``, ``bench`` and ``paper`` subcommands.

Each subcommand lives in its own module, which provides ``configure_parser(parser)``
and ``run_cli(args)``. Only the module of the subcommand that runs is imported (for
``tfkernels --help``, none), so the command starts fast and a subcommand never pays
for another's imports.
"""

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "decay": ("tfkernels.cli.decay", "Monte Carlo study of perturbation decay across layers"),
    "bench": (
        "tfkernels.cli.bench",
        "throughput and error-scaling sweeps against NumPy/PyTorch/JAX",
    ),
    "paper": ("tfkernels.cli.paper", "reproduce the paper's Figures 1-3 with fitted slopes"),
}


def _command_of(argv):
    """The subcommand named in ``argv`` (its first word that is not an option), or None."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def build_parser(argv=()):
    """Return the top-level argument parser; only the subcommand named in ``argv`` is
    configured (its module imported), the others are listed with their help line."""
    parser = argparse.ArgumentParser(
        prog="tfkernels",
        description=(
            "Transformer layers as a continuous dynamical system: a stack of N residual "
            "layers X <- X + dt*f(X) is forward Euler on dX/dt = f(X). This command runs "
            "the perturbation-decay study, the benchmark harness and the paper's experiments."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _command_of(argv)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).configure_parser(p)
    return parser


def main(argv=None):
    """Entry point of the ``tfkernels`` console script.

    Returns the exit code: the subcommand's, or 130 after Ctrl-C (one line on stderr).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .. import compiling

    try:
        with compiling.notice():
            return importlib.import_module(args._module).run_cli(args) or 0
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT, no traceback
        print(f"tfkernels {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
