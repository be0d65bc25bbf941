"""The throughput section: tfkernels against its peers at each (config, dtype, N).

At every point our flow (:class:`Ours`) and every peer variant run on the same weights
(:func:`bench_params`) and states; a peer is timed only if its output agrees with ours
(:data:`PEER_RTOL`), and all are timed interleaved
(:func:`~tfkernels.bench.timing.time_interleaved`).
"""

import math
import time

import numpy as np

from .. import config
from . import flops, peers
from .settings import MODELS
from .timing import CpuMonitor, time_interleaved, wait_quiet

#: Largest max-norm difference of a peer's output relative to ``max|ours|``.
PEER_RTOL = {"float32": 5e-4, "float64": 1e-9}


class Ours:
    """tfkernels' own flow as a timed implementation (same interface as a peer)."""

    label = "tfkernels"

    def __init__(self, params, x0, n_layers, method, threads):
        import tfkernels as tfk

        self.tfk, self.params, self.x0 = tfk, params, x0
        self.n_layers, self.method, self.threads = n_layers, method, threads

    def run(self):
        """One call of :func:`tfkernels.integrate`; returns the final states."""
        return self.tfk.integrate(
            self.params, self.x0, self.n_layers, method=self.method, n_threads=self.threads
        )

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


def batch_for(settings, cfg):
    """Trajectories per call: ``--batch``, the config's own B, or a power of two sized by
    ``work``.

    The power of two is at least ``threads × config.BLOCK`` (one slice of the batch per
    thread) and at most 4096.
    """
    if settings.batch:
        return settings.batch
    if cfg.batch:
        return cfg.batch
    fpl = flops.flops_per_layer(flow_config(cfg), settings.method)
    lo = settings.threads * config.BLOCK  # one block of trajectories per thread at least
    b = settings.work / (fpl * max(settings.n_layers))
    return int(min(max(2 ** math.floor(math.log2(max(b, 1))), lo), 4096))


def flow_config(cfg):
    """The FLOP-model description of a throughput configuration."""
    m = dict(MODELS[getattr(cfg, "model", "paper")])
    m["damping"] = bool(m.get("damping"))  # the FLOP model's damping says whether γ ≠ 0
    return flops.FlowConfig(seq_len=cfg.seq_len, d=cfg.d, n_heads=cfg.heads, **m)


def bench_params(cfg, dtype):
    """Weights of a throughput point: attention + FFN (m = 4d) of the configuration's
    model (:data:`tfkernels.bench.settings.MODELS`; the paper's: GELU, damping 1)."""
    import tfkernels as tfk

    model = MODELS[getattr(cfg, "model", "paper")]
    return tfk.TransformerParams.random(cfg.d, cfg.heads, seed=1, dtype=np.dtype(dtype), **model)


def start_peers(settings):
    """Start one worker process per peer variant; return ``{peer: [PeerProcess]}``."""
    procs = {}
    for name in settings.peers:
        procs[name] = [
            peers.PeerProcess(v, settings.threads) for v in peers.variants(name, settings.threads)
        ]
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
        return {
            "status": proc.status if proc.status != "ok" else "error",
            "message": str(exc)[-1500:],
        }
    scale = float(np.max(np.abs(ours_out))) or 1.0
    diff = float(np.max(np.abs(out.astype(np.float64) - ours_out))) / scale
    if not np.isfinite(diff) or diff > PEER_RTOL[dtype]:
        return {
            "status": "mismatch",
            "max_rel_diff": diff,
            "first_call_s": first,
            "message": f"max|peer - ours| / max|ours| = {diff:.3g} > "
            f"{PEER_RTOL[dtype]:g}; not timed",
        }
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
    timed = time_interleaved(impls, settings.repeats, settings.min_sample_s, settings.pause_s)
    fpl = flops.flops_per_layer(flow_config(cfg), settings.method)
    pk = peak.peak_gflops(dtype, settings.threads)  # max(nominal, measured)
    measured = peak.measured_gflops(dtype, settings.threads)
    point = {
        "config": cfg.name,
        "model": getattr(cfg, "model", "paper"),
        "dtype": dtype,
        "B": B,
        "N": N,
        "T": cfg.seq_len,
        "d": cfg.d,
        "heads": cfg.heads,
        "d_ff": 4 * cfg.d,
        "method": settings.method,
        "flops_per_traj_layer": fpl,
        "peak_gflops": pk,
        "nominal_peak_gflops": peak.nominal.peak_gflops(dtype, settings.threads),
        "measured_peak_gflops": measured,
        "ours": {
            **timed["tfkernels"],
            **rates(timed["tfkernels"]["median_s"], B * N, fpl, pk),
            "first_call_s": ours_first,
        },
    }
    gf = point["ours"]["gflops"]
    point["ours"]["frac_measured_peak"] = gf / measured if measured else None
    point["peers"] = {
        name: summarize_peer(
            variants[name], timed, procs[name], B * N, fpl, pk, point["ours"]["median_s"]
        )
        for name in procs
    }
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
        return {
            "status": statuses[0] if len(statuses) == 1 else "/".join(statuses),
            "variants": variants,
            "message": "; ".join(v.get("message", "") for v in variants.values()),
        }
    best = min(ok, key=lambda k: ok[k]["median_s"])
    b = ok[best]
    return {
        "status": "ok",
        "best_variant": best,
        "median_s": b["median_s"],
        "traj_layers_per_s": b["traj_layers_per_s"],
        "gflops": b["gflops"],
        "frac_peak": b["frac_peak"],
        "speedup": b["median_s"] / ours_s,
        "max_rel_diff": b["max_rel_diff"],
        "variants": variants,
    }


def throughput_points(settings):
    """The (config, dtype, N) points of the throughput sweep, in order."""
    return [
        (cfg, dt, N)
        for dt in settings.dtypes
        for cfg in settings.configs
        for N in settings.n_layers
    ]


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
            p["best_peer"] = {
                "peer": best,
                "variant": ok[best]["best_variant"],
                "speedup": ok[best]["speedup"],
            }
        else:
            p["best_peer"] = None
    return points
