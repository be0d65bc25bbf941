"""Fused Numba kernels of the transformer vector field and its integrators.

Three layers, as in the rest of the package:

* serial per-trajectory workers on one state ``X`` of shape ``(T, d)``:
  :func:`rhs` (the vector field ``f``), :func:`rk_step` (one explicit Runge–Kutta
  step driven by a tableau) and :func:`advance` (one layer: step, noise, finiteness);
* drivers that run *all* layers of many trajectories in one call, without the GIL
  or reference counting, in buffers allocated by :func:`make_scratch`:
  :func:`integrate_kernel`, :func:`vector_field_kernel` (``api.run_threads`` runs
  them on slices of the batch in parallel threads);
* :func:`pack_params`, which lays a :class:`~tfkernels.TransformerParams` out as the
  flat tuple of arrays the kernels take.

Every weight carries a leading layer axis of length L (L = 1 for shared weights); layer
n uses set ``n if L > 1 else 0`` for all stages of its step. Settings travel as two
small arrays (``fp``: floats, ``ip``: integer codes), so each dtype compiles one
specialization of each kernel, whatever the configuration.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from .. import config
from . import rng
from .simd import gemm, gemm_ld, runtime
from ..methods import ACTIVATIONS

# Slots of the integer settings ``ip`` and float settings ``fp``.
IP_HEADS, IP_CAUSAL, IP_ACT, IP_ATTN, IP_FFN, IP_LIN = range(6)
FP_BETA, FP_DAMPING = range(2)

GELU, GELU_TANH, RELU, TANH, IDENTITY = (ACTIVATIONS[k] for k in
                                        ("gelu", "gelu_tanh", "relu", "tanh", "identity"))

#: Value of ``status`` for a trajectory that stayed finite through every layer.
STATUS_OK = -1

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

#: Serial workers: no reference counting (``config.WORKER_NRT``), they allocate nothing.
_jit = njit(cache=config.CACHE, fastmath=config.FASTMATH, error_model=config.ERROR_MODEL,
            _nrt=config.WORKER_NRT)
#: Scalar helpers called inside hot loops are inlined at the Numba-IR level, so
#: that LLVM sees one straight-line loop body to vectorize (its own inliner gives
#: up on a body as large as the erfc's).
_ijit = njit(cache=config.CACHE, fastmath=config.FASTMATH, error_model=config.ERROR_MODEL,
             inline="always", _nrt=config.WORKER_NRT)
#: The drivers are serial over their batch and release the GIL; ``api.run_threads``
#: runs them on contiguous slices of the batch in parallel threads. (A ``prange``
#: driver compiles its whole fused body four times over — the parfor function, its
#: gufunc wrapper, the parallel wrapper and the driver each re-optimize and re-emit
#: every linked callee — which was 4 s of a 10 s cold compile.)
#: They allocate nothing (the buffers come from :func:`make_scratch`, called from
#: Python per slice) and so, like the workers, run without reference counting: in an
#: NRT driver the arrays and tuples of arrays that flow through the inlined layer step
#: were incref'd and decref'd with atomic instructions around every ``rhs`` call,
#: about 200 ns per layer (a fifth of a tiny float32 layer, measured).
_djit = njit(cache=config.CACHE, fastmath=config.FASTMATH, error_model=config.ERROR_MODEL,
             nogil=True, _nrt=config.WORKER_NRT)


def pack_params(params):
    """Lay ``params`` out as the arguments every kernel takes.

    Parameters
    ----------
    params : TransformerParams

    Returns
    -------
    W : tuple of ndarray
        ``(wqkv, wo, w1, b1, w2, b2, A, wqkv_t, wo_t, w1_t, w2_t, A_t)`` with a leading
        layer axis; ``wqkv`` is ``[wq | wk | wv]`` of shape ``(L, d, 3d)`` so that Q, K
        and V come out of one pass over X. The last five are the same matrices
        transposed once here (``wqkv_t (L, 3d, d)``, ``wo_t (L, d, d)``,
        ``w1_t (L, m, d)``, ``w2_t (L, d, m)``, ``A_t (L, d, d)``), for the products with
        ``Wᵀ`` of the decay study's vector–Jacobian product. Absent terms are empty arrays.
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
    wqkv_t, wo_t, w1_t, w2_t, A_t = (np.ascontiguousarray(w.transpose(0, 2, 1))
                                     for w in (wqkv, wo, w1, w2, A))
    return (wqkv, wo, w1, b1, w2, b2, A, wqkv_t, wo_t, w1_t, w2_t, A_t), fp, ip


# --------------------------------------------------------------------- workers
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


@intrinsic
def exp2i(typingctx, n):
    """``2**n`` for a float ``n`` holding an integer in the normal exponent range,
    built from the exponent bits (``n`` float32: [-126, 127], float64: [-1022, 1023])."""
    if not isinstance(n, types.Float):
        return None

    def codegen(context, builder, sig, args):
        (x,) = args
        width, bias, shift = (32, 127, 23) if n.bitwidth == 32 else (64, 1023, 52)
        ity = ir.IntType(width)
        i = builder.fptosi(x, ity)
        i = builder.shl(builder.add(i, ir.Constant(ity, bias)), ir.Constant(ity, shift))
        return builder.bitcast(i, x.type)

    return n(n), codegen


#: Lower clamp of :func:`exp_neg`'s argument, one value for both dtypes: 2**n must
#: stay a normal float32 (n >= -126). e^-87 ≈ 1.6e-38 stands in for anything
#: smaller; a softmax weight or erfc that small is far below either tolerance.
EXP_LO = -87.0

_LN2_HI = 0.693145751953125          # 17 significant bits: n·_LN2_HI is exact
_LN2_LO = math.log(2.0) - _LN2_HI    # exact in float64 (Sterbenz)


#: Taylor coefficients 1/k! of e^r, k = 0 … 12.
_EXP_POLY = tuple(1.0 / math.factorial(k) for k in range(13))


@_ijit
def estrin8(y, y2, y4, c0, c1, c2, c3, c4, c5, c6, c7):
    """``Σ_{k<8} c_k y^k`` by Estrin's scheme, given ``y2 = y²`` and ``y4 = y⁴``.

    Depth 3 multiply-adds instead of Horner's 7: the polynomials of :func:`exp_neg`
    and :func:`erfc_pos` are latency-bound chains otherwise (measured 2.5× slower in
    the GELU loop). Equivalent to ``np.polynomial.polynomial.polyval(y, c)``.
    """
    return (((c0 + c1 * y) + (c2 + c3 * y) * y2)
            + ((c4 + c5 * y) + (c6 + c7 * y) * y2) * y4)


@_ijit
def estrin5(y, y2, y4, c0, c1, c2, c3, c4):
    """``Σ_{k<5} c_k y^k`` (Estrin, as :func:`estrin8`): the tail of a 13-term
    polynomial. Padding :func:`estrin8` with zero coefficients instead costs three
    vector operations per call, because ``0·y`` is not folded (no ``nnan``/``ninf``)."""
    return ((c0 + c1 * y) + (c2 + c3 * y) * y2) + c4 * y4


@_ijit
def exp_neg(x, dt, lo, short=False):
    """``exp(x)`` for ``x <= 0`` (and moderately positive x) in the dtype ``dt``.

    Cody–Waite reduction ``x = n·ln2 + r``, ``|r| <= ln2/2``, degree-12 Taylor
    polynomial of ``e^r`` (truncation < 2e-16; with ``short`` degree 7, truncation
    < 6e-9, enough for float32) and ``2**n`` from the exponent bits.
    Measured max relative error: float64 ≈ 3e-16 for |x| ≤ 1 and ≈ |x|·4e-17 beyond
    (the conditioning of exp itself), float32 ≈ 3e-7. ``x`` below ``lo``
    (``EXP_LO``) is clamped, giving e^lo instead of a smaller number or 0; NaN
    propagates (the clamp compares false).
    """
    if x < lo:
        x = lo
    n = np.floor(x * dt(1.4426950408889634) + dt(0.5))
    r = x - n * dt(_LN2_HI) - n * dt(_LN2_LO)
    r2 = r * r
    r4 = r2 * r2
    E = _EXP_POLY
    p = estrin8(r, r2, r4, dt(E[0]), dt(E[1]), dt(E[2]), dt(E[3]), dt(E[4]), dt(E[5]),
                dt(E[6]), dt(E[7]))
    if not short:
        p += (r4 * r4) * estrin5(r, r2, r4, dt(E[8]), dt(E[9]), dt(E[10]), dt(E[11]),
                                 dt(E[12]))
    return p * exp2i(n)


#: Chebyshev coefficients of ``F(t) = ln(erfc(x)/t) + x²`` with ``t = 2/(2+x)`` on
#: ``x ∈ [0, 6]`` (t ∈ [1/4, 1], mapped to y ∈ [-1, 1]); computed with mpmath at 50
#: digits (Chebyshev interpolation on 40 nodes). Terms beyond index 23 are < 5e-19.
#: ``erfc(x) = t·exp(-x² + F(t))``, as in Numerical Recipes (3rd ed., §6.2.2).
_ERFC_CHEB = (
    -0.4985502230126517, 0.5003364655513497, 0.002907954374873043,
    -0.004807433804460357, 1.4741810740729065e-05, 0.00010698213450336889,
    -6.275656652474683e-06, -2.6555862047786477e-06, 4.14616364109913e-07,
    4.7388983956557695e-08, -1.8774034558626204e-08, 4.5312073358856027e-10,
    5.9934889163061e-10, -8.983766959581827e-11, -9.488744811443404e-12,
    4.40703888430635e-12, -2.726952501786936e-13, -1.1336459307085183e-13,
    2.5365165661713203e-14, 1.0028323407250651e-16, -8.330478547927849e-16,
    1.1800447425838173e-16, 7.815467303883168e-18, -4.4310710601765106e-18,
)
_ERFC_XMAX = 6.0


def _monomial(cheb, n):
    """Monomial coefficients (in y) of the first ``n`` terms of a Chebyshev series,
    padded with zeros to 24. Well conditioned here: Σ|p_k| = 1.047 for ``_ERFC_CHEB``,
    so evaluating the monomial form loses nothing to cancellation."""
    p = np.polynomial.chebyshev.cheb2poly(np.asarray(cheb[:n]))
    return tuple(float(v) for v in p) + (0.0,) * (24 - n)


#: ``F(y)`` of :func:`erfc_pos` as monomials: all 24 terms (float64), and the first
#: 13 (float32, truncation < 1e-10).
_ERFC_POLY = _monomial(_ERFC_CHEB, 24)
_ERFC_POLY_SHORT = _monomial(_ERFC_CHEB, 13)


@_ijit
def erfc_pos(x, dt, lo, short=False):
    """``erfc(x)`` for ``0 <= x <= 6`` (callers clamp), branch-free.

    ``erfc(x) = t·exp(−x² + F(t))`` with ``t = 2/(2+x)``; ``F`` is the 24-term
    Chebyshev series ``_ERFC_CHEB`` (relative error ~1e-16, float64) or with
    ``short`` (a literal, for float32) its first 13 terms (truncation < 1e-10) and
    the short exp, evaluated in monomial form by Estrin's scheme (:func:`estrin8`
    and :func:`estrin5` blocks: depth 6 instead of the 24-step Clenshaw chain).
    Straight-line code, so that LLVM vectorizes the caller's loop.
    """
    t = dt(2.0) / (dt(2.0) + x)
    # y = (2t - (1 + t0)) / (1 - t0) with t0 = 1/4
    y = t * dt(8.0 / 3.0) - dt(5.0 / 3.0)
    y2 = y * y
    y4 = y2 * y2
    y8 = y4 * y4
    if short:
        C = _ERFC_POLY_SHORT
        F = (estrin8(y, y2, y4, dt(C[0]), dt(C[1]), dt(C[2]), dt(C[3]), dt(C[4]),
                     dt(C[5]), dt(C[6]), dt(C[7]))
             + y8 * estrin5(y, y2, y4, dt(C[8]), dt(C[9]), dt(C[10]), dt(C[11]),
                            dt(C[12])))
    else:
        C = _ERFC_POLY
        F = (estrin8(y, y2, y4, dt(C[0]), dt(C[1]), dt(C[2]), dt(C[3]), dt(C[4]),
                     dt(C[5]), dt(C[6]), dt(C[7]))
             + y8 * (estrin8(y, y2, y4, dt(C[8]), dt(C[9]), dt(C[10]), dt(C[11]),
                             dt(C[12]), dt(C[13]), dt(C[14]), dt(C[15]))
                     + y8 * estrin8(y, y2, y4, dt(C[16]), dt(C[17]), dt(C[18]),
                                    dt(C[19]), dt(C[20]), dt(C[21]), dt(C[22]),
                                    dt(C[23]))))
    return t * exp_neg(F - x * x, dt, lo, short)


@_ijit
def two_cdf(z, dt, lo, short):
    """``2Φ(z) = 1 + erf(z/√2)``, branch-free: ``2 − erfc(x)`` for ``x = z/√2 >= 0``
    and ``erfc(|x|)`` below (``|x|`` clamped at 6, where erfc < 2.2e-17). GELU is
    ``½z·2Φ(z)``; the decay study's GELU' reuses the same value for its ``Φ(z)``."""
    x = z * dt(_SQRT_HALF)
    ax = abs(x)
    if ax > dt(_ERFC_XMAX):
        ax = dt(_ERFC_XMAX)
    e = erfc_pos(ax, dt, lo, short)
    return e if x < dt(0.0) else dt(2.0) - e


@_ijit
def gelu_bias(H, b, dt, short):
    """``H[i, j] = GELU(H[i, j] + b[j])`` in place (see :func:`bias_activate`)."""
    T, m = H.shape
    lo = dt(EXP_LO)
    for i in range(T):
        for j in range(m):
            z = H[i, j] + b[j]
            H[i, j] = dt(0.5) * z * two_cdf(z, dt, lo, short)


@_jit
def bias_activate(H, b, act):
    """``H[i, j] = σ(H[i, j] + b[j])`` in place.

    GELU (erf form) is ``z·Φ(z) = ½z(1 + erf(z/√2))``, evaluated branch-free as
    ``½z·(2 − erfc(x))`` for ``x = z/√2 >= 0`` and ``½z·erfc(|x|)`` below, with
    ``erfc`` from :func:`erfc_pos` (|x| clamped at 6, where erfc < 2.2e-17).
    float32 takes the short polynomials. The dtype test sits outside the loop and
    each branch inlines :func:`gelu_bias` with a literal flag, which LLVM folds
    (``itemsize`` is read at run time, so a test inside the loop would stop
    vectorization). Other activations use :func:`activate`.
    """
    dt = H.dtype.type
    if act == GELU:
        if H.itemsize == 4:
            gelu_bias(H, b, dt, True)
        else:
            gelu_bias(H, b, dt, False)
    else:
        T, m = H.shape
        for i in range(T):
            for j in range(m):
                H[i, j] = dt(activate(H[i, j] + b[j], act))


@_jit
def softmax_columns(P, n, causal, mt, width):
    """Softmax over each of the first ``n`` *columns* of the transposed scores
    ``P (T keys, ≥ n)`` in place. Column i holds the scores of query
    ``(i // width) % T`` (the heads' ``(T, T)`` blocks stand side by side, each query's
    column repeated ``width`` times: 1 here, the group's lanes in
    :mod:`tfkernels.lanes`); with ``causal`` that query keeps keys up to its own index and
    the rest are 0.

    The running maximum, the exponentials and their sums are element-wise operations
    along contiguous rows of all ``n`` columns (scratch ``mt (3, ≥ n)``: maximum, sum
    and the query index of each column, as a float so that the mask is a vector
    compare) and vectorize with no horizontal reduction; the rows of all heads
    together fill the vectors even at T = 8, where one head's row of 8 ran in the
    scalar remainder of LLVM's 16-lane × 4 loop. The maximum uses ``>`` (a NaN score is
    skipped there) but NaN still reaches the column through ``exp(s − m)``. Each
    column is ``softmax`` of its query's scores, whatever else stands in ``P``.
    """
    T = P.shape[0]
    dt = P.dtype.type
    lo = dt(EXP_LO)
    every = not causal
    m, total, q = mt[0], mt[1], mt[2]
    for i in range(n):
        m[i] = P[0, i]
        total[i] = dt(0.0)
        q[i] = dt((i // width) % T)
    # Full-length rows with the causal mask as a select: a loop starting at j ran
    # 4x slower (short, misaligned trip counts); masked entries are computed, unused.
    for j in range(1, T):
        jf = dt(j)
        for i in range(n):
            x = P[j, i]
            m[i] = x if (x > m[i]) & ((q[i] >= jf) | every) else m[i]
    for j in range(T):
        jf = dt(j)
        for i in range(n):
            e = exp_neg(P[j, i] - m[i], dt, lo)
            e = e if (q[i] >= jf) | every else dt(0.0)
            P[j, i] = e
            total[i] += e
    for i in range(n):
        m[i] = dt(1.0) / total[i]
    for j in range(T):
        for i in range(n):
            P[j, i] *= m[i]


@_ijit
def transpose_scaled(A, a0, n, scale, out):
    """``out[c, i] = scale·A[i, a0 + c]`` for ``c < n``: a block of columns of ``A``
    transposed into the rows of ``out (≥ n, T)``."""
    for i in range(A.shape[0]):
        for c in range(n):
            out[c, i] = A[i, a0 + c] * scale


@_ijit
def head_probs(qkv, h0, g, dh, causal, qt, P, mt):
    """Attention probabilities of heads ``h0 … h0 + g − 1``, transposed, side by side:
    head ``h0 + k``'s ``(T keys, T queries)`` block in columns ``k·T … (k+1)·T − 1``
    of ``P (T, ≥ g·T)``.

    ``qt (d, T)`` holds ``scale·Qᵀ`` of every head (:func:`transpose_scaled`); each
    head's scores ``K_h (scale Q_h)ᵀ`` are a :func:`~tfkernels.simd.gemm_ld` product
    reading ``K_h`` in place from ``qkv (T, 3d)``, and one :func:`softmax_columns`
    call (scratch ``mt (3, ≥ g·T)``) normalizes every query's column of the group.
    """
    T = qkv.shape[0]
    d = qkv.shape[1] // 3
    for k in range(g):
        h = h0 + k
        gemm_ld(qkv, d + h * dh, 3 * d, 1, qt, h * dh * T, T, P, k * T, P.shape[1],
                T, dh, T, False)
    softmax_columns(P, g * T, causal, mt, runtime(1))


@_ijit
def attention_packed(X, wqkv, wo, n_heads, beta, causal, qkv, heads, qt, P, mt, out):
    """``out += concat_h(softmax(β Q_h K_hᵀ/√d_h) V_h) W_o``.

    ``qkv (T, 3d)`` gets ``X [Wq|Wk|Wv]`` in one product and ``qt (d, T)`` the scaled
    ``Qᵀ``. The heads go in groups of as many as ``P (T, G·T)`` holds (all of them
    unless ``H·T²`` exceeds ``config.SOFTMAX_BLOCK_BYTES``, see :func:`make_scratch`):
    :func:`head_probs` leaves the group's probabilities in ``P``, and each head's
    output, transposed, ``V_hᵀ P_h`` (``V_h`` read transposed in place, its block of
    ``P`` as it stands), is a :func:`~tfkernels.simd.gemm_ld` product into head h's
    rows of ``heads (d, T)``; the output projection reads ``heads`` transposed.
    Transposed, the product is ``T`` wide instead of ``d_h``: full vectors where
    ``d_h`` filled half of one (small float32) or one vector with 4 latency-bound
    accumulators where ``T`` fills two panels (medium, large). Every element is the
    same chain of fused multiply-adds over the keys either way. The last group's
    probabilities stay in ``P`` for the decay study's tangent.
    """
    T, d = X.shape
    dh = d // n_heads
    G = P.shape[1] // T
    gemm(X, wqkv, qkv, False)
    transpose_scaled(qkv, 0, d, X.dtype.type(beta / math.sqrt(dh)), qt)
    for h0 in range(0, n_heads, G):
        g = min(G, n_heads - h0)
        head_probs(qkv, h0, g, dh, causal, qt, P, mt)
        for k in range(g):
            h = h0 + k
            gemm_ld(qkv, 2 * d + h * dh, 1, 3 * d, P, k * T, P.shape[1], heads, h * dh * T,
                    T, dh, T, T, False)
    gemm_ld(heads, 0, 1, T, wo, 0, d, out, 0, d, T, d, d, True)


@_ijit
def ffn_packed(X, w1, b1, w2, b2, act, hidden, out):
    """``out += σ(X W_1 + b_1) W_2 + b_2``; ``hidden (T, m)``."""
    T, d = X.shape
    gemm(X, w1, hidden, False)
    bias_activate(hidden, b1, act)
    gemm(hidden, w2, out, True)
    for i in range(T):
        for j in range(d):
            out[i, j] += b2[j]


@_ijit
def damped_linear(X, γ, A, linear, out):
    """``out = −γX`` (``+ X·A`` when ``linear``): the terms of ``f`` linear in X."""
    T, d = X.shape
    for i in range(T):
        for j in range(d):
            out[i, j] = -γ * X[i, j]
    if linear:
        gemm(X, A, out, True)


@_jit
def rhs(X, W, fp, ip, layer, out, scratch):
    """``out = f(X) = g(X) + h(X) − γX + X·A`` with weight set ``layer``.

    ``W`` from :func:`pack_params` (the weights in their natural layout);
    ``scratch`` from :func:`make_scratch`.
    """
    qkv, heads, hidden, mt, qt, P = scratch
    damped_linear(X, fp[FP_DAMPING], W[6][layer], ip[IP_LIN], out)
    if ip[IP_ATTN]:
        attention_packed(X, W[0][layer], W[1][layer], ip[IP_HEADS], fp[FP_BETA],
                         ip[IP_CAUSAL], qkv, heads, qt, P, mt, out)
    if ip[IP_FFN]:
        ffn_packed(X, W[2][layer], W[3][layer], W[4][layer], W[5][layer], ip[IP_ACT],
                   hidden, out)


def empty_aligned(shape, dtype):
    """``np.empty(shape, dtype)`` starting on a 64-byte boundary (a cache line, one
    AVX-512 vector), so that no vector load of a row start splits two lines."""
    return aligned_buffers((shape,), dtype)[0]


def aligned_buffers(shapes, dtype):
    """Empty arrays of the given shapes, each starting on a 64-byte boundary, carved
    from one allocation (one ``np.empty`` instead of one per buffer: a slice's nine
    buffers took 33 µs of a 72 µs ``integrate`` call when each was its own).

    Returns
    -------
    list of ndarray
        C-contiguous, writable, of ``dtype``, in the order of ``shapes``.
    """
    dtype = np.dtype(dtype)
    sizes = [math.prod(shape) * dtype.itemsize for shape in shapes]
    starts, total = [], 0
    for n in sizes:
        starts.append(total)
        total += -(-n // 64) * 64
    buf = np.empty(total + 64, dtype=np.uint8)
    base = -buf.ctypes.data % 64
    return [buf[base + o:base + o + n].view(dtype).reshape(shape)
            for o, n, shape in zip(starts, sizes, shapes)]


def make_scratch(W, ip, T, d, n_stages, dtype):
    """Allocate one slice's scratch: RK stages, stage input and ``rhs`` buffers.

    Plain Python, called once per slice of a batch (``api.run_threads``): the
    compiled drivers allocate nothing, so they run without reference counting (see
    :func:`integrate_kernel`). ``rhs`` buffers: ``(qkv (T, 3d), heads (d, T),
    hidden (T, m), mt (3, G·T), qt (d, T), P (T, G·T))``: ``P`` holds the
    probabilities of G heads side by side, every head unless ``H·T²`` elements pass
    ``config.SOFTMAX_BLOCK_BYTES``.
    """
    m = W[2].shape[2]
    H = ip[IP_HEADS] if ip[IP_ATTN] else 1
    G = max(1, min(H, config.SOFTMAX_BLOCK_BYTES // (T * T * np.dtype(dtype).itemsize)))
    stages, xs, *rs = aligned_buffers(((n_stages, T, d), (T, d), (T, 3 * d), (d, T), (T, m),
                                       (3, G * T), (d, T), (T, G * T)), dtype)
    return stages, xs, tuple(rs)


@_ijit
def stage_input(X, stages, a, h, i, xs):
    """``xs = X + Σ_{j<i} (h a_ij) k_j``: the input of RK stage ``i``.

    Each coefficient is read once outside its ``(T, d)`` loop (LLVM cannot hoist it
    past stores that may alias ``a``); shared by :func:`rk_step` and the decay
    study's tangent step, so both produce the same bits.
    """
    T, d = X.shape
    for r in range(T):
        for col in range(d):
            xs[r, col] = X[r, col]
    for j in range(i):
        c = h * a[i, j]
        for r in range(T):
            for col in range(d):
                xs[r, col] += c * stages[j, r, col]


@_ijit
def step_update(X, stages, b, h, acc):
    """``X += h Σ_i b_i k_i``, the sum formed in ``acc (T, d)`` stage by stage."""
    T, d = X.shape
    z = X.dtype.type(0)
    for r in range(T):
        for col in range(d):
            acc[r, col] = z
    for i in range(b.shape[0]):
        c = b[i]
        for r in range(T):
            for col in range(d):
                acc[r, col] += c * stages[i, r, col]
    for r in range(T):
        for col in range(d):
            X[r, col] += h * acc[r, col]


@_ijit
def rk_step(X, W, fp, ip, layer, a, b, h, stages, xs, scratch):
    """Advance ``X`` in place by one explicit RK step of size ``h``.

    ``k_i = f(X + h Σ_{j<i} a_ij k_j)`` (:func:`stage_input`), then
    ``X += h Σ_i b_i k_i`` (:func:`step_update`, ``xs`` holding the sum at the end).
    With the Euler tableau and ``h = α_n·c`` this is the averaged update
    ``X + α_n c f(X)``. One ``rhs`` call site (each one is compiled in full).
    """
    for i in range(b.shape[0]):
        src = X
        if i > 0:
            stage_input(X, stages, a, h, i, xs)
            src = xs
        rhs(src, W, fp, ip, layer, stages[i], scratch)
    step_update(X, stages, b, h, xs)


@_ijit
def add_noise(X, σ, noise_key, n):
    """``X += σ·z`` with z the normals of layer ``n`` of this trajectory's noise key."""
    rng.add_normal(noise_key, n * X.size, σ, X)


@_ijit
def all_finite(X):
    """True when no entry of ``X`` is NaN or ±inf (fastmath keeps these checks).

    Branch-free so that it vectorizes: ``Σ x·0`` is 0 unless some x is NaN or ±inf
    (``x·0`` cannot be folded to 0 because ``nnan``/``ninf`` are not in FASTMATH).
    Equivalent to ``all(np.isfinite(X))``, left for reference.
    """
    z = X.dtype.type(0)
    acc = z
    for i in range(X.size):
        acc += X.flat[i] * z
    return acc == z


@_ijit
def is_finite(x):
    """``np.isfinite(x)`` for a float, as the kernels need it: under ``FASTMATH``,
    ``np.isfinite(0.5·log(s) − c)`` came out True for ``s = inf`` and NaN (each flag
    alone was fine); ``x·0 == 0`` is False for NaN and ±inf either way."""
    return x * 0.0 == 0.0


@_ijit
def advance(X, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch):
    """Layer ``n`` of one trajectory: RK step, then noise; returns whether X is finite."""
    layer = n if W[0].shape[0] > 1 or W[6].shape[0] > 1 or W[2].shape[0] > 1 else 0
    rk_step(X, W, fp, ip, layer, a, b, h[n], stages, xs, scratch)
    if σ[n] != 0:
        add_noise(X, σ[n], noise_key, n)
    return all_finite(X)


@_ijit
def copy_state(src, dst):
    """``dst[:, :] = src`` for two ``(T, d)`` states of the same shape.

    An explicit loop: array-to-array slice assignment makes Numba compile its
    shape-mismatch error message (string formatting, about 2 s of every cold compile).
    """
    T, d = src.shape
    for i in range(T):
        for j in range(d):
            dst[i, j] = src[i, j]


# --------------------------------------------------------------------- drivers
@_djit
def integrate_kernel(x0, W, fp, ip, a, b, h, σ, seed, start, save_every, first, out, status,
                     X, stages, xs, scratch):
    """Run all ``N = len(h)`` layers of every trajectory of ``x0`` (serially; see
    ``api.run_threads`` for the parallel split of a batch).

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
    X, (stages, xs, scratch)
        Buffers: the state ``(T, d)`` and :func:`make_scratch`'s.
    """
    B, T, d = x0.shape
    N = h.shape[0]
    for bi in range(B):
        copy_state(x0[bi], X)
        noise_key = rng.key(seed, rng.STREAM_NOISE, start + bi)
        status[bi] = STATUS_OK
        if first == 0:
            copy_state(X, out[bi, 0])
        for n in range(N):
            ok = advance(X, W, fp, ip, n, a, b, h, σ, noise_key, stages, xs, scratch)
            if not ok:
                status[bi] = n + 1
                out[bi, max(0, (n + 1 + save_every - 1) // save_every - first):] = np.nan
                break
            if (n + 1) % save_every == 0:
                copy_state(X, out[bi, (n + 1) // save_every - first])


@_djit
def vector_field_kernel(X, W, fp, ip, layer, out, scratch):
    """``out[b] = f(X[b])`` with weight set ``layer`` for every trajectory b;
    ``scratch`` the ``rhs`` buffers of :func:`make_scratch`."""
    for bi in range(X.shape[0]):
        rhs(X[bi], W, fp, ip, layer, out[bi], scratch)
