"""The public API: validate in Python, then call one fused kernel."""

import warnings

import numpy as np

from . import _validate as v
from . import kernels
from .ensemble import WeightEnsemble
from .kernels import rng
from .methods import METHODS, tableau
from .params import TransformerParams
from .threads import check_n_threads, run_threads, threads  # noqa: F401  (re-exported)


def check_params(params, ensemble=False):
    """Raise TypeError unless ``params`` is a TransformerParams (or, with ``ensemble``,
    a WeightEnsemble)."""
    if ensemble and isinstance(params, WeightEnsemble):
        return params
    if isinstance(params, WeightEnsemble):
        raise TypeError(
            "`params` is a tfkernels.WeightEnsemble, which integrate, vector_field, "
            "perturbation_decay, token_geometry, lyapunov_spectrum and sweep take; this "
            "call needs a "
            "TransformerParams: use `params.member(i)`"
        )
    if not isinstance(params, TransformerParams):
        raise TypeError(
            f"`params` must be a tfkernels.TransformerParams"
            f"{' or WeightEnsemble' if ensemble else ''}, got {type(params).__name__}"
        )
    return params


def pack(params):
    """What the kernels take for ``params``: ``kernels.pack_params`` of a
    TransformerParams, the ``kernels.structs.Ensemble`` of a WeightEnsemble."""
    if isinstance(params, WeightEnsemble):
        return params.pack()
    return kernels.pack_params(params)


def check_states(name, X, params):
    """Check a batch of states ``(B, T, d)`` against ``params``; return it C-contiguous."""
    X = v.check_array(name, X, ndim=3)
    if X.dtype != params.dtype:
        raise TypeError(
            f"`{name}` has dtype {X.dtype} but `params` has {params.dtype}; convert one "
            f"with `.astype(...)` or `params.astype(...)`"
        )
    if X.shape[2] != params.d:
        raise ValueError(f"`{name}` has width {X.shape[2]} but `params` has d={params.d}")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"`{name}` must have at least one trajectory and one token, got {X.shape}")
    return X


def check_start(start, batch):
    """Return the first global trajectory index; ``start + batch`` must fit in int64."""
    return v.check_int("start", start, minimum=0, maximum=v.MAX_SEED + 1 - batch)


def random_states(batch, seq_len, d, *, seed=0, start=0, dtype=np.float64, scale=1.0):
    """Draw standard normal initial states from the counter-based generator.

    Trajectory ``start + i`` gets the same state whatever batch it is drawn in.

    Parameters
    ----------
    batch, seq_len, d : int
        Shape ``(B, T, d)`` of the result.
    seed : int
        Seed in ``[0, 2**63 - 1]``.
    start : int
        Global index of the first trajectory (``start + batch <= 2**63``).
    dtype : float32 or float64
    scale : float
        Standard deviation of every entry.

    Returns
    -------
    ndarray, shape (batch, seq_len, d)

    Examples
    --------
    >>> import numpy as np, tfkernels as tfk
    >>> a = tfk.random_states(4, 2, 3, seed=1)
    >>> b = tfk.random_states(2, 2, 3, seed=1, start=2)
    >>> bool(np.array_equal(a[2:], b))
    True
    """
    shape = tuple(
        v.check_int(k, x, minimum=1) for k, x in (("batch", batch), ("seq_len", seq_len), ("d", d))
    )
    seed = v.check_seed("seed", seed)
    dtype = v.check_dtype("dtype", dtype)
    v.check_size("`batch` × `seq_len` × `d`", shape, dtype)
    start = check_start(start, shape[0])
    scale = v.check_fits("scale", v.check_float("scale", scale, minimum=0.0), dtype)
    out = np.empty(shape, dtype=dtype)
    run_threads(
        lambda lo, hi: rng._normal_batch(seed, rng.STREAM_STATE, start + lo, scale, out[lo:hi]),
        shape[0],
    )
    return out


def vector_field(params, X, *, layer=0, start=0, n_threads=None):
    """Evaluate ``f(X)`` for every trajectory of a batch.

    Parameters
    ----------
    params : TransformerParams or WeightEnsemble
        The model; with an ensemble, trajectory ``start + b`` is member ``start + b``
        (``vector_field(ens, X, start=s)[b]`` is the bits of
        ``vector_field(ens.member(s + b, n_layers), X[b:b+1])``, with ``layer``).
    X : ndarray, shape (B, T, d)
        States, same dtype as ``params``.
    layer : int
        Weight set to use when ``params`` has per-layer weights (an ensemble with
        ``per_layer=True``: the members' draw for layer ``layer``).
    start : int
        Global index of the first trajectory (its member, for an ensemble; unused
        otherwise).
    n_threads : int, optional
        Numba threads for this call.

    Returns
    -------
    ndarray, shape (B, T, d)
        Inf or NaN where f overflows the dtype, with a RuntimeWarning.
    """
    check_params(params, ensemble=True)
    X = check_states("X", X, params)
    start = check_start(start, X.shape[0])
    layer = v.check_int("layer", layer, minimum=0)
    if isinstance(params, WeightEnsemble):
        if not params.per_layer and layer != 0:
            raise ValueError(f"`layer`={layer} but the ensemble draws one weight set per member")
    elif layer >= (params.n_sets or 1):
        raise ValueError(f"`layer`={layer} but `params` has {params.n_sets or 1} weight set(s)")
    out = np.empty_like(X)
    with threads(n_threads):
        kernels.vector_field(pack(params), X, layer, out, start)
    bad = ~np.isfinite(out).all(axis=(1, 2))
    if bad.any():  # X is finite (checked): f overflowed the dtype
        warnings.warn(
            f"vector_field: f(X) overflows {X.dtype} for {int(bad.sum())} of {bad.size} "
            f"trajectories (the first: {int(np.argmax(bad))}); those entries are inf or "
            "NaN. Scale `X` or the weights down, or use float64.",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


def _float64_array(name, x):
    """``x`` as a float64 array (masked arrays rejected), or a TypeError naming ``name``."""
    if np.ma.isMaskedArray(x):
        return x  # check_array rejects it with the argument's name
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a real number or an array of reals: {err}") from None


def alpha_schedule(alpha, n_layers, dt):
    """Return the float64 step weights ``α_n`` of the averaged update.

    ``None`` means Δt, a float a constant, ``"accelerated"`` ``2/(n+2)``, and an
    array of length ``n_layers`` is taken as is; every α_n must lie in (0, 1].
    """
    if alpha is None:
        a = np.full(n_layers, dt)
    elif isinstance(alpha, str):
        if alpha != "accelerated":
            raise ValueError(
                f"unknown `alpha` {alpha!r}; use None, a float, 'accelerated' "
                "or an array of length n_layers"
            )
        a = 2.0 / (np.arange(n_layers) + 2.0)
    elif isinstance(alpha, np.ndarray) and alpha.ndim == 0 and alpha.dtype.kind in "iuf":
        a = np.full(n_layers, v.check_float("alpha", alpha.item()))
    elif np.ndim(alpha) == 0:
        a = np.full(n_layers, v.check_float("alpha", alpha))
    else:
        a = np.asarray(v.check_array("alpha", _float64_array("alpha", alpha), ndim=1))
        if a.shape != (n_layers,):
            raise ValueError(f"`alpha` must have length n_layers={n_layers}, got {a.shape[0]}")
    if np.any(a <= 0) or np.any(a > 1):
        raise ValueError(f"`alpha` values must lie in (0, 1], got min {a.min()}, max {a.max()}")
    return a


def noise_schedule(noise, n_layers):
    """Return the float64 noise scales ``σ_n`` (scalar or length ``n_layers``, ≥ 0)."""
    if np.ndim(noise) == 0:
        return np.full(n_layers, v.check_float("noise", noise, minimum=0.0))
    s = v.check_array("noise", _float64_array("noise", noise), ndim=1)
    if s.shape != (n_layers,):
        raise ValueError(
            f"`noise` must be a scalar or have length n_layers={n_layers}, got {s.shape[0]}"
        )
    if np.any(s < 0):
        raise ValueError("`noise` scales must be >= 0")
    return s


def prepare_run(params, n_layers, method, t_final, alpha, c, noise):
    """Validate the integration settings and return the kernel's step arguments.

    ``n_layers`` must already be an int here or raise (see ``_validate.check_int``:
    floats such as ``8.0`` are rejected), so callers may use it as given.

    Returns
    -------
    a, b, h, σ : ndarray in ``params.dtype``
        Tableau, per-layer step sizes and noise scales.
    """
    check_params(params, ensemble=True)
    n_layers = v.check_int("n_layers", n_layers, minimum=1)
    v.check_size("`n_layers`", (n_layers,), np.float64)  # the schedule's arrays
    v.check_choice("method", method, METHODS)
    t_final = v.check_float("t_final", t_final, minimum=0.0, strict=True)
    c = v.check_float("c", c, minimum=0.0, strict=True)
    if params.n_sets is not None and params.n_sets != n_layers:
        raise ValueError(
            f"`params` has {params.n_sets} per-layer weight sets but "
            f"`n_layers`={n_layers}; they must match"
        )
    dt = t_final / n_layers
    if method == "averaged":
        h = alpha_schedule(alpha, n_layers, dt) * c
    else:
        h = np.full(n_layers, dt)
        if c != 1.0:
            raise ValueError(f"`c` applies to method='averaged' only, not {method!r}")
        if alpha is not None:
            raise ValueError(f"`alpha` applies to method='averaged' only, not {method!r}")
    σ = noise_schedule(noise, n_layers)
    a, b, _ = tableau(method).arrays
    dtype = params.dtype
    with np.errstate(over="ignore", under="ignore"):
        h_d, σ_d = h.astype(dtype), σ.astype(dtype)
    if not np.all(np.isfinite(h_d)) or np.any(h_d == 0):
        what = "`alpha` * `c`" if method == "averaged" else "Δt = `t_final` / `n_layers`"
        raise ValueError(
            f"the step size {what} (from {h.min():.4g} to {h.max():.4g}) is 0 or inf "
            f"in {dtype.name}; change `t_final`, `n_layers`"
            f"{', `alpha` or `c`' if method == 'averaged' else ''} or use float64"
        )
    if not np.all(np.isfinite(σ_d)):
        raise ValueError(f"`noise` (max {σ.max():.4g}) overflows {dtype.name}")
    return a.astype(dtype), b.astype(dtype), h_d, σ_d


def raise_on_status(status, start=0):
    """Raise FloatingPointError naming the first trajectory that became non-finite."""
    bad = np.flatnonzero(status != kernels.STATUS_OK)
    if bad.size:
        i = bad[0]
        raise FloatingPointError(
            f"{bad.size} trajectory(ies) became non-finite; the first is trajectory "
            f"{start + i} at layer {status[i]}. Reduce Δt (more `n_layers` or a smaller "
            "`t_final`), the weight scale, or pass `throw=False` to get NaN for those "
            "trajectories instead."
        )


def integrate(
    params,
    x0,
    n_layers,
    *,
    method="euler",
    t_final=1.0,
    save_every=None,
    alpha=None,
    c=1.0,
    noise=0.0,
    seed=0,
    start=0,
    throw=True,
    n_threads=None,
):
    """Run ``n_layers`` residual layers (steps of ``dX/dt = f(X)``) on every trajectory.

    A layer is the block of ``params`` (``TransformerParams``: one step of the whole
    field, or sequential or Strang sub-steps, each followed by its norm with
    ``norm_position="post"``).

    Parameters
    ----------
    params : TransformerParams or WeightEnsemble
        The model; with an ensemble, trajectory ``start + b`` runs member
        ``start + b``'s weights (drawn in the kernel).
    x0 : ndarray, shape (B, T, d)
        Initial states, same dtype as ``params``.
    n_layers : int
        Number of layers N ≥ 1; ``Δt = t_final / N``.
    method : {"euler", "heun", "rk4", "averaged"}
        Update rule of one layer.
    t_final : float
        Length of the time interval.
    save_every : int, optional
        Return the states at layers 0, k, 2k, …, N (N must be a multiple of k).
    alpha : None, float, "accelerated" or array of length N
        Step weights of ``method="averaged"``: ``X_{n+1} = X_n + α_n c f(X_n) + η_n``.
        None means Δt (so ``c=1`` gives Euler back).
    c : float
        Scale of the averaged operator ``T(X) = X + c f(X)``.
    noise : float or array of length N
        σ_n of the Gaussian noise η_n ~ N(0, σ_n² I) added after each layer
        (any method), keyed by ``(seed, start + b, n)``.
    seed, start : int
        Noise seed in ``[0, 2**63 - 1]`` and global index of the first trajectory
        (``start + B <= 2**63``).
    throw : bool
        Raise FloatingPointError if a trajectory becomes non-finite; with False its
        states are NaN from that layer on.
    n_threads : int, optional
        Numba threads for this call (results do not depend on it).

    Returns
    -------
    ndarray
        ``(B, T, d)`` final states (after the final norm when ``params.final_norm``),
        or ``(B, N//k + 1, T, d)`` with ``save_every=k`` (no final norm: the states of
        the flow).

    Raises
    ------
    TypeError, ValueError
        On invalid arguments, naming the argument.
    FloatingPointError
        If ``throw`` and a trajectory became non-finite.

    Examples
    --------
    >>> import numpy as np, tfkernels as tfk
    >>> p = tfk.TransformerParams.random(d=8, n_heads=2, damping=1.0, seed=0)
    >>> x0 = tfk.random_states(16, 4, 8, seed=1)
    >>> tfk.integrate(p, x0, n_layers=8, method="rk4", save_every=4).shape
    (16, 3, 4, 8)
    """
    a, b, h, σ = prepare_run(params, n_layers, method, t_final, alpha, c, noise)
    x0 = check_states("x0", x0, params)
    seed = v.check_seed("seed", seed)
    start = check_start(start, x0.shape[0])
    throw = v.check_bool("throw", throw)
    if save_every is None:
        k, first, n_out = n_layers, 1, 1
    else:
        k = v.check_int("save_every", save_every, minimum=1)
        if n_layers % k:
            raise ValueError(f"`save_every`={k} must divide `n_layers`={n_layers}")
        first, n_out = 0, n_layers // k + 1
    B, T, d = x0.shape
    v.check_size("`x0` states × (`n_layers` / `save_every` + 1)", (B * T * d, n_out), x0.dtype)
    out = np.empty((B, n_out, T, d), dtype=x0.dtype)
    status = np.empty(B, dtype=np.int64)
    packed = pack(params)
    with threads(n_threads):
        kernels.integrate(
            packed,
            x0,
            kernels.Schedule(a, b, h, σ),
            seed,
            start,
            k,
            first,
            out,
            status,
        )
    if throw:
        raise_on_status(status, start)
    if save_every is None:
        out = out[:, 0]
        with threads(n_threads):
            if isinstance(params, WeightEnsemble):
                kernels.ensemble_final_norm(packed, out, start)
            else:
                kernels.final_norm(params, out)
        return out
    return out
