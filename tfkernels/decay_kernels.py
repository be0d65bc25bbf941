"""Fused Numba kernels of the perturbation-decay study.

Built on the workers of :mod:`tfkernels.kernels` (same packed parameters ``W, fp, ip``,
same tableau / step / noise conventions):

* serial per-state workers: :func:`rhs_jvp` (the exact Jacobian–vector product
  ``f'(X)·V``), :func:`rhs_vjp` (the vector–Jacobian product ``f'(X)ᵀ·G``, for the
  Lanczos estimate of the logarithmic norm) and :func:`step_jvp` (the linearization
  of one explicit Runge–Kutta step);
* the parallel study driver :func:`decay_kernel` (pair or tangent mode, all layers of a
  block of trajectories fused, ``prange`` over blocks, scratch per block), and the
  batched :func:`jvp_kernel` / :func:`vjp_kernel` used by the λ̂ estimate.

Vectors are row-major ``(T, d)`` matrices; ``Jᵀ`` is the adjoint for the Frobenius
inner product, so ``⟨G, J V⟩ = ⟨Jᵀ G, V⟩``.
"""

import math

import numpy as np
from numba import njit, prange

from . import config, kernels, rng
from .kernels import dense
from .kernels import (FP_BETA, FP_DAMPING, GELU, GELU_TANH, IP_ACT, IP_ATTN, IP_CAUSAL,
                      IP_FFN, IP_HEADS, IP_LIN, RELU, STATUS_OK, TANH, matmul)

#: Mode codes of :func:`decay_kernel` (``methods.MODES``).
MODE_PAIR, MODE_TANGENT = 0, 1

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715

_jit = njit(cache=config.CACHE, fastmath=config.FASTMATH)
_pjit = njit(cache=config.CACHE, fastmath=config.FASTMATH, parallel=config.PARALLEL)


# --------------------------------------------------------------------- helpers
@_jit
def activate_prime(z, act):
    """σ'(z) for the activation code ``act`` (relu'(0) = 0)."""
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


@_jit
def layer_of(W, n):
    """Weight set used by layer ``n`` (the rule of ``kernels.advance``)."""
    return n if W[0].shape[0] > 1 or W[6].shape[0] > 1 or W[2].shape[0] > 1 else 0


@_jit
def make_jvp_scratch(W, T, d, n_stages, dtype_like):
    """Allocate one trajectory's tangent scratch.

    Returns
    -------
    dstages : (n_stages, T, d)
        Tangent RK stages.
    ds : (T, d)
        Tangent stage input.
    js : tuple
        ``(qkv, dqkv, dheads, p, dp, hidden, dhidden)`` buffers of :func:`rhs_jvp`:
        ``(T, 3d), (T, 3d), (T, d), (T,), (T,), (T, m), (T, m)``.
    """
    m = W[2].shape[2]
    dt = dtype_like.dtype
    dstages = np.empty((n_stages, T, d), dtype=dt)
    ds = np.empty((T, d), dtype=dt)
    js = (np.empty((T, 3 * d), dtype=dt), np.empty((T, 3 * d), dtype=dt),
          np.empty((T, d), dtype=dt), np.empty(T, dtype=dt), np.empty(T, dtype=dt),
          np.empty((T, m), dtype=dt), np.empty((T, m), dtype=dt))
    return dstages, ds, js


@_jit
def make_vjp_scratch(W, T, d, dtype_like):
    """Allocate the buffers of :func:`rhs_vjp`.

    ``(qkv, dqkv, go, P, dS, hidden, ghidden)`` of shapes ``(T, 3d), (T, 3d), (T, d),
    (T, T), (T, T), (T, m), (T, m)``.
    """
    m = W[2].shape[2]
    dt = dtype_like.dtype
    return (np.empty((T, 3 * d), dtype=dt), np.empty((T, 3 * d), dtype=dt),
            np.empty((T, d), dtype=dt), np.empty((T, T), dtype=dt),
            np.empty((T, T), dtype=dt), np.empty((T, m), dtype=dt),
            np.empty((T, m), dtype=dt))


# ------------------------------------------------------------------------ JVP
@_jit
def attention_jvp(X, V, wqkv, wo, n_heads, beta, causal, js, out):
    """``out += d/dε g(X + εV)`` at ε = 0 (exact, through the softmax).

    With ``P = softmax(S)`` row-wise: ``dS = β/√d_h (dQ Kᵀ + Q dKᵀ)``,
    ``dP = P ⊙ (dS − rowsum(P ⊙ dS))`` and ``dO_h = dP V_h + P dV_h``.
    """
    qkv, dqkv, dheads, p, dp, _, _ = js
    T, d = X.shape
    dh = d // n_heads
    scale = beta / math.sqrt(dh)
    matmul(X, wqkv, qkv, False)
    matmul(V, wqkv, dqkv, False)
    dheads[:, :] = 0
    for hd in range(n_heads):
        q0, k0, v0 = hd * dh, d + hd * dh, 2 * d + hd * dh
        for i in range(T):
            n_keys = i + 1 if causal else T
            m = -np.inf
            for j in range(n_keys):
                s = 0.0
                ds = 0.0
                for c in range(dh):
                    s += qkv[i, q0 + c] * qkv[j, k0 + c]
                    ds += dqkv[i, q0 + c] * qkv[j, k0 + c] + qkv[i, q0 + c] * dqkv[j, k0 + c]
                s *= scale
                p[j] = s
                dp[j] = ds * scale
                m = max(m, s)
            total = 0.0
            for j in range(n_keys):
                e = math.exp(p[j] - m)
                p[j] = e
                total += e
            inv = 1.0 / total
            mean_ds = 0.0
            for j in range(n_keys):
                p[j] *= inv
                mean_ds += p[j] * dp[j]
            for j in range(n_keys):
                w = p[j]
                dw = w * (dp[j] - mean_ds)
                for c in range(dh):
                    dheads[i, q0 + c] += dw * qkv[j, v0 + c] + w * dqkv[j, v0 + c]
    matmul(dheads, wo, out, True)


@_jit
def ffn_jvp(X, V, w1, b1, w2, act, js, out):
    """``out += (σ'(X W_1 + b_1) ⊙ (V W_1)) W_2``."""
    hidden, dhidden = js[5], js[6]
    matmul(X, w1, hidden, False)
    matmul(V, w1, dhidden, False)
    for i in range(X.shape[0]):
        for j in range(hidden.shape[1]):
            dhidden[i, j] *= activate_prime(hidden[i, j] + b1[j], act)
    matmul(dhidden, w2, out, True)


@_jit
def rhs_jvp(X, V, W, fp, ip, layer, out, js):
    """``out = f'(X)·V`` with weight set ``layer``; ``js`` from :func:`make_jvp_scratch`."""
    wqkv, wo, w1, b1, w2, b2, A = W[0], W[1], W[2], W[3], W[4], W[5], W[6]
    γ = fp[FP_DAMPING]
    T, d = X.shape
    for i in range(T):
        for j in range(d):
            out[i, j] = -γ * V[i, j]
    if ip[IP_LIN]:
        matmul(V, A[layer], out, True)
    if ip[IP_ATTN]:
        attention_jvp(X, V, wqkv[layer], wo[layer], ip[IP_HEADS], fp[FP_BETA],
                      ip[IP_CAUSAL], js, out)
    if ip[IP_FFN]:
        ffn_jvp(X, V, w1[layer], b1[layer], w2[layer], ip[IP_ACT], js, out)


@_jit
def step_jvp(X, D, W, fp, ip, layer, a, b, h, stages, xs, dstages, ds, js):
    """``D ← D + h Σ b_i dk_i``: the linearization of the RK step taken from ``X``.

    Call it after :func:`kernels.rk_step` (or ``advance``) has advanced a copy of
    ``X`` and left the stage slopes ``k_i`` in ``stages``; the stage states
    ``x_i = X + h Σ_{j<i} a_ij k_j`` are rebuilt with the expression of ``rk_step`` and
    ``dk_i = f'(x_i)·(D + h Σ_{j<i} a_ij dk_j)``. Additive noise adds nothing to D.
    """
    s = b.shape[0]
    T, d = X.shape
    for i in range(s):
        if i == 0:
            rhs_jvp(X, D, W, fp, ip, layer, dstages[0], js)
            continue
        for r in range(T):
            for col in range(d):
                acc = X[r, col]
                dacc = D[r, col]
                for j in range(i):
                    acc += h * a[i, j] * stages[j, r, col]
                    dacc += h * a[i, j] * dstages[j, r, col]
                xs[r, col] = acc
                ds[r, col] = dacc
        rhs_jvp(xs, ds, W, fp, ip, layer, dstages[i], js)
    for r in range(T):
        for col in range(d):
            acc = 0.0 * D[r, col]
            for i in range(s):
                acc += b[i] * dstages[i, r, col]
            D[r, col] += h * acc


# ------------------------------------------------------------------------ VJP
@_jit
def attention_vjp(X, G, wqkv, wo, n_heads, beta, causal, vs, out):
    """``out += (∂g/∂X)ᵀ·G`` (the adjoint of :func:`attention_jvp`)."""
    qkv, dqkv, go, P, dS, _, _ = vs
    T, d = X.shape
    dh = d // n_heads
    scale = beta / math.sqrt(dh)
    matmul(X, wqkv, qkv, False)
    dense(G, wo, go, False)          # gradient w.r.t. the concatenated heads
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
    dense(dqkv, wqkv, out, True)


@_jit
def ffn_vjp(X, G, w1, b1, w2, act, vs, out):
    """``out += W_1 ((G W_2ᵀ) ⊙ σ'(X W_1 + b_1))`` in row form."""
    hidden, gh = vs[5], vs[6]
    matmul(X, w1, hidden, False)
    dense(G, w2, gh, False)
    for i in range(X.shape[0]):
        for j in range(hidden.shape[1]):
            gh[i, j] *= activate_prime(hidden[i, j] + b1[j], act)
    dense(gh, w1, out, True)


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
        dense(G, A[layer], out, True)
    if ip[IP_ATTN]:
        attention_vjp(X, G, wqkv[layer], wo[layer], ip[IP_HEADS], fp[FP_BETA],
                      ip[IP_CAUSAL], vs, out)
    if ip[IP_FFN]:
        ffn_vjp(X, G, w1[layer], b1[layer], w2[layer], ip[IP_ACT], vs, out)


@_pjit
def jvp_kernel(X, V, W, fp, ip, layers, out):
    """``out[k] = f'(X[k])·V[k]`` with weight set ``layers[k]``, parallel over k."""
    B, T, d = X.shape
    n_blocks = (B + config.BLOCK - 1) // config.BLOCK
    for blk in prange(n_blocks):
        _, _, js = make_jvp_scratch(W, T, d, 1, X)
        for k in range(blk * config.BLOCK, min(B, (blk + 1) * config.BLOCK)):
            rhs_jvp(X[k], V[k], W, fp, ip, layers[k], out[k], js)


@_pjit
def vjp_kernel(X, G, W, fp, ip, layers, out):
    """``out[k] = f'(X[k])ᵀ·G[k]`` with weight set ``layers[k]``, parallel over k."""
    B, T, d = X.shape
    n_blocks = (B + config.BLOCK - 1) // config.BLOCK
    for blk in prange(n_blocks):
        vs = make_vjp_scratch(W, T, d, X)
        for k in range(blk * config.BLOCK, min(B, (blk + 1) * config.BLOCK)):
            rhs_vjp(X[k], G[k], W, fp, ip, layers[k], out[k], vs)


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
def run_pair(X, Y, W, fp, ip, a, b, h, σ, noise_key, log0, stages, xs, scratch, logr):
    """All layers of one pair; fills ``logr`` and returns the status."""
    if not np.isfinite(log0):
        logr[:] = np.nan
        return 0
    logr[0] = 0.0
    for n in range(h.shape[0]):
        okx = kernels.advance(X, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch)
        oky = kernels.advance(Y, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch)
        lr = 0.5 * math.log(sq_dist(X, Y)) - log0 if okx and oky else np.nan
        if not np.isfinite(lr):
            logr[n + 1:] = np.nan
            return n + 1
        logr[n + 1] = lr
    return STATUS_OK


@_jit
def run_tangent(X, D, X0, W, fp, ip, a, b, h, σ, noise_key, log0, stages, xs, scratch,
                dstages, ds, js, logr):
    """All layers of one tangent trajectory, δ renormalized each layer.

    ``log r_n = Σ_{k<n} log ‖δ_{k+1}‖ − log ‖δ_0‖`` with δ rescaled to unit norm after
    every layer, so it neither underflows nor overflows. ``X0`` is scratch.
    """
    logr[0] = 0.0
    acc = -log0
    nrm = 1.0
    for n in range(h.shape[0]):
        X0[:, :] = X
        ok = kernels.advance(X, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch)
        if ok:
            step_jvp(X0, D, W, fp, ip, layer_of(W, n), a, b, h[n], stages, xs, dstages, ds, js)
            nrm = math.sqrt(sq_norm(D))
            ok = nrm > 0.0 and np.isfinite(nrm)
        if not ok:
            logr[n + 1:] = np.nan
            return n + 1
        acc += math.log(nrm)
        logr[n + 1] = acc
        inv = 1.0 / nrm
        for i in range(D.size):
            D.flat[i] = np.float64(D.flat[i]) * inv
    return STATUS_OK


@_pjit
def decay_kernel(mode, W, fp, ip, a, b, h, σ, seed, start, eps, dtype_like, logr, status):
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
    dtype_like : ndarray
        Any array of the state dtype (the shape of a state is read from it: (T, d)).
    logr : ndarray of float64, shape (B, N + 1)
        Output; NaN from the first non-finite layer on.
    status : ndarray of int64, shape (B,)
        ``STATUS_OK``; else the first layer n (1-based) where a state or r_n was not
        finite (r_n = 0 included: X and Y collapsed), or 0 when ε·U vanished in the
        state dtype (X_0 + ε·U == X_0).
    """
    B = logr.shape[0]
    T, d = dtype_like.shape
    n_blocks = (B + config.BLOCK - 1) // config.BLOCK
    for blk in prange(n_blocks):
        stages, xs, scratch = kernels.make_scratch(W, T, d, b.shape[0], dtype_like)
        dstages, ds, js = make_jvp_scratch(W, T, d, b.shape[0], dtype_like)
        X = np.empty((T, d), dtype=dtype_like.dtype)
        Y = np.empty((T, d), dtype=dtype_like.dtype)
        X0 = np.empty((T, d), dtype=dtype_like.dtype)
        for k in range(blk * config.BLOCK, min(B, (blk + 1) * config.BLOCK)):
            g = start + k
            noise_key = rng.key(seed, rng.STREAM_NOISE, g)
            if mode == MODE_PAIR:
                log0 = initial_pair(X, Y, seed, g, eps)
                status[k] = run_pair(X, Y, W, fp, ip, a, b, h, σ, noise_key, log0, stages,
                                     xs, scratch, logr[k])
            else:
                log0 = initial_tangent(X, Y, seed, g)
                status[k] = run_tangent(X, Y, X0, W, fp, ip, a, b, h, σ, noise_key, log0,
                                        stages, xs, scratch, dstages, ds, js, logr[k])
