"""The Lyapunov spectrum: the ``k`` leading exponents of the flow, streamed over trajectories.

Per trajectory, ``k`` tangent vectors are advanced through every layer by the exact JVP
of the layer map (``kernels.lyapunov_kernel``: each tangent by ``steps.step_tangent``,
any method and block) and re-orthonormalized by a QR factorization (modified
Gram–Schmidt applied twice) every ``renorm_every`` layers after the first
``transient`` layers (every layer during the transient, whose growth is dropped). The
finite-time exponent j of the trajectory is

    λ_j = Σ log R_jj / (t_N − t_transient)

summed over the QR factorizations after the transient (ChaosTools'
``lyapunovspectrum``). Its distribution over trajectories is reduced per exponent to
mergeable statistics (:class:`~.stats.DecayStats`, one "layer" per exponent: count,
mean, M2, min, max and the quantile sketch), so memory does not grow with the number of
trajectories; a trajectory that becomes non-finite is counted, never averaged.

The exponents are in the order of the QR columns: the mean over trajectories decreases
with j once the tangents have aligned with the Oseledets directions (a finite-time
exponent of one trajectory need not be ordered; nothing is sorted).

Cost: a layer takes k tangent steps (state and tangent), each on its own copy of the
state, so the study costs about k tangent-mode decay runs plus the QR, ``O(k²·T·d)``
per renormalization.
"""

import dataclasses
import math
import time

import numpy as np

from .. import _validate as v
from .. import api, kernels
from . import initial, output, plans, runner
from .environment import params_summary
from .serialize import jsonable
from .stats import QUANTILE_NAMES, QUANTILES, DecayStats

#: Largest k·T·d of one trajectory's tangents (the chunk holds one set per thread).
MAX_TANGENT_ELEMENTS = 2**24
#: Default trajectories per chunk: about this many trajectory-layer-tangents per chunk.
CHUNK_WORK = 2**22


@dataclasses.dataclass(frozen=True)
class ChunkConfig:
    """What a chunk needs besides the packed parameters (small, picklable).

    Attributes
    ----------
    seed, seq_len, d, k, transient, renorm_every : int
    dtype : str
    a, b, h : ndarray
        Tableau and step sizes (``api.prepare_run``), in ``dtype``.
    time : float
        ``t_N − t_transient``, the time the exponents are averaged over.
    init : str
        ``"normal"`` (drawn in the kernel), ``"sphere"`` or ``"array"``.
    """

    seed: int
    seq_len: int
    d: int
    k: int
    transient: int
    renorm_every: int
    dtype: str
    a: np.ndarray
    b: np.ndarray
    h: np.ndarray
    time: float
    init: str = "normal"


def chunk_exponents(packed, chunk_start, chunk_len, cfg, x0=None):
    """The finite-time exponents of one chunk.

    Returns
    -------
    expo : ndarray of float64, shape (chunk_len, k)
        Row b: the exponents of trajectory ``chunk_start + b`` (NaN when not finite).
        Each row depends only on its global index, not on the chunk.
    status : ndarray of int64, shape (chunk_len,)
        ``kernels.STATUS_OK`` or the first non-finite layer (0: dependent initial
        tangents).
    """
    states = None
    if cfg.init != "normal":
        states = initial.chunk_states(
            cfg.init, x0, chunk_start, chunk_len, cfg.seq_len, cfg.d, np.dtype(cfg.dtype), cfg.seed
        )
    expo = np.empty((chunk_len, cfg.k), dtype=np.float64)
    status = np.empty(chunk_len, dtype=np.int64)
    like = np.empty((cfg.seq_len, cfg.d), dtype=cfg.dtype)
    kernels.lyapunov_kernel(
        packed,
        cfg.a,
        cfg.b,
        cfg.h,
        cfg.seed,
        chunk_start,
        cfg.transient,
        cfg.renorm_every,
        like,
        expo,
        status,
        states,
    )
    expo /= cfg.time
    return expo, status


def lyapunov_chunk(chunk_start, chunk_len, packed, cfg, x0=None):
    """The study's chunk function: :func:`chunk_exponents` reduced to a
    :class:`~.stats.DecayStats` with one column per exponent."""
    expo, status = chunk_exponents(packed, chunk_start, chunk_len, cfg, x0)
    k = cfg.k
    # DecayStats' per-trajectory slopes over its columns mean nothing here (0/0 for
    # k = 1): they are never read
    with np.errstate(invalid="ignore", divide="ignore"):
        return DecayStats.from_chunk(
            expo, status, chunk_start, np.arange(k, dtype=np.float64), np.full(k, np.inf)
        )


# ========================================================================= result
@dataclasses.dataclass
class LyapunovResult(output.TableResult):
    """Outcome of :func:`lyapunov_spectrum`.

    Attributes
    ----------
    exponents : ndarray of float64, shape (k,)
        Mean finite-time exponent j over the valid trajectories (QR column order,
        decreasing once the tangents have aligned).
    exponents_ci : ndarray of float64, shape (k, 2)
        95 % confidence interval of each mean (Student t over trajectories).
    stats : dict of ndarray
        Per exponent: ``index``, ``count``, ``mean``, ``std``, ``min``, ``max`` and the
        quantiles ``q01 … q99`` of the finite-time exponent over trajectories
        (within ``meta["quantile_accuracy"]`` of the order statistics).
    n_trajectories, n_valid, n_nonfinite : int
    nonfinite_indices, nonfinite_layers : list of int
        The first non-finite trajectories and the first layer at which each was not.
    config, meta : dict
    """

    exponents: np.ndarray
    exponents_ci: np.ndarray
    stats: dict
    n_trajectories: int
    n_valid: int
    n_nonfinite: int
    nonfinite_indices: list
    nonfinite_layers: list
    config: dict
    meta: dict

    CSV_INT_COLUMNS = ("index", "count")

    @property
    def quantiles(self):
        """``(len(QUANTILES), k)``: the quantiles of each exponent over trajectories."""
        return np.stack([self.stats[q] for q in QUANTILE_NAMES])

    # to_dict, to_json, to_csv (one row per exponent): output.TableResult

    def save(self, out_dir="results/lyapunov", stem="lyapunov", plot=True):
        """Write ``<stem>.csv``, ``<stem>.png`` and ``<stem>.json`` into ``out_dir`` as
        one set (the JSON last); returns the paths written."""
        return output.save_result(self, out_dir, stem, plot)

    def plot(self, path):
        """The spectrum: mean exponent j with its CI, and the 5–95 % and 25–75 % bands
        of the finite-time exponents, written atomically to ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        j = np.arange(1, self.exponents.shape[0] + 1)
        fig, ax = plt.subplots(figsize=(6.0, 4.0), constrained_layout=True)
        ax.fill_between(j, self.stats["q05"], self.stats["q95"], color="C0", alpha=0.15, lw=0)
        ax.fill_between(j, self.stats["q25"], self.stats["q75"], color="C0", alpha=0.3, lw=0)
        err = np.abs(self.exponents_ci - self.exponents[:, None]).T
        ax.errorbar(j, self.exponents, yerr=np.nan_to_num(err), fmt="o-", color="C0", ms=3)
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xlabel("j")
        ax.set_ylabel("λ_j")
        if not self.n_valid:
            ax.text(0.5, 0.5, "no valid trajectory", transform=ax.transAxes, ha="center")
        ax.set_title(
            f"Lyapunov spectrum: {self.n_valid:,} trajectories, "
            f"{self.config['n_layers']} layers ({self.config['method']})",
            fontsize=10,
        )
        output.save_figure(fig, path, dpi=110)

    def summary(self):
        """A short human-readable table."""
        c = self.config
        rows = [
            ("trajectories", f"{self.n_trajectories:,} ({self.n_valid:,} valid)"),
            (
                "layers",
                f"{c['n_layers']} ({c['method']}, t_final={c['t_final']}, "
                f"transient={c['transient']}, renorm_every={c['renorm_every']})",
            ),
            ("k", f"{c['k']} of T*d = {c['seq_len'] * c['params']['d']}"),
        ]
        for j, (m, (lo, hi)) in enumerate(zip(self.exponents, self.exponents_ci)):
            rows.append((f"lambda_{j + 1}", f"{m:.6g}  [{lo:.6g}, {hi:.6g}]"))
        rows.append(("sum", f"{np.sum(self.exponents):.6g}"))
        rows.append(("non-finite", f"{self.n_nonfinite:,}"))
        rows.append(("throughput", f"{self.meta['throughput']:.4g} trajectory-layers/s"))
        rows.append(("wall time", f"{self.meta['wall_time_s']:.1f} s"))
        w = max(len(key) for key, _ in rows)
        return "\n".join(f"{key:<{w}}  {val}" for key, val in rows)


# ============================================================================ API
def plan(
    params,
    n_trajectories,
    seq_len,
    n_layers,
    *,
    t_final=1.0,
    k=None,
    transient=0,
    renorm_every=1,
    method="euler",
    alpha=None,
    c=1.0,
    seed=0,
    x0="normal",
    chunk_size=None,
):
    """Validate the arguments of :func:`lyapunov_spectrum` and return its
    :class:`~.plans.Plan` (nothing runs)."""
    a, b, h, _ = api.prepare_run(params, n_layers, method, t_final, alpha, c, 0.0)
    n_trajectories = v.check_int(
        "n_trajectories", n_trajectories, minimum=1, maximum=v.MAX_SEED + 1
    )
    seq_len = v.check_int("seq_len", seq_len, minimum=1)
    size = seq_len * params.d
    k = size if k is None else v.check_int("k", k, minimum=1)
    if k > size:
        raise ValueError(f"`k`={k} must be at most seq_len * d = {size}")
    v.check_size("`k` × `seq_len` × d", (k, seq_len, params.d), params.dtype)
    if k * size > MAX_TANGENT_ELEMENTS:
        raise ValueError(f"`k` * seq_len * d = {k * size} is above {MAX_TANGENT_ELEMENTS}")
    transient = v.check_int("transient", transient, minimum=0)
    if transient >= n_layers:
        raise ValueError(f"`transient`={transient} must be less than `n_layers`={n_layers}")
    renorm_every = v.check_int("renorm_every", renorm_every, minimum=1)
    seed = v.check_seed("seed", seed)
    if chunk_size is None:
        chunk_size = max(1, min(16384, CHUNK_WORK // (n_layers * k)))
    chunk_size = v.check_int("chunk_size", chunk_size, minimum=1)
    init, states = initial.check_x0(x0, params, n_trajectories, seq_len)
    t = np.concatenate([[0.0], np.cumsum(h.astype(np.float64))])
    span = float(t[-1] - t[transient])
    packed = api.pack(params)  # a model the kernels do not run is refused here
    cfg = ChunkConfig(
        seed=seed,
        seq_len=seq_len,
        d=params.d,
        k=k,
        transient=transient,
        renorm_every=renorm_every,
        dtype=params.dtype.name,
        a=a,
        b=b,
        h=h,
        time=span,
        init=init,
    )
    conf = {
        "n_trajectories": n_trajectories,
        "seq_len": seq_len,
        "n_layers": n_layers,
        "t_final": t_final,
        "k": k,
        "transient": transient,
        "renorm_every": renorm_every,
        "method": method,
        "alpha": alpha if alpha is None or isinstance(alpha, str) else np.asarray(alpha),
        "c": c,
        "x0": initial.describe(init, states),
        "seed": seed,
        "chunk_size": chunk_size,
        "time_averaged": span,
        "params": params_summary(params),
    }
    info = {"study": "lyapunov_spectrum"}
    info.update({key: val for key, val in conf.items() if key not in runner.CONFIG_KEYS})

    def finish(chunks, env, wall):
        return _make_result(chunks, conf, env, wall)

    return plans.Plan(
        chunk_fn=lyapunov_chunk,
        shared=(packed, cfg) if states is None else (packed, cfg, states),
        n_trajectories=n_trajectories,
        chunk_size=chunk_size,
        finish=finish,
        name="lyapunov_spectrum",
        checkpoint_info=jsonable(info),
        desc="lyapunov",
    )


def lyapunov_spectrum(
    params,
    n_trajectories,
    seq_len,
    n_layers,
    *,
    t_final=1.0,
    k=None,
    transient=0,
    renorm_every=1,
    method="euler",
    alpha=None,
    c=1.0,
    seed=0,
    x0="normal",
    chunk_size=None,
    n_threads=None,
    progress=False,
    client=None,
    checkpoint=None,
):
    """Monte Carlo estimate of the ``k`` leading Lyapunov exponents of the flow.

    Parameters
    ----------
    params : TransformerParams or WeightEnsemble
        The model (any norm and block); float32 or float64. With a
        :class:`~tfkernels.WeightEnsemble` trajectory g runs member g's weights (drawn
        in the kernel).
    n_trajectories : int
        Number of trajectories.
    seq_len : int
        Tokens T per state.
    n_layers : int
        Layers N; ``Δt = t_final / N``.
    t_final, method, alpha, c
        The update, as in :func:`tfkernels.integrate` (no noise).
    k : int, optional
        Number of exponents, ``1 ≤ k ≤ T·d`` (default all T·d).
    transient : int
        Layers run before the exponents are measured (``< n_layers``); during them
        the tangents are orthonormalized every layer and their growth dropped.
    renorm_every : int
        Layers between two QR re-orthonormalizations after the transient (also after
        the last layer).
    seed : int
        Seed of the initial states and tangents.
    x0 : {"normal", "sphere"} or ndarray, shape (n_trajectories, seq_len, d)
        The initial states (:mod:`tfkernels.studies.initial`).
    chunk_size : int, optional
        Trajectories per kernel call (default about 4 M trajectory-layer-tangents).
    n_threads, progress, client, checkpoint
        As for :func:`tfkernels.perturbation_decay`.

    Returns
    -------
    LyapunovResult

    Raises
    ------
    TypeError, ValueError
        On invalid arguments, naming the argument, before any kernel runs.
    tfkernels.studies.runner.StudyInterrupted
        Ctrl-C stopped the study; its ``result`` holds the chunks merged so far.

    Notes
    -----
    Trajectory g's exponents depend only on g (its initial state and tangents come
    from the counter-based generator keyed by ``(seed, g)``), never on the chunk size,
    threads or Dask workers. Count, min, max and quantiles are exact whatever the
    chunking; mean and std are merged with Chan's formula, so a different chunk size
    changes their last bits (as in :func:`tfkernels.perturbation_decay`). The
    quantiles come from the sketch of :class:`~.stats.DecayStats`: within
    ``1/2048`` of the order statistics for exponents spread over less than 2048.

    Examples
    --------
    >>> import tfkernels as tfk
    >>> p = tfk.TransformerParams.random(d=4, n_heads=1, damping=1.0, seed=0)
    >>> ly = tfk.lyapunov_spectrum(p, 16, seq_len=2, n_layers=50, t_final=5.0, k=3)
    >>> ly.exponents.shape, ly.exponents_ci.shape
    ((3,), (3, 2))
    """
    pl = plan(
        params,
        n_trajectories,
        seq_len,
        n_layers,
        t_final=t_final,
        k=k,
        transient=transient,
        renorm_every=renorm_every,
        method=method,
        alpha=alpha,
        c=c,
        seed=seed,
        x0=x0,
        chunk_size=chunk_size,
    )
    return plans.check_and_run(
        pl, n_threads=n_threads, progress=progress, client=client, checkpoint=checkpoint
    )


def _confidence(stats):
    """``(k, 2)``: the 95 % Student-t interval of each mean (NaN below 2 trajectories)."""
    from scipy import stats as sps

    n = stats.count
    ci = np.full((stats.mean.shape[0], 2), np.nan)
    if n >= 2:
        half = float(sps.t.ppf(0.975, n - 1)) * np.sqrt(stats.m2 / (n - 1) / n)
        ci[:, 0], ci[:, 1] = stats.mean - half, stats.mean + half
    return ci


def _make_result(chunks, conf, env, wall):
    """The :class:`LyapunovResult` of the runner's merged statistics."""
    stats = chunks.stats
    k = conf["k"]
    table = stats.per_layer(np.arange(k, dtype=np.float64), np.full(k, np.inf))
    del table["t"], table["log_bound"]
    table = {
        "index": np.arange(1, k + 1),
        **{key: val for key, val in table.items() if key != "layer"},
    }
    layers = conf["n_layers"]
    meta = dict(env)
    meta.update(plans.run_meta(chunks, layers, wall))
    n_run = chunks.n_done - chunks.n_resumed
    meta.update(
        {
            "throughput_unit": "trajectory-layers per second over the chunk loop (each "
            "layer advances k tangents)",
            "tangent_steps_per_s": n_run * layers * k / chunks.loop_time if n_run else math.nan,
            "quantile_accuracy": float(np.max(stats.accuracy())) if stats.count else math.nan,
            "quantile_levels": list(QUANTILES),
            "ci_method": "Student t over trajectories, 95 %",
            "qr": "modified Gram-Schmidt applied twice (MGS2), float64 dot products",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    empty = stats.count == 0
    return LyapunovResult(
        exponents=np.full(k, np.nan) if empty else stats.mean.copy(),
        exponents_ci=_confidence(stats),
        stats=table,
        n_trajectories=stats.n_trajectories,
        n_valid=stats.count,
        n_nonfinite=stats.n_bad,
        nonfinite_indices=stats.bad_index,
        nonfinite_layers=stats.bad_layer,
        config=conf,
        meta=meta,
    )
