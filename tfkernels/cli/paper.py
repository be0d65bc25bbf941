"""``tfkernels paper``: the paper's Figures 1–3 with fitted slopes, from the command line.

Runs :func:`tfkernels.studies.paper.run_paper`, prints its findings and writes the
PNGs and ``paper.json`` into ``--out`` (created when missing), and nothing outside it.
``--out`` is checked before any work: an empty path, an existing file or a folder that
cannot be written is a one-line error, exit code 2. The results README of a benchmark
folder picks up ``<folder>/paper/paper.json`` the next time ``tfkernels bench --out
<folder>`` writes it.
"""

import os
import sys


def configure_parser(parser):
    """Add the ``tfkernels paper`` options to ``parser``."""
    parser.add_argument(
        "--out",
        default=os.path.join("results", "paper"),
        help="output folder for the PNGs and paper.json (created when missing, checked "
        "before any work); nothing is written outside it",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument(
        "--trajectories", type=int, default=1000, help="pairs of trajectories in Figure 2"
    )


def run_cli(args):
    """Entry point of ``tfkernels paper``."""
    from ..studies import output, paper

    if args.trajectories < 1:
        raise SystemExit(
            f"tfkernels paper: error: `--trajectories` must be >= 1, got {args.trajectories}"
        )
    try:
        output.check_out_dir(args.out, "--out")
    except (TypeError, ValueError, OSError) as err:
        print(f"tfkernels paper: error: {err}", file=sys.stderr)
        return 2
    doc = paper.run_paper(args.out, seed=args.seed, fig2_trajectories=args.trajectories)
    for line in doc["summary"]:
        print(line)
    print(f"wrote {os.path.join(args.out, 'paper.json')} and {len(doc['plots'])} plot(s)")
    return 0
