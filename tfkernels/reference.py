"""Plain-NumPy float64 reference implementation of the tfkernels model (the test oracle).

This module is the independent oracle against which the compiled Numba kernels are
tested. It is written for clarity, not speed: explicit loops over trajectories, heads
and layers, and every Runge–Kutta step spelled out by hand. It shares no code with the
kernels and imports nothing from ``tfkernels``; the parameters are read by duck typing
(any object with the attributes of :class:`tfkernels.params.TransformerParams`).

The model, for one trajectory ``X`` of shape ``(T, d)`` (rows are tokens, weights
multiply on the right)::

    f(X) = g(X) + h(X) − γ·X + X·A          (each term only when present)

    g(X) = concat_h( softmax(β · Q_h K_hᵀ / √d_h) V_h ) · W_o,   Q = X W_q, ...
    h(X) = σ(X W_1 + b_1) W_2 + b_2

One update per layer ``n = 0 … N−1`` with ``Δt = t_final / N``:

- ``euler``:    ``X + Δt·f(X)``
- ``heun``:     ``X + Δt/2·(k1 + k2)``, ``k1 = f(X)``, ``k2 = f(X + Δt·k1)``
- ``rk4``:      the classical fourth-order Runge–Kutta step
- ``averaged``: ``(1 − α_n)·X + α_n·(X + c·f(X)) = X + α_n·c·f(X)``

optionally followed by additive noise ``η_n`` (the same for every method). Per-layer
weights (a leading layer axis on the weight arrays) are piecewise constant in time:
every stage of step n uses weight set n.

All arithmetic is float64; inputs are cast with ``np.asarray(x, dtype=np.float64)``.
"""

import math

import numpy as np
import scipy.linalg
from scipy.special import erf

__all__ = [
    "activation",
    "activation_derivative",
    "softmax_rows",
    "attention",
    "attention_jvp",
    "ffn",
    "ffn_jvp",
    "layer_weights",
    "vector_field",
    "jvp",
    "jacobian",
    "log_norm",
    "step",
    "step_jvp",
    "alpha_schedule",
    "integrate",
    "linear_exact",
    "perturbation_ratios",
    "tangent_ratios",
]

_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "tanh", "identity")
_METHODS = ("euler", "heun", "rk4", "averaged")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_C = 0.044715


def _f64(x):
    """Return ``x`` as a float64 ndarray.

    Parameters
    ----------
    x : array_like

    Returns
    -------
    ndarray of float64
    """
    return np.asarray(x, dtype=np.float64)


# --------------------------------------------------------------------------- pieces
def activation(z, name):
    """Apply the FFN activation σ element-wise.

    Parameters
    ----------
    z : array_like
        Pre-activations.
    name : str
        One of ``gelu`` (erf form ``0.5 z (1 + erf(z/√2))``), ``gelu_tanh``
        (``0.5 z (1 + tanh(√(2/π)(z + 0.044715 z³)))``), ``relu``, ``tanh``,
        ``identity``.

    Returns
    -------
    ndarray of float64, same shape as ``z``.

    Raises
    ------
    ValueError
        On an unknown activation name.
    """
    z = _f64(z)
    if name == "gelu":
        return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * z * (1.0 + np.tanh(_SQRT_2_OVER_PI * (z + _GELU_TANH_C * z**3)))
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "identity":
        return z.copy()
    raise ValueError(f"`activation` must be one of {_ACTIVATIONS}, got {name!r}")


#: Alias used where a parameter named ``activation`` shadows the function.
_apply_activation = activation


def activation_derivative(z, name):
    """Derivative σ'(z) of the activation, element-wise.

    Parameters
    ----------
    z : array_like
        Pre-activations.
    name : str
        Activation name, as in :func:`activation`. For ``relu`` the derivative at
        ``z == 0`` is taken as 0.

    Returns
    -------
    ndarray of float64, same shape as ``z``.

    Raises
    ------
    ValueError
        On an unknown activation name.
    """
    z = _f64(z)
    if name == "gelu":
        cdf = 0.5 * (1.0 + erf(z / math.sqrt(2.0)))
        pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
        return cdf + z * pdf
    if name == "gelu_tanh":
        u = _SQRT_2_OVER_PI * (z + _GELU_TANH_C * z**3)
        th = np.tanh(u)
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * z * z)
        return 0.5 * (1.0 + th) + 0.5 * z * (1.0 - th * th) * du
    if name == "relu":
        return (z > 0.0).astype(np.float64)
    if name == "tanh":
        th = np.tanh(z)
        return 1.0 - th * th
    if name == "identity":
        return np.ones_like(z)
    raise ValueError(f"`activation` must be one of {_ACTIVATIONS}, got {name!r}")


def softmax_rows(S):
    """Row-wise softmax, computed stably (the row maximum is subtracted first).

    Parameters
    ----------
    S : array_like, shape (..., n)
        Scores; entries may be ``-inf`` (masked) as long as every row has at least
        one finite entry.

    Returns
    -------
    ndarray of float64, same shape as ``S``; every row is non-negative and sums to 1.
    """
    S = _f64(S)
    m = np.max(S, axis=-1, keepdims=True)
    E = np.exp(S - m)
    return E / np.sum(E, axis=-1, keepdims=True)


def _attention_scores(Q, K, n_heads, h, beta, causal):
    """Scaled, optionally masked attention scores of head ``h``.

    Parameters
    ----------
    Q, K : ndarray, shape (T, d)
        Queries and keys of all heads.
    n_heads, h : int
        Number of heads and the head index.
    beta : float
        Inverse temperature.
    causal : bool
        Mask ``j > i`` with ``-inf``.

    Returns
    -------
    S : ndarray, shape (T, T)
        ``β · Q_h K_hᵀ / √d_h`` with masked entries ``-inf``.
    cols : slice
        The columns of head ``h``.
    scale : float
        ``β / √d_h``.
    """
    T, d = Q.shape
    dh = d // n_heads
    cols = slice(h * dh, (h + 1) * dh)
    scale = beta / math.sqrt(dh)
    S = scale * (Q[:, cols] @ K[:, cols].T)
    if causal:
        S = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), -np.inf, S)
    return S, cols, scale


def _check_heads(d, n_heads):
    """Raise ValueError unless ``n_heads`` divides ``d``.

    Parameters
    ----------
    d, n_heads : int
    """
    if n_heads < 1 or d % n_heads:
        raise ValueError(f"`n_heads`={n_heads} must be >= 1 and divide the width d={d}")


def attention(X, wq, wk, wv, wo, n_heads, beta=1.0, causal=False):
    """Multi-head self-attention ``g(X)`` of one trajectory.

    Parameters
    ----------
    X : array_like, shape (T, d)
        Token matrix.
    wq, wk, wv, wo : array_like, shape (d, d)
        Projections; ``Q = X @ wq`` etc., output ``concat_h(O_h) @ wo``.
    n_heads : int
        Number of heads H (divides d); head h uses columns ``[h·d_h, (h+1)·d_h)``.
    beta : float
        Inverse temperature β of the softmax.
    causal : bool
        If True, token i attends only to tokens ``j <= i``.

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    X, wq, wk, wv, wo = (_f64(a) for a in (X, wq, wk, wv, wo))
    T, d = X.shape
    n_heads = int(n_heads)
    _check_heads(d, n_heads)
    Q, K, V = X @ wq, X @ wk, X @ wv
    O = np.zeros((T, d))
    for h in range(n_heads):
        S, cols, _ = _attention_scores(Q, K, n_heads, h, float(beta), bool(causal))
        P = softmax_rows(S)
        O[:, cols] = P @ V[:, cols]
    return O @ wo


def attention_jvp(X, dX, wq, wk, wv, wo, n_heads, beta=1.0, causal=False):
    """Directional derivative of :func:`attention` at ``X`` along ``dX`` (exact).

    With ``P = softmax(S)`` row-wise, ``dP = P ⊙ (dS − rowsum(P ⊙ dS))`` and
    ``dO_h = dP V_h + P dV_h``; masked entries have ``P = 0`` and drop out.

    Parameters
    ----------
    X, dX : array_like, shape (T, d)
        Point and direction.
    wq, wk, wv, wo, n_heads, beta, causal
        As in :func:`attention`.

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    X, dX, wq, wk, wv, wo = (_f64(a) for a in (X, dX, wq, wk, wv, wo))
    T, d = X.shape
    n_heads = int(n_heads)
    _check_heads(d, n_heads)
    Q, K, V = X @ wq, X @ wk, X @ wv
    dQ, dK, dV = dX @ wq, dX @ wk, dX @ wv
    dO = np.zeros((T, d))
    for h in range(n_heads):
        S, cols, scale = _attention_scores(Q, K, n_heads, h, float(beta), bool(causal))
        P = softmax_rows(S)
        dS = scale * (dQ[:, cols] @ K[:, cols].T + Q[:, cols] @ dK[:, cols].T)
        PdS = P * dS  # zero where masked (P == 0, dS finite)
        dP = PdS - P * np.sum(PdS, axis=1, keepdims=True)
        dO[:, cols] = dP @ V[:, cols] + P @ dV[:, cols]
    return dO @ wo


def ffn(X, w1, b1, w2, b2, activation="gelu"):
    """Token-wise feed-forward block ``h(X) = σ(X W_1 + b_1) W_2 + b_2``.

    Parameters
    ----------
    X : array_like, shape (T, d)
    w1 : array_like, shape (d, m)
    b1 : array_like, shape (m,)
    w2 : array_like, shape (m, d)
    b2 : array_like, shape (d,)
    activation : str
        Name of σ (see :func:`activation`).

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    X, w1, b1, w2, b2 = (_f64(a) for a in (X, w1, b1, w2, b2))
    Z = X @ w1 + b1
    return _apply_activation(Z, activation) @ w2 + b2


def ffn_jvp(X, dX, w1, b1, w2, b2, activation="gelu"):
    """Directional derivative of :func:`ffn`: ``(σ'(X W_1 + b_1) ⊙ (dX W_1)) W_2``.

    Parameters
    ----------
    X, dX : array_like, shape (T, d)
        Point and direction.
    w1, b1, w2, b2, activation
        As in :func:`ffn`.

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    X, dX, w1, b1, w2, b2 = (_f64(a) for a in (X, dX, w1, b1, w2, b2))
    Z = X @ w1 + b1
    return (activation_derivative(Z, activation) * (dX @ w1)) @ w2


# ------------------------------------------------------------------ the vector field
def layer_weights(params, layer=0):
    """Pick the float64 weights that layer ``layer`` uses (duck-typed parameters).

    Per-layer weights are detected by their number of dimensions (``wq.ndim == 3``,
    ``w1.ndim == 3``, ``linear.ndim == 3``); for those, set ``layer`` is taken.
    Shared weights are returned as they are, for every layer.

    Parameters
    ----------
    params : object
        Anything with the attributes of ``TransformerParams`` (``wq, wk, wv, wo,
        w1, b1, w2, b2, linear`` possibly None; ``n_heads, beta, causal, damping,
        activation``). Missing settings take the defaults 1, 1.0, False, 0.0, "gelu".
    layer : int
        Layer index n.

    Returns
    -------
    dict
        Keys ``wq wk wv wo w1 b1 w2 b2 linear`` (float64 arrays or None) and
        ``n_heads beta causal damping activation``.

    Raises
    ------
    ValueError
        If ``layer`` is outside the range of the per-layer weight sets.
    """
    out = {}
    groups = (
        ("wq", ("wq", "wk", "wv", "wo")),
        ("w1", ("w1", "b1", "w2", "b2")),
        ("linear", ("linear",)),
    )
    for key, names in groups:
        lead = getattr(params, key, None)
        per_layer = lead is not None and np.ndim(lead) == 3
        for name in names:
            a = getattr(params, name, None)
            if a is None:
                out[name] = None
                continue
            a = _f64(a)
            if per_layer:
                if not 0 <= layer < a.shape[0]:
                    raise ValueError(
                        f"`layer`={layer} out of range for {a.shape[0]} per-layer weight sets"
                    )
                a = a[layer]
            out[name] = a
    out["n_heads"] = int(getattr(params, "n_heads", 1))
    out["beta"] = float(getattr(params, "beta", 1.0))
    out["causal"] = bool(getattr(params, "causal", False))
    out["damping"] = float(getattr(params, "damping", 0.0))
    out["activation"] = str(getattr(params, "activation", "gelu"))
    return out


def _f_single(w, X):
    """``f(X)`` of one trajectory for already selected weights.

    Parameters
    ----------
    w : dict
        Output of :func:`layer_weights`.
    X : ndarray, shape (T, d), float64

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    F = np.zeros_like(X)
    if w["wq"] is not None:
        F = F + attention(
            X, w["wq"], w["wk"], w["wv"], w["wo"], w["n_heads"], beta=w["beta"], causal=w["causal"]
        )
    if w["w1"] is not None:
        F = F + ffn(X, w["w1"], w["b1"], w["w2"], w["b2"], activation=w["activation"])
    if w["damping"] != 0.0:
        F = F - w["damping"] * X
    if w["linear"] is not None:
        F = F + X @ w["linear"]
    return F


def _jvp_single(w, X, V):
    """Exact directional derivative ``Df(X)[V]`` of one trajectory.

    Parameters
    ----------
    w : dict
        Output of :func:`layer_weights`.
    X, V : ndarray, shape (T, d), float64

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    D = np.zeros_like(X)
    if w["wq"] is not None:
        D = D + attention_jvp(
            X,
            V,
            w["wq"],
            w["wk"],
            w["wv"],
            w["wo"],
            w["n_heads"],
            beta=w["beta"],
            causal=w["causal"],
        )
    if w["w1"] is not None:
        D = D + ffn_jvp(X, V, w["w1"], w["b1"], w["w2"], w["b2"], activation=w["activation"])
    if w["damping"] != 0.0:
        D = D - w["damping"] * V
    if w["linear"] is not None:
        D = D + V @ w["linear"]
    return D


def _check_state(name, X):
    """Cast a state to float64 and check it is (T, d) or (B, T, d).

    Parameters
    ----------
    name : str
        Argument name for the error message.
    X : array_like

    Returns
    -------
    ndarray of float64
    """
    X = _f64(X)
    if X.ndim not in (2, 3):
        raise ValueError(f"`{name}` must have shape (T, d) or (B, T, d), got {X.shape}")
    return X


def vector_field(params, X, layer=0):
    """Evaluate ``f(X) = g(X) + h(X) − γX + XA`` with weight set ``layer``.

    Parameters
    ----------
    params : object
        Duck-typed ``TransformerParams`` (see :func:`layer_weights`).
    X : array_like, shape (T, d) or (B, T, d)
        One trajectory or a batch.
    layer : int
        Which per-layer weight set to use (ignored for shared weights).

    Returns
    -------
    ndarray of float64, same shape as ``X``.
    """
    X = _check_state("X", X)
    w = layer_weights(params, layer)
    if X.ndim == 2:
        return _f_single(w, X)
    return np.stack([_f_single(w, X[b]) for b in range(X.shape[0])]) if len(X) else X.copy()


def jvp(params, X, V, layer=0):
    """Exact Jacobian–vector product ``Df(X)[V]``, computed analytically.

    Parameters
    ----------
    params : object
        Duck-typed ``TransformerParams``.
    X, V : array_like, shape (T, d) or (B, T, d)
        Point(s) and direction(s), same shape.
    layer : int
        Weight set.

    Returns
    -------
    ndarray of float64, same shape as ``X``.
    """
    X = _check_state("X", X)
    V = _f64(V)
    if V.shape != X.shape:
        raise ValueError(f"`V` must have the shape of `X` {X.shape}, got {V.shape}")
    w = layer_weights(params, layer)
    if X.ndim == 2:
        return _jvp_single(w, X, V)
    return np.stack([_jvp_single(w, X[b], V[b]) for b in range(X.shape[0])]) if len(X) else V.copy()


def jacobian(params, X, layer=0):
    """Dense Jacobian of ``vec(f)`` with respect to ``vec(X)`` (row-major vec).

    Built column by column by applying :func:`jvp` to each unit basis vector, so
    ``J[i·d + j, k·d + l] = ∂f(X)[i, j] / ∂X[k, l]``.

    Parameters
    ----------
    params : object
        Duck-typed ``TransformerParams``.
    X : array_like, shape (T, d) or (B, T, d)
    layer : int
        Weight set.

    Returns
    -------
    ndarray of float64, shape (T·d, T·d), or (B, T·d, T·d) for a batch.
    """
    X = _check_state("X", X)
    if X.ndim == 3:
        return np.stack([jacobian(params, X[b], layer) for b in range(X.shape[0])])
    T, d = X.shape
    n = T * d
    J = np.empty((n, n))
    for k in range(n):
        E = np.zeros(n)
        E[k] = 1.0
        J[:, k] = jvp(params, X, E.reshape(T, d), layer).reshape(n)
    return J


def log_norm(J):
    """Logarithmic 2-norm: the largest eigenvalue of the symmetric part ``(J + Jᵀ)/2``.

    Parameters
    ----------
    J : array_like, shape (n, n) or (B, n, n)

    Returns
    -------
    float, or ndarray of shape (B,) for a stack.
    """
    J = _f64(J)
    Jt = np.swapaxes(J, -1, -2)
    lam = np.linalg.eigvalsh(0.5 * (J + Jt))[..., -1]
    return float(lam) if np.ndim(lam) == 0 else lam


# ------------------------------------------------------------------------ stepping
def _check_method(method):
    """Raise ValueError for an unknown method name.

    Parameters
    ----------
    method : str
    """
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}")


def step(params, X, dt, method="euler", layer=0, alpha=None, c=1.0):
    """One layer update of a state (no noise).

    Parameters
    ----------
    params : object
        Duck-typed ``TransformerParams``.
    X : array_like, shape (T, d) or (B, T, d)
    dt : float
        Step Δt.
    method : {"euler", "heun", "rk4", "averaged"}
    layer : int
        Weight set used by every stage of this step.
    alpha : float, optional
        α_n of the ``averaged`` update ``X + α_n·c·f(X)``; None means ``dt``.
        Ignored by the other methods.
    c : float
        Step of the operator ``T(X) = X + c·f(X)`` (``averaged`` only).

    Returns
    -------
    ndarray of float64, same shape as ``X``.
    """
    _check_method(method)
    X = _check_state("X", X)
    dt = float(dt)

    def f(Y):
        return vector_field(params, Y, layer)

    if method == "euler":
        return X + dt * f(X)
    if method == "heun":
        k1 = f(X)
        k2 = f(X + dt * k1)
        return X + (dt / 2.0) * (k1 + k2)
    if method == "rk4":
        k1 = f(X)
        k2 = f(X + (dt / 2.0) * k1)
        k3 = f(X + (dt / 2.0) * k2)
        k4 = f(X + dt * k3)
        return X + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    a = dt if alpha is None else float(alpha)
    return X + (a * float(c)) * f(X)


def step_jvp(params, X, V, dt, method="euler", layer=0, alpha=None, c=1.0):
    """One layer update together with its exact linearisation.

    For the Runge–Kutta methods the stage derivatives chain through :func:`jvp` at
    each stage's state: with stages ``Y_i = X + Δt Σ_j a_ij k_j``, ``k_i = f(Y_i)``,
    the tangent stages are ``dk_i = Df(Y_i)[V + Δt Σ_j a_ij dk_j]``.

    Parameters
    ----------
    params : object
        Duck-typed ``TransformerParams``.
    X, V : array_like, shape (T, d) or (B, T, d)
        State and tangent direction.
    dt, method, layer, alpha, c
        As in :func:`step`.

    Returns
    -------
    X_next, V_next : ndarray of float64
        ``step(X)`` and ``D step(X)[V]``.
    """
    _check_method(method)
    X = _check_state("X", X)
    V = _f64(V)
    dt = float(dt)

    def f(Y):
        return vector_field(params, Y, layer)

    def df(Y, W):
        return jvp(params, Y, W, layer)

    if method == "euler":
        return X + dt * f(X), V + dt * df(X, V)
    if method == "heun":
        k1, d1 = f(X), df(X, V)
        Y2, W2 = X + dt * k1, V + dt * d1
        k2, d2 = f(Y2), df(Y2, W2)
        return X + (dt / 2.0) * (k1 + k2), V + (dt / 2.0) * (d1 + d2)
    if method == "rk4":
        k1, d1 = f(X), df(X, V)
        Y2, W2 = X + (dt / 2.0) * k1, V + (dt / 2.0) * d1
        k2, d2 = f(Y2), df(Y2, W2)
        Y3, W3 = X + (dt / 2.0) * k2, V + (dt / 2.0) * d2
        k3, d3 = f(Y3), df(Y3, W3)
        Y4, W4 = X + dt * k3, V + dt * d3
        k4, d4 = f(Y4), df(Y4, W4)
        return (
            X + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4),
            V + (dt / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4),
        )
    h = (dt if alpha is None else float(alpha)) * float(c)
    return X + h * f(X), V + h * df(X, V)


def alpha_schedule(alpha, n_layers, dt):
    """The α_n of the ``averaged`` method for n = 0 … N−1.

    Parameters
    ----------
    alpha : None, float, "accelerated" or array_like of length N
        None gives ``Δt`` for every layer; a float is constant; ``"accelerated"``
        gives ``2/(n+2)``; an array is used as it is.
    n_layers : int
        N.
    dt : float
        Δt, used when ``alpha`` is None.

    Returns
    -------
    ndarray of float64, shape (N,)

    Raises
    ------
    ValueError
        On an unknown string or an array of the wrong length.
    """
    N = int(n_layers)
    if alpha is None:
        return np.full(N, float(dt))
    if isinstance(alpha, str):
        if alpha != "accelerated":
            raise ValueError(f"`alpha` string must be 'accelerated', got {alpha!r}")
        return 2.0 / (np.arange(N, dtype=np.float64) + 2.0)
    a = _f64(alpha)
    if a.ndim == 0:
        return np.full(N, float(a))
    if a.shape != (N,):
        raise ValueError(f"`alpha` array must have shape ({N},), got {a.shape}")
    return a.copy()


def _check_eta(eta, x0, n_layers):
    """Cast and shape-check the noise array.

    Parameters
    ----------
    eta : array_like or None
        ``(B, N, T, d)`` for a batch ``x0`` of shape (B, T, d), ``(N, T, d)`` for a
        single trajectory.
    x0 : ndarray
        The initial state.
    n_layers : int

    Returns
    -------
    ndarray of float64 or None
    """
    if eta is None:
        return None
    eta = _f64(eta)
    if x0.ndim == 2:
        want = (n_layers,) + x0.shape
    else:
        want = (x0.shape[0], n_layers) + x0.shape[1:]
    if eta.shape != want:
        raise ValueError(f"`eta` must have shape {want}, got {eta.shape}")
    return eta


def _noise(eta, x_ndim, n):
    """The noise η_n added after layer n (None when there is none).

    Parameters
    ----------
    eta : ndarray or None
    x_ndim : int
        2 for one trajectory, 3 for a batch.
    n : int

    Returns
    -------
    ndarray or None
    """
    if eta is None:
        return None
    return eta[n] if x_ndim == 2 else eta[:, n]


def integrate(
    params, x0, n_layers, method="euler", t_final=1.0, save_every=None, alpha=None, c=1.0, eta=None
):
    """Advance the state through N layers (``Δt = t_final / N``).

    Parameters
    ----------
    params : object
        Duck-typed ``TransformerParams``; per-layer weights must have at least N sets.
    x0 : array_like, shape (B, T, d) or (T, d)
        Initial state(s).
    n_layers : int
        N ≥ 1.
    method : {"euler", "heun", "rk4", "averaged"}
    t_final : float
        End time.
    save_every : int, optional
        If given (k ≥ 1), return the states at layers ``0, k, 2k, …`` — the layers n
        with ``n % k == 0``, ``N//k + 1`` of them (layer N is included when k
        divides N).
    alpha : None, float, "accelerated" or array_like
        α schedule of the ``averaged`` method (see :func:`alpha_schedule`).
    c : float
        Step of ``T(X) = X + c·f(X)`` (``averaged`` only).
    eta : array_like, optional
        Additive noise, shape (B, N, T, d) (or (N, T, d) for 2-D ``x0``); η_n is
        added after layer n's update, for every method.

    Returns
    -------
    ndarray of float64
        The final state (shape of ``x0``), or with ``save_every`` the saved states,
        shape (B, N//k + 1, T, d) (or (N//k + 1, T, d)).
    """
    _check_method(method)
    X = _check_state("x0", x0).copy()
    N = int(n_layers)
    if N < 1:
        raise ValueError(f"`n_layers` must be >= 1, got {n_layers}")
    dt = float(t_final) / N
    alphas = alpha_schedule(alpha, N, dt)
    eta = _check_eta(eta, X, N)
    k = None if save_every is None else int(save_every)
    if k is not None and k < 1:
        raise ValueError(f"`save_every` must be >= 1, got {save_every}")
    saved = [X.copy()] if k is not None else None
    for n in range(N):
        X = step(params, X, dt, method=method, layer=n, alpha=alphas[n], c=c)
        e = _noise(eta, X.ndim, n)
        if e is not None:
            X = X + e
        if k is not None and (n + 1) % k == 0:
            saved.append(X.copy())
    if k is None:
        return X
    return np.stack(saved, axis=0 if X.ndim == 2 else 1)


def linear_exact(A, damping, x0, t):
    """Exact solution ``X(t) = X(0)·expm(t(A − γI))`` of ``dX/dt = XA − γX``.

    Parameters
    ----------
    A : array_like, shape (d, d)
        The linear term (shared weights; no per-layer axis).
    damping : float
        γ.
    x0 : array_like, shape (T, d) or (B, T, d)
        Initial state(s).
    t : float or array_like of shape (K,)
        Time(s).

    Returns
    -------
    ndarray of float64
        Shape of ``x0`` for a scalar ``t``; for an array of K times, shape
        (K, T, d) for 2-D ``x0`` and (B, K, T, d) for a batch (the layout of
        :func:`integrate` with ``save_every``).
    """
    A = _f64(A)
    x0 = _check_state("x0", x0)
    M = A - float(damping) * np.eye(A.shape[0])
    t = _f64(t)
    if t.ndim == 0:
        return x0 @ scipy.linalg.expm(float(t) * M)
    states = [x0 @ scipy.linalg.expm(float(tk) * M) for tk in t]
    return np.stack(states, axis=0 if x0.ndim == 2 else 1)


# --------------------------------------------------------------- perturbation decay
def _fro(D):
    """Frobenius norm per trajectory.

    Parameters
    ----------
    D : ndarray, shape (T, d) or (B, T, d)

    Returns
    -------
    float or ndarray of shape (B,)
    """
    if D.ndim == 2:
        return float(np.sqrt(np.sum(D * D)))
    return np.sqrt(np.sum(D * D, axis=(1, 2)))


def _fro_safe(D):
    """:func:`_fro` that neither overflows nor underflows for finite ``D``: where the
    plain sum of squares is not a normal float, the norm is recomputed from ``D`` divided
    by its largest magnitude.

    Parameters
    ----------
    D : ndarray, shape (T, d) or (B, T, d)

    Returns
    -------
    float or ndarray of shape (B,)
    """
    n = _fro(D)
    bad = ~np.isfinite(n) | (n * n < np.finfo(np.float64).tiny)
    if not np.any(bad):
        return n
    m = np.max(np.abs(D), axis=(-2, -1))
    safe = np.where(m > 0, m, 1.0)
    Ds = D / (safe[..., None, None] if D.ndim == 3 else safe)
    scaled = m * np.sqrt(np.sum(Ds * Ds, axis=(-2, -1)))
    return np.where(bad, scaled, n)


def perturbation_ratios(
    params,
    x0,
    u,
    eps,
    n_layers,
    method="euler",
    t_final=1.0,
    alpha=None,
    c=1.0,
    eta=None,
    band=2.0**10,
    floor=2.0**-29,
    log=False,
):
    """Pair mode: growth of a finite perturbation ``ε·u`` across the layers.

    ``Y_0 = X_0 + ε·u``; X and Y are advanced by the same update with the same noise
    and ``r_n = ‖X_n − Y_n‖_F / ‖X_0 − Y_0‖_F`` is recorded (the denominator is the
    computed difference of the two initial states), renormalized as in ChaosTools'
    ``lyapunov``: with ``d_0 = ‖X_0 − Y_0‖``, whenever after a layer
    ``d = ‖X_n − Y_n‖`` lies outside ``[d_0/band, d_0·band]`` or below ``floor·‖X_n‖``,
    Y is moved to ``X_n + (Y_n − X_n)·d*/d`` with ``d* = max(d_0, 16·floor·‖X_n‖)``, and
    the ratio of the distances before and after (each as computed) multiplies every
    later ``r``. So ``r_n`` is the cumulative growth of a perturbation that stays small
    and far above the rounding of X, at any contraction or expansion.

    Parameters
    ----------
    params : object
        Duck-typed ``TransformerParams``.
    x0, u : array_like, shape (B, T, d) or (T, d)
        Initial state(s) and direction(s) (unit Frobenius norm per trajectory).
    eps : float
        Perturbation size ε > 0.
    n_layers, method, t_final, alpha, c, eta
        As in :func:`integrate`.
    band : float
        Half-width factor of the band around ``d_0`` (default 2^10, the kernels'
        ``PAIR_BAND``); ``np.inf`` turns the renormalization off.
    floor : float
        Least ``d / ‖X_n‖`` (default ``2^24·2^-53``: the kernels' float64 value,
        ``PAIR_FLOOR·u``); 0 turns that edge off.
    log : bool
        Return ``log r_n`` instead of ``r_n`` (for growth beyond the float range).

    Returns
    -------
    ndarray of float64, shape (B, N+1) (or (N+1,) for 2-D ``x0``); ``r_0 = 1``.
    """
    _check_method(method)
    X = _check_state("x0", x0).copy()
    u = _f64(u)
    if u.shape != X.shape:
        raise ValueError(f"`u` must have the shape of `x0` {X.shape}, got {u.shape}")
    N = int(n_layers)
    if N < 1:
        raise ValueError(f"`n_layers` must be >= 1, got {n_layers}")
    dt = float(t_final) / N
    alphas = alpha_schedule(alpha, N, dt)
    eta = _check_eta(eta, X, N)
    Y = X + float(eps) * u
    d0 = _fro(X - Y)
    gain = np.zeros_like(d0)  # log of the accumulated rescale factors

    def record(d):
        return np.log(d / d0) + gain if log else d / d0 * np.exp(gain)

    ratios = [record(_fro(X - Y))]
    for n in range(N):
        X = step(params, X, dt, method=method, layer=n, alpha=alphas[n], c=c)
        Y = step(params, Y, dt, method=method, layer=n, alpha=alphas[n], c=c)
        e = _noise(eta, X.ndim, n)
        if e is not None:
            X = X + e
            Y = Y + e
        d = _fro_safe(X - Y)
        ratios.append(record(d))
        nx = _fro_safe(X)
        out = (d > d0 * band) | (d < d0 / band) | (d < floor * nx)
        if np.any(out):
            target = np.maximum(d0, 16.0 * floor * nx)
            k = np.where(out, target / np.where(d > 0, d, 1.0), 1.0)
            Y = X + (Y - X) * (k[..., None, None] if X.ndim == 3 else k)
            gain = gain + np.where(out, np.log(d) - np.log(_fro_safe(X - Y)), 0.0)
    return np.stack(ratios, axis=-1) if X.ndim == 3 else np.array(ratios)


def tangent_ratios(
    params, x0, u, n_layers, method="euler", t_final=1.0, alpha=None, c=1.0, eta=None
):
    """Tangent mode: growth of an infinitesimal perturbation across the layers.

    ``δ_0 = u`` is propagated through the exact linearisation of each step
    (:func:`step_jvp`, evaluated along the base trajectory X_n); returns
    ``‖δ_n‖_F / ‖δ_0‖_F``.

    Parameters
    ----------
    params : object
        Duck-typed ``TransformerParams``.
    x0, u : array_like, shape (B, T, d) or (T, d)
        Initial state(s) and direction(s).
    n_layers, method, t_final, alpha, c
        As in :func:`integrate`.
    eta : array_like, optional
        Noise added to the base trajectory (it does not enter δ, being additive);
        as in :func:`integrate`.

    Returns
    -------
    ndarray of float64, shape (B, N+1) (or (N+1,) for 2-D ``x0``).
    """
    _check_method(method)
    X = _check_state("x0", x0).copy()
    D = _f64(u).copy()
    if D.shape != X.shape:
        raise ValueError(f"`u` must have the shape of `x0` {X.shape}, got {D.shape}")
    N = int(n_layers)
    if N < 1:
        raise ValueError(f"`n_layers` must be >= 1, got {n_layers}")
    dt = float(t_final) / N
    alphas = alpha_schedule(alpha, N, dt)
    eta = _check_eta(eta, X, N)
    d0 = _fro(D)
    ratios = [_fro(D) / d0]
    for n in range(N):
        X, D = step_jvp(params, X, D, dt, method=method, layer=n, alpha=alphas[n], c=c)
        e = _noise(eta, X.ndim, n)
        if e is not None:
            X = X + e
        ratios.append(_fro(D) / d0)
    return np.stack(ratios, axis=-1) if X.ndim == 3 else np.array(ratios)
