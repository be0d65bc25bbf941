"""``tfkernels bench``: the command line of the benchmark harness (:mod:`tfkernels.bench`).

At import time only :mod:`tfkernels.bench.settings` (the presets) is loaded, so that
``tfkernels bench --help`` stays fast; the harness itself is imported when the sweep
runs.
"""

import os
import sys
from dataclasses import replace

from ..bench.settings import PRESETS, Settings, default_threads, grid_configs


def configure_parser(parser):
    """Add the ``tfkernels bench`` options to ``parser``."""
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="sweep size: ci (seconds), quick (about a minute), full; mc: throughput "
        "at Monte Carlo batch sizes, judged against issue 18's goals",
    )
    parser.add_argument("--n", help="layers N, comma-separated (e.g. 8,32,128)")
    parser.add_argument(
        "--d",
        help="widths d, comma-separated (e.g. 16,64); a grid at "
        "--seq-len and --heads replaces the named configs",
    )
    parser.add_argument("--seq-len", type=int, help="tokens T of the --d grid; None: 16")
    parser.add_argument("--heads", type=int, help="heads H of the --d grid; None: 4")
    parser.add_argument("--dtype", help="float32, float64, both, or a comma list")
    parser.add_argument(
        "--batch",
        type=int,
        help="trajectories B per call; None: sized per config from the preset's work",
    )
    parser.add_argument("--peers", help="comma list of numpy,torch,jax, or none")
    parser.add_argument(
        "--threads", type=int, help="threads for tfkernels and the peers; None: all Numba threads"
    )
    parser.add_argument(
        "--repeats", type=int, help="timed samples per implementation; None: the preset's"
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
    parser.add_argument("--sections", help="comma list of " + ",".join(Settings.sections))
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="SECONDS",
        help="before each point wait up to SECONDS for other processes to "
        "leave the CPUs; 0: never; None: the preset's",
    )
    parser.add_argument("--out", default="results", help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="no PNG plots")


def _int_list(name, text):
    """Positive integers from a comma list; ValueError naming the option otherwise."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(
            f"`{name}` must be a comma-separated list of integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise ValueError(f"`{name}` needs positive integers, got {text!r}")
    return values


def _name_list(name, text, allowed):
    """Names from a comma list (``none`` or empty: no names), each one of ``allowed``."""
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if values in ((), ("none",)):
        return ()
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"`{name}`: unknown {', '.join(bad)}; choose from {', '.join(allowed)}")
    return values


def settings_from_args(args):
    """Merge ``--preset`` with the command-line overrides into a ``Settings``.

    Raises
    ------
    ValueError
        An option has an invalid value; the message names the option.
    """
    from ..bench import peers

    s = PRESETS[args.preset]
    custom = {}
    if args.d or args.seq_len or args.heads:
        ds = _int_list("--d", args.d) if args.d else tuple(c.d for c in s.configs)
        custom["configs"] = grid_configs(ds, args.seq_len or 16, args.heads or 4)
    if args.n:
        custom["n_layers"] = _int_list("--n", args.n)
    if args.dtype:
        dts = (
            ("float32", "float64")
            if args.dtype == "both"
            else _name_list("--dtype", args.dtype, ("float32", "float64"))
        )
        custom["dtypes"] = dts
    if args.batch:
        custom["batch"] = _int_list("--batch", str(args.batch))[0]
    for key in ("method", "repeats"):
        if getattr(args, key) is not None:
            custom[key] = getattr(args, key)
    if args.peers is not None:
        custom["peers"] = _name_list("--peers", args.peers, peers.PEERS)
    if args.compile is not None:
        custom["compile"] = args.compile
    if args.wait_quiet is not None:
        if args.wait_quiet < 0:
            raise ValueError(f"`--wait-quiet` must be >= 0, got {args.wait_quiet}")
        custom["wait_quiet_s"] = args.wait_quiet
    if args.sections is not None:
        custom["sections"] = _name_list("--sections", args.sections, Settings.sections)
    threads = args.threads or default_threads()
    if threads > default_threads():
        raise ValueError(
            f"`--threads`={threads} exceeds the {default_threads()} threads "
            "Numba started with (set NUMBA_NUM_THREADS to raise it)"
        )
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"`--repeats` must be >= 1, got {args.repeats}")
    name = (
        s.preset
        if not (set(custom) & {"configs", "n_layers", "dtypes", "batch", "method"})
        else "custom"
    )
    return replace(s, preset=name, threads=threads, **custom)


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
    except (ValueError, PermissionError, TypeError) as exc:
        print(f"tfkernels bench: error: {exc}", file=sys.stderr)
        return 2
    from ..bench.run import run_sweep

    doc = run_sweep(settings, args.out, progress=not args.no_progress, plots=not args.no_plots)
    print_summary(doc)
    print(
        f"wrote {os.path.join(args.out, 'bench-' + doc['preset'])}.json/.csv, "
        f"README.md and {len(doc.get('plots', []))} plot(s) "
        f"in {doc['elapsed_s']:.0f} s"
    )
    return 0
