"""Bad input raises a clear TypeError/ValueError naming the argument, before compiled code."""

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import TransformerParams


@pytest.fixture
def p():
    return TransformerParams.random(d=4, n_heads=2, d_ff=6, damping=0.5, seed=0)


@pytest.fixture
def x0():
    return tfk.random_states(3, 2, 4, seed=0)


def test_wrong_state_shape(p):
    with pytest.raises(ValueError, match="`x0`.*dimensions"):
        tfk.integrate(p, np.zeros((2, 4)), 4)
    with pytest.raises(ValueError, match="`x0` has width 5"):
        tfk.integrate(p, np.zeros((2, 3, 5)), 4)
    with pytest.raises(ValueError, match="`X`"):
        tfk.vector_field(p, np.zeros((1, 3, 5)))


def test_mismatched_dtypes(p, x0):
    with pytest.raises(TypeError, match="`x0` has dtype float32"):
        tfk.integrate(p, x0.astype(np.float32), 4)
    with pytest.raises(TypeError, match="`x0`.*int"):
        tfk.integrate(p, np.zeros((1, 2, 4), dtype=np.int64), 4)
    with pytest.raises(TypeError, match="`wk` has dtype float32"):
        TransformerParams(wq=p.wq, wk=p.wk.astype(np.float32), wv=p.wv, wo=p.wo)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_states_and_weights(p, x0, bad):
    x = x0.copy()
    x[1, 0, 2] = bad
    with pytest.raises(
        ValueError, match=r"`x0` contains NaN or inf \(first at index \(1, 0, 2\)\)"
    ):
        tfk.integrate(p, x, 4)
    w = p.w1.copy()
    w[0, 0] = bad
    with pytest.raises(ValueError, match="`w1` contains NaN or inf"):
        p.replace(w1=w)


def test_weight_shapes(p):
    with pytest.raises(ValueError, match="`wk` must have shape"):
        TransformerParams(wq=p.wq, wk=p.wk[:3], wv=p.wv, wo=p.wo)
    with pytest.raises(ValueError, match="`b1` must have shape"):
        p.replace(b1=np.zeros(5))
    with pytest.raises(ValueError, match="`w1`, `b1` given but `w2`, `b2` missing"):
        TransformerParams(w1=p.w1, b1=p.b1)
    with pytest.raises(ValueError, match="at least one"):
        TransformerParams()
    with pytest.raises(ValueError, match="leading layer axis"):
        p.replace(linear=np.zeros((3, 4, 4)))


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="`n_heads`=3 must divide the width d=4"):
        TransformerParams.random(d=4, n_heads=3)


def test_settings_ranges(p):
    with pytest.raises(ValueError, match="`damping` must be >= 0"):
        p.replace(damping=-1.0)
    with pytest.raises(ValueError, match="`beta` must be > 0"):
        p.replace(beta=0.0)
    with pytest.raises(ValueError, match="unknown `activation` 'swish'"):
        p.replace(activation="swish")


def test_integrate_arguments(p, x0):
    with pytest.raises(ValueError, match="`n_layers` must be >= 1"):
        tfk.integrate(p, x0, 0)
    with pytest.raises(TypeError, match="`n_layers` must be an integer"):
        tfk.integrate(p, x0, 2.5)
    with pytest.raises(ValueError, match="unknown `method` 'rk45'.*'euler'"):
        tfk.integrate(p, x0, 4, method="rk45")
    with pytest.raises(ValueError, match="`save_every`=3 must divide `n_layers`=4"):
        tfk.integrate(p, x0, 4, save_every=3)
    with pytest.raises(ValueError, match="`t_final` must be > 0"):
        tfk.integrate(p, x0, 4, t_final=0.0)
    with pytest.raises(ValueError, match="`alpha` applies to method='averaged' only"):
        tfk.integrate(p, x0, 4, alpha=0.5)
    with pytest.raises(ValueError, match="`alpha` values must lie in"):
        tfk.integrate(p, x0, 4, method="averaged", alpha=1.5)
    with pytest.raises(ValueError, match="`alpha` must have length n_layers=4"):
        tfk.integrate(p, x0, 4, method="averaged", alpha=np.full(3, 0.1))
    with pytest.raises(ValueError, match="unknown `alpha` 'fast'"):
        tfk.integrate(p, x0, 4, method="averaged", alpha="fast")
    with pytest.raises(ValueError, match="`noise` must be >= 0"):
        tfk.integrate(p, x0, 4, noise=-0.1)
    with pytest.raises(ValueError, match="`n_threads` must be >= 1"):
        tfk.integrate(p, x0, 4, n_threads=0)
    with pytest.raises(TypeError, match="`params` must be a tfkernels.TransformerParams"):
        tfk.integrate({"wq": 1}, x0, 4)


def test_per_layer_sets_must_match_layers(x0):
    p = TransformerParams.random(d=4, n_heads=2, n_layers=3, seed=0)
    with pytest.raises(ValueError, match="3 per-layer weight sets but `n_layers`=4"):
        tfk.integrate(p, x0, 4)


def test_random_states_arguments():
    with pytest.raises(ValueError, match="`batch` must be >= 1"):
        tfk.random_states(0, 2, 3)
    with pytest.raises(TypeError, match="`dtype` must be float32 or float64"):
        tfk.random_states(1, 2, 3, dtype=np.int32)
    with pytest.raises(ValueError, match="`seed` must be >= 0"):
        tfk.random_states(1, 2, 3, seed=-1)


def test_blow_up_is_reported_not_hidden():
    # f(X) = X·A with a huge A: one Euler step (Δt = 1/4) gives 2.5e299, the next inf.
    p = TransformerParams.linear(np.eye(3) * 1e300)
    x0 = np.ones((2, 1, 3))
    x0[1] = 0.0  # the zero state stays at the fixed point 0
    with pytest.raises(
        FloatingPointError, match=r"1 trajectory\(ies\) became non-finite.*trajectory 0 at layer 2"
    ):
        tfk.integrate(p, x0, 4)
    out = tfk.integrate(p, x0, 4, throw=False, save_every=1)
    assert np.all(np.isfinite(out[0, :2])) and np.all(np.isnan(out[0, 2:]))
    assert np.array_equal(out[1], np.zeros((5, 1, 3)))


def test_check_int_policy():
    from tfkernels import _validate as v

    assert v.check_int("n", np.int64(3)) == 3 and type(v.check_int("n", np.uint8(3))) is int
    for bad in (3.0, np.float64(3.0), np.float32(3.0), True, np.True_, "3", np.array(3), None):
        with pytest.raises(TypeError, match="`n` must be an integer"):
            v.check_int("n", bad)
    with pytest.raises(TypeError, match=r"pass `n=3`"):
        v.check_int("n", 3.0)
    with pytest.raises(ValueError, match="`n` must be <= 5, got 6"):
        v.check_int("n", 6, maximum=5)


def test_check_seed_and_bool():
    from tfkernels import _validate as v

    assert v.check_seed("seed", 2**63 - 1) == 2**63 - 1
    with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 2\*\*63 - 1\]"):
        v.check_seed("seed", 2**63)
    with pytest.raises(ValueError, match="`seed` must be >= 0"):
        v.check_seed("seed", -1)
    assert v.check_bool("flag", np.bool_(True)) is True
    for bad in ("no", 1, None, np.array([True])):
        with pytest.raises(TypeError, match="`flag` must be True or False"):
            v.check_bool("flag", bad)
