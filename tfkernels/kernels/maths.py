"""Scalar and element-wise maths of the kernels, the same in both layouts.

Straight-line, branch-free code wherever it sits in a hot loop, so that LLVM
vectorizes the caller's loop: the exponential (:func:`exp_neg`), ``erfc``
(:func:`erfc_pos`) and the GELU built on them (:func:`two_cdf`, :func:`gelu_bias`,
:func:`gelu_bias_prime`), the other activations and their derivatives, the column
softmax (:func:`softmax_columns`), finiteness tests, and squared norms accumulated in
float64. Every function works on whole rows of a ``(T, width)`` array, so the row
layout (width d) and the lane layout (width d·L) call the same code.
"""

import math

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from ..methods import ACTIVATIONS
from .jit import cjit as _cjit
from .jit import ijit as _ijit
from .jit import jit as _jit
from .jit import sjit as _sjit
from .simd import lanes, sload, sstore, vfma, vload, vstore, vzero

GELU, GELU_TANH, RELU, TANH, IDENTITY = (
    ACTIVATIONS[k] for k in ("gelu", "gelu_tanh", "relu", "tanh", "identity")
)

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715

#: The smallest positive normal float64: a sum of squares below it has lost precision.
DBL_MIN = float(np.finfo(np.float64).tiny)


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

_LN2_HI = 0.693145751953125  # 17 significant bits: n·_LN2_HI is exact
#: ``ln 2 − _LN2_HI`` rounded to float64 from ln 2 to 50 digits (mpmath), so that
#: ``_LN2_HI + _LN2_LO`` is ln 2 to 70 bits. ``math.log(2.0) − _LN2_HI`` carried
#: ``log(2.0)``'s own rounding (2.3e-17): ``n·_LN2_LO`` was off by up to 125 times
#: that, and e^x by 13 ulp at x = −87.
_LN2_LO = 1.4286068203094173e-06

#: Minimax coefficients (relative error, Remez exchange in mpmath at 50 digits) of
#: e^r on |r| ≤ ln2/2 (1 + 2⁻²⁰): degree 11 for float64 (relative error 3.1e-18;
#: 2.3e-17 with the coefficients rounded to float64, a tenth of an ulp), in place of
#: Taylor's degree 12 (1.7e-16 at the ends).
_EXP_POLY = (
    1.0,
    1.0,
    0.5000000000000018,
    0.1666666666666617,
    0.04166666666649277,
    0.008333333333559274,
    0.001388888895122436,
    0.00019841269432673586,
    2.4801486521024262e-05,
    2.7557622535144494e-06,
    2.7632293429903797e-07,
    2.499430374070129e-08,
)
#: The same for float32 (``short``): degree 6, relative error 1.9e-9 (1.7e-8, 0.3 of
#: float32's half-ulp, with the coefficients rounded to float32), in place of Taylor's
#: degree 7 (6e-9).
_EXP_POLY_SHORT = (
    1.0000000005541712,
    1.0000000363234107,
    0.4999999207977022,
    0.16666420168895824,
    0.041668225575450635,
    0.008374815884324828,
    0.001383684589883716,
)


@_ijit
def estrin8(y, y2, y4, c0, c1, c2, c3, c4, c5, c6, c7):
    """``Σ_{k<8} c_k y^k`` by Estrin's scheme, given ``y2 = y²`` and ``y4 = y⁴``.

    Depth 3 multiply-adds instead of Horner's 7: the polynomials of :func:`exp_neg`
    and :func:`erfc_pos` are latency-bound chains otherwise (``docs/performance.md``,
    "estrin"). Equivalent to ``np.polynomial.polynomial.polyval(y, c)``.
    """
    return ((c0 + c1 * y) + (c2 + c3 * y) * y2) + ((c4 + c5 * y) + (c6 + c7 * y) * y2) * y4


@_ijit
def exp_reduce(x, dt, lo):
    """Cody–Waite reduction of :func:`exp_neg`: ``x = n·ln2 + r``, ``|r| ≤ ln2/2``
    (``x`` clamped below at ``lo``); returns ``(r, n)``. The two steps are
    ``llvm.fma`` calls (:func:`~tfkernels.kernels.simd.vfma`), which reassociation
    leaves alone: written as ``x − n·_LN2_HI − n·_LN2_LO``, LLVM may fold the two
    products into ``n·ln2`` rounded, which left e^x 27 ulp off at x = −87."""
    if x < lo:
        x = lo
    n = np.floor(x * dt(1.4426950408889634) + dt(0.5))
    r = vfma(-n, dt(_LN2_HI), x)
    return vfma(-n, dt(_LN2_LO), r), n


@_ijit
def exp_neg(x, dt, lo, short=False):
    """``exp(x)`` for ``x <= 0`` (and moderately positive x) in the dtype ``dt``.

    Cody–Waite reduction ``x = n·ln2 + r``, ``|r| <= ln2/2`` (:func:`exp_reduce`), a
    minimax polynomial of ``e^r`` in Estrin's form (degree 11, relative error 2.3e-17;
    with ``short`` degree 6, 1.7e-8, enough for float32) and ``2**n`` from the
    exponent bits. Estrin's form keeps the chain short where the exponential is one
    part of a long loop body (erfc, GELU, the tanh gate); :func:`exp_horner` is the
    same function for short loop bodies (the softmax). Measured max error: float64
    under 1 ulp for |x| ≤ 1 and about 1 ulp to x = −87, float32 ≈ 1 ulp. ``x`` below
    ``lo`` (``EXP_LO``) is clamped, giving e^lo instead of a smaller number or 0; NaN
    propagates (the clamp compares false).
    """
    r, n = exp_reduce(x, dt, lo)
    r2 = r * r
    r4 = r2 * r2
    if short:
        E = _EXP_POLY_SHORT
        p = ((dt(E[0]) + dt(E[1]) * r) + (dt(E[2]) + dt(E[3]) * r) * r2) + (
            (dt(E[4]) + dt(E[5]) * r) + dt(E[6]) * r2
        ) * r4
    else:
        E = _EXP_POLY
        p = estrin8(
            r,
            r2,
            r4,
            dt(E[0]),
            dt(E[1]),
            dt(E[2]),
            dt(E[3]),
            dt(E[4]),
            dt(E[5]),
            dt(E[6]),
            dt(E[7]),
        )
        p += (r4 * r4) * ((dt(E[8]) + dt(E[9]) * r) + (dt(E[10]) + dt(E[11]) * r) * r2)
    return p * exp2i(n)


@_ijit
def exp_horner(x, dt, lo, short=False):
    """:func:`exp_neg` with the polynomial in Horner's form: the same reduction and
    coefficients, one multiply-add per degree (11, or 6 with ``short``) instead of
    Estrin's 14 operations (9). In a loop whose body is little more than the
    exponential (the softmax's) the iterations overlap and the chain's latency
    hides: 15 % faster there on Zen 4 (float64; ``docs/performance.md``). In a long
    body (GELU) Estrin's form was 2.5× faster. Same accuracy as :func:`exp_neg`, not
    the same bits."""
    r, n = exp_reduce(x, dt, lo)
    if short:
        E = _EXP_POLY_SHORT
        p = dt(E[6]) * r + dt(E[5])
    else:
        E = _EXP_POLY
        p = dt(E[11]) * r + dt(E[10])
        p = p * r + dt(E[9])
        p = p * r + dt(E[8])
        p = p * r + dt(E[7])
        p = p * r + dt(E[6])
        p = p * r + dt(E[5])
    p = p * r + dt(E[4])
    p = p * r + dt(E[3])
    p = p * r + dt(E[2])
    p = p * r + dt(E[1])
    p = p * r + dt(E[0])
    return p * exp2i(n)


#: Chebyshev coefficients of ``F(t) = ln(erfc(x)/t) + x²`` with ``t = 2/(2+x)`` on
#: ``x ∈ [0, 6]`` (t ∈ [1/4, 1], mapped to y ∈ [-1, 1]); computed with mpmath at 50
#: digits (Chebyshev interpolation on 40 nodes). Terms beyond index 23 are < 5e-19.
#: ``erfc(x) = t·exp(-x² + F(t))``, as in Numerical Recipes (3rd ed., §6.2.2).
_ERFC_CHEB = (
    -0.4985502230126517,
    0.5003364655513497,
    0.002907954374873043,
    -0.004807433804460357,
    1.4741810740729065e-05,
    0.00010698213450336889,
    -6.275656652474683e-06,
    -2.6555862047786477e-06,
    4.14616364109913e-07,
    4.7388983956557695e-08,
    -1.8774034558626204e-08,
    4.5312073358856027e-10,
    5.9934889163061e-10,
    -8.983766959581827e-11,
    -9.488744811443404e-12,
    4.40703888430635e-12,
    -2.726952501786936e-13,
    -1.1336459307085183e-13,
    2.5365165661713203e-14,
    1.0028323407250651e-16,
    -8.330478547927849e-16,
    1.1800447425838173e-16,
    7.815467303883168e-18,
    -4.4310710601765106e-18,
)

_ERFC_XMAX = 6.0


def _monomial(cheb, n):
    """Monomial coefficients (in y) of the first ``n`` terms of a Chebyshev series,
    padded with zeros to 24. Well conditioned here: Σ|p_k| = 1.047 for ``_ERFC_CHEB``,
    so evaluating the monomial form loses nothing to cancellation."""
    p = np.polynomial.chebyshev.cheb2poly(np.asarray(cheb[:n]))
    return tuple(float(v) for v in p) + (0.0,) * (24 - n)


#: ``F(y)`` of :func:`erfc_pos` as monomials, all 24 terms (float64).
_ERFC_POLY = _monomial(_ERFC_CHEB, 24)

#: float32's ``erf(z/√2) = z·Q(u)``, ``u = z²/c² − 1`` for ``|z| ≤ c√2`` with
#: ``c = _ERF32_C``: the 16 monomial coefficients of Q (even in z, so no |z|), a
#: near-minimax fit of ``erf(x)`` on ``x ∈ [0, c]`` for the absolute error (Lawson's
#: iteratively reweighted least squares on 20001 points, 100 passes, float64, divided
#: by √2). Fit error 2.3e-8, and ``1 − erf(c) = 2.3e-8`` beyond the clamp; the
#: coefficients sum to 1.13 in absolute value, so the float32 evaluation loses nothing
#: to cancellation.
_ERF32_C = 3.95
_ERF32_POLY = (
    0.25314476641555406,
    -0.1264091625838882,
    0.09417079451218274,
    -0.0768178788467847,
    0.06397028050639408,
    -0.052561009949233836,
    0.041760560256021706,
    -0.03130332772671543,
    0.02168116245489543,
    -0.014885464572381641,
    0.010579472121967023,
    -0.005596695000559017,
    0.0014955151175458814,
    -0.0012297943857067356,
    0.001646841997590575,
    -0.000631693610698639,
)


@_ijit
def erfc_pos(x, dt, lo):
    """``erfc(x)`` for ``0 <= x <= 6`` (callers clamp), branch-free (float64's GELU).

    ``erfc(x) = t·exp(−x² + F(t))`` with ``t = 2/(2+x)``; ``F`` is the 24-term
    Chebyshev series ``_ERFC_CHEB`` (relative error ~1e-16), evaluated in monomial
    form by Estrin's scheme (:func:`estrin8` blocks: depth 6 instead of the 24-step
    Clenshaw chain). Straight-line code, so that LLVM vectorizes the caller's loop.
    """
    t = dt(2.0) / (dt(2.0) + x)
    # y = (2t - (1 + t0)) / (1 - t0) with t0 = 1/4
    y = t * dt(8.0 / 3.0) - dt(5.0 / 3.0)
    y2 = y * y
    y4 = y2 * y2
    y8 = y4 * y4
    C = _ERFC_POLY
    F = estrin8(
        y,
        y2,
        y4,
        dt(C[0]),
        dt(C[1]),
        dt(C[2]),
        dt(C[3]),
        dt(C[4]),
        dt(C[5]),
        dt(C[6]),
        dt(C[7]),
    ) + y8 * (
        estrin8(
            y,
            y2,
            y4,
            dt(C[8]),
            dt(C[9]),
            dt(C[10]),
            dt(C[11]),
            dt(C[12]),
            dt(C[13]),
            dt(C[14]),
            dt(C[15]),
        )
        + y8
        * estrin8(
            y,
            y2,
            y4,
            dt(C[16]),
            dt(C[17]),
            dt(C[18]),
            dt(C[19]),
            dt(C[20]),
            dt(C[21]),
            dt(C[22]),
            dt(C[23]),
        )
    )
    return t * exp_neg(F - x * x, dt, lo)


@_cjit
def erf_poly32(z):
    """float32's ``2Φ(z) = 1 + z·Q(u)`` of :func:`two_cdf` (see there), compiled with
    contraction alone (``jit.cjit``) so that every kernel it is inlined into computes
    the same bits."""
    dt = np.float32
    c = dt(_ERF32_C * math.sqrt(2.0))
    zc = z
    if zc > c:
        zc = c
    if zc < -c:
        zc = -c
    u = zc * zc * dt(1.0 / (_ERF32_C * _ERF32_C)) - dt(1.0)
    u2 = u * u
    u4 = u2 * u2
    u8 = u4 * u4
    Q = _ERF32_POLY
    q = estrin8(
        u, u2, u4, dt(Q[0]), dt(Q[1]), dt(Q[2]), dt(Q[3]), dt(Q[4]), dt(Q[5]), dt(Q[6]), dt(Q[7])
    ) + u8 * estrin8(
        u,
        u2,
        u4,
        dt(Q[8]),
        dt(Q[9]),
        dt(Q[10]),
        dt(Q[11]),
        dt(Q[12]),
        dt(Q[13]),
        dt(Q[14]),
        dt(Q[15]),
    )
    g = dt(1.0) + zc * q
    if g > dt(2.0):
        g = dt(2.0)
    return dt(0.0) if g < dt(0.0) else g


@_ijit
def two_cdf(z, dt, lo, short):
    """``2Φ(z) = 1 + erf(z/√2)``, branch-free. GELU is ``½z·2Φ(z)``; the decay
    study's GELU' reuses the same value for its ``Φ(z)``.

    float64: ``2 − erfc(x)`` for ``x = z/√2 >= 0`` and ``erfc(|x|)`` below (``|x|``
    clamped at 6, where erfc < 2.2e-17), relative accuracy ~1e-16 in the tails too.
    float32 (``short``, a literal): ``1 + z·Q(u)`` (:data:`_ERF32_POLY`, ``z`` clamped
    to ``±c√2``), 16 multiply-adds by Estrin's scheme and no division or exponential;
    absolute error ≤ 3e-7 (measured over a million z in [−14, 14]: 1.3 ulp of 2Φ near
    2, the rounding of ``2 − e`` before it), so GELU's error is ≤ 1.5e-7·|z|. Where
    ``Φ(z)`` is below float32's rounding of 1 (z ≲ −5) it has no relative accuracy, as
    PyTorch's and Eigen's float32 erf; a sum outside [0, 2] from that rounding (one
    spacing of float32 near the clamp) is taken as 0 or 2 (a NaN stays NaN).
    """
    if short:
        return erf_poly32(z)
    x = z * dt(_SQRT_HALF)
    ax = abs(x)
    if ax > dt(_ERFC_XMAX):
        ax = dt(_ERFC_XMAX)
    e = erfc_pos(ax, dt, lo)
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


@_ijit
def tanh_gate(z, dt, lo, short):
    """``s = (1 + tanh u)/2 = 1/(1 + e^{−2u})`` for GELU's tanh form,
    ``u = √(2/π)(z + 0.044715 z³)``, so that ``gelu_tanh(z) = z·s``: branch-free from
    ``e = e^{−2|u|}`` (:func:`exp_neg`), ``1/(1 + e)`` for u ≥ 0 and ``e/(1 + e)``
    below (no cancellation either way; a select, so the loop vectorizes, where
    ``math.tanh`` is a scalar libm call). Returns ``(s, u)``."""
    u = dt(_SQRT_2_OVER_PI) * (z + dt(_GELU_C) * z * z * z)
    e = exp_neg(dt(-2.0) * abs(u), dt, lo, short)
    r = dt(1.0) / (dt(1.0) + e)
    return (r if u >= dt(0.0) else e * r), u


@_ijit
def gelu_tanh_bias(H, b, dt, short):
    """``H[i, j] = gelu_tanh(H[i, j] + b[j])`` in place (:func:`tanh_gate`)."""
    T, m = H.shape
    lo = dt(EXP_LO)
    for i in range(T):
        for j in range(m):
            z = H[i, j] + b[j]
            H[i, j] = z * tanh_gate(z, dt, lo, short)[0]


@_ijit
def gelu_tanh_bias_prime(H, b, S, dt, short):
    """``H[i, j] = gelu_tanh(z)`` (the bits of :func:`gelu_tanh_bias`) and
    ``S[i, j] = s + 2z·s(1 − s)·u'(z)``, its derivative (``1 − tanh² u = 4s(1 − s)``),
    for ``z = H[i, j] + b[j]``."""
    T, m = H.shape
    lo = dt(EXP_LO)
    for i in range(T):
        for j in range(m):
            z = H[i, j] + b[j]
            s = tanh_gate(z, dt, lo, short)[0]
            H[i, j] = z * s
            du = dt(_SQRT_2_OVER_PI) * (dt(1.0) + dt(3.0 * _GELU_C) * z * z)
            S[i, j] = s + dt(2.0) * z * s * (dt(1.0) - s) * du


@_ijit
def add_bias(out, b):
    """``out[i, j] += b[j]`` along whole rows (a bias repeated per lane in lanes); an
    empty ``b`` (a model without this bias) adds nothing."""
    if b.shape[0] != 0:
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[i, j] += b[j]


@_jit
def bias_activate(H, b, act):
    """``H[i, j] = σ(H[i, j] + b[j])`` in place.

    GELU (erf form) is ``z·Φ(z) = ½z(1 + erf(z/√2))``, evaluated branch-free as
    ``½z·(2 − erfc(x))`` for ``x = z/√2 >= 0`` and ``½z·erfc(|x|)`` below, with
    ``erfc`` from :func:`erfc_pos` (|x| clamped at 6, where erfc < 2.2e-17).
    float32 takes the short polynomials. The dtype test sits outside the loop and
    each branch inlines :func:`gelu_bias` with a literal flag, which LLVM folds
    (``itemsize`` is read at run time, so a test inside the loop would stop
    vectorization). GELU's tanh form takes :func:`gelu_tanh_bias` the same way; other
    activations use :func:`activate`.
    """
    dt = H.dtype.type
    if act == GELU:
        if H.itemsize == 4:
            gelu_bias(H, b, dt, True)
        else:
            gelu_bias(H, b, dt, False)
    elif act == GELU_TANH:
        if H.itemsize == 4:
            gelu_tanh_bias(H, b, dt, True)
        else:
            gelu_tanh_bias(H, b, dt, False)
    else:
        T, m = H.shape
        for i in range(T):
            for j in range(m):
                H[i, j] = dt(activate(H[i, j] + b[j], act))


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

    ``H`` is computed exactly as :func:`gelu_bias` computes it (the same
    :func:`two_cdf`, so the state stays bit-identical to the plain flow's)
    and ``Φ(z)`` is half that same ``2Φ(z)``: no second erfc and no division.
    ``φ(z) = e^{−z²/2}/√(2π)`` from :func:`exp_neg`. Branch-free, so the loop
    vectorizes.
    """
    T, m = H.shape
    lo = dt(EXP_LO)
    for i in range(T):
        for j in range(m):
            z = H[i, j] + b[j]
            g = two_cdf(z, dt, lo, short)
            H[i, j] = dt(0.5) * z * g
            phi = exp_neg(dt(-0.5) * z * z, dt, lo, short) * dt(_INV_SQRT_2PI)
            S[i, j] = dt(0.5) * g + z * phi


@_jit
def bias_activate_prime(H, b, act, S):
    """``H[i, j] = σ(z)`` (bit-identical to :func:`bias_activate`, so the
    state follows the plain flow's) and ``S[i, j] = σ'(z)``, ``z = H[i, j] + b[j]``.

    GELU takes the fused, vectorized :func:`gelu_bias_prime` (float32 with the short
    polynomials, the dtype test outside the loop as in ``bias_activate``), its tanh form
    :func:`gelu_tanh_bias_prime`; the other activations :func:`bias_activate` and
    :func:`activate_prime`.
    """
    dt = H.dtype.type
    T, m = H.shape
    if act == GELU:
        if H.itemsize == 4:
            gelu_bias_prime(H, b, S, dt, True)
        else:
            gelu_bias_prime(H, b, S, dt, False)
        return
    if act == GELU_TANH:
        if H.itemsize == 4:
            gelu_tanh_bias_prime(H, b, S, dt, True)
        else:
            gelu_tanh_bias_prime(H, b, S, dt, False)
        return
    for i in range(T):
        for j in range(m):
            S[i, j] = H[i, j] + b[j]
    bias_activate(H, b, act)
    for i in range(T):
        for j in range(m):
            S[i, j] = dt(activate_prime(S[i, j], act))


@_jit
def softmax_columns(P, n, causal, symmetric, mt, width):
    """Softmax over each of the first ``n`` *columns* of the transposed scores
    ``P (T keys, ≥ n)`` in place. Column i holds the scores of query
    ``(i // width) % T`` (the heads' ``(T, T)`` blocks stand side by side, each query's
    column repeated ``width`` times: 1 here, the group's lanes in
    the lane layout); with ``causal`` that query keeps keys up to its own index and
    the rest are 0.

    The running maximum, the exponentials and their sums are element-wise operations
    along contiguous rows of all ``n`` columns (scratch ``mt (3, ≥ n)``: maximum, sum
    and the query index of each column, as a float so that the mask is a vector
    compare) and vectorize with no horizontal reduction; the rows of all heads
    together fill the vectors even at T = 8, where one head's row of 8 ran in the
    scalar remainder of LLVM's 16-lane × 4 loop. The maximum uses ``>`` (a NaN score is
    skipped there) but NaN still reaches the column through ``exp(s − m)``. Each
    column is ``softmax`` of its query's scores, whatever else stands in ``P``. The
    exponentials are :func:`exp_horner`'s (the short polynomial in float32).

    With ``symmetric`` (the heads' queries and keys are the same projection,
    ``structs.Settings.symmetric``; never with ``causal``) each head's scores form a
    symmetric positive semi-definite matrix and half of the exponentials are shared:
    :func:`symmetric_exps`.
    """
    if P.itemsize == 4:
        softmax_body(P, n, causal, symmetric, mt, width, True)
    else:
        softmax_body(P, n, causal, symmetric, mt, width, False)


@_ijit
def softmax_body(P, n, causal, symmetric, mt, width, short):
    """:func:`softmax_columns`, with ``short`` (a literal) choosing the polynomial."""
    T = P.shape[0]
    dt = P.dtype.type
    lo = dt(EXP_LO)
    m, total, q = mt[0], mt[1], mt[2]
    if symmetric and not causal:
        symmetric_exps(P, n, mt, width, short)
    else:
        for i in range(n):
            m[i] = P[0, i]
            total[i] = dt(0.0)
            q[i] = dt((i // width) % T)
        if not causal:  # no mask: the same values as the masked loops, without the selects
            for j in range(1, T):
                for i in range(n):
                    x = P[j, i]
                    m[i] = x if x > m[i] else m[i]
            for j in range(T):
                for i in range(n):
                    e = exp_horner(P[j, i] - m[i], dt, lo, short)
                    P[j, i] = e
                    total[i] += e
        else:
            # Full-length rows with the causal mask as a select: a loop starting at j
            # ran 4x slower (short, misaligned trip counts); masked entries are
            # computed, unused.
            for j in range(1, T):
                jf = dt(j)
                for i in range(n):
                    x = P[j, i]
                    m[i] = x if (x > m[i]) & (q[i] >= jf) else m[i]
            for j in range(T):
                jf = dt(j)
                for i in range(n):
                    e = exp_horner(P[j, i] - m[i], dt, lo, short)
                    e = e if q[i] >= jf else dt(0.0)
                    P[j, i] = e
                    total[i] += e
    for i in range(n):
        m[i] = dt(1.0) / total[i]
    for j in range(T):
        for i in range(n):
            P[j, i] *= m[i]


@_ijit
def mirror_row(P, b0, w, j):
    """``P[i, b0 + j·w + l] = P[j, b0 + i·w + l]`` for ``i < j``, ``l < w``: row ``j`` of
    the lower triangle of a head's ``(T, T)`` block of ``w``-wide entries copied onto
    the upper triangle's column ``j`` (one vector per entry where ``w`` is the
    vector's lanes)."""
    ld = P.shape[1]
    if w == lanes(P):
        z = vzero(P)
        for i in range(j):
            vstore(P, i * ld + b0 + j * w, vload(P, j * ld + b0 + i * w, z))
    else:
        for i in range(j):
            for l in range(w):
                sstore(P, i * ld + b0 + j * w + l, sload(P, j * ld + b0 + i * w + l))


@_ijit
def symmetric_exps(P, n, mt, w, short):
    """The exponentials of :func:`softmax_columns` for heads whose scores are
    symmetric: in place, ``P[j, c] ← e^{P[j, c] − m[c]}`` for the first ``n`` columns,
    their sums ``Σ_j`` (rows from the last to the first) into ``mt[1]`` and the shift
    ``m`` into ``mt[0]`` (``mt[2]`` scratch).

    Each head's ``(T, T)`` block (of ``w``-wide entries: the lanes) is a matrix
    ``S = s·Q Qᵀ``, positive semi-definite, so every score is at most the largest
    diagonal one, ``c``. With the shift ``c`` for every column of a lane, the
    exponentials are symmetric too: the lower triangle's (keys ``j ≥`` query ``i``,
    :math:`T(T+1)/2` of the :math:`T^2`) are computed, in contiguous runs along each
    row, and copied onto the upper triangle (:func:`mirror_row`). Going from the last
    row up, each row is complete once its own run is done (its upper part came from
    the rows below), and is summed while it is in cache. The softmax does not depend
    on the shift, and the largest score of each column is at least its diagonal one:
    when every diagonal score of a lane is within ``EXP_LO/2`` of ``c``, each column's
    largest exponential is above ``e^{EXP_LO/2}``, so the weights stay normal numbers
    and the clamp of :func:`exp_horner` at ``EXP_LO`` leaves a weight below
    ``e^{EXP_LO/2} ≈ 1.3e-19`` of its column's largest at most that (the usual softmax:
    at ``e^{EXP_LO}``), far below either dtype's resolution. A lane with a diagonal
    score further below keeps the shift of the usual softmax, its column's maximum,
    for every column; where a head has such a lane its lower triangle of scores is
    first copied onto the upper one and every exponential computed and summed in the
    same order, so each lane's values are the same whatever the other lanes hold.
    """
    T = P.shape[0]
    dt = P.dtype.type
    lo = dt(EXP_LO)
    gap = dt(EXP_LO / 2)
    m, total, low = mt[0], mt[1], mt[2]
    TW = T * w
    for b0 in range(0, n, TW):
        for l in range(w):
            m[b0 + l] = P[0, b0 + l]
            low[b0 + l] = P[0, b0 + l]
        for i in range(1, T):
            for l in range(w):
                x = P[i, b0 + i * w + l]
                m[b0 + l] = x if x > m[b0 + l] else m[b0 + l]
                low[b0 + l] = x if x < low[b0 + l] else low[b0 + l]
        every_lane = True
        for l in range(w):
            ok = low[b0 + l] - m[b0 + l] >= gap  # False for a NaN
            low[b0 + l] = dt(1.0) if ok else dt(0.0)
            every_lane &= ok
        for i in range(1, T):
            for l in range(w):
                m[b0 + i * w + l] = m[b0 + l]
        sh = m[b0 : b0 + TW]
        tot = total[b0 : b0 + TW]
        for c in range(TW):
            tot[c] = dt(0.0)
        if every_lane:
            for j in range(T - 1, -1, -1):
                run = P[j, b0 : b0 + (j + 1) * w]
                for i in range((j + 1) * w):
                    run[i] = exp_horner(run[i] - sh[i], dt, lo, short)
                mirror_row(P, b0, w, j)
                row = P[j, b0 : b0 + TW]
                for c in range(TW):
                    tot[c] += row[c]
        else:
            for j in range(1, T):
                mirror_row(P, b0, w, j)
            for c in range(TW):
                if low[b0 + c % w] == dt(0.0):
                    x = P[0, b0 + c]
                    for j in range(1, T):
                        y = P[j, b0 + c]
                        x = y if y > x else x
                    sh[c] = x
            for j in range(T - 1, -1, -1):
                row = P[j, b0 : b0 + TW]
                for c in range(TW):
                    e = exp_horner(row[c] - sh[c], dt, lo, short)
                    row[c] = e
                    tot[c] += e


@_ijit
def softmax_tangent_columns(P, p0, n, dP, mean):
    """The tangent of :func:`softmax_columns`, in place: for the first ``n`` columns i of
    ``dP (T, ≥ n)`` (the tangents ``dS`` of the scores), with the probabilities in
    columns ``p0 + i`` of ``P``, ``dP[j, i] = P[j, p0 + i]·(dS[j, i] − Σ_k P[k, p0 + i]
    dS[k, i])``; ``mean (≥ n)`` scratch. Element-wise along rows of ``n`` columns, the
    same code for the row layout (one head's ``T`` queries) and the lanes (``T·L``)."""
    T = dP.shape[0]
    z = dP.dtype.type(0.0)
    for i in range(n):
        mean[i] = z
    for j in range(T):
        for i in range(n):
            mean[i] += P[j, p0 + i] * dP[j, i]
    for j in range(T):
        for i in range(n):
            dP[j, i] = P[j, p0 + i] * (dP[j, i] - mean[i])


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


@_ijit
def is_normal(s):
    """True when the float64 ``s`` is finite and at least :data:`DBL_MIN`: a plain sum
    of squares that neither overflowed nor underflowed."""
    return s >= DBL_MIN and s * 0.0 == 0.0


@_sjit
def scaled_log_norm(X, Y, l, L, diff):
    """``log ‖X − Y‖`` (``diff``) or ``log ‖X‖`` over the elements ``X[t, j]``,
    ``j = l, l + L, …`` (a whole state: ``l = 0, L = 1``; lane ``l`` of a group of L),
    without overflow or underflow for finite inputs.

    The entries are divided by the largest magnitude m before they are squared:
    ``log m + ½ log Σ (v/m)²``; −inf when every entry is 0. The slow path behind
    :func:`sq_dist` / :func:`sq_norm` when their plain sum is not :func:`is_normal`.
    """
    m = 0.0
    for t in range(X.shape[0]):
        for j in range(l, X.shape[1], L):
            v = np.float64(X[t, j]) - np.float64(Y[t, j]) if diff else np.float64(X[t, j])
            m = max(m, abs(v))
    if m == 0.0:
        return -np.inf
    s = 0.0
    for t in range(X.shape[0]):
        for j in range(l, X.shape[1], L):
            v = np.float64(X[t, j]) - np.float64(Y[t, j]) if diff else np.float64(X[t, j])
            v = v / m
            s += v * v
    return math.log(m) + 0.5 * math.log(s)


@_sjit
def strided_sq_dist(X, Y, l, L):
    """``‖X − Y‖²`` over the elements of :func:`scaled_log_norm`, in float64."""
    s = 0.0
    for t in range(X.shape[0]):
        for j in range(l, X.shape[1], L):
            v = np.float64(X[t, j]) - np.float64(Y[t, j])
            s += v * v
    return s


@_sjit
def rescale_difference(X, Y, l, L, target):
    """``Y ← X + (Y − X)·target/‖Y − X‖`` over the elements of :func:`scaled_log_norm`
    (``Y ≠ X``, both finite), formed as ``((Y − X)/m)·(target/‖(Y − X)/m‖)`` with
    ``m = max |Y − X|``, in float64, so that no intermediate overflows or underflows."""
    m = 0.0
    for t in range(X.shape[0]):
        for j in range(l, X.shape[1], L):
            m = max(m, abs(np.float64(Y[t, j]) - np.float64(X[t, j])))
    s = 0.0
    for t in range(X.shape[0]):
        for j in range(l, X.shape[1], L):
            v = (np.float64(Y[t, j]) - np.float64(X[t, j])) / m
            s += v * v
    q = target / math.sqrt(s)
    for t in range(X.shape[0]):
        for j in range(l, X.shape[1], L):
            x = np.float64(X[t, j])
            Y[t, j] = x + ((np.float64(Y[t, j]) - x) / m) * q


@_sjit
def normalize_scaled(D, l, L):
    """``D ← D / ‖D‖`` over the elements of :func:`scaled_log_norm` (finite ``D``),
    scaled as there; returns ``log ‖D‖`` (−inf, and ``D`` unchanged, when it is 0)."""
    m = 0.0
    for t in range(D.shape[0]):
        for j in range(l, D.shape[1], L):
            m = max(m, abs(np.float64(D[t, j])))
    if m == 0.0:
        return -np.inf
    s = 0.0
    for t in range(D.shape[0]):
        for j in range(l, D.shape[1], L):
            v = np.float64(D[t, j]) / m
            s += v * v
    q = 1.0 / math.sqrt(s)
    for t in range(D.shape[0]):
        for j in range(l, D.shape[1], L):
            D[t, j] = (np.float64(D[t, j]) / m) * q
    return math.log(m) + 0.5 * math.log(s)
