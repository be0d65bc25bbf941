"""The compiled kernels against the plain-NumPy reference, over many random models.

Tolerances (``config.RTOL``) are norm-wise relative errors: float64 kernels differ from
the float64 reference by summation order and FMA only; float32 kernels by float32
rounding of sums of up to d·m terms, which stays well below 1e-5 relative here.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfkernels as tfk
from tfkernels import config, reference
from tfkernels.kernels import aligned_buffers, empty_aligned, rng


def rel_err(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-300)


@st.composite
def models(draw):
    d = draw(st.integers(1, 96))
    heads = draw(st.sampled_from([h for h in range(1, d + 1) if d % h == 0]))
    terms = draw(st.sampled_from(["all", "attention", "ffn", "linear", "attention+linear"]))
    return dict(
        d=d,
        n_heads=heads,
        d_ff=draw(st.integers(1, 64)),
        T=draw(st.integers(1, 33)),
        B=draw(st.integers(1, 5)),
        activation=draw(st.sampled_from(sorted(tfk.ACTIVATIONS))),
        causal=draw(st.booleans()),
        beta=draw(st.sampled_from([0.5, 1.0, 2.0])),
        damping=draw(st.sampled_from([0.0, 0.7])),
        attention="attention" in terms or terms == "all",
        ffn=terms in ("all", "ffn"),
        linear="linear" in terms or terms == "all",
        per_layer=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
        symmetric=draw(st.booleans()),
    )


def build(m, dtype, n_layers=3):
    p = tfk.TransformerParams.random(
        m["d"],
        m["n_heads"],
        m["d_ff"],
        damping=m["damping"],
        beta=m["beta"],
        activation=m["activation"],
        causal=m["causal"],
        attention=m["attention"],
        ffn=m["ffn"],
        linear=m["linear"],
        n_layers=n_layers if m["per_layer"] else None,
        seed=m["seed"],
        dtype=dtype,
    )
    if m.get("symmetric") and m["attention"]:
        p = p.replace(wk=p.wq, bk=p.bq)  # W_q = W_k: the softmax's shared exponentials
    x0 = tfk.random_states(m["B"], m["T"], m["d"], seed=m["seed"], dtype=dtype)
    return p, x0


SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@SETTINGS
@given(m=models())
def test_vector_field_matches_reference(dtype, m):
    p, x0 = build(m, dtype)
    layer = 2 if m["per_layer"] else 0
    got = tfk.vector_field(p, x0, layer=layer)
    assert got.dtype == dtype and got.shape == x0.shape
    assert (
        rel_err(got, reference.vector_field(p, x0, layer=layer)) < config.RTOL[np.dtype(dtype).name]
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "averaged"])
@settings(
    max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(m=models())
def test_integrate_matches_reference(dtype, method, m):
    n_layers = 3
    p, x0 = build(m, dtype, n_layers)
    kw = dict(alpha="accelerated", c=0.5) if method == "averaged" else {}
    got = tfk.integrate(p, x0, n_layers, method=method, save_every=1, t_final=0.5, **kw)
    assert got.dtype == dtype and got.shape == (m["B"], n_layers + 1, m["T"], m["d"])
    want = reference.integrate(p, x0, n_layers, method=method, save_every=1, t_final=0.5, **kw)
    assert rel_err(got, want) < 10 * config.RTOL[np.dtype(dtype).name]  # 3 steps of error growth


def noise_from_generator(seed, start, B, sigma, shape):
    """η_n of trajectory start+b, drawn with the package's counter-based generator."""
    eta = np.empty((B, len(sigma)) + shape)
    for b in range(B):
        k = np.uint64(rng.key(seed, rng.STREAM_NOISE, start + b))  # keys are uint64
        for n, s in enumerate(sigma):
            rng.fill_normal(k, n * eta[b, n].size, s, eta[b, n])
    return eta


@pytest.mark.parametrize("method", ["euler", "rk4", "averaged"])
def test_noise_matches_reference(method):
    p = tfk.TransformerParams.random(d=6, n_heads=2, d_ff=8, damping=1.0, seed=2)
    x0 = tfk.random_states(4, 3, 6, seed=5)
    sigma = np.array([0.1, 0.0, 0.3, 0.05])
    got = tfk.integrate(p, x0, 4, method=method, noise=sigma, seed=9, start=7)
    eta = noise_from_generator(9, 7, 4, sigma, (3, 6))
    want = reference.integrate(p, x0, 4, method=method, eta=eta)
    assert rel_err(got, want) < 1e-12
    # the noise really is there
    assert rel_err(tfk.integrate(p, x0, 4, method=method), want) > 1e-3


def test_noise_is_standard_normal():
    z = np.empty(200_000)
    rng.fill_normal(rng.key(0, rng.STREAM_NOISE, 0), 0, 1.0, z)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.mean(z**4) - 3) < 0.05  # kurtosis of a normal


def test_averaged_with_default_alpha_is_euler(small_params):
    x0 = tfk.random_states(5, 3, 6, seed=0, dtype=small_params.dtype)
    a = tfk.integrate(small_params, x0, 16, method="averaged", alpha=None, c=1.0)
    e = tfk.integrate(small_params, x0, 16, method="euler")
    assert np.array_equal(a, e)


def test_softmax_ties_and_zero_rows(dtype):
    # all-zero and constant tokens make every score equal: uniform attention
    p = tfk.TransformerParams.random(d=4, n_heads=2, d_ff=4, seed=0, dtype=dtype)
    x = np.zeros((2, 5, 4), dtype=dtype)
    x[1] = 3.0
    got = tfk.vector_field(p, x)
    assert rel_err(got, reference.vector_field(p, x)) < config.RTOL[np.dtype(dtype).name]


def test_save_every_snapshots(small_params):
    x0 = tfk.random_states(3, 3, 6, seed=0, dtype=small_params.dtype)
    snaps = tfk.integrate(small_params, x0, 8, method="heun", save_every=4)
    assert snaps.shape == (3, 3, 3, 6)
    assert np.array_equal(snaps[:, 0], x0)
    assert np.array_equal(snaps[:, -1], tfk.integrate(small_params, x0, 8, method="heun"))
    assert np.array_equal(
        snaps[:, 1], tfk.integrate(small_params, x0, 4, method="heun", t_final=0.5)
    )


@pytest.mark.parametrize("shape", [(3,), (5, 7), (1, 8, 8), (2, 3, 4)])
def test_empty_aligned_is_a_64_byte_aligned_c_array(shape, dtype):
    for _ in range(8):  # several allocations: the offset varies
        a = empty_aligned(shape, dtype)
        assert a.shape == shape and a.dtype == np.dtype(dtype)
        assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
        assert a.ctypes.data % 64 == 0


def test_aligned_buffers_do_not_overlap(dtype):
    shapes = [(3,), (5, 7), (1, 8, 8), (0, 4), (2, 3, 4)]
    bufs = aligned_buffers(shapes, dtype)
    assert [b.shape for b in bufs] == shapes
    for i, b in enumerate(bufs):
        assert b.flags.c_contiguous and b.flags.writeable
        assert b.size == 0 or b.ctypes.data % 64 == 0  # an empty array has no data
        b[...] = i
    for i, b in enumerate(bufs):  # no write reached another buffer
        assert np.all(b == i)
