"""Fused Numba kernels of the transformer vector field and its integrators.

Three layers, as in the rest of the package:

* serial per-trajectory workers on one state ``X`` of shape ``(T, d)``:
  :func:`rhs` (the vector field ``f``), :func:`rk_step` (one explicit Runge–Kutta
  step driven by a tableau) and :func:`advance` (one layer: step, noise, finiteness);
* parallel drivers that run *all* layers of many trajectories in one call,
  ``prange`` over blocks of trajectories with per-block scratch:
  :func:`integrate_kernel`, :func:`vector_field_kernel`;
* :func:`pack_params`, which lays a :class:`~tfkernels.TransformerParams` out as the
  flat tuple of arrays the kernels take.

Every weight carries a leading layer axis of length L (L = 1 for shared weights); layer
n uses set ``n if L > 1 else 0`` for all stages of its step. Settings travel as two
small arrays (``fp``: floats, ``ip``: integer codes), so each dtype compiles one
specialization of each kernel, whatever the configuration.
"""

import math

import numpy as np
from numba import njit, prange

from . import config, rng
from .methods import ACTIVATIONS

# Slots of the integer settings ``ip`` and float settings ``fp``.
IP_HEADS, IP_CAUSAL, IP_ACT, IP_ATTN, IP_FFN, IP_LIN = range(6)
FP_BETA, FP_DAMPING = range(2)

GELU, GELU_TANH, RELU, TANH, IDENTITY = (ACTIVATIONS[k] for k in
                                        ("gelu", "gelu_tanh", "relu", "tanh", "identity"))

#: Value of ``status`` for a trajectory that stayed finite through every layer.
STATUS_OK = -1

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

_jit = njit(cache=config.CACHE, fastmath=config.FASTMATH)
_pjit = njit(cache=config.CACHE, fastmath=config.FASTMATH, parallel=config.PARALLEL)


def pack_params(params):
    """Lay ``params`` out as the arguments every kernel takes.

    Parameters
    ----------
    params : TransformerParams

    Returns
    -------
    W : tuple of ndarray
        ``(wqkv, wo, w1, b1, w2, b2, A)`` with a leading layer axis; ``wqkv`` is
        ``[wq | wk | wv]`` of shape ``(L, d, 3d)`` so that Q, K and V come out of one
        pass over X. Absent terms are empty arrays.
    fp : ndarray of params.dtype
        ``[beta, damping]``.
    ip : ndarray of int64
        ``[n_heads, causal, activation, has_attention, has_ffn, has_linear]``.
    """
    dt = params.dtype
    lead = (1,) if params.n_sets is None else ()

    def layered(a):
        # A fresh writable copy: Numba types read-only arrays (the params' weights are
        # frozen) differently, and mixing the two would multiply the specializations.
        return np.array(a.reshape(lead + a.shape), dtype=dt, order="C", copy=True)

    def empty(ndim):
        return np.zeros((1,) + (0,) * (ndim - 1), dtype=dt)

    if params.attention:
        wqkv = layered(np.concatenate([params.wq, params.wk, params.wv], axis=-1))
        wo = layered(params.wo)
    else:
        wqkv, wo = empty(3), empty(3)
    if params.ffn:
        w1, b1, w2, b2 = (layered(getattr(params, k)) for k in ("w1", "b1", "w2", "b2"))
    else:
        w1, b1, w2, b2 = empty(3), empty(2), empty(3), empty(2)
    A = layered(params.linear) if params.linear is not None else empty(3)
    fp = np.array([params.beta, params.damping], dtype=dt)
    ip = np.array([params.n_heads, params.causal, ACTIVATIONS[params.activation],
                   params.attention, params.ffn, params.linear is not None], dtype=np.int64)
    return (wqkv, wo, w1, b1, w2, b2, A), fp, ip


def n_sets(W):
    """Number of weight sets L in packed weights."""
    return max(w.shape[0] for w in W)


# --------------------------------------------------------------------- workers
@_jit
def matmul(X, W, out, accumulate):
    """``out (+)= X @ W`` for small row-major matrices.

    The inner loop runs over the contiguous columns of ``W`` and ``out`` so that it
    vectorizes; equivalent to ``out[:] = X @ W`` (or ``+=``), left for reference.
    """
    T, K = X.shape
    n = W.shape[1]
    if not accumulate:
        out[:, :] = 0
    for i in range(T):
        for k in range(K):
            x = X[i, k]
            for j in range(n):
                out[i, j] += x * W[k, j]


@_jit
def activate(z, act):
    """σ(z) for the activation code ``act`` (see ``methods.ACTIVATIONS``)."""
    if act == GELU:
        return 0.5 * z * (1.0 + math.erf(z * _SQRT_HALF))
    if act == GELU_TANH:
        return 0.5 * z * (1.0 + math.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z * z * z)))
    if act == RELU:
        return max(z, 0.0)
    if act == TANH:
        return math.tanh(z)
    return z


@_jit
def attention(X, wqkv, wo, n_heads, beta, causal, qkv, heads, row, out):
    """``out += concat_h(softmax(β Q_h K_hᵀ/√d_h) V_h) W_o`` for one state ``X``.

    Scratch: ``qkv (T, 3d)``, ``heads (T, d)``, ``row (T,)``. The softmax is computed
    one row at a time, stably (row max subtracted); with ``causal`` row i sees
    tokens ``j <= i`` only.
    """
    T, d = X.shape
    dh = d // n_heads
    scale = beta / math.sqrt(dh)
    matmul(X, wqkv, qkv, False)
    heads[:, :] = 0
    for h in range(n_heads):
        q0, k0, v0 = h * dh, d + h * dh, 2 * d + h * dh
        for i in range(T):
            n_keys = i + 1 if causal else T
            m = -np.inf
            for j in range(n_keys):
                s = 0.0
                for c in range(dh):
                    s += qkv[i, q0 + c] * qkv[j, k0 + c]
                s *= scale
                row[j] = s
                m = max(m, s)
            total = 0.0
            for j in range(n_keys):
                e = math.exp(row[j] - m)
                row[j] = e
                total += e
            inv = 1.0 / total
            for j in range(n_keys):
                w = row[j] * inv
                for c in range(dh):
                    heads[i, q0 + c] += w * qkv[j, v0 + c]
    matmul(heads, wo, out, True)


@_jit
def ffn(X, w1, b1, w2, b2, act, hidden, out):
    """``out += σ(X W_1 + b_1) W_2 + b_2``. Scratch: ``hidden (T, m)``."""
    T = X.shape[0]
    matmul(X, w1, hidden, False)
    for i in range(T):
        for j in range(hidden.shape[1]):
            hidden[i, j] = activate(hidden[i, j] + b1[j], act)
    matmul(hidden, w2, out, True)
    for i in range(T):
        for j in range(out.shape[1]):
            out[i, j] += b2[j]


@_jit
def rhs(X, W, fp, ip, layer, out, scratch):
    """``out = f(X) = g(X) + h(X) − γX + X·A`` with weight set ``layer``.

    ``scratch`` is ``(qkv, heads, row, hidden)`` from :func:`make_scratch`.
    """
    wqkv, wo, w1, b1, w2, b2, A = W
    qkv, heads, row, hidden = scratch
    γ = fp[FP_DAMPING]
    T, d = X.shape
    for i in range(T):
        for j in range(d):
            out[i, j] = -γ * X[i, j]
    if ip[IP_LIN]:
        matmul(X, A[layer], out, True)
    if ip[IP_ATTN]:
        attention(X, wqkv[layer], wo[layer], ip[IP_HEADS], fp[FP_BETA], ip[IP_CAUSAL],
                  qkv, heads, row, out)
    if ip[IP_FFN]:
        ffn(X, w1[layer], b1[layer], w2[layer], b2[layer], ip[IP_ACT], hidden, out)


@_jit
def make_scratch(W, T, d, n_stages, dtype_like):
    """Allocate one trajectory's scratch: RK stages, stage input and ``rhs`` buffers."""
    m = W[2].shape[2]
    dt = dtype_like.dtype
    stages = np.empty((n_stages, T, d), dtype=dt)
    xs = np.empty((T, d), dtype=dt)
    rs = (np.empty((T, 3 * d), dtype=dt), np.empty((T, d), dtype=dt),
          np.empty(T, dtype=dt), np.empty((T, m), dtype=dt))
    return stages, xs, rs


@_jit
def rk_step(X, W, fp, ip, layer, a, b, h, stages, xs, scratch):
    """Advance ``X`` in place by one explicit RK step of size ``h``.

    ``k_i = f(X + h Σ_{j<i} a_ij k_j)``, then ``X += h Σ_i b_i k_i``. With the Euler
    tableau and ``h = α_n·c`` this is the averaged update ``X + α_n c f(X)``.
    """
    s = b.shape[0]
    T, d = X.shape
    for i in range(s):
        if i == 0:
            rhs(X, W, fp, ip, layer, stages[0], scratch)
            continue
        for r in range(T):
            for col in range(d):
                acc = X[r, col]
                for j in range(i):
                    acc += h * a[i, j] * stages[j, r, col]
                xs[r, col] = acc
        rhs(xs, W, fp, ip, layer, stages[i], scratch)
    for r in range(T):
        for col in range(d):
            acc = 0.0 * X[r, col]
            for i in range(s):
                acc += b[i] * stages[i, r, col]
            X[r, col] += h * acc


@_jit
def add_noise(X, σ, noise_key, n):
    """``X += σ·z`` with z the normals of layer ``n`` of this trajectory's noise key."""
    size = X.size
    for i in range(size):
        X.flat[i] += σ * rng.normal(noise_key, n * size + i)


@_jit
def all_finite(X):
    """True when no entry of ``X`` is NaN or ±inf (fastmath keeps these checks)."""
    for i in range(X.size):
        if not np.isfinite(X.flat[i]):
            return False
    return True


@_jit
def advance(X, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch):
    """Layer ``n`` of one trajectory: RK step, then noise; returns whether X is finite."""
    layer = n if W[0].shape[0] > 1 or W[6].shape[0] > 1 or W[2].shape[0] > 1 else 0
    rk_step(X, W, fp, ip, layer, a, b, h[n], stages, xs, scratch)
    if σ[n] != 0:
        add_noise(X, σ[n], noise_key, n)
    return all_finite(X)


# --------------------------------------------------------------------- drivers
@_pjit
def integrate_kernel(x0, W, fp, ip, a, b, h, σ, seed, start, save_every, first, out, status):
    """Run all ``N = len(h)`` layers of every trajectory of ``x0``.

    Parameters
    ----------
    x0 : ndarray, shape (B, T, d)
    W, fp, ip
        From :func:`pack_params`.
    a, b : ndarray
        Runge–Kutta tableau in the state dtype.
    h : ndarray, shape (N,)
        Step size of layer n (Δt, or α_n·c for the averaged update).
    σ : ndarray, shape (N,)
        Noise scale of layer n (0: no noise).
    seed, start : int
        Noise of trajectory ``b`` is keyed by ``(seed, STREAM_NOISE, start + b)``.
    save_every : int
        Store the state after layer n when ``n % save_every == 0``...
    first : int
        ...in slot ``n // save_every - first`` of ``out`` (``first = 1`` skips X_0).
    out : ndarray, shape (B, S, T, d)
        Snapshots; filled with NaN from the first non-finite layer onward.
    status : ndarray of int64, shape (B,)
        ``STATUS_OK`` or the first layer n (1-based: state X_n) that was non-finite.
    """
    B, T, d = x0.shape
    N = h.shape[0]
    n_blocks = (B + config.BLOCK - 1) // config.BLOCK
    for blk in prange(n_blocks):
        stages, xs, scratch = make_scratch(W, T, d, b.shape[0], x0)
        X = np.empty((T, d), dtype=x0.dtype)
        for bi in range(blk * config.BLOCK, min(B, (blk + 1) * config.BLOCK)):
            X[:, :] = x0[bi]
            noise_key = rng.key(seed, rng.STREAM_NOISE, start + bi)
            status[bi] = STATUS_OK
            if first == 0:
                out[bi, 0] = X
            for n in range(N):
                ok = advance(X, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch)
                if not ok:
                    status[bi] = n + 1
                    out[bi, max(0, (n + 1 + save_every - 1) // save_every - first):] = np.nan
                    break
                if (n + 1) % save_every == 0:
                    out[bi, (n + 1) // save_every - first] = X


@_pjit
def vector_field_kernel(X, W, fp, ip, layer, out):
    """``out[b] = f(X[b])`` with weight set ``layer`` for every trajectory b."""
    B, T, d = X.shape
    n_blocks = (B + config.BLOCK - 1) // config.BLOCK
    for blk in prange(n_blocks):
        _, _, scratch = make_scratch(W, T, d, 1, X)
        for bi in range(blk * config.BLOCK, min(B, (blk + 1) * config.BLOCK)):
            rhs(X[bi], W, fp, ip, layer, out[bi], scratch)
