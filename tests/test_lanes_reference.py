"""The lane kernels against the plain-NumPy reference, on shapes that select them.

``integrate`` and ``vector_field`` run a batch on the lane kernels (trajectories across
the vector lanes) when a state has ``T·d <= config.LANES_MAX_SIZE`` elements, and on the
row kernels otherwise. ``tests/test_kernels.py`` draws shapes up to ``T·d = 33·96``, so
it meets the lanes only when a draw happens to be small; ``tests/test_lanes.py`` checks
the lanes give the row kernels' bits. Here every drawn shape selects the lanes (each
test asserts it), and the public API meets :mod:`tfkernels.reference` directly, with
the tolerances of ``config.RTOL`` (10× for 3 steps of ``integrate``, as in
``tests/test_kernels.py``).

The noise: the reference takes η as an input array, as it shares no code with the
kernels and has no generator. η_n is the package's counter-based draw keyed by the seed,
the trajectory and the layer, so :func:`kernel_noise` reads it back through the public
API: the zero vector field (``A = 0``) integrated from ``X_0 = 0`` with the noise on at
layer n only ends exactly at η_n (the layers before n keep 0, layer n adds η_n to 0, the
layers after it add ``Δt·0`` and no noise). It runs those calls on the row kernels
(``config.LANES_MAX_SIZE = 0``), so the noise the lanes are checked against does not
come from the lanes; the row kernels' noise meets the generator in
``test_kernels.test_noise_matches_reference``. What is tested here is where and how the
noise enters (after each layer's update, for every method, for trajectory
``start + b``), not the generator (``tests/test_rng.py``).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tfkernels as tfk
from test_kernels import build, rel_err
from tfkernels import config, reference

#: Largest width and sequence length drawn; their product is capped by the lane limit.
MAX_D = MAX_T = 64
N_LAYERS = 3
NOISE = [0.1, 0.0, 0.05]  # σ_n, one per layer; layer 1 has none
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])


@st.composite
def lane_models(draw):
    """A model and batch shape with ``T·d <= config.LANES_MAX_SIZE`` (the keys of
    ``test_kernels.build``, plus the noise settings of :func:`test_integrate_on_lanes`)."""
    d = draw(st.integers(1, min(MAX_D, config.LANES_MAX_SIZE)))
    T = draw(st.integers(1, min(MAX_T, config.LANES_MAX_SIZE // d)))
    divisors = [h for h in range(1, d + 1) if d % h == 0]
    attention, ffn, linear = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    return dict(
        d=d,
        T=T,
        n_heads=draw(st.sampled_from(divisors)),
        d_ff=draw(st.integers(1, 48)),
        B=draw(st.integers(1, 20)),  # one to three lane groups, the last partial
        activation=draw(st.sampled_from(sorted(tfk.ACTIVATIONS))),
        causal=draw(st.booleans()),
        beta=draw(st.sampled_from([0.5, 1.0, 2.0])),
        damping=draw(st.sampled_from([0.0, 0.7])),
        attention=attention,
        ffn=ffn,
        linear=linear or not (attention or ffn),
        per_layer=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
        noise=draw(st.booleans()),
        start=draw(st.integers(0, 100)),
        alpha=draw(st.sampled_from([None, 0.3, "accelerated"])),
        c=draw(st.sampled_from([1.0, 0.5])),
    )


def corner(**kw):
    """A model of every term with the given changes (for explicit ``@example`` cases)."""
    m = dict(
        d=8,
        T=4,
        n_heads=2,
        d_ff=12,
        B=17,
        activation="gelu",
        causal=False,
        beta=1.0,
        damping=0.7,
        attention=True,
        ffn=True,
        linear=True,
        per_layer=False,
        seed=7,
        noise=True,
        start=5,
        alpha="accelerated",
        c=0.5,
    )
    return dict(m, **kw)


#: Corners a small number of draws may miss: a state of exactly the lane limit with one
#: head, one-wide heads (H = d) over 64 tokens, the smallest state.
CORNERS = [
    corner(d=32, T=16, n_heads=1, causal=True),
    corner(
        d=8,
        T=64,
        n_heads=8,
        ffn=False,
        per_layer=True,
        activation="relu",
        B=9,
        causal=True,
        noise=False,
        alpha=0.3,
        c=1.0,
    ),
    corner(d=1, T=1, n_heads=1, attention=False, activation="tanh", B=1, alpha=None),
]


def with_corners(test):
    """Run ``test`` on :data:`CORNERS` before the drawn models."""
    for m in reversed(CORNERS):
        test = example(m=m)(test)
    return test


def assert_selects_lanes(m):
    assert m["T"] * m["d"] <= config.LANES_MAX_SIZE, "this shape runs on the row kernels"


def kernel_noise(dtype, B, T, d, sigma, seed, start):
    """η of shape ``(B, N, T, d)``: the noise that ``integrate(..., noise=sigma,
    seed=seed, start=start)`` adds after each layer, read back from the row kernels
    (see the module docstring)."""
    zero_field = tfk.TransformerParams.linear(np.zeros((d, d), dtype))
    x0 = np.zeros((B, T, d), dtype)
    eta = np.zeros((B, len(sigma), T, d), dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(config, "LANES_MAX_SIZE", 0)
        for n, s in enumerate(sigma):
            if s:
                only_n = np.where(np.arange(len(sigma)) == n, s, 0.0)
                eta[:, n] = tfk.integrate(
                    zero_field, x0, len(sigma), noise=only_n, seed=seed, start=start
                )
    return eta


def test_lanes_are_on():
    assert config.LANES_MAX_SIZE >= 1, "config.LANES_MAX_SIZE = 0 turns the lane kernels off"


@DTYPES
@settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@with_corners
@given(m=lane_models())
def test_vector_field_on_lanes(dtype, m):
    assert_selects_lanes(m)
    p, x0 = build(m, dtype, N_LAYERS)
    layer = m["seed"] % N_LAYERS if m["per_layer"] else 0
    got = tfk.vector_field(p, x0, layer=layer)
    assert got.dtype == dtype and got.shape == x0.shape
    want = reference.vector_field(p, x0, layer=layer)
    assert rel_err(got, want) < config.RTOL[np.dtype(dtype).name]


@DTYPES
@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "averaged"])
@settings(
    max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@with_corners
@given(m=lane_models())
def test_integrate_on_lanes(dtype, method, m):
    assert_selects_lanes(m)
    p, x0 = build(m, dtype, N_LAYERS)
    kw = dict(alpha=m["alpha"], c=m["c"]) if method == "averaged" else {}
    noise = NOISE if m["noise"] else 0.0
    got = tfk.integrate(
        p,
        x0,
        N_LAYERS,
        method=method,
        save_every=1,
        t_final=0.5,
        noise=noise,
        seed=m["seed"],
        start=m["start"],
        **kw,
    )
    assert got.dtype == dtype and got.shape == (m["B"], N_LAYERS + 1, m["T"], m["d"])
    eta = None
    if m["noise"]:
        eta = kernel_noise(dtype, m["B"], m["T"], m["d"], NOISE, m["seed"], m["start"])
        assert np.all(eta[:, 1] == 0) and np.all(eta[:, [0, 2]] != 0)
    want = reference.integrate(
        p, x0, N_LAYERS, method=method, save_every=1, t_final=0.5, eta=eta, **kw
    )
    assert rel_err(got, want) < 10 * config.RTOL[np.dtype(dtype).name]  # 3 steps of growth
