"""Fused Numba kernels of the perturbation-decay study.

Built on the workers of :mod:`tfkernels.kernels` (same packed parameters ``W, fp, ip``,
same tableau / step / noise conventions):

* serial per-state workers: :func:`rhs_and_jvp` (``f(X)`` and the exact
  Jacobian–vector product ``f'(X)·V`` from one forward pass, whose activations —
  Q, K, V, the softmax of every head, σ'(z) — the JVP reuses), :func:`rhs_jvp`
  (``f'(X)·V`` alone), :func:`rhs_vjp` (the vector–Jacobian product ``f'(X)ᵀ·G``, for
  the Lanczos estimate of the logarithmic norm) and :func:`step_tangent` (one explicit
  Runge–Kutta step of the state and of its linearization);
* the study driver :func:`decay_kernel` (pair or tangent mode, all layers of a
  trajectory fused; a serial GIL-free kernel over a slice of the batch, the slices run
  in parallel by ``api.run_threads``), and the batched :func:`jvp_kernel` /
  :func:`vjp_kernel` used by the λ̂ estimate.

Vectors are row-major ``(T, d)`` matrices; ``Jᵀ`` is the adjoint for the Frobenius
inner product, so ``⟨G, J V⟩ = ⟨Jᵀ G, V⟩``.
"""

import math

import numpy as np

from .. import threads
from . import lanes, rng
from . import rows as kernels
from .simd import gemm, gemm_ld
from .rows import _djit, _ijit, _jit  # the same compile flags as the flow
from .rows import (EXP_LO, FP_BETA, FP_DAMPING, GELU, GELU_TANH, IP_ACT, IP_ATTN,
                      IP_CAUSAL, IP_FFN, IP_HEADS, IP_LIN, RELU, STATUS_OK, TANH, exp_neg)

#: Mode codes of :func:`decay_kernel` (``methods.MODES``).
MODE_PAIR, MODE_TANGENT = 0, 1

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


# --------------------------------------------------------------------- helpers
@_jit
def activate_prime(z, act):
    """σ'(z) for the activation code ``act`` (relu'(0) = 0); scalar, any activation."""
    if act == GELU:
        return 0.5 * (1.0 + math.erf(z * _SQRT_HALF)) + z * _INV_SQRT_2PI * math.exp(-0.5 * z * z)
    if act == GELU_TANH:
        th = math.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z * z * z))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * z * z)
        return 0.5 * (1.0 + th) + 0.5 * z * (1.0 - th * th) * du
    if act == RELU:
        return 1.0 if z > 0.0 else 0.0
    if act == TANH:
        th = math.tanh(z)
        return 1.0 - th * th
    return 1.0


@_ijit
def gelu_bias_prime(H, b, S, dt, short):
    """``H[i, j] = GELU(z)`` and ``S[i, j] = GELU'(z) = Φ(z) + z·φ(z)`` for
    ``z = H[i, j] + b[j]``, in one pass.

    ``H`` is computed exactly as :func:`kernels.gelu_bias` computes it (the same
    :func:`kernels.two_cdf`, so the state stays bit-identical to the plain flow's)
    and ``Φ(z)`` is half that same ``2Φ(z)``: no second erfc and no division.
    ``φ(z) = e^{−z²/2}/√(2π)`` from :func:`kernels.exp_neg`. Branch-free, so the loop
    vectorizes.
    """
    T, m = H.shape
    lo = dt(EXP_LO)
    for i in range(T):
        for j in range(m):
            z = H[i, j] + b[j]
            g = kernels.two_cdf(z, dt, lo, short)
            H[i, j] = dt(0.5) * z * g
            phi = exp_neg(dt(-0.5) * z * z, dt, lo, short) * dt(_INV_SQRT_2PI)
            S[i, j] = dt(0.5) * g + z * phi


@_jit
def bias_activate_prime(H, b, act, S):
    """``H[i, j] = σ(z)`` (bit-identical to :func:`kernels.bias_activate`, so the
    state follows the plain flow's) and ``S[i, j] = σ'(z)``, ``z = H[i, j] + b[j]``.

    GELU takes the fused, vectorized :func:`gelu_bias_prime` (float32 with the short
    polynomials, the dtype test outside the loop as in ``bias_activate``); the other
    activations ``kernels.bias_activate`` and :func:`activate_prime`.
    """
    dt = H.dtype.type
    T, m = H.shape
    if act == GELU:
        if H.itemsize == 4:
            gelu_bias_prime(H, b, S, dt, True)
        else:
            gelu_bias_prime(H, b, S, dt, False)
        return
    for i in range(T):
        for j in range(m):
            S[i, j] = H[i, j] + b[j]
    kernels.bias_activate(H, b, act)
    for i in range(T):
        for j in range(m):
            S[i, j] = dt(activate_prime(S[i, j], act))


@_jit
def layer_of(W, n):
    """Weight set used by layer ``n`` (the rule of ``kernels.advance``)."""
    return n if W[0].shape[0] > 1 or W[6].shape[0] > 1 or W[2].shape[0] > 1 else 0


def make_jvp_scratch(W, T, d, n_stages, dtype):
    """Allocate one slice's tangent scratch (beside ``kernels.make_scratch``'s);
    plain Python, like it.

    Returns
    -------
    dstages : (n_stages, T, d)
        Tangent RK stages.
    ds : (T, d)
        Tangent stage input.
    js : tuple
        Buffers of :func:`rhs_and_jvp`: ``(S (T, m), dqkv (T, 3d), dP (T, T),
        dheads (d, T), dhidden (T, m), qtd (d, T))``; ``S`` keeps the activation's
        derivative σ'(z). (The softmax the tangent reuses is ``kernels.make_scratch``'s
        ``P``.)
    """
    m = W[2].shape[2]
    dstages, ds, *js = kernels.aligned_buffers(((n_stages, T, d), (T, d), (T, m), (T, 3 * d),
                                                (T, T), (d, T), (T, m), (d, T)), dtype)
    return dstages, ds, tuple(js)


def make_vjp_scratch(W, T, d, dtype):
    """Allocate the buffers of :func:`rhs_vjp` (plain Python).

    ``(qkv, dqkv, go, P, dS, hidden, ghidden)`` of shapes ``(T, 3d), (T, 3d), (T, d),
    (T, T), (T, T), (T, m), (T, m)``.
    """
    m = W[2].shape[2]
    return tuple(kernels.aligned_buffers(((T, 3 * d), (T, 3 * d), (T, d), (T, T), (T, T),
                                          (T, m), (T, m)), dtype))


# ------------------------------------------------------------------------ JVP
@_jit
def attention_tangent(V, wqkv, wo, n_heads, beta, causal, rs, js, out):
    """``out += g'(X)·V`` from the activations ``kernels.attention_packed`` left at X.

    With the transposed probabilities ``P[j, i] = softmax_j(S_i·)`` (key j, query i)
    and the scale ``s = β/√d_h``: ``dS[j, i] = K_j·(s dQ_i) + dK_j·(s Q_i)`` (two
    :func:`~tfkernels.simd.gemm_ld` products against ``(s dQ_h)ᵀ`` and ``(s Q_h)ᵀ``
    packed as ``(d_h, T)`` blocks), ``dP[j, i] = P[j, i]·(dS[j, i] − Σ_k P[k, i] dS[k, i])``
    (column-wise, element-wise over queries), and
    ``dO_hᵀ = V_hᵀ dP + dV_hᵀ P`` (two products reading ``V_h`` and ``dV_h``
    transposed, into head h's rows of ``dheads (d, T)``, transposed as in the forward
    pass).
    The forward pass left ``(s Q)ᵀ`` in ``qt`` and every head's probabilities in
    ``P``, unless ``H·T²`` passed ``config.SOFTMAX_BLOCK_BYTES``: then ``P`` holds a
    group of heads at a time and each group is recomputed by ``kernels.head_probs``
    exactly as the forward pass computed it.
    """
    qkv, _, _, mt, qt, P = rs
    _, dqkv, dP, dheads, _, qtd = js
    T, d = V.shape
    dh = d // n_heads
    G = P.shape[1] // T
    C = P.shape[1]
    z = V.dtype.type(0.0)
    gemm(V, wqkv, dqkv, False)
    kernels.transpose_scaled(dqkv, 0, d, V.dtype.type(beta / math.sqrt(dh)), qtd)
    for h0 in range(0, n_heads, G):
        g = min(G, n_heads - h0)
        if G < n_heads:
            kernels.head_probs(qkv, h0, g, dh, causal, qt, P, mt)
        for k in range(g):
            h = h0 + k
            gemm_ld(qkv, d + h * dh, 3 * d, 1, qtd, h * dh * T, T, dP, 0, T, T, dh, T, False)
            gemm_ld(dqkv, d + h * dh, 3 * d, 1, qt, h * dh * T, T, dP, 0, T, T, dh, T, True)
            mean = mt[0]
            for i in range(T):
                mean[i] = z
            for j in range(T):
                for i in range(T):
                    mean[i] += P[j, k * T + i] * dP[j, i]
            for j in range(T):
                for i in range(T):
                    dP[j, i] = P[j, k * T + i] * (dP[j, i] - mean[i])
            gemm_ld(qkv, 2 * d + h * dh, 1, 3 * d, dP, 0, T, dheads, h * dh * T, T, dh, T,
                    T, False)
            gemm_ld(dqkv, 2 * d + h * dh, 1, 3 * d, P, k * T, C, dheads, h * dh * T, T, dh,
                    T, T, True)
    gemm_ld(dheads, 0, 1, T, wo, 0, d, out, 0, d, T, d, d, True)


@_jit
def rhs_and_jvp(X, V, W, fp, ip, layer, out, dout, rs, js):
    """``out = f(X)`` (bit-identical to :func:`kernels.rhs`) and ``dout = f'(X)·V``.

    One forward pass, the operations of ``kernels.rhs`` in the same order (its own
    pieces: ``damped_linear``, ``attention_packed``, and ``ffn_packed``'s steps with
    σ'(z) kept in ``js``); the JVP then costs only the products with the tangent.
    ``rs`` from ``kernels.make_scratch``, ``js`` from :func:`make_jvp_scratch`.
    """
    A, w1, w2, b1, b2 = W[6][layer], W[2][layer], W[4][layer], W[3][layer], W[5][layer]
    qkv, heads, hidden, mt, qt, P = rs
    S, dhidden = js[0], js[4]
    γ = fp[FP_DAMPING]
    T, d = X.shape
    # the forward pass: kernels.rhs with the activations kept
    kernels.damped_linear(X, γ, A, ip[IP_LIN], out)
    if ip[IP_ATTN]:
        kernels.attention_packed(X, W[0][layer], W[1][layer], ip[IP_HEADS], fp[FP_BETA],
                                 ip[IP_CAUSAL], qkv, heads, qt, P, mt, out)
    if ip[IP_FFN]:
        gemm(X, w1, hidden, False)
        bias_activate_prime(hidden, b1, ip[IP_ACT], S)
        gemm(hidden, w2, out, True)
        for i in range(T):
            for j in range(d):
                out[i, j] += b2[j]
    # the tangent
    kernels.damped_linear(V, γ, A, ip[IP_LIN], dout)
    if ip[IP_ATTN]:
        attention_tangent(V, W[0][layer], W[1][layer], ip[IP_HEADS], fp[FP_BETA],
                          ip[IP_CAUSAL], rs, js, dout)
    if ip[IP_FFN]:
        gemm(V, w1, dhidden, False)
        for i in range(T):
            for j in range(dhidden.shape[1]):
                dhidden[i, j] *= S[i, j]
        gemm(dhidden, w2, dout, True)


@_jit
def rhs_jvp(X, V, W, fp, ip, layer, out, scratch):
    """``out = f'(X)·V`` with weight set ``layer``.

    ``scratch = (fx, rs, js)``: ``f(X)`` goes to ``fx (T, d)``, ``rs`` from
    ``kernels.make_scratch``, ``js`` from :func:`make_jvp_scratch`.
    """
    fx, rs, js = scratch
    rhs_and_jvp(X, V, W, fp, ip, layer, fx, out, rs, js)


@_jit
def step_tangent(X, D, W, fp, ip, layer, a, b, h, stages, xs, rs, dstages, ds, js):
    """One explicit RK step of the state and of its linearization, in place.

    ``X`` advances exactly as in :func:`kernels.rk_step` (the same
    ``kernels.stage_input``/``step_update``, so bit-identical), and
    ``D ← D + h Σ b_i dk_i`` with ``dk_i = f'(x_i)·(D + h Σ_{j<i} a_ij dk_j)`` at the
    stage states ``x_i``, each stage's JVP taken from its own forward pass
    (:func:`rhs_and_jvp`).
    """
    for i in range(b.shape[0]):
        if i == 0:
            rhs_and_jvp(X, D, W, fp, ip, layer, stages[0], dstages[0], rs, js)
            continue
        kernels.stage_input(X, stages, a, h, i, xs)
        kernels.stage_input(D, dstages, a, h, i, ds)
        rhs_and_jvp(xs, ds, W, fp, ip, layer, stages[i], dstages[i], rs, js)
    kernels.step_update(X, stages, b, h, xs)
    kernels.step_update(D, dstages, b, h, ds)


# ------------------------------------------------------------------------ VJP
@_jit
def attention_vjp(X, G, wqkv, wqkv_t, wo_t, n_heads, beta, causal, vs, out):
    """``out += (∂g/∂X)ᵀ·G`` (the adjoint of :func:`attention_tangent`)."""
    qkv, dqkv, go, P, dS, _, _ = vs
    T, d = X.shape
    dh = d // n_heads
    scale = beta / math.sqrt(dh)
    gemm(X, wqkv, qkv, False)
    gemm(G, wo_t, go, False)         # gradient w.r.t. the concatenated heads
    dqkv[:, :] = 0
    for hd in range(n_heads):
        q0, k0, v0 = hd * dh, d + hd * dh, 2 * d + hd * dh
        for i in range(T):
            n_keys = i + 1 if causal else T
            m = -np.inf
            for j in range(T):
                P[i, j] = 0.0
                dS[i, j] = 0.0
            for j in range(n_keys):
                s = 0.0
                for c in range(dh):
                    s += qkv[i, q0 + c] * qkv[j, k0 + c]
                P[i, j] = s * scale
                m = max(m, P[i, j])
            total = 0.0
            for j in range(n_keys):
                e = math.exp(P[i, j] - m)
                P[i, j] = e
                total += e
            inv = 1.0 / total
            mean_dp = 0.0
            for j in range(n_keys):
                P[i, j] *= inv
                dp = 0.0
                for c in range(dh):
                    dp += go[i, q0 + c] * qkv[j, v0 + c]
                dS[i, j] = dp
                mean_dp += P[i, j] * dp
            for j in range(n_keys):
                dS[i, j] = P[i, j] * (dS[i, j] - mean_dp) * scale
        for i in range(T):
            for j in range(T):
                pij, sij = P[i, j], dS[i, j]
                for c in range(dh):
                    dqkv[j, v0 + c] += pij * go[i, q0 + c]
                    dqkv[i, q0 + c] += sij * qkv[j, k0 + c]
                    dqkv[j, k0 + c] += sij * qkv[i, q0 + c]
    gemm(dqkv, wqkv_t, out, True)


@_jit
def ffn_vjp(X, G, w1, w1_t, b1, w2_t, act, vs, out):
    """``out += W_1 ((G W_2ᵀ) ⊙ σ'(X W_1 + b_1))`` in row form."""
    hidden, gh = vs[5], vs[6]
    gemm(X, w1, hidden, False)
    gemm(G, w2_t, gh, False)
    for i in range(X.shape[0]):
        for j in range(hidden.shape[1]):
            gh[i, j] *= activate_prime(hidden[i, j] + b1[j], act)
    gemm(gh, w1_t, out, True)


@_jit
def rhs_vjp(X, G, W, fp, ip, layer, out, vs):
    """``out = f'(X)ᵀ·G`` with weight set ``layer``; ``vs`` from :func:`make_vjp_scratch`."""
    wqkv, wo, w1, b1, w2, b2, A = W[0], W[1], W[2], W[3], W[4], W[5], W[6]
    γ = fp[FP_DAMPING]
    T, d = X.shape
    for i in range(T):
        for j in range(d):
            out[i, j] = -γ * G[i, j]
    if ip[IP_LIN]:
        gemm(G, W[11][layer], out, True)
    if ip[IP_ATTN]:
        attention_vjp(X, G, wqkv[layer], W[7][layer], W[8][layer], ip[IP_HEADS], fp[FP_BETA],
                      ip[IP_CAUSAL], vs, out)
    if ip[IP_FFN]:
        ffn_vjp(X, G, w1[layer], W[9][layer], b1[layer], W[10][layer], ip[IP_ACT], vs, out)


@_djit
def _jvp_batch(X, V, W, fp, ip, layers, out, scratch):
    """``out[k] = f'(X[k])·V[k]`` with weight set ``layers[k]``, serially over k;
    ``scratch`` is ``(f(X) buffer, rhs buffers, jvp buffers)``."""
    for k in range(X.shape[0]):
        rhs_jvp(X[k], V[k], W, fp, ip, layers[k], out[k], scratch)


@_djit
def _vjp_batch(X, G, W, fp, ip, layers, out, vs):
    """``out[k] = f'(X[k])ᵀ·G[k]`` with weight set ``layers[k]``, serially over k."""
    for k in range(X.shape[0]):
        rhs_vjp(X[k], G[k], W, fp, ip, layers[k], out[k], vs)


def jvp_kernel(X, V, W, fp, ip, layers, out):
    """``out[k] = f'(X[k])·V[k]`` with weight set ``layers[k]``, parallel over k
    (``api.run_threads``; C-contiguous arrays, validated by the caller)."""
    T, d = X.shape[1:]

    def body(lo, hi):
        _, fx, rs = kernels.make_scratch(W, ip, T, d, 1, X.dtype)
        js = make_jvp_scratch(W, T, d, 1, X.dtype)[2]
        _jvp_batch(X[lo:hi], V[lo:hi], W, fp, ip, layers[lo:hi], out[lo:hi], (fx, rs, js))

    threads.run_threads(body, X.shape[0])


def vjp_kernel(X, G, W, fp, ip, layers, out):
    """``out[k] = f'(X[k])ᵀ·G[k]`` with weight set ``layers[k]``, parallel over k
    (``api.run_threads``)."""
    threads.run_threads(lambda lo, hi: _vjp_batch(
        X[lo:hi], G[lo:hi], W, fp, ip, layers[lo:hi], out[lo:hi],
        make_vjp_scratch(W, *X.shape[1:], X.dtype)), X.shape[0])


# ---------------------------------------------------------------- the driver
@_jit
def sq_norm(A):
    """Σ A², accumulated in float64."""
    s = 0.0
    for i in range(A.size):
        v = np.float64(A.flat[i])
        s += v * v
    return s


@_jit
def sq_dist(A, B):
    """‖A − B‖²_F in float64 (exact differences of float32 inputs)."""
    s = 0.0
    for i in range(A.size):
        v = np.float64(A.flat[i]) - np.float64(B.flat[i])
        s += v * v
    return s


@_jit
def initial_pair(X, Y, seed, g, eps):
    """``X = X_0``, ``Y = X_0 + ε·U`` of trajectory ``g``; returns ``log ‖X_0 − Y_0‖``.

    ``X_0`` is the standard normal state of ``tfk.random_states`` (stream
    ``STREAM_STATE``), U a unit-Frobenius direction from ``STREAM_DIRECTION``;
    ``Y`` is used as scratch for U first.
    """
    rng.fill_normal(rng.key(seed, rng.STREAM_STATE, g), 0, 1.0, X)
    rng.fill_normal(rng.key(seed, rng.STREAM_DIRECTION, g), 0, 1.0, Y)
    scale = eps / math.sqrt(sq_norm(Y))
    for i in range(X.size):
        Y.flat[i] = X.flat[i] + scale * np.float64(Y.flat[i])
    return 0.5 * math.log(sq_dist(X, Y))


@_jit
def initial_tangent(X, D, seed, g):
    """``X = X_0``, ``D = U`` (unit direction) of trajectory ``g``; returns ``log ‖D‖``."""
    rng.fill_normal(rng.key(seed, rng.STREAM_STATE, g), 0, 1.0, X)
    rng.fill_normal(rng.key(seed, rng.STREAM_DIRECTION, g), 0, 1.0, D)
    inv = 1.0 / math.sqrt(sq_norm(D))
    for i in range(D.size):
        D.flat[i] = np.float64(D.flat[i]) * inv
    return 0.5 * math.log(sq_norm(D))


@_jit
def advance_state(X, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch):
    """``kernels.advance`` compiled once as its own function and called for both states
    of a pair. Inlined twice into :func:`run_pair` (as it was), the pair loop of the
    default study (T = 4, float64) ran 15–20 % slower when loaded from Numba's cache
    than freshly compiled (1.85 against 1.57 µs per layer of a pair), for a reason
    not found; called, it runs at 1.6 µs either way."""
    return kernels.advance(X, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch)


@_jit
def run_pair(X, Y, W, fp, ip, a, b, h, σ, noise_key, log0, stages, xs, scratch, logr):
    """All layers of one pair; fills ``logr`` and returns the status."""
    if not kernels.is_finite(log0):
        logr[:] = np.nan
        return 0
    logr[0] = 0.0
    for n in range(h.shape[0]):
        okx = advance_state(X, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch)
        oky = advance_state(Y, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch)
        lr = 0.5 * math.log(sq_dist(X, Y)) - log0 if okx and oky else np.nan
        if not kernels.is_finite(lr):
            logr[n + 1:] = np.nan
            return n + 1
        logr[n + 1] = lr
    return STATUS_OK


@_jit
def advance_tangent(X, D, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch,
                    dstages, ds, js):
    """Layer ``n`` of the state and its tangent: :func:`step_tangent`, then the noise
    (on X only) and finiteness test of ``kernels.advance``; returns whether X is finite."""
    step_tangent(X, D, W, fp, ip, layer_of(W, n), a, b, h[n], stages, xs, scratch,
                 dstages, ds, js)
    if σ[n] != 0:
        kernels.add_noise(X, σ[n], noise_key, n)
    return kernels.all_finite(X)


@_jit
def run_tangent(X, D, W, fp, ip, a, b, h, σ, noise_key, log0, stages, xs, scratch,
                dstages, ds, js, logr):
    """All layers of one tangent trajectory, δ renormalized each layer.

    Layer n is :func:`step_tangent` followed by the noise and finiteness test of
    ``kernels.advance``, so ``X`` follows the plain flow bit for bit (additive noise
    adds nothing to δ).
    ``log r_n = Σ_{k<n} log ‖δ_{k+1}‖ − log ‖δ_0‖`` with δ rescaled to unit norm after
    every layer, so it neither underflows nor overflows.
    """
    logr[0] = 0.0
    acc = -log0
    nrm = 1.0
    for n in range(h.shape[0]):
        ok = advance_tangent(X, D, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs,
                             scratch, dstages, ds, js)
        if ok:
            nrm = math.sqrt(sq_norm(D))
            ok = nrm > 0.0 and kernels.is_finite(nrm)
        if not ok:
            logr[n + 1:] = np.nan
            return n + 1
        acc += math.log(nrm)
        logr[n + 1] = acc
        inv = 1.0 / nrm
        for i in range(D.size):
            D.flat[i] = np.float64(D.flat[i]) * inv
    return STATUS_OK


@_djit
def _decay_batch(mode, W, fp, ip, a, b, h, σ, seed, start, eps, logr, status, X, Y, stages,
                 xs, scratch, dstages, ds, js):
    """Log growth ``log r_n`` of trajectories ``start … start + B − 1``, n = 0 … N.

    Parameters
    ----------
    mode : int
        ``MODE_PAIR`` (finite perturbation ε) or ``MODE_TANGENT`` (exact linearization).
    W, fp, ip
        From :func:`kernels.pack_params`.
    a, b, h, σ
        Tableau, step sizes and noise scales from ``api.prepare_run``.
    seed, start : int
        Trajectory ``g = start + k`` draws X_0, U and its noise from keys
        ``(seed, STREAM_*, g)``; the noise is shared by X and Y.
    eps : float
        ε of the pair mode.
    logr : ndarray of float64, shape (B, N + 1)
        Output; NaN from the first non-finite layer on.
    status : ndarray of int64, shape (B,)
        ``STATUS_OK``; else the first layer n (1-based) where a state or r_n was not
        finite (r_n = 0 included: X and Y collapsed), or 0 when ε·U vanished in the
        state dtype (X_0 + ε·U == X_0).
    X, Y, (stages, xs, scratch), (dstages, ds, js)
        Buffers: two states ``(T, d)``, ``kernels.make_scratch``'s and
        :func:`make_jvp_scratch`'s.
    """
    for k in range(logr.shape[0]):
        g = start + k
        noise_key = rng.key(seed, rng.STREAM_NOISE, g)
        if mode == MODE_PAIR:
            log0 = initial_pair(X, Y, seed, g, eps)
            status[k] = run_pair(X, Y, W, fp, ip, a, b, h, σ, noise_key, log0, stages,
                                 xs, scratch, logr[k])
        else:
            log0 = initial_tangent(X, Y, seed, g)
            status[k] = run_tangent(X, Y, W, fp, ip, a, b, h, σ, noise_key, log0,
                                    stages, xs, scratch, dstages, ds, js, logr[k])


@_jit
def lane_sq_dist(X, Y, l, diff):
    """``‖X_l − Y_l‖²`` (``diff``) or ``‖X_l‖²`` of lane ``l`` of groups ``X``, ``Y``,
    summed in float64 in the element order of :func:`sq_dist` / :func:`sq_norm`."""
    L = lanes.lanes(X)
    s = 0.0
    for t in range(X.shape[0]):
        for j in range(l, X.shape[1], L):
            v = np.float64(X[t, j]) - np.float64(Y[t, j]) if diff else np.float64(X[t, j])
            s += v * v
    return s


@_djit
def _pair_lanes(W, fp, ip, a, b, h, σ, seed, start, eps, logr, status, u, v, log0, X, Y,
                stages, xs, scratch):
    """Pair mode of :func:`_decay_batch` with the trajectories in groups of L across
    the vector lanes (:mod:`tfkernels.lanes`): the states ``X``, ``Y`` of L pairs
    are two groups ``(T, d·L)``, each layer :func:`lanes.advance_group` on both (the
    noise of trajectory g on both of its states, as in :func:`run_pair`).

    The states are bit-identical to :func:`run_pair`'s; ``log r_n`` agrees to
    rounding (the squared distance is summed lane by lane in the same order, but
    LLVM may reassociate :func:`sq_dist`'s reduction). A pair whose ``r_n`` is not
    finite (a state that overflowed gives an infinite or NaN distance: the same test
    as :func:`run_pair`'s) is finished as there and its lanes zeroed. ``u``, ``v``:
    ``(T, d)`` scratch; ``log0 (L,)`` float64 scratch.
    """
    B = logr.shape[0]
    L = lanes.lanes(X)
    N = h.shape[0]
    for g0 in range(0, B, L):
        nl = min(L, B - g0)
        live = 0
        for l in range(L):
            if l < nl:
                lg = initial_pair(u, v, seed, start + g0 + l, eps)
                log0[l] = lg
                logr[g0 + l, 0] = 0.0
                status[g0 + l] = STATUS_OK
                if kernels.is_finite(lg):
                    live += 1
                else:
                    logr[g0 + l, :] = np.nan
                    status[g0 + l] = 0
            if l < nl and status[g0 + l] == STATUS_OK:
                lanes.load_lane(u, l, X)
                lanes.load_lane(v, l, Y)
            else:
                lanes.zero_lane(X, l)
                lanes.zero_lane(Y, l)
        st = status[g0:g0 + nl]
        for n in range(N):
            if live == 0:
                break
            lanes.advance_group(X, W, fp, ip, n, a, b, h, σ, seed, start + g0, st, u,
                                stages, xs, scratch)
            lanes.advance_group(Y, W, fp, ip, n, a, b, h, σ, seed, start + g0, st, u,
                                stages, xs, scratch)
            for l in range(nl):
                if st[l] != STATUS_OK:
                    continue
                lr = 0.5 * math.log(lane_sq_dist(X, Y, l, True)) - log0[l]
                if kernels.is_finite(lr):
                    logr[g0 + l, n + 1] = lr
                else:
                    logr[g0 + l, n + 1:] = np.nan
                    st[l] = n + 1
                    live -= 1
                    lanes.zero_lane(X, l)
                    lanes.zero_lane(Y, l)


@_jit
def attention_tangent_lanes(V, wqkv, wo, n_heads, beta, L, rs, js, out):
    """:func:`attention_tangent` for a group (:mod:`tfkernels.lanes` layout), from
    the activations ``lanes.attention_lanes`` left: ``qkv`` with its Q block already
    scaled by ``s = β/√d_h``, every head's transposed probabilities in
    ``P (T, H·T·L)``. The same products in the same k order, so the same bits:
    ``dS = K_h (s dQ_h)ᵀ + dK_h (s Q_h)ᵀ``, ``dP = P∘(dS − Σ_keys P∘dS)`` per query
    column, ``dO_h = dP V_h + P_h dV_h``, ``out += dO W_o``."""
    qkv, P, _, _, mt = rs
    _, dqkv, dP, dheads, _ = js
    T = V.shape[0]
    d = V.shape[1] // L
    dh = d // n_heads
    e = 3 * d * L
    c = n_heads * T * L
    TL = T * L
    z = V.dtype.type(0.0)
    lanes.lgemm(V, 0, d * L, L, wqkv, 0, 3 * d, 1, False, dqkv, 0, e, L, T, d, 3 * d, False)
    scale = V.dtype.type(beta / math.sqrt(dh))
    for i in range(T):
        for j in range(d * L):
            dqkv[i, j] *= scale
    for h in range(n_heads):
        lanes.lgemm(dqkv, h * dh * L, e, L, qkv, (d + h * dh) * L, L, e, True,
                    dP, 0, L, TL, T, dh, T, False)
        lanes.lgemm(qkv, h * dh * L, e, L, dqkv, (d + h * dh) * L, L, e, True,
                    dP, 0, L, TL, T, dh, T, True)
        mean = mt[0]
        for i in range(TL):
            mean[i] = z
        for j in range(T):
            for i in range(TL):
                mean[i] += P[j, h * TL + i] * dP[j, i]
        for j in range(T):
            for i in range(TL):
                dP[j, i] = P[j, h * TL + i] * (dP[j, i] - mean[i])
        lanes.lgemm(dP, 0, L, TL, qkv, (2 * d + h * dh) * L, e, L, True,
                    dheads, h * dh * L, d * L, L, T, T, dh, False)
        lanes.lgemm(P, h * TL, L, c, dqkv, (2 * d + h * dh) * L, e, L, True,
                    dheads, h * dh * L, d * L, L, T, T, dh, True)
    lanes.lgemm(dheads, 0, d * L, L, wo, 0, d, 1, False, out, 0, d * L, L, T, d, d, True)


@_jit
def rhs_and_jvp_lanes(X, V, W, fp, ip, layer, out, dout, rs, js):
    """:func:`rhs_and_jvp` for a group (``W`` from ``lanes.pack_lanes``, ``rs`` the
    ``rhs`` scratch of ``lanes.make_scratch``, ``js`` from
    :func:`make_jvp_lanes_scratch`); the same bits as :func:`rhs_and_jvp` per lane."""
    A, w1, w2, b1, b2 = W[6][layer], W[2][layer], W[4][layer], W[3][layer], W[5][layer]
    qkv, P, heads, hidden, mt = rs
    S, dhidden = js[0], js[4]
    L = lanes.lanes(X)
    T = X.shape[0]
    d = X.shape[1] // L
    m = w1.shape[1]
    γ = fp[FP_DAMPING]
    lanes.damped_linear(X, γ, A, ip[IP_LIN], L, out)
    if ip[IP_ATTN]:
        lanes.attention_lanes(X, W[0][layer], W[1][layer], ip[IP_HEADS], fp[FP_BETA],
                              ip[IP_CAUSAL], L, qkv, P, heads, mt, out)
    if ip[IP_FFN]:
        lanes.lgemm(X, 0, d * L, L, w1, 0, m, 1, False, hidden, 0, m * L, L, T, d, m, False)
        bias_activate_prime(hidden, b1, ip[IP_ACT], S)
        lanes.lgemm(hidden, 0, m * L, L, w2, 0, d, 1, False, out, 0, d * L, L, T, m, d, True)
        for i in range(T):
            for j in range(d * L):
                out[i, j] += b2[j]
    lanes.damped_linear(V, γ, A, ip[IP_LIN], L, dout)
    if ip[IP_ATTN]:
        attention_tangent_lanes(V, W[0][layer], W[1][layer], ip[IP_HEADS], fp[FP_BETA], L,
                                rs, js, dout)
    if ip[IP_FFN]:
        lanes.lgemm(V, 0, d * L, L, w1, 0, m, 1, False, dhidden, 0, m * L, L, T, d, m,
                    False)
        for i in range(T):
            for j in range(m * L):
                dhidden[i, j] *= S[i, j]
        lanes.lgemm(dhidden, 0, m * L, L, w2, 0, d, 1, False, dout, 0, d * L, L, T, m, d,
                    True)


def make_jvp_lanes_scratch(W, T, d, n_stages, dtype):
    """:func:`make_jvp_scratch` for a group: ``dstages (n_stages, T, d·L)``,
    ``ds (T, d·L)`` and ``(S (T, m·L), dqkv (T, 3d·L), dP (T, T·L), dheads (T, d·L),
    dhidden (T, m·L))``."""
    L = lanes.group_width(dtype)
    m = W[2].shape[2]
    dstages, ds, *js = kernels.aligned_buffers(
        ((n_stages, T, d * L), (T, d * L), (T, m * L), (T, 3 * d * L), (T, T * L),
         (T, d * L), (T, m * L)), dtype)
    return dstages, ds, tuple(js)


@_jit
def step_tangent_lanes(X, D, W, fp, ip, layer, a, b, h, stages, xs, rs, dstages, ds, js):
    """:func:`step_tangent` for a group."""
    for i in range(b.shape[0]):
        if i == 0:
            rhs_and_jvp_lanes(X, D, W, fp, ip, layer, stages[0], dstages[0], rs, js)
            continue
        kernels.stage_input(X, stages, a, h, i, xs)
        kernels.stage_input(D, dstages, a, h, i, ds)
        rhs_and_jvp_lanes(xs, ds, W, fp, ip, layer, stages[i], dstages[i], rs, js)
    kernels.step_update(X, stages, b, h, xs)
    kernels.step_update(D, dstages, b, h, ds)


@_djit
def _tangent_lanes(W, fp, ip, a, b, h, σ, seed, start, logr, status, u, v, acc, X, D,
                   stages, xs, rs, dstages, ds, js):
    """Tangent mode of :func:`_decay_batch` (:func:`run_tangent`) with the
    trajectories in groups of L across the vector lanes. The states and tangents are
    bit-identical to :func:`run_tangent`'s; the norms are summed lane by lane in the
    same order (LLVM may reassociate :func:`sq_norm`'s reduction). ``acc (L,)``
    float64 scratch: each lane's running ``log r``."""
    B = logr.shape[0]
    L = lanes.lanes(X)
    N = h.shape[0]
    for g0 in range(0, B, L):
        nl = min(L, B - g0)
        for l in range(L):
            if l < nl:
                acc[l] = -initial_tangent(u, v, seed, start + g0 + l)
                logr[g0 + l, 0] = 0.0
                status[g0 + l] = STATUS_OK
                lanes.load_lane(u, l, X)
                lanes.load_lane(v, l, D)
            else:
                lanes.zero_lane(X, l)
                lanes.zero_lane(D, l)
        live = nl
        st = status[g0:g0 + nl]
        for n in range(N):
            if live == 0:
                break
            step_tangent_lanes(X, D, W, fp, ip, layer_of(W, n), a, b, h[n], stages, xs, rs,
                               dstages, ds, js)
            lanes.add_group_noise(X, n, σ, seed, start + g0, st, u)
            for l in range(nl):
                if st[l] != STATUS_OK:
                    continue
                ok = lanes.lane_finite(X, l)
                if ok:
                    nrm = math.sqrt(lane_sq_dist(D, D, l, False))
                    ok = nrm > 0.0 and kernels.is_finite(nrm)
                if not ok:
                    logr[g0 + l, n + 1:] = np.nan
                    st[l] = n + 1
                    live -= 1
                    lanes.zero_lane(X, l)
                    lanes.zero_lane(D, l)
                    continue
                acc[l] += math.log(nrm)
                logr[g0 + l, n + 1] = acc[l]
                inv = 1.0 / nrm
                for t in range(D.shape[0]):
                    for j in range(l, D.shape[1], L):
                        D[t, j] = np.float64(D[t, j]) * inv


def decay_kernel(mode, W, fp, ip, a, b, h, σ, seed, start, eps, dtype_like, logr, status):
    """:func:`_decay_batch` on slices of the batch in parallel (``api.run_threads``);
    same arguments. Trajectory ``start + k`` gives the same bits in any slice. Both
    modes run on the lane kernels (:func:`_pair_lanes`, :func:`_tangent_lanes`) where
    the flow does (``lanes.use_lanes``)."""
    T, d = dtype_like.shape
    dt = dtype_like.dtype

    if mode == MODE_PAIR and lanes.use_lanes(T, d):
        WL = lanes.pack_lanes(W, dt)

        def body(lo, hi):
            X, stages, xs, scratch = lanes.make_scratch(W, ip, T, d, b.shape[0], dt)
            Y, u, v = kernels.aligned_buffers((X.shape, (T, d), (T, d)), dt)
            _pair_lanes(WL, fp, ip, a, b, h, σ, seed, start + lo, eps, logr[lo:hi],
                        status[lo:hi], u, v, np.empty(X.shape[1] // d), X, Y, stages,
                        xs, scratch)
    elif lanes.use_lanes(T, d):
        WL = lanes.pack_lanes(W, dt)

        def body(lo, hi):
            X, stages, xs, rs = lanes.make_scratch(W, ip, T, d, b.shape[0], dt)
            D, u, v = kernels.aligned_buffers((X.shape, (T, d), (T, d)), dt)
            _tangent_lanes(WL, fp, ip, a, b, h, σ, seed, start + lo, logr[lo:hi],
                           status[lo:hi], u, v, np.empty(X.shape[1] // d), X, D, stages,
                           xs, rs, *make_jvp_lanes_scratch(W, T, d, b.shape[0], dt))
    else:
        def body(lo, hi):
            _decay_batch(mode, W, fp, ip, a, b, h, σ, seed, start + lo, eps, logr[lo:hi],
                         status[lo:hi], *kernels.aligned_buffers(((T, d), (T, d)), dt),
                         *kernels.make_scratch(W, ip, T, d, b.shape[0], dt),
                         *make_jvp_scratch(W, T, d, b.shape[0], dt))

    threads.run_threads(body, logr.shape[0])
