"""Explicit SIMD vectors for Numba kernels, and the register-tiled GEMM built on them.

Numba has no vector type, and LLVM's auto-vectorizer cannot keep a tile of
accumulators in registers across the contraction loop of a small matrix product (it
vectorizes the contraction instead and pays a horizontal sum per output). This module
adds one: :class:`VecType` is a fixed-width LLVM vector (``<16 x float>`` /
``<8 x double>``, 64 bytes: one AVX-512 register, two AVX2 registers — LLVM legalizes
the width to whatever the host has) that Numba carries as an ordinary SSA value, so a
kernel written with it keeps its accumulators in registers.

Intrinsics (all take arrays through their flat, C-order element offset):

* :func:`vload` / :func:`vstore` — unaligned load / store of ``LANES`` consecutive
  elements;
* :func:`vsplat` — a vector with every lane equal to a scalar;
* :func:`vfma` — lane-wise ``a·b + c`` with one rounding (``llvm.fma``; also scalar);
* :func:`vadd`, :func:`vmul`, :func:`vdiv`, :func:`vsqrt`, :func:`vcount_gt` —
  lane-wise IEEE ``a + b``, ``a·b``, ``a/b``, ``√a`` and ``acc + [a > b]`` (the token
  geometry's norms, cosines and counts);
* :func:`lanes` — the lane count for an array's dtype (a compile-time constant).

:func:`gemm` / :func:`gemm_ld` are the micro-kernels of the row layout: ``out (+)= X @ W``
with ``W`` in its natural ``(K, n)`` layout, vectorized along the rows of ``out``.
:func:`lgemm` is the product of the lane layout (a group of trajectories
lane-interleaved, see ``structs.Lanes``): every element a full-width vector, ``4 × 4``
tiles of accumulators in registers. Both compute every output element as the same
chain of fused multiply-adds in ``k`` order, so the two layouts give the same bits.
"""

from llvmlite import binding as llvm
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model

from .jit import ijit as _ijit
from .jit import jit as _jit


def _vector_bytes():
    """64 (one zmm register) where the host has AVX-512, else 32 (one ymm register)."""
    features = llvm.get_host_cpu_features()
    return 64 if features.get("avx512f", False) else 32


#: Bytes per vector: the host's widest register. A 4 × 2 tile of accumulators then
#: takes 8 of the 32 zmm (AVX-512) or 8 of the 16 ymm (AVX2) registers. The value
#: is baked into the compiled code; Numba's cache is keyed by the host CPU, so a
#: cache built on another CPU is not reused.
VECTOR_BYTES = _vector_bytes()


class VecType(types.Type):
    """Numba type of a vector of ``count`` lanes of the float type ``dtype``."""

    def __init__(self, dtype, count):
        self.dtype = dtype
        self.count = count
        super().__init__(name=f"Vec({dtype}, {count})")


@register_model(VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        be_type = ir.VectorType(dmm.lookup(fe_type.dtype).get_value_type(), fe_type.count)
        super().__init__(dmm, fe_type, be_type)


def _vec_of(dtype):
    return VecType(dtype, VECTOR_BYTES // (dtype.bitwidth // 8))


def _is_float_array(a):
    """A C-contiguous float array: the intrinsics address it by flat offset."""
    return isinstance(a, types.Array) and isinstance(a.dtype, types.Float) and a.layout == "C"


@intrinsic
def lanes(typingctx, a):
    """Number of lanes of the full-width vector for ``a``'s dtype (an array, or a
    vector's own count): 16 float32 / 8 float64 with AVX-512, half that with AVX2."""
    if isinstance(a, VecType):
        count = a.count
    elif _is_float_array(a):
        count = _vec_of(a.dtype).count
    else:
        return None

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, count)

    return types.intp(a), codegen


def _zero_codegen(vt):
    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)

    return codegen


@intrinsic
def vzero(typingctx, a):
    """Full-width vector of zeros in ``a``'s dtype."""
    if not _is_float_array(a):
        return None
    vt = _vec_of(a.dtype)
    return vt(a), _zero_codegen(vt)


@intrinsic
def vzero_half(typingctx, a):
    """Half-width vector of zeros in ``a``'s dtype (for rows narrower than a vector)."""
    if not _is_float_array(a):
        return None
    vt = _vec_of(a.dtype)
    vt = VecType(vt.dtype, vt.count // 2)
    return vt(a), _zero_codegen(vt)


def _element_ptr(context, builder, arrty, arr, offset, offty, count=1):
    """Pointer to the element at flat offset ``offset`` of the C-contiguous ``arr``,
    the first of ``count`` that the caller loads or stores.

    With Numba's bounds checking on (``NUMBA_BOUNDSCHECK=1``, or ``boundscheck`` of the
    compiling function) an IndexError is raised unless ``0 <= offset`` and
    ``offset + count <= arr.size``, as Numba checks its own indexing; otherwise no code
    is added.
    """
    ary = context.make_array(arrty)(context, builder, arr)
    off = context.cast(builder, offset, offty, types.intp)
    if context.enable_boundscheck:
        end = builder.add(off, ir.Constant(off.type, count))
        bad = builder.or_(
            builder.icmp_signed("<", off, ir.Constant(off.type, 0)),
            builder.icmp_signed(">", end, ary.nitems),
        )
        with cgutils.if_unlikely(builder, bad):
            context.call_conv.return_user_exc(
                builder, IndexError, ("SIMD load or store out of bounds",)
            )
    return builder.gep(ary.data, [off], source_etype=context.get_data_type(arrty.dtype))


@intrinsic
def vload(typingctx, a, offset, like):
    """``a.flat[offset : offset + n]`` as a vector of ``like``'s type (n lanes)."""
    if (
        not _is_float_array(a)
        or not isinstance(offset, types.Integer)
        or not isinstance(like, VecType)
        or like.dtype != a.dtype
    ):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], like.count)
        ptr = builder.bitcast(ptr, context.get_value_type(like).as_pointer())
        return builder.load(ptr, align=a.dtype.bitwidth // 8)

    return like(a, offset, like), codegen


@intrinsic
def vstore(typingctx, a, offset, v):
    """``a.flat[offset : offset + n] = v`` for a vector ``v`` of n lanes."""
    if (
        not _is_float_array(a)
        or not isinstance(offset, types.Integer)
        or not isinstance(v, VecType)
        or v.dtype != a.dtype
    ):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], v.count)
        ptr = builder.bitcast(ptr, context.get_value_type(v).as_pointer())
        builder.store(args[2], ptr, align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(a, offset, v), codegen


@intrinsic
def sload(typingctx, a, offset):
    """The scalar ``a.flat[offset]`` of the C-contiguous ``a`` (any ndim)."""
    if not _is_float_array(a) or not isinstance(offset, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(
            _element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        )

    return a.dtype(a, offset), codegen


@intrinsic
def sstore(typingctx, a, offset, x):
    """``a.flat[offset] = x`` for the C-contiguous ``a`` (any ndim)."""
    if not _is_float_array(a) or not isinstance(offset, types.Integer) or x != a.dtype:
        return None

    def codegen(context, builder, sig, args):
        builder.store(
            args[2], _element_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        )
        return context.get_dummy_value()

    return types.none(a, offset, x), codegen


@intrinsic
def vsplat(typingctx, x, like):
    """A vector of ``like``'s type with every lane equal to the float ``x``."""
    if not isinstance(like, VecType) or x != like.dtype:
        return None

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(like)
        undef = ir.Constant(vty, ir.Undefined)
        one = builder.insert_element(undef, args[0], ir.Constant(ir.IntType(32), 0))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), like.count), [0] * like.count)
        return builder.shuffle_vector(one, undef, mask)

    return like(x, like), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """Lane-wise ``a·b + c`` with a single rounding (``llvm.fma``); for three floats of
    one type, the scalar ``fma`` (a chain of them is never reassociated, unlike
    ``s + x·w`` under the ``reassoc`` fast-math flag, which LLVM may vectorize as a
    reduction in a different order)."""
    if isinstance(a, VecType) and a == b == c:
        name = f"llvm.fma.v{a.count}f{a.dtype.bitwidth}"
    elif isinstance(a, types.Float) and a == b == c:
        name = f"llvm.fma.f{a.bitwidth}"
    else:
        return None

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(a)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), name)
        return builder.call(fn, args)

    return a(a, b, c), codegen


def _binop(name):
    """A lane-wise IEEE ``fadd``/``fmul`` of two vectors of one type (no fast-math
    flags: each result is the correctly rounded one, as NumPy's)."""

    def typer(typingctx, a, b):
        if not isinstance(a, VecType) or a != b:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, name)(args[0], args[1])

        return a(a, b), codegen

    return intrinsic(typer)


#: Lane-wise ``a + b`` of two vectors, correctly rounded.
vadd = _binop("fadd")
#: Lane-wise ``a·b`` of two vectors, correctly rounded.
vmul = _binop("fmul")
#: Lane-wise ``a/b`` of two vectors, correctly rounded.
vdiv = _binop("fdiv")


@intrinsic
def vsqrt(typingctx, a):
    """Lane-wise ``√a`` (``llvm.sqrt``: correctly rounded, NaN below 0)."""
    if not isinstance(a, VecType):
        return None

    name = f"llvm.sqrt.v{a.count}f{a.dtype.bitwidth}"

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(a)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]), name)
        return builder.call(fn, args)

    return a(a), codegen


@intrinsic
def vcount_gt(typingctx, acc, a, b):
    """``acc + [a > b]`` lane-wise (1.0 where ``a > b``, ordered: NaN counts 0)."""
    if not isinstance(acc, VecType) or not acc == a == b:
        return None

    def codegen(context, builder, sig, args):
        vty = context.get_value_type(acc)
        gt = builder.fcmp_ordered(">", args[1], args[2])
        one = ir.Constant(vty, [1.0] * acc.count)
        zero = ir.Constant(vty, [0.0] * acc.count)
        return builder.fadd(args[0], builder.select(gt, one, zero))

    return acc(acc, a, b), codegen


@intrinsic
def runtime(typingctx, x):
    """``x`` itself, typed as a run-time value instead of a literal.

    Numba compiles a separate version of a jitted function for every literal
    argument it is called with (``gemm(..., True)`` and ``gemm(..., False)``, offsets
    0 and 1, …); that multiplied the tile code eightfold and doubled the cold
    compile. The public entry points pass their scalars through this.
    """
    t = types.unliteral(x)

    def codegen(context, builder, sig, args):
        return context.cast(builder, args[0], sig.args[0], t)

    return t(x), codegen


#: With 32 vector registers (AVX-512) the 2-vector column panels also take tiles of
#: 8 rows (16 accumulators): half the loads of ``W`` per FMA, which matters once a
#: weight matrix no longer fits L1 (medium and large). AVX2 has 16 registers.
TALL_TILES = VECTOR_BYTES == 64


@_jit
def _tile_8x2(X, x0, ldx, cx, W, wo, ldw, out, o, ldo, K, j, accumulate, z):
    """One 8-row × 2-vector tile of :func:`_vector_columns` (see there)."""
    L = lanes(z)
    if accumulate:
        c00 = vload(out, o, z)
        c01 = vload(out, o + L, z)
        c10 = vload(out, o + ldo, z)
        c11 = vload(out, o + ldo + L, z)
        c20 = vload(out, o + 2 * ldo, z)
        c21 = vload(out, o + 2 * ldo + L, z)
        c30 = vload(out, o + 3 * ldo, z)
        c31 = vload(out, o + 3 * ldo + L, z)
        c40 = vload(out, o + 4 * ldo, z)
        c41 = vload(out, o + 4 * ldo + L, z)
        c50 = vload(out, o + 5 * ldo, z)
        c51 = vload(out, o + 5 * ldo + L, z)
        c60 = vload(out, o + 6 * ldo, z)
        c61 = vload(out, o + 6 * ldo + L, z)
        c70 = vload(out, o + 7 * ldo, z)
        c71 = vload(out, o + 7 * ldo + L, z)
    else:
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = z
        c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = z
    for k in range(K):
        w0 = vload(W, wo + k * ldw + j, z)
        w1 = vload(W, wo + k * ldw + j + L, z)
        xk = x0 + k * cx
        a = vsplat(sload(X, xk), z)
        c00 = vfma(a, w0, c00)
        c01 = vfma(a, w1, c01)
        a = vsplat(sload(X, xk + ldx), z)
        c10 = vfma(a, w0, c10)
        c11 = vfma(a, w1, c11)
        a = vsplat(sload(X, xk + 2 * ldx), z)
        c20 = vfma(a, w0, c20)
        c21 = vfma(a, w1, c21)
        a = vsplat(sload(X, xk + 3 * ldx), z)
        c30 = vfma(a, w0, c30)
        c31 = vfma(a, w1, c31)
        a = vsplat(sload(X, xk + 4 * ldx), z)
        c40 = vfma(a, w0, c40)
        c41 = vfma(a, w1, c41)
        a = vsplat(sload(X, xk + 5 * ldx), z)
        c50 = vfma(a, w0, c50)
        c51 = vfma(a, w1, c51)
        a = vsplat(sload(X, xk + 6 * ldx), z)
        c60 = vfma(a, w0, c60)
        c61 = vfma(a, w1, c61)
        a = vsplat(sload(X, xk + 7 * ldx), z)
        c70 = vfma(a, w0, c70)
        c71 = vfma(a, w1, c71)
    vstore(out, o, c00)
    vstore(out, o + L, c01)
    vstore(out, o + ldo, c10)
    vstore(out, o + ldo + L, c11)
    vstore(out, o + 2 * ldo, c20)
    vstore(out, o + 2 * ldo + L, c21)
    vstore(out, o + 3 * ldo, c30)
    vstore(out, o + 3 * ldo + L, c31)
    vstore(out, o + 4 * ldo, c40)
    vstore(out, o + 4 * ldo + L, c41)
    vstore(out, o + 5 * ldo, c50)
    vstore(out, o + 5 * ldo + L, c51)
    vstore(out, o + 6 * ldo, c60)
    vstore(out, o + 6 * ldo + L, c61)
    vstore(out, o + 7 * ldo, c70)
    vstore(out, o + 7 * ldo + L, c71)


@_jit
def _vector_columns(X, xo, ldx, cx, W, wo, ldw, out, oo, ldo, R, K, j0, j1, accumulate, z):
    """Columns ``j0 … j1`` (a multiple of the width of ``z``) of :func:`gemm_ld`.

    ``z`` is a zero vector whose type sets the width ``L``. Columns go in panels of
    2 vectors and, for an odd count, a last panel of 1. Rows go in tiles of 8 (2-vector
    panels with ``TALL_TILES``), then 4, then 1. Per k, a tile loads its panel's row k
    of ``W`` once, broadcasts each of its ``X[i, k]`` and issues one FMA per
    accumulator; the accumulators stay in registers through the whole k loop.
    """
    L = lanes(z)
    n_pairs = (j1 - j0) // (2 * L)
    odd = j0 + 2 * L * n_pairs  # start of the 1-vector panel (== j1 if none)
    i = 0
    if TALL_TILES:
        while i + 7 < R:
            for p in range(n_pairs):
                j = j0 + 2 * L * p
                _tile_8x2(
                    X,
                    xo + i * ldx,
                    ldx,
                    cx,
                    W,
                    wo,
                    ldw,
                    out,
                    oo + i * ldo + j,
                    ldo,
                    K,
                    j,
                    accumulate,
                    z,
                )
            i += 8
    while i + 3 < R:
        for p in range(n_pairs):
            j = j0 + 2 * L * p
            _tile_4x2(
                X,
                xo + i * ldx,
                ldx,
                cx,
                W,
                wo,
                ldw,
                out,
                oo + i * ldo + j,
                ldo,
                K,
                j,
                accumulate,
                z,
            )
        i += 4
    while i < R:
        x0 = xo + i * ldx
        for p in range(n_pairs):
            j = j0 + 2 * L * p
            o = oo + i * ldo + j
            if accumulate:
                c00 = vload(out, o, z)
                c01 = vload(out, o + L, z)
            else:
                c00 = c01 = z
            for k in range(K):
                a = vsplat(sload(X, x0 + k * cx), z)
                c00 = vfma(a, vload(W, wo + k * ldw + j, z), c00)
                c01 = vfma(a, vload(W, wo + k * ldw + j + L, z), c01)
            vstore(out, o, c00)
            vstore(out, o + L, c01)
        i += 1
    if odd < j1:
        j = odd
        i = 0
        while i + 3 < R:
            x0 = xo + i * ldx
            o = oo + i * ldo + j
            if accumulate:
                c00 = vload(out, o, z)
                c10 = vload(out, o + ldo, z)
                c20 = vload(out, o + 2 * ldo, z)
                c30 = vload(out, o + 3 * ldo, z)
            else:
                c00 = c10 = c20 = c30 = z
            for k in range(K):
                w0 = vload(W, wo + k * ldw + j, z)
                xk = x0 + k * cx
                c00 = vfma(vsplat(sload(X, xk), z), w0, c00)
                c10 = vfma(vsplat(sload(X, xk + ldx), z), w0, c10)
                c20 = vfma(vsplat(sload(X, xk + 2 * ldx), z), w0, c20)
                c30 = vfma(vsplat(sload(X, xk + 3 * ldx), z), w0, c30)
            vstore(out, o, c00)
            vstore(out, o + ldo, c10)
            vstore(out, o + 2 * ldo, c20)
            vstore(out, o + 3 * ldo, c30)
            i += 4
        while i < R:
            x0 = xo + i * ldx
            o = oo + i * ldo + j
            c00 = vload(out, o, z) if accumulate else z
            for k in range(K):
                w0 = vload(W, wo + k * ldw + j, z)
                c00 = vfma(vsplat(sload(X, x0 + k * cx), z), w0, c00)
            vstore(out, o, c00)
            i += 1


@_jit
def _tile_4x2(X, x0, ldx, cx, W, wo, ldw, out, o, ldo, K, j, accumulate, z):
    """One 4-row × 2-vector tile of :func:`_vector_columns` (see there)."""
    L = lanes(z)
    if accumulate:
        c00 = vload(out, o, z)
        c01 = vload(out, o + L, z)
        c10 = vload(out, o + ldo, z)
        c11 = vload(out, o + ldo + L, z)
        c20 = vload(out, o + 2 * ldo, z)
        c21 = vload(out, o + 2 * ldo + L, z)
        c30 = vload(out, o + 3 * ldo, z)
        c31 = vload(out, o + 3 * ldo + L, z)
    else:
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = z
    for k in range(K):
        w0 = vload(W, wo + k * ldw + j, z)
        w1 = vload(W, wo + k * ldw + j + L, z)
        xk = x0 + k * cx
        a = vsplat(sload(X, xk), z)
        c00 = vfma(a, w0, c00)
        c01 = vfma(a, w1, c01)
        a = vsplat(sload(X, xk + ldx), z)
        c10 = vfma(a, w0, c10)
        c11 = vfma(a, w1, c11)
        a = vsplat(sload(X, xk + 2 * ldx), z)
        c20 = vfma(a, w0, c20)
        c21 = vfma(a, w1, c21)
        a = vsplat(sload(X, xk + 3 * ldx), z)
        c30 = vfma(a, w0, c30)
        c31 = vfma(a, w1, c31)
    vstore(out, o, c00)
    vstore(out, o + L, c01)
    vstore(out, o + ldo, c10)
    vstore(out, o + ldo + L, c11)
    vstore(out, o + 2 * ldo, c20)
    vstore(out, o + 2 * ldo + L, c21)
    vstore(out, o + 3 * ldo, c30)
    vstore(out, o + 3 * ldo + L, c31)


@_jit
def _gemm_ld(X, xo, ldx, cx, W, wo, ldw, out, oo, ldo, R, K, n, accumulate):
    """``out (+)= X @ W`` on sub-matrices of flat C-contiguous buffers (BLAS style);
    the compiled kernel behind :func:`gemm_ld`.

    ``X`` is the ``R × K`` matrix at flat offset ``xo`` with row stride ``ldx`` and
    column stride ``cx`` (``ldx = 1, cx = R'`` reads a stored matrix transposed),
    ``W`` the ``K × n`` one at ``wo``/``ldw``, ``out`` the ``R × n`` one at
    ``oo``/``ldo``; elements of a row are contiguous. Columns are covered by
    full-width vector tiles (:func:`_vector_columns`), then one half-width vector
    column where at least ``L/2`` columns remain (the attention's ``d_h``- and
    ``T``-wide products), then a scalar loop.

    Every ``out[i, j]`` is the chain ``((out|0) + x_0 w_0) + x_1 w_1 + …`` in k
    order, fused multiply-adds throughout, whatever path it takes: the result depends
    on the shapes only, never on batch composition or thread count.
    """
    L = lanes(W)
    nv = n - n % L
    if nv > 0:
        _vector_columns(X, xo, ldx, cx, W, wo, ldw, out, oo, ldo, R, K, 0, nv, accumulate, vzero(W))
    j = nv
    if n - j >= L // 2:
        _vector_columns(
            X, xo, ldx, cx, W, wo, ldw, out, oo, ldo, R, K, j, j + L // 2, accumulate, vzero_half(W)
        )
        j += L // 2
    if j < n:
        zero = X.dtype.type(0)
        for i in range(R):
            for jj in range(j, n):
                s = sload(out, oo + i * ldo + jj) if accumulate else zero
                for k in range(K):
                    s = vfma(sload(X, xo + i * ldx + k * cx), sload(W, wo + k * ldw + jj), s)
                sstore(out, oo + i * ldo + jj, s)


@_ijit
def gemm_ld(X, xo, ldx, cx, W, wo, ldw, out, oo, ldo, R, K, n, accumulate):
    """``out (+)= X @ W`` on sub-matrices of flat C-contiguous buffers (BLAS style);
    see :func:`_gemm_ld`, which this calls with every scalar made a run-time value
    (:func:`runtime`), so that one compiled version serves every call site."""
    _gemm_ld(
        X,
        runtime(xo),
        runtime(ldx),
        runtime(cx),
        W,
        runtime(wo),
        runtime(ldw),
        out,
        runtime(oo),
        runtime(ldo),
        runtime(R),
        runtime(K),
        runtime(n),
        runtime(accumulate),
    )


@_ijit
def gemm(X, W, out, accumulate):
    """``out (+)= X @ W`` for C-contiguous ``X (R, K)``, ``W (K, n)``, ``out (R, n)``.

    :func:`gemm_ld` on whole matrices. Equivalent to ``out[:] (+)= X @ W``, left for
    reference.
    """
    R, K = X.shape
    n = W.shape[1]
    gemm_ld(X, 0, K, 1, W, 0, n, out, 0, n, R, K, n, accumulate)


# ------------------------------------------------- lane-interleaved products
@_ijit
def _wvec(W, off, vec, z):
    """Element ``off`` of ``W`` as a vector: a lane array's vector (``vec``) or a
    scalar weight broadcast."""
    if vec:
        return vload(W, off, z)
    return vsplat(sload(W, off), z)


@_jit
def _tile(
    X,
    x0,
    x1,
    x2,
    x3,
    cx,
    W,
    w0,
    w1,
    w2,
    w3,
    ldw,
    vec,
    out,
    o0,
    o1,
    o2,
    o3,
    p0,
    p1,
    p2,
    p3,
    K_,
    accumulate,
    z,
):
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
            _tile(
                X,
                xo + i * ldx,
                xo + i1 * ldx,
                xo + i2 * ldx,
                xo + i3 * ldx,
                cx,
                W,
                wo + j * cw,
                wo + j1 * cw,
                wo + j2 * cw,
                wo + j3 * cw,
                ldw,
                vec,
                out,
                oo + i * ldo,
                oo + i1 * ldo,
                oo + i2 * ldo,
                oo + i3 * ldo,
                j * co,
                j1 * co,
                j2 * co,
                j3 * co,
                K_,
                accumulate,
                z,
            )
