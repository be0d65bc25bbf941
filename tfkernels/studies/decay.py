"""The perturbation-decay Monte Carlo study and the ``tfkernels decay`` command.

For trajectory ``g`` the study draws ``X_0`` (standard normal, the state of
``tfk.random_states``) and a unit direction ``U`` from the counter-based generator and
measures the growth ``r_n`` of a perturbation across the layers n = 0 … N:

* ``mode="pair"``: ``Y_0 = X_0 + ε·U``; X and Y take the same update with the same
  noise and ``r_n = ‖X_n − Y_n‖ / ‖X_0 − Y_0‖``;
* ``mode="tangent"``: δ follows the exact linearization of every step (the JVP of
  attention, FFN and linear terms, chained through the Runge–Kutta stages) and
  ``r_n = ‖δ_n‖ / ‖δ_0‖``; δ is renormalized every layer and ``log r_n`` accumulated.

Trajectories run chunk by chunk (``chunk_size`` of them per fused kernel call, see
:func:`decay_chunk`); each chunk is reduced to per-layer statistics of ``log r_n``
(:class:`DecayStats`) that are merged in chunk order, so memory does not grow with the
number of trajectories. Beside the measured decay rate stands the theory: the
one-sided Lipschitz estimate ``lambda_hat`` (largest logarithmic norm of the Jacobian
of f over states sampled along trajectories) and the bound ``r_n ≤ exp(λ̂·t_n)``.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from .. import _validate as v
from .. import api, config, threads
from .. import kernels
from ..methods import ACTIVATIONS, METHODS, MODES

#: Quantile levels reported per layer.
QUANTILES = (0.01, 0.05, 0.25, 0.50, 0.75, 0.95, 0.99)
#: Bin width of the quantile sketch over ``log r`` (an exact binary fraction).
HIST_WIDTH = 1.0 / 1024.0
#: The sketch covers ``log r ∈ [−HIST_LIMIT, HIST_LIMIT]``; values outside are clipped.
HIST_LIMIT = 1024.0
#: The rate CI uses chunks as batches when there are at least this many.
MIN_BATCHES = 10
#: Largest T·d for which the Jacobian is formed densely in the λ̂ estimate.
DENSE_MAX = 512
#: Non-finite trajectories whose indices are kept.
N_BAD_KEPT = 10
#: Default ε of the pair mode, per state dtype.
DEFAULT_EPS = {"float64": 1e-6, "float32": 1e-3}
#: Default relative tolerance of the bound check, per state dtype.
DEFAULT_BOUND_RTOL = {"float64": 1e-6, "float32": 1e-2}

_QNAMES = tuple(f"q{round(100 * q):02d}" for q in QUANTILES)
_NB = int(round(2 * HIST_LIMIT / HIST_WIDTH))


# ======================================================================== chunks
@dataclasses.dataclass(frozen=True)
class ChunkConfig:
    """Everything a chunk needs besides the packed parameters (small, picklable).

    Attributes
    ----------
    mode : int
        ``MODES`` code.
    seed : int
        Seed of X_0, U and the noise.
    eps : float
        ε of the pair mode.
    seq_len, d : int
        State shape (T, d).
    dtype : str
        ``"float32"`` or ``"float64"``.
    a, b, h, sigma : ndarray
        Tableau, step sizes and noise scales (``api.prepare_run``), in ``dtype``.
    t : ndarray of float64, shape (N + 1,)
        Time of layer n: ``t_n = Σ_{k<n} h_k``.
    log_bound : ndarray of float64, shape (N + 1,)
        A trajectory is above the bound when ``log r_n > log_bound[n]`` for some n.
    """

    mode: int
    seed: int
    eps: float
    seq_len: int
    d: int
    dtype: str
    a: np.ndarray
    b: np.ndarray
    h: np.ndarray
    sigma: np.ndarray
    t: np.ndarray
    log_bound: np.ndarray


def chunk_log_ratios(packed, chunk_start, chunk_len, cfg):
    """Run one chunk through the fused kernel.

    Parameters
    ----------
    packed : tuple
        ``kernels.pack_params(params)``.
    chunk_start, chunk_len : int
        Global index of the first trajectory and number of trajectories.
    cfg : ChunkConfig

    Returns
    -------
    logr : ndarray of float64, shape (chunk_len, N + 1)
        ``log r_n`` per trajectory (NaN from the first non-finite layer on).
    status : ndarray of int64, shape (chunk_len,)
        ``kernels.STATUS_OK`` or the first non-finite layer.
    """
    logr = np.empty((chunk_len, cfg.h.shape[0] + 1), dtype=np.float64)
    status = np.empty(chunk_len, dtype=np.int64)
    like = np.empty((cfg.seq_len, cfg.d), dtype=cfg.dtype)
    kernels.decay_kernel(cfg.mode, packed, cfg.a, cfg.b, cfg.h, cfg.sigma, cfg.seed,
                    chunk_start, cfg.eps, like, logr, status)
    return logr, status


def decay_chunk(packed, chunk_start, chunk_len, cfg):
    """One chunk of the study: a pure function from its inputs to its statistics.

    This is the unit of work that a scheduler may ship anywhere: the result depends
    only on the arguments (not on the thread count or the process), and the results
    of consecutive chunks merge with :meth:`DecayStats.merge` in chunk order.

    Parameters
    ----------
    packed : tuple
        ``kernels.pack_params(params)``.
    chunk_start, chunk_len : int
        Global index of the first trajectory and number of trajectories.
    cfg : ChunkConfig

    Returns
    -------
    DecayStats
    """
    logr, status = chunk_log_ratios(packed, chunk_start, chunk_len, cfg)
    return DecayStats.from_chunk(logr, status, chunk_start, cfg)


# ==================================================================== statistics
def _chan(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Merge two (count, mean, M2) summaries (Chan, Golub & LeVeque 1979)."""
    n = n_a + n_b
    if n_a == 0:
        return n_b, mean_b.copy(), m2_b.copy()
    if n_b == 0:
        return n_a, mean_a.copy(), m2_a.copy()
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return n, mean, m2


def _merge_hist(lo_a, c_a, lo_b, c_b):
    """Add two sparse histograms given as (offset, counts)."""
    if c_a.size == 0:
        return lo_b, c_b.copy()
    if c_b.size == 0:
        return lo_a, c_a.copy()
    lo = min(lo_a, lo_b)
    hi = max(lo_a + c_a.size, lo_b + c_b.size)
    out = np.zeros(hi - lo, dtype=np.int64)
    out[lo_a - lo:lo_a - lo + c_a.size] += c_a
    out[lo_b - lo:lo_b - lo + c_b.size] += c_b
    return lo, out


def _slope_weights(t):
    """Weights c with ``c @ y`` = least-squares slope of y against t."""
    tc = t - t.mean()
    return tc / np.dot(tc, tc)


@dataclasses.dataclass
class DecayStats:
    """Mergeable per-layer statistics of ``log r_n`` over a set of trajectories.

    Built per chunk by :meth:`from_chunk` and combined with :meth:`merge` in chunk
    order. Exact parts: counts, min, max, the histogram; mean and M2 are merged with
    Chan's formula (the result depends on the chunk partition only in the last bits,
    never on thread counts).

    Attributes
    ----------
    n_trajectories : int
        Trajectories seen (valid or not).
    count : int
        Valid trajectories (finite through every layer).
    mean, m2, vmin, vmax : ndarray, shape (N + 1,)
        Mean, sum of squared deviations, min and max of ``log r_n``.
    hist_lo : ndarray of int64, shape (N + 1,)
        First sketch bin of each layer.
    hist : list of ndarray of int64
        Bin counts of each layer from ``hist_lo[n]`` on.
    slope_mean, slope_m2 : float
        Mean and M2 of the per-trajectory least-squares slopes of ``log r_n`` vs t_n.
    n_above : int
        Valid trajectories with ``log r_n > log_bound[n]`` for some n.
    n_bad : int
        Non-finite trajectories.
    bad_index, bad_layer : list of int
        Global index and first non-finite layer of the first ``N_BAD_KEPT`` of them.
    batches : list of (int, float)
        Per chunk: valid count and slope of its mean ``log r_n`` vs t_n.
    """

    n_trajectories: int
    count: int
    mean: np.ndarray
    m2: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    hist_lo: np.ndarray
    hist: list
    slope_mean: float
    slope_m2: float
    n_above: int
    n_bad: int
    bad_index: list
    bad_layer: list
    batches: list

    @classmethod
    def from_chunk(cls, logr, status, chunk_start, cfg):
        """Reduce one chunk's ``log r`` array to its statistics.

        Parameters
        ----------
        logr : ndarray, shape (B, N + 1)
        status : ndarray of int64, shape (B,)
        chunk_start : int
            Global index of row 0.
        cfg : ChunkConfig
        """
        ok = status == kernels.STATUS_OK
        x = logr[ok] if not ok.all() else logr
        n, L = x.shape
        bad = np.flatnonzero(~ok)
        c = _slope_weights(cfg.t)
        if n:
            mean = x.mean(axis=0)
            m2 = ((x - mean) ** 2).sum(axis=0)
            vmin, vmax = x.min(axis=0), x.max(axis=0)
            slopes = x @ c
            s_mean = float(slopes.mean())
            s_m2 = float(((slopes - s_mean) ** 2).sum())
            n_above = int(np.count_nonzero((x > cfg.log_bound).any(axis=1)))
            bins = np.clip(np.floor((x + HIST_LIMIT) * (1.0 / HIST_WIDTH)), 0, _NB - 1)
            bins = bins.astype(np.int64)
            hist_lo = bins.min(axis=0)
            hist = [np.bincount(bins[:, k] - hist_lo[k]) for k in range(L)]
            batches = [(n, float(c @ mean))]
        else:
            mean = m2 = np.zeros(L)
            vmin, vmax = np.full(L, np.inf), np.full(L, -np.inf)
            s_mean = s_m2 = 0.0
            n_above = 0
            hist_lo = np.zeros(L, dtype=np.int64)
            hist = [np.zeros(0, dtype=np.int64) for _ in range(L)]
            batches = [(0, math.nan)]
        return cls(n_trajectories=int(logr.shape[0]), count=n, mean=mean, m2=m2,
                   vmin=vmin, vmax=vmax, hist_lo=hist_lo, hist=hist, slope_mean=s_mean,
                   slope_m2=s_m2, n_above=n_above, n_bad=int(bad.size),
                   bad_index=[int(chunk_start + i) for i in bad[:N_BAD_KEPT]],
                   bad_layer=[int(status[i]) for i in bad[:N_BAD_KEPT]], batches=batches)

    def merge(self, other):
        """Return the statistics of ``self`` followed by ``other`` (chunk order)."""
        n, mean, m2 = _chan(self.count, self.mean, self.m2, other.count, other.mean, other.m2)
        _, s_mean, s_m2 = _chan(self.count, np.array([self.slope_mean]),
                                np.array([self.slope_m2]), other.count,
                                np.array([other.slope_mean]), np.array([other.slope_m2]))
        hist_lo, hist = [], []
        for k in range(len(self.hist)):
            lo, h = _merge_hist(int(self.hist_lo[k]), self.hist[k],
                                int(other.hist_lo[k]), other.hist[k])
            hist_lo.append(lo)
            hist.append(h)
        keep = N_BAD_KEPT - len(self.bad_index)
        return DecayStats(
            n_trajectories=self.n_trajectories + other.n_trajectories, count=n, mean=mean,
            m2=m2, vmin=np.minimum(self.vmin, other.vmin),
            vmax=np.maximum(self.vmax, other.vmax),
            hist_lo=np.array(hist_lo, dtype=np.int64), hist=hist,
            slope_mean=float(s_mean[0]), slope_m2=float(s_m2[0]),
            n_above=self.n_above + other.n_above, n_bad=self.n_bad + other.n_bad,
            bad_index=self.bad_index + other.bad_index[:keep],
            bad_layer=self.bad_layer + other.bad_layer[:keep],
            batches=self.batches + other.batches)

    def quantiles(self, qs=QUANTILES):
        """Quantiles of ``log r_n`` per layer from the sketch, shape (len(qs), N + 1).

        The estimate of level q is the midpoint of the bin holding the order statistic
        of rank ``floor(q·(count − 1))`` (``np.quantile(..., method="lower")``),
        clipped to the layer's exact [min, max]: within ``HIST_WIDTH / 2 = 1/2048`` of
        it in ``log r`` (0.05 % in r) whenever it lies in ``[−HIST_LIMIT, HIST_LIMIT]``.
        The histograms are sparse (each layer stores only the bins between its
        smallest and largest value), so their memory follows the spread of ``log r``.
        """
        out = np.full((len(qs), len(self.hist)), np.nan)
        if self.count == 0:
            return out
        for k, h in enumerate(self.hist):
            cum = np.cumsum(h)
            for j, q in enumerate(qs):
                rank = math.floor(q * (self.count - 1))
                b = int(np.searchsorted(cum, rank, side="right"))
                mid = -HIST_LIMIT + (self.hist_lo[k] + b + 0.5) * HIST_WIDTH
                out[j, k] = min(max(mid, self.vmin[k]), self.vmax[k])
        return out

    def per_layer(self, t, log_bound):
        """The per-layer table: a dict of arrays of length N + 1."""
        L = len(self.hist)
        std = np.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else np.full(L, np.nan)
        empty = self.count == 0
        table = {
            "layer": np.arange(L),
            "t": np.asarray(t, dtype=np.float64),
            "count": np.full(L, self.count, dtype=np.int64),
            "mean": np.full(L, np.nan) if empty else self.mean.copy(),
            "std": std,
            "min": np.full(L, np.nan) if empty else self.vmin.copy(),
            "max": np.full(L, np.nan) if empty else self.vmax.copy(),
        }
        for name, row in zip(_QNAMES, self.quantiles()):
            table[name] = row
        table["log_bound"] = np.asarray(log_bound, dtype=np.float64)
        return table


# ===================================================================== estimates
def rate_estimate(stats, t):
    """Decay rate (least-squares slope of mean ``log r_n`` vs t_n) and its 95 % CI.

    With at least ``MIN_BATCHES`` chunks holding valid trajectories, the CI comes
    from batch means over chunks: the chunk slopes ``s_j`` with weights
    ``w_j = n_j / n`` give ``SE² = k/(k−1) Σ w_j² (s_j − s̄)²`` and the half width
    ``t_{0.975, k−1}·SE``. With fewer chunks (a single chunk included) every
    trajectory is its own batch: the per-trajectory slopes are i.i.d., and
    ``SE = sd(slopes)/√n`` with ``n − 1`` degrees of freedom. Fewer than two valid
    trajectories give a NaN interval.

    Returns
    -------
    rate : float
    ci : (float, float)
    method : str
        How the CI was formed.
    """
    from scipy import stats as sps

    if stats.count == 0:
        return math.nan, (math.nan, math.nan), "no valid trajectories"
    rate = float(_slope_weights(np.asarray(t)) @ stats.mean)
    batches = [(n, s) for n, s in stats.batches if n > 0]
    k = len(batches)
    if k >= MIN_BATCHES:
        n = np.array([b[0] for b in batches], dtype=np.float64)
        s = np.array([b[1] for b in batches])
        w = n / n.sum()
        se = math.sqrt(k / (k - 1) * np.sum(w * w * (s - np.dot(w, s)) ** 2))
        dof, how = k - 1, f"batch means over {k} chunks"
    elif stats.count >= 2:
        se = math.sqrt(stats.slope_m2 / (stats.count - 1) / stats.count)
        dof = stats.count - 1
        how = f"per-trajectory slopes ({k} chunk(s) < {MIN_BATCHES})"
    else:
        return rate, (math.nan, math.nan), "one valid trajectory: no interval"
    half = float(sps.t.ppf(0.975, dof)) * se
    return rate, (rate - half, rate + half), how


def classify(rate_ci, mean_last, std_last, count):
    """Plain regime string from the measured decay.

    ``"expanding"`` when the rate CI lies above 0 or the final mean ``log r_N`` is
    significantly positive; ``"contractive"`` when the rate CI lies below 0 *and* the
    final mean ``log r_N`` is significantly negative; ``"neutral"`` otherwise (also
    when the CI is undefined). An expanding model is therefore never "contractive".
    """
    lo, hi = rate_ci
    se = std_last / math.sqrt(count) if count > 1 and np.isfinite(std_last) else math.inf
    if count == 0 or not (np.isfinite(lo) and np.isfinite(hi)):
        return "neutral"
    if lo > 0 or mean_last - 1.96 * se > 0:
        return "expanding"
    if hi < 0 and mean_last + 1.96 * se < 0:
        return "contractive"
    return "neutral"


def _jacobian_dense(packed, X, layer):
    """Dense Jacobian (T·d × T·d, row-major vec) of f at X via T·d JVPs."""
    T, d = X.shape
    n = T * d
    Xs = np.ascontiguousarray(np.broadcast_to(X, (n, T, d)))
    E = np.eye(n).reshape(n, T, d)
    out = np.empty_like(Xs)
    kernels.jvp_kernel(Xs, E, packed, np.full(n, layer, dtype=np.int64), out)
    return out.reshape(n, n).T


def _lognorm_lanczos(packed, X, layer):
    """``(λ_max((J + Jᵀ)/2), σ_max(J))`` at X by Lanczos (eigsh) with JVP and VJP."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    T, d = X.shape
    n = T * d
    X3 = X.reshape(1, T, d)
    lay = np.array([layer], dtype=np.int64)
    buf = np.empty((1, T, d))

    def jv(u):
        kernels.jvp_kernel(X3, np.ascontiguousarray(u.reshape(1, T, d)), packed, lay, buf)
        return buf.ravel().copy()

    def vj(u):
        kernels.vjp_kernel(X3, np.ascontiguousarray(u.reshape(1, T, d)), packed, lay, buf)
        return buf.ravel().copy()

    v0 = np.random.default_rng(0).standard_normal(n)  # fixed: deterministic result
    sym = LinearOperator((n, n), matvec=lambda u: 0.5 * (jv(u) + vj(u)), dtype=np.float64)
    gram = LinearOperator((n, n), matvec=lambda u: vj(jv(u)), dtype=np.float64)
    lam = eigsh(sym, k=1, which="LA", v0=v0, tol=1e-10, return_eigenvectors=False)[0]
    s2 = eigsh(gram, k=1, which="LA", v0=v0, tol=1e-10, return_eigenvectors=False)[0]
    return float(lam), float(math.sqrt(max(s2, 0.0)))


def _sample_states(params, seq_len, n_layers, n_samples, run, seed):
    """States ``(X, layer)`` along the first trajectories of the study.

    Up to ``min(N, 8)`` evenly spaced layers (0 and N included) of the first
    ``ceil(n_samples / layers)`` trajectories, run with the study's update and noise;
    non-finite states are dropped. Layer n's state is paired with weight set
    ``min(n, N − 1)``.
    """
    want = min(n_layers, 8)
    every = max(k for k in range(1, n_layers + 1) if n_layers % k == 0 and n_layers // k >= want)
    n_traj = max(1, -(-n_samples // (n_layers // every + 1)))
    x0 = api.random_states(n_traj, seq_len, params.d, seed=seed, dtype=params.dtype)
    states = api.integrate(params, x0, n_layers, save_every=every, throw=False, seed=seed,
                           **run)
    layers = np.minimum(np.arange(states.shape[1]) * every, n_layers - 1)
    picked = []
    for k in range(states.shape[1]):           # layer-major: spread over layers
        for b in range(n_traj):
            if np.all(np.isfinite(states[b, k])):
                picked.append((states[b, k], int(layers[k])))
    idx = np.linspace(0, len(picked) - 1, min(n_samples, len(picked))).round().astype(int)
    return [picked[i] for i in np.unique(idx)] if picked else []


def _largest_eigenvalue(S):
    """Largest eigenvalue of the symmetric matrix ``S`` (LAPACK ``syevr``, that one only)."""
    from scipy.linalg import eigh

    n = S.shape[0]
    return float(eigh(S, eigvals_only=True, subset_by_index=[n - 1, n - 1],
                      driver="evr")[0])


def estimate_lipschitz(params, seq_len, n_layers, *, n_samples=64, seed=0, run=None,
                       dense_max=DENSE_MAX):
    """Estimate the one-sided Lipschitz constant λ̂ and the Lipschitz constant L̂ of f.

    λ̂ is the largest logarithmic 2-norm ``λ_max((J + Jᵀ)/2)`` and L̂ the largest
    spectral norm ``σ_max(J)`` of the Jacobian J of f over states sampled along the
    study's trajectories (see :func:`_sample_states`), in float64. J is formed
    densely from T·d JVPs when ``T·d ≤ dense_max``; otherwise both come from Lanczos
    iterations (``scipy.sparse.linalg.eigsh``) on ``(J + Jᵀ)/2`` and ``JᵀJ`` applied with
    the JVP and VJP kernels. Being a maximum over samples, λ̂ is a lower estimate of the
    supremum over all states the trajectories visit.

    The linear algebra runs with one BLAS thread: on matrices this small a second
    thread gains almost nothing (eigvalsh of 512 × 512: 6.8 ms on two threads, 8.6 ms
    on one), and OpenBLAS's woken threads then spin for about 0.1 s, competing with
    the study's kernel that follows (pair mode at B = 256 ran 3.3× a flow instead of
    2.1×).

    Returns
    -------
    lambda_hat, L_hat : float
        NaN when no sampled state is finite.
    info : dict
        ``n_samples`` and ``method`` ("dense" or "lanczos").
    """
    run = run or {}
    samples = _sample_states(params, seq_len, n_layers, n_samples, run, seed)
    p64 = params if params.dtype == np.float64 else params.astype(np.float64)
    packed = kernels.pack_params(p64)
    dense = seq_len * params.d <= dense_max
    lam, lip = -math.inf, 0.0
    with threadpool_limits(limits=1, user_api="blas"):
        for X, layer in samples:
            X = np.ascontiguousarray(X, dtype=np.float64)
            layer = layer if params.n_sets is not None else 0
            if dense:
                J = _jacobian_dense(packed, X, layer)
                l1 = _largest_eigenvalue(0.5 * (J + J.T))
                l2 = math.sqrt(max(_largest_eigenvalue(J.T @ J), 0.0))
            else:
                l1, l2 = _lognorm_lanczos(packed, X, layer)
            lam, lip = max(lam, l1), max(lip, l2)
    if not samples:
        lam, lip = math.nan, math.nan
    return lam, lip, {"n_samples": len(samples), "method": "dense" if dense else "lanczos"}


# ======================================================================== result
def _jsonable(x):
    """Convert numpy values to JSON (non-finite floats become None)."""
    if isinstance(x, dict):
        return {k: _jsonable(val) for k, val in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(val) for val in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _nan(x):
    return math.nan if x is None else float(x)


@dataclasses.dataclass
class DecayResult:
    """Outcome of :func:`perturbation_decay`.

    Attributes
    ----------
    rate : float
        Empirical decay rate: least-squares slope of mean ``log r_n`` against t_n
        (negative: perturbations shrink).
    rate_ci : (float, float)
        95 % confidence interval of ``rate`` (see :func:`rate_estimate`).
    lambda_hat : float
        One-sided Lipschitz estimate: max over sampled states of ``λ_max((J+Jᵀ)/2)``.
    L_hat : float
        Lipschitz estimate: max over sampled states of ``σ_max(J)``.
    bound_holds : bool
        Every valid trajectory satisfied ``r_n ≤ exp(λ̂ t_n)·(1 + bound_rtol)``.
    fraction_above_bound : float
        Fraction of valid trajectories that did not.
    regime : str
        ``"contractive"``, ``"neutral"`` or ``"expanding"`` (see :func:`classify`).
    stats : dict of ndarray
        Per layer n = 0 … N: ``layer, t, count, mean, std, min, max`` and the quantiles
        ``q01 … q99`` of ``log r_n``, and ``log_bound`` (= λ̂·t_n).
    n_trajectories, n_valid, n_nonfinite : int
        Trajectories run, kept, and excluded as non-finite.
    nonfinite_indices, nonfinite_layers : list of int
        The first few excluded trajectories and their first non-finite layer
        (0: ε·U vanished in the state dtype).
    config : dict
        The study's settings and a summary of the parameters.
    meta : dict
        Versions, machine, timings, throughput, how the estimates were formed.
    """

    rate: float
    rate_ci: tuple
    lambda_hat: float
    L_hat: float
    bound_holds: bool
    fraction_above_bound: float
    regime: str
    stats: dict
    n_trajectories: int
    n_valid: int
    n_nonfinite: int
    nonfinite_indices: list
    nonfinite_layers: list
    config: dict
    meta: dict

    @property
    def bound(self):
        """The theoretical bound ``exp(λ̂·t_n)`` per layer."""
        return np.exp(self.lambda_hat * self.stats["t"])

    # ------------------------------------------------------------ storage
    def to_dict(self):
        """All fields as JSON-ready Python values."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["stats"] = {k: np.asarray(val) for k, val in self.stats.items()}
        return _jsonable(d)

    def to_json(self, path):
        """Write the result (configuration, versions, machine, timings, statistics)."""
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1, allow_nan=False)
            fh.write("\n")

    @classmethod
    def from_json(cls, path):
        """Read a result written by :meth:`to_json`."""
        with open(path) as fh:
            d = json.load(fh)
        stats = {}
        for k, val in d["stats"].items():
            a = np.array([_nan(x) for x in val]) if k not in ("layer", "count") else np.array(val)
            stats[k] = a
        return cls(rate=_nan(d["rate"]), rate_ci=tuple(_nan(x) for x in d["rate_ci"]),
                   lambda_hat=_nan(d["lambda_hat"]), L_hat=_nan(d["L_hat"]),
                   bound_holds=d["bound_holds"],
                   fraction_above_bound=_nan(d["fraction_above_bound"]),
                   regime=d["regime"], stats=stats, n_trajectories=d["n_trajectories"],
                   n_valid=d["n_valid"], n_nonfinite=d["n_nonfinite"],
                   nonfinite_indices=d["nonfinite_indices"],
                   nonfinite_layers=d["nonfinite_layers"], config=d["config"], meta=d["meta"])

    def to_csv(self, path):
        """Write the per-layer statistics of ``log r_n`` as CSV (one row per layer)."""
        cols = list(self.stats)
        rows = np.column_stack([np.asarray(self.stats[c], dtype=np.float64) for c in cols])
        fmt = ["%d" if c in ("layer", "count") else "%.10g" for c in cols]
        np.savetxt(path, rows, delimiter=",", header=",".join(cols), comments="", fmt=fmt)

    def plot(self, path):
        """Semilog-y figure of r_n against layer: quantile bands, median, mean, bound.

        The mean curve is ``exp(mean log r_n)`` (the geometric mean of r_n).
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = self.stats
        n = s["layer"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
        for lo, hi, alpha in (("q01", "q99", 0.15), ("q05", "q95", 0.25), ("q25", "q75", 0.4)):
            ax.fill_between(n, np.exp(s[lo]), np.exp(s[hi]), color="C0", alpha=alpha, lw=0,
                            label=f"{int(lo[1:])}–{int(hi[1:])} %")
        ax.plot(n, np.exp(s["q50"]), color="C0", lw=1.2, label="median")
        ax.plot(n, np.exp(s["mean"]), color="k", lw=1.2, ls="-.", label="exp(mean log r)")
        if np.isfinite(self.lambda_hat):
            ax.plot(n, self.bound, color="C3", ls="--",
                    label=f"bound exp(λ̂ t), λ̂ = {self.lambda_hat:.3g}")
        ax.set_yscale("log")
        ax.set_xlabel("layer n")
        ax.set_ylabel("r_n = ‖δ_n‖ / ‖δ_0‖" if self.config.get("mode") == "tangent"
                      else "r_n = ‖X_n − Y_n‖ / ‖X_0 − Y_0‖")
        lo, hi = self.rate_ci
        ax.set_title(f"{self.n_valid:,} trajectories ({self.config.get('mode')} mode): "
                     f"rate {self.rate:.3g} [{lo:.3g}, {hi:.3g}]", fontsize=10)
        ax.legend(fontsize=8, loc="best")
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def summary(self):
        """A short human-readable table."""
        lo, hi = self.rate_ci
        half = (hi - lo) / 2
        m = self.meta
        rows = [
            ("trajectories", f"{self.n_trajectories:,} ({self.n_valid:,} valid)"),
            ("layers", f"{self.config['n_layers']} ({self.config['method']}, "
                       f"t_final={self.config['t_final']})"),
            ("mode", f"{self.config['mode']} (eps={self.config['eps']:g})"
             if self.config["mode"] == "pair" else "tangent"),
            ("rate (95% CI)", f"{self.rate:.5g} ± {half:.2g}"),
            ("lambda_hat", f"{self.lambda_hat:.5g}   (L_hat {self.L_hat:.4g})"),
            ("bound holds", f"{self.bound_holds} ({self.fraction_above_bound:.3g} above)"),
            ("regime", self.regime),
            ("non-finite", f"{self.n_nonfinite:,}"
             + (f" (first: {self.nonfinite_indices[:3]})" if self.n_nonfinite else "")),
            ("throughput", f"{m['throughput']:.4g} trajectory-layers/s"),
            ("wall time", f"{m['wall_time_s']:.1f} s"),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {val}" for k, val in rows)


# =========================================================================== API
def _check_args(params, n_trajectories, seq_len, n_layers, method, t_final, alpha, c,
                noise, eps, mode, seed, chunk_size, n_threads, progress, lambda_samples,
                bound_rtol, client):
    """Validate every argument of :func:`perturbation_decay`; return the normalized ones."""
    a, b, h, sigma = api.prepare_run(params, n_layers, method, t_final, alpha, c, noise)
    n_trajectories = v.check_int("n_trajectories", n_trajectories, minimum=1)
    seq_len = v.check_int("seq_len", seq_len, minimum=1)
    mode_code = v.check_choice("mode", mode, MODES)
    dt_name = params.dtype.name
    eps = DEFAULT_EPS[dt_name] if eps is None else v.check_float("eps", eps, minimum=0.0,
                                                                  strict=True)
    seed = v.check_int("seed", seed, minimum=0)
    chunk_size = config.CHUNK_SIZE if chunk_size is None else v.check_int(
        "chunk_size", chunk_size, minimum=1)
    threads.check_n_threads(n_threads)
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be True or False, got {progress!r}")
    lambda_samples = v.check_int("lambda_samples", lambda_samples, minimum=1)
    bound_rtol = (DEFAULT_BOUND_RTOL[dt_name] if bound_rtol is None
                  else v.check_float("bound_rtol", bound_rtol, minimum=0.0))
    if client is not None:
        from . import distributed      # imports no dask: checks the client's type
        distributed.check_client(client)
    return dict(a=a, b=b, h=h, sigma=sigma, n_trajectories=n_trajectories, seq_len=seq_len,
                mode=mode_code, eps=eps, seed=seed, chunk_size=chunk_size,
                lambda_samples=lambda_samples, bound_rtol=bound_rtol)


def _params_summary(params):
    """JSON-ready description of ``params`` with a hash of its weights."""
    digest = hashlib.sha256()
    for k in ("wq", "wk", "wv", "wo", "w1", "b1", "w2", "b2", "linear"):
        w = getattr(params, k)
        if w is not None:
            digest.update(k.encode() + np.ascontiguousarray(w).tobytes())
    terms = [t for t, on in (("attention", params.attention), ("ffn", params.ffn),
                             ("linear", params.linear is not None)) if on]
    return {"d": params.d, "n_heads": params.n_heads, "d_ff": params.d_ff, "terms": terms,
            "activation": params.activation, "beta": params.beta, "causal": params.causal,
            "damping": params.damping, "n_sets": params.n_sets, "dtype": params.dtype.name,
            "sha256": digest.hexdigest()}


def _environment():
    """Versions and machine description for the result's metadata."""
    import numba
    import scipy

    from .. import __version__

    return {
        "versions": {"tfkernels": __version__, "python": platform.python_version(),
                     "numpy": np.__version__, "numba": numba.__version__,
                     "scipy": scipy.__version__},
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "processor": platform.processor() or _cpu_model(),
                    "cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads()},
    }


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _chunks(n_trajectories, chunk_size):
    """``(start, length)`` of every chunk, in order."""
    return [(s, min(chunk_size, n_trajectories - s)) for s in range(0, n_trajectories, chunk_size)]


def log_ratios(params, n_trajectories, seq_len, n_layers, *, start=0, method="euler",
               t_final=1.0, alpha=None, c=1.0, noise=0.0, eps=None, mode="pair", seed=0,
               n_threads=None):
    """Per-trajectory ``log r_n`` of trajectories ``start … start + n_trajectories − 1``.

    The raw output behind :func:`perturbation_decay` (one kernel call, memory
    ``n_trajectories × (N + 1)``). Each row depends only on the trajectory's global
    index, never on the batch split or thread count.

    Returns
    -------
    logr : ndarray of float64, shape (n_trajectories, N + 1)
    status : ndarray of int64
        ``kernels.STATUS_OK`` (-1) or the first non-finite layer.
    """
    k = _check_args(params, n_trajectories, seq_len, n_layers, method, t_final, alpha, c,
                    noise, eps, mode, seed, None, n_threads, False, 1, None, None)
    start = v.check_int("start", start, minimum=0)
    cfg = _chunk_config(params, k, 0.0)
    with threads.threads(n_threads):
        return chunk_log_ratios(kernels.pack_params(params), start, k["n_trajectories"], cfg)


def _chunk_config(params, k, lambda_hat):
    t = np.concatenate([[0.0], np.cumsum(k["h"].astype(np.float64))])
    log_bound = lambda_hat * t + math.log1p(k["bound_rtol"]) if np.isfinite(lambda_hat) \
        else np.full(t.shape, np.inf)
    return ChunkConfig(mode=k["mode"], seed=k["seed"], eps=k["eps"], seq_len=k["seq_len"],
                       d=params.d, dtype=params.dtype.name, a=k["a"], b=k["b"], h=k["h"],
                       sigma=k["sigma"], t=t, log_bound=log_bound)


def perturbation_decay(params, n_trajectories, seq_len, n_layers, *, method="euler",
                       t_final=1.0, alpha=None, c=1.0, noise=0.0, eps=None, mode="pair",
                       seed=0, chunk_size=None, n_threads=None, progress=False,
                       lambda_samples=64, bound_rtol=None, client=None):
    """Monte Carlo study of how perturbations grow or decay across the layers.

    Parameters
    ----------
    params : TransformerParams
        The model; float32 or float64.
    n_trajectories : int
        Number of trajectories (pairs); trajectory g uses keys ``(seed, ·, g)``.
    seq_len : int
        Tokens T per state.
    n_layers : int
        Layers N; ``Δt = t_final / N``.
    method, t_final, alpha, c, noise
        The update, as in :func:`tfkernels.integrate`; noise is shared by X and Y.
    eps : float, optional
        ε > 0 of the pair mode; default 1e-6 for float64 and 1e-3 for float32. The
        pair mode measures ``r_n`` to first order in ε, and rounding adds about
        ``u·‖X‖/ε`` (u the unit roundoff) to it: on the default model the error in
        ``log r_n`` is ~3e-8 in float64 at 1e-6 and ~2e-3 in float32 at 1e-3 (1 at
        1e-6). Ignored in tangent mode.
    mode : {"pair", "tangent"}
        Finite pair ``Y_0 = X_0 + ε·U`` or exact linearization.
    seed : int
        Seed of initial states, directions and noise.
    chunk_size : int, optional
        Trajectories per kernel call (default ``config.CHUNK_SIZE``); bounds memory
        to about ``chunk_size × (N + 1) × 40`` bytes. Does not change any
        per-trajectory value.
    n_threads : int, optional
        Numba threads; results do not depend on it. With ``client``, also the Numba
        threads of each chunk on a worker (capped at the worker's).
    progress : bool
        Show a tqdm progress bar over chunks.
    lambda_samples : int
        Number of states sampled along trajectories for λ̂ and L̂.
    bound_rtol : float, optional
        A trajectory is above the bound when ``r_n > exp(λ̂ t_n)·(1 + bound_rtol)``
        for some n (default 1e-6 for float64, 1e-2 for float32).
    client : dask.distributed.Client, optional
        Run the chunks as tasks on this Dask cluster (see :mod:`tfkernels.distributed`):
        the parameters are scattered once, each chunk runs :func:`decay_chunk` on a
        worker (with ``n_threads`` or the worker's thread count as Numba threads), and
        the results are merged on the client in chunk order, so the statistics are
        bit-identical to the local run with the same seed and chunk size. None (the
        default) runs locally and does not import dask.

    Returns
    -------
    DecayResult

    Raises
    ------
    TypeError, ValueError
        On invalid arguments, naming the argument, before any kernel runs.
    NotImplementedError
        ``client`` is not a ``dask.distributed.Client``.

    Notes
    -----
    Statistics per layer are streamed (:class:`DecayStats`): count, mean and std of
    ``log r_n`` (Chan's merge), min/max, and quantiles from a fixed histogram over
    ``log r ∈ [−1024, 1024]`` with bins of width 1/1024: every reported quantile is
    within 1/2048 in ``log r`` (0.05 % in r) of ``np.quantile(log_r, q,
    method="lower")``. Trajectories that become non-finite (state or r_n, including
    r_n = 0 when X and Y collapse in floating point) are excluded and counted.
    Memory is ``O(chunk_size × N)`` plus the sketch (``O(N × spread / bin width)``),
    independent of ``n_trajectories``.

    Examples
    --------
    >>> import tfkernels as tfk
    >>> p = tfk.TransformerParams.random(d=8, n_heads=2, damping=3.0, seed=0)
    >>> res = tfk.perturbation_decay(p, 256, seq_len=4, n_layers=8, seed=1)
    >>> res.regime, res.bound_holds
    ('contractive', True)
    """
    k = _check_args(params, n_trajectories, seq_len, n_layers, method, t_final, alpha, c,
                    noise, eps, mode, seed, chunk_size, n_threads, progress, lambda_samples,
                    bound_rtol, client)
    run = dict(method=method, t_final=t_final, alpha=alpha, c=c, noise=noise)
    t_begin = time.perf_counter()
    with threads.threads(n_threads):
        lam, lip, linfo = estimate_lipschitz(params, k["seq_len"], n_layers,
                                             n_samples=k["lambda_samples"], seed=k["seed"],
                                             run=run)
        cfg = _chunk_config(params, k, lam)
        packed = kernels.pack_params(params)
        if client is None:
            stats, loop_time = _run_chunks(packed, cfg, k["n_trajectories"],
                                           k["chunk_size"], progress)
        else:
            from . import distributed

            stats, loop_time, cluster = distributed.run_chunks(
                client, packed, cfg, k["n_trajectories"], k["chunk_size"], progress,
                n_threads)
        env = _environment()                # inside: records the thread count used
        if client is not None:
            env["cluster"] = cluster
    wall = time.perf_counter() - t_begin
    return _make_result(params, k, run, n_layers, stats, cfg, (lam, lip, linfo), env,
                        (wall, loop_time))


def _run_chunks(packed, cfg, n_trajectories, chunk_size, progress):
    """Run every chunk locally and merge the statistics in chunk order."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    stats = None
    with tqdm(total=n_trajectories, unit="traj", unit_scale=True, disable=not progress,
              desc="decay", smoothing=0.1) as bar:
        for start, length in _chunks(n_trajectories, chunk_size):
            part = decay_chunk(packed, start, length, cfg)
            stats = part if stats is None else stats.merge(part)
            bar.update(length)
    return stats, time.perf_counter() - t0


def _make_result(params, k, run, n_layers, stats, cfg, estimates, env, times):
    """Assemble the :class:`DecayResult` from the merged statistics."""
    lam, lip, linfo = estimates
    wall, loop_time = times
    table = stats.per_layer(cfg.t, lam * cfg.t + 0.0)
    rate, ci, ci_how = rate_estimate(stats, cfg.t)
    regime = classify(ci, table["mean"][-1], table["std"][-1], stats.count)
    frac = stats.n_above / stats.count if stats.count else math.nan
    mode_name = next(m for m, code in MODES.items() if code == k["mode"])
    alpha = run["alpha"]
    conf = {
        "n_trajectories": k["n_trajectories"], "seq_len": k["seq_len"], "n_layers": n_layers,
        "method": run["method"], "t_final": run["t_final"],
        "alpha": alpha if alpha is None or isinstance(alpha, str) else np.asarray(alpha),
        "c": run["c"], "noise": np.asarray(run["noise"]), "eps": k["eps"], "mode": mode_name,
        "seed": k["seed"], "chunk_size": k["chunk_size"], "lambda_samples": k["lambda_samples"],
        "bound_rtol": k["bound_rtol"], "params": _params_summary(params),
    }
    n_chunks = len(stats.batches)
    meta = dict(env)
    meta.update({
        "wall_time_s": wall, "loop_time_s": loop_time,
        "throughput": k["n_trajectories"] * n_layers / loop_time,
        "throughput_unit": "trajectory-layers per second over the chunk loop",
        "n_chunks": n_chunks, "rate_ci_method": ci_how,
        "lambda_method": linfo["method"], "lambda_n_samples": linfo["n_samples"],
        "quantile_accuracy_log_r": HIST_WIDTH / 2,
        "quantile_method": f"histogram over log r in [-{HIST_LIMIT:g}, {HIST_LIMIT:g}], "
                           f"bin {HIST_WIDTH:g}; midpoint of the bin of the rank "
                           "floor(q(n-1)) order statistic, clipped to [min, max]",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return DecayResult(
        rate=rate, rate_ci=ci, lambda_hat=lam, L_hat=lip,
        bound_holds=bool(stats.n_above == 0) if np.isfinite(lam) else False,
        fraction_above_bound=frac if np.isfinite(lam) else math.nan, regime=regime,
        stats=table, n_trajectories=stats.n_trajectories, n_valid=stats.count,
        n_nonfinite=stats.n_bad, nonfinite_indices=stats.bad_index,
        nonfinite_layers=stats.bad_layer, config=conf, meta=meta)


# =========================================================================== CLI
def _count(text):
    """argparse type: a positive integer, also written as ``1e6`` or ``1_000_000``."""
    try:
        x = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not x.is_integer() or x < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(x)


def configure_parser(parser):
    """Add the options of ``tfkernels decay`` to ``parser``."""
    g = parser.add_argument_group("study")
    g.add_argument("--trajectories", type=_count, default=1_000_000,
                   help="number of trajectories (pairs); accepts 1e6")
    g.add_argument("--layers", type=int, default=32, help="number of layers N")
    g.add_argument("--method", default="euler", choices=list(METHODS), help="update rule")
    g.add_argument("--mode", default="pair", choices=list(MODES),
                   help="finite pair (eps) or exact linearization (tangent)")
    g.add_argument("--eps", type=float, default=None,
                   help="pair-mode perturbation size (None: 1e-6 for float64, 1e-3 for float32)")
    g.add_argument("--seed", type=int, default=0, help="seed of weights, states and directions")
    m = parser.add_argument_group("model (random weights)")
    m.add_argument("--seq-len", type=int, default=4, help="tokens T per state")
    m.add_argument("--d", type=int, default=16, help="token width d")
    m.add_argument("--heads", type=int, default=2, help="attention heads")
    m.add_argument("--d-ff", type=int, default=32, help="FFN hidden width")
    m.add_argument("--damping", type=float, default=4.0, help="damping γ")
    m.add_argument("--activation", default="gelu", choices=list(ACTIVATIONS),
                   help="FFN activation σ")
    m.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                   help="state and weight dtype")
    r = parser.add_argument_group("run")
    r.add_argument("--chunk-size", type=int, default=config.CHUNK_SIZE,
                   help="trajectories per kernel call (bounds memory)")
    r.add_argument("--threads", type=int, default=None, help="Numba threads (None: all)")
    r.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the chunks on the Dask cluster of this scheduler, e.g. "
                        "tcp://scheduler:8786 (needs tfkernels[dask]); without it the "
                        "study runs locally")
    r.add_argument("--out", default=os.path.join("results", "decay"),
                   help="output folder for decay.json, decay.csv and decay.png")


def run_cli(args):
    """Run ``tfkernels decay``: the study, a summary table, JSON + CSV + PNG."""
    from ..params import TransformerParams

    client = None
    try:
        params = TransformerParams.random(d=args.d, n_heads=args.heads, d_ff=args.d_ff,
                                          damping=args.damping, activation=args.activation,
                                          seed=args.seed, dtype=args.dtype)
        if getattr(args, "scheduler", None):
            from . import distributed

            client = distributed.connect(args.scheduler)
        res = perturbation_decay(params, args.trajectories, args.seq_len, args.layers,
                                 method=args.method, eps=args.eps, mode=args.mode,
                                 seed=args.seed, chunk_size=args.chunk_size,
                                 n_threads=args.threads, progress=True, client=client)
    except (TypeError, ValueError, ImportError, OSError) as err:
        print(f"tfkernels decay: error: {err}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()
    os.makedirs(args.out, exist_ok=True)
    paths = [os.path.join(args.out, f"decay.{ext}") for ext in ("json", "csv", "png")]
    res.to_json(paths[0])
    res.to_csv(paths[1])
    res.plot(paths[2])
    print(res.summary())
    print("wrote " + ", ".join(paths))
    return 0
