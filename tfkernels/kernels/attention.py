"""Attention, its Jacobian–vector product and its vector–Jacobian product, per layout.

Attention is the one term written twice, once per layout, because its data are laid
out differently, not only its products: in the row layout each head's transposed
probabilities are a ``(T, T)`` block and the heads' outputs are stored transposed,
``(d, T)``, so that ``V_hᵀ P_h`` and the output projection run ``T`` wide
(:func:`attention_rows`); in the lane layout every score is a vector of a group's
lanes and the products are lane-wise (:func:`attention_lanes`). Both compute every
element as the same chain of fused multiply-adds over the same ``k`` order and
normalize with the same :func:`~tfkernels.kernels.maths.softmax_columns`, so they give
the same bits. :mod:`tfkernels.kernels.layout` picks one when a layout-generic kernel
is compiled.
"""

import math

import numpy as np

from .jit import ijit as _ijit
from .jit import jit as _jit
from .maths import add_bias, softmax_columns, softmax_tangent_columns
from .simd import gemm, gemm_ld, lanes, lgemm, runtime


# ------------------------------------------------------------------ row layout
@_ijit
def transpose_scaled(A, a0, n, scale, out):
    """``out[c, i] = scale·A[i, a0 + c]`` for ``c < n``: a block of columns of ``A``
    transposed into the rows of ``out (≥ n, T)``."""
    for i in range(A.shape[0]):
        for c in range(n):
            out[c, i] = A[i, a0 + c] * scale


@_ijit
def head_probs(qkv, h0, g, dh, causal, symmetric, qt, P, mt):
    """Attention probabilities of heads ``h0 … h0 + g − 1``, transposed, side by side:
    head ``h0 + k``'s ``(T keys, T queries)`` block in columns ``k·T … (k+1)·T − 1``
    of ``P (T, ≥ g·T)``.

    ``qt (d, T)`` holds ``scale·Qᵀ`` of every head (:func:`transpose_scaled`); each
    head's scores ``K_h (scale Q_h)ᵀ`` are a :func:`~tfkernels.kernels.simd.gemm_ld` product
    reading ``K_h`` in place from ``qkv (T, 3d)``, and one :func:`softmax_columns`
    call (scratch ``mt (3, ≥ g·T)``) normalizes every query's column of the group.
    """
    T = qkv.shape[0]
    d = qkv.shape[1] // 3
    for k in range(g):
        h = h0 + k
        gemm_ld(qkv, d + h * dh, 3 * d, 1, qt, h * dh * T, T, P, k * T, P.shape[1], T, dh, T, False)
    softmax_columns(P, g * T, causal, symmetric, mt, runtime(1))


@_jit
def attention_rows(X, wqkv, bqkv, wo, n_heads, beta, causal, symmetric, fs, out):
    """``out += concat_h(softmax(β Q_h K_hᵀ/√d_h) V_h) W_o``.

    ``qkv (T, 3d)`` gets ``X [Wq|Wk|Wv]`` in one product and ``qt (d, T)`` the scaled
    ``Qᵀ``. The heads go in groups of as many as ``P (T, G·T)`` holds (all of them
    unless ``H·T²`` exceeds ``config.SOFTMAX_BLOCK_BYTES``, see ``structs.head_group``):
    :func:`head_probs` leaves the group's probabilities in ``P``, and each head's
    output, transposed, ``V_hᵀ P_h`` (``V_h`` read transposed in place, its block of
    ``P`` as it stands), is a :func:`~tfkernels.kernels.simd.gemm_ld` product into head h's
    rows of ``heads (d, T)``; the output projection reads ``heads`` transposed.
    Transposed, the product is ``T`` wide instead of ``d_h``: full vectors where
    ``d_h`` filled half of one (small float32) or one vector with 4 latency-bound
    accumulators where ``T`` fills two panels (medium, large). Every element is the
    same chain of fused multiply-adds over the keys either way. The last group's
    probabilities stay in ``P`` for the decay study's tangent. ``fs`` is a
    ``structs.FieldScratch``.
    """
    qkv, heads, qt, P, mt = fs.qkv, fs.heads, fs.qt, fs.P, fs.mt
    T, d = X.shape
    dh = d // n_heads
    G = P.shape[1] // T
    gemm(X, wqkv, qkv, False)
    add_bias(qkv, bqkv)
    transpose_scaled(qkv, 0, d, X.dtype.type(beta / math.sqrt(dh)), qt)
    for h0 in range(0, n_heads, G):
        g = min(G, n_heads - h0)
        head_probs(qkv, h0, g, dh, causal, symmetric, qt, P, mt)
        for k in range(g):
            h = h0 + k
            gemm_ld(
                qkv,
                2 * d + h * dh,
                1,
                3 * d,
                P,
                k * T,
                P.shape[1],
                heads,
                h * dh * T,
                T,
                dh,
                T,
                T,
                False,
            )
    gemm_ld(heads, 0, 1, T, wo, 0, d, out, 0, d, T, d, d, True)


@_jit
def attention_tangent_rows(V, wqkv, wo, n_heads, beta, causal, symmetric, fs, ts, out):
    """``out += g'(X)·V`` from the activations :func:`attention_rows` left at X
    (``fs``, a ``structs.FieldScratch``; ``ts`` a ``structs.TangentScratch``).

    With the transposed probabilities ``P[j, i] = softmax_j(S_i·)`` (key j, query i)
    and the scale ``s = β/√d_h``: ``dS[j, i] = K_j·(s dQ_i) + dK_j·(s Q_i)`` (two
    :func:`~tfkernels.kernels.simd.gemm_ld` products against ``(s dQ_h)ᵀ`` and ``(s Q_h)ᵀ``
    packed as ``(d_h, T)`` blocks), ``dP[j, i] = P[j, i]·(dS[j, i] − Σ_k P[k, i] dS[k, i])``
    (column-wise, element-wise over queries), and
    ``dO_hᵀ = V_hᵀ dP + dV_hᵀ P`` (two products reading ``V_h`` and ``dV_h``
    transposed, into head h's rows of ``dheads (d, T)``, transposed as in the forward
    pass).
    The forward pass left ``(s Q)ᵀ`` in ``qt`` and every head's probabilities in
    ``P``, unless ``H·T²`` passed ``config.SOFTMAX_BLOCK_BYTES``: then ``P`` holds a
    group of heads at a time and each group is recomputed by :func:`head_probs`
    exactly as the forward pass computed it.
    """
    qkv, mt, qt, P = fs.qkv, fs.mt, fs.qt, fs.P
    dqkv, dP, dheads, qtd = ts.dqkv, ts.dP, ts.dheads, ts.qtd
    T, d = V.shape
    dh = d // n_heads
    G = P.shape[1] // T
    C = P.shape[1]
    gemm(V, wqkv, dqkv, False)
    transpose_scaled(dqkv, 0, d, V.dtype.type(beta / math.sqrt(dh)), qtd)
    for h0 in range(0, n_heads, G):
        g = min(G, n_heads - h0)
        if G < n_heads:
            head_probs(qkv, h0, g, dh, causal, symmetric, qt, P, mt)
        for k in range(g):
            h = h0 + k
            gemm_ld(qkv, d + h * dh, 3 * d, 1, qtd, h * dh * T, T, dP, 0, T, T, dh, T, False)
            gemm_ld(dqkv, d + h * dh, 3 * d, 1, qt, h * dh * T, T, dP, 0, T, T, dh, T, True)
            softmax_tangent_columns(P, k * T, T, dP, mt[0])
            gemm_ld(qkv, 2 * d + h * dh, 1, 3 * d, dP, 0, T, dheads, h * dh * T, T, dh, T, T, False)
            gemm_ld(
                dqkv, 2 * d + h * dh, 1, 3 * d, P, k * T, C, dheads, h * dh * T, T, dh, T, T, True
            )
    gemm_ld(dheads, 0, 1, T, wo, 0, d, out, 0, d, T, d, d, True)


@_jit
def attention_vjp(X, G, wqkv, bqkv, wqkv_t, wo_t, n_heads, beta, causal, vs, out):
    """``out += (∂g/∂X)ᵀ·G`` (the adjoint of :func:`attention_tangent_rows`; ``vs`` a
    ``structs.VjpScratch``). Plain loops: it serves the λ̂ estimate, not a hot path."""
    qkv, dqkv, go, P, dS = vs.qkv, vs.dqkv, vs.go, vs.P, vs.dS
    T, d = X.shape
    dh = d // n_heads
    scale = beta / math.sqrt(dh)
    gemm(X, wqkv, qkv, False)
    add_bias(qkv, bqkv)
    gemm(G, wo_t, go, False)  # gradient w.r.t. the concatenated heads
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


# ----------------------------------------------------------------- lane layout
@_jit
def attention_lanes(X, wqkv, bqkv, wo, n_heads, beta, causal, symmetric, fs, out):
    """``out += concat_h(softmax(β Q_h K_hᵀ/√d_h) V_h) W_o`` for a group, as
    :func:`attention_rows`, for a lane-interleaved group ``X (T, d·L)``.

    ``qkv (T, 3d·L)`` gets ``X [Wq|Wk|Wv]`` in one product, then its Q block is scaled
    by ``β/√d_h``. Each head's scores ``K_h (Q_h)ᵀ`` go transposed into ``P (T keys,
    H·T·L)`` (head h, query i at columns ``(h·T + i)·L …``), so that one
    :func:`~tfkernels.kernels.maths.softmax_columns` call normalizes every column along
    contiguous rows of all heads and lanes; ``P_h V_h`` goes into head h's columns of
    ``heads (T, d·L)``.
    """
    qkv, P, heads, mt = fs.qkv, fs.P, fs.heads, fs.mt
    L = lanes(X)
    T = X.shape[0]
    d = X.shape[1] // L
    dh = d // n_heads
    e = 3 * d * L  # stride of a row of qkv
    c = n_heads * T * L  # stride of a row (key) of P
    lgemm(X, 0, d * L, L, wqkv, 0, 3 * d, 1, False, qkv, 0, e, L, T, d, 3 * d, False)
    add_bias(qkv, bqkv)
    scale = X.dtype.type(beta / math.sqrt(dh))
    for i in range(T):
        for j in range(d * L):
            qkv[i, j] *= scale
    for h in range(n_heads):
        lgemm(
            qkv,
            h * dh * L,
            e,
            L,
            qkv,
            (d + h * dh) * L,
            L,
            e,
            True,
            P,
            h * T * L,
            L,
            c,
            T,
            dh,
            T,
            False,
        )
    softmax_columns(P, c, causal, symmetric, mt, L)
    for h in range(n_heads):
        lgemm(
            P,
            h * T * L,
            L,
            c,
            qkv,
            (2 * d + h * dh) * L,
            e,
            L,
            True,
            heads,
            h * dh * L,
            d * L,
            L,
            T,
            T,
            dh,
            False,
        )
    lgemm(heads, 0, d * L, L, wo, 0, d, 1, False, out, 0, d * L, L, T, d, d, True)


@_jit
def attention_tangent_lanes(V, wqkv, wo, n_heads, beta, causal, fs, ts, out):
    """:func:`attention_tangent_rows` for a lane-interleaved group, from the activations
    :func:`attention_lanes` left (``causal`` is already in ``P``): ``qkv`` with its Q block
    already scaled by ``s = β/√d_h``, every head's transposed probabilities in
    ``P (T, H·T·L)``. The same products in the same k order, so the same bits:
    ``dS = K_h (s dQ_h)ᵀ + dK_h (s Q_h)ᵀ``, ``dP = P∘(dS − Σ_keys P∘dS)`` per query
    column, ``dO_h = dP V_h + P_h dV_h``, ``out += dO W_o``."""
    qkv, P, mt = fs.qkv, fs.P, fs.mt
    dqkv, dP, dheads = ts.dqkv, ts.dP, ts.dheads
    L = lanes(V)
    T = V.shape[0]
    d = V.shape[1] // L
    dh = d // n_heads
    e = 3 * d * L
    c = n_heads * T * L
    TL = T * L
    lgemm(V, 0, d * L, L, wqkv, 0, 3 * d, 1, False, dqkv, 0, e, L, T, d, 3 * d, False)
    scale = V.dtype.type(beta / math.sqrt(dh))
    for i in range(T):
        for j in range(d * L):
            dqkv[i, j] *= scale
    for h in range(n_heads):
        lgemm(
            dqkv, h * dh * L, e, L, qkv, (d + h * dh) * L, L, e, True, dP, 0, L, TL, T, dh, T, False
        )
        lgemm(
            qkv, h * dh * L, e, L, dqkv, (d + h * dh) * L, L, e, True, dP, 0, L, TL, T, dh, T, True
        )
        softmax_tangent_columns(P, h * TL, TL, dP, mt[0])
        lgemm(
            dP,
            0,
            L,
            TL,
            qkv,
            (2 * d + h * dh) * L,
            e,
            L,
            True,
            dheads,
            h * dh * L,
            d * L,
            L,
            T,
            T,
            dh,
            False,
        )
        lgemm(
            P,
            h * TL,
            L,
            c,
            dqkv,
            (2 * d + h * dh) * L,
            e,
            L,
            True,
            dheads,
            h * dh * L,
            d * L,
            L,
            T,
            T,
            dh,
            True,
        )
    lgemm(dheads, 0, d * L, L, wo, 0, d, 1, False, out, 0, d * L, L, T, d, d, True)
