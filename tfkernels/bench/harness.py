"""The benchmark harness: ``tfkernels bench``.

Sweeps over depth N and width d (throughput against NumPy, PyTorch and JAX peers),
scaling in B, N, T, d and threads, compile time, memory, and the global error E(N)
of every integration method with its fitted order. Writes
``<out>/bench-<preset>.json`` and ``.csv``, PNG plots, and regenerates
``<out>/README.md`` from every ``bench-*.json`` (and ``paper/paper.json``) found there.

Measurement rules
-----------------
* Throughput is in *trajectory-layers per second*: ``B·N / time`` of one
  :func:`tfkernels.integrate` call (the public API, validation and packing included).
* GFLOP/s comes from the FLOP model of :mod:`tfkernels.flops`; the fraction of peak
  divides by the larger of the nominal peak (:func:`tfkernels.flops.machine_peak`:
  cores × reported clock × flop/cycle) and the measured FMA peak
  (:func:`tfkernels.flops.measured_peak`, measured once per run on 1 thread and on the
  sweep's threads) for the threads used; both are in the JSON (``machine.peak``,
  ``machine.measured_peak``). The reported clock of a virtual machine is its base
  clock, and the cores boost above it under load, so the nominal peak alone could be
  exceeded.
* Every implementation is warmed up (its first call — Numba cache load or JAX jit
  compile — is reported as ``first_call_s``), then calibrated so that one timed sample
  lasts at least ``min_sample_s``; the samples of all implementations of one point are
  interleaved, ``repeats`` rounds in rotating order with a short pause between
  implementations, and each is summarised by its median. Ratios are only formed
  between medians of the same point of the same run.
* A peer's output is compared with ours before it is timed (max-norm difference
  relative to ``max|ours|``, at most :data:`PEER_RTOL`); a peer that disagrees is
  reported as ``mismatch`` and not timed.
* Benchmarks assert nothing about time; ``tests/test_harness.py`` only checks that the
  outputs are complete.
"""

import csv
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from . import flops, peers

#: Largest max-norm difference of a peer's output relative to ``max|ours|``.
PEER_RTOL = {"float32": 5e-4, "float64": 1e-9}

#: Expected order of convergence of each method (averaged with α = Δt, c = 1 is Euler).
EXPECTED_ORDER = {"euler": 1, "heun": 2, "rk4": 4, "averaged": 1}

#: Errors below these are rounding / reference noise and are left out of order fits.
ERROR_FLOOR = {"linear": 1e-12, "transformer": 1e-10}

#: The named configurations (T, d, heads) of issue 5's goal table.
NAMED_CONFIGS = {"tiny": (8, 16, 2), "small": (16, 32, 4), "medium": (32, 64, 4),
                 "large": (64, 128, 8)}


@dataclass(frozen=True)
class Config:
    """One throughput configuration: ``name``, tokens T, width d, heads H."""

    name: str
    seq_len: int
    d: int
    heads: int


@dataclass(frozen=True)
class Settings:
    """Everything a sweep needs; built from a preset and the command-line overrides.

    Attributes
    ----------
    preset : str
        Name written into the output file names.
    dtypes : tuple of str
    configs : tuple of Config
    n_layers : tuple of int
        Depths N of the throughput sweep.
    batch : int or None
        Trajectories per call; None picks a power of two per config from ``work``.
    work : float
        Flops of one timed call at the largest N when ``batch`` is None.
    method : str
        Update rule of the throughput sweep (peers support euler, heun, rk4).
    peers : tuple of str
    threads : int
    repeats : int
    min_sample_s : float
    pause_s : float
        Pause between samples of different implementations. Idle OpenMP workers
        (Numba's ``omp`` layer, PyTorch) spin before they sleep; without a pause,
        PyTorch measured right after tfkernels took 4.6 ms instead of 2.3 ms, with
        50 ms 2.5 ms.
    scaling : dict
        ``base`` (T, d, H, N, B) and the lists ``batch``, ``layers``, ``seq_len``,
        ``width``; ``threads`` (bool).
    errors : dict
        ``linear_layers``, ``transformer_layers``, ``methods``.
    compile : {"first", "warm", "cold"}
    memory_batches : tuple of int
    sections : tuple of str
    wait_quiet_s : float
        Before each throughput point (and each scaling axis), wait up to this long for
        other processes to leave the CPUs (< 15 % busy); 0 never waits.
    peak_min_s : float
        Length of one timed run of :func:`tfkernels.flops.measured_peak` (median of
        :data:`PEAK_REPEATS` runs per dtype and thread count).
    """

    preset: str
    dtypes: tuple
    configs: tuple
    n_layers: tuple
    batch: int = None
    work: float = 5e8
    method: str = "euler"
    peers: tuple = ("numpy", "torch", "jax")
    threads: int = None
    repeats: int = 5
    min_sample_s: float = 0.02
    pause_s: float = 0.005
    scaling: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    compile: str = "warm"
    memory_batches: tuple = (4096,)
    sections: tuple = ("compile", "throughput", "scaling", "errors", "decay", "memory")
    wait_quiet_s: float = 0.0
    peak_min_s: float = 0.2


def _named(*names):
    return tuple(Config(n, *NAMED_CONFIGS[n]) for n in names)


PRESETS = {
    "ci": Settings(
        preset="ci", dtypes=("float32",), configs=_named("tiny"), n_layers=(8,),
        batch=32, peers=("numpy",), repeats=3, min_sample_s=0.005, compile="first",
        peak_min_s=0.05,
        memory_batches=(), sections=("compile", "throughput", "scaling", "errors"),
        scaling={"base": (4, 8, 2, 4, 32), "batch": (16, 32), "layers": (4, 8),
                 "seq_len": (4, 8), "width": (8, 16), "threads": True},
        errors={"linear_layers": (8, 16, 32, 64), "transformer_layers": (4, 8, 16),
                "methods": ("euler", "heun", "rk4", "averaged")}),
    "quick": Settings(
        preset="quick", dtypes=("float32", "float64"), configs=_named("tiny", "small"),
        n_layers=(8, 32), work=5e8, repeats=7, min_sample_s=0.03, pause_s=0.05,
        compile="warm", wait_quiet_s=5.0,
        memory_batches=(4096,),
        scaling={"base": (8, 16, 2, 16, 128), "batch": (32, 128, 512),
                 "layers": (4, 16, 64), "seq_len": (4, 8, 16), "width": (8, 16, 32),
                 "threads": True},
        errors={"linear_layers": (8, 16, 32, 64, 128),
                "transformer_layers": (4, 8, 16, 32),
                "methods": ("euler", "heun", "rk4", "averaged")}),
    "full": Settings(
        preset="full", dtypes=("float32", "float64"),
        configs=_named("tiny", "small", "medium", "large"), n_layers=(8, 32, 128),
        work=4e9, repeats=7, min_sample_s=0.1, pause_s=0.05, compile="cold",
        wait_quiet_s=60.0,
        memory_batches=(1024, 16384, 131072),
        scaling={"base": (16, 32, 4, 32, 256), "batch": (16, 64, 256, 1024, 4096),
                 "layers": (8, 32, 128, 512), "seq_len": (4, 8, 16, 32, 64),
                 "width": (8, 16, 32, 64, 128), "threads": True},
        errors={"linear_layers": (4, 8, 16, 32, 64, 128, 256, 512, 1024),
                "transformer_layers": (4, 8, 16, 32, 64, 128, 256),
                "methods": ("euler", "heun", "rk4", "averaged")}),
}


# ----------------------------------------------------------------------- settings
def _int_list(name, text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"`{name}` must be a comma-separated list of integers, "
                         f"got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"`{name}` needs positive integers, got {text!r}")
    return values


def _name_list(name, text, allowed):
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if values in ((), ("none",)):
        return ()
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"`{name}`: unknown {', '.join(bad)}; choose from "
                         f"{', '.join(allowed)}")
    return values


def default_threads():
    """Numba's thread count (all usable cores unless NUMBA_NUM_THREADS says less)."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def grid_configs(d_list, seq_len, heads):
    """Throughput configurations of a ``--d`` grid at one T and H."""
    for d in d_list:
        if d % heads:
            raise ValueError(f"`--heads`={heads} must divide every `--d`, not {d}")
    return tuple(Config(f"T{seq_len}-d{d}-H{heads}", seq_len, d, heads) for d in d_list)


def settings_from_args(args):
    """Merge ``--preset`` with the command-line overrides into :class:`Settings`."""
    s = PRESETS[args.preset]
    custom = {}
    if args.d or args.seq_len or args.heads:
        ds = _int_list("--d", args.d) if args.d else tuple(c.d for c in s.configs)
        custom["configs"] = grid_configs(ds, args.seq_len or 16, args.heads or 4)
    if args.n:
        custom["n_layers"] = _int_list("--n", args.n)
    if args.dtype:
        dts = ("float32", "float64") if args.dtype == "both" else \
            _name_list("--dtype", args.dtype, ("float32", "float64"))
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
        raise ValueError(f"`--threads`={threads} exceeds the {default_threads()} threads "
                         "Numba started with (set NUMBA_NUM_THREADS to raise it)")
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"`--repeats` must be >= 1, got {args.repeats}")
    name = s.preset if not (set(custom) & {"configs", "n_layers", "dtypes", "batch",
                                           "method"}) else "custom"
    return replace(s, preset=name, threads=threads, **custom)


# ------------------------------------------------------------------------ timing
class Ours:
    """tfkernels' own flow as a timed implementation (same interface as a peer)."""

    label = "tfkernels"

    def __init__(self, params, x0, n_layers, method, threads):
        import tfkernels as tfk

        self.tfk, self.params, self.x0 = tfk, params, x0
        self.n_layers, self.method, self.threads = n_layers, method, threads

    def run(self):
        """One call of :func:`tfkernels.integrate`; returns the final states."""
        return self.tfk.integrate(self.params, self.x0, self.n_layers, method=self.method,
                                  n_threads=self.threads)

    def setup(self):
        """First call; returns ``(output, seconds)``."""
        t0 = time.perf_counter()
        out = self.run()
        return out, time.perf_counter() - t0

    def sample(self, n_inner):
        """Seconds for ``n_inner`` back-to-back calls."""
        t0 = time.perf_counter()
        for _ in range(n_inner):
            self.run()
        return time.perf_counter() - t0


def time_interleaved(impls, repeats, min_sample_s, pause_s):
    """Median seconds per call of each implementation, samples interleaved.

    Parameters
    ----------
    impls : dict
        Label → object with ``sample(n_inner) -> seconds``.
    repeats : int
        Timed samples per implementation.
    min_sample_s : float
        Each sample repeats the call until it lasts at least this long.
    pause_s : float
        Sleep between samples of different implementations.

    Returns
    -------
    dict
        Label → ``{"median_s", "times_s", "n_inner"}``.
    """
    n_inner = {}
    for label, impl in impls.items():
        t1 = impl.sample(1)
        n_inner[label] = max(1, math.ceil(min_sample_s / max(t1, 1e-9)))
    times = {label: [] for label in impls}
    labels = list(impls)
    for r in range(repeats):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            times[label].append(impls[label].sample(n_inner[label]) / n_inner[label])
            time.sleep(pause_s)
    return {label: {"median_s": statistics.median(ts), "times_s": ts,
                    "n_inner": n_inner[label]} for label, ts in times.items()}


# ------------------------------------------------------------------- contention
def _proc_stat_cpu():
    """``(busy, steal)`` seconds of all CPUs since boot from ``/proc/stat``."""
    try:
        with open("/proc/stat") as fh:
            f = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = f[:7]
    steal = f[7] if len(f) > 7 else 0
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _pid_cpu(pid):
    """CPU seconds of a live process from ``/proc/<pid>/stat`` (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class CpuMonitor:
    """How much of the machine *other* processes used while we measured.

    The machine is shared: a busy core turns every 2-thread parallel region into a
    wait for a scheduler time slice (measured: 0.3 ms calls became 8–10 ms). The
    monitor reads all-CPU busy time from ``/proc/stat`` and subtracts our own CPU
    time (this process, finished children and the live peer workers ``pids()``).

    Parameters
    ----------
    pids : callable, optional
        Returns the pids of live worker processes to count as ours.
    """

    def __init__(self, pids=None):
        self.pids = pids or (lambda: [])
        self.start = self._snapshot()

    def _snapshot(self):
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        ours += sum(_pid_cpu(p) for p in self.pids())
        return time.perf_counter(), _proc_stat_cpu(), ours

    def read(self):
        """``{"foreign_cpu_frac", "steal_frac", "loadavg"}`` since construction."""
        (w0, s0, o0), (w1, s1, o1) = self.start, self._snapshot()
        n_cpu = os.cpu_count() or 1
        wall = max(w1 - w0, 1e-9)
        out = {"loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        if s0 is None or s1 is None:
            return {**out, "foreign_cpu_frac": None, "steal_frac": None}
        foreign = max((s1[0] - s0[0]) - (o1 - o0), 0.0) / (wall * n_cpu)
        return {**out, "foreign_cpu_frac": min(foreign, 1.0),
                "steal_frac": (s1[1] - s0[1]) / (wall * n_cpu)}


def wait_quiet(max_wait_s, threshold=0.15, window_s=0.5):
    """Wait up to ``max_wait_s`` until other processes use < ``threshold`` of the CPUs.

    Returns
    -------
    dict
        ``waited_s``, ``quiet`` (whether the threshold was reached) and the last
        ``foreign_cpu_frac`` observed over a ``window_s`` window.
    """
    t0 = time.perf_counter()
    if max_wait_s <= 0:
        return {"waited_s": 0.0, "quiet": None, "foreign_cpu_frac": None}
    while True:
        mon = CpuMonitor()
        time.sleep(window_s)
        frac = mon.read()["foreign_cpu_frac"]
        waited = time.perf_counter() - t0
        if frac is None or frac < threshold or waited >= max_wait_s:
            return {"waited_s": waited, "quiet": frac is None or frac < threshold,
                    "foreign_cpu_frac": frac}


# ------------------------------------------------------------------ the machine
def gemm_gflops(dtype, n=1024, repeats=3):
    """Attainable GFLOP/s of a large NumPy (OpenBLAS) GEMM: a practical ceiling."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    best = min(_timed(lambda: a @ b) for _ in range(repeats + 1))
    return 2 * n ** 3 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def versions():
    """Versions of Python, the numeric stack and the installed peers (None if absent)."""
    import numba
    import scipy

    import tfkernels

    out = {"python": platform.python_version(), "numpy": np.__version__,
           "numba": numba.__version__, "scipy": scipy.__version__,
           "tfkernels": tfkernels.__version__}
    for name in ("torch", "jax"):
        try:
            out[name] = peers.library_version(name)
        except peers.PeerUnavailable:
            out[name] = None
    return out


def git_revision():
    """``(commit, dirty)`` of the source tree, or ``(None, None)`` outside git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return rev or None, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return None, None


#: Timed runs (median) of :func:`tfkernels.flops.measured_peak` per dtype and threads.
PEAK_REPEATS = 5


def sweep_threads(settings):
    """Threads of the sweep's timed calls (``settings.threads``, else all Numba threads)."""
    return settings.threads or default_threads()


def measure_peak(settings):
    """The peak reference of a sweep: nominal, and measured on 1 and the sweep's threads.

    Waits for a quiet machine first (``settings.wait_quiet_s``), like every timed point.
    """
    wait_quiet(settings.wait_quiet_s)
    return flops.PeakReference.measure(threads=sorted({1, sweep_threads(settings)}),
                                       min_seconds=settings.peak_min_s,
                                       repeats=PEAK_REPEATS)


def machine_section(settings, peak=None):
    """The machine, its peak and attainable GEMM rate, versions and environment.

    ``peak`` is a :class:`tfkernels.flops.PeakReference` (measured here if None);
    ``peak`` in the result is the nominal peak, ``measured_peak`` the measured one and
    ``peak_used`` the denominator of every "% peak" of the sweep (the larger of the two
    for the sweep's threads).
    """
    import numba

    peak = measure_peak(settings) if peak is None else peak
    n = sweep_threads(settings)
    commit, dirty = git_revision()
    env_keys = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OPENBLAS_NUM_THREADS",
                "OMP_NUM_THREADS", "XLA_FLAGS")
    return {
        "cpu": flops.cpu_model(), "platform": platform.platform(),
        "logical_cpus": os.cpu_count(), "peak": peak.nominal.as_dict(),
        "measured_peak": peak.as_dict(),
        "peak_used": {"threads": n, "gflops": {dt: peak.peak_gflops(dt, n)
                                               for dt in ("float32", "float64")},
                      "nominal_gflops": {dt: peak.nominal.peak_gflops(dt, n)
                                         for dt in ("float32", "float64")}},
        "gemm_gflops": {dt: gemm_gflops(dt) for dt in ("float32", "float64")},
        "threads": settings.threads, "numba_threading_layer": _threading_layer(numba),
        "env": {k: os.environ.get(k) for k in env_keys}, "versions": versions(),
        "git": {"commit": commit, "dirty": dirty},
    }


def _threading_layer(numba):
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


# --------------------------------------------------------------------- compile
_COMPILE_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import tfkernels as tfk
t1 = time.perf_counter()
dt = np.dtype(sys.argv[1])
p = tfk.TransformerParams.random(16, 2, damping=1.0, dtype=dt)
t2 = time.perf_counter()
x = tfk.random_states(4, 8, 16, dtype=dt)
tfk.integrate(p, x, 4)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_call_s": t3 - t2,
                  "total_s": (t1 - t0) + (t3 - t2)}))
"""


def _compile_subprocess(dtype, cache_dir=None):
    """Run the compile script in a fresh interpreter; return its timings."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, dtype], env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode:
        return {"error": r.stderr[-1500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def first_call(dtype, threads):
    """In this process: time of the first and second call of a tiny flow."""
    import tfkernels as tfk
    from tfkernels.kernels import drivers as kernels

    p = tfk.TransformerParams.random(16, 2, damping=1.0, dtype=dtype)
    x = tfk.random_states(4, 8, 16, dtype=dtype)
    before = _cache_counts(kernels.integrate_lanes)
    t_first = _timed(lambda: tfk.integrate(p, x, 4, n_threads=threads))
    t_second = _timed(lambda: tfk.integrate(p, x, 4, n_threads=threads))
    hits, misses = (a - b for a, b in zip(_cache_counts(kernels.integrate_lanes), before))
    how = "cache miss (compiled)" if misses else "cache hit (loaded)" if hits else \
        "already loaded"
    return {"first_call_s": t_first, "second_call_s": t_second,
            "compile_or_load_s": max(t_first - t_second, 0.0), "how": how}


def _cache_counts(dispatcher):
    stats = getattr(dispatcher, "stats", None)
    if stats is None:
        return 0, 0
    return sum(stats.cache_hits.values()), sum(stats.cache_misses.values())


def compile_section(settings):
    """First call in this process, and cold / warm starts in fresh processes.

    ``cold``: empty ``NUMBA_CACHE_DIR``, import + first call (compiles every kernel
    the first run needs); ``warm``: a second fresh process on that cache (or on the
    package's own cache when only ``warm`` is asked for).
    """
    out = {"mode": settings.compile}
    for dt in settings.dtypes:
        entry = {"in_process": first_call(dt, settings.threads)}
        if settings.compile == "cold":
            with tempfile.TemporaryDirectory(prefix="tfk-cache-") as cache:
                entry["cold"] = _compile_subprocess(dt, cache)
                entry["warm"] = _compile_subprocess(dt, cache)
        elif settings.compile == "warm":
            entry["warm"] = _compile_subprocess(dt)
        out[dt] = entry
    return out


# ------------------------------------------------------------------- throughput
def batch_for(settings, cfg):
    """Trajectories per call: ``--batch``, or a power of two sized by ``work``.

    At least ``threads × config.BLOCK`` (one slice of the batch per thread), at most 4096.
    """
    if settings.batch:
        return settings.batch
    from .. import config

    fpl = flops.flops_per_layer(flow_config(cfg), settings.method)
    lo = settings.threads * config.BLOCK  # one block of trajectories per thread at least
    b = settings.work / (fpl * max(settings.n_layers))
    return int(min(max(2 ** math.floor(math.log2(max(b, 1))), lo), 4096))


def flow_config(cfg):
    """The FLOP-model description of a throughput configuration."""
    return flops.FlowConfig(seq_len=cfg.seq_len, d=cfg.d, n_heads=cfg.heads)


def bench_params(cfg, dtype):
    """Weights of a throughput point: attention + GELU FFN (m = 4d), damping 1."""
    import tfkernels as tfk

    return tfk.TransformerParams.random(cfg.d, cfg.heads, damping=1.0, seed=1,
                                        dtype=np.dtype(dtype))


def start_peers(settings):
    """Start one worker process per peer variant; return ``{peer: [PeerProcess]}``."""
    procs = {}
    for name in settings.peers:
        procs[name] = [peers.PeerProcess(v, settings.threads)
                       for v in peers.variants(name, settings.threads)]
    return procs


def check_peer(proc, spec, x0, ours_out, dtype):
    """Set up a peer variant and compare its output with ours.

    Returns
    -------
    dict
        ``status`` (ok, mismatch, error, skipped), ``max_rel_diff``, ``first_call_s``.
    """
    if proc.status != "ok":
        return {"status": proc.status, "message": proc.message}
    try:
        out, first = proc.setup(spec, x0)
    except RuntimeError as exc:
        return {"status": proc.status if proc.status != "ok" else "error",
                "message": str(exc)[-1500:]}
    scale = float(np.max(np.abs(ours_out))) or 1.0
    diff = float(np.max(np.abs(out.astype(np.float64) - ours_out))) / scale
    if not np.isfinite(diff) or diff > PEER_RTOL[dtype]:
        return {"status": "mismatch", "max_rel_diff": diff, "first_call_s": first,
                "message": f"max|peer - ours| / max|ours| = {diff:.3g} > "
                           f"{PEER_RTOL[dtype]:g}; not timed"}
    return {"status": "ok", "max_rel_diff": diff, "first_call_s": first}


def rates(seconds, work_items, fpl, peak_gflops):
    """Throughput figures of one median time."""
    tl = work_items / seconds
    gf = tl * fpl / 1e9
    return {"traj_layers_per_s": tl, "gflops": gf, "frac_peak": gf / peak_gflops}


def throughput_point(settings, cfg, dtype, N, procs, peak):
    """Measure ours and every peer variant at one (config, dtype, N)."""
    import tfkernels as tfk

    B = batch_for(settings, cfg)
    params = bench_params(cfg, dtype)
    x0 = tfk.random_states(B, cfg.seq_len, cfg.d, seed=2, dtype=np.dtype(dtype))
    ours = Ours(params, x0, N, settings.method, settings.threads)
    ours_out, ours_first = ours.setup()
    ours_out = ours_out.astype(np.float64)
    spec = peers.flow_spec(params, N, settings.method)
    impls, variants = {"tfkernels": ours}, {}
    for name, plist in procs.items():
        for proc in plist:
            check = check_peer(proc, spec, x0, ours_out, dtype)
            variants.setdefault(name, {})[proc.variant.name] = check
            if check["status"] == "ok":
                impls[proc.variant.label] = proc
    timed = time_interleaved(impls, settings.repeats, settings.min_sample_s,
                             settings.pause_s)
    fpl = flops.flops_per_layer(flow_config(cfg), settings.method)
    pk = peak.peak_gflops(dtype, settings.threads)  # max(nominal, measured)
    point = {"config": cfg.name, "dtype": dtype, "B": B, "N": N, "T": cfg.seq_len,
             "d": cfg.d, "heads": cfg.heads, "d_ff": 4 * cfg.d, "method": settings.method,
             "flops_per_traj_layer": fpl, "peak_gflops": pk,
             "nominal_peak_gflops": peak.nominal.peak_gflops(dtype, settings.threads),
             "measured_peak_gflops": peak.measured_gflops(dtype, settings.threads),
             "ours": {**timed["tfkernels"], **rates(timed["tfkernels"]["median_s"], B * N,
                                                    fpl, pk), "first_call_s": ours_first}}
    point["peers"] = {name: summarize_peer(variants[name], timed, procs[name], B * N, fpl,
                                           pk, point["ours"]["median_s"])
                      for name in procs}
    return point


def summarize_peer(variants, timed, plist, work_items, fpl, pk, ours_s):
    """A peer's entry: every variant, the fastest one, and our speed-up over it."""
    for proc in plist:
        v = variants[proc.variant.name]
        if proc.variant.label in timed:
            t = timed[proc.variant.label]
            v.update(t, **rates(t["median_s"], work_items, fpl, pk))
            v["compile_s"] = max(v["first_call_s"] - t["median_s"], 0.0)
    ok = {k: v for k, v in variants.items() if "median_s" in v}
    if not ok:
        statuses = sorted({v["status"] for v in variants.values()})
        return {"status": statuses[0] if len(statuses) == 1 else "/".join(statuses),
                "variants": variants,
                "message": "; ".join(v.get("message", "") for v in variants.values())}
    best = min(ok, key=lambda k: ok[k]["median_s"])
    b = ok[best]
    return {"status": "ok", "best_variant": best, "median_s": b["median_s"],
            "traj_layers_per_s": b["traj_layers_per_s"], "gflops": b["gflops"],
            "frac_peak": b["frac_peak"], "speedup": b["median_s"] / ours_s,
            "max_rel_diff": b["max_rel_diff"], "variants": variants}


def throughput_points(settings):
    """The (config, dtype, N) points of the throughput sweep, in order."""
    return [(cfg, dt, N) for dt in settings.dtypes for cfg in settings.configs
            for N in settings.n_layers]


def throughput_section(settings, peak, bar):
    """Run the throughput sweep; returns the list of points."""
    procs = start_peers(settings)
    pids = lambda: [p.proc.pid for pl in procs.values() for p in pl]  # noqa: E731
    points = []
    try:
        for cfg, dt, N in throughput_points(settings):
            bar.set_postfix_str(f"throughput {cfg.name} {dt} N={N}")
            quiet = wait_quiet(settings.wait_quiet_s)
            mon = CpuMonitor(pids)
            point = throughput_point(settings, cfg, dt, N, procs, peak)
            point["contention"] = {**mon.read(), "wait": quiet}
            points.append(point)
            bar.update()
    finally:
        for plist in procs.values():
            for proc in plist:
                proc.close()
    return points


def add_best_peer(points):
    """Add ``best_peer`` (the fastest timed peer) and our speed-up over it to each point."""
    for p in points:
        ok = {k: v for k, v in p["peers"].items() if v.get("status") == "ok"}
        if ok:
            best = min(ok, key=lambda k: ok[k]["median_s"])
            p["best_peer"] = {"peer": best, "variant": ok[best]["best_variant"],
                              "speedup": ok[best]["speedup"]}
        else:
            p["best_peer"] = None
    return points


# ----------------------------------------------------------------------- scaling
def scaling_runs(settings):
    """The list of ``(axis, value, (T, d, H, N, B), threads)`` scaling measurements."""
    sc = settings.scaling
    T, d, H, N, B = sc["base"]
    runs = [("B", v, (T, d, H, N, v), settings.threads) for v in sc["batch"]]
    runs += [("N", v, (T, d, H, v, B), settings.threads) for v in sc["layers"]]
    runs += [("T", v, (v, d, H, N, B), settings.threads) for v in sc["seq_len"]]
    runs += [("d", v, (T, v, min(H, v), N, B), settings.threads) for v in sc["width"]]
    if sc.get("threads"):
        runs += [("threads", k, (T, d, H, N, B), k) for k in range(1, settings.threads + 1)]
    return runs


def scaling_measure(settings, shape, counts, dtype):
    """Median seconds of one call at ``shape = (T, d, H, N, B)`` for each thread count
    in ``counts`` (a list in that order). Several counts are timed interleaved, with
    the preset's pause between samples, so that no count is timed in a quieter moment
    than another; a single count back to back."""
    import tfkernels as tfk

    T, d, H, N, B = shape
    p = bench_params(Config("s", T, d, H), dtype)
    x0 = tfk.random_states(B, T, d, seed=2, dtype=np.dtype(dtype))
    impls = {k: Ours(p, x0, N, settings.method, k) for k in counts}
    for impl in impls.values():
        impl.setup()
    timed = time_interleaved(impls, settings.repeats, settings.min_sample_s,
                             settings.pause_s if len(counts) > 1 else 0.0)
    return [timed[k]["median_s"] for k in counts]


def fit_exponent(xs, ys):
    """Least-squares slope of ``log y`` against ``log x`` (None with < 2 points)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if len(xs) < 2 or np.ptp(np.log(xs)) == 0:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def scaling_section(settings, bar):
    """Time against B, N, T, d (exponents) and threads (speed-up, efficiency)."""
    dtype = settings.dtypes[0]
    rows = {}
    runs = scaling_runs(settings)
    by_threads = [run for run in runs if run[0] == "threads"]
    if by_threads:
        bar.set_postfix_str("scaling threads")
        wait_quiet(settings.wait_quiet_s)
        counts = [run[1] for run in by_threads]
        per_count = dict(zip(counts, scaling_measure(settings, by_threads[0][2], counts,
                                                     dtype)))
    for axis, value, shape, threads in runs:
        bar.set_postfix_str(f"scaling {axis}={value}")
        if axis != "threads" and axis not in rows:
            wait_quiet(settings.wait_quiet_s)
        t = (per_count[value] if axis == "threads"
             else scaling_measure(settings, shape, [threads], dtype)[0])
        T, d, H, N, B = shape
        rows.setdefault(axis, []).append({"value": value, "T": T, "d": d, "heads": H,
                                          "N": N, "B": B, "threads": threads,
                                          "median_s": t})
        bar.update()
    out = {"dtype": dtype, "base": dict(zip("T d heads N B".split(),
                                            settings.scaling["base"]))}
    for axis, entries in rows.items():
        xs = [e["value"] for e in entries]
        ts = [e["median_s"] for e in entries]
        if axis == "threads":
            for e in entries:
                e["speedup"] = ts[0] / e["median_s"]
                e["efficiency"] = e["speedup"] / e["value"]
            out[axis] = {"points": entries}
        else:
            out[axis] = {"points": entries, "exponent": fit_exponent(xs, ts)}
    return out


# ------------------------------------------------------------------------ errors
def stable_matrix(d, seed, margin=0.5):
    """A random ``d×d`` matrix shifted so that ``λ_max((A+Aᵀ)/2) = -margin``."""
    A = np.random.default_rng(seed).standard_normal((d, d)) / np.sqrt(d)
    lam = np.linalg.eigvalsh((A + A.T) / 2).max()
    return A - (lam + margin) * np.eye(d)


def fitted_order(layers, errors, floor):
    """``-slope`` of log E against log N over the errors above ``floor``."""
    keep = [(n, e) for n, e in zip(layers, errors) if e > floor and np.isfinite(e)]
    if len(keep) < 2:
        return None
    slope = fit_exponent(*zip(*keep))
    return None if slope is None else -slope


def method_kwargs(method):
    """Keyword arguments of :func:`tfkernels.integrate` for an error study method."""
    return {"method": method, "alpha": None, "c": 1.0} if method == "averaged" else \
        {"method": method}


def global_errors(params, x0, exact, layers, method):
    """``E(N) = max_b ‖X_N − X(1)‖_F / ‖X(1)‖_F`` for each N."""
    import tfkernels as tfk

    errs = []
    for N in layers:
        X = tfk.integrate(params, x0, N, **method_kwargs(method))
        num = np.linalg.norm((X - exact).reshape(len(x0), -1), axis=1)
        errs.append(float(np.max(num / np.linalg.norm(exact.reshape(len(x0), -1), axis=1))))
    return errs


def linear_problem(d=6, seed=3):
    """The linear system of the error study and its exact solution at t = 1 (expm)."""
    import scipy.linalg

    import tfkernels as tfk

    A = stable_matrix(d, seed)
    params = tfk.TransformerParams.linear(A)
    x0 = tfk.random_states(4, 2, d, seed=seed)
    return params, x0, x0 @ scipy.linalg.expm(A), "expm"


def transformer_problem(d=8, heads=2, T=4, seed=5):
    """A small transformer and its DOP853 reference solution (rtol 1e-12) at t = 1."""
    from scipy.integrate import solve_ivp

    import tfkernels as tfk

    params = tfk.TransformerParams.random(d, heads, damping=1.0, seed=seed)
    x0 = tfk.random_states(2, T, d, seed=seed)

    def fun(t, y):
        return tfk.vector_field(params, y.reshape(1, T, d)).ravel()

    exact = np.stack([solve_ivp(fun, (0.0, 1.0), x.ravel(), method="DOP853", rtol=1e-12,
                                atol=1e-14).y[:, -1].reshape(T, d) for x in x0])
    return params, x0, exact, "solve_ivp DOP853 rtol=1e-12 atol=1e-14"


def error_section(settings, bar):
    """Global error E(N) and fitted order of each method, linear and transformer."""
    es = settings.errors
    out = {}
    for system, make, key in (("linear", linear_problem, "linear_layers"),
                              ("transformer", transformer_problem, "transformer_layers")):
        bar.set_postfix_str(f"errors {system}")
        params, x0, exact, how = make()
        layers = list(es[key])
        entry = {"reference": how, "layers": layers, "d": params.d, "T": x0.shape[1],
                 "B": x0.shape[0], "floor": ERROR_FLOOR[system], "methods": {}}
        for m in es["methods"]:
            errs = global_errors(params, x0, exact, layers, m)
            entry["methods"][m] = {"errors": errs, "expected_order": EXPECTED_ORDER[m],
                                   "order": fitted_order(layers, errs, ERROR_FLOOR[system])}
            bar.update()
        out[system] = entry
    return out


# ------------------------------------------------------------------- decay study
class DecayStudy:
    """The chunk loop of :func:`tfkernels.perturbation_decay` as a timed implementation.

    ``sample`` returns the study's own ``meta["loop_time_s"]`` (drawing states and
    directions in the kernel, both trajectories or the tangent, streamed statistics),
    leaving out the λ̂ estimate that precedes the loop.
    """

    def __init__(self, params, B, T, N, mode, threads):
        import tfkernels as tfk

        self.study = tfk.perturbation_decay
        self.args = (params, B, T, N)
        self.kw = {"mode": mode, "n_threads": threads, "lambda_samples": 1, "seed": 0}

    def sample(self, n_inner):
        """Summed loop time of ``n_inner`` studies."""
        return sum(self.study(*self.args, **self.kw).meta["loop_time_s"]
                   for _ in range(n_inner))


def decay_section(settings, bar):
    """Cost of the pair and tangent modes relative to the plain flow (same B, T, N)."""
    import tfkernels as tfk

    if not hasattr(tfk, "perturbation_decay"):
        return {"status": "skipped", "message": "tfk.perturbation_decay is not available"}
    T, d, H, N, B = settings.scaling["base"]
    dtype = settings.dtypes[0]
    bar.set_postfix_str("decay study cost")
    params = bench_params(Config("decay", T, d, H), dtype)
    x0 = tfk.random_states(B, T, d, seed=2, dtype=np.dtype(dtype))
    impls = {"flow": Ours(params, x0, N, "euler", settings.threads)}
    for mode in ("pair", "tangent"):
        impls[mode] = DecayStudy(params, B, T, N, mode, settings.threads)
        impls[mode].sample(1)
    impls["flow"].setup()
    wait_quiet(settings.wait_quiet_s)
    timed = time_interleaved(impls, settings.repeats, settings.min_sample_s,
                             settings.pause_s)
    flow_s = timed["flow"]["median_s"]
    return {"status": "ok", "dtype": dtype, "T": T, "d": d, "heads": H, "N": N, "B": B,
            "flow_s": flow_s, **{f"{m}_s": timed[m]["median_s"] for m in ("pair", "tangent")},
            **{f"{m}_ratio": timed[m]["median_s"] / flow_s for m in ("pair", "tangent")}}


# ------------------------------------------------------------------------ memory
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
    T, d, N = 8, 16, 8
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    rows = []
    for B in settings.memory_batches:
        args = [str(v) for v in (B, T, d, N, settings.threads)] + [dtype]
        r = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, *args], env=env,
                           capture_output=True, text=True, timeout=600)
        if r.returncode:
            rows.append({"B": B, "error": r.stderr[-1500:]})
            continue
        m = json.loads(r.stdout.strip().splitlines()[-1])
        m["extra_mb"] = max(m["rss_peak_mb"] - m["rss_before_mb"], 0.0)
        m["beyond_output_mb"] = m["extra_mb"] - m["state_mb"]
        rows.append({"B": B, "T": T, "d": d, "N": N, "dtype": dtype, **m})
    return {"threads": settings.threads, "limit_mb": 50 + settings.threads, "points": rows}


# ------------------------------------------------------------------------ sweep
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
    out_dir : str
        Output folder (created if missing).
    progress : bool
        Show a tqdm bar over the sweep points.
    plots : bool
        Write the PNG plots.

    Returns
    -------
    dict
        The JSON document written to ``<out_dir>/bench-<preset>.json``.
    """
    from tqdm import tqdm

    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    doc = {"preset": settings.preset, "created": _now(), "command": " ".join(["tfkernels", *sys.argv[1:]]),
           "settings": _settings_dict(settings)}
    monitor = CpuMonitor()
    peak = measure_peak(settings)
    doc["machine"] = machine_section(settings, peak)
    sec = settings.sections
    with tqdm(total=count_steps(settings), disable=not progress, unit="pt",
              desc=f"bench {settings.preset}") as bar:
        if "compile" in sec:
            bar.set_postfix_str("compile")
            doc["compile"] = compile_section(settings)
        if "throughput" in sec:
            doc["throughput"] = add_best_peer(throughput_section(settings, peak, bar))
        if "scaling" in sec:
            doc["scaling"] = scaling_section(settings, bar)
        if "errors" in sec:
            doc["errors"] = error_section(settings, bar)
        if "decay" in sec:
            doc["decay"] = decay_section(settings, bar)
        if "memory" in sec and settings.memory_batches:
            bar.set_postfix_str("memory")
            doc["memory"] = memory_section(settings)
    doc["machine"]["numba_threading_layer"] = _threading_layer(__import__("numba"))
    doc["contention"] = monitor.read()
    doc["elapsed_s"] = time.perf_counter() - t0
    write_outputs(doc, out_dir, plots)
    return doc


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _settings_dict(settings):
    d = asdict(settings)
    d["configs"] = [asdict(c) for c in settings.configs]
    return d


# ----------------------------------------------------------------------- outputs
def write_outputs(doc, out_dir, plots=True):
    """Write JSON, CSV, plots and the regenerated README of one sweep."""
    stem = os.path.join(out_dir, f"bench-{doc['preset']}")
    with open(stem + ".json", "w") as fh:
        json.dump(doc, fh, indent=1, default=_json_default)
    write_csv(doc, stem + ".csv")
    if plots:
        doc["plots"] = write_plots(doc, stem)
        with open(stem + ".json", "w") as fh:
            json.dump(doc, fh, indent=1, default=_json_default)
    write_readme(out_dir)


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


CSV_FIELDS = ("section", "dtype", "config", "B", "N", "T", "d", "heads", "method", "impl",
              "variant", "status", "median_s", "traj_layers_per_s", "gflops", "frac_peak",
              "speedup", "axis", "value", "threads", "system", "error", "order")


def csv_rows(doc):
    """Flatten a sweep document into CSV rows (dicts over :data:`CSV_FIELDS`)."""
    rows = []
    for p in doc.get("throughput", []):
        base = {"section": "throughput", **{k: p[k] for k in
                                             ("dtype", "config", "B", "N", "T", "d", "heads",
                                              "method")}}
        rows.append({**base, "impl": "tfkernels", "status": "ok",
                     **{k: p["ours"][k] for k in ("median_s", "traj_layers_per_s",
                                                   "gflops", "frac_peak")}})
        for name, peer in p["peers"].items():
            for vname, v in peer["variants"].items():
                rows.append({**base, "impl": name, "variant": vname, "status": v["status"],
                             **{k: v.get(k) for k in ("median_s", "traj_layers_per_s",
                                                      "gflops", "frac_peak")},
                             "speedup": (v["median_s"] / p["ours"]["median_s"]
                                         if "median_s" in v else None)})
    for axis, entry in doc.get("scaling", {}).items():
        if not isinstance(entry, dict) or "points" not in entry:
            continue
        for e in entry["points"]:
            rows.append({"section": "scaling", "dtype": doc["scaling"]["dtype"], "axis": axis,
                         "impl": "tfkernels", **{k: e[k] for k in
                                                 ("value", "B", "N", "T", "d", "heads",
                                                  "threads", "median_s")},
                         "speedup": e.get("speedup")})
    for system, entry in doc.get("errors", {}).items():
        for m, r in entry["methods"].items():
            for N, err in zip(entry["layers"], r["errors"]):
                rows.append({"section": "errors", "system": system, "method": m, "N": N,
                             "error": err, "order": r["order"], "impl": "tfkernels"})
    return rows


def write_csv(doc, path):
    """Write :func:`csv_rows` to ``path``."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in csv_rows(doc):
            w.writerow(row)


# ------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_xticks(ax, values, labels=None, fontsize=8):
    """Ticks exactly at ``values`` on a log x axis, no minor tick labels."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(list(values), [str(v) for v in values] if labels is None else labels,
                  fontsize=fontsize)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _at_largest_n(points, dtype):
    """The throughput points of ``dtype`` at the sweep's largest N, sorted by d."""
    pts = [p for p in points if p["dtype"] == dtype]
    if not pts:
        return []
    n_max = max(p["N"] for p in pts)
    return sorted((p for p in pts if p["N"] == n_max), key=lambda p: (p["d"], p["T"]))


def plot_throughput(doc, path):
    """GFLOP/s against d for ours and each peer (largest N), one panel per dtype."""
    plt = _pyplot()
    dtypes = sorted({p["dtype"] for p in doc["throughput"]})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 4), squeeze=False)
    for ax, dt in zip(axes[0], dtypes):
        pts = _at_largest_n(doc["throughput"], dt)
        ds = [p["d"] for p in pts]
        ax.plot(ds, [p["ours"]["gflops"] for p in pts], "o-", lw=2, label="tfkernels")
        for name in pts[0]["peers"]:
            ys = [p["peers"][name].get("gflops", np.nan) for p in pts]
            if np.any(np.isfinite(ys)):
                ax.plot(ds, ys, "s--", label=name)
        pk = pts[0]["peak_gflops"]  # max(nominal, measured)
        which = "measured" if pk > pts[0].get("nominal_peak_gflops", pk) else "nominal"
        ax.set(xscale="log", yscale="log", xlabel="width d", ylabel="GFLOP/s",
               title=f"{dt}, N={pts[0]['N']} (peak {pk:.0f} GFLOP/s, {which})")
        _log_xticks(ax, ds, [f"{p['config']}\nd={p['d']}" for p in pts], fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_speedup(doc, path):
    """Our speed-up over each peer against d (largest N), one panel per dtype."""
    plt = _pyplot()
    dtypes = sorted({p["dtype"] for p in doc["throughput"]})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(5.5 * len(dtypes), 4), squeeze=False)
    for ax, dt in zip(axes[0], dtypes):
        pts = _at_largest_n(doc["throughput"], dt)
        ds = [p["d"] for p in pts]
        for name in pts[0]["peers"]:
            ys = [p["peers"][name].get("speedup", np.nan) for p in pts]
            if np.any(np.isfinite(ys)):
                ax.plot(ds, ys, "o-", label=f"vs {name}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="width d",
               ylabel="speed-up (peer time / our time)", title=f"{dt}, N={pts[0]['N']}")
        _log_xticks(ax, ds, [f"{p['config']}\nd={p['d']}" for p in pts], fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_errors(doc, path):
    """E(N) against N, log-log, with fitted orders; one panel per system."""
    plt = _pyplot()
    systems = list(doc["errors"])
    fig, axes = plt.subplots(1, len(systems), figsize=(5.5 * len(systems), 4), squeeze=False)
    for ax, system in zip(axes[0], systems):
        e = doc["errors"][system]
        for m, r in e["methods"].items():
            order = "n/a" if r["order"] is None else f"{r['order']:.2f}"
            style = ":" if m == "averaged" else "-"
            ax.plot(e["layers"], np.maximum(r["errors"], 1e-17), "o" + style,
                    label=f"{m}: order {order} (expect {r['expected_order']})")
        ax.axhline(e["floor"], color="gray", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", xlabel="layers N", ylabel="relative error E(N)",
               title=f"{system} (reference: {e['reference']})")
        _log_xticks(ax, e["layers"])
        ax.title.set_fontsize(8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(doc, path):
    """Time against B, N, T, d (log-log) and speed-up against threads."""
    plt = _pyplot()
    sc = doc["scaling"]
    axes_names = [a for a in ("B", "N", "T", "d", "threads") if a in sc]
    fig, axes = plt.subplots(1, len(axes_names), figsize=(3.6 * len(axes_names), 3.4),
                             squeeze=False)
    for ax, name in zip(axes[0], axes_names):
        pts = sc[name]["points"]
        xs = [p["value"] for p in pts]
        if name == "threads":
            ax.plot(xs, [p["speedup"] for p in pts], "o-", label="measured")
            ax.plot(xs, xs, "k--", lw=0.8, label="ideal")
            ax.set(xlabel="threads", ylabel="speed-up", title="parallel speed-up")
            ax.set_xticks(xs)
            ax.legend(fontsize=8)
        else:
            ax.plot(xs, [p["median_s"] for p in pts], "o-")
            exp = sc[name]["exponent"]
            ax.set(xscale="log", yscale="log", xlabel=name, ylabel="seconds per call",
                   title=f"time ~ {name}^{exp:.2f}" if exp is not None else name)
            _log_xticks(ax, xs)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(doc, stem):
    """Write every plot the document has data for; return their file names."""
    jobs = [("throughput", plot_throughput, "throughput"), ("throughput", plot_speedup,
                                                           "speedup"),
            ("errors", plot_errors, "errors"), ("scaling", plot_scaling, "scaling")]
    names = []
    for key, fn, suffix in jobs:
        if doc.get(key):
            path = f"{stem}-{suffix}.png"
            fn(doc, path)
            names.append(os.path.basename(path))
    return names


# ------------------------------------------------------------------------ README
PRESET_ORDER = ("full", "quick", "custom", "ci")


def load_docs(out_dir):
    """Every ``bench-*.json`` in ``out_dir``, ordered full, quick, custom, ci."""
    docs = []
    for name in sorted(os.listdir(out_dir)):
        if name.startswith("bench-") and name.endswith(".json"):
            with open(os.path.join(out_dir, name)) as fh:
                docs.append(json.load(fh))
    rank = {p: i for i, p in enumerate(PRESET_ORDER)}
    return sorted(docs, key=lambda d: rank.get(d["preset"], len(rank)))


def _fmt(x, spec=".3g"):
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else \
        format(x, spec)


def readme_throughput(doc):
    """Markdown table: one row per throughput point, ratios against each peer."""
    names = list(doc["throughput"][0]["peers"]) if doc["throughput"] else []
    head = ["config (T, d, H)", "dtype", "N", "B", "tfkernels traj-layers/s", "GFLOP/s",
            "% peak"] + [f"{n}: traj-layers/s (×ours)" for n in names] + ["busy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in doc["throughput"]:
        o = p["ours"]
        cells = [f"{p['config']} ({p['T']}, {p['d']}, {p['heads']})", p["dtype"], p["N"],
                 p["B"], _fmt(o["traj_layers_per_s"], ",.0f"), _fmt(o["gflops"], ".1f"),
                 _fmt(100 * o["frac_peak"], ".1f")]
        for n in names:
            peer = p["peers"][n]
            if peer["status"] == "ok":
                cells.append(f"{peer['traj_layers_per_s']:,.0f} [{peer['best_variant']}] "
                             f"(**{peer['speedup']:.2f}×**)")
            else:
                cells.append(peer["status"])
        busy = p.get("contention", {}).get("foreign_cpu_frac")
        cells.append("—" if busy is None else f"{100 * busy:.0f} %")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def readme_compile(doc):
    """Bullet list of compile / warm-start times."""
    lines = []
    for dt, e in doc["compile"].items():
        if dt == "mode":
            continue
        ip = e["in_process"]
        parts = [f"first call in the harness {ip['first_call_s']:.3f} s ({ip['how']})"]
        for k in ("cold", "warm"):
            if k in e and "total_s" in e[k]:
                parts.append(f"{k} start (import + first call, fresh process) "
                             f"{e[k]['total_s']:.2f} s = {e[k]['import_s']:.2f} + "
                             f"{e[k]['first_call_s']:.2f}")
        lines.append(f"- {dt}: " + "; ".join(parts))
    return lines


def readme_scaling(doc):
    """Bullet list of scaling exponents and parallel efficiency."""
    sc = doc["scaling"]
    base = ", ".join(f"{k}={v}" for k, v in sc["base"].items())
    lines = [f"Base ({sc['dtype']}): {base}. Fitted exponent of time against each axis "
             "(1 = linear):", ""]
    for axis in ("B", "N", "T", "d"):
        if axis in sc:
            pts = sc[axis]["points"]
            lines.append(f"- {axis}: exponent {_fmt(sc[axis]['exponent'], '.2f')} over "
                         f"{pts[0]['value']}…{pts[-1]['value']}")
    if "threads" in sc:
        for e in sc["threads"]["points"]:
            lines.append(f"- {e['value']} thread(s): {e['median_s'] * 1e3:.2f} ms, speed-up "
                         f"{e['speedup']:.2f}×, efficiency {100 * e['efficiency']:.0f} %")
    return lines


def readme_errors(doc):
    """Markdown table of fitted orders."""
    lines = ["| system | reference | method | expected order | fitted order | E at largest N |",
             "|---|---|---|---|---|---|"]
    for system, e in doc["errors"].items():
        for m, r in e["methods"].items():
            lines.append(f"| {system} | {e['reference']} | {m} | {r['expected_order']} | "
                         f"{_fmt(r['order'], '.2f')} | {r['errors'][-1]:.2e} |")
    return lines


def readme_decay(doc):
    """Bullet list of the decay study's cost relative to the flow."""
    dec = doc["decay"]
    if dec.get("status") != "ok":
        return [f"- {dec.get('message', 'not measured')}"]
    return [f"- {dec['dtype']}, B={dec['B']}, T={dec['T']}, d={dec['d']}, N={dec['N']}: flow "
            f"{dec['flow_s'] * 1e3:.2f} ms; pair mode {dec['pair_s'] * 1e3:.2f} ms "
            f"({dec['pair_ratio']:.2f}×); tangent mode {dec['tangent_s'] * 1e3:.2f} ms "
            f"({dec['tangent_ratio']:.2f}×) — the study's chunk loop, λ̂ estimate excluded"]


def readme_memory(doc):
    """Bullet list of peak-RSS growth."""
    mem = doc["memory"]
    lines = []
    for r in mem["points"]:
        if "error" in r:
            lines.append(f"- B={r['B']}: failed")
            continue
        lines.append(f"- B={r['B']} (state {r['state_mb']:.1f} MB): peak RSS grew "
                     f"{r['extra_mb']:.1f} MB during the call, "
                     f"{r['beyond_output_mb']:.1f} MB beyond its output array")
    return lines


def goals(doc):
    """Issue 5's goals, judged from one sweep document: ``[(goal, verdict, figure)]``."""
    out = []
    pts = doc.get("throughput", [])

    def at(cfg, dt):
        cand = [p for p in pts if p["config"] == cfg and p["dtype"] == dt]
        return max(cand, key=lambda p: p["N"]) if cand else None

    for cfgs, need, label in ((("tiny", "small"), 2.0, "≥ 2× best peer"),
                              (("medium", "large"), 1.2, "≥ 1.2× best peer")):
        for cfg in cfgs:
            for dt in ("float32", "float64"):
                p = at(cfg, dt)
                if p is None or not p.get("best_peer"):
                    continue
                s = p["best_peer"]
                out.append((f"{cfg} {dt}: {label}", s["speedup"] >= need,
                            f"{s['speedup']:.2f}× vs {s['peer']}[{s['variant']}]"))
    for cfgs, need in ((("tiny", "small"), 0.40), (("medium", "large"), 0.60)):
        for cfg in cfgs:
            p = at(cfg, "float32")
            if p is not None:
                out.append((f"{cfg} float32: ≥ {need:.0%} of peak",
                            p["ours"]["frac_peak"] >= need,
                            f"{100 * p['ours']['frac_peak']:.1f} %"))
    out += _goal_memory(doc) + _goal_threads(doc) + _goal_compile(doc) + _goal_decay(doc)
    return out


def _goal_decay(doc):
    dec = doc.get("decay")
    if not dec or dec.get("status") != "ok":
        return []
    return [(f"{m} mode costs ≤ 2.2× the flow", dec[f"{m}_ratio"] <= 2.2,
             f"{dec[f'{m}_ratio']:.2f}×") for m in ("pair", "tangent")]


def _goal_memory(doc):
    mem = doc.get("memory")
    if not mem:
        return []
    ok_pts = [r for r in mem["points"] if "beyond_output_mb" in r]
    if not ok_pts:
        return []
    worst = max(r["beyond_output_mb"] for r in ok_pts)
    return [(f"peak RSS growth beyond input and output < {mem['limit_mb']} MB "
             f"(B up to {max(r['B'] for r in ok_pts)})", worst < mem["limit_mb"],
             f"{worst:.1f} MB")]


def _goal_threads(doc):
    th = doc.get("scaling", {}).get("threads")
    if not th or len(th["points"]) < 2:
        return []
    e = th["points"][1]
    return [("parallel speed-up 1 → 2 threads ≥ 1.85×", e["speedup"] >= 1.85,
             f"{e['speedup']:.2f}×")]


def _goal_compile(doc):
    out = []
    for dt, e in doc.get("compile", {}).items():
        if dt == "mode":
            continue
        if "total_s" in e.get("cold", {}):
            out.append((f"cold compile {dt} < 10 s", e["cold"]["total_s"] < 10,
                        f"{e['cold']['total_s']:.1f} s"))
        if "total_s" in e.get("warm", {}):
            out.append((f"warm start {dt} < 1 s", e["warm"]["total_s"] < 1,
                        f"{e['warm']['total_s']:.2f} s"))
    return out


def readme_section(doc):
    """The README section of one sweep document."""
    m = doc["machine"]
    stem = f"bench-{doc['preset']}"
    lines = [f"## Preset `{doc['preset']}` — {doc['created']}", "",
             f"`{doc['command']}` — {doc['elapsed_s']:.0f} s, {m['threads']} thread(s), "
             f"git {(m['git']['commit'] or '?')[:10]}{' (dirty)' if m['git']['dirty'] else ''}, "
             f"Numba threading layer {m['numba_threading_layer']}.", ""]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    lines += [f"Versions: {versions}.", ""]
    if m.get("peak_used"):
        used, nominal = m["peak_used"]["gflops"], m["peak_used"]["nominal_gflops"]
        lines += ["% peak below divides by " + ", ".join(
            f"{used[dt]:.0f} GFLOP/s {dt} (nominal {nominal[dt]:.0f})" for dt in used)
            + f": the larger of the nominal and the measured FMA peak on "
              f"{m['peak_used']['threads']} thread(s).", ""]
    c = doc.get("contention", {})
    if c.get("foreign_cpu_frac") is not None:
        lines += [f"Other processes used {100 * c['foreign_cpu_frac']:.0f} % of the CPUs "
                  f"during this run (hypervisor steal {100 * c['steal_frac']:.1f} %); the "
                  "column 'busy' below is that share during each point. A busy core "
                  "slows every multi-threaded implementation, so compare within a row.",
                  ""]
    if doc.get("throughput"):
        lines += ["### Throughput (median of interleaved runs; ×ours = peer time / our time, "
                  "> 1 means tfkernels is faster)", ""] + readme_throughput(doc) + [""]
    sections = (("compile", "Compile and start-up", readme_compile),
                ("scaling", "Scaling", readme_scaling),
                ("errors", "Error scaling (global error at t = 1)", readme_errors),
                ("decay", "Perturbation-decay study cost", readme_decay),
                ("memory", "Memory", readme_memory))
    for key, title, fn in sections:
        if doc.get(key):
            lines += [f"### {title}", ""] + fn(doc) + [""]
    g = goals(doc)
    if g:
        lines += ["### Issue 5 goals, judged from this run", "",
                  "| goal | met | measured |", "|---|---|---|"]
        lines += [f"| {name} | {'yes' if ok else '**no**'} | {fig} |" for name, ok, fig in g]
        lines += [""]
        busy = doc.get("contention", {}).get("foreign_cpu_frac")
        if busy is not None and busy > 0.25:
            lines += [f"Other processes used {100 * busy:.0f} % of the CPUs during this run: "
                      "the speed verdicts above are not reliable; rerun on a quiet machine.",
                      ""]
    for png in doc.get("plots", []):
        lines += [f"![{png}]({png})", ""]
    lines += [f"Data: [`{stem}.json`]({stem}.json), [`{stem}.csv`]({stem}.csv).", ""]
    return lines


def readme_paper(out_dir):
    """The README section of ``paper/paper.json``, if present."""
    path = os.path.join(out_dir, "paper", "paper.json")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        p = json.load(fh)
    lines = ["## The paper's experiments (`tfkernels paper`)", ""]
    lines += [f"- {line}" for line in p.get("summary", [])]
    lines += [""] + [f"![{f}](paper/{f})" for f in p.get("plots", [])] + [""]
    return lines


def peak_used(machine):
    """``{dtype: GFLOP/s}``: the denominator of "% peak" of a sweep's machine section.

    Documents written before the peak was measured have only the nominal peak.
    """
    used = machine.get("peak_used")
    return dict(used["gflops"]) if used else dict(machine["peak"]["gflops"])


def readme_peak(machine):
    """README lines on the peak: nominal, measured (implied clock), and the one used."""
    lines = [f"Nominal machine {machine['peak']['explanation']} (the clock the machine "
             "reports; a virtual machine reports its base clock, and the cores boost above "
             "it under load).", ""]
    mp = machine.get("measured_peak")
    if not mp or not mp.get("gflops"):
        return lines + ["% peak divides by the nominal peak (no measured peak in this run).",
                        ""]
    used = machine["peak_used"]
    n = used["threads"]
    lines += [f"Measured FMA peak (`tfkernels.flops.measured_peak`: {mp['fma_chains']} "
              "independent vector FMA chains per thread in registers, nothing else; median "
              f"of {mp['repeats']} runs of ≥ {mp['min_seconds']:g} s of CPU time): "]
    parts = []
    for k in sorted({int(t) for per in mp["gflops"].values() for t in per}):
        rates = [(dt, per[str(k)]) for dt, per in mp["gflops"].items() if str(k) in per]
        clocks = dict.fromkeys(f"{mp['implied_clock_ghz'][dt][str(k)]:.2f}"
                               for dt, _ in rates)
        parts.append(" / ".join(f"{v:.0f} GFLOP/s {dt}" for dt, v in rates)
                     + f" on {k} thread(s) (implied clock "
                     + " / ".join(clocks) + " GHz)")
    lines[-1] += "; ".join(parts) + "."
    nominal = used["nominal_gflops"]
    lines += ["", f"% peak uses the larger of nominal and measured on the sweep's {n} "
              "thread(s): " + ", ".join(
                  f"{dt} {used['gflops'][dt]:.0f} GFLOP/s "
                  f"({'measured' if used['gflops'][dt] > nominal[dt] else 'nominal'}; "
                  f"nominal {nominal[dt]:.0f})" for dt in used["gflops"]) + ".", ""]
    return lines


def write_readme(out_dir):
    """Regenerate ``<out_dir>/README.md`` from every sweep and paper result there."""
    docs = load_docs(out_dir)
    lines = ["# Benchmark results", "",
             "Generated by `tfkernels bench` (and `tfkernels paper`); do not edit by hand —",
             "rerun the harness instead. Every ratio is formed within one run on one machine.",
             ""]
    if docs:
        m = docs[0]["machine"]
        g = m["gemm_gflops"]
        used = peak_used(m)
        lines += [f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPU(s), "
                  f"{m['platform']}.", ""] + readme_peak(m) + [
                  f"Attainable: a 1024×1024 NumPy/OpenBLAS GEMM reaches "
                  f"{g['float32']:.0f} GFLOP/s float32 and {g['float64']:.0f} float64 "
                  f"({100 * g['float32'] / used['float32']:.0f} % and "
                  f"{100 * g['float64'] / used['float64']:.0f} % of peak).", "",
                  "FLOPs per trajectory-layer: the model in `tfkernels/flops.py` "
                  "(every matmul 2·m·k·n; 15 flops per softmax score; 20 per GELU; "
                  "bias, damping, term sums and RK combinations counted).", ""]
    for doc in docs:
        lines += readme_section(doc)
    lines += readme_paper(out_dir)
    with open(os.path.join(out_dir, "README.md"), "w") as fh:
        fh.write("\n".join(lines))


# --------------------------------------------------------------------------- CLI
def configure_parser(parser):
    """Add the ``tfkernels bench`` options to ``parser``."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="sweep size: ci (seconds), quick (about a minute), full")
    parser.add_argument("--n", help="layers N, comma-separated (e.g. 8,32,128)")
    parser.add_argument("--d", help="widths d, comma-separated (e.g. 16,64); a grid at "
                                    "--seq-len and --heads replaces the named configs")
    parser.add_argument("--seq-len", type=int, help="tokens T of the --d grid; None: 16")
    parser.add_argument("--heads", type=int, help="heads H of the --d grid; None: 4")
    parser.add_argument("--dtype", help="float32, float64, both, or a comma list")
    parser.add_argument("--batch", type=int, help="trajectories B per call; None: "
                                                  "sized per config from the preset's work")
    parser.add_argument("--peers", help="comma list of numpy,torch,jax, or none")
    parser.add_argument("--threads", type=int, help="threads for tfkernels and the peers; "
                                                    "None: all Numba threads")
    parser.add_argument("--repeats", type=int,
                        help="timed samples per implementation; None: the preset's")
    parser.add_argument("--method", choices=("euler", "heun", "rk4"),
                        help="update rule of the throughput sweep; None: the preset's (euler)")
    parser.add_argument("--compile", choices=("first", "warm", "cold"),
                        help="compile-time measurement: in-process first call only, plus "
                             "a warm start, or plus a cold compile in a fresh cache; "
                             "None: the preset's")
    parser.add_argument("--sections", help="comma list of " + ",".join(Settings.sections))
    parser.add_argument("--wait-quiet", type=float, metavar="SECONDS",
                        help="before each point wait up to SECONDS for other processes to "
                             "leave the CPUs; 0: never; None: the preset's")
    parser.add_argument("--out", default="results", help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="no PNG plots")


def print_summary(doc, file=None):
    """Print the machine peak and the throughput table to the terminal."""
    file = file or sys.stdout
    m = doc["machine"]
    print(m["peak"]["explanation"], file=file)
    if m.get("measured_peak"):
        print(m["measured_peak"]["explanation"], file=file)
        print("% peak uses " + ", ".join(f"{v:.0f} GFLOP/s {dt}" for dt, v in
                                         peak_used(m).items())
              + f" on {m['peak_used']['threads']} thread(s)", file=file)
    if doc.get("throughput"):
        print("\n".join(readme_throughput(doc)), file=file)
    for name, ok, fig in goals(doc):
        print(f"{'met   ' if ok else 'NOT met'} {name}: {fig}", file=file)
    if doc.get("errors"):
        for system, e in doc["errors"].items():
            orders = ", ".join(f"{m} {_fmt(r['order'], '.2f')}"
                               for m, r in e["methods"].items())
            print(f"fitted orders ({system}): {orders}", file=file)


def run_cli(args):
    """Entry point of ``tfkernels bench``."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"tfkernels bench: error: {exc}", file=sys.stderr)
        return 2
    doc = run_sweep(settings, args.out, progress=not args.no_progress,
                    plots=not args.no_plots)
    print_summary(doc)
    print(f"wrote {os.path.join(args.out, 'bench-' + doc['preset'])}.json/.csv, "
          f"README.md and {len(doc.get('plots', []))} plot(s) "
          f"in {doc['elapsed_s']:.0f} s")
    return 0
