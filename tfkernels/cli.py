"""The ``tfkernels`` command: ``decay``, ``bench`` and ``paper`` subcommands.

Each subcommand lives in its own module, which provides ``configure_parser(parser)``
and ``run_cli(args)``; modules are imported only when their subcommand runs, so
``tfkernels --help`` starts fast.
"""

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "decay": ("tfkernels.decay", "Monte Carlo study of perturbation decay across layers"),
    "bench": ("tfkernels.harness", "throughput and error-scaling sweeps against NumPy/PyTorch/JAX"),
    "paper": ("tfkernels.paper", "reproduce the paper's Figures 1-3 with fitted slopes"),
}


def build_parser():
    """Return the top-level argument parser with every subcommand configured."""
    parser = argparse.ArgumentParser(
        prog="tfkernels",
        description=(
            "Transformer layers as a continuous dynamical system: a stack of N residual "
            "layers X <- X + dt*f(X) is forward Euler on dX/dt = f(X). This command runs "
            "the perturbation-decay study, the benchmark harness and the paper's experiments."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(_module=module)
        importlib.import_module(module).configure_parser(p)
    return parser


def main(argv=None):
    """Entry point of the ``tfkernels`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return importlib.import_module(args._module).run_cli(args) or 0


if __name__ == "__main__":
    sys.exit(main())
