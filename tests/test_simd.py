"""The SIMD micro-kernel and the vectorized elementary functions, element by element.

``gemm_ld`` is checked against a float64 product for every path it has (8 × 2, 4 × 2 and
4 × 1 full-width tiles, the half-width column, the scalar tail, leftover rows) and for
sub-matrices addressed by offset and row stride; ``exp_neg``, ``erfc_pos`` and float32's
``two_cdf`` against ``math.exp`` / ``math.erfc`` / ``math.erf`` with the error bounds
their docstrings state.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from tfkernels import config
from tfkernels.kernels import maths as kernels
from tfkernels.kernels import simd

TOL = {np.float32: 2e-6, np.float64: 1e-14}


@njit(cache=config.CACHE)
def _lanes(a):
    return simd.lanes(a)


@settings(max_examples=60, deadline=None)
@given(
    R=st.integers(1, 13),
    K=st.integers(1, 40),
    n=st.integers(1, 70),
    pad=st.integers(0, 5),
    accumulate=st.booleans(),
    x_transposed=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_gemm_ld_matches_float64_product(R, K, n, pad, accumulate, x_transposed, dtype, seed):
    g = np.random.default_rng(seed)
    # sub-matrices inside larger buffers: offsets and row strides beyond the widths;
    # X stored either row-major (R × ldx) or transposed (K × ldx', read with cx)
    ldw, ldo = n + pad, n + 2 * pad
    xo, wo, oo = pad, 2 * pad, 3 * pad
    if x_transposed:
        ldx, cx = 1, R + pad
        X = g.standard_normal(xo + K * cx).astype(dtype)
        Xm = X[xo : xo + K * cx].reshape(K, cx)[:, :R].T.astype(np.float64)
    else:
        ldx, cx = K + pad, 1
        X = g.standard_normal(xo + R * ldx).astype(dtype)
        Xm = X[xo : xo + R * ldx].reshape(R, ldx)[:, :K].astype(np.float64)
    W = g.standard_normal((wo + K * ldw + 1,)).astype(dtype)
    out = g.standard_normal(oo + R * ldo).astype(dtype)
    before = out.copy()
    Wm = W[wo : wo + K * ldw].reshape(K, ldw)[:, :n].astype(np.float64)
    Om = before[oo : oo + R * ldo].reshape(R, ldo)[:, :n].astype(np.float64)
    want = Xm @ Wm + (Om if accumulate else 0.0)
    simd.gemm_ld(X, xo, ldx, cx, W, wo, ldw, out, oo, ldo, R, K, n, accumulate)
    got = out[oo : oo + R * ldo].reshape(R, ldo)
    scale = np.abs(Xm) @ np.abs(Wm) + (np.abs(Om) if accumulate else 0.0)
    assert np.all(np.abs(got[:, :n] - want) <= TOL[dtype] * (scale + 1e-30))
    # nothing outside the R × n block is written
    mask = np.ones(out.shape, bool)
    mask[oo : oo + R * ldo].reshape(R, ldo)[:, :n] = False
    assert np.array_equal(out[mask], before[mask])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_covers_every_tile_path(dtype):
    """Widths around 0.5, 1, 2 and 3 vectors and row counts around the 4-row tile."""
    L = _lanes(np.zeros(1, dtype))
    g = np.random.default_rng(0)
    for R in (1, 3, 4, 5, 8, 9):
        for n in sorted(
            {
                1,
                L // 2 - 1,
                L // 2,
                L // 2 + 1,
                L - 1,
                L,
                L + L // 2,
                2 * L,
                2 * L + 1,
                3 * L,
                3 * L + L // 2 + 1,
            }
        ):
            X = g.standard_normal((R, 7)).astype(dtype)
            W = g.standard_normal((7, n)).astype(dtype)
            out = np.empty((R, n), dtype)
            simd.gemm(X, W, out, False)
            want = X.astype(np.float64) @ W.astype(np.float64)
            scale = np.abs(X.astype(np.float64)) @ np.abs(W.astype(np.float64))
            assert np.all(np.abs(out - want) <= TOL[dtype] * scale), (R, n)


@njit(cache=config.CACHE)
def _fma_chain(X, W, out, accumulate):
    """``out (+)= X @ W`` one element at a time: the chain of scalar FMAs in k order
    that every tile of ``gemm_ld`` must reproduce bit for bit."""
    R, K = X.shape
    for i in range(R):
        for j in range(W.shape[1]):
            s = out[i, j] if accumulate else X.dtype.type(0)
            for k in range(K):
                s = simd.vfma(X[i, k], W[k, j], s)
            out[i, j] = s


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("accumulate", [False, True])
def test_every_tile_gives_the_fma_chains_bits(dtype, accumulate):
    """The 8 × 2, 4 × 2 and 4 × 1 tiles, the half-width column and the scalar tail
    (rows around 4 and 8, widths of 1 to 7 vectors and their remainders) all give the
    bits of one scalar FMA chain per element, so results never depend on the tile."""
    L = _lanes(np.zeros(1, dtype))
    g = np.random.default_rng(1)
    for R in (3, 4, 7, 8, 9, 12, 16, 17):
        for n in (L, 2 * L, 3 * L, 4 * L + L // 2, 5 * L + 1, 6 * L, 7 * L + L // 2 + 3):
            X = g.standard_normal((R, 11)).astype(dtype)
            W = g.standard_normal((11, n)).astype(dtype)
            got = g.standard_normal((R, n)).astype(dtype)
            want = got.copy()
            simd.gemm(X, W, got, accumulate)
            _fma_chain(X, W, want, accumulate)
            assert got.tobytes() == want.tobytes(), (R, n)


@njit(cache=config.CACHE, fastmath=config.FASTMATH, error_model=config.ERROR_MODEL)
def _elementary(x, short):
    dt = x.dtype.type
    lo = dt(kernels.EXP_LO)
    e = np.empty_like(x)
    f = np.empty_like(x)
    h = np.empty_like(x)
    for i in range(x.size):
        if short:
            e[i] = kernels.exp_neg(-x[i], dt, lo, True)
            h[i] = kernels.exp_horner(-x[i], dt, lo, True)
            f[i] = kernels.two_cdf(x[i], dt, lo, True)
        else:
            e[i] = kernels.exp_neg(-x[i], dt, lo, False)
            h[i] = kernels.exp_horner(-x[i], dt, lo, False)
            f[i] = kernels.erfc_pos(x[i], dt, lo)
    return e, f, h


@pytest.mark.parametrize(
    "dtype, short, estrin_tol, horner_tol",
    [
        # float64: the minimax polynomial (2.3e-17) and the two-part reduction leave
        # about an ulp over the whole range (measured 3.1e-16 and 1.5e-16 on Zen 4);
        # with ln 2 folded into one constant it was 3e-15 at x = 87
        (np.float64, False, 4e-16, 2.5e-16),
        # float32: the short polynomial (1.7e-8), measured 1.2e-7 and 8.7e-8
        (np.float32, True, 2e-7, 1.5e-7),
    ],
)
def test_exp_error_bounds(dtype, short, estrin_tol, horner_tol):
    x = np.linspace(0.0, 87.0, 87001).astype(dtype)
    e, _, h = _elementary(x, short)
    exact = np.exp(-x.astype(np.longdouble))
    assert np.max(np.abs(e / exact - 1)) <= estrin_tol
    assert np.max(np.abs(h / exact - 1)) <= horner_tol


def test_erfc_error_bound():
    """float64's erfc (GELU's tails): relative error ≤ ~40 eps at x = 6, where x² = 36
    carries the rounding; much tighter near 0 (small arguments carry no conditioning)."""
    x = np.linspace(0.0, 6.0, 6001)
    _, f, _ = _elementary(x, False)
    exact = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(f / exact - 1)) <= 3e-14
    small = x <= 1.0
    assert np.max(np.abs(f[small] / exact[small] - 1)) <= 3e-15


def test_float32_two_cdf_error_bound():
    """float32's ``2Φ(z) = 1 + erf(z/√2)`` (the polynomial of ``maths.two_cdf``): absolute
    error ≤ 3.5e-7 over z in [−14, 14] (its docstring: ≤ 3e-7 measured, about 1.3 ulp
    of 2Φ near 2, where float32's spacing is 2.4e-7), within [0, 2], and odd about 1
    up to that rounding; GELU ``½z·2Φ(z)`` then errs by ≤ 1.75e-7·|z|."""
    z = np.linspace(-14.0, 14.0, 280001).astype(np.float32)
    _, g, _ = _elementary(z, True)
    zd = z.astype(np.float64)
    exact = np.array([1.0 + math.erf(v / math.sqrt(2.0)) for v in zd])
    assert np.max(np.abs(g - exact)) <= 3.5e-7
    assert np.all((g >= 0) & (g <= 2))
    assert np.max(np.abs(g + g[::-1] - 2)) <= 3.5e-7
    nan = np.array([np.nan], dtype=np.float32)
    assert np.isnan(_elementary(nan, True)[1][0])
