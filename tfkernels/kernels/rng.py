"""Counter-based random numbers: every draw is a pure function of its key and counter.

A key is the SplitMix64 hash of ``(seed, stream, trajectory)``; the ``i``-th standard
normal of a key is a Box–Muller transform of the uniforms at counters ``2i`` and
``2i + 1``. Nothing is sequential, so trajectory ``k`` gets the same numbers whatever
batch, chunk, thread or worker draws them.

Notes
-----
SplitMix64 (Steele, Lea & Flood, OOPSLA 2014) passes BigCrush as a hash of a counter;
its finalizer is applied twice per draw (key, then key ⊕ counter). Box–Muller uses only
the cosine branch: one normal per two uniforms, in float64, cast to the state dtype
by the caller.

``ln u₁`` and ``cos 2πu₂`` are evaluated here (:func:`log_unit`, :func:`cos_2pi`),
straight-line float64 code with strict IEEE arithmetic instead of libm calls, so that a
loop of draws vectorizes and the numbers are the same on every platform (their cost:
``docs/performance.md``). Measured on 2·10⁵ draws (``tests/test_rng.py``): ``log_unit``
within 1 ulp of libm's ``log``, ``cos_2pi`` within 1.5 ulp of the exact value (libm's
``cos(2π·u)`` itself errs by up to 4e-16 near u = 1, rounding its argument); the normals
agree with libm's Box–Muller to 1e-15 times the radius ``√(−2 ln u₁)``, the size of
libm's own error.
"""

import math

from llvmlite import ir
from numba import njit, types, uint64
from numba.extending import intrinsic

from .. import config

#: Strict IEEE arithmetic (``config.RNG_FASTMATH``); the numpy error model, so that a
#: division carries no ZeroDivisionError branch (an early exit that stops LLVM from
#: vectorizing the loops of draws). The small pieces are inlined at the Numba IR
#: level: a call left in a loop of draws would stop its vectorization as well.
_jit = njit(cache=config.CACHE, fastmath=config.RNG_FASTMATH, error_model="numpy")
_inline = njit(
    cache=config.CACHE, fastmath=config.RNG_FASTMATH, error_model="numpy", inline="always"
)

#: Streams of independent numbers for one trajectory (``STREAM_WEIGHTS``,
#: ``STREAM_FINAL_NORM``: the weights and the final norm of a weight ensemble's member,
#: :mod:`tfkernels.kernels.draws`).
STREAM_STATE, STREAM_DIRECTION, STREAM_NOISE, STREAM_WEIGHTS, STREAM_FINAL_NORM = 0, 1, 2, 3, 4

_GOLDEN = uint64(0x9E3779B97F4A7C15)
_M1 = uint64(0xBF58476D1CE4E5B9)
_M2 = uint64(0x94D049BB133111EB)
_TWO_PI = 2.0 * math.pi


@_inline
def mix64(z):
    """SplitMix64 finalizer: a bijective avalanche hash of a uint64."""
    z = (z ^ (z >> uint64(30))) * _M1
    z = (z ^ (z >> uint64(27))) * _M2
    return z ^ (z >> uint64(31))


@_inline
def key(seed, stream, trajectory):
    """Return the uint64 key of ``(seed, stream, trajectory)``."""
    k = mix64(uint64(seed) + _GOLDEN)
    k = mix64(k ^ (uint64(stream) * _GOLDEN))
    return mix64(k ^ (uint64(trajectory) + _GOLDEN))


@_inline
def uniform(k, counter):
    """Uniform float64 in the open interval (0, 1) for ``(key, counter)``.

    ``k`` is cast to uint64 first: a key that crossed into Python comes back as an
    int (typed int64 by Numba), and int64 ^ uint64 would not be a bitwise xor.
    """
    bits = mix64(uint64(k) ^ mix64(uint64(counter) + _GOLDEN))
    return ((bits >> uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@intrinsic
def _bits(typingctx, x):
    """The IEEE bits of the float64 ``x`` as an int64."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


@intrinsic
def _from_bits(typingctx, i):
    """The float64 whose IEEE bits are the int64 ``i``."""
    if i != types.int64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(i), codegen


@intrinsic
def _sqrt(typingctx, x):
    """``√x`` (float64) as ``llvm.sqrt``: correctly rounded like libm's ``sqrt`` but
    vectorizable, where without fastmath Numba emits a call to libm (which may set
    errno), and a call stops LLVM from vectorizing the loop of draws."""
    if x != types.float64:
        return None

    def codegen(context, builder, sig, args):
        fn = builder.module.declare_intrinsic("llvm.sqrt", [ir.DoubleType()])
        return builder.call(fn, args)

    return types.float64(x), codegen


_LN2_HI = 6.93147180369123816490e-01  # fdlibm's split of ln 2: k·_LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
#: fdlibm ``e_log.c``: minimax polynomial of ``(log(1+f) − 2s)/s − …`` in ``s²``,
#: ``s = f/(2+f)``, |error| < 2^-58.45 on |s| ≤ 0.1716.
_LG = (
    6.666666666666735130e-01,
    3.999999999940941908e-01,
    2.857142874366239149e-01,
    2.222219843214978396e-01,
    1.818357216161805012e-01,
    1.531383769920937332e-01,
    1.479819860511658591e-01,
)
_SQRT2 = math.sqrt(2.0)
_MANTISSA = (1 << 52) - 1
_ONE_BITS = 1023 << 52


@_inline
def log_unit(u):
    """``ln u`` for a normal float64 ``u > 0`` (the uniforms: ``2^-54 <= u < 1``).

    fdlibm's ``__ieee754_log`` without its special cases: ``u = 2^k·m`` with
    ``m ∈ [√½, √2)`` from the exponent bits, ``f = m − 1``, ``s = f/(2+f)``,
    ``ln u = k ln2 + f − f²/2 + s(f²/2 + R(s²))``. Branch-free.
    """
    b = _bits(u)
    k = (b >> 52) - 1023
    m = _from_bits((b & _MANTISSA) | _ONE_BITS)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    k = k + 1 if big else k
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (_LG[1] + w * (_LG[3] + w * _LG[5]))
    t2 = z * (_LG[0] + w * (_LG[2] + w * (_LG[4] + w * _LG[6])))
    r = t2 + t1
    hfsq = 0.5 * f * f
    dk = float(k)
    return dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)


#: Taylor coefficients of ``cos(πr/2)`` and ``sin(πr/2)/r`` in ``r²`` (|r| <= 1/2,
#: truncation < 3e-18 and < 5e-19).
_COS_T = tuple((-1) ** n * (math.pi / 2) ** (2 * n) / math.factorial(2 * n) for n in range(10))
_SIN_T = tuple(
    (-1) ** n * (math.pi / 2) ** (2 * n + 1) / math.factorial(2 * n + 1) for n in range(10)
)


@_inline
def _horner(x, coeffs):
    """``Σ coeffs[n]·xⁿ`` by Horner's rule, highest power first (a constant tuple:
    LLVM unrolls the loop)."""
    p = coeffs[len(coeffs) - 1]
    for n in range(len(coeffs) - 2, -1, -1):
        p = p * x + coeffs[n]
    return p


@_inline
def cos_2pi(u):
    """``cos(2πu)`` for ``0 <= u <= 1``, branch-free.

    ``4u = q + r`` with q the nearest integer and ``|r| <= ½`` (both exact), so
    ``cos 2πu = cos(π(q + r)/2)`` is ``±cos(πr/2)`` or ``±sin(πr/2)`` by ``q mod 4``;
    each is an even/odd Taylor polynomial in ``r``. The reduction is exact, so the
    error is that of the polynomials' Horner steps (≤ 1.5 ulp measured), where
    ``math.cos(2π·u)`` already rounds its argument.
    """
    v = 4.0 * u
    q = math.floor(v + 0.5)
    r = v - q
    r2 = r * r
    c = _horner(r2, _COS_T)
    sn = _horner(r2, _SIN_T)
    sn = sn * r
    iq = int(q) & 3
    val = sn if iq & 1 else c
    return -val if iq == 1 or iq == 2 else val


@_inline
def _normal(k, i):
    """Body of :func:`normal`, inlined (at the Numba IR level, so compiled with the
    strict flags of the function it is inlined into: only this module's) into the
    loops of :func:`fill_normal` and :func:`add_normal`, which then vectorize."""
    u1 = uniform(k, 2 * i)
    u2 = uniform(k, 2 * i + 1)
    return _sqrt(-2.0 * log_unit(u1)) * cos_2pi(u2)


@_jit
def normal(k, i):
    """The ``i``-th standard normal (float64) of key ``k``: Box–Muller,
    ``√(−2 ln u₁)·cos 2πu₂`` of the uniforms at counters ``2i`` and ``2i + 1``."""
    return _normal(k, i)


@_jit
def fill_normal(k, offset, scale, out):
    """Fill the flat array ``out`` with ``scale·normal(k, offset + i)``."""
    for i in range(out.size):
        out.flat[i] = scale * _normal(k, offset + i)


@_jit
def add_normal(k, offset, scale, out):
    """``out[r, c] += scale·normal(k, offset + r·n + c)`` for the 2-D ``out (m, n)``
    (in float64, then rounded to ``out``'s dtype): the flow's additive noise.

    Compiled here, with strict arithmetic, so every caller adds the same bits
    whatever its own fastmath flags. (Written with 2-D indices: LLVM did not
    vectorize ``out.flat[i] += …``.)
    """
    m, n = out.shape
    for r in range(m):
        for c in range(n):
            out[r, c] += scale * _normal(k, offset + r * n + c)


@njit(cache=config.CACHE, fastmath=config.RNG_FASTMATH, error_model="numpy", nogil=True)
def _normal_batch(seed, stream, start, scale, out):
    """``out[b]`` gets ``scale``·the normals of trajectory ``start + b`` (serial, no GIL;
    ``api.run_threads`` splits a batch over threads)."""
    for b in range(out.shape[0]):
        fill_normal(key(seed, stream, start + b), 0, scale, out[b])
