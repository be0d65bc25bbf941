"""The layout primitives: what differs between the row and the lane layout.

Each layout-generic kernel (the vector field, the FFN, the Runge–Kutta step, their
JVPs: :mod:`tfkernels.kernels.field`, :mod:`tfkernels.kernels.steps`) takes the layout,
``structs.ROWS`` or ``structs.LANES``, as its first argument and is written once. The
primitives below branch on it. They and the generic kernels are inlined at the Numba-IR
level, and each compiled entry point passes the layout as a module constant
(``rhs_rows`` calls the generic body with ``ROWS``), so Numba prunes the other branch
before typing: the choice costs nothing at run time and nothing at compile time, and
every compiled function exists once per layout and dtype.

* :func:`product` — ``out (+)= X @ W`` of a state-shaped ``X`` with a weight matrix:
  ``simd.gemm`` in rows, ``simd.lgemm`` with broadcast weights in lanes;
* :func:`attention`, :func:`attention_tangent` — the term laid out differently in the
  two layouts (:mod:`tfkernels.kernels.attention`).

Everything element-wise is the same code in both: it runs along whole rows of width
``d`` (rows) or ``d·L`` (lanes), with the biases repeated per lane
(``structs.for_lanes``). The lane layout's per-lane bookkeeping (moving one
trajectory in or out of a group, testing or clearing one lane) is at the end.
"""

import numpy as np

from . import attention as att
from .jit import ijit as _ijit
from .jit import jit as _jit
from .simd import gemm, lanes, lgemm
from .structs import LANES


@_jit
def lanes_product(X, W, out, accumulate):
    """``product`` in the lane layout: ``simd.lgemm`` with broadcast weights. Compiled once
    per dtype and called (not inlined), so that a row-layout body pays nothing to type or
    prune it."""
    L = lanes(X)
    k, n = W.shape
    lgemm(X, 0, k * L, L, W, 0, n, 1, False, out, 0, n * L, L, X.shape[0], k, n, accumulate)


@_ijit
def product(layout, X, W, out, accumulate):
    """``out (+)= X @ W`` for a state-shaped ``X (T, k·L)`` and a weight ``W (k, n)``
    into ``out (T, n·L)``, L = 1 in the row layout."""
    if layout == LANES:
        lanes_product(X, W, out, accumulate)
    else:
        gemm(X, W, out, accumulate)


@_ijit
def attention(layout, X, wqkv, bqkv, wo, n_heads, beta, causal, symmetric, fs, out):
    """``out += concat_h(softmax(β Q_h K_hᵀ/√d_h) V_h) W_o`` with ``[Q|K|V] = X·wqkv +
    bqkv`` (``bqkv`` empty: no bias): ``attention.attention_rows`` or
    ``attention.attention_lanes``."""
    if layout == LANES:
        att.attention_lanes(X, wqkv, bqkv, wo, n_heads, beta, causal, symmetric, fs, out)
    else:
        att.attention_rows(X, wqkv, bqkv, wo, n_heads, beta, causal, symmetric, fs, out)


@_ijit
def attention_tangent(layout, V, wqkv, wo, n_heads, beta, causal, symmetric, fs, ts, out):
    """``out += g'(X)·V`` from the activations :func:`attention` left in ``fs``."""
    if layout == LANES:
        att.attention_tangent_lanes(V, wqkv, wo, n_heads, beta, causal, fs, ts, out)
    else:
        att.attention_tangent_rows(V, wqkv, wo, n_heads, beta, causal, symmetric, fs, ts, out)


# ------------------------------------------------- the lane layout's bookkeeping
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


@_ijit
def lane_sq_norms(X, out):
    """``out[l] = ‖X_l‖²`` of every lane l of the group, in float64: one pass over the
    group, vectorized across the lanes (the pair mode's floor test, every layer)."""
    L = lanes(X)
    for l in range(L):
        out[l] = 0.0
    for t in range(X.shape[0]):
        for j in range(0, X.shape[1], L):
            for l in range(L):
                v = np.float64(X[t, j + l])
                out[l] += v * v


@_jit
def lane_sq_dist(X, Y, l, diff):
    """``‖X_l − Y_l‖²`` (``diff``) or ``‖X_l‖²`` of lane ``l`` of groups ``X``, ``Y``,
    summed in float64 in the element order of :func:`sq_dist` / :func:`sq_norm`."""
    L = lanes(X)
    s = 0.0
    for t in range(X.shape[0]):
        for j in range(l, X.shape[1], L):
            v = np.float64(X[t, j]) - np.float64(Y[t, j]) if diff else np.float64(X[t, j])
            s += v * v
    return s
