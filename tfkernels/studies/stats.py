"""Mergeable per-layer statistics of ``log r_n`` (:class:`DecayStats`) and the decay rate.

A chunk's ``log r`` array (trajectories × layers) is reduced to counts, mean and M2,
min and max, a sparse histogram sketch for the quantiles, the per-trajectory slopes,
the bound check and the first non-finite trajectories; two such summaries merge
(:meth:`DecayStats.merge`) into the summary of their union, so memory does not grow
with the number of trajectories. :func:`rate_estimate` turns the merged statistics into
the decay rate and its confidence interval.
"""

import dataclasses
import math

import numpy as np

from ..kernels import STATUS_OK

#: Quantile levels reported per layer.
QUANTILES = (0.01, 0.05, 0.25, 0.50, 0.75, 0.95, 0.99)
#: Column names of those quantiles in the per-layer table.
QUANTILE_NAMES = tuple(f"q{round(100 * q):02d}" for q in QUANTILES)
#: Bin width of the quantile sketch over ``log r`` (an exact binary fraction), at its
#: finest level.
HIST_WIDTH = 1.0 / 1024.0
#: Offset of the sketch's bin numbers: bin i of level 0 holds
#: ``log r ∈ [−HIST_LIMIT + i·HIST_WIDTH, −HIST_LIMIT + (i + 1)·HIST_WIDTH)``.
HIST_LIMIT = 1024.0
#: Most bins a layer's sketch spans: a layer whose ``log r`` spreads wider is kept at a
#: coarser level k (bins of ``HIST_WIDTH·2^k``, each the union of 2^k finer ones), the
#: smallest k that fits. 2^21 bins hold a spread of 2048 at the finest level.
HIST_MAX_BINS = 2**21
#: ``|log r|`` beyond which a value is not binned but counted as out of the sketch's
#: range (bin numbers must stay exact integers); a quantile that falls among such
#: values is reported as NaN (:meth:`DecayStats.quantiles_out_of_range`).
HIST_RANGE = 2.0**40
#: Bin numbers of "no value in range": the extremes of an empty layer.
_NO_BIN = (np.iinfo(np.int64).max, np.iinfo(np.int64).min)
#: The rate CI uses chunks as batches when there are at least this many.
MIN_BATCHES = 10
#: Non-finite trajectories whose indices are kept.
N_BAD_KEPT = 10


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


def _bin0(x):
    """Level-0 bin numbers (int64) of ``log r`` values, clipped to ``±HIST_RANGE``."""
    x = np.clip(x, -HIST_RANGE, HIST_RANGE)
    return np.floor((x + HIST_LIMIT) * (1.0 / HIST_WIDTH)).astype(np.int64)


def _level(lo, hi):
    """Per layer: the sketch level of binned values whose level-0 bin numbers span
    ``[lo, hi]``, the smallest k for which they fit in ``HIST_MAX_BINS`` bins of level k
    (0 for an empty layer, ``lo > hi``). A function of the exact extremes only, so the
    same for a set of trajectories however it was split and merged."""
    k = np.zeros(lo.shape, dtype=np.int64)
    some = lo <= hi
    while np.any(wide := some & ((hi >> k) - (lo >> k) + 1 > HIST_MAX_BINS)):
        k[wide] += 1
    return k


def _coarsen(lo, counts, shift):
    """A sparse histogram ``(lo, counts)`` at a level ``shift`` coarser (exact: bin j
    becomes bin ``j >> shift``)."""
    if shift == 0 or counts.size == 0:
        return lo, counts
    idx = ((lo + np.arange(counts.size, dtype=np.int64)) >> shift) - (lo >> shift)
    out = np.zeros(int(idx[-1]) + 1, dtype=np.int64)
    np.add.at(out, idx, counts)
    return lo >> shift, out


def _merge_hist(lo_a, c_a, lo_b, c_b):
    """Add two sparse histograms given as (offset, counts) at the same level."""
    if c_a.size == 0:
        return lo_b, c_b.copy()
    if c_b.size == 0:
        return lo_a, c_a.copy()
    lo = min(lo_a, lo_b)
    hi = max(lo_a + c_a.size, lo_b + c_b.size)
    out = np.zeros(hi - lo, dtype=np.int64)
    out[lo_a - lo : lo_a - lo + c_a.size] += c_a
    out[lo_b - lo : lo_b - lo + c_b.size] += c_b
    return lo, out


def slope_weights(t):
    """Weights c with ``c @ y`` = least-squares slope of y against t."""
    tc = t - t.mean()
    return tc / np.dot(tc, tc)


@dataclasses.dataclass
class DecayStats:
    """Mergeable per-layer statistics of ``log r_n`` over a set of trajectories.

    Built per chunk by :meth:`from_chunk` and combined with :meth:`merge` in chunk
    order. Exact whatever the grouping and order of the merges: the counts, min, max,
    the histogram (hence the quantiles) and ``n_above``. Ordered: ``batches``,
    ``bad_index`` and ``bad_layer`` follow the merge order (they are exact when the
    merge order is the trajectory order). Mean, M2 and the slope moments are merged
    with Chan's formula: they depend on the chunk partition and the grouping of the
    merges in the last bits, never on thread counts or on which machine ran a chunk.

    Attributes
    ----------
    n_trajectories : int
        Trajectories seen (valid or not).
    count : int
        Valid trajectories (finite through every layer).
    mean, m2, vmin, vmax : ndarray, shape (N + 1,)
        Mean, sum of squared deviations, min and max of ``log r_n``.
    hist_level : ndarray of int64, shape (N + 1,)
        Sketch level of each layer (bins of ``HIST_WIDTH·2^level``; 0 unless its
        ``log r`` spreads over more than ``HIST_MAX_BINS`` finest bins).
    hist_lo : ndarray of int64, shape (N + 1,)
        First sketch bin of each layer, at its level.
    hist : list of ndarray of int64
        Bin counts of each layer from ``hist_lo[n]`` on.
    bin_min, bin_max : ndarray of int64, shape (N + 1,)
        Level-0 bin numbers of the smallest and largest value within ``±HIST_RANGE``
        (they decide the level).
    n_low, n_high : ndarray of int64, shape (N + 1,)
        Values below ``−HIST_RANGE`` and above ``HIST_RANGE``: not binned, their
        quantiles reported as NaN.
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
    hist_level: np.ndarray
    hist_lo: np.ndarray
    hist: list
    bin_min: np.ndarray
    bin_max: np.ndarray
    n_low: np.ndarray
    n_high: np.ndarray
    slope_mean: float
    slope_m2: float
    n_above: int
    n_bad: int
    bad_index: list
    bad_layer: list
    batches: list

    @classmethod
    def from_chunk(cls, logr, status, chunk_start, t, log_bound):
        """Reduce one chunk's ``log r`` array to its statistics.

        Parameters
        ----------
        logr : ndarray of float64, shape (B, N + 1)
            ``log r_n`` of the chunk's trajectories.
        status : ndarray of int64, shape (B,)
            ``kernels.STATUS_OK``, or the trajectory's first non-finite layer (the
            trajectory is then left out of every statistic but the counts).
        chunk_start : int
            Global index of row 0.
        t : ndarray of float64, shape (N + 1,)
            Time of each layer (for the slopes).
        log_bound : ndarray of float64, shape (N + 1,)
            A trajectory is above the bound when ``log r_n > log_bound[n]`` for some n.
        """
        ok = status == STATUS_OK
        x = logr[ok] if not ok.all() else logr
        n, L = x.shape
        bad = np.flatnonzero(~ok)
        c = slope_weights(t)
        if n:
            mean = x.mean(axis=0)
            m2 = ((x - mean) ** 2).sum(axis=0)
            vmin, vmax = x.min(axis=0), x.max(axis=0)
            slopes = x @ c
            s_mean = float(slopes.mean())
            s_m2 = float(((slopes - s_mean) ** 2).sum())
            n_above = int(np.count_nonzero((x > log_bound).any(axis=1)))
            binned = np.abs(x) <= HIST_RANGE
            b0 = _bin0(x)
            bin_min = np.where(binned, b0, _NO_BIN[0]).min(axis=0)
            bin_max = np.where(binned, b0, _NO_BIN[1]).max(axis=0)
            level = _level(bin_min, bin_max)
            bins = b0 >> level
            hist_lo = np.where(bin_min <= bin_max, bin_min >> level, 0)
            hist = [np.bincount(bins[binned[:, k], k] - hist_lo[k]) for k in range(L)]
            n_low = np.count_nonzero(x < -HIST_RANGE, axis=0).astype(np.int64)
            n_high = np.count_nonzero(x > HIST_RANGE, axis=0).astype(np.int64)
            batches = [(n, float(c @ mean))]
        else:
            mean = m2 = np.zeros(L)
            vmin, vmax = np.full(L, np.inf), np.full(L, -np.inf)
            s_mean = s_m2 = 0.0
            n_above = 0
            level = np.zeros(L, dtype=np.int64)
            hist_lo = np.zeros(L, dtype=np.int64)
            hist = [np.zeros(0, dtype=np.int64) for _ in range(L)]
            bin_min, bin_max = np.full(L, _NO_BIN[0]), np.full(L, _NO_BIN[1])
            n_low = n_high = np.zeros(L, dtype=np.int64)
            batches = [(0, math.nan)]
        return cls(
            n_trajectories=int(logr.shape[0]),
            count=n,
            mean=mean,
            m2=m2,
            vmin=vmin,
            vmax=vmax,
            hist_level=level,
            hist_lo=hist_lo,
            hist=hist,
            bin_min=bin_min,
            bin_max=bin_max,
            n_low=n_low,
            n_high=n_high,
            slope_mean=s_mean,
            slope_m2=s_m2,
            n_above=n_above,
            n_bad=int(bad.size),
            bad_index=[int(chunk_start + i) for i in bad[:N_BAD_KEPT]],
            bad_layer=[int(status[i]) for i in bad[:N_BAD_KEPT]],
            batches=batches,
        )

    def merge(self, other):
        """Return the statistics of ``self`` followed by ``other`` (chunk order)."""
        n, mean, m2 = _chan(self.count, self.mean, self.m2, other.count, other.mean, other.m2)
        _, s_mean, s_m2 = _chan(
            self.count,
            np.array([self.slope_mean]),
            np.array([self.slope_m2]),
            other.count,
            np.array([other.slope_mean]),
            np.array([other.slope_m2]),
        )
        bin_min = np.minimum(self.bin_min, other.bin_min)
        bin_max = np.maximum(self.bin_max, other.bin_max)
        level = _level(bin_min, bin_max)
        hist_lo, hist = [], []
        for k in range(len(self.hist)):
            parts = [
                _coarsen(int(st.hist_lo[k]), st.hist[k], int(level[k] - st.hist_level[k]))
                for st in (self, other)
            ]
            lo, h = _merge_hist(*parts[0], *parts[1])
            hist_lo.append(lo)
            hist.append(h)
        keep = N_BAD_KEPT - len(self.bad_index)
        return DecayStats(
            n_trajectories=self.n_trajectories + other.n_trajectories,
            count=n,
            mean=mean,
            m2=m2,
            vmin=np.minimum(self.vmin, other.vmin),
            vmax=np.maximum(self.vmax, other.vmax),
            hist_level=level,
            hist_lo=np.array(hist_lo, dtype=np.int64),
            hist=hist,
            bin_min=bin_min,
            bin_max=bin_max,
            n_low=self.n_low + other.n_low,
            n_high=self.n_high + other.n_high,
            slope_mean=float(s_mean[0]),
            slope_m2=float(s_m2[0]),
            n_above=self.n_above + other.n_above,
            n_bad=self.n_bad + other.n_bad,
            bad_index=self.bad_index + other.bad_index[:keep],
            bad_layer=self.bad_layer + other.bad_layer[:keep],
            batches=self.batches + other.batches,
        )

    def quantiles(self, qs=QUANTILES):
        """Quantiles of ``log r_n`` per layer from the sketch, shape (len(qs), N + 1).

        The estimate of level q is the midpoint of the bin holding the order statistic
        of rank ``floor(q·(count − 1))`` (``np.quantile(..., method="lower")``),
        clipped to the layer's exact [min, max]: within half a bin of it
        (:meth:`accuracy`; ``HIST_WIDTH / 2 = 1/2048`` in ``log r``, 0.05 % in r, unless
        the layer's values spread over more than ``HIST_MAX_BINS·HIST_WIDTH = 2048``),
        for any finite ``log r``. An order statistic beyond ``±HIST_RANGE`` gives NaN
        (:meth:`quantiles_out_of_range`). The histograms are sparse (each layer stores
        only the bins between its smallest and largest value), so their memory follows
        the spread of ``log r``, and never exceeds ``HIST_MAX_BINS`` per layer.
        """
        out = np.full((len(qs), len(self.hist)), np.nan)
        if self.count == 0:
            return out
        bad = self.quantiles_out_of_range(qs)
        for k, h in enumerate(self.hist):
            cum = np.cumsum(h)
            width = HIST_WIDTH * 2.0 ** int(self.hist_level[k])
            for j, q in enumerate(qs):
                if bad[j, k]:
                    continue
                rank = math.floor(q * (self.count - 1)) - int(self.n_low[k])
                b = int(np.searchsorted(cum, rank, side="right"))
                mid = -HIST_LIMIT + (self.hist_lo[k] + b + 0.5) * width
                out[j, k] = min(max(mid, self.vmin[k]), self.vmax[k])
        return out

    def quantiles_out_of_range(self, qs=QUANTILES):
        """Boolean (len(qs), N + 1): the order statistic of the quantile lies beyond
        ``±HIST_RANGE``, where the sketch does not bin values (its quantile is NaN)."""
        rank = np.array([math.floor(q * max(self.count - 1, 0)) for q in qs])[:, None]
        return (rank < self.n_low[None, :]) | (rank >= self.count - self.n_high[None, :])

    def accuracy(self):
        """Per layer, the largest distance in ``log r`` between a reported quantile and
        the order statistic it estimates: half a bin of the layer's level, plus the
        rounding of ``log r + HIST_LIMIT`` when the value is binned (a few ulps of it:
        4.6e-13 for ``|log r| ≤ 10``)."""
        top = np.minimum(np.maximum(np.abs(self.vmin), np.abs(self.vmax)), HIST_RANGE)
        top = np.where(np.isfinite(top), top, 0.0)
        return HIST_WIDTH / 2 * 2.0**self.hist_level + 2.0**-51 * (top + HIST_LIMIT)

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
        for name, row in zip(QUANTILE_NAMES, self.quantiles()):
            table[name] = row
        table["log_bound"] = np.asarray(log_bound, dtype=np.float64)
        return table


def rate_estimate(stats, t):
    """Decay rate (least-squares slope of mean ``log r_n`` vs t_n) and its 95 % CI.

    With at least ``MIN_BATCHES`` chunks holding valid trajectories, the CI comes
    from batch means over chunks: the chunk slopes ``s_j`` with weights
    ``w_j = n_j / n`` give ``SE² = k/(k−1) Σ w_j² (s_j − s̄)²`` and the half width
    ``t_{0.975, k−1}·SE``. With fewer chunks (a single chunk included) every
    trajectory is its own batch: the per-trajectory slopes are i.i.d., and
    ``SE = sd(slopes)/√n`` with ``n − 1`` degrees of freedom. Fewer than two valid
    trajectories give a NaN interval.

    Parameters
    ----------
    stats : DecayStats
        The merged statistics (chunk order: ``batches`` lists the chunks).
    t : ndarray of float64, shape (N + 1,)
        Time of each layer.

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
    rate = float(slope_weights(np.asarray(t)) @ stats.mean)
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
