"""Compile, start-up and memory probes: what a first call and a fresh process cost.

Two workloads are probed (:data:`WORKLOADS`): ``flow``, a tiny :func:`tfkernels.integrate`
call, and ``decay``, the default study of ``tfkernels decay`` on a few trajectories
(its decay kernel and the λ̂ estimate's flow and Jacobian products). Whether a first
call compiled its kernels, loaded them from Numba's cache or found them loaded is read
from the cache counters of every Numba dispatcher in :mod:`tfkernels.kernels`
(:func:`kernel_dispatchers`), whatever those kernels are called.

Imports only the standard library at import time: the fresh processes of the compile
probe import this module after timing ``import tfkernels``.
"""

import argparse
import importlib
import pkgutil
import sys
import tempfile
import time

from .fresh import run_json_script

#: Trajectories of the ``decay`` workload: enough for several lane groups and chunks of
#: work, few enough that the kernels' compile or load time dominates.
DECAY_TRAJECTORIES = 256

#: Layout of the memory probe's state (T, d) and its depth N.
MEMORY_SHAPE = (8, 16, 8)


# ------------------------------------------------------------- cache counters
def kernel_dispatchers(package="tfkernels.kernels", imported_only=False):
    """Every Numba dispatcher at module level in ``package`` and its submodules.

    Parameters
    ----------
    package : str
        Dotted name of the package to walk.
    imported_only : bool
        Walk only the submodules already imported (a module not imported yet has
        compiled and loaded nothing); by default every submodule is imported.

    Returns
    -------
    dict
        ``"<defining module>.<name>"`` → dispatcher, each dispatcher once (a kernel
        imported into several modules is listed under the module that defines it),
        sorted by name. Dispatchers that exist only inside a function (made by a
        factory at call time) are not found.
    """
    from numba.core.dispatcher import Dispatcher

    pkg = importlib.import_module(package)
    names = [pkg.__name__] + [
        m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
    ]
    if imported_only:
        modules = [sys.modules[n] for n in names if n in sys.modules]
    else:
        modules = [importlib.import_module(n) for n in names]
    found = {}
    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, Dispatcher) and id(obj) not in found:
                fn = obj.py_func
                found[id(obj)] = (f"{fn.__module__}.{fn.__qualname__}", obj)
    return dict(sorted(found.values(), key=lambda item: item[0]))


def cache_counts(dispatchers):
    """``{name: (cache hits, cache misses)}`` over every signature of each dispatcher.

    A miss is a compilation (Numba counts one whenever the on-disk cache had no
    entry, or caching is off); a hit is an overload loaded from the cache.
    """
    return {
        name: (sum(d.stats.cache_hits.values()), sum(d.stats.cache_misses.values()))
        for name, d in dispatchers.items()
    }


def count_change(before, after):
    """What happened between two :func:`cache_counts` readings.

    Dispatchers missing from ``before`` count from zero (their module was not
    imported yet).

    Returns
    -------
    dict
        ``hits`` and ``misses`` (totals), ``loaded`` and ``compiled`` (the names of
        the dispatchers with a hit, a miss) and ``how``: ``"cache miss (compiled)"``
        when anything compiled, else ``"cache hit (loaded)"`` when anything loaded,
        else ``"already loaded"``.
    """
    delta = {
        name: tuple(a - b for a, b in zip(counts, before.get(name, (0, 0))))
        for name, counts in after.items()
    }
    hits = sum(h for h, _ in delta.values())
    misses = sum(m for _, m in delta.values())
    how = "cache miss (compiled)" if misses else "cache hit (loaded)" if hits else "already loaded"
    return {
        "how": how,
        "hits": hits,
        "misses": misses,
        "loaded": sorted(n for n, (h, _) in delta.items() if h),
        "compiled": sorted(n for n, (_, m) in delta.items() if m),
    }


# ------------------------------------------------------------------ workloads
def flow_workload(dtype, threads=None):
    """The ``flow`` probe: ``integrate`` of 4 tiny states (T=8, d=16, 2 heads, N=4).

    Returns
    -------
    call : callable
        One call (random states, then the flow), returning nothing.
    description : str
    """
    import numpy as np

    import tfkernels as tfk

    dt = np.dtype(dtype)
    p = tfk.TransformerParams.random(16, 2, damping=1.0, dtype=dt)

    def call():
        tfk.integrate(p, tfk.random_states(4, 8, 16, dtype=dt), 4, n_threads=threads)

    return call, f"integrate B=4, T=8, d=16, H=2, N=4, {dt.name}"


def decay_defaults(n_trajectories=DECAY_TRAJECTORIES, dtype=None):
    """The arguments of ``tfkernels decay --trajectories n_trajectories [--dtype dtype]``.

    Read from the parser of the ``decay`` subcommand itself, so the probe follows its
    defaults (model, layers, method, mode and, without ``dtype``, the dtype).
    """
    from ..cli import SUBCOMMANDS

    parser = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS["decay"][0]).configure_parser(parser)
    argv = ["--trajectories", str(n_trajectories)]
    return parser.parse_args(argv + (["--dtype", str(dtype)] if dtype else []))


def decay_workload(dtype=None, threads=None):
    """The ``decay`` probe: the default ``tfkernels decay`` study on a few trajectories.

    Runs :func:`tfkernels.perturbation_decay` with the model and settings of
    :func:`decay_defaults` (λ̂ estimate included, no progress bar, nothing written).

    Parameters
    ----------
    dtype : str, optional
        The study's dtype (None: the decay command's default).
    threads : int, optional
        Numba threads (None: all).

    Returns
    -------
    call : callable
    description : str
    """
    import tfkernels as tfk

    from ..cli import SUBCOMMANDS

    a = decay_defaults(dtype=dtype)
    study = importlib.import_module(SUBCOMMANDS["decay"][0]).study_from_args
    p, args, kwargs = study(a)

    def call():
        tfk.perturbation_decay(p, *args, **kwargs, n_threads=threads)

    return call, (
        f"perturbation_decay {a.mode} mode, {a.trajectories} trajectories, "
        f"d={a.d}, H={a.heads}, d_ff={a.d_ff}, damping {a.damping:g}, "
        f"T={a.seq_len}, N={a.layers} {a.method}, {a.dtype}"
    )


#: Probe name → builder ``(dtype, threads) -> (call, description)``.
WORKLOADS = {"flow": flow_workload, "decay": decay_workload}


# -------------------------------------------------------------------- probes
def first_call(dtype, threads, workload="flow"):
    """In this process: time of the first and second call of a workload.

    Parameters
    ----------
    dtype : str
    threads : int or None
    workload : {"flow", "decay"}

    Returns
    -------
    dict
        ``first_call_s``, ``second_call_s``, ``compile_or_load_s`` (their difference),
        ``workload`` (a description) and the :func:`count_change` of the first call
        over every dispatcher of :mod:`tfkernels.kernels`: ``how``, ``hits``,
        ``misses``, ``loaded``, ``compiled``.
    """
    call, description = WORKLOADS[workload](dtype, threads)
    before = cache_counts(kernel_dispatchers(imported_only=True))
    t0 = time.perf_counter()
    call()
    t_first = time.perf_counter() - t0
    change = count_change(before, cache_counts(kernel_dispatchers()))
    t0 = time.perf_counter()
    call()
    t_second = time.perf_counter() - t0
    return {
        "workload": description,
        "first_call_s": t_first,
        "second_call_s": t_second,
        "compile_or_load_s": max(t_first - t_second, 0.0),
        **change,
    }


_COMPILE_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import tfkernels
t1 = time.perf_counter()
from tfkernels.bench import probes
r = probes.first_call(sys.argv[2], None, workload=sys.argv[1])
print(json.dumps({"import_s": t1 - t0, **r, "total_s": (t1 - t0) + r["first_call_s"]}))
"""


def fresh_start(workload, dtype, cache_dir=None):
    """Import + :func:`first_call` of ``workload`` in a fresh interpreter.

    Parameters
    ----------
    workload : {"flow", "decay"}
    dtype : str
    cache_dir : str, optional
        ``NUMBA_CACHE_DIR`` of the child (None: the package's own cache).

    Returns
    -------
    dict
        ``import_s``, ``total_s`` (import + first call) and the entries of
        :func:`first_call`; or ``{"error": ...}``.
    """
    extra = {} if cache_dir is None else {"NUMBA_CACHE_DIR": cache_dir}
    return run_json_script(_COMPILE_SCRIPT, (workload, dtype), extra_env=extra)


def compile_section(settings):
    """First call in this process, and cold / warm starts in fresh processes.

    Per dtype of the sweep, the ``flow`` workload: ``in_process`` (:func:`first_call`
    in the harness's process); ``cold``: empty ``NUMBA_CACHE_DIR``, import + first call
    (compiles every kernel the first call needs); ``warm``: a second fresh process on
    that cache (or on the package's own cache when only ``warm`` is asked for). Under
    ``decay``, the same cold and warm starts of the ``decay`` workload (what
    ``tfkernels decay`` compiles), each cold start in its own empty cache, so the two
    workloads' compile times are separate.
    """
    out = {"mode": settings.compile}
    modes = {"cold": ("cold", "warm"), "warm": ("warm",)}.get(settings.compile, ())
    for dt in settings.dtypes:
        out[dt] = {"in_process": first_call(dt, settings.threads), **_starts("flow", dt, modes)}
    if modes:
        dt = decay_defaults().dtype
        out["decay"] = {"workload": decay_workload(dt)[1], **_starts("decay", dt, modes)}
    return out


def _starts(workload, dtype, modes):
    """The ``cold`` / ``warm`` fresh starts of one workload."""
    if "cold" in modes:
        with tempfile.TemporaryDirectory(prefix="tfk-cache-") as cache:
            return {
                "cold": fresh_start(workload, dtype, cache),
                "warm": fresh_start(workload, dtype, cache),
            }
    return {"warm": fresh_start(workload, dtype)} if modes else {}


_MEMORY_SCRIPT = r"""
import json, sys
import numpy as np
import tfkernels as tfk

def status():
    d = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            k, v = line.split(":")
            d[k] = int(v.split()[0]) / 1024
    return d

B, T, d, N, threads = (int(v) for v in sys.argv[1:6])
dt = np.dtype(sys.argv[6])
p = tfk.TransformerParams.random(d, 2, damping=1.0, dtype=dt)
tfk.integrate(p, tfk.random_states(64, T, d, dtype=dt), 2, n_threads=threads)
x = tfk.random_states(B, T, d, dtype=dt)
with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
    fh.write("5")
before = status()
tfk.integrate(p, x, N, n_threads=threads)
after = status()
print(json.dumps({"rss_before_mb": before["VmRSS"], "rss_peak_mb": after["VmHWM"],
                  "state_mb": x.nbytes / 2**20}))
"""


def memory_section(settings):
    """Peak RSS growth of one :func:`tfkernels.integrate` call, in a fresh process.

    The peak (``VmHWM``) is reset through ``/proc/self/clear_refs`` after the input
    state is allocated and the kernels are loaded (Linux only). ``extra_mb`` is the
    growth of the peak during the call: the output array (one state) plus the
    kernel's scratch; ``beyond_output_mb`` subtracts the output's size, leaving the
    memory the computation itself needs — the figure judged against issue 5's
    memory goal (the input state is allocated before the measurement starts).
    """
    dtype = settings.dtypes[0]
    T, d, N = MEMORY_SHAPE
    rows = []
    for B in settings.memory_batches:
        m = run_json_script(_MEMORY_SCRIPT, (B, T, d, N, settings.threads, dtype))
        if "error" in m:
            rows.append({"B": B, **m})
            continue
        m["extra_mb"] = max(m["rss_peak_mb"] - m["rss_before_mb"], 0.0)
        m["beyond_output_mb"] = m["extra_mb"] - m["state_mb"]
        rows.append({"B": B, "T": T, "d": d, "N": N, "dtype": dtype, **m})
    return {"threads": settings.threads, "limit_mb": 50 + settings.threads, "points": rows}
