"""Kernels with trajectories across the vector lanes, for the smallest configurations.

The kernels of :mod:`tfkernels.kernels` vectorize *within* a trajectory: a product's
rows are vectors of its output columns. At the tiny size (T = 8, d = 16, 2 heads)
those rows are 8–64 elements long, so the products run as short, latency-bound
chains (50–140 GFLOP/s) and the softmax works on 8-long rows. Here a *group* of
``L`` trajectories (16 float32 or 8 float64 with AVX-512: one vector) is stepped
together, stored lane-interleaved: element ``(t, j)`` of the group's state is the
vector ``Xl[t, j, :]`` holding that element of all ``L`` trajectories. Then

* every product is a weight broadcast times a state vector (``X W``) or a
  lane-wise vector product (the heads' ``Q Kᵀ`` and ``P V``), ``4 × 4`` tiles of
  full-width accumulators in registers (:func:`lgemm`), whatever the shapes;
* the softmax, the activation and every element-wise update run on full vectors
  across the group, however short a row is.

Lane ``l`` of every vector only ever meets lane ``l`` of another (or a scalar
weight), so a trajectory's result does not depend on which group, slice or thread it
ran in: per-trajectory outputs stay bit-identical whatever the chunking. They are
*not* bit-identical to :mod:`tfkernels.kernels` (the products' FMA chains run in a
different order); ``kernels_for`` picks one family per configuration and dtype, so a
given run always uses the same one.
"""

import math

import numpy as np

from .. import config
from . import rng
from . import rows as K
from .simd import VECTOR_BYTES, lanes, sload, vfma, vload, vsplat, vstore, vzero

_jit, _ijit, _djit = K._jit, K._ijit, K._djit


# --------------------------------------------------------------------- products
@_ijit
def _wvec(W, off, vec, z):
    """Element ``off`` of ``W`` as a vector: a lane array's vector (``vec``) or a
    scalar weight broadcast."""
    if vec:
        return vload(W, off, z)
    return vsplat(sload(W, off), z)


@_jit
def _tile(X, x0, x1, x2, x3, cx, W, w0, w1, w2, w3, ldw, vec, out, o0, o1, o2, o3, p0,
          p1, p2, p3, K_, accumulate, z):
    """A 4-row × 4-column tile of :func:`lgemm`: rows at offsets ``x0 … x3`` of ``X``
    (k-stride ``cx``) and ``o0 … o3`` of ``out``, columns at
    offsets ``w0 … w3`` of ``W`` (k-stride ``ldw``) and ``p0 … p3`` within a row of
    ``out`` (output ``(r, c)`` at ``o_r + p_c``). Sixteen accumulators stay in
    registers through the k loop; per k, 4 vector loads of X and 4 of W."""
    if accumulate:
        c00 = vload(out, o0 + p0, z)
        c01 = vload(out, o0 + p1, z)
        c02 = vload(out, o0 + p2, z)
        c03 = vload(out, o0 + p3, z)
        c10 = vload(out, o1 + p0, z)
        c11 = vload(out, o1 + p1, z)
        c12 = vload(out, o1 + p2, z)
        c13 = vload(out, o1 + p3, z)
        c20 = vload(out, o2 + p0, z)
        c21 = vload(out, o2 + p1, z)
        c22 = vload(out, o2 + p2, z)
        c23 = vload(out, o2 + p3, z)
        c30 = vload(out, o3 + p0, z)
        c31 = vload(out, o3 + p1, z)
        c32 = vload(out, o3 + p2, z)
        c33 = vload(out, o3 + p3, z)
    else:
        c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
        c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = z
    for k in range(K_):
        b0 = _wvec(W, w0 + k * ldw, vec, z)
        b1 = _wvec(W, w1 + k * ldw, vec, z)
        b2 = _wvec(W, w2 + k * ldw, vec, z)
        b3 = _wvec(W, w3 + k * ldw, vec, z)
        a = vload(X, x0 + k * cx, z)
        c00 = vfma(a, b0, c00)
        c01 = vfma(a, b1, c01)
        c02 = vfma(a, b2, c02)
        c03 = vfma(a, b3, c03)
        a = vload(X, x1 + k * cx, z)
        c10 = vfma(a, b0, c10)
        c11 = vfma(a, b1, c11)
        c12 = vfma(a, b2, c12)
        c13 = vfma(a, b3, c13)
        a = vload(X, x2 + k * cx, z)
        c20 = vfma(a, b0, c20)
        c21 = vfma(a, b1, c21)
        c22 = vfma(a, b2, c22)
        c23 = vfma(a, b3, c23)
        a = vload(X, x3 + k * cx, z)
        c30 = vfma(a, b0, c30)
        c31 = vfma(a, b1, c31)
        c32 = vfma(a, b2, c32)
        c33 = vfma(a, b3, c33)
    vstore(out, o0 + p0, c00)
    vstore(out, o0 + p1, c01)
    vstore(out, o0 + p2, c02)
    vstore(out, o0 + p3, c03)
    vstore(out, o1 + p0, c10)
    vstore(out, o1 + p1, c11)
    vstore(out, o1 + p2, c12)
    vstore(out, o1 + p3, c13)
    vstore(out, o2 + p0, c20)
    vstore(out, o2 + p1, c21)
    vstore(out, o2 + p2, c22)
    vstore(out, o2 + p3, c23)
    vstore(out, o3 + p0, c30)
    vstore(out, o3 + p1, c31)
    vstore(out, o3 + p2, c32)
    vstore(out, o3 + p3, c33)


@_ijit
def lgemm(X, xo, ldx, cx, W, wo, ldw, cw, vec, out, oo, ldo, co, R, K_, n, accumulate):
    """``out (+)= X @ W`` on lane-interleaved matrices (offsets and strides in elements
    of the flat C-contiguous buffers, BLAS style).

    ``X``'s element ``(i, k)`` is the vector at ``xo + i·ldx + k·cx``, ``out``'s
    ``(i, j)`` the one at ``oo + i·ldo + j·co``, and ``W``'s ``(k, j)`` sits at
    ``wo + k·ldw + j·cw``: a scalar weight (broadcast to every lane) or, with ``vec``
    (a literal), a vector of a lane array (the heads' products of two states).
    ``R × n`` is covered by :func:`_tile` tiles; at a ragged edge the tile's last rows
    or columns repeat the edge row or column (clamped offsets), computing and storing
    the same element twice with the same value, so any shape takes one code path.
    Every element is the FMA chain ``((out|0) + x_0 w_0) + x_1 w_1 + …`` in k order.
    """
    z = vzero(out)
    for i in range(0, R, 4):
        i1 = min(i + 1, R - 1)
        i2 = min(i + 2, R - 1)
        i3 = min(i + 3, R - 1)
        for j in range(0, n, 4):
            j1 = min(j + 1, n - 1)
            j2 = min(j + 2, n - 1)
            j3 = min(j + 3, n - 1)
            _tile(X, xo + i * ldx, xo + i1 * ldx, xo + i2 * ldx, xo + i3 * ldx, cx,
                  W, wo + j * cw, wo + j1 * cw, wo + j2 * cw, wo + j3 * cw, ldw, vec,
                  out, oo + i * ldo, oo + i1 * ldo, oo + i2 * ldo, oo + i3 * ldo,
                  j * co, j1 * co, j2 * co, j3 * co, K_, accumulate, z)


# --------------------------------------------------------------------- terms
@_ijit
def attention_lanes(X, wqkv, wo, n_heads, beta, causal, L, qkv, P, heads, mt, out):
    """``out += concat_h(softmax(β Q_h K_hᵀ/√d_h) V_h) W_o`` for a group, as
    ``kernels.attention_packed``.

    ``qkv (T, 3d·L)`` gets ``X [Wq|Wk|Wv]`` in one product, then its Q block is scaled
    by ``β/√d_h``. Each head's scores ``K_h (Q_h)ᵀ`` go transposed into
    ``P (T keys, H·T·L)`` (head h, query i at columns ``(h·T + i)·L …``), so that one
    ``kernels.softmax_columns`` call normalizes every column along contiguous rows of
    all heads and lanes; ``P_h V_h`` goes into head h's columns of ``heads (T, d·L)``.
    """
    T = X.shape[0]
    d = X.shape[1] // L
    dh = d // n_heads
    e = 3 * d * L                           # stride of a row of qkv
    c = n_heads * T * L                     # stride of a row (key) of P
    lgemm(X, 0, d * L, L, wqkv, 0, 3 * d, 1, False, qkv, 0, e, L, T, d, 3 * d, False)
    scale = X.dtype.type(beta / math.sqrt(dh))
    for i in range(T):
        for j in range(d * L):
            qkv[i, j] *= scale
    for h in range(n_heads):
        lgemm(qkv, h * dh * L, e, L, qkv, (d + h * dh) * L, L, e, True,
              P, h * T * L, L, c, T, dh, T, False)
    K.softmax_columns(P, c, causal, mt, L)
    for h in range(n_heads):
        lgemm(P, h * T * L, L, c, qkv, (2 * d + h * dh) * L, e, L, True,
              heads, h * dh * L, d * L, L, T, T, dh, False)
    lgemm(heads, 0, d * L, L, wo, 0, d, 1, False, out, 0, d * L, L, T, d, d, True)


@_ijit
def ffn_lanes(X, w1, b1, w2, b2, act, L, hidden, out):
    """``out += σ(X W_1 + b_1) W_2 + b_2`` for a group; ``hidden (T, m·L)``, the
    biases repeated per lane (``b1 (m·L,)``, ``b2 (d·L,)``, :func:`pack_biases`), so
    that ``kernels.bias_activate`` and the bias add run along whole rows."""
    T = X.shape[0]
    d = X.shape[1] // L
    m = w1.shape[1]
    lgemm(X, 0, d * L, L, w1, 0, m, 1, False, hidden, 0, m * L, L, T, d, m, False)
    K.bias_activate(hidden, b1, act)
    lgemm(hidden, 0, m * L, L, w2, 0, d, 1, False, out, 0, d * L, L, T, m, d, True)
    for i in range(T):
        for j in range(d * L):
            out[i, j] += b2[j]


@_ijit
def damped_linear(X, γ, A, linear, L, out):
    """``out = −γX`` (``+ X·A`` when ``linear``) for a group."""
    T = X.shape[0]
    d = X.shape[1] // L
    for i in range(T):
        for j in range(d * L):
            out[i, j] = -γ * X[i, j]
    if linear:
        lgemm(X, 0, d * L, L, A, 0, d, 1, False, out, 0, d * L, L, T, d, d, True)


@_jit
def rhs_lanes(X, W, fp, ip, layer, out, scratch):
    """``out = f(X)`` for a group ``X (T, d·L)`` of L trajectories, lane-interleaved
    (see the module docstring); ``W`` from :func:`pack_lanes`, ``fp``, ``ip`` from
    ``kernels.pack_params``, ``scratch`` from :func:`make_scratch`."""
    qkv, P, heads, hidden, mt = scratch
    L = lanes(X)
    T = X.shape[0]
    d = X.shape[1] // L
    damped_linear(X, fp[K.FP_DAMPING], W[6][layer], ip[K.IP_LIN], L, out)
    if ip[K.IP_ATTN]:
        attention_lanes(X, W[0][layer], W[1][layer], ip[K.IP_HEADS], fp[K.FP_BETA],
                        ip[K.IP_CAUSAL], L, qkv, P, heads, mt, out)
    if ip[K.IP_FFN]:
        ffn_lanes(X, W[2][layer], W[3][layer], W[4][layer], W[5][layer], ip[K.IP_ACT], L,
                  hidden, out)


def group_width(dtype):
    """Trajectories per group: the lanes of one vector of ``dtype``."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def pack_lanes(W, dtype):
    """``kernels.pack_params``'s weights with the biases repeated per lane:
    ``b1 (n_sets, m·L)``, ``b2 (n_sets, d·L)``, lane-interleaved like the states."""
    L = group_width(dtype)
    b1, b2 = (np.repeat(b, L, axis=-1) for b in (W[3], W[5]))
    return W[:3] + (b1, W[4], b2, W[6])


def make_scratch(W, ip, T, d, n_stages, dtype):
    """One slice's buffers for :func:`integrate_lanes`: the group's state
    ``X (T, d·L)``, RK stages ``(S, T, d·L)``, stage input ``(T, d·L)``, and the
    ``rhs`` scratch ``(qkv (T, 3d·L), P (T, H·T·L), heads (T, d·L), hidden (T, m·L),
    mt (3, H·T·L))``."""
    L = group_width(dtype)
    m = W[2].shape[2]
    H = ip[K.IP_HEADS] if ip[K.IP_ATTN] else 1
    X, stages, xs, *rs = K.aligned_buffers(
        ((T, d * L), (n_stages, T, d * L), (T, d * L), (T, 3 * d * L), (T, H * T * L),
         (T, d * L), (T, m * L), (3, H * T * L)), dtype)
    return X, stages, xs, tuple(rs)


# --------------------------------------------------------------------- drivers
@_ijit
def load_group(x0, g0, X):
    """``X[t, j·L + l] = x0[g0 + l, t, j]`` for the lanes that have a trajectory; the
    lanes past the end of ``x0`` get zeros (computed, never stored)."""
    B, T, d = x0.shape
    L = lanes(X)
    z = X.dtype.type(0)
    for l in range(L):
        b = g0 + l
        for t in range(T):
            for j in range(d):
                X[t, j * L + l] = x0[b, t, j] if b < B else z


@_ijit
def store_lane(X, l, dst):
    """``dst[t, j] = X[t, j·L + l]``: lane ``l`` of the group as a ``(T, d)`` state."""
    L = lanes(X)
    T, d = dst.shape
    for t in range(T):
        for j in range(d):
            dst[t, j] = X[t, j * L + l]


@_ijit
def load_lane(src, l, X):
    """``X[t, j·L + l] = src[t, j]`` (the inverse of :func:`store_lane`)."""
    L = lanes(X)
    T, d = src.shape
    for t in range(T):
        for j in range(d):
            X[t, j * L + l] = src[t, j]


@_ijit
def lane_finite(X, l):
    """True when lane ``l`` of the group has no NaN or ±inf."""
    L = lanes(X)
    z = X.dtype.type(0)
    acc = z
    for t in range(X.shape[0]):
        for j in range(l, X.shape[1], L):
            acc += X[t, j] * z
    return acc == z


@_ijit
def zero_lane(X, l):
    """Lane ``l`` of the group set to 0."""
    L = lanes(X)
    z = X.dtype.type(0)
    for t in range(X.shape[0]):
        for j in range(l, X.shape[1], L):
            X[t, j] = z


@_jit
def advance_group(X, W, fp, ip, n, a, b, h, σ, seed, start, status, lane, stages, xs,
                  scratch):
    """Layer ``n`` of a group (as ``kernels.advance``, without the finiteness test):
    one Runge–Kutta step of every lane, then the noise of trajectory ``start + l`` on
    each lane ``l`` whose ``status[l]`` is still ``STATUS_OK``, added to the lane's own
    copy by ``rng.add_normal`` (the same operations on the same values as the row
    kernel; ``lane (T, d)`` scratch)."""
    layer = n if W[0].shape[0] > 1 or W[6].shape[0] > 1 or W[2].shape[0] > 1 else 0
    for i in range(b.shape[0]):
        src = X
        if i > 0:
            K.stage_input(X, stages, a, h[n], i, xs)
            src = xs
        rhs_lanes(src, W, fp, ip, layer, stages[i], scratch)
    K.step_update(X, stages, b, h[n], xs)
    add_group_noise(X, n, σ, seed, start, status, lane)


@_ijit
def add_group_noise(X, n, σ, seed, start, status, lane):
    """The noise of layer ``n`` on each lane ``l`` of ``X`` whose ``status[l]`` is
    ``STATUS_OK`` (see :func:`advance_group`)."""
    if σ[n] != 0:
        for l in range(status.shape[0]):
            if status[l] == K.STATUS_OK:
                store_lane(X, l, lane)
                K.add_noise(lane, σ[n], rng.key(seed, rng.STREAM_NOISE, start + l), n)
                load_lane(lane, l, X)


@_djit
def integrate_lanes(x0, W, fp, ip, a, b, h, σ, seed, start, save_every, first, out, status,
                    lane, X, stages, xs, scratch):
    """``kernels.integrate_kernel`` with the trajectories in groups of L across the
    vector lanes (same arguments and results, bit for bit; ``W`` from
    :func:`pack_lanes`; ``lane (T, d)`` scratch, and ``X``, ``stages``, ``xs``,
    ``scratch`` from :func:`make_scratch`).

    A group runs every layer together. After each layer one vectorized check covers
    the whole group; only when it fails are the lanes checked one by one, and a lane
    that became non-finite gets its status and NaN snapshots as in
    ``integrate_kernel`` and is then zeroed (as are the padding lanes of a last,
    partial group), so that the group check passes again and the other lanes go on.
    Noise is added lane by lane (:func:`advance_group`).
    """
    B = x0.shape[0]
    L = lanes(X)
    N = h.shape[0]
    for g0 in range(0, B, L):
        nl = min(L, B - g0)
        load_group(x0, g0, X)
        live = nl
        for l in range(nl):
            status[g0 + l] = K.STATUS_OK
            if first == 0:
                store_lane(X, l, out[g0 + l, 0])
        for n in range(N):
            advance_group(X, W, fp, ip, n, a, b, h, σ, seed, start + g0,
                          status[g0:g0 + nl], lane, stages, xs, scratch)
            if not K.all_finite(X):
                for l in range(L):
                    if l < nl and status[g0 + l] == K.STATUS_OK:
                        if lane_finite(X, l):
                            continue
                        status[g0 + l] = n + 1
                        out[g0 + l, max(0, (n + 1 + save_every - 1) // save_every
                                        - first):] = np.nan
                        live -= 1
                    zero_lane(X, l)         # a finished lane, or padding
                if live == 0:
                    break
            if (n + 1) % save_every == 0:
                for l in range(nl):
                    if status[g0 + l] == K.STATUS_OK:
                        store_lane(X, l, out[g0 + l, (n + 1) // save_every - first])


@_djit
def vector_field_lanes(X, W, fp, ip, layer, out, G, F, scratch):
    """``out[b] = f(X[b])`` for every trajectory b, in groups of L (``G``, ``F``:
    ``(T, d·L)`` scratch for a group's input and output)."""
    B = X.shape[0]
    L = lanes(G)
    for g0 in range(0, B, L):
        load_group(X, g0, G)
        rhs_lanes(G, W, fp, ip, layer, F, scratch)
        for l in range(min(L, B - g0)):
            store_lane(F, l, out[g0 + l])


def use_lanes(T, d):
    """Whether :func:`integrate_lanes` / :func:`vector_field_lanes` run a ``(T, d)``
    configuration: states of at most ``config.LANES_MAX_SIZE`` elements, where they
    measured faster (see ``config.LANES_MAX_SIZE``). Both families give the same
    bits, so this is a choice of speed only."""
    return T * d <= config.LANES_MAX_SIZE
