"""The lane layout (``kernels.structs.LANES``) gives the same bits as the
one-trajectory-at-a-time row layout, which the other test
files check against the reference: every term, every method, noise, per-layer
weights, partial groups and trajectories that blow up part-way."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tfkernels as tfk
from test_kernels import SETTINGS, build, models
from tfkernels import config, kernels
from tfkernels.kernels import maths, structs


def both(fn):
    """``fn()`` with the lane kernels forced on, then forced off."""
    results = []
    for size in (10**9, 0):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(config, "LANES_MAX_SIZE", size)
            results.append(fn())
    return results


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@SETTINGS
@given(
    m=models(), B=st.integers(1, 40), method=st.sampled_from(["euler", "heun", "rk4", "averaged"])
)
def test_lanes_match_rows_bitwise(dtype, m, B, method):
    m = dict(m, B=B)  # up to 3 groups of 16 (float32) or 5 of 8, the last partial
    n_layers = 3
    p, x0 = build(m, dtype, n_layers)
    kw = dict(alpha="accelerated", c=0.5) if method == "averaged" else {}
    noise = [0.1, 0.0, 0.05]
    on, off = both(
        lambda: tfk.integrate(
            p, x0, n_layers, method=method, save_every=1, noise=noise, seed=4, start=3, **kw
        )
    )
    assert np.array_equal(on, off)
    layer = 1 if m["per_layer"] else 0
    on, off = both(lambda: tfk.vector_field(p, x0, layer=layer))
    assert np.array_equal(on, off)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_blow_ups_in_a_group(dtype):
    # f(X) = c·X: an Euler step multiplies X by 1 + c/4 = 10^(e/4), e the largest
    # decimal exponent, so a trajectory of size 10^k overflows at layer ceil((e−k)/(e/4))
    # or later: lanes of one group fail at different layers, one (0) never.
    e = np.finfo(dtype).maxexp * np.log10(2)
    p = tfk.TransformerParams.linear((np.eye(2) * 4 * (10 ** (e / 4) - 1)).astype(dtype))
    k = np.array([0.0, 0.3, 0.6, 0.9] * 5)[:19] * e
    x0 = np.ones((19, 3, 2), dtype=dtype) * (10.0**k)[:, None, None].astype(dtype)
    x0[5] = 0.0
    noise = [0.0] * 7 + [1e-3]  # the zero trajectory stays finite
    run = lambda: tfk.integrate(p, x0, 8, save_every=2, noise=noise, throw=False)
    on, off = both(run)
    assert np.array_equal(on, off, equal_nan=True)
    last = np.isnan(on[:, -1, 0, 0])
    assert last.sum() == 18 and not last[5]
    first_nan = np.isnan(on[:, :, 0, 0]).argmax(axis=1)
    assert len(set(first_nan[last])) >= 3  # the lanes died at different layers
    with pytest.raises(FloatingPointError, match="18 trajectory"):
        tfk.integrate(p, x0, 8)


def test_dispatch_threshold():
    assert kernels.use_lanes(8, 16) == (8 * 16 <= config.LANES_MAX_SIZE)
    assert not kernels.use_lanes(64, 128)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_lane_scratch_shapes(dtype):
    p = tfk.TransformerParams.random(8, 2, dtype=dtype)
    model = kernels.pack_params(p)
    L = structs.group_width(dtype)
    ss = structs.step_scratch(structs.LANES, model, 4, 8, 2, dtype)
    fs = ss.field
    assert ss.xs.shape == fs.heads.shape == (4, 8 * L)
    assert ss.stages.shape == (2, 4, 8 * L) and fs.hidden.shape == (4, 32 * L)
    assert fs.P.shape == (4, 2 * 4 * L) and fs.mt.shape == (3, 2 * 4 * L)
    lm = structs.for_lanes(model)
    assert np.array_equal(lm.weights.b1[0, :L], np.full(L, model.weights.b1[0, 0]))


def test_is_finite_under_fastmath():
    # np.isfinite(0.5·log(s) − c) compiled with config.FASTMATH said True for s = inf
    from numba import njit

    f = njit(fastmath=config.FASTMATH, error_model=config.ERROR_MODEL)(
        lambda s: maths.is_finite(0.5 * np.log(s) - 1.0)
    )
    assert f(2.0) and not f(np.inf) and not f(np.nan)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_pair_mode_on_lanes_matches_rows(dtype, method):
    from tfkernels.studies import decay

    p = tfk.TransformerParams.random(
        d=8, n_heads=2, d_ff=12, damping=1.0, causal=True, seed=4, dtype=dtype
    )
    run = lambda: decay.log_ratios(
        p, 37, 3, 6, method=method, noise=[0.1, 0, 0.2, 0, 0, 0.1], seed=5, start=2
    )
    (on, st_on), (off, st_off) = both(run)
    assert np.array_equal(st_on, st_off)
    # the states are the same bits; the float64 sum of squared distances may be
    # reassociated by LLVM in the row kernel
    np.testing.assert_allclose(on, off, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("activation", ["gelu", "tanh"])
def test_tangent_mode_on_lanes_matches_rows(dtype, activation):
    from tfkernels.studies import decay

    p = tfk.TransformerParams.random(
        d=8,
        n_heads=2,
        d_ff=12,
        damping=1.0,
        causal=True,
        linear=True,
        activation=activation,
        seed=4,
        dtype=dtype,
    )
    run = lambda: decay.log_ratios(
        p, 37, 3, 6, method="heun", mode="tangent", noise=[0.1, 0, 0.2, 0, 0, 0.1], seed=5, start=2
    )
    (on, st_on), (off, st_off) = both(run)
    assert np.array_equal(st_on, st_off) and np.all(st_on == kernels.STATUS_OK)
    np.testing.assert_allclose(on, off, rtol=1e-13, atol=1e-13)
