"""Token geometry along the flow: clustering and rank collapse, streamed over trajectories.

For every trajectory the study runs the fused flow and, at each saved layer, measures
the geometry of its T tokens inside the compiled driver (``kernels.geometry``: no
snapshot is stored; :func:`geometry_metrics` is its plain NumPy reference, with the same
cosine bits): with ``u_i = x_i / ‖x_i‖`` the normalized tokens and
``C_ij = ⟨u_i, u_j⟩`` their cosines,

* ``mean_cosine``: the mean of the off-diagonal ``C_ij``;
* ``dens``: the fraction of off-diagonal ``C_ij`` above ``DENS_THRESHOLD`` (0.999,
  Geshkovski et al.'s measure of clustering);
* ``clusters``: the rank of the 0/1 matrix ``[C_ij > CLUSTER_THRESHOLD]`` (0.9999): the
  number of clusters when the tokens have collapsed onto a few points (exact in the
  kernel; ``np.linalg.matrix_rank`` in the reference);
* ``rank_collapse``: Dong et al.'s ratio ``‖X − 1·mean(X)‖ / ‖X‖`` (mean over tokens) in
  their composite norm ``‖M‖ = sqrt(‖M‖₁‖M‖_∞)`` (matrix 1- and ∞-norms: largest column
  and row sums of ``|M|``), and ``rank_collapse_fro`` the same in the Frobenius norm;
* ``energy``: the interaction energy ``E_β = Σ_ij e^{β⟨u_i, u_j⟩} / (e^β T²)`` of the
  *normalized* tokens (in (0, 1]; on the sphere model the tokens are unit vectors and
  this is the energy of the tokens as they are), β by default the attention's effective
  inverse temperature ``params.beta / sqrt(d / n_heads)``.

``metrics=`` chooses which are measured (each costs its own work per saved layer). The
per-trajectory values are reduced per saved layer to mergeable statistics
(:class:`GeometryStats`): exact fixed-point sums of each metric and of its square (each
value rounded to a multiple of ``2^-52``, summed as integers), minima, maxima and an
exact histogram of the cluster counts (median and quantiles). Integer sums, minima and
maxima do not depend on the order of the additions, so the result is bit-identical
whatever the chunk size, the threads or the Dask workers. A trajectory that becomes
non-finite (or has a zero token, whose cosines are undefined) is excluded and counted.
"""

import dataclasses
import math
import time
from fractions import Fraction

import numpy as np

from .. import _validate as v
from .. import api, config, kernels
from . import initial, output, plans, runner
from .environment import params_summary
from .serialize import jsonable
from .stats import N_BAD_KEPT

#: Cosine above which two tokens count as clustered in ``dens``.
DENS_THRESHOLD = 0.999
#: Cosine above which two tokens count as one cluster in ``clusters``.
CLUSTER_THRESHOLD = 0.9999
#: The metrics with real values (mean, std, min, max per saved layer).
REAL_METRICS = ("mean_cosine", "dens", "rank_collapse", "rank_collapse_fro", "energy")
#: Every metric, in the order of the result's table.
METRICS = ("mean_cosine", "dens", "clusters", "rank_collapse", "rank_collapse_fro", "energy")
#: Quantile levels of the cluster count.
CLUSTER_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: A metric value is summed as the integer ``round(value · 2^FIXED_BITS)``.
FIXED_BITS = 52
#: The integer of a value is split into ``hi·2^SPLIT_BITS + lo`` (0 ≤ lo < 2^SPLIT_BITS),
#: so that int64 sums of both parts cannot overflow for up to ``MAX_TRAJECTORIES``.
SPLIT_BITS = 26
#: Every real metric lies in [−2, 2] (the composite ratio below 2: ``‖I − 11ᵀ/T‖₁ < 2``),
#: its square in [0, 4]: ``|hi| < 2^29``; 2^34 trajectories keep the sums below 2^63.
MAX_TRAJECTORIES = 2**34
#: Measured values ``(B, S, len(METRICS))`` of a default chunk (32 MiB of float64): the
#: 2,048 trajectories of 301 saved layers of Geshkovski et al.'s diagram are one chunk.
VALUE_ELEMENTS = 2**22


# ======================================================================= metrics
def geometry_metrics(X, energy_beta):
    """The geometry of every state of ``X`` (see the module docstring), in float64: the
    plain NumPy reference of the compiled ``tfkernels.kernels.geometry`` that the study
    runs (its cosines, hence ``dens`` and the cluster count, are the same bits; the
    cluster count here is ``np.linalg.matrix_rank``'s numerical rank, there the exact
    rank, the same on every state tested).

    Parameters
    ----------
    X : ndarray, shape (..., T, d)
        States (T ≥ 2 tokens each).
    energy_beta : float
        The β of the interaction energy.

    Returns
    -------
    dict of ndarray, each of shape ``X.shape[:-2]``
        ``mean_cosine``, ``dens``, ``clusters`` (float), ``rank_collapse``,
        ``rank_collapse_fro`` and ``energy``; NaN where a token is zero or X is not
        finite. Each value depends on its own state only (reductions over the last
        axes in a fixed order), never on the other states of the batch.
    """
    X = np.asarray(X, dtype=np.float64)
    lead, (T, d) = X.shape[:-2], X.shape[-2:]
    X = X.reshape(-1, T, d)  # one axis of states (a copy only for a non-contiguous X)
    # Every metric is scale-invariant: scale each state by a power of two (exact) to a
    # largest entry in [1/2, 1), so that huge finite states do not overflow the sums.
    _, e = np.frexp(np.abs(X).max(axis=(-2, -1)))
    X = np.ldexp(X, -e[:, None, None])
    # the sums over the components run in k order, one IEEE operation at a time (as
    # the compiled kernels.geometry does: the cosines get the same bits)
    n2 = X[..., 0] * X[..., 0]
    for k in range(1, d):
        n2 = n2 + X[..., k] * X[..., k]
    norms = np.sqrt(n2)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        U = X / norms[..., None]
        C = U[:, :, None, 0] * U[:, None, :, 0]
        for k in range(1, d):
            C = C + U[:, :, None, k] * U[:, None, :, k]
        off = ~np.eye(T, dtype=bool)
        n_off = T * (T - 1)
        mean_cos = (C.sum(axis=(-2, -1)) - np.trace(C, axis1=-2, axis2=-1)) / n_off
        dens = ((C > DENS_THRESHOLD) & off).sum(axis=(-2, -1)) / n_off
        energy = np.exp(energy_beta * (C - 1.0)).sum(axis=(-2, -1)) / (T * T)
        finite = np.isfinite(C).all(axis=(-2, -1))
        clusters = np.full(X.shape[0], np.nan)
        if finite.any():
            clusters[finite] = np.linalg.matrix_rank((C[finite] > CLUSTER_THRESHOLD) * 1.0)
        R = X - X.mean(axis=-2, keepdims=True)
        comp = np.sqrt(_norm1(R) * _norm_inf(R)) / np.sqrt(_norm1(X) * _norm_inf(X))
        fro = np.sqrt((R * R).sum(axis=(-2, -1))) / np.sqrt((X * X).sum(axis=(-2, -1)))
    out = {
        "mean_cosine": mean_cos,
        "dens": dens,
        "clusters": clusters,
        "rank_collapse": comp,
        "rank_collapse_fro": fro,
        "energy": energy,
    }
    return {k: np.where(finite, val, np.nan).reshape(lead) for k, val in out.items()}


def _norm1(M):
    """Matrix 1-norm of every ``(T, d)`` matrix: the largest column sum of ``|M|``."""
    return np.abs(M).sum(axis=-2).max(axis=-1)


def _norm_inf(M):
    """Matrix ∞-norm of every ``(T, d)`` matrix: the largest row sum of ``|M|``."""
    return np.abs(M).sum(axis=-1).max(axis=-1)


def _fixed(x):
    """``(hi, lo)`` int64 with ``hi·2^SPLIT_BITS + lo = round(x·2^FIXED_BITS)``."""
    q = np.rint(np.ldexp(x, FIXED_BITS)).astype(np.int64)
    hi = q >> SPLIT_BITS
    return hi, q - (hi << SPLIT_BITS)


# ===================================================================== statistics
@dataclasses.dataclass
class GeometryStats:
    """Mergeable per-layer statistics of the metrics over trajectories.

    Attributes
    ----------
    metrics : tuple of str
        The metrics measured (in the order of :data:`METRICS`).
    n_trajectories, count, n_bad : int
        Trajectories seen, kept and excluded (non-finite).
    bad_index, bad_layer : list of int
        The first ``N_BAD_KEPT`` excluded trajectories (in trajectory order) and the
        first saved layer where each was not finite (or had a zero token).
    hi, lo, hi2, lo2 : ndarray of int64, shape (R, S)
        The fixed-point sums of each real metric measured (R of them, in the order of
        :data:`REAL_METRICS`) and of its square (:func:`_fixed`).
    vmin, vmax : ndarray of float64, shape (R, S)
        Their minima and maxima (±inf when no trajectory is kept).
    cluster_hist : ndarray of int64, shape (S, T + 1)
        ``cluster_hist[s, k]``: kept trajectories with k clusters at saved layer s
        (shape ``(S, 0)`` when the cluster count is not measured).
    """

    metrics: tuple
    n_trajectories: int
    count: int
    n_bad: int
    bad_index: list
    bad_layer: list
    hi: np.ndarray
    lo: np.ndarray
    hi2: np.ndarray
    lo2: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    cluster_hist: np.ndarray

    @property
    def reals(self):
        """The real metrics measured, in the order of the rows of ``hi``."""
        return tuple(m for m in REAL_METRICS if m in self.metrics)

    @classmethod
    def from_metrics(cls, values, chunk_start, save_every, n_tokens, metrics=METRICS):
        """The statistics of one chunk.

        Parameters
        ----------
        values : dict of ndarray, shape (B, S)
            The per-trajectory values of (at least) the ``metrics`` (NaN where a state
            is not finite or has a zero token): :func:`geometry_metrics` of the
            snapshots, or the columns of the compiled kernel's values.
        chunk_start : int
            Global index of the first trajectory.
        save_every : int
            Layers between two snapshots (to name the first saved layer where a
            trajectory was not finite).
        n_tokens : int
            Tokens T per state (the cluster count lies in 0 … T).
        metrics : tuple of str
            The metrics measured (in the order of :data:`METRICS`).
        """
        reals = tuple(m for m in REAL_METRICS if m in metrics)
        B, S = values[metrics[0]].shape
        R = np.stack([values[m] for m in reals]) if reals else np.zeros((0, B, S))
        finite = np.isfinite(R).all(axis=0)
        has_clusters = "clusters" in metrics
        if has_clusters:
            finite &= np.isfinite(values["clusters"])
        ok = finite.all(axis=1)
        bad = np.flatnonzero(~ok)
        layer = np.argmin(finite, axis=1) * save_every
        kept = R[:, ok]  # (R, count, S)
        if np.any(np.abs(kept) > 2.0):
            raise RuntimeError("a geometry metric left [-2, 2]; this is a bug in tfkernels")
        hi, lo = _fixed(kept)
        hi2, lo2 = _fixed(kept * kept)
        hist = np.zeros((S, n_tokens + 1 if has_clusters else 0), dtype=np.int64)
        if has_clusters and ok.any():
            ks = values["clusters"][ok].astype(np.int64)  # (count, S)
            np.add.at(hist, (np.broadcast_to(np.arange(S), ks.shape), ks), 1)
        return cls(
            metrics=tuple(metrics),
            n_trajectories=int(B),
            count=int(ok.sum()),
            n_bad=int(bad.size),
            bad_index=[int(chunk_start + i) for i in bad[:N_BAD_KEPT]],
            bad_layer=[int(layer[i]) for i in bad[:N_BAD_KEPT]],
            hi=hi.sum(axis=1),
            lo=lo.sum(axis=1),
            hi2=hi2.sum(axis=1),
            lo2=lo2.sum(axis=1),
            vmin=kept.min(axis=1, initial=np.inf),
            vmax=kept.max(axis=1, initial=-np.inf),
            cluster_hist=hist,
        )

    def merge(self, other):
        """The statistics of ``self``'s trajectories followed by ``other``'s (exact:
        integer sums, minima and maxima)."""
        keep = N_BAD_KEPT - len(self.bad_index)
        return GeometryStats(
            metrics=self.metrics,
            n_trajectories=self.n_trajectories + other.n_trajectories,
            count=self.count + other.count,
            n_bad=self.n_bad + other.n_bad,
            bad_index=self.bad_index + other.bad_index[:keep],
            bad_layer=self.bad_layer + other.bad_layer[:keep],
            hi=self.hi + other.hi,
            lo=self.lo + other.lo,
            hi2=self.hi2 + other.hi2,
            lo2=self.lo2 + other.lo2,
            vmin=np.minimum(self.vmin, other.vmin),
            vmax=np.maximum(self.vmax, other.vmax),
            cluster_hist=self.cluster_hist + other.cluster_hist,
        )

    def per_layer(self):
        """The table of the result: per saved layer, ``<metric>_mean``, ``_std``,
        ``_min``, ``_max`` of every metric and the cluster count's quantiles
        ``clusters_q05 … clusters_q95`` (``clusters_median`` = q50); NaN when no
        trajectory is kept. Means and variances are formed exactly from the integer
        sums, then rounded once to float64."""
        n = self.count
        S = self.cluster_hist.shape[0]
        table = {}
        scale = 2**FIXED_BITS
        for m, name in enumerate(self.reals):
            mean = np.full(S, np.nan)
            std = np.full(S, np.nan)
            for s in range(S):  # one exact rational per saved layer and metric
                if not n:
                    continue
                s1 = Fraction((int(self.hi[m, s]) << SPLIT_BITS) + int(self.lo[m, s]), scale)
                s2 = Fraction((int(self.hi2[m, s]) << SPLIT_BITS) + int(self.lo2[m, s]), scale)
                mean[s] = float(s1 / n)
                if n > 1:
                    std[s] = math.sqrt(max(float((s2 - s1 * s1 / n) / (n - 1)), 0.0))
            table[f"{name}_mean"] = mean
            table[f"{name}_std"] = std
            table[f"{name}_min"] = self.vmin[m] if n else np.full(S, np.nan)
            table[f"{name}_max"] = self.vmax[m] if n else np.full(S, np.nan)
        if "clusters" in self.metrics:
            table.update(self._cluster_columns())
        return table

    def _cluster_columns(self):
        """Mean, std, min, max and quantiles of the cluster count, exact from the
        histogram (quantile q: the value of rank ``floor(q·(n − 1))``, NumPy's
        ``method="lower"``)."""
        h = self.cluster_hist
        S, K = h.shape
        n = self.count
        k = np.arange(K)
        cols = {}
        if not n:
            nan = np.full(S, np.nan)
            names = ("mean", "std", "min", "max", "median")
            cols.update({f"clusters_{c}": nan for c in names})
            cols.update({f"clusters_q{round(100 * q):02d}": nan for q in CLUSTER_QUANTILES})
            return cols
        s1 = (h * k).sum(axis=1)
        s2 = (h * k * k).sum(axis=1)
        cols["clusters_mean"] = s1 / n
        cols["clusters_std"] = (
            np.sqrt(np.maximum((s2 - s1 * s1 / n) / (n - 1), 0.0)) if n > 1 else np.full(S, np.nan)
        )
        cum = np.cumsum(h, axis=1)
        cols["clusters_min"] = np.argmax(cum > 0, axis=1).astype(np.float64)
        cols["clusters_max"] = (K - 1 - np.argmax(h[:, ::-1] > 0, axis=1)).astype(np.float64)
        for q in CLUSTER_QUANTILES:
            rank = math.floor(q * (n - 1))
            cols[f"clusters_q{round(100 * q):02d}"] = np.argmax(cum > rank, axis=1).astype(
                np.float64
            )
        cols["clusters_median"] = cols["clusters_q50"]
        return cols


# ========================================================================= chunks
@dataclasses.dataclass(frozen=True)
class ChunkConfig:
    """Everything a chunk needs besides the parameters (small, picklable).

    Attributes
    ----------
    init : str
        ``"normal"``, ``"sphere"`` or ``"array"`` (:mod:`.initial`).
    seed : int
        Seed of the drawn initial states and of the noise.
    seq_len, d : int
        State shape (T, d).
    dtype : str
        State dtype.
    save_every : int
        Layers between two measured layers.
    energy_beta : float
        The β of the interaction energy.
    n_layers : int
        Layers N.
    run : dict
        The update: ``method``, ``t_final``, ``alpha``, ``c``, ``noise`` of
        :func:`tfkernels.integrate`.
    metrics : tuple of str
        The metrics measured (in the order of :data:`METRICS`).
    """

    init: str
    seed: int
    seq_len: int
    d: int
    dtype: str
    save_every: int
    energy_beta: float
    n_layers: int
    run: dict
    metrics: tuple = METRICS


def kernel_config(metrics, energy_beta, seq_len):
    """The ``kernels.GeometryConfig`` of the compiled measurement."""
    which = sum(1 << METRICS.index(m) for m in metrics)
    cols = np.array([metrics.index(m) if m in metrics else -1 for m in METRICS], dtype=np.int64)
    return kernels.GeometryConfig(
        np.int64(which),
        cols,
        float(DENS_THRESHOLD),
        float(CLUSTER_THRESHOLD),
        float(energy_beta),
        kernels.rank_primes(seq_len),
    )


def measure_flow(params, states, cfg, start):
    """The metrics of trajectories ``start …`` from ``states (B, T, d)`` at every saved
    layer, measured inside the fused flow (``kernels.geometry_kernel``): a dict of
    ``(B, S)`` float64 arrays, one per metric of ``cfg.metrics``, NaN for a trajectory
    from the first layer where it was not finite (or, at a saved layer, had a zero
    token) on."""
    a, b, h, sigma = api.prepare_run(params, cfg.n_layers, **cfg.run)
    B = states.shape[0]
    S = cfg.n_layers // cfg.save_every + 1
    vals = np.empty((B, S, len(cfg.metrics)))  # every entry is written
    status = np.empty(B, dtype=np.int64)
    kernels.geometry_kernel(
        api.pack(params),  # a TransformerParams' Model, or a WeightEnsemble's Ensemble
        states,
        kernels.Schedule(a, b, h, sigma),
        cfg.seed,
        start,
        cfg.save_every,
        kernel_config(cfg.metrics, cfg.energy_beta, cfg.seq_len),
        vals,
        status,
    )
    return {m: vals[:, :, i] for i, m in enumerate(cfg.metrics)}


def geometry_chunk(chunk_start, chunk_len, params, cfg, x0=None):
    """The study's chunk function (pure: a function of its arguments only).

    Runs trajectories ``chunk_start … chunk_start + chunk_len − 1`` through the fused
    flow, which measures every saved layer in compiled code (:func:`measure_flow`; no
    snapshot is stored), and reduces the values to :class:`GeometryStats`.

    Parameters
    ----------
    chunk_start, chunk_len : int
        Global index of the first trajectory and number of trajectories.
    params : TransformerParams
    cfg : ChunkConfig
    x0 : ndarray, optional
        The study's array of initial states (``cfg.init == "array"``).

    Returns
    -------
    GeometryStats
    """
    T, d = cfg.seq_len, cfg.d
    states = initial.chunk_states(
        cfg.init, x0, chunk_start, chunk_len, T, d, np.dtype(cfg.dtype), cfg.seed
    )
    values = measure_flow(params, states, cfg, chunk_start)
    return GeometryStats.from_metrics(values, chunk_start, cfg.save_every, T, cfg.metrics)


# ========================================================================= result
@dataclasses.dataclass
class GeometryResult(output.TableResult):
    """Outcome of :func:`token_geometry`.

    Attributes
    ----------
    t : ndarray of float64, shape (S,)
        The saved times ``t_s`` (layer ``s·save_every``).
    stats : dict of ndarray
        Per saved layer: ``layer``, ``t``, ``count`` and, for every metric measured
        (``config["metrics"]``), ``<metric>_mean``, ``_std``, ``_min``, ``_max``, and the
        cluster count's ``clusters_median`` and ``clusters_q05 … clusters_q95``.
    n_trajectories, n_valid, n_nonfinite : int
        Trajectories run, kept and excluded (non-finite, or a zero token).
    nonfinite_indices, nonfinite_layers : list of int
        The first excluded trajectories and the first saved layer at which each was
        not finite (or had a zero token).
    config : dict
        The study's settings and a summary of the parameters.
    meta : dict
        Versions, machine, timings, throughput, how the statistics were formed.
    """

    t: np.ndarray
    stats: dict
    n_trajectories: int
    n_valid: int
    n_nonfinite: int
    nonfinite_indices: list
    nonfinite_layers: list
    config: dict
    meta: dict

    CSV_INT_COLUMNS = ("layer", "count")

    def metric(self, name, stat="mean"):
        """Per saved layer, statistic ``stat`` (``"mean"``, ``"std"``, ``"min"``,
        ``"max"``; for ``"clusters"`` also ``"median"``, ``"q05"`` …) of metric
        ``name``.

        Raises
        ------
        ValueError
            Unknown ``name`` or ``stat``, naming it and the valid ones.
        """
        name = v.check_choice("name", name, {m: m for m in METRICS})
        measured = self.config.get("metrics", METRICS)
        if name not in measured:
            raise ValueError(f"`name` {name!r} was not measured (`metrics`={list(measured)})")
        key = f"{name}_{stat}"
        if key not in self.stats:
            valid = sorted(k[len(name) + 1 :] for k in self.stats if k.startswith(name + "_"))
            raise ValueError(f"`stat` must be one of {valid} for {name!r}, got {stat!r}")
        return self.stats[key]

    # ------------------------------------------------------------ storage
    # to_dict, to_json, to_csv (one row per saved layer): output.TableResult
    def save(self, out_dir="results/geometry", stem="geometry", plot=True):
        """Write ``<stem>.csv``, ``<stem>.png`` and ``<stem>.json`` into ``out_dir`` as
        one set (all renamed into place once all were written, the JSON last).

        Returns
        -------
        list of str
            The paths written, the JSON last.
        """
        return output.save_result(self, out_dir, stem, plot)

    def plot(self, path):
        """A figure of every metric against t (mean with a ±1 std band; the cluster
        count's median with its 25–75 % band), written atomically to ``path``. Never
        raises on NaN (a run without a valid trajectory says so on the figure)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = np.asarray(self.t, dtype=np.float64)
        measured = [m for m in METRICS if m in self.config.get("metrics", METRICS)]
        cols = min(3, len(measured))
        rows = -(-len(measured) // cols)
        fig, axes = plt.subplots(
            rows, cols, figsize=(3.5 * cols, 2.8 * rows), constrained_layout=True, squeeze=False
        )
        for ax in axes.flat[len(measured) :]:
            ax.set_visible(False)
        for ax, name in zip(axes.flat, measured):
            if name == "clusters":
                mid = self.stats["clusters_median"]
                lo, hi = self.stats["clusters_q25"], self.stats["clusters_q75"]
                label = "median (25–75 %)"
            else:
                mid = self.stats[f"{name}_mean"]
                sd = np.nan_to_num(self.stats[f"{name}_std"])
                lo, hi = mid - sd, mid + sd
                label = "mean (± std)"
            ax.fill_between(t, lo, hi, color="C0", alpha=0.25, lw=0)
            ax.plot(t, mid, color="C0", lw=1.2, label=label)
            ax.set_title(name, fontsize=10)
            ax.set_xlabel("t")
            ax.legend(fontsize=7, loc="best")
            if not self.n_valid:
                ax.text(0.5, 0.5, "no valid trajectory", transform=ax.transAxes, ha="center")
        fig.suptitle(
            f"token geometry: {self.n_valid:,} trajectories, T = {self.config['seq_len']}",
            fontsize=10,
        )
        output.save_figure(fig, path, dpi=110)

    def summary(self):
        """A short human-readable table (the metrics at the first and last saved time)."""
        rows = [
            ("trajectories", f"{self.n_trajectories:,} ({self.n_valid:,} valid)"),
            (
                "layers",
                f"{self.config['n_layers']} ({self.config['method']}, "
                f"t_final={self.config['t_final']}, save_every={self.config['save_every']})",
            ),
            ("x0", str(self.config["x0"])),
        ]
        for name in self.config.get("metrics", METRICS):
            key = "clusters_median" if name == "clusters" else f"{name}_mean"
            col = self.stats[key]
            rows.append((name, f"{col[0]:.4g} -> {col[-1]:.4g}"))
        rows.append(("non-finite", f"{self.n_nonfinite:,}"))
        rows.append(("wall time", f"{self.meta['wall_time_s']:.1f} s"))
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {val}" for k, val in rows)


# ============================================================================ API
def check_metrics(metrics):
    """``metrics`` (None: all; a name; or a sequence of names) as a tuple in the order
    of :data:`METRICS`.

    Raises
    ------
    TypeError, ValueError
        Naming ``metrics``: not a name or a sequence of names, an unknown or repeated
        name, or none.
    """
    if metrics is None:
        return METRICS
    if isinstance(metrics, str):
        metrics = (metrics,)
    try:
        names = list(metrics)
    except TypeError:
        raise TypeError(
            f"`metrics` must be a metric name or a sequence of names, got {metrics!r}"
        ) from None
    if not names:
        raise ValueError(f"`metrics` must name at least one of {list(METRICS)}")
    for name in names:
        if not isinstance(name, str) or name not in METRICS:
            raise ValueError(f"`metrics` must name metrics of {list(METRICS)}, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"`metrics` names a metric twice: {names}")
    return tuple(m for m in METRICS if m in names)


def default_chunk_size(n_layers, save_every):
    """The default chunk size: about ``VALUE_ELEMENTS`` values of all the metrics per
    chunk (at most ``config.CHUNK_SIZE`` trajectories; the same whatever is measured, so
    that a choice of metrics does not change the chunks)."""
    S = n_layers // save_every + 1
    return int(min(config.CHUNK_SIZE, max(1, VALUE_ELEMENTS // (S * len(METRICS)))))


def plan(
    params,
    n_trajectories,
    seq_len,
    n_layers,
    *,
    t_final=1.0,
    method="euler",
    save_every=1,
    alpha=None,
    c=1.0,
    noise=0.0,
    x0="normal",
    seed=0,
    energy_beta=None,
    metrics=None,
    chunk_size=None,
):
    """Validate the arguments of :func:`token_geometry` and return its
    :class:`~.plans.Plan` (nothing runs)."""
    h = api.prepare_run(params, n_layers, method, t_final, alpha, c, noise)[2]
    n_trajectories = v.check_int(
        "n_trajectories", n_trajectories, minimum=1, maximum=MAX_TRAJECTORIES
    )
    seq_len = v.check_int("seq_len", seq_len, minimum=2)
    save_every = v.check_int("save_every", save_every, minimum=1)
    if n_layers % save_every:
        raise ValueError(f"`save_every`={save_every} must divide `n_layers`={n_layers}")
    seed = v.check_seed("seed", seed)
    if energy_beta is None:
        energy_beta = float(params.beta) / math.sqrt(params.d / params.n_heads)
    energy_beta = v.check_float("energy_beta", energy_beta, minimum=0.0)
    metrics = check_metrics(metrics)
    chunk_size = (
        default_chunk_size(n_layers, save_every)
        if chunk_size is None
        else v.check_int("chunk_size", chunk_size, minimum=1)
    )
    S = n_layers // save_every + 1
    v.check_size(
        "min(`chunk_size`, `n_trajectories`) × (`n_layers` / `save_every` + 1) × `metrics`",
        (min(chunk_size, n_trajectories), S, len(metrics)),
        np.float64,
    )
    init, states = initial.check_x0(x0, params, n_trajectories, seq_len)
    cfg = ChunkConfig(
        init=init,
        seed=seed,
        seq_len=seq_len,
        d=params.d,
        dtype=params.dtype.name,
        save_every=save_every,
        energy_beta=energy_beta,
        n_layers=n_layers,
        run=dict(method=method, t_final=t_final, alpha=alpha, c=c, noise=noise),
        metrics=metrics,
    )
    api.pack(params)  # a model the kernels do not run is refused here
    shared = (params, cfg) if states is None else (params, cfg, states)
    t = np.concatenate([[0.0], np.cumsum(h.astype(np.float64))])[::save_every]
    conf = {
        "n_trajectories": n_trajectories,
        "seq_len": seq_len,
        "n_layers": n_layers,
        "method": method,
        "t_final": t_final,
        "save_every": save_every,
        "alpha": alpha if alpha is None or isinstance(alpha, str) else np.asarray(alpha),
        "c": c,
        "noise": np.asarray(noise),
        "x0": initial.describe(init, states),
        "seed": seed,
        "energy_beta": energy_beta,
        "metrics": list(metrics),
        "chunk_size": chunk_size,
        "params": params_summary(params),
    }
    info = {"study": "token_geometry"}
    info.update({k: val for k, val in conf.items() if k not in runner.CONFIG_KEYS})

    def finish(chunks, env, wall):
        return _make_result(chunks, t, save_every, conf, env, wall)

    return plans.Plan(
        chunk_fn=geometry_chunk,
        shared=shared,
        n_trajectories=n_trajectories,
        chunk_size=chunk_size,
        finish=finish,
        name="token_geometry",
        checkpoint_info=jsonable(info),
        desc="geometry",
    )


def token_geometry(
    params,
    n_trajectories,
    seq_len,
    n_layers,
    *,
    t_final=1.0,
    method="euler",
    save_every=1,
    alpha=None,
    c=1.0,
    noise=0.0,
    x0="normal",
    seed=0,
    energy_beta=None,
    metrics=None,
    chunk_size=None,
    n_threads=None,
    progress=False,
    client=None,
    checkpoint=None,
):
    """Monte Carlo study of the geometry of the tokens along the flow.

    Parameters
    ----------
    params : TransformerParams or WeightEnsemble
        The model; float32 or float64. With a :class:`~tfkernels.WeightEnsemble`
        trajectory g runs member g's weights (drawn in the kernel).
    n_trajectories : int
        Number of trajectories (at most ``MAX_TRAJECTORIES`` = 2^34).
    seq_len : int
        Tokens T per state (≥ 2).
    n_layers : int
        Layers N; ``Δt = t_final / N``.
    t_final, method, alpha, c, noise
        The update, as in :func:`tfkernels.integrate`.
    save_every : int
        Measure the states at layers 0, k, 2k, …, N (k must divide N).
    x0 : {"normal", "sphere"} or ndarray, shape (n_trajectories, seq_len, d)
        The initial states (:mod:`tfkernels.studies.initial`): standard normal,
        uniform on the unit sphere (the normal draws, each token divided by its
        norm), or trajectory g starting at ``x0[g]``.
    seed : int
        Seed of the drawn initial states and of the noise.
    energy_beta : float, optional
        β of the interaction energy; default the attention's effective inverse
        temperature ``params.beta / sqrt(d / n_heads)`` (the factor of ``⟨q, k⟩`` in
        the scores).
    metrics : str or sequence of str, optional
        The metrics to measure (names of :data:`METRICS`; default all). Each costs
        its own work per saved layer: ``dens`` and ``mean_cosine`` one pass over the
        pairs of tokens, ``energy`` an exponential per pair, ``clusters`` bit masks of
        the pairs (and an exact elimination when the tokens are not in cliques), the
        rank-collapse ratios a pass over the tokens. The result holds the columns of
        these only.
    chunk_size : int, optional
        Trajectories per kernel call (default :func:`default_chunk_size`: the
        measured values of a chunk stay near 4 M elements). No value depends on it.
    n_threads : int, optional
        Numba threads; no value depends on it.
    progress : bool
        Show a tqdm progress bar over the trajectories.
    client : dask.distributed.Client, optional
        Run the chunks on this Dask cluster (the same bits as locally).
    checkpoint : str or os.PathLike, optional
        A checkpoint file of the runner (:func:`.runner.run_chunks`): resumed when it
        exists, refused when written with other arguments.

    Returns
    -------
    GeometryResult

    Raises
    ------
    TypeError, ValueError
        On invalid arguments, naming the argument, before any kernel runs.
    tfkernels.studies.runner.StudyInterrupted
        Ctrl-C stopped the study; its ``result`` holds the chunks merged so far
        (``meta["partial"]`` True), or None.

    Notes
    -----
    The statistics are exact sums of fixed-point values (each metric rounded to a
    multiple of 2^-52, about 2.2e-16), so a mean is within 2^-53 of the mean of the
    float64 metrics and the result is bit-identical whatever the chunk size, threads
    or Dask workers. A trajectory with a non-finite state at any layer, or a zero
    token at a saved layer, is excluded from every statistic and counted.

    Examples
    --------
    >>> import tfkernels as tfk
    >>> p = tfk.TransformerParams.random(d=8, n_heads=2, ffn=False, beta=4.0, seed=0)
    >>> geo = tfk.token_geometry(p, 64, seq_len=6, n_layers=20, t_final=4.0,
    ...                          save_every=5, x0="sphere")
    >>> geo.t.shape, geo.metric("mean_cosine").shape
    ((5,), (5,))
    """
    pl = plan(
        params,
        n_trajectories,
        seq_len,
        n_layers,
        t_final=t_final,
        method=method,
        save_every=save_every,
        alpha=alpha,
        c=c,
        noise=noise,
        x0=x0,
        seed=seed,
        energy_beta=energy_beta,
        metrics=metrics,
        chunk_size=chunk_size,
    )
    return plans.check_and_run(
        pl, n_threads=n_threads, progress=progress, client=client, checkpoint=checkpoint
    )


def _make_result(chunks, t, save_every, conf, env, wall):
    """The :class:`GeometryResult` of the runner's merged statistics."""
    stats = chunks.stats
    S = t.shape[0]
    table = {
        "layer": np.arange(S) * save_every,
        "t": t,
        "count": np.full(S, stats.count),
    }
    table.update(stats.per_layer())
    meta = dict(env)
    meta.update(plans.run_meta(chunks, conf["n_layers"], wall))
    meta.update(
        {
            "statistics": "exact integer sums of every value rounded to a multiple of "
            f"2^-{FIXED_BITS}; cluster quantiles exact (rank floor(q(n-1)))",
            "dens_threshold": DENS_THRESHOLD,
            "cluster_threshold": CLUSTER_THRESHOLD,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    return GeometryResult(
        t=t,
        stats=table,
        n_trajectories=stats.n_trajectories,
        n_valid=stats.count,
        n_nonfinite=stats.n_bad,
        nonfinite_indices=stats.bad_index,
        nonfinite_layers=stats.bad_layer,
        config=conf,
        meta=meta,
    )
