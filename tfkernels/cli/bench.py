"""``tfkernels bench``: the command line of the benchmark harness (:mod:`tfkernels.bench`).

At import time only :mod:`tfkernels.bench.settings` (the presets) is loaded, so that
``tfkernels bench --help`` stays fast; the harness itself is imported when the sweep
runs.
"""

import os
import sys
from dataclasses import replace

from ..bench.settings import PRESETS, Settings, default_threads, grid_configs
from . import common


def _peers():
    """The peers a sweep can time (imported when ``--peers`` is given)."""
    from ..bench import peers

    return peers.PEERS


def configure_parser(parser):
    """Add the ``tfkernels bench`` options to ``parser``.

    Every option is checked as it is parsed (a bad value is ``argument --flag: ...``,
    exit status 2); :func:`check_args` checks the combinations.
    """
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="sweep size: ci (seconds), quick (about a minute), full; mc: throughput "
        "at Monte Carlo batch sizes, judged against issue 18's goals; blocks: a GPT-2 "
        "(pre-LN) and a BERT (post-LN) layer at those batch sizes, float32, against peers "
        "computing the same block (issue 17's goals)",
    )
    parser.add_argument(
        "--n", type=common.integers("--n"), help="layers N, comma-separated (e.g. 8,32,128)"
    )
    parser.add_argument(
        "--d",
        type=common.integers("--d"),
        help="widths d, comma-separated (e.g. 16,64); a grid at "
        "--seq-len and --heads replaces the named configs",
    )
    parser.add_argument(
        "--configs",
        type=common.text("--configs"),
        help="comma list of the preset's configuration names to run (e.g. "
        "small-bert,small-gpt2 of --preset blocks); None: all of them",
    )
    parser.add_argument(
        "--seq-len", type=common.integer("--seq-len"), help="tokens T of the --d grid; None: 16"
    )
    parser.add_argument(
        "--heads",
        type=common.integer("--heads"),
        help="heads H of the --d grid (divide every d); None: 4",
    )
    parser.add_argument(
        "--dtype",
        type=_dtypes,
        help="float32, float64, both, or a comma list",
    )
    parser.add_argument(
        "--batch",
        type=common.integer("--batch"),
        help="trajectories B per call; None: sized per config from the preset's work",
    )
    parser.add_argument(
        "--peers",
        type=common.names("--peers", _peers, empty=True),
        help="comma list of numpy,torch,jax, or none",
    )
    parser.add_argument(
        "--threads",
        type=common.integer("--threads"),
        help="threads for tfkernels and the peers, at most NUMBA_NUM_THREADS; "
        "None: all Numba threads",
    )
    parser.add_argument(
        "--repeats",
        type=common.integer("--repeats"),
        help="timed samples per implementation; None: the preset's",
    )
    parser.add_argument(
        "--method",
        choices=("euler", "heun", "rk4"),
        help="update rule of the throughput sweep; None: the preset's (euler)",
    )
    parser.add_argument(
        "--compile",
        choices=("first", "warm", "cold"),
        help="compile-time measurement: in-process first call only, plus "
        "a warm start, or plus a cold compile in a fresh cache (of a "
        "tiny flow and of the default `tfkernels decay` study); "
        "None: the preset's",
    )
    parser.add_argument(
        "--sections",
        type=common.names("--sections", Settings.sections),
        help="comma list of " + ",".join(Settings.sections),
    )
    parser.add_argument(
        "--wait-quiet",
        type=common.real("--wait-quiet", 0.0),
        metavar="SECONDS",
        help="before each point wait up to SECONDS for other processes to "
        "leave the CPUs; 0: never; None: the preset's",
    )
    parser.add_argument("--out", default="results", help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="no PNG plots")


def _dtypes(text):
    """argparse type of ``--dtype``: ``both`` or a comma list of float32, float64."""
    if text.strip() == "both":
        return ("float32", "float64")
    return common.names("--dtype", ("float32", "float64"))(text)


_dtypes.flag = "--dtype"


def settings_from_args(args):
    """Merge ``--preset`` with the command-line overrides into a ``Settings``.

    Raises
    ------
    ValueError
        ``--heads`` does not divide every width, or ``--threads`` exceeds Numba's
        threads; the message names the option (each option alone is checked by
        the parser).
    """
    s = PRESETS[args.preset]
    custom = {}
    grid = args.d is not None or args.seq_len is not None or args.heads is not None
    if getattr(args, "configs", None) is not None:
        if grid:
            raise ValueError("`--configs` picks named configurations; it excludes a --d grid")
        known = [c.name for c in s.configs]
        want = [w.strip() for w in args.configs.split(",") if w.strip()]
        bad = [w for w in want if w not in known]
        if bad or not want:
            raise ValueError(
                f"`--configs`: {', '.join(bad) or repr(args.configs)} is not a configuration "
                f"of --preset {args.preset} ({', '.join(known)})"
            )
        custom["configs"] = tuple(c for c in s.configs if c.name in want)
    if grid:
        ds = args.d if args.d is not None else tuple(c.d for c in s.configs)
        seq_len = 16 if args.seq_len is None else args.seq_len
        custom["configs"] = grid_configs(ds, seq_len, 4 if args.heads is None else args.heads)
    for key, name in (
        ("n", "n_layers"),
        ("dtype", "dtypes"),
        ("batch", "batch"),
        ("method", "method"),
        ("repeats", "repeats"),
        ("peers", "peers"),
        ("compile", "compile"),
        ("wait_quiet", "wait_quiet_s"),
        ("sections", "sections"),
    ):
        if getattr(args, key) is not None:
            custom[name] = getattr(args, key)
    threads = default_threads() if args.threads is None else args.threads
    if threads > default_threads():
        raise ValueError(
            f"`--threads`={threads} exceeds the {default_threads()} threads "
            "Numba started with (set NUMBA_NUM_THREADS to raise it)"
        )
    name = (
        s.preset
        if not (set(custom) & {"configs", "n_layers", "dtypes", "batch", "method"})
        else "custom"
    )
    return replace(s, preset=name, threads=threads, **custom)


def check_args(args):
    """Check the combinations of parsed ``tfkernels bench`` options and ``--out``,
    before the sweep; ValueError or PermissionError naming the flag."""
    from ..studies import output

    settings_from_args(args)
    output.check_out_dir(args.out, "--out")


def print_summary(doc, file=None):
    """Print the machine peak, the throughput table, the goals and the fitted orders."""
    from ..bench.report import fmt, goals, peak_used, readme_machine_facts, throughput_table

    file = file or sys.stdout
    m = doc["machine"]
    for line in readme_machine_facts(m)[:1]:
        print(line, file=file)
    print(m["peak"]["explanation"], file=file)
    if m.get("measured_peak"):
        print(m["measured_peak"]["explanation"], file=file)
        print(
            "% peak uses "
            + ", ".join(f"{v:.0f} GFLOP/s {dt}" for dt, v in peak_used(m).items())
            + f" on {m['peak_used']['threads']} thread(s)",
            file=file,
        )
    if doc.get("throughput"):
        print("\n".join(throughput_table(doc)), file=file)
    for name, ok, fig in goals(doc):
        verdict = "not judged" if ok is None else ("met" if ok else "NOT met")
        print(f"{verdict:<7} {name}: {fig}", file=file)
    if doc.get("errors"):
        for system, e in doc["errors"].items():
            orders = ", ".join(f"{m} {fmt(r['order'], '.2f')}" for m, r in e["methods"].items())
            print(f"fitted orders ({system}): {orders}", file=file)


def run_cli(args):
    """Entry point of ``tfkernels bench``."""
    from ..studies import output

    try:
        settings = settings_from_args(args)
        output.check_out_dir(args.out, "--out")  # before the sweep, not after it
    except common.EXPECTED as exc:
        return common.fail("bench", exc, args)
    from ..bench.run import run_sweep

    doc = run_sweep(settings, args.out, progress=not args.no_progress, plots=not args.no_plots)
    print_summary(doc)
    print(
        f"wrote {os.path.join(args.out, 'bench-' + doc['preset'])}.json/.csv, "
        f"README.md and {len(doc.get('plots', []))} plot(s) "
        f"in {doc['elapsed_s']:.0f} s"
    )
    return 0
