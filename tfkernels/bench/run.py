"""Running a sweep: the sections a :class:`~tfkernels.bench.settings.Settings` names, in
order, under one progress bar; then every output written (:mod:`tfkernels.bench.output`).
"""

import datetime
import os
import sys
import time
from dataclasses import asdict, replace

from .decay_cost import decay_section
from .errors import error_section
from .machine import machine_section, measure_peak, threading_layer
from .output import write_outputs
from .probes import compile_section, memory_section
from .report import add_goals
from .scaling import scaling_runs, scaling_section
from .settings import sweep_threads
from .throughput import add_best_peer, throughput_points, throughput_section
from .timing import CpuMonitor


def count_steps(settings):
    """Number of progress-bar steps of a sweep."""
    n = 0
    if "throughput" in settings.sections:
        n += len(throughput_points(settings))
    if "scaling" in settings.sections:
        n += len(scaling_runs(settings))
    if "errors" in settings.sections:
        n += 2 * len(settings.errors["methods"])
    return n


def run_sweep(settings, out_dir="results", progress=True, plots=True):
    """Run every section of a sweep and write all outputs.

    Parameters
    ----------
    settings : Settings
        ``threads`` None runs on all Numba threads.
    out_dir : str
        Output folder (created if missing).
    progress : bool
        Show a tqdm bar over the sweep points.
    plots : bool
        Write the PNG plots.

    Returns
    -------
    dict
        The JSON document written to ``<out_dir>/bench-<preset>.json``; its
        ``section_s`` holds the seconds each section took (``machine``: the peak
        measurement and the machine record).
    """
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    settings = replace(settings, threads=sweep_threads(settings))
    doc = {
        "preset": settings.preset,
        "created": _now(),
        "command": " ".join(["tfkernels", *sys.argv[1:]]),
        "settings": _settings_dict(settings),
    }
    monitor = CpuMonitor()
    peak = measure_peak(settings)
    doc["machine"] = machine_section(settings, peak)
    doc["section_s"] = {"machine": time.perf_counter() - t0}
    sec = settings.sections
    with tqdm(
        total=count_steps(settings),
        disable=not progress,
        unit="pt",
        desc=f"bench {settings.preset}",
    ) as bar:

        def section(name, fn):
            t = time.perf_counter()
            doc[name] = fn()
            doc["section_s"][name] = time.perf_counter() - t

        if "compile" in sec:
            bar.set_postfix_str("compile")
            section("compile", lambda: compile_section(settings))
        if "throughput" in sec:
            section(
                "throughput",
                lambda: add_goals(
                    add_best_peer(throughput_section(settings, peak, bar)), settings.goals
                ),
            )
        if "scaling" in sec:
            section("scaling", lambda: scaling_section(settings, bar))
        if "errors" in sec:
            section("errors", lambda: error_section(settings, bar))
        if "decay" in sec:
            section("decay", lambda: decay_section(settings, bar))
        if "memory" in sec and settings.memory_batches:
            bar.set_postfix_str("memory")
            section("memory", lambda: memory_section(settings))
    doc["machine"]["numba_threading_layer"] = threading_layer()
    doc["contention"] = monitor.read()
    doc["elapsed_s"] = time.perf_counter() - t0
    write_outputs(doc, out_dir, plots)
    return doc


def _now():
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _settings_dict(settings):
    """``settings`` as a JSON-ready dict."""
    d = asdict(settings)
    d["configs"] = [asdict(c) for c in settings.configs]
    return d
