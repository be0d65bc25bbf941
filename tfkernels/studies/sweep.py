"""Sweeps: a study over a grid of one or two settings, run as one run of the runner.

:func:`sweep` prepares the study once per grid point (the same :class:`~.plans.Plan` as
the study alone: :func:`.decay.plan`, :func:`.geometry.plan`) and runs the chunks of
every point through one :func:`.runner.run_chunks` call (locally or on Dask): chunk i of
the sweep is chunk ``i mod K`` of point ``i div K`` (K chunks per point). Each point's
chunks are merged in their order, as in the study alone, so every grid point's result is
bit-identical to the single study run with those settings.
"""

import dataclasses
import inspect
import itertools
import json
import time

import numpy as np

from .. import _validate as v
from .. import threads
from ..ensemble import is_ensemble
from . import checkpoint as ckpt
from . import decay, geometry, output, runner
from .environment import environment
from .serialize import jsonable

#: The studies a sweep runs, by name (aliases included).
STUDIES = {
    "perturbation_decay": "decay",
    "decay": "decay",
    "token_geometry": "geometry",
    "geometry": "geometry",
}
#: Settings of the model: ``params.replace(name=value)``, except ``weight_scale``,
#: which multiplies the weight matrices (``wq, wk, wv, wo, w1, w2, linear``).
PARAM_SETTINGS = ("beta", "damping", "norm_eps", "weight_scale")
#: Settings of the study: keyword arguments of the study, and ``dt`` (the residual
#: scale Δt: ``t_final = dt · n_layers``).
STUDY_SETTINGS = {
    "decay": ("t_final", "dt", "eps", "noise", "c"),
    "geometry": ("t_final", "dt", "noise", "c", "energy_beta"),
}
#: The weight matrices that ``weight_scale`` multiplies.
WEIGHTS = ("wq", "wk", "wv", "wo", "w1", "w2", "linear")
#: The columns of a decay sweep's table, beside the settings.
DECAY_COLUMNS = ("rate", "rate_lo", "rate_hi", "lambda_hat", "n_valid")


# ======================================================================= the grid
def _study_name(study):
    """``"decay"`` or ``"geometry"`` from a study's name or its function."""
    if study is decay.perturbation_decay:
        return "decay"
    if study is geometry.token_geometry:
        return "geometry"
    if isinstance(study, str) and study in STUDIES:
        return STUDIES[study]
    raise ValueError(
        f"`study` must be one of {sorted(STUDIES)} (or tfk.perturbation_decay, "
        f"tfk.token_geometry), got {study!r}"
    )


def check_grid(grid, kind, study_kwargs):
    """Validate a sweep's ``grid``; return it as ``{name: list of float}`` (in order).

    Raises
    ------
    TypeError, ValueError
        Naming ``grid``: not a dict of one or two settings, an unknown setting, a
        setting also given as a study argument, values that are not a non-empty 1-D
        sequence of finite real numbers.
    """
    if not isinstance(grid, dict):
        raise TypeError(f"`grid` must be a dict {{setting: values}}, got {type(grid).__name__}")
    if not 1 <= len(grid) <= 2:
        raise ValueError(f"`grid` must have one or two settings, got {len(grid)}: {list(grid)}")
    valid = PARAM_SETTINGS + STUDY_SETTINGS[kind]
    out = {}
    for name, values in grid.items():
        if not isinstance(name, str) or name not in valid:
            raise ValueError(f"`grid` setting {name!r} is unknown; choose from {list(valid)}")
        if name in study_kwargs or (name == "dt" and "t_final" in study_kwargs):
            raise ValueError(f"`grid` setting {name!r} is also given as a study argument")
        if isinstance(values, (str, bytes)):
            raise TypeError(f"`grid[{name!r}]` must be a sequence of numbers, got {values!r}")
        try:
            arr = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"`grid[{name!r}]` must be a sequence of real numbers, got {values!r:.80}"
            ) from None
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                f"`grid[{name!r}]` must be a non-empty 1-D sequence, got {values!r:.80}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"`grid[{name!r}]` must hold finite numbers, got {values!r:.80}")
        out[name] = [float(x) for x in arr]
    if "dt" in out and "t_final" in out:
        raise ValueError("`grid` cannot set both 'dt' and 't_final' (t_final = dt · n_layers)")
    return out


def apply_settings(params, kwargs, settings):
    """The parameters and study arguments of one grid point.

    Parameters
    ----------
    params : TransformerParams or WeightEnsemble
        (An ensemble's ``weight_scale`` is replaced by the value: the scale every
        member draws with.)
    kwargs : dict
        The study's arguments.
    settings : dict
        ``{setting: value}`` of the point.

    Returns
    -------
    params, kwargs
    """
    kwargs = dict(kwargs)
    changes = {}
    for name, val in settings.items():
        if name == "weight_scale" and is_ensemble(params):
            changes[name] = val
        elif name == "weight_scale":
            for w in WEIGHTS:
                m = getattr(params, w)
                if m is not None:
                    changes[w] = m * m.dtype.type(val)
        elif name in PARAM_SETTINGS:
            changes[name] = val
        elif name == "dt":
            kwargs["t_final"] = val * kwargs["n_layers"]
        else:
            kwargs[name] = val
    return (params.replace(**changes) if changes else params), kwargs


# ========================================================================== chunks
@dataclasses.dataclass
class SweepStats:
    """The merged statistics of consecutive grid points (``stats[k]`` of point
    ``points[k]``; the last one possibly incomplete)."""

    points: list
    stats: list

    def merge(self, other):
        """``self``'s chunks followed by ``other``'s (each point's in its order)."""
        points, stats = list(self.points), list(self.stats)
        for p, s in zip(other.points, other.stats):
            if points and points[-1] == p:
                stats[-1] = stats[-1].merge(s)
            else:
                points.append(p)
                stats.append(s)
        return SweepStats(points, stats)


def sweep_chunk(chunk_start, chunk_len, chunk_fns, shareds, n_trajectories, chunk_size, per_point):
    """The sweep's chunk function: chunk ``i = chunk_start / chunk_size`` is chunk
    ``i mod per_point`` of grid point ``i div per_point`` (the point's last chunk is the
    shorter one of the study alone). Pure, like the studies' chunk functions."""
    del chunk_len  # always chunk_size: the sweep's range is per_point·chunk_size per point
    point, j = divmod(chunk_start // chunk_size, per_point)
    start = j * chunk_size
    length = min(chunk_size, n_trajectories - start)
    return SweepStats([point], [chunk_fns[point](start, length, *shareds[point])])


# ========================================================================== result
@dataclasses.dataclass
class SweepResult:
    """Outcome of :func:`sweep`.

    Attributes
    ----------
    study : str
        ``"perturbation_decay"`` or ``"token_geometry"``.
    grid : dict
        ``{setting: values}``, one or two settings, in order.
    metric : str or None
        The geometry metric of the table (None for decay).
    table : dict of ndarray
        The tidy table: one row per grid point (decay: the settings and
        ``rate, rate_lo, rate_hi, lambda_hat, n_valid``) or per grid point and saved
        time (geometry: the settings, ``t``, the metric's mean as ``<metric>``, its
        ``<metric>_std`` and ``n_valid``); the first setting varies slowest.
    results : list
        The study's result (``DecayResult`` or ``GeometryResult``) of every grid point,
        in the table's order.
    meta : dict
        Versions, machine, timings.
    """

    study: str
    grid: dict
    metric: str
    table: dict
    results: list
    meta: dict

    @property
    def settings(self):
        """The names of the swept settings."""
        return list(self.grid)

    def values(self):
        """The table's value (decay: ``rate``; geometry: the metric's mean) as an array
        of shape ``(len(values_1)[, len(values_2)])``, geometry with a last axis over t."""
        shape = tuple(len(x) for x in self.grid.values())
        col = self.table["rate" if self.metric is None else self.metric]
        return np.asarray(col).reshape(shape + ((-1,) if self.metric is not None else ()))

    def summary(self):
        """A short human-readable table: one line per grid point (decay: the rate and
        its CI; geometry: the metric's mean at the first and the last saved time)."""
        names = list(self.grid)
        shape = tuple(len(x) for x in self.grid.values())
        lines = [f"{self.study} over {' × '.join(names)} ({int(np.prod(shape))} points)"]
        for k, res in enumerate(self.results):
            idx = np.unravel_index(k, shape)
            where = ", ".join(f"{n}={self.grid[n][i]:g}" for n, i in zip(names, idx))
            if self.metric is None:
                lo, hi = res.rate_ci
                val = f"rate {res.rate:.5g} [{lo:.4g}, {hi:.4g}]"
            else:
                col = res.metric(self.metric)
                val = f"{self.metric} {col[0]:.4g} -> {col[-1]:.4g}"
            lines.append(f"  {where}: {val} ({res.n_valid:,} valid)")
        lines.append(f"wall time {self.meta['wall_time_s']:.1f} s")
        return "\n".join(lines)

    def to_dict(self):
        """All fields as JSON-ready values (the per-point results as their dicts)."""
        d = {
            "study": self.study,
            "grid": self.grid,
            "metric": self.metric,
            "table": {k: np.asarray(val) for k, val in self.table.items()},
            "results": [r.to_dict() for r in self.results],
            "meta": self.meta,
        }
        return jsonable(d)

    def to_json(self, path):
        """Write :meth:`to_dict` as JSON, atomically."""
        output.write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    def to_csv(self, path):
        """Write the tidy table as CSV (one row per grid point, or point and time)."""
        output.write_csv(path, self.table, int_columns=("n_valid",))

    def to_xarray(self):
        """The table as an ``xarray.Dataset`` with the settings (and ``t``) as dimensions.

        Raises
        ------
        ImportError
            xarray is not installed (``pip install xarray``).
        """
        try:
            import xarray as xr
        except ImportError as err:
            raise ImportError("SweepResult.to_xarray needs xarray: pip install xarray") from err
        dims = list(self.grid)
        coords = {k: np.asarray(val) for k, val in self.grid.items()}
        shape = tuple(len(x) for x in self.grid.values())
        if self.metric is not None:  # t differs between points that set dt or t_final
            dims.append("layer")
            coords["layer"] = np.asarray(self.results[0].stats["layer"])
            shape += (coords["layer"].size,)
        data = {}
        for k, col in self.table.items():
            if k not in coords:
                data[k] = (dims, np.asarray(col).reshape(shape))
        return xr.Dataset(data, coords=coords, attrs={"study": self.study})

    def save(self, out_dir="results/sweep", stem="sweep", plot=True):
        """Write ``<stem>.csv``, ``<stem>.png`` and ``<stem>.json`` into ``out_dir`` as
        one set (the JSON last). Returns the paths written."""
        return output.save_result(self, out_dir, stem, plot)

    def plot(self, path):
        """A heat map (two settings; geometry with one setting: setting × t, the phase
        diagram) or a line (decay with one setting: the rate and its CI), written
        atomically to ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.grid)
        vals = self.values()
        label = "decay rate" if self.metric is None else f"{self.metric} (mean)"
        fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
        if self.metric is not None and len(names) == 2:
            vals = vals[..., -1]  # the last saved time
            label += f" at t = {float(self.results[0].t[-1]):g}"
        if vals.ndim == 1:
            x = np.asarray(self.grid[names[0]])
            ax.plot(x, vals, "o-", color="C0", label=label)
            lo = np.asarray(self.table["rate_lo"])
            hi = np.asarray(self.table["rate_hi"])
            ax.fill_between(x, lo, hi, color="C0", alpha=0.25, lw=0, label="95 % CI")
            ax.set_xlabel(names[0])
            ax.set_ylabel(label)
            ax.legend(fontsize=8)
        else:
            if len(names) == 2:
                x, y, ylab = self.grid[names[1]], self.grid[names[0]], names[0]
                xlab = names[1]
            elif names[0] in ("dt", "t_final"):  # geometry, one setting of the times
                x, y = np.asarray(self.results[0].stats["layer"]), self.grid[names[0]]
                xlab, ylab = "layer", names[0]
            else:  # geometry, one setting: setting × t (the phase diagram)
                x, y = np.asarray(self.results[0].t), self.grid[names[0]]
                xlab, ylab = "t", names[0]
            mesh = ax.pcolormesh(
                _edges(np.asarray(x)), _edges(np.asarray(y)), vals, shading="flat", cmap="viridis"
            )
            fig.colorbar(mesh, ax=ax, label=label)
            ax.set_xlabel(xlab)
            ax.set_ylabel(ylab)
        ax.set_title(f"{self.study} sweep over {' × '.join(names)}", fontsize=10)
        output.save_figure(fig, path, dpi=120)


def _edges(c):
    """Cell edges around the centres ``c`` (midpoints; one cell of width 1 for one)."""
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


# ============================================================================= API
def _check_study_kwargs(kind, kwargs):
    """Refuse a study argument the study does not take (TypeError naming it)."""
    fn = decay.check_study_args if kind == "decay" else geometry.plan
    allowed = [p for p in inspect.signature(fn).parameters if p != "params"]
    for name in ("n_trajectories", "seq_len", "n_layers"):
        if name not in kwargs:
            raise TypeError(f"sweep() needs the study argument `{name}`")
    for name in kwargs:
        if name not in allowed:
            raise TypeError(
                f"`{name}` is not an argument of the {kind} study in a sweep; choose from {allowed}"
            )


def sweep(
    study,
    params,
    grid,
    *,
    metric="dens",
    n_threads=None,
    progress=False,
    client=None,
    checkpoint=None,
    **study_kwargs,
):
    """Run a study at every point of a grid of one or two settings, as one run.

    Parameters
    ----------
    study : {"perturbation_decay", "token_geometry"} or the function
        The study (aliases ``"decay"``, ``"geometry"``).
    params : TransformerParams or WeightEnsemble
        The model at every grid point, with the point's settings applied.
    grid : dict
        One or two settings, each with a non-empty sequence of values:
        the model's ``beta``, ``damping``, ``norm_eps``, ``weight_scale`` (multiplies
        the weight matrices; of a ``WeightEnsemble``: the scale its members draw
        with), or the study's ``t_final``, ``dt`` (the residual scale
        Δt, ``t_final = dt · n_layers``), ``noise``, ``c`` and ``eps`` (decay) or
        ``energy_beta`` (geometry).
    metric : str
        The geometry metric of the table (:data:`.geometry.METRICS`); ignored by the
        decay study, whose table holds the rate.
    n_threads, progress, client
        As for the study: threads, a progress bar over all the sweep's chunks, a Dask
        client (the chunks of every grid point are tasks of one run).
    checkpoint : str or os.PathLike, optional
        A checkpoint file of the runner (:func:`.runner.run_chunks`) for the whole
        sweep: the merged statistics of every point's chunks so far, resumed when it
        exists (bit-identically: the same result as an uninterrupted sweep), refused
        when written by a sweep of another study, grid, model or arguments.
    **study_kwargs
        The study's other arguments (``n_trajectories``, ``seq_len``, ``n_layers`` are
        required), the same at every point.

    Returns
    -------
    SweepResult

    Raises
    ------
    TypeError, ValueError
        A bad ``study``, ``grid``, ``metric`` or study argument (naming it), or a
        grid point whose settings the study refuses (naming ``grid`` and the point),
        before any chunk runs.
    tfkernels.studies.runner.StudyInterrupted
        Ctrl-C stopped the sweep (its ``result`` is None; with ``checkpoint`` the
        chunks merged so far are in the file, and the same call resumes from it).

    Notes
    -----
    Every grid point's result is bit-identical to the single study run with that
    point's settings and the same other arguments (chunk size included), locally or
    on Dask. The decay study's λ̂ is estimated for each point before the run.

    Examples
    --------
    >>> import tfkernels as tfk
    >>> p = tfk.TransformerParams.random(d=4, n_heads=2, d_ff=8, damping=2.0, seed=0)
    >>> sw = tfk.sweep("perturbation_decay", p, {"damping": [1.0, 3.0]},
    ...                n_trajectories=64, seq_len=3, n_layers=8, lambda_samples=4)
    >>> sw.values().shape
    (2,)
    """
    t_begin = time.perf_counter()
    kind = _study_name(study)
    _check_study_kwargs(kind, study_kwargs)
    grid = check_grid(grid, kind, study_kwargs)
    if kind == "geometry":
        metric = v.check_choice("metric", metric, {m: m for m in geometry.METRICS})
        if metric not in geometry.check_metrics(study_kwargs.get("metrics")):
            raise ValueError(f"`metric` {metric!r} must be one of the study's `metrics`")
    else:
        metric = None
    threads.check_n_threads(n_threads)
    v.check_bool("progress", progress)
    runner.check_client(client)
    if checkpoint is not None:
        checkpoint = ckpt.check_path(checkpoint, "checkpoint")
    names = list(grid)
    points = [dict(zip(names, vals)) for vals in itertools.product(*grid.values())]
    setups = []
    for pt in points:  # every point validated before anything compiles or runs
        try:
            p_pt, kw = apply_settings(params, study_kwargs, pt)
            checked = (
                decay.check_study_args(p_pt, **kw) if kind == "decay" else geometry.plan(p_pt, **kw)
            )
        except (TypeError, ValueError) as err:
            raise type(err)(f"`grid` point {pt}: {err}") from None
        setups.append((p_pt, kw, checked))
    with threads.threads(n_threads):
        if kind == "decay":
            pls = [decay.plan(p_pt, client=client, **kw) for p_pt, kw, _ in setups]
        else:
            pls = [checked for _, _, checked in setups]
        info = {"study": "sweep", "kind": kind, "grid": grid}
        info["points"] = [pl.checkpoint_info for pl in pls]
        res_list, chunks = _run(pls, n_threads, progress, client, t_begin, checkpoint, info)
    table = _table(kind, grid, points, res_list, metric)
    meta = environment()
    meta.update(
        {
            "wall_time_s": time.perf_counter() - t_begin,
            "loop_time_s": chunks.loop_time,
            "n_points": len(points),
            "n_chunks": chunks.n_chunks,
            "resumed_chunks": chunks.next_chunk - chunks.n_run,
            "checkpoint": chunks.checkpoint,
            "per_point_timing": "each point's loop_time_s and throughput are the sweep's "
            "loop time divided by the number of points",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    if chunks.cluster is not None:
        meta["cluster"] = chunks.cluster
    study_name = "perturbation_decay" if kind == "decay" else "token_geometry"
    return SweepResult(study_name, grid, metric, table, res_list, meta)


def _run(pls, n_threads, progress, client, t_begin, checkpoint=None, info=None):
    """Run the plans' chunks as one run of the runner (resumed from ``checkpoint``
    when it exists); finish every point."""
    n, cs = pls[0].n_trajectories, pls[0].chunk_size
    if any(pl.n_trajectories != n or pl.chunk_size != cs for pl in pls):
        raise RuntimeError("grid points with different chunking; this is a bug in tfkernels")
    per_point = len(runner.chunk_bounds(n, cs))
    shared = (
        tuple(pl.chunk_fn for pl in pls),
        tuple(pl.shared for pl in pls),
        n,
        cs,
        per_point,
    )
    try:
        chunks = runner.run_chunks(
            sweep_chunk,
            len(pls) * per_point * cs,
            cs,
            shared=shared,
            client=client,
            n_threads=n_threads,
            progress=progress,
            desc="sweep",
            checkpoint=checkpoint,
            checkpoint_info=info if checkpoint is not None else None,
        )
    except runner.StudyInterrupted:
        raise runner.StudyInterrupted(None, "sweep interrupted") from None
    env = environment()
    if chunks.cluster is not None:
        env["cluster"] = chunks.cluster
    wall = time.perf_counter() - t_begin
    results = []
    resumed = chunks.next_chunk - chunks.n_run  # the sweep's chunks from the checkpoint
    for k, (pl, stats) in enumerate(zip(pls, chunks.stats.stats)):
        assert chunks.stats.points[k] == k
        mine = min(max(resumed - k * per_point, 0), per_point)  # point k's resumed chunks
        one = runner.RunResult(
            stats=stats,
            n_chunks=per_point,
            n_run=per_point - mine,
            loop_time=chunks.loop_time / len(pls),
            cluster=chunks.cluster,
            next_chunk=per_point,
            n_done=n,
            n_resumed=min(mine * cs, n),
            checkpoint=chunks.checkpoint,
        )
        results.append(pl.finish(one, dict(env), wall))
    return results, chunks


def _table(kind, grid, points, results, metric):
    """The tidy table of a sweep (see :class:`SweepResult`)."""
    names = list(grid)
    if kind == "decay":
        table = {name: np.array([pt[name] for pt in points]) for name in names}
        table["rate"] = np.array([r.rate for r in results])
        table["rate_lo"] = np.array([r.rate_ci[0] for r in results])
        table["rate_hi"] = np.array([r.rate_ci[1] for r in results])
        table["lambda_hat"] = np.array([r.lambda_hat for r in results])
        table["n_valid"] = np.array([r.n_valid for r in results])
        return table
    S = results[0].t.shape[0]
    table = {name: np.repeat([pt[name] for pt in points], S) for name in names}
    table["t"] = np.concatenate([r.t for r in results])
    table[metric] = np.concatenate([r.metric(metric) for r in results])
    table[f"{metric}_std"] = np.concatenate([r.metric(metric, "std") for r in results])
    table["n_valid"] = np.repeat([r.n_valid for r in results], S)
    return table
