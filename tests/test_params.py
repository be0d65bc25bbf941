"""TransformerParams: construction, immutability, per-layer sets and .npz round trip."""

import numpy as np
import pytest

from tfkernels import TransformerParams


def test_random_shapes_and_scale():
    p = TransformerParams.random(d=64, n_heads=4, seed=0, weight_scale=2.0)
    assert p.d == 64 and p.d_ff == 256 and p.wq.shape == (64, 64) and p.w2.shape == (256, 64)
    # variance weight_scale² / fan_in, checked loosely on 64·256 draws
    assert abs(p.w1.var() * 64 / 4.0 - 1) < 0.05
    assert abs(p.w2.var() * 256 / 4.0 - 1) < 0.05


def test_immutable():
    p = TransformerParams.random(d=4, n_heads=1)
    with pytest.raises(ValueError):
        p.wq[0, 0] = 1.0
    with pytest.raises(AttributeError):
        p.damping = 2.0


def test_linear_constructor_and_field():
    A = -np.eye(3)
    p = TransformerParams.linear(A, damping=0.5)
    assert np.array_equal(p.linear, A) and not p.attention and not p.ffn and p.damping == 0.5
    assert TransformerParams.random(d=3, n_heads=1).linear is None


@pytest.mark.parametrize("n_layers", [None, 3])
def test_save_load_round_trip(tmp_path, n_layers):
    p = TransformerParams.random(
        d=6,
        n_heads=3,
        causal=True,
        activation="tanh",
        beta=0.7,
        damping=0.2,
        linear=True,
        n_layers=n_layers,
        seed=1,
        dtype=np.float32,
    )
    p.save(tmp_path / "p.npz")
    q = TransformerParams.load(tmp_path / "p.npz")
    for k in ("wq", "wk", "wv", "wo", "w1", "b1", "w2", "b2", "linear"):
        assert np.array_equal(getattr(p, k), getattr(q, k)) and getattr(q, k).dtype == np.float32
    assert (q.n_heads, q.beta, q.causal, q.damping, q.activation, q.n_sets) == (
        3,
        0.7,
        True,
        0.2,
        "tanh",
        n_layers,
    )


def test_per_layer_slices():
    p = TransformerParams.random(d=4, n_heads=2, n_layers=5, seed=0)
    assert p.n_sets == 5 and np.array_equal(p.layer(2).wq, p.wq[2]) and p.layer(2).n_sets is None
