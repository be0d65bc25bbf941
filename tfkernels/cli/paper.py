"""``tfkernels paper``: the paper's Figures 1–3 with fitted slopes, from the command line.

Runs :func:`tfkernels.studies.paper.run_paper`, prints its findings and writes the
PNGs and ``paper.json`` into ``--out``; when ``--out`` is a folder named ``paper``,
also regenerates the results README in its parent folder.
"""

import os


def configure_parser(parser):
    """Add the ``tfkernels paper`` options to ``parser``."""
    parser.add_argument(
        "--out",
        default=os.path.join("results", "paper"),
        help="output folder for the PNGs and paper.json",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument(
        "--trajectories", type=int, default=1000, help="pairs of trajectories in Figure 2"
    )


def run_cli(args):
    """Entry point of ``tfkernels paper``."""
    from ..studies import paper

    if args.trajectories < 1:
        raise SystemExit(
            f"tfkernels paper: error: `--trajectories` must be >= 1, got {args.trajectories}"
        )
    doc = paper.run_paper(args.out, seed=args.seed, fig2_trajectories=args.trajectories)
    for line in doc["summary"]:
        print(line)
    readme = paper.regenerate_readme(args.out)
    if readme is not None:
        print(f"regenerated {readme}")
    print(f"wrote {os.path.join(args.out, 'paper.json')} and {len(doc['plots'])} plot(s)")
    return 0
