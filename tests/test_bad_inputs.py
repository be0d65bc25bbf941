"""Regression tests for the Python API's bad inputs of ``../shared/qa/bad-inputs.md``.

Each test names the attempt numbers (#) it covers; every error must name the argument.
"""

import warnings

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import _validate as v
from tfkernels.params import TransformerParams as TP


def small(**kw):
    return TP.random(d=8, n_heads=2, d_ff=16, damping=1.0, seed=0, **kw)


# ------------------------------------------------------------- integer policy
@pytest.mark.parametrize("value", [8.0, np.float64(8.0), np.float32(8.0)])
def test_integer_valued_floats_rejected_everywhere(value):  # 193, 302-306, 15
    p = small()
    x0 = tfk.random_states(4, 3, 8, seed=1)
    with pytest.raises(TypeError, match="`n_layers` must be an integer"):
        tfk.integrate(p, x0, value)
    with pytest.raises(TypeError, match="`n_layers` must be an integer"):
        tfk.integrate(p, x0, value, save_every=2)
    with pytest.raises(TypeError, match="`n_layers` must be an integer"):
        tfk.integrate(p, x0, value, method="averaged")
    with pytest.raises(TypeError, match="`n_layers` must be an integer"):
        tfk.perturbation_decay(p, 8, seq_len=2, n_layers=value)
    with pytest.raises(TypeError, match="`save_every` must be an integer"):
        tfk.integrate(p, x0, 8, save_every=value / 4)
    with pytest.raises(TypeError, match="`n_heads` must be an integer"):
        TP.random(d=8, n_heads=value / 4)
    with pytest.raises(TypeError, match="`seq_len` must be an integer"):
        tfk.random_states(2, value, 8)
    with pytest.raises(TypeError, match="`seed` must be an integer"):
        tfk.random_states(2, 2, 8, seed=value)
    with pytest.raises(TypeError, match="`layer` must be an integer"):
        tfk.vector_field(p, x0, layer=value - 8)
    with pytest.raises(TypeError, match="`n_threads` must be an integer"):
        tfk.vector_field(p, x0, n_threads=value / 8)
    with pytest.raises(TypeError, match="`chunk_size` must be an integer"):
        tfk.perturbation_decay(p, 8, seq_len=2, n_layers=8, chunk_size=value)


def test_numpy_integers_accepted():  # 19
    p = TP.random(d=np.int32(8), n_heads=np.int64(2), d_ff=np.uint8(16), seed=np.int64(0))
    x0 = tfk.random_states(np.int16(4), np.int64(3), np.int64(8), seed=np.uint64(1))
    out = tfk.integrate(p, x0, np.int64(4), save_every=np.int32(2))
    assert np.array_equal(out, tfk.integrate(p, x0, 4, save_every=2))


# ----------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", [2**63, 2**64 - 1, 2**64, 2**100, np.uint64(2**64 - 1)])
def test_seed_range_named(seed):  # 142-145, 148, 255, 256, 349, 350
    p = small()
    x0 = tfk.random_states(2, 2, 8)
    for call in (
        lambda: tfk.random_states(2, 2, 8, seed=seed),
        lambda: tfk.integrate(p, x0, 4, seed=seed),
        lambda: tfk.perturbation_decay(p, 8, seq_len=2, n_layers=4, seed=seed),
    ):
        with pytest.raises(ValueError, match=r"`seed` must be an integer in \[0, 2\*\*63 - 1\]"):
            call()


def test_largest_seed_works():
    a = tfk.random_states(2, 2, 3, seed=v.MAX_SEED)
    b = tfk.random_states(2, 2, 3, seed=np.int64(v.MAX_SEED))
    assert np.array_equal(a, b) and np.all(np.isfinite(a))


def test_seed_float_and_str_named():  # 81, 83, 84, 85, 147
    with pytest.raises(TypeError, match="`seed` must be an integer"):
        tfk.random_states(2, 2, 3, seed=1e20)
    for bad in (1.5, "abc", None):
        with pytest.raises(TypeError, match="`seed` must be an integer"):
            TP.random(d=8, n_heads=2, seed=bad)
    with pytest.raises(ValueError, match="`seed` must be >= 0"):
        TP.random(d=8, n_heads=2, seed=-1)
    # any non-negative integer seeds the weights' NumPy generator
    assert TP.random(d=4, n_heads=1, seed=2**100).d == 4


@pytest.mark.parametrize("start", [2**63, 2**64])
def test_start_range_named(start):  # 151, 258
    with pytest.raises(ValueError, match="`start` must be <="):
        tfk.random_states(2, 2, 3, start=start)
    with pytest.raises(ValueError, match="`start` must be <="):
        tfk.integrate(small(), tfk.random_states(2, 2, 8), 2, start=start)


# ----------------------------------------------------------------------- flags
@pytest.mark.parametrize("bad", ["no", 1, 0, None, np.array([0, 1])])
def test_flags_take_real_bools(bad):  # 42, 43, 87, 259
    with pytest.raises(TypeError, match="`causal` must be True or False"):
        small().replace(causal=bad)
    for flag in ("attention", "ffn", "linear", "causal"):
        with pytest.raises(TypeError, match=f"`{flag}` must be True or False"):
            TP.random(d=8, n_heads=2, **{flag: bad})
    with pytest.raises(TypeError, match="`throw` must be True or False"):
        tfk.integrate(small(), tfk.random_states(2, 2, 8), 2, throw=bad)
    with pytest.raises(TypeError, match="`progress` must be True or False"):
        tfk.perturbation_decay(small(), 8, seq_len=2, n_layers=2, progress=bad)


def test_numpy_bools_accepted():
    p = TP.random(d=8, n_heads=2, causal=np.bool_(True), linear=np.True_, seed=0)
    assert p.causal is True and p.linear is not None
    assert small().replace(causal=np.False_).causal is False


@pytest.mark.parametrize("bad", [["rk4"], {"a": 1}])
def test_unhashable_choices_named(bad):  # 41, 200
    with pytest.raises(ValueError, match="unknown `activation`"):
        small().replace(activation=bad)
    with pytest.raises(ValueError, match="unknown `method`"):
        tfk.integrate(small(), tfk.random_states(2, 2, 8), 2, method=bad)


# --------------------------------------------------------------- masked arrays
def test_masked_arrays_rejected():  # 48, 117, 118, 183, 277, 297, 298, 374
    p = small()
    w = np.ma.masked_array(p.wq.copy(), mask=np.zeros(p.wq.shape, bool))
    w[1, 2] = np.ma.masked
    with pytest.raises(TypeError, match="`wq` is a masked array"):
        p.replace(wq=w)
    x = np.ma.masked_array(tfk.random_states(2, 2, 8))
    with pytest.raises(TypeError, match="`X` is a masked array"):
        tfk.vector_field(p, x)
    with pytest.raises(TypeError, match="`x0` is a masked array"):
        tfk.integrate(p, x, 2)
    with pytest.raises(TypeError, match="`noise` is a masked array"):
        tfk.integrate(p, x.data, 2, noise=np.ma.masked_array([0.1, 0.1]))


# ---------------------------------------------------------- zero-size / shapes
def test_zero_size_dimensions_rejected():  # 20, 21, 23, 291, 292, 296, 311-313
    with pytest.raises(ValueError, match="`wq` must not have a zero-size dimension"):
        TP(wq=np.zeros((0, 0)), wk=np.zeros((0, 0)), wv=np.zeros((0, 0)), wo=np.zeros((0, 0)))
    with pytest.raises(ValueError, match="`linear` must not have a zero-size dimension"):
        TP.linear(np.zeros((0, 0)))
    with pytest.raises(ValueError, match="`linear` must not have a zero-size dimension"):
        TP.linear(np.zeros((0, 8, 8)))
    p = small()
    ffn0 = dict(w1=np.zeros((0, 4)), b1=np.zeros(4), w2=np.zeros((4, 0)), b2=np.zeros(0))
    with pytest.raises(ValueError, match="`b2` must not have a zero-size dimension"):
        TP(**ffn0)
    with pytest.raises(ValueError, match="`b2` must not have a zero-size dimension"):
        TP(**{k: np.zeros((0,) + getattr(p, k).shape) for k in ("w1", "b1", "w2", "b2")})
    with pytest.raises(ValueError, match="`wq` must not have a zero-size dimension"):
        p.replace(**{k: np.zeros((0, 8, 8)) for k in ("wq", "wk", "wv", "wo")})
    for shape in ((0, 2, 8), (2, 0, 8)):
        with pytest.raises(ValueError, match="`X` must not have a zero-size dimension"):
            tfk.vector_field(p, np.zeros(shape))


def test_ffn_with_d_ff_zero_still_valid():  # 22: the kernels handle m = 0 (f = b2 - γX)
    b2 = np.arange(8.0)
    p = TP(w1=np.zeros((8, 0)), b1=np.zeros(0), w2=np.zeros((0, 8)), b2=b2, damping=0.5)
    X = tfk.random_states(3, 4, 8, seed=1)
    assert p.d_ff == 0
    np.testing.assert_array_equal(tfk.vector_field(p, X), b2 - 0.5 * X)


def test_alpha_and_noise_types_named():  # 233, 234, 237
    p = small()
    x0 = tfk.random_states(2, 2, 8)
    with pytest.raises(TypeError, match="`alpha`"):
        tfk.integrate(p, x0, 2, method="averaged", alpha=[0.5, 1j])
    with pytest.raises(TypeError, match="`alpha`"):
        tfk.integrate(p, x0, 2, method="averaged", alpha=["a", "b"])
    with pytest.raises(TypeError, match="`noise`"):
        tfk.integrate(p, x0, 2, noise=["a", "b"])
    a = tfk.integrate(p, x0, 2, method="averaged", alpha=np.array(0.5))
    assert np.array_equal(a, tfk.integrate(p, x0, 2, method="averaged", alpha=0.5))


# ----------------------------------------------------------------- load / save
def test_load_garbage_names_file(tmp_path):  # 107
    f = tmp_path / "garbage.npz"
    f.write_bytes(b"not an archive at all" * 10)
    with pytest.raises(ValueError, match="garbage.npz.*not a .npz archive") as e:
        TP.load(f)
    assert "pickle" not in str(e.value).split("save():")[1]


def test_load_npy_and_object_arrays_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(ValueError, match="a.npy.*not a .npz archive"):
        TP.load(tmp_path / "a.npy")
    np.savez(tmp_path / "obj.npz", wq=np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match="obj.npz.*`wq` is unreadable") as e:
        TP.load(tmp_path / "obj.npz")
    assert "pickle" not in str(e.value).split("save():")[1]


def _saved(tmp_path, **override):
    p = small()
    f = tmp_path / "p.npz"
    p.save(f)
    with np.load(f) as z:
        kw = dict(z)
    for k, val in override.items():
        if val is None:
            kw.pop(k)
        else:
            kw[k] = val
    np.savez(f, **kw)
    return f


def test_load_missing_entry_named(tmp_path):  # 108
    with pytest.raises(ValueError, match="p.npz.*entry `n_heads` is missing"):
        TP.load(_saved(tmp_path, n_heads=None))


@pytest.mark.parametrize(
    "entry, value",
    [("n_heads", np.array([2, 2])), ("causal", np.array("False")), ("beta", np.array("1"))],
)
def test_load_malformed_entry_named(tmp_path, entry, value):  # 111, 120
    with pytest.raises(ValueError, match=f"p.npz.*entry `{entry}` must be a scalar"):
        TP.load(_saved(tmp_path, **{entry: value}))


def test_load_unknown_entry_named(tmp_path):  # 122
    with pytest.raises(ValueError, match=r"p.npz.*unknown entry \['extra'\]"):
        TP.load(_saved(tmp_path, extra=np.array(1)))


def test_load_invalid_weights_name_file(tmp_path):
    with pytest.raises(ValueError, match="p.npz.*`wk` must have shape"):
        TP.load(_saved(tmp_path, wq=np.zeros((3, 3))))


def test_load_without_suffix_and_round_trip(tmp_path):  # 105
    p = small()
    p.save(tmp_path / "noext")
    q = TP.load(tmp_path / "noext")
    assert q.n_heads == p.n_heads and q.causal is p.causal and q.activation == p.activation
    assert all(np.array_equal(getattr(p, k), getattr(q, k)) for k in ("wq", "w1", "b2"))
    with pytest.raises(FileNotFoundError, match="missing"):
        TP.load(tmp_path / "missing")


# ------------------------------------------------- values the dtype cannot hold
def test_dtype_none_rejected():  # 66, 139
    with pytest.raises(TypeError, match="`dtype` must be float32 or float64, got None"):
        tfk.random_states(2, 2, 3, dtype=None)
    with pytest.raises(TypeError, match="`dtype` must be float32 or float64, got None"):
        TP.random(d=8, n_heads=2, dtype=None)


def test_float32_overflowing_settings_named():  # 156, 300, 301
    with pytest.raises(ValueError, match="`beta`=1e\\+300 overflows float32"):
        TP.random(d=8, n_heads=2, beta=1e300, dtype=np.float32)
    with pytest.raises(ValueError, match="`damping`=1e\\+39 overflows float32"):
        TP.random(d=8, n_heads=2, damping=1e39, dtype=np.float32)
    with pytest.raises(ValueError, match="`scale`=1e\\+39 overflows float32"):
        tfk.random_states(2, 2, 3, dtype=np.float32, scale=1e39)
    assert TP.random(d=8, n_heads=2, beta=1e300).beta == 1e300  # fine in float64


def test_step_size_that_vanishes_named():  # 205
    p = small().astype(np.float32)
    x0 = tfk.random_states(2, 2, 8, dtype=np.float32)
    with pytest.raises(ValueError, match="step size .*`t_final`"):
        tfk.integrate(p, x0, 4, t_final=1e-300)
    with pytest.raises(ValueError, match="`noise`.*overflows float32"):
        tfk.integrate(p, x0, 2, noise=1e39)


def test_c_without_averaged_named():  # 242
    with pytest.raises(ValueError, match="`c` applies to method='averaged' only"):
        tfk.integrate(small(), tfk.random_states(2, 2, 8), 2, c=5.0)


def test_save_to_directory_named(tmp_path):  # 114, 125
    with pytest.raises(ValueError, match="`path` .* is a directory"):
        small().save(tmp_path)
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(ValueError, match="`path` .* is a directory"):
        small().save(tmp_path / "d")


@pytest.mark.parametrize(
    ("dtype", "scale"), [(np.float32, 1e30), (np.float64, 1e200)], ids=["qa177", "qa178"]
)
def test_vector_field_overflow_warns(dtype, scale):
    """bad-inputs 177, 178: f(X) overflowing the dtype returned NaN silently."""
    p = tfk.TransformerParams.random(d=8, n_heads=2, d_ff=16, seed=0, dtype=dtype)
    X = tfk.random_states(16, 4, 8, seed=0, dtype=dtype) * dtype(scale)
    with pytest.warns(RuntimeWarning, match="overflows"):
        out = tfk.vector_field(p, X)
    assert not np.isfinite(out).all()


def test_vector_field_finite_does_not_warn():
    p = tfk.TransformerParams.random(d=8, n_heads=2, d_ff=16, seed=0)
    X = tfk.random_states(4, 4, 8, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfk.vector_field(p, X)
