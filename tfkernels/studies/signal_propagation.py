"""Mean-field signal propagation of the token cosine through post-LN blocks.

The closed-form recursion of Giorlandino & Goldt (2026, "Two failure modes of deep
transformers and how to avoid them", ICLR; arXiv:2505.24333) for the mean cosine
between tokens across post-LN transformer blocks with one attention head and a ReLU
MLP, re-derived here, and the models and initial states that reproduce its setting
with the kernels (``bench/cosine_propagation.py`` compares the two).

The block (BERT's order, LayerNorm without gain or bias, one head, no output
projection: ``W_o = I``)::

    y_i = LN(α_a x_i + Σ_j P_ij (x_j W_v + b_v))              attention sub-step
    z_i = LN(α_f y_i + relu(y_i W_1 + b_1) W_2 + b_2)          MLP sub-step

with independent Gaussian weights in every layer, ``W_v ~ N(0, σ_v²/d)``,
``W_1 ~ N(0, σ_w²/d)``, ``W_2 ~ N(0, σ_w²/m)`` and biases ``N(0, σ_b²)``. With
``α_a = α_f = 1`` it is tfkernels' ``norm="layernorm", norm_position="post",
block="sequential"`` layer with Δt = 1 (:func:`post_ln_params`).

Derivation (width d, m → ∞). After a LayerNorm every token has ``‖x_i‖²/d = 1``; let
``p = ⟨x_i, x_j⟩/d`` be the cosine of two tokens, the same for every pair
(equicorrelated tokens, which a token-symmetric block keeps equicorrelated in the
limit).

1. Attention. With uniform attention weights (β → 0), every output is the token mean
   ``a = (1/T) Σ_j x_j``: ``q_a = ‖a‖²/d = p + (1 − p)/T`` and, all outputs being equal,
   ``p_a = q_a``. The paper treats the softmax of T → ∞ tokens with scores of variance
   ``∝ β² log T`` as a Random Energy Model: for ``β < β_c = sqrt(2/(1 − p))`` the
   attention still averages over all tokens, ``q_a = p_a = p`` (the limit of the
   uniform case); above it the weights condense on few tokens,
   ``q_a = p + (1 − p)(1 − β_c/β)``, ``p_a = p``.
2. Value, skip and LayerNorm. ``u_i = α_a x_i + W_vᵀ a_i + b_v``: averaged over the
   weights (independent of x) the cross terms vanish, ``⟨u_i, u_j⟩/d → α_a² p + σ_v² p_a
   + σ_b²`` and ``‖u_i‖²/d → α_a² + σ_v² q_a + σ_b²``; the LayerNorm's mean over the d
   features is O(d^-1/2) and its variance is ``‖u‖²/d``, so the new cosine is their ratio
   ``p'``.
3. MLP. Each hidden pre-activation pair ``(h_i, h_j)`` is Gaussian with variance
   ``q_h = σ_w² + σ_b²`` and covariance ``σ_w² p' + σ_b²``; with ``c`` their correlation,
   ``E[relu(h_i) relu(h_j)] = (q_h/2) κ(c)``, ``κ`` the degree-1 arc-cosine kernel
   (:func:`relu_kernel`; Cho & Saul 2009), so that
   ``p'' = (α_f² p' + σ_w² q_h κ(c)/2 + σ_b²) / (α_f² + σ_w² q_h/2 + σ_b²)``.

Assumptions: infinite width, fresh Gaussian weights in each layer, equicorrelated
tokens, LayerNorm eps → 0. The finite-T form (``seq_len=T``) is exact in that limit for
uniform attention; the paper's form (``seq_len=None``) is its T → ∞ limit, off by
``O((1 − p)/T)`` per layer.
"""

import math

import numpy as np

from .. import _validate as v

#: The paper's (and its experiment's) defaults: ``σ_w² = σ_v² = 0.2``, ``σ_b² = 4·10⁻⁴``.
DEFAULT_VARIANCES = {"var_v": 0.2, "var_w": 0.2, "var_b": 4e-4}


def relu_kernel(c):
    """The normalized degree-1 arc-cosine kernel ``κ(c) = (sqrt(1 − c²) + (π − arccos c)·c)/π``.

    For a standard bivariate Gaussian pair ``(u, v)`` of correlation c,
    ``E[relu(u) relu(v)] = κ(c)/2`` (``κ(1) = 1``, ``κ(0) = 1/π``, ``κ(−1) = 0``).

    Parameters
    ----------
    c : float or ndarray
        Correlations in [−1, 1] (clipped there against rounding).

    Returns
    -------
    float or ndarray
    """
    c = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
    out = (np.sqrt(1.0 - c * c) + (math.pi - np.arccos(c)) * c) / math.pi
    return out[()] if out.ndim == 0 else out


def attention_overlaps(p, *, beta=0.0, seq_len=None):
    """Self-overlap ``q_a`` and cross-overlap ``p_a`` of the attention outputs.

    Parameters
    ----------
    p : float
        Cosine of the (LayerNorm-ed, equicorrelated) input tokens.
    beta : float
        The paper's inverse temperature (scores of variance ``β² log T``); only with
        ``seq_len=None``.
    seq_len : int, optional
        T for the exact uniform-attention (β → 0) form; None for the T → ∞ form.

    Returns
    -------
    q_a, p_a : float
    """
    if seq_len is not None:
        q = p + (1.0 - p) / seq_len
        return q, q
    if p >= 1.0 or beta <= 0.0:
        return p, p
    beta_c = math.sqrt(2.0 / (1.0 - p))
    if beta <= beta_c:
        return p, p
    return p + (1.0 - p) * (1.0 - beta_c / beta), p


def block_cosine_map(
    p,
    *,
    var_v=0.2,
    var_w=0.2,
    var_b=4e-4,
    alpha_attn=1.0,
    alpha_ffn=1.0,
    beta=0.0,
    seq_len=None,
):
    """The token cosine after one post-LN block, from the cosine before it.

    Parameters
    ----------
    p : float
        Cosine of every pair of input tokens, in [−1/(T−1), 1].
    var_v, var_w, var_b : float
        ``σ_v²``, ``σ_w²``, ``σ_b²`` (module docstring).
    alpha_attn, alpha_ffn : float
        Strengths α_a, α_f of the two skip connections.
    beta : float
        The paper's attention inverse temperature (T → ∞ form only).
    seq_len : int, optional
        T: the exact form for uniform attention (β → 0) with T tokens; None: the
        paper's T → ∞ form.

    Returns
    -------
    float
    """
    p = float(p)
    q_a, p_a = attention_overlaps(p, beta=beta, seq_len=seq_len)
    aa, af = alpha_attn * alpha_attn, alpha_ffn * alpha_ffn
    p1 = (aa * p + var_v * p_a + var_b) / (aa + var_v * q_a + var_b)
    q_h = var_w + var_b
    c = (var_w * p1 + var_b) / q_h
    mlp_cross = var_w * q_h * relu_kernel(c) / 2.0 + var_b
    mlp_self = var_w * q_h / 2.0 + var_b
    return float((af * p1 + mlp_cross) / (af + mlp_self))


def cosine_recursion(p0, n_layers, **kwargs):
    """The mean-field token cosine at every layer ``0 … n_layers``.

    Parameters
    ----------
    p0 : float
        The initial cosine.
    n_layers : int
        Number of blocks.
    **kwargs
        Passed to :func:`block_cosine_map` (``var_v``, ``var_w``, ``var_b``,
        ``alpha_attn``, ``alpha_ffn``, ``beta``, ``seq_len``).

    Returns
    -------
    ndarray of float64, shape (n_layers + 1,)

    Raises
    ------
    ValueError
        ``seq_len`` together with ``beta > 0`` (no closed form at finite T), or a
        bad ``n_layers``/``p0``.
    """
    n_layers = v.check_int("n_layers", n_layers, minimum=0)
    p0 = v.check_float("p0", p0, minimum=-1.0)
    if p0 > 1.0:
        raise ValueError(f"`p0` must be <= 1, got {p0}")
    if kwargs.get("seq_len") is not None and kwargs.get("beta", 0.0) > 0.0:
        raise ValueError(
            "`seq_len` gives the exact form for uniform attention (beta -> 0); with "
            "`beta` > 0 use seq_len=None (the paper's T -> infinity form)"
        )
    out = np.empty(n_layers + 1)
    out[0] = p0
    for n in range(n_layers):
        out[n + 1] = block_cosine_map(out[n], **kwargs)
    return out


def equicorrelated_states(n, seq_len, d, cosine, *, seed=0, dtype=np.float64):
    """States whose tokens have zero feature mean, ``‖x_i‖² = d`` and every pairwise
    cosine exactly ``cosine`` (up to rounding): fixed points of a gain-1 LayerNorm.

    Token i of a state is ``sqrt(d)·(sqrt(ρ) u_0 + sqrt(1 − ρ) u_i)`` with
    ``u_0 … u_T`` orthonormal, orthogonal to the all-ones vector, drawn at random
    (QR of a Gaussian matrix) for every state.

    Parameters
    ----------
    n, seq_len, d : int
        Number of states, tokens T and width (``d ≥ T + 2``).
    cosine : float
        ρ in [0, 1).
    seed : int
        Seed of the NumPy generator.
    dtype : float32 or float64

    Returns
    -------
    ndarray, shape (n, seq_len, d)
    """
    n = v.check_int("n", n, minimum=1)
    seq_len = v.check_int("seq_len", seq_len, minimum=2)
    d = v.check_int("d", d, minimum=seq_len + 2)
    rho = v.check_float("cosine", cosine, minimum=0.0)
    if rho >= 1.0:
        raise ValueError("`cosine` must be < 1 (identical tokens have no LayerNorm fixed point)")
    rng = np.random.default_rng(v.check_int("seed", seed, minimum=0))
    out = np.empty((n, seq_len, d))
    ones = np.ones((d, 1)) / math.sqrt(d)
    for k in range(n):
        G = rng.standard_normal((d, seq_len + 2))
        G[:, :1] = ones
        Q = np.linalg.qr(G)[0][:, 1:]  # orthonormal, orthogonal to the ones vector
        u0, U = Q[:, 0], Q[:, 1:].T
        out[k] = math.sqrt(d) * (math.sqrt(rho) * u0 + math.sqrt(1.0 - rho) * U)
    return out.astype(dtype)


def post_ln_params(
    d,
    n_layers,
    *,
    var_v=0.2,
    var_w=0.2,
    var_b=4e-4,
    beta=1e-4,
    d_ff=None,
    seed=0,
    dtype=np.float64,
):
    """The post-LN model of the recursion as :class:`~tfkernels.TransformerParams`.

    One head, ``W_o = I`` (the value projection carries ``σ_v²``), independent weights
    per layer (a leading layer axis), ReLU MLP of width ``d_ff`` (default d), LayerNorm
    with gain 1, bias 0 and eps 1e-12 after each sub-step (``norm_position="post"``,
    ``block="sequential"``): with ``t_final = n_layers`` (Δt = 1) a layer is the
    module docstring's block with ``α_a = α_f = 1``. ``W_q`` and ``W_k`` are
    ``N(0, 1/d)`` and the softmax's β is ``beta`` (default 1e-4: scores of order 1e-4,
    uniform attention to that order, the recursion's β → 0). The paper's β_SA (scores of
    variance ``β_SA² log T``) is ``beta = β_SA·sqrt(log T)``.

    Parameters
    ----------
    d, n_layers : int
    var_v, var_w, var_b : float
    beta : float
    d_ff : int, optional
    seed : int
    dtype : float32 or float64

    Returns
    -------
    TransformerParams
    """
    from ..params import TransformerParams

    m = d if d_ff is None else d_ff
    rng = np.random.default_rng(seed)
    L = n_layers

    def g(shape, var):
        return (rng.standard_normal((L,) + shape) * math.sqrt(var)).astype(dtype)

    return TransformerParams(
        wq=g((d, d), 1.0 / d),
        wk=g((d, d), 1.0 / d),
        wv=g((d, d), var_v / d),
        wo=np.broadcast_to(np.eye(d, dtype=dtype), (L, d, d)).copy(),
        bv=g((d,), var_b),
        w1=g((d, m), var_w / d),
        b1=g((m,), var_b),
        w2=g((m, d), var_w / m),
        b2=g((d,), var_b),
        n_heads=1,
        beta=beta,
        activation="relu",
        norm="layernorm",
        norm_position="post",
        norm_eps=1e-12,
        block="sequential",
    )
