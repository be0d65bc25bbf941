"""Same seed, same result: bit-identical whatever the thread count or batch split."""

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import config


@pytest.fixture(params=["lanes", "rows"])
def setup(dtype, request, monkeypatch):
    # T·d = 32: integrate picks the lane kernels; both families must be deterministic
    monkeypatch.setattr(config, "LANES_MAX_SIZE", 10**9 if request.param == "lanes" else 0)
    p = tfk.TransformerParams.random(d=8, n_heads=2, d_ff=16, damping=1.0, seed=1, dtype=dtype)
    x0 = tfk.random_states(37, 4, 8, seed=2, dtype=dtype)
    return p, x0


def test_random_states_split_invariant(dtype):
    whole = tfk.random_states(50, 3, 4, seed=7, dtype=dtype)
    parts = [
        tfk.random_states(n, 3, 4, seed=7, start=s, dtype=dtype)
        for s, n in ((0, 13), (13, 1), (14, 36))
    ]
    assert np.array_equal(whole, np.concatenate(parts))
    assert not np.array_equal(whole, tfk.random_states(50, 3, 4, seed=8, dtype=dtype))


@pytest.mark.parametrize("method", ["euler", "rk4", "averaged"])
def test_threads_do_not_change_results(setup, method):
    p, x0 = setup
    kw = dict(method=method, noise=0.05, seed=3, save_every=4)
    one = tfk.integrate(p, x0, 16, n_threads=1, **kw)
    two = tfk.integrate(p, x0, 16, n_threads=2, **kw)
    assert np.array_equal(one, two)


def test_batch_split_does_not_change_results(setup):
    p, x0 = setup
    kw = dict(method="averaged", alpha="accelerated", noise=0.05, seed=3)
    whole = tfk.integrate(p, x0, 16, **kw)
    parts = [tfk.integrate(p, x0[s:e], 16, start=s, **kw) for s, e in ((0, 1), (1, 20), (20, 37))]
    assert np.array_equal(whole, np.concatenate(parts))


def test_same_seed_same_result_different_seed_differs(setup):
    p, x0 = setup
    a = tfk.integrate(p, x0, 8, noise=0.1, seed=11)
    assert np.array_equal(a, tfk.integrate(p, x0, 8, noise=0.1, seed=11))
    assert not np.array_equal(a, tfk.integrate(p, x0, 8, noise=0.1, seed=12))


def test_n_threads_restored(setup):
    import numba

    p, x0 = setup
    before = numba.get_num_threads()
    tfk.integrate(p, x0, 2, n_threads=1)
    assert numba.get_num_threads() == before
