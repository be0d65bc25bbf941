"""Experiments on the row GEMM's 8 × 2 tile (issue 18, part 5; docs/performance.md,
"Where the time goes on this Xeon"): the broadcast addresses made opaque, W packed in
column panels, and a wider 8 × 3 tile, each timed against ``simd._tile_8x2`` on whole
products (medians of 7 interleaved runs, GFLOP/s of one core) with the bits checked
equal. A benchmark, not a test.

    python bench/tile_experiments.py
"""

import time

import numpy as np
from llvmlite import ir
from numba import njit
from numba.extending import intrinsic

from tfkernels import config
from tfkernels.kernels.simd import (
    VECTOR_BYTES,
    _tile_8x2,
    lanes,
    sload,
    vfma,
    vload,
    vsplat,
    vstore,
    vzero,
)

J = njit(fastmath=config.FASTMATH, error_model=config.ERROR_MODEL)


@intrinsic
def opaque(typingctx, x):
    """``x``, hidden from LLVM behind an empty inline-asm statement."""

    def codegen(context, builder, sig, args):
        ty = args[0].type
        return builder.asm(ir.FunctionType(ty, [ty]), "", "=r,0", [args[0]], False)

    return x(x), codegen


def _tile_source(name, rows, panels, opaque_offsets):
    """Source of a ``rows × panels``-vector tile over ``X (·, K)`` and ``W (K, ldw)``."""
    src = [f"def {name}(X, x0, ldx, W, ldw, out, o, ldo, K, j, z):", "    L = lanes(z)"]
    acc = [f"c{i}{c}" for i in range(rows) for c in range(panels)]
    src.append("    " + " = ".join(acc) + " = z")
    for i in range(1, rows):
        off = f"opaque({i} * ldx)" if opaque_offsets else f"{i} * ldx"
        src.append(f"    o{i} = {off}")
    src.append("    for k in range(K):")
    for c in range(panels):
        src.append(f"        w{c} = vload(W, k * ldw + j + {c} * L, z)")
    for i in range(rows):
        src.append(f"        a = vsplat(sload(X, x0 + k{f' + o{i}' if i else ''}), z)")
        for c in range(panels):
            src.append(f"        c{i}{c} = vfma(a, w{c}, c{i}{c})")
    for i in range(rows):
        for c in range(panels):
            src.append(f"    vstore(out, o + {i} * ldo + {c} * L, c{i}{c})")
    ns = dict(lanes=lanes, vload=vload, vstore=vstore, vsplat=vsplat, vfma=vfma)
    ns.update(sload=sload, opaque=opaque)
    exec("\n".join(src), ns)
    return J(ns[name])


tile_opaque = _tile_source("tile_opaque", 8, 2, True)
tile_8x3 = _tile_source("tile_8x3", 8, 3, False)


@J
def tile_8x2(X, x0, ldx, W, ldw, out, o, ldo, K, j, z):
    """The package's tile (``simd._tile_8x2``) with the experiments' arguments."""
    _tile_8x2(X, x0, ldx, 1, W, 0, ldw, out, o, ldo, K, j, False, z)


@J
def run_tile(n, tile, panels, X, W, out):
    """``n`` products ``out = X @ W`` by ``tile`` (8 rows × ``panels`` vectors)."""
    R, K = X.shape
    N = W.shape[1]
    z = vzero(W)
    L = lanes(W)
    for _ in range(n):
        for i in range(0, R, 8):
            for j in range(0, N, panels * L):
                tile(X, i * K, K, W, N, out, i * N + j, N, K, j, z)


def run_base(n, X, W, out):
    run_tile(n, tile_8x2, 2, X, W, out)


def run_opaque(n, X, W, out):
    run_tile(n, tile_opaque, 2, X, W, out)


def run_8x3(n, X, W, out):
    run_tile(n, tile_8x3, 3, X, W, out)


@J
def run_packed(n, X, Wp, out):
    R, K = X.shape
    P = Wp.shape[0]
    z = vzero(Wp)
    L = lanes(Wp)
    N = P * 2 * L
    for _ in range(n):
        for i in range(0, R, 8):
            for p in range(P):
                o = i * N + p * 2 * L
                _tile_8x2(X, i * K, K, 1, Wp, p * K * 2 * L, 2 * L, out, o, N, K, 0, False, z)


def compare(name, run, shapes, prepare=lambda W, L: W):
    for dt in (np.float32, np.float64):
        L = VECTOR_BYTES // np.dtype(dt).itemsize
        for R, K, n in shapes(L):
            rng = np.random.default_rng(0)
            X = rng.random((R, K)).astype(dt)
            W = rng.random((K, n)).astype(dt)
            Wx = prepare(W, L)
            a = np.zeros((R, n), dt)
            b = np.zeros((R, n), dt)
            run(1, X, Wx, a)
            run_base(1, X, W, b)
            assert a.tobytes() == b.tobytes(), "bits differ"
            reps = max(1, int(1e8 / (2 * R * K * n)))
            times = {"8x2": [], name: []}
            for _ in range(7):
                for key, f, w, o in (("8x2", run_base, W, b), (name, run, Wx, a)):
                    t = time.perf_counter()
                    f(reps, X, w, o)
                    times[key].append(time.perf_counter() - t)
            g = {k: 2 * R * K * n * reps / np.median(v) / 1e9 for k, v in times.items()}
            print(
                f"{dt.__name__} {R}x{K}x{n}: 8x2 {g['8x2']:.1f}, {name} {g[name]:.1f} GFLOP/s,"
                f" ratio {g[name] / g['8x2']:.2f}"
            )


def _common_shapes(L):
    """The four products of the first two experiments, whatever the lane count."""
    return [(32, 64, 256), (32, 256, 64), (64, 128, 512), (64, 512, 128)]


def _pack(W, L):
    K, n = W.shape
    return np.ascontiguousarray(W.reshape(K, n // (2 * L), 2 * L).transpose(1, 0, 2))


if __name__ == "__main__":
    compare("opaque", run_opaque, _common_shapes)
    compare("packed", run_packed, _common_shapes, _pack)
    compare("8x3", run_8x3, lambda L: [(32, 64, 12 * L), (64, 128, 24 * L), (64, 512, 6 * L)])
