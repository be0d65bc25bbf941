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

Real transformer blocks (the ``TransformerParams`` docstring states the maths): attention
biases (``Q = X W_q + b_q``, …, ``… W_o + b_o``); a per-token norm ``N`` (layernorm,
rmsnorm, sphere) ``pre`` (inside the sub-fields ``F_a = g(N_a(X))``, ``F_f = h(N_f(X)) −
γX + XA``), ``post`` (after each sub-step) or ``tangent`` (the sub-fields projected on the
sphere's tangent spaces); the block ``parallel`` (one step of ``F_a + F_f``),
``sequential`` (``Φ^h_{F_f} ∘ Φ^h_{F_a}``) or ``strang`` (``Φ^{h/2}_{F_f} ∘ Φ^h_{F_a} ∘
Φ^{h/2}_{F_f}``), each sub-flow advanced by the method; the final norm on the output of
:func:`integrate`. A model without any of these runs exactly the paper's arithmetic.

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
    "token_norm",
    "token_norm_jvp",
    "tangent_project",
    "tangent_project_jvp",
    "layer_weights",
    "sub_fields",
    "vector_field",
    "jvp",
    "jacobian",
    "log_norm",
    "step",
    "step_jvp",
    "layer_map_jacobian",
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


def _add_bias(Y, b):
    """``Y + b`` (b broadcast over the rows), or ``Y`` itself when ``b`` is None.

    Parameters
    ----------
    Y : ndarray, shape (T, d)
    b : array_like, shape (d,), or None

    Returns
    -------
    ndarray of float64
    """
    return Y if b is None else Y + _f64(b)


def _check_heads(d, n_heads):
    """Raise ValueError unless ``n_heads`` divides ``d``.

    Parameters
    ----------
    d, n_heads : int
    """
    if n_heads < 1 or d % n_heads:
        raise ValueError(f"`n_heads`={n_heads} must be >= 1 and divide the width d={d}")


def attention(
    X, wq, wk, wv, wo, n_heads, beta=1.0, causal=False, bq=None, bk=None, bv=None, bo=None
):
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
    bq, bk, bv, bo : array_like, shape (d,), optional
        Biases: ``Q = X @ wq + bq``, …, output ``concat_h(O_h) @ wo + bo`` (None: no
        bias, nothing added).

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    X, wq, wk, wv, wo = (_f64(a) for a in (X, wq, wk, wv, wo))
    T, d = X.shape
    n_heads = int(n_heads)
    _check_heads(d, n_heads)
    Q, K, V = (_add_bias(X @ w, b) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    O = np.zeros((T, d))
    for h in range(n_heads):
        S, cols, _ = _attention_scores(Q, K, n_heads, h, float(beta), bool(causal))
        P = softmax_rows(S)
        O[:, cols] = P @ V[:, cols]
    return _add_bias(O @ wo, bo)


def attention_jvp(
    X, dX, wq, wk, wv, wo, n_heads, beta=1.0, causal=False, bq=None, bk=None, bv=None
):
    """Directional derivative of :func:`attention` at ``X`` along ``dX`` (exact).

    With ``P = softmax(S)`` row-wise, ``dP = P ⊙ (dS − rowsum(P ⊙ dS))`` and
    ``dO_h = dP V_h + P dV_h``; masked entries have ``P = 0`` and drop out. The biases
    move the point (``Q = X W_q + b_q``, …) but not the direction (``dQ = dX W_q``);
    ``b_o`` drops out and is not an argument.

    Parameters
    ----------
    X, dX : array_like, shape (T, d)
        Point and direction.
    wq, wk, wv, wo, n_heads, beta, causal, bq, bk, bv
        As in :func:`attention`.

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    X, dX, wq, wk, wv, wo = (_f64(a) for a in (X, dX, wq, wk, wv, wo))
    T, d = X.shape
    n_heads = int(n_heads)
    _check_heads(d, n_heads)
    Q, K, V = (_add_bias(X @ w, b) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
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


# ------------------------------------------------------------------ normalizations
_NORMS = ("layernorm", "rmsnorm", "sphere")


def token_norm(X, kind, gain=None, bias=None, eps=1e-5):
    """Normalize every token (row) of ``X``.

    - ``layernorm``: ``(x − μ)/sqrt(σ² + eps) ⊙ gain + bias``, μ and σ² the mean and
      the biased variance of the d entries of x;
    - ``rmsnorm``: ``x / sqrt(mean(x²) + eps) ⊙ gain`` (``bias`` must be None);
    - ``sphere``: ``x / ‖x‖`` (no parameters, no eps).

    Parameters
    ----------
    X : array_like, shape (..., d)
        Tokens in the last axis.
    kind : {"layernorm", "rmsnorm", "sphere"}
    gain, bias : array_like, shape (d,), or None
        None: ones and zeros.
    eps : float
        Added to the variance (layernorm) or the mean square (rmsnorm).

    Returns
    -------
    ndarray of float64, shape of ``X``.

    Raises
    ------
    ValueError
        On an unknown ``kind``, or parameters the norm does not have.
    """
    X = _f64(X)
    _check_norm_params(kind, gain, bias)
    if kind == "sphere":
        return X / np.sqrt(np.sum(X * X, axis=-1, keepdims=True))
    if kind == "layernorm":
        Xc = X - np.mean(X, axis=-1, keepdims=True)
        r = 1.0 / np.sqrt(np.mean(Xc * Xc, axis=-1, keepdims=True) + float(eps))
        Y = Xc * r
    else:
        r = 1.0 / np.sqrt(np.mean(X * X, axis=-1, keepdims=True) + float(eps))
        Y = X * r
    if gain is not None:
        Y = Y * _f64(gain)
    return _add_bias(Y, bias)


def token_norm_jvp(X, dX, kind, gain=None, bias=None, eps=1e-5):
    """Directional derivative of :func:`token_norm` at ``X`` along ``dX`` (exact).

    Per token, with ``r = 1/sqrt(σ² + eps)`` (layernorm, on the centred ``x_c = x − μ``,
    ``dx_c = dx − mean(dx)``), ``r = 1/sqrt(mean(x²) + eps)`` (rmsnorm) or
    ``r = 1/‖x‖`` (sphere): ``dr = −r³·mean(x_c ⊙ dx_c)``, ``−r³·mean(x ⊙ dx)``,
    ``−r³·⟨x, dx⟩``, and the derivative is ``(dx_c·r + x_c·dr) ⊙ gain`` (``x`` for
    ``x_c`` in rmsnorm and sphere; the bias drops out).

    Parameters
    ----------
    X, dX : array_like, shape (..., d)
        Point and direction.
    kind, gain, bias, eps
        As in :func:`token_norm`.

    Returns
    -------
    ndarray of float64, shape of ``X``.
    """
    X, dX = _f64(X), _f64(dX)
    _check_norm_params(kind, gain, bias)
    if kind == "layernorm":
        Xc = X - np.mean(X, axis=-1, keepdims=True)
        dXc = dX - np.mean(dX, axis=-1, keepdims=True)
        r = 1.0 / np.sqrt(np.mean(Xc * Xc, axis=-1, keepdims=True) + float(eps))
        dr = -(r**3) * np.mean(Xc * dXc, axis=-1, keepdims=True)
    elif kind == "rmsnorm":
        Xc, dXc = X, dX
        r = 1.0 / np.sqrt(np.mean(X * X, axis=-1, keepdims=True) + float(eps))
        dr = -(r**3) * np.mean(X * dX, axis=-1, keepdims=True)
    else:
        Xc, dXc = X, dX
        r = 1.0 / np.sqrt(np.sum(X * X, axis=-1, keepdims=True))
        dr = -(r**3) * np.sum(X * dX, axis=-1, keepdims=True)
    D = dXc * r + Xc * dr
    return D if gain is None else D * _f64(gain)


def _check_norm_params(kind, gain, bias):
    """Raise ValueError for an unknown norm or a parameter it does not have.

    Parameters
    ----------
    kind : str
    gain, bias : array_like or None
    """
    if kind not in _NORMS:
        raise ValueError(f"`kind` must be one of {_NORMS}, got {kind!r}")
    if kind == "sphere" and (gain is not None or bias is not None):
        raise ValueError("the 'sphere' norm has no `gain` or `bias`")
    if kind == "rmsnorm" and bias is not None:
        raise ValueError("the 'rmsnorm' norm has no `bias`")


def tangent_project(X, F):
    """Project each row of ``F`` on the tangent space of the sphere at the row of ``X``:
    ``P⊥_x f = f − ⟨x, f⟩ x / ‖x‖²``.

    Parameters
    ----------
    X, F : array_like, shape (..., d)
        Points (non-zero rows) and vectors.

    Returns
    -------
    ndarray of float64, shape of ``F``.
    """
    X, F = _f64(X), _f64(F)
    s = np.sum(X * F, axis=-1, keepdims=True)
    q = np.sum(X * X, axis=-1, keepdims=True)
    return F - (s / q) * X


def tangent_project_jvp(X, dX, F, dF):
    """Directional derivative of :func:`tangent_project` along ``(dX, dF)``.

    With ``s = ⟨x, f⟩`` and ``q = ‖x‖²``: ``df − (ds/q − s·dq/q²)·x − (s/q)·dx``,
    ``ds = ⟨dx, f⟩ + ⟨x, df⟩``, ``dq = 2⟨x, dx⟩``.

    Parameters
    ----------
    X, dX : array_like, shape (..., d)
        Points and their direction.
    F, dF : array_like, shape (..., d)
        The projected vectors and their direction.

    Returns
    -------
    ndarray of float64, shape of ``F``.
    """
    X, dX, F, dF = (_f64(a) for a in (X, dX, F, dF))
    s = np.sum(X * F, axis=-1, keepdims=True)
    q = np.sum(X * X, axis=-1, keepdims=True)
    ds = np.sum(dX * F, axis=-1, keepdims=True) + np.sum(X * dF, axis=-1, keepdims=True)
    dq = 2.0 * np.sum(X * dX, axis=-1, keepdims=True)
    return dF - (ds / q - s * dq / (q * q)) * X - (s / q) * dX


# ------------------------------------------------------------------ the vector field
#: Block settings read from the parameters, with the defaults of an object that
#: predates them (the paper's parallel model without norms).
_BLOCK_DEFAULTS = {
    "norm": None,
    "norm_position": "pre",
    "norm_eps": 1e-5,
    "final_norm": False,
    "block": "parallel",
}
_BLOCKS = ("parallel", "sequential", "strang")
_POSITIONS = ("pre", "post", "tangent")
#: Optional vectors: per layer when they have two axes.
_LAYER_VECTORS = (
    "bq",
    "bk",
    "bv",
    "bo",
    "attn_norm_gain",
    "attn_norm_bias",
    "ffn_norm_gain",
    "ffn_norm_bias",
)


def layer_weights(params, layer=0):
    """Pick the float64 weights that layer ``layer`` uses (duck-typed parameters).

    Per-layer weights are detected by their number of dimensions (``wq.ndim == 3``,
    ``w1.ndim == 3``, ``linear.ndim == 3``; a bias or norm parameter with two axes);
    for those, set ``layer`` is taken. Shared weights are returned as they are, for
    every layer. The final norm's parameters never have a layer axis.

    Parameters
    ----------
    params : object
        Anything with the attributes of ``TransformerParams`` (``wq, wk, wv, wo,
        w1, b1, w2, b2, linear`` possibly None; ``n_heads, beta, causal, damping,
        activation``). Missing settings take the defaults 1, 1.0, False, 0.0, "gelu";
        missing block attributes (biases, norms, ``block``) those of the paper's
        model: none, ``"parallel"``.
    layer : int
        Layer index n.

    Returns
    -------
    dict
        Keys ``wq wk wv wo w1 b1 w2 b2 linear bq bk bv bo attn_norm_gain
        attn_norm_bias ffn_norm_gain ffn_norm_bias final_norm_gain final_norm_bias``
        (float64 arrays or None), ``n_heads beta causal damping activation`` and
        ``norm`` (None or the name), ``norm_position norm_eps final_norm block``.

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

    def pick(name, a):
        if not 0 <= layer < a.shape[0]:
            raise ValueError(
                f"`layer`={layer} out of range for {a.shape[0]} per-layer weight sets (`{name}`)"
            )
        return a[layer]

    for key, names in groups:
        lead = getattr(params, key, None)
        per_layer = lead is not None and np.ndim(lead) == 3
        for name in names:
            a = getattr(params, name, None)
            if a is None:
                out[name] = None
                continue
            a = _f64(a)
            out[name] = pick(name, a) if per_layer else a
    for name in _LAYER_VECTORS:
        a = getattr(params, name, None)
        a = None if a is None else _f64(a)
        out[name] = pick(name, a) if a is not None and a.ndim == 2 else a
    for name in ("final_norm_gain", "final_norm_bias"):
        a = getattr(params, name, None)
        out[name] = None if a is None else _f64(a)
    out["n_heads"] = int(getattr(params, "n_heads", 1))
    out["beta"] = float(getattr(params, "beta", 1.0))
    out["causal"] = bool(getattr(params, "causal", False))
    out["damping"] = float(getattr(params, "damping", 0.0))
    out["activation"] = str(getattr(params, "activation", "gelu"))
    for name, default in _BLOCK_DEFAULTS.items():
        out[name] = getattr(params, name, default)
    if out["norm"] == "none":
        out["norm"] = None
    out["norm_eps"] = float(out["norm_eps"])
    out["final_norm"] = bool(out["final_norm"])
    if out["norm"] is not None and out["norm"] not in _NORMS:
        raise ValueError(f"`norm` must be None or one of {_NORMS}, got {out['norm']!r}")
    if out["norm_position"] not in _POSITIONS:
        raise ValueError(
            f"`norm_position` must be one of {_POSITIONS}, got {out['norm_position']!r}"
        )
    if out["block"] not in _BLOCKS:
        raise ValueError(f"`block` must be one of {_BLOCKS}, got {out['block']!r}")
    if out["norm_position"] == "tangent" and out["norm"] != "sphere":
        raise ValueError("`norm_position`='tangent' needs norm='sphere'")
    return out


def _position(w):
    """Where the norm sits: ``"pre"``, ``"post"``, ``"tangent"``, or None (no norm).

    Parameters
    ----------
    w : dict
        Output of :func:`layer_weights`.

    Returns
    -------
    str or None
    """
    return None if w["norm"] is None else w["norm_position"]


def _sub_norm(w, sub, X):
    """The norm ``N_a`` (``sub="attn"``), ``N_f`` (``"ffn"``) or the final norm
    (``"final"``) applied to the tokens of ``X``.

    Parameters
    ----------
    w : dict
        Output of :func:`layer_weights`; ``w["norm"]`` is not None.
    sub : {"attn", "ffn", "final"}
    X : ndarray, shape (T, d)

    Returns
    -------
    ndarray of float64
    """
    return token_norm(X, w["norm"], w[f"{sub}_norm_gain"], w[f"{sub}_norm_bias"], w["norm_eps"])


def _sub_norm_jvp(w, sub, X, V):
    """Directional derivative of :func:`_sub_norm` at ``X`` along ``V``.

    Parameters
    ----------
    w : dict
    sub : {"attn", "ffn", "final"}
    X, V : ndarray, shape (T, d)

    Returns
    -------
    ndarray of float64
    """
    return token_norm_jvp(
        X, V, w["norm"], w[f"{sub}_norm_gain"], w[f"{sub}_norm_bias"], w["norm_eps"]
    )


def _has(w, sub):
    """Whether sub-layer ``sub`` has a non-zero field: ``"attn"`` when attention is
    on; ``"ffn"`` when the FFN, the damping or the linear term is.

    Parameters
    ----------
    w : dict
    sub : {"attn", "ffn"}

    Returns
    -------
    bool
    """
    if sub == "attn":
        return w["wq"] is not None
    return w["w1"] is not None or w["damping"] != 0.0 or w["linear"] is not None


def _attention_args(w):
    """The arguments of :func:`attention` and :func:`attention_jvp` after the state(s)
    that the layer's weights ``w`` give (``bo`` aside: the JVP does not take it)."""
    args = (w["wq"], w["wk"], w["wv"], w["wo"], w["n_heads"])
    kw = dict(beta=w["beta"], causal=w["causal"], bq=w["bq"], bk=w["bk"], bv=w["bv"])
    return args, kw


def _terms(w, X, subs):
    """The unprojected field of the sub-layers ``subs`` at one trajectory: ``g(N_a(X))``
    and ``h(N_f(X)) − γX + XA`` with a pre norm, ``g(X)`` and ``h(X) − γX + XA``
    otherwise, summed in the order ``g, h, −γX, XA`` (the paper's field's order, so that
    a model without norms and biases gives the bits it always gave).

    Parameters
    ----------
    w : dict
        Output of :func:`layer_weights`.
    X : ndarray, shape (T, d), float64
    subs : tuple of {"attn", "ffn"}

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    pre = _position(w) == "pre"
    F = np.zeros_like(X)
    if "attn" in subs and w["wq"] is not None:
        Xa = _sub_norm(w, "attn", X) if pre else X
        args, kw = _attention_args(w)
        F = F + attention(Xa, *args, bo=w["bo"], **kw)
    if "ffn" in subs:
        if w["w1"] is not None:
            Xf = _sub_norm(w, "ffn", X) if pre else X
            F = F + ffn(Xf, w["w1"], w["b1"], w["w2"], w["b2"], activation=w["activation"])
        if w["damping"] != 0.0:
            F = F - w["damping"] * X
        if w["linear"] is not None:
            F = F + X @ w["linear"]
    return F


def _terms_jvp(w, X, V, subs):
    """Directional derivative of :func:`_terms` at ``X`` along ``V`` (exact).

    Parameters
    ----------
    w : dict
    X, V : ndarray, shape (T, d), float64
    subs : tuple of {"attn", "ffn"}

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    pre = _position(w) == "pre"
    D = np.zeros_like(X)
    if "attn" in subs and w["wq"] is not None:
        Xa, Va = (_sub_norm(w, "attn", X), _sub_norm_jvp(w, "attn", X, V)) if pre else (X, V)
        args, kw = _attention_args(w)
        D = D + attention_jvp(Xa, Va, *args, **kw)
    if "ffn" in subs:
        if w["w1"] is not None:
            Xf, Vf = (_sub_norm(w, "ffn", X), _sub_norm_jvp(w, "ffn", X, V)) if pre else (X, V)
            D = D + ffn_jvp(Xf, Vf, w["w1"], w["b1"], w["w2"], w["b2"], activation=w["activation"])
        if w["damping"] != 0.0:
            D = D - w["damping"] * V
        if w["linear"] is not None:
            D = D + V @ w["linear"]
    return D


def _field(w, X, subs=("attn", "ffn")):
    """The field of the sub-layers ``subs`` at one trajectory (projected on the
    sphere's tangent spaces with ``norm_position="tangent"``).

    Parameters
    ----------
    w : dict
    X : ndarray, shape (T, d), float64
    subs : tuple of {"attn", "ffn"}

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    F = _terms(w, X, subs)
    return tangent_project(X, F) if _position(w) == "tangent" else F


def _field_jvp(w, X, V, subs=("attn", "ffn")):
    """Directional derivative of :func:`_field` at ``X`` along ``V`` (exact).

    Parameters
    ----------
    w : dict
    X, V : ndarray, shape (T, d), float64
    subs : tuple of {"attn", "ffn"}

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    D = _terms_jvp(w, X, V, subs)
    if _position(w) == "tangent":
        return tangent_project_jvp(X, V, _terms(w, X, subs), D)
    return D


def _f_single(w, X):
    """``f(X) = F_a(X) + F_f(X)`` of one trajectory for already selected weights.

    Parameters
    ----------
    w : dict
        Output of :func:`layer_weights`.
    X : ndarray, shape (T, d), float64

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    return _field(w, X)


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
    return _field_jvp(w, X, V)


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


def sub_fields(params, X, layer=0):
    """The attention and FFN sub-fields ``(F_a(X), F_f(X))`` with weight set ``layer``.

    - no norm: ``F_a = g(X)``, ``F_f = h(X) − γX + XA``;
    - ``norm_position="pre"``: ``F_a = g(N_a(X))``, ``F_f = h(N_f(X)) − γX + XA`` (the
      linear terms go with the FFN and see X itself);
    - ``"post"``: ``g(X)`` and ``h(X) − γX + XA`` (the norms act between sub-steps, in
      :func:`step`);
    - ``"tangent"``: each of those projected token by token,
      ``F_i ← F_i − ⟨x_i, F_i⟩ x_i / ‖x_i‖²``.

    Here ``g`` is attention with its biases (``Q = X W_q + b_q``, …, ``… W_o + b_o``).
    A term that is off contributes zeros.

    Parameters
    ----------
    params : object
        Duck-typed ``TransformerParams``.
    X : array_like, shape (T, d) or (B, T, d)
    layer : int
        Weight set.

    Returns
    -------
    F_a, F_f : ndarray of float64, same shape as ``X``.
    """
    X = _check_state("X", X)
    w = layer_weights(params, layer)
    if X.ndim == 2:
        return _field(w, X, ("attn",)), _field(w, X, ("ffn",))
    if not len(X):
        return X.copy(), X.copy()
    Fa = np.stack([_field(w, Xb, ("attn",)) for Xb in X])
    return Fa, np.stack([_field(w, Xb, ("ffn",)) for Xb in X])


def vector_field(params, X, layer=0):
    """Evaluate ``f(X) = F_a(X) + F_f(X)`` (:func:`sub_fields`) with weight set ``layer``.

    Without norms and biases this is the paper's ``f(X) = g(X) + h(X) − γX + XA``
    (summed in that order). For a post-norm block, and for sequential and Strang
    blocks, the layer is a map and not a step of this field (see :func:`step`): there
    ``f`` is the sum of the sub-fields before any norm, the field a parallel block
    would step.

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
    """Exact Jacobian–vector product ``Df(X)[V]`` of :func:`vector_field`, computed
    analytically (norms, biases and the tangent projection included).

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


def _rk(f, X, h, method):
    """One step ``Φ^h_f(X)`` of an explicit Runge–Kutta method, spelled out.

    Parameters
    ----------
    f : callable
        The field, ``f(Y)`` of the shape of ``X``.
    X : ndarray
    h : float
        Step size.
    method : {"euler", "heun", "rk4"}

    Returns
    -------
    ndarray of float64
    """
    if method == "euler":
        return X + h * f(X)
    if method == "heun":
        k1 = f(X)
        k2 = f(X + h * k1)
        return X + (h / 2.0) * (k1 + k2)
    k1 = f(X)
    k2 = f(X + (h / 2.0) * k1)
    k3 = f(X + (h / 2.0) * k2)
    k4 = f(X + h * k3)
    return X + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def _rk_jvp(f, df, X, V, h, method):
    """:func:`_rk` and its exact linearisation along ``V``.

    With stages ``Y_i = X + h Σ_j a_ij k_j``, ``k_i = f(Y_i)``, the tangent stages are
    ``dk_i = Df(Y_i)[V + h Σ_j a_ij dk_j]``.

    Parameters
    ----------
    f : callable
        The field.
    df : callable
        Its JVP, ``df(Y, W)``.
    X, V : ndarray
        Point and direction.
    h : float
    method : {"euler", "heun", "rk4"}

    Returns
    -------
    X_next, V_next : ndarray of float64
    """
    if method == "euler":
        return X + h * f(X), V + h * df(X, V)
    if method == "heun":
        k1, d1 = f(X), df(X, V)
        Y2, W2 = X + h * k1, V + h * d1
        k2, d2 = f(Y2), df(Y2, W2)
        return X + (h / 2.0) * (k1 + k2), V + (h / 2.0) * (d1 + d2)
    k1, d1 = f(X), df(X, V)
    Y2, W2 = X + (h / 2.0) * k1, V + (h / 2.0) * d1
    k2, d2 = f(Y2), df(Y2, W2)
    Y3, W3 = X + (h / 2.0) * k2, V + (h / 2.0) * d2
    k3, d3 = f(Y3), df(Y3, W3)
    Y4, W4 = X + h * k3, V + h * d3
    k4, d4 = f(Y4), df(Y4, W4)
    return (
        X + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4),
        V + (h / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4),
    )


def _step_size(dt, method, alpha, c):
    """The RK method and step size of one layer: ``(method, Δt)``, or for
    ``averaged`` Euler's with ``α_n·c`` (``α_n = Δt`` when ``alpha`` is None).

    Parameters
    ----------
    dt : float
    method : str
    alpha : float or None
    c : float

    Returns
    -------
    (str, float)
    """
    if method == "averaged":
        return "euler", (dt if alpha is None else float(alpha)) * float(c)
    return method, dt


def _sub_steps(w):
    """The sub-steps of one layer, in order: ``(subs, fraction, post_norm)`` with
    ``subs`` the sub-layers whose field is advanced, ``fraction`` of the step size,
    ``post_norm`` the norm applied after it (``"attn"``, ``"ffn"`` or None).

    - ``parallel``: one step of ``F_a + F_f``, then ``N_a`` with a post norm (``N_f``
      when attention is off);
    - ``sequential``: attention (then ``N_a``), FFN (then ``N_f``);
    - ``strang``: ½ FFN (``N_f``), attention (``N_a``), ½ FFN (``N_f``).

    A sub-layer whose field is zero (attention off; FFN, damping and linear term off)
    has no sub-step and no norm.

    Parameters
    ----------
    w : dict
        Output of :func:`layer_weights`.

    Returns
    -------
    list of (tuple, float, str or None)
    """
    post = _position(w) == "post"
    if w["block"] == "parallel":
        last = "attn" if _has(w, "attn") else "ffn"
        return [(("attn", "ffn"), 1.0, last if post else None)]
    a = [(("attn",), 1.0, "attn" if post else None)] if _has(w, "attn") else []
    if w["block"] == "sequential":
        f = [(("ffn",), 1.0, "ffn" if post else None)] if _has(w, "ffn") else []
        return a + f
    f = [(("ffn",), 0.5, "ffn" if post else None)] if _has(w, "ffn") else []
    return f + a + f


def _layer_map(w, X, dt, method, alpha, c):
    """One layer of one trajectory: the sub-steps of :func:`_sub_steps` in order.

    Parameters
    ----------
    w : dict
    X : ndarray, shape (T, d), float64
    dt, method, alpha, c
        As in :func:`step`.

    Returns
    -------
    ndarray of float64, shape (T, d)
    """
    rk, h = _step_size(dt, method, alpha, c)
    for subs, frac, post in _sub_steps(w):
        X = _rk(lambda Y, s=subs: _field(w, Y, s), X, h * frac, rk)
        if post is not None:
            X = _sub_norm(w, post, X)
    return X


def _layer_map_jvp(w, X, V, dt, method, alpha, c):
    """:func:`_layer_map` and its exact linearisation along ``V``.

    Parameters
    ----------
    w : dict
    X, V : ndarray, shape (T, d), float64
    dt, method, alpha, c
        As in :func:`step`.

    Returns
    -------
    X_next, V_next : ndarray of float64
    """
    rk, h = _step_size(dt, method, alpha, c)
    for subs, frac, post in _sub_steps(w):
        X, V = _rk_jvp(
            lambda Y, s=subs: _field(w, Y, s),
            lambda Y, W, s=subs: _field_jvp(w, Y, W, s),
            X,
            V,
            h * frac,
            rk,
        )
        if post is not None:
            X, V = _sub_norm(w, post, X), _sub_norm_jvp(w, post, X, V)
    return X, V


def step(params, X, dt, method="euler", layer=0, alpha=None, c=1.0):
    """One layer update of a state (no noise).

    The layer map of the block (see :func:`sub_fields`): ``parallel`` is one step of
    the method on ``f = F_a + F_f`` (then, with ``norm_position="post"``, the norm
    ``N_a``, or ``N_f`` when attention is off); ``sequential`` a step on ``F_a`` (then
    ``N_a`` if post) followed by a step on ``F_f`` (then ``N_f``); ``strang`` a
    half step on ``F_f`` (``N_f``), a step on ``F_a`` (``N_a``), a half step on
    ``F_f`` (``N_f``). Each sub-step is the method's (Euler's with step ``α_n·c``
    for ``averaged``, halved in Strang's half steps). The final norm is not applied
    (see :func:`integrate`).

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
    w = layer_weights(params, layer)
    if X.ndim == 2:
        return _layer_map(w, X, dt, method, alpha, c)
    return np.stack([_layer_map(w, Xb, dt, method, alpha, c) for Xb in X]) if len(X) else X.copy()


def step_jvp(params, X, V, dt, method="euler", layer=0, alpha=None, c=1.0):
    """One layer update together with its exact linearisation.

    For the Runge–Kutta methods the stage derivatives chain through the field's JVP
    at each stage's state: with stages ``Y_i = X + Δt Σ_j a_ij k_j``, ``k_i = f(Y_i)``,
    the tangent stages are ``dk_i = Df(Y_i)[V + Δt Σ_j a_ij dk_j]``. For a block the
    sub-steps chain the same way, and a post norm ``X ← N(X)`` maps ``V ← DN(X)[V]``
    (layernorm, rmsnorm, or the sphere's ``x/‖x‖``).

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
    if V.shape != X.shape:
        raise ValueError(f"`V` must have the shape of `X` {X.shape}, got {V.shape}")
    dt = float(dt)
    w = layer_weights(params, layer)
    if X.ndim == 2:
        return _layer_map_jvp(w, X, V, dt, method, alpha, c)
    if not len(X):
        return X.copy(), V.copy()
    pairs = [_layer_map_jvp(w, X[b], V[b], dt, method, alpha, c) for b in range(len(X))]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def layer_map_jacobian(params, X, dt, method="euler", layer=0, alpha=None, c=1.0):
    """Dense Jacobian of one layer map ``vec(step(X))`` with respect to ``vec(X)``.

    Built column by column from :func:`step_jvp` (row-major vec, as :func:`jacobian`).
    For the blocks that are maps rather than an ODE step (post norms, sequential and
    Strang), this is the object whose logarithmic norm bounds the per-layer growth
    of a perturbation.

    Parameters
    ----------
    params : object
        Duck-typed ``TransformerParams``.
    X : array_like, shape (T, d) or (B, T, d)
    dt, method, layer, alpha, c
        As in :func:`step`.

    Returns
    -------
    ndarray of float64, shape (T·d, T·d), or (B, T·d, T·d) for a batch.
    """
    X = _check_state("X", X)
    if X.ndim == 3:
        return np.stack(
            [layer_map_jacobian(params, Xb, dt, method, layer, alpha, c) for Xb in X]
        ).reshape(len(X), X.shape[1] * X.shape[2], X.shape[1] * X.shape[2])
    T, d = X.shape
    n = T * d
    J = np.empty((n, n))
    for k in range(n):
        E = np.zeros(n)
        E[k] = 1.0
        J[:, k] = step_jvp(params, X, E.reshape(T, d), dt, method, layer, alpha, c)[1].reshape(n)
    return J


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

    Notes
    -----
    The final norm (``final_norm=True``: a norm of kind ``norm`` with the parameters
    ``final_norm_gain``, ``final_norm_bias`` and ``norm_eps``) is the model's output
    head: it is applied to the returned final state when ``save_every`` is None, and
    with ``save_every`` to none of the saved states (they are the states of the layer
    stack, as the studies measure them). To get the model's output, call without
    ``save_every``. The noise η_n is added after the whole layer (after its post norms).
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
        w = layer_weights(params, 0)
        if w["final_norm"] and w["norm"] is not None:
            X = _sub_norm(w, "final", X)
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
