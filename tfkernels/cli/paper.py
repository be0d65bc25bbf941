"""``tfkernels paper``: the paper's Figures 1–3 with fitted slopes, from the command line.

Runs :func:`tfkernels.studies.paper.run_paper`, prints its findings and writes the
PNGs and ``paper.json`` into ``--out`` (created when missing), and nothing outside it.
``--out`` is checked before any work: an empty path, an existing file or a folder that
cannot be written is a one-line error, exit code 2. The results README of a benchmark
folder picks up ``<folder>/paper/paper.json`` the next time ``tfkernels bench --out
<folder>`` writes it.
"""

import os

from . import common

#: Largest ``--seed``: the experiments also draw with seeds ``seed + 1 … seed + 3``
#: (:data:`tfkernels.studies.paper.MAX_SEED`, repeated here so that ``--help`` does not
#: import the experiments).
MAX_SEED = 2**63 - 4


def configure_parser(parser):
    """Add the ``tfkernels paper`` options to ``parser`` (each checked as it is parsed)."""
    parser.add_argument(
        "--out",
        default=os.path.join("results", "paper"),
        help="output folder for the PNGs and paper.json (created when missing, checked "
        "before any work); nothing is written outside it",
    )
    parser.add_argument(
        "--seed",
        type=common.seed("--seed", MAX_SEED),
        default=0,
        help="seed of every random draw, in [0, 2**63 - 4]",
    )
    parser.add_argument(
        "--trajectories",
        type=common.integer("--trajectories"),
        default=1000,
        help="pairs of trajectories in Figure 2; accepts 1e3",
    )


def check_args(args):
    """Check ``--out`` before any work (ValueError or PermissionError naming it)."""
    from ..studies import output

    output.check_out_dir(args.out, "--out")


def run_cli(args):
    """Entry point of ``tfkernels paper``."""
    from ..studies import output, paper

    try:
        output.check_out_dir(args.out, "--out")
    except common.EXPECTED as err:
        return common.fail("paper", err, args)
    try:
        doc = paper.run_paper(args.out, seed=args.seed, fig2_trajectories=args.trajectories)
    except common.EXPECTED as err:
        return common.fail("paper", err, args)
    for line in doc["summary"]:
        print(line)
    print(f"wrote {os.path.join(args.out, 'paper.json')} and {len(doc['plots'])} plot(s)")
    return 0
