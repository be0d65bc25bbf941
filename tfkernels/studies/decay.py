"""The perturbation-decay Monte Carlo study.

For trajectory ``g`` the study draws ``X_0`` (standard normal, the state of
``tfk.random_states``) and a unit direction ``U`` from the counter-based generator and
measures the growth ``r_n`` of a perturbation across the layers n = 0 … N:

* ``mode="pair"``: ``Y_0 = X_0 + ε·U``; X and Y take the same update with the same
  noise and ``r_n = ‖X_n − Y_n‖ / ‖X_0 − Y_0‖``;
* ``mode="tangent"``: δ follows the exact linearization of every step (the JVP of
  attention, FFN and linear terms, chained through the Runge–Kutta stages) and
  ``r_n = ‖δ_n‖ / ‖δ_0‖``; δ is renormalized every layer and ``log r_n`` accumulated.

The study runs on the shared chunked runner (:mod:`.runner`): its chunk function
:func:`decay_chunk` runs ``chunk_size`` trajectories in one fused kernel call and
reduces them to per-layer statistics of ``log r_n`` (:class:`~.stats.DecayStats`),
which the runner merges in chunk order, locally or on a Dask cluster, so memory does
not grow with the number of trajectories. Beside the measured decay rate stands the
theory: the one-sided Lipschitz estimate ``lambda_hat`` (:mod:`.lipschitz`) and the
bound ``r_n ≤ exp(λ̂·t_n)``.
"""

import contextlib
import dataclasses
import json
import math
import time
import warnings

import numpy as np

from .. import _validate as v
from .. import api, compiling, config, kernels, threads
from ..ensemble import is_ensemble
from ..methods import MODES
from . import checkpoint as ckpt
from . import initial, lipschitz, output, plans, runner
from .environment import params_summary
from .lipschitz import compile_jacobian, compile_sampling, estimate_lipschitz, jacobian_object
from .serialize import float_or_nan, jsonable, read_json_entries
from .stats import (
    HIST_MAX_BINS,
    HIST_RANGE,
    HIST_WIDTH,
    QUANTILE_NAMES,
    DecayStats,
    rate_estimate,
)

#: Default ε of the pair mode, per state dtype.
DEFAULT_EPS = {"float64": 1e-6, "float32": 1e-3}
#: Default relative tolerance of the bound check, per state dtype.
DEFAULT_BOUND_RTOL = {"float64": 1e-6, "float32": 1e-2}
#: The regime and bound check of a study without a valid trajectory (or, for the bound,
#: without a finite λ̂).
UNDETERMINED = "undetermined"


def eps_range(dtype, size):
    """The ε that the pair mode can use for states of ``size = T·d`` entries in ``dtype``.

    Below ``eps_mach·√size`` (the spacing of the dtype at 1 times √size) the entries of
    ``ε·U`` (about ``ε/√size`` each, U a unit direction) round away in ``X_0 + ε·U``
    for ``|X_0| ~ 1``, and the pair measures rounding; at ``√max / PAIR_BAND`` and
    above, the perturbed state's products (``X W``, the attention scores ``Q Kᵀ``, the
    pair's band ``ε·PAIR_BAND`` squared) overflow the dtype.

    Returns
    -------
    lo, hi : float
        ε must satisfy ``lo <= ε < hi``.
    """
    fi = np.finfo(dtype)
    return float(fi.eps) * math.sqrt(size), math.sqrt(float(fi.max)) / config.PAIR_BAND


def check_eps(eps, dtype, size, name="eps"):
    """Return ``float(eps)`` for the pair mode with states of ``size = T·d`` entries in
    ``dtype``, or raise ``ValueError`` naming ``name`` when it is outside
    :func:`eps_range` (a perturbation that vanishes in, or overflows, the dtype).

    An ε larger than the states themselves (``ε > √size ≈ ‖X_0‖``) is allowed, with a
    ``UserWarning``: the pair then measures how a finite perturbation grows, not the
    linearization that λ̂ and the tangent mode describe.
    """
    eps = v.check_float(name, eps, minimum=0.0, strict=True)
    dt = np.dtype(dtype).name
    lo, hi = eps_range(dtype, size)
    if eps < lo:
        raise ValueError(
            f"`{name}`={eps:g} vanishes in {dt}: X_0 + eps*U rounds to X_0 for |X_0| ~ 1 "
            f"(each entry of eps*U is about eps/sqrt(T*d)); use {name} >= {lo:.3g} "
            f"(default {DEFAULT_EPS[dt]:g})"
        )
    if eps >= hi:
        raise ValueError(
            f"`{name}`={eps:g} overflows {dt}: the products of the perturbed state "
            f"X_0 + eps*U overflow; use {name} < {hi:.3g} (default {DEFAULT_EPS[dt]:g})"
        )
    if eps > math.sqrt(size):
        warnings.warn(
            f"`{name}`={eps:g} is larger than the states (|X_0| ~ {math.sqrt(size):.3g}): "
            "the pair mode measures the growth of a finite perturbation, not the "
            "linearization (tangent mode, lambda_hat)",
            UserWarning,
            stacklevel=4,
        )
    return eps


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
    init : str
        ``"normal"`` (X_0 drawn in the kernel), ``"sphere"`` or ``"array"`` (the
        states of :func:`.initial.chunk_states`, passed to the kernel).
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
    init: str = "normal"


def chunk_log_ratios(packed, chunk_start, chunk_len, cfg, x0=None):
    """Run one chunk through the fused kernel.

    Parameters
    ----------
    packed
        ``api.pack(params)`` (``kernels.pack_params``, or an ensemble's
        ``kernels.structs.Ensemble``), passed to the kernel as it is.
    chunk_start, chunk_len : int
        Global index of the first trajectory and number of trajectories.
    cfg : ChunkConfig
    x0 : ndarray, optional
        The study's array of initial states (``cfg.init == "array"``).

    Returns
    -------
    logr : ndarray of float64, shape (chunk_len, N + 1)
        ``log r_n`` per trajectory (NaN from the first non-finite layer on).
    status : ndarray of int64, shape (chunk_len,)
        ``kernels.STATUS_OK`` or the first non-finite layer.
    """
    states = None
    if cfg.init != "normal":  # "normal": drawn in the kernel, as before x0 existed
        states = initial.chunk_states(
            cfg.init, x0, chunk_start, chunk_len, cfg.seq_len, cfg.d, np.dtype(cfg.dtype), cfg.seed
        )
    return _run_kernel(packed, chunk_start, chunk_len, cfg, states)


def _run_kernel(packed, chunk_start, chunk_len, cfg, states):
    """:func:`chunk_log_ratios` once the chunk's initial states are known (``states``
    ``(chunk_len, T, d)``, or None: drawn in the kernel)."""
    logr = np.empty((chunk_len, cfg.h.shape[0] + 1), dtype=np.float64)
    status = np.empty(chunk_len, dtype=np.int64)
    like = np.empty((cfg.seq_len, cfg.d), dtype=cfg.dtype)
    kernels.decay_kernel(
        cfg.mode,
        packed,
        cfg.a,
        cfg.b,
        cfg.h,
        cfg.sigma,
        cfg.seed,
        chunk_start,
        cfg.eps,
        like,
        logr,
        status,
        states,
    )
    return logr, status


def decay_chunk(chunk_start, chunk_len, packed, cfg, x0=None):
    """The study's chunk function: a pure function from its inputs to its statistics.

    This is the unit of work the runner (:func:`.runner.run_chunks`, ``shared=(packed,
    cfg)``) may ship anywhere: the result depends only on the arguments (not on the
    thread count or the process), and the results of consecutive chunks merge with
    :meth:`DecayStats.merge` in chunk order.

    Parameters
    ----------
    chunk_start, chunk_len : int
        Global index of the first trajectory and number of trajectories.
    packed
        ``api.pack(params)``.
    cfg : ChunkConfig
    x0 : ndarray, optional
        The study's array of initial states (``shared=(packed, cfg, x0)``).

    Returns
    -------
    DecayStats
    """
    logr, status = chunk_log_ratios(packed, chunk_start, chunk_len, cfg, x0)
    return DecayStats.from_chunk(logr, status, chunk_start, cfg.t, cfg.log_bound)


# ======================================================================== result
def classify(rate_ci, mean_last, std_last, count):
    """Plain regime string from the measured decay.

    ``"expanding"`` when the rate CI lies above 0 or the final mean ``log r_N`` is
    significantly positive; ``"contractive"`` when the rate CI lies below 0 *and* the
    final mean ``log r_N`` is significantly negative; ``"neutral"`` otherwise (also
    when the CI is undefined). An expanding model is therefore never "contractive".
    ``"undetermined"`` (:data:`UNDETERMINED`) when no trajectory is valid.
    """
    lo, hi = rate_ci
    se = std_last / math.sqrt(count) if count > 1 and np.isfinite(std_last) else math.inf
    if count == 0:
        return UNDETERMINED
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "neutral"
    if lo > 0 or mean_last - 1.96 * se > 0:
        return "expanding"
    if hi < 0 and mean_last + 1.96 * se < 0:
        return "contractive"
    return "neutral"


#: The kind of each entry of a result file (:func:`.serialize.read_json_entries`).
_JSON_KINDS = {
    "rate": "real",
    "rate_ci": "pair",
    "lambda_hat": "real",
    "L_hat": "real",
    "bound_holds": "bool_or_null",  # null: undetermined
    "fraction_above_bound": "real",
    "regime": "str",
    "stats": "columns",
    "n_trajectories": "int",
    "n_valid": "int",
    "n_nonfinite": "int",
    "nonfinite_indices": "ints",
    "nonfinite_layers": "ints",
    "config": "dict",
    "meta": "dict",
}


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
        One-sided Lipschitz estimate: max over sampled states of ``λ_max((J+Jᵀ)/2)``
        (NaN when undetermined: no finite sampled state, or a Jacobian that overflows;
        ``meta["lambda_note"]`` says why).
    L_hat : float
        Lipschitz estimate: max over sampled states of ``σ_max(J)``.
    bound_holds : bool or None
        Every valid trajectory satisfied ``r_n ≤ exp(λ̂ t_n)·(1 + bound_rtol)``; None
        (undetermined) when no trajectory is valid or λ̂ is NaN.
    fraction_above_bound : float
        Fraction of valid trajectories that did not (NaN when undetermined).
    regime : str
        ``"contractive"``, ``"neutral"``, ``"expanding"`` or ``"undetermined"`` (no
        valid trajectory; see :func:`classify`).
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
        Versions, machine, timings, throughput, how the estimates were formed, and
        ``compile``: whether kernels compiled before the study (``compiled``), in a
        second process too (``second_process``), and the seconds it took.
    """

    rate: float
    rate_ci: tuple
    lambda_hat: float
    L_hat: float
    bound_holds: bool | None
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
        return jsonable(d)

    def to_json(self, path):
        """Write the result (configuration, versions, machine, timings, statistics).

        The file is written to a temporary name and renamed, so ``path`` holds the old
        result or the new one, never a truncated file.
        """
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        output.write_text(path, text)

    def save(self, out_dir="results/decay", stem="decay", plot=True):
        """Write ``<stem>.csv``, ``<stem>.png`` and ``<stem>.json`` into ``out_dir``
        as one set: every file goes to a temporary name first and all are renamed
        once all were written, the JSON last; on an error nothing of a previous set
        in ``out_dir`` changes. ``out_dir`` is checked first (``ValueError`` or
        ``PermissionError`` naming ``out_dir``) and created when missing.

        Returns
        -------
        list of str
            The paths written, the JSON last.
        """
        with output.ResultSet(out_dir, name="out_dir") as rs:
            self.to_csv(rs.path(f"{stem}.csv"))
            if plot:
                self.plot(rs.path(f"{stem}.png"))
            self.to_json(rs.path(f"{stem}.json"))
        return rs.paths

    @classmethod
    def from_json(cls, path):
        """Read a result written by :meth:`to_json`.

        Raises
        ------
        FileNotFoundError
            No file at ``path``.
        ValueError
            The file is not a result written by :meth:`to_json` (not JSON, or an entry
            missing or malformed); the message names the file and the entry.
        """
        d = read_json_entries(path, _JSON_KINDS, "a DecayResult file written by to_json()")
        stats = {}
        for k, val in d["stats"].items():
            exact = k in ("layer", "count")
            stats[k] = np.array(val) if exact else np.array([float_or_nan(x) for x in val])
        return cls(
            rate=float_or_nan(d["rate"]),
            rate_ci=tuple(float_or_nan(x) for x in d["rate_ci"]),
            lambda_hat=float_or_nan(d["lambda_hat"]),
            L_hat=float_or_nan(d["L_hat"]),
            bound_holds=d["bound_holds"],
            fraction_above_bound=float_or_nan(d["fraction_above_bound"]),
            regime=d["regime"],
            stats=stats,
            n_trajectories=d["n_trajectories"],
            n_valid=d["n_valid"],
            n_nonfinite=d["n_nonfinite"],
            nonfinite_indices=d["nonfinite_indices"],
            nonfinite_layers=d["nonfinite_layers"],
            config=d["config"],
            meta=d["meta"],
        )

    def to_csv(self, path):
        """Write the per-layer statistics of ``log r_n`` as CSV (one row per layer)."""
        cols = list(self.stats)
        rows = np.column_stack([np.asarray(self.stats[c], dtype=np.float64) for c in cols])
        fmt = ["%d" if c in ("layer", "count") else "%.10g" for c in cols]
        with output.atomic_path(path) as tmp:
            np.savetxt(tmp, rows, delimiter=",", header=",".join(cols), comments="", fmt=fmt)

    def plot(self, path):
        """Semilog-y figure of r_n against layer: quantile bands, median, mean, bound.

        The mean curve is ``exp(mean log r_n)`` (the geometric mean of r_n). When some
        ``log r`` lies beyond the float range of ``r`` (|log r| > 700) the axis shows
        ``log r_n`` itself. The bound ``exp(λ̂ t_n)`` is clipped to a little beyond the
        data (the legend says so); without a valid trajectory the figure says that.
        Never raises on inf or NaN.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = self.stats
        n = s["layer"]
        names = (*QUANTILE_NAMES, "mean")
        data = np.concatenate([np.asarray(s[c], dtype=np.float64) for c in names])
        data = data[np.isfinite(data)]
        as_log = data.size > 0 and float(np.abs(data).max()) > 700.0

        def y(v):
            v = np.asarray(v, dtype=np.float64)
            return v if as_log else np.exp(v)

        fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
        for lo, hi, alpha in (("q01", "q99", 0.15), ("q05", "q95", 0.25), ("q25", "q75", 0.4)):
            ax.fill_between(
                n,
                y(s[lo]),
                y(s[hi]),
                color="C0",
                alpha=alpha,
                lw=0,
                label=f"{int(lo[1:])}–{int(hi[1:])} %",
            )
        ax.plot(n, y(s["q50"]), color="C0", lw=1.2, label="median")
        ax.plot(
            n,
            y(s["mean"]),
            color="k",
            lw=1.2,
            ls="-.",
            label="mean log r" if as_log else "exp(mean log r)",
        )
        if np.isfinite(self.lambda_hat):
            log_bound = self.lambda_hat * np.asarray(s["t"], dtype=np.float64)
            label = f"bound exp(λ̂ t), λ̂ = {self.lambda_hat:.3g}"
            if data.size:
                lo, hi = float(data.min()), float(data.max())
                pad = max(5.0, 0.5 * (hi - lo))
                lo, hi = lo - pad, hi + pad
                if not as_log:
                    lo, hi = max(lo, -600.0), min(hi, 600.0)
                if np.any((log_bound < lo) | (log_bound > hi)):
                    log_bound = np.clip(log_bound, lo, hi)
                    label += " (clipped to the axes)"
                ax.plot(n, y(log_bound), color="C3", ls="--", label=label)
        if not data.size:
            ax.text(
                0.5,
                0.5,
                "no valid trajectory: nothing to plot"
                + (f"\n(λ̂ = {self.lambda_hat:.3g})" if np.isfinite(self.lambda_hat) else ""),
                transform=ax.transAxes,
                ha="center",
                va="center",
            )
        if data.size and not as_log:
            ax.set_yscale("log")
        ax.set_xlabel("layer n")
        what = (
            "‖δ_n‖ / ‖δ_0‖" if self.config.get("mode") == "tangent" else "‖X_n − Y_n‖ / ‖X_0 − Y_0‖"
        )
        ax.set_ylabel(f"log r_n, r_n = {what}" if as_log else f"r_n = {what}")
        lo, hi = self.rate_ci
        ax.set_title(
            f"{self.n_valid:,} trajectories ({self.config.get('mode')} mode): "
            f"rate {self.rate:.3g} [{lo:.3g}, {hi:.3g}]",
            fontsize=10,
        )
        if data.size:
            ax.legend(fontsize=8, loc="best")
        try:
            with output.atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=120)
        finally:
            plt.close(fig)

    def summary(self):
        """A short human-readable table."""
        lo, hi = self.rate_ci
        half = (hi - lo) / 2
        m = self.meta
        rows = [
            ("trajectories", f"{self.n_trajectories:,} ({self.n_valid:,} valid)"),
            (
                "layers",
                f"{self.config['n_layers']} ({self.config['method']}, "
                f"t_final={self.config['t_final']})",
            ),
            (
                "mode",
                f"{self.config['mode']} (eps={self.config['eps']:g})"
                if self.config["mode"] == "pair"
                else "tangent",
            ),
            (
                "rate (95% CI)",
                f"{self.rate:.5g} ± {half:.2g}"
                if self.n_valid
                else "undetermined (no valid trajectory)",
            ),
            (
                "lambda_hat",
                f"{self.lambda_hat:.5g}   (L_hat {self.L_hat:.4g})"
                + ("   of the layer map" if m.get("lambda_object") == "layer map" else ""),
            ),
            (
                "bound holds",
                f"{self.bound_holds} ({self.fraction_above_bound:.3g} above)"
                if self.bound_holds is not None
                else "undetermined"
                + (" (no valid trajectory)" if not self.n_valid else " (lambda_hat is NaN)"),
            ),
            ("regime", self.regime),
            *(
                [("lambda note", m["lambda_note"])]
                if math.isnan(self.lambda_hat) and m.get("lambda_note")
                else []
            ),
            (
                "non-finite",
                f"{self.n_nonfinite:,}"
                + (f" (first: {self.nonfinite_indices[:3]})" if self.n_nonfinite else ""),
            ),
            ("throughput", f"{float_or_nan(m['throughput']):.4g} trajectory-layers/s"),
            ("wall time", f"{m['wall_time_s']:.1f} s"),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {val}" for k, val in rows)


# =========================================================================== API
def _check_args(
    params,
    n_trajectories,
    seq_len,
    n_layers,
    method,
    t_final,
    alpha,
    c,
    noise,
    eps,
    mode,
    seed,
    chunk_size,
    n_threads,
    progress,
    lambda_samples,
    bound_rtol,
    client,
    checkpoint=None,
    x0="normal",
):
    """Validate every argument of :func:`perturbation_decay`; return the normalized ones."""
    a, b, h, sigma = api.prepare_run(params, n_layers, method, t_final, alpha, c, noise)
    # Trajectory g is keyed by the int64 index g < 2**63.
    n_trajectories = v.check_int(
        "n_trajectories", n_trajectories, minimum=1, maximum=v.MAX_SEED + 1
    )
    seq_len = v.check_int("seq_len", seq_len, minimum=1)
    mode_code = v.check_choice("mode", mode, MODES)
    dt_name = params.dtype.name
    if eps is None:
        eps = DEFAULT_EPS[dt_name]
    elif mode_code == MODES["pair"]:
        eps = check_eps(eps, params.dtype, seq_len * params.d)
    else:  # ignored in tangent mode
        eps = v.check_float("eps", eps, minimum=0.0, strict=True)
    seed = v.check_seed("seed", seed)
    chunk_size = (
        config.CHUNK_SIZE
        if chunk_size is None
        else v.check_int("chunk_size", chunk_size, minimum=1)
    )
    threads.check_n_threads(n_threads)
    v.check_bool("progress", progress)
    lambda_samples = v.check_int("lambda_samples", lambda_samples, minimum=1)
    # The largest arrays: a chunk's log r_n and the states sampled for λ̂.
    v.check_size(
        "min(`chunk_size`, `n_trajectories`) × (`n_layers` + 1)",
        (min(chunk_size, n_trajectories), len(h) + 1),
        np.float64,
    )
    v.check_size("`lambda_samples` × `seq_len` × d", (lambda_samples, seq_len, params.d), dt_name)
    bound_rtol = (
        DEFAULT_BOUND_RTOL[dt_name]
        if bound_rtol is None
        else v.check_float("bound_rtol", bound_rtol, minimum=0.0)
    )
    runner.check_client(client)
    if checkpoint is not None:
        checkpoint = ckpt.check_path(checkpoint, "checkpoint")
    init, x0_states = initial.check_x0(x0, params, n_trajectories, seq_len)
    return dict(
        init=init,
        x0=x0_states,
        a=a,
        b=b,
        h=h,
        sigma=sigma,
        n_trajectories=n_trajectories,
        seq_len=seq_len,
        mode=mode_code,
        eps=eps,
        seed=seed,
        chunk_size=chunk_size,
        lambda_samples=lambda_samples,
        bound_rtol=bound_rtol,
        checkpoint=checkpoint,
    )


def log_ratios(
    params,
    n_trajectories,
    seq_len,
    n_layers,
    *,
    start=0,
    method="euler",
    t_final=1.0,
    alpha=None,
    c=1.0,
    noise=0.0,
    eps=None,
    mode="pair",
    seed=0,
    n_threads=None,
    x0="normal",
):
    """Per-trajectory ``log r_n`` of trajectories ``start … start + n_trajectories − 1``.

    The raw output behind :func:`perturbation_decay` (one kernel call, memory
    ``n_trajectories × (N + 1)``). Each row depends only on the trajectory's global
    index, never on the batch split or thread count.

    Parameters
    ----------
    params, n_trajectories, seq_len, n_layers
        As for :func:`perturbation_decay`.
    start : int
        Global index of the first trajectory.
    method, t_final, alpha, c, noise, eps, mode, seed, n_threads
        As for :func:`perturbation_decay`.
    x0 : {"normal", "sphere"} or ndarray, shape (n_trajectories, seq_len, d)
        As for :func:`perturbation_decay`; an array holds these trajectories' states
        (row i is trajectory ``start + i``).

    Returns
    -------
    logr : ndarray of float64, shape (n_trajectories, N + 1)
    status : ndarray of int64
        ``kernels.STATUS_OK`` (-1) or the first non-finite layer.
    """
    k = _check_args(
        params,
        n_trajectories,
        seq_len,
        n_layers,
        method,
        t_final,
        alpha,
        c,
        noise,
        eps,
        mode,
        seed,
        None,
        n_threads,
        False,
        1,
        None,
        None,
        x0=x0,
    )
    start = v.check_int("start", start, minimum=0)
    cfg = _chunk_config(params, k, 0.0)
    packed = api.pack(params)
    with threads.threads(n_threads):
        if k["init"] == "array":  # row i of x0 is trajectory start + i
            return _run_kernel(packed, start, k["n_trajectories"], cfg, k["x0"])
        return chunk_log_ratios(packed, start, k["n_trajectories"], cfg)


def _chunk_config(params, k, lambda_hat):
    """The :class:`ChunkConfig` of a study: ``k`` from :func:`_check_args`, the bound
    ``log r_n ≤ λ̂·t_n + log(1 + bound_rtol)`` (none when λ̂ is not finite)."""
    t = np.concatenate([[0.0], np.cumsum(k["h"].astype(np.float64))])
    log_bound = (
        lambda_hat * t + math.log1p(k["bound_rtol"])
        if np.isfinite(lambda_hat)
        else np.full(t.shape, np.inf)
    )
    return ChunkConfig(
        mode=k["mode"],
        seed=k["seed"],
        eps=k["eps"],
        seq_len=k["seq_len"],
        d=params.d,
        dtype=params.dtype.name,
        a=k["a"],
        b=k["b"],
        h=k["h"],
        sigma=k["sigma"],
        t=t,
        log_bound=log_bound,
        init=k["init"],
    )


def perturbation_decay(
    params,
    n_trajectories,
    seq_len,
    n_layers,
    *,
    method="euler",
    t_final=1.0,
    alpha=None,
    c=1.0,
    noise=0.0,
    eps=None,
    mode="pair",
    seed=0,
    chunk_size=None,
    n_threads=None,
    progress=False,
    lambda_samples=64,
    bound_rtol=None,
    client=None,
    checkpoint=None,
    x0="normal",
):
    """Monte Carlo study of how perturbations grow or decay across the layers.

    Parameters
    ----------
    params : TransformerParams or WeightEnsemble
        The model; float32 or float64. With a :class:`~tfkernels.WeightEnsemble`
        trajectory g runs member g's weights (drawn in the kernel, row layout), and
        λ̂, L̂ are the largest estimates over the first members, each on its own
        trajectory (:func:`.lipschitz.estimate_ensemble`).
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
        1e-6). An ε that vanishes in the state dtype (below ``eps_mach·√(T·d)``) or
        overflows it (from ``√max / 2^10``) is a ``ValueError`` (:func:`eps_range`);
        one larger than the states (``√(T·d)``) a ``UserWarning``. Range-checked in
        pair mode only; ignored in tangent mode.
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
        Show a tqdm progress bar over the trajectories, advancing chunk by chunk.
    lambda_samples : int
        Number of states sampled along trajectories for λ̂ and L̂.
    bound_rtol : float, optional
        A trajectory is above the bound when ``r_n > exp(λ̂ t_n)·(1 + bound_rtol)``
        for some n (default 1e-6 for float64, 1e-2 for float32).
    client : dask.distributed.Client, optional
        Run the chunks as tasks on this Dask cluster (see
        :mod:`tfkernels.studies.distributed`): the parameters are scattered once, each
        chunk runs :func:`decay_chunk` on a worker (with ``n_threads`` or the worker's
        thread count as Numba threads), and the results are merged on the client in
        chunk order, so the statistics are bit-identical to the local run with the
        same seed and chunk size. None (the default) runs locally and does not import
        dask.
    checkpoint : str or os.PathLike, optional
        A file for the merged statistics and the next chunk index, written
        atomically every few seconds, at the end and when the study stops (see
        :func:`.runner.run_chunks`). If the file exists, the study resumes from it:
        only the remaining chunks run and the result is bit-identical to an
        uninterrupted run with the same seed and chunk size (locally or on any Dask
        cluster). A file written with other arguments (model, trajectories, layers,
        method, mode, seed, chunk size, dtype, ...) is refused. The file is kept: the
        same call again returns the same statistics without running a chunk.
    x0 : {"normal", "sphere"} or ndarray, shape (n_trajectories, seq_len, d)
        The initial states X_0 (:mod:`tfkernels.studies.initial`): ``"normal"`` (the
        default, drawn in the kernel from ``(seed, trajectory)``), ``"sphere"`` (the
        same draws, each token divided by its norm) or an array of the parameters'
        dtype, trajectory g starting at ``x0[g]`` (chunked like the rest; on Dask it
        is scattered to the workers). The λ̂ estimate samples states along
        trajectories started from the same X_0.

    Returns
    -------
    DecayResult
        ``meta["partial"]`` is False; ``meta["resumed_chunks"]`` counts the chunks
        taken from ``checkpoint``.

    Raises
    ------
    TypeError, ValueError
        On invalid arguments, naming the argument, before any kernel runs;
        ``checkpoint`` is not a checkpoint, or was written with other arguments
        (ValueError naming ``checkpoint`` and what differs).
    NotImplementedError
        ``client`` is not a ``dask.distributed.Client``.
    tfkernels.studies.runner.StudyInterrupted
        Ctrl-C (a ``KeyboardInterrupt``) stopped the study. Locally the chunk that
        was running is finished first (a second Ctrl-C gives it up); on Dask the
        chunks in flight are cancelled. Its ``result`` is the :class:`DecayResult` of
        the chunks merged so far, with ``meta["partial"]`` True and
        ``meta["n_trajectories_done"]``, or None if no chunk was merged; the
        checkpoint, if any, was written first, so the same call resumes.

    Notes
    -----
    Pair mode renormalizes (as ChaosTools' ``lyapunov``): whenever ``‖X_n − Y_n‖``
    leaves ``[d0/2^10, d0·2^10]`` (``d0 = ‖X_0 − Y_0‖``, ``config.PAIR_BAND``) or falls
    below ``2^24·u·‖X_n‖`` (float64; ``2^8·u·‖X_n‖`` in float32, u the unit roundoff:
    ``config.PAIR_FLOOR_F64``, ``PAIR_FLOOR_F32``), ``Y_n − X_n`` is rescaled back to
    ``d0`` (at least ``16·2^24·u·‖X_n‖``) and the log of the factor is added to every
    later ``log r``. So ``log r_n`` is the cumulative log growth of a perturbation kept
    small and far above the rounding of X: it follows the tangent mode at any
    contraction or expansion, float32 included. The default study never leaves the
    band. ``‖X − Y‖`` and ``‖δ‖`` of finite states are computed without overflow or
    underflow (scaled by the largest entry where the plain sum of squares is not a
    normal float).

    Statistics per layer are streamed (:class:`DecayStats`): count, mean and std of
    ``log r_n`` (Chan's merge), min/max, and quantiles from a sparse histogram with
    bins of width 1/1024: every reported quantile is within 1/2048 in ``log r`` (0.05 %
    in r) of ``np.quantile(log_r, q, method="lower")``, for any finite ``log r``; a
    layer spread over more than 2048 keeps bins of ``2^k/1024`` (its accuracy is
    ``meta["quantile_accuracy_log_r"]``), and a quantile beyond ``|log r| = 2^40`` is
    NaN with a ``RuntimeWarning``. Trajectories that become non-finite (state or r_n,
    including r_n = 0 when X and Y collapse in floating point) are excluded and
    counted. With none left the result is undetermined: ``regime="undetermined"``,
    ``bound_holds=None``, NaN rate, and a ``RuntimeWarning``. Memory is
    ``O(chunk_size × N)`` plus the sketch (at most ``2^21`` bins per layer),
    independent of ``n_trajectories``.

    A Ctrl-C waits for the running chunk: about a second or less with the default
    ``chunk_size``; a larger one makes it wait longer.

    Examples
    --------
    >>> import tfkernels as tfk
    >>> p = tfk.TransformerParams.random(d=8, n_heads=2, damping=3.0, seed=0)
    >>> res = tfk.perturbation_decay(p, 256, seq_len=4, n_layers=8, seed=1)
    >>> res.regime, res.bound_holds
    ('contractive', True)
    """
    k = _check_args(
        params,
        n_trajectories,
        seq_len,
        n_layers,
        method,
        t_final,
        alpha,
        c,
        noise,
        eps,
        mode,
        seed,
        chunk_size,
        n_threads,
        progress,
        lambda_samples,
        bound_rtol,
        client,
        checkpoint,
        x0,
    )
    run = dict(method=method, t_final=t_final, alpha=alpha, c=c, noise=noise)
    info = None
    if k["checkpoint"] is not None:
        info = _checkpoint_info(params, k, run, n_layers)
        _check_checkpoint(k, info)  # before anything compiles
    t_begin = time.perf_counter()
    with threads.threads(n_threads), _notice(progress, k, client, params):
        pl = _prepare(params, k, run, n_layers, client, info)
        return plans.run_plan(
            pl,
            n_threads=n_threads,
            progress=progress,
            client=client,
            checkpoint=k["checkpoint"],
            t_begin=t_begin,
        )


def plan(params, n_trajectories, seq_len, n_layers, *, client=None, **kwargs):
    """The :class:`~.plans.Plan` of :func:`perturbation_decay` with these arguments:
    validated, its kernels compiled and λ̂ estimated (the chunks have not run).

    ``kwargs`` are :func:`perturbation_decay`'s study arguments (``method``,
    ``t_final``, ``alpha``, ``c``, ``noise``, ``eps``, ``mode``, ``seed``,
    ``chunk_size``, ``lambda_samples``, ``bound_rtol``, ``x0``); ``client`` only says
    where the chunks will run (their kernels then compile on the workers).
    """
    k, run = check_study_args(params, n_trajectories, seq_len, n_layers, **kwargs)
    return _prepare(params, k, run, n_layers, client, _checkpoint_info(params, k, run, n_layers))


def check_study_args(
    params,
    n_trajectories,
    seq_len,
    n_layers,
    *,
    method="euler",
    t_final=1.0,
    alpha=None,
    c=1.0,
    noise=0.0,
    eps=None,
    mode="pair",
    seed=0,
    chunk_size=None,
    lambda_samples=64,
    bound_rtol=None,
    x0="normal",
):
    """Validate the study arguments of :func:`perturbation_decay` (those of
    :func:`plan`); return ``(k, run)``: the normalized arguments and the update."""
    k = _check_args(
        params,
        n_trajectories,
        seq_len,
        n_layers,
        method,
        t_final,
        alpha,
        c,
        noise,
        eps,
        mode,
        seed,
        chunk_size,
        None,
        False,
        lambda_samples,
        bound_rtol,
        None,
        None,
        x0,
    )
    return k, dict(method=method, t_final=t_final, alpha=alpha, c=c, noise=noise)


def _prepare(params, k, run, n_layers, client, info):
    """Compile the kernels, estimate λ̂ and return the study's :class:`~.plans.Plan`
    (``k`` from :func:`_check_args`, ``info`` the checkpoint's configuration or None)."""
    packed = api.pack(params)
    compiled = _compile_kernels(params, packed, k, run, n_layers, client)
    lam, lip, linfo = estimate_lipschitz(
        params,
        k["seq_len"],
        n_layers,
        n_samples=k["lambda_samples"],
        seed=k["seed"],
        run=run,
        x0=_lipschitz_x0(params, k, n_layers),
    )
    cfg = _chunk_config(params, k, lam)

    def finish(chunks, env, wall):
        env["compile"] = compiled
        return _make_result(params, k, run, n_layers, chunks, cfg, (lam, lip, linfo), env, wall)

    return plans.Plan(
        chunk_fn=decay_chunk,
        shared=(packed, cfg) if k["x0"] is None else (packed, cfg, k["x0"]),
        n_trajectories=k["n_trajectories"],
        chunk_size=k["chunk_size"],
        finish=finish,
        name="perturbation_decay",
        checkpoint_info=info,
        desc="decay",
    )


def _lipschitz_x0(params, k, n_layers):
    """The initial states of the trajectories the λ̂ estimate samples along (None:
    ``"normal"``, which it draws itself)."""
    if k["init"] == "normal":
        return None
    n = min(k["n_trajectories"], lipschitz.n_sampled_trajectories(n_layers, k["lambda_samples"]))
    return initial.chunk_states(
        k["init"], k["x0"], 0, n, k["seq_len"], params.d, params.dtype, k["seed"]
    )


def _compile_kernels(params, packed, k, run, n_layers, client):
    """Compile (or load from Numba's cache) every kernel the study will call, before it
    starts: the λ̂ estimate's JVP kernels in a second process while this one compiles
    the flow and the decay mode's kernels (:func:`tfkernels.compiling.prepare`). On a
    cluster the chunks' kernels compile on the workers, not here. Returns what
    ``prepare`` returns (recorded in the result's ``meta["compile"]``); ``packed`` is
    ``api.pack(params)``, the chunks' shared input."""
    p64 = params if params.dtype == np.float64 else params.astype(np.float64)
    if is_ensemble(params):  # λ̂ is estimated member by member (lipschitz.estimate_ensemble)
        params, p64 = params.member(0, n_layers), p64.member(0, n_layers)
    here = [(compile_sampling, (params, k["seq_len"], n_layers, run, k["seed"]))]
    if client is None:
        cfg = _chunk_config(params, k, math.nan)
        shared = (packed, cfg) if k["x0"] is None else (packed, cfg, k["x0"])
        here.append((decay_chunk, (0, 1, *shared)))
    there = []
    if jacobian_object(params) == "vector field":  # a layer map's compiles when used
        lanczos = params.norm is None  # a field with a norm is formed densely: no VJP
        shape = (k["seq_len"], params.d, lipschitz.DENSE_MAX, lanczos)
        there = [(compile_jacobian, (kernels.pack_params(p64), *shape))]
    return compiling.prepare(here, there)


def _notice(progress, k, client, params):
    """The one-line compile notice of a study run with a progress bar (else nothing)."""
    if not progress:
        return contextlib.nullcontext()
    mode = next(m for m, code in MODES.items() if code == k["mode"])
    here = ["flow"] + ([mode] if client is None else [])
    there = ["jacobian"] if jacobian_object(params) == "vector field" else []
    return compiling.notice(estimate_s=compiling.estimate((here, there)))


def _checkpoint_info(params, k, run, n_layers):
    """What a checkpoint of the study records beside the runner's keys: the study's
    configuration (:func:`_study_config`) without ``n_trajectories`` and ``chunk_size``."""
    conf = _study_config(params, k, run, n_layers)
    info = {"study": "perturbation_decay"}
    info.update({key: val for key, val in conf.items() if key not in runner.CONFIG_KEYS})
    return info


def _check_checkpoint(k, info):
    """Refuse an existing checkpoint of another study configuration before any kernel
    runs (the runner compares the rest, the shared inputs included, when it opens it)."""
    path = k["checkpoint"]
    expected = ckpt.normalize(
        dict(info, n_trajectories=k["n_trajectories"], chunk_size=k["chunk_size"])
    )
    ckpt.check_config(ckpt.read_header(path), expected, path, "checkpoint", keys=expected)


def _study_config(params, k, run, n_layers):
    """The ``config`` of the study's :class:`DecayResult`."""
    mode_name = next(m for m, code in MODES.items() if code == k["mode"])
    alpha = run["alpha"]
    return {
        "n_trajectories": k["n_trajectories"],
        "seq_len": k["seq_len"],
        "n_layers": n_layers,
        "method": run["method"],
        "t_final": run["t_final"],
        "alpha": alpha if alpha is None or isinstance(alpha, str) else np.asarray(alpha),
        "c": run["c"],
        "noise": np.asarray(run["noise"]),
        "eps": k["eps"],
        "mode": mode_name,
        "x0": initial.describe(k["init"], k["x0"]),
        "seed": k["seed"],
        "chunk_size": k["chunk_size"],
        "lambda_samples": k["lambda_samples"],
        "bound_rtol": k["bound_rtol"],
        "params": params_summary(params),
    }


def _make_result(params, k, run, n_layers, chunks, cfg, estimates, env, wall):
    """Assemble the :class:`DecayResult` from the runner's merged statistics (those of
    the chunks merged so far when the run was interrupted)."""
    lam, lip, linfo = estimates
    stats = chunks.stats
    table = stats.per_layer(cfg.t, lam * cfg.t + 0.0)
    rate, ci, ci_how = rate_estimate(stats, cfg.t)
    regime = classify(ci, table["mean"][-1], table["std"][-1], stats.count)
    if not stats.count or math.isnan(lam):
        bound_holds, frac = None, math.nan
    else:  # λ̂ = +inf: the bound holds trivially
        bound_holds, frac = stats.n_above == 0, stats.n_above / stats.count
    if not stats.count:
        first = f" (the first, {stats.bad_index[0]}, at layer {stats.bad_layer[0]})"
        warnings.warn(
            f"perturbation_decay: none of the {stats.n_trajectories} trajectories stayed "
            f"finite{first if stats.bad_index else ''}; the rate, the bound check and the "
            "regime are undetermined",
            RuntimeWarning,
            stacklevel=3,
        )
    out_of_range = int(stats.quantiles_out_of_range().sum()) if stats.count else 0
    if out_of_range:
        warnings.warn(
            f"perturbation_decay: {out_of_range} per-layer quantile(s) of log r lie beyond "
            f"±{HIST_RANGE:g}, outside the quantile sketch, and are reported as NaN",
            RuntimeWarning,
            stacklevel=3,
        )
    conf = _study_config(params, k, run, n_layers)
    n_run = chunks.n_done - chunks.n_resumed  # trajectories this call computed
    meta = dict(env)
    meta.update(
        {
            "partial": chunks.partial,
            "n_trajectories_done": chunks.n_done,
            "n_chunks_done": chunks.next_chunk,
            "resumed_chunks": chunks.next_chunk - chunks.n_run,
            "checkpoint": chunks.checkpoint,
            "wall_time_s": wall,
            "loop_time_s": chunks.loop_time,
            "throughput": n_run * n_layers / chunks.loop_time if n_run else math.nan,
            "throughput_unit": "trajectory-layers per second over the chunk loop "
            "(the chunks this call ran)",
            "n_chunks": chunks.n_chunks,
            "rate_ci_method": ci_how,
            "lambda_method": linfo["method"],
            "lambda_n_samples": linfo["n_samples"],
            "lambda_note": linfo.get("note"),
            "lambda_object": linfo.get("object"),
            "quantile_accuracy_log_r": float(stats.accuracy().max()),
            "quantile_method": f"histogram over log r, bins of {HIST_WIDTH:g} (of "
            f"{HIST_WIDTH:g}*2^k in a layer spread over more than {HIST_MAX_BINS} of them); "
            "midpoint of the bin of the rank floor(q(n-1)) order statistic, clipped to "
            f"[min, max]; NaN beyond +-{HIST_RANGE:g}",
            "quantiles_out_of_range": out_of_range,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    return DecayResult(
        rate=rate,
        rate_ci=ci,
        lambda_hat=lam,
        L_hat=lip,
        bound_holds=None if bound_holds is None else bool(bound_holds),
        fraction_above_bound=frac,
        regime=regime,
        stats=table,
        n_trajectories=stats.n_trajectories,
        n_valid=stats.count,
        n_nonfinite=stats.n_bad,
        nonfinite_indices=stats.bad_index,
        nonfinite_layers=stats.bad_layer,
        config=conf,
        meta=meta,
    )
