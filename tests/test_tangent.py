"""The JVP and VJP kernels against the reference, and the fused state + tangent step
against the plain flow, bit for bit, in both kernel layouts."""

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import api, kernels
from tfkernels import reference as ref
from tfkernels.kernels import drivers, field, rng, structs

BOTH = structs.SUB_ATTN | structs.SUB_FFN  # the whole field


def directions(n, T, d, seed=0, start=0):
    """The unit directions U the decay study draws for trajectories ``start …``."""
    u = np.empty((n, T, d))
    rng._normal_batch(seed, rng.STREAM_DIRECTION, start, 1.0, u)
    return u / np.sqrt((u * u).sum(axis=(1, 2)))[:, None, None]


@pytest.mark.parametrize("activation", list(tfk.ACTIVATIONS))
@pytest.mark.parametrize("causal", [False, True])
def test_jvp_and_vjp_match_reference(activation, causal):
    p = tfk.TransformerParams.random(
        d=6,
        n_heads=2,
        d_ff=10,
        damping=0.5,
        linear=True,
        activation=activation,
        causal=causal,
        seed=3,
    )
    model = kernels.pack_params(p)
    X, V, G = (tfk.random_states(5, 4, 6, seed=s) for s in (1, 2, 3))
    layers = np.zeros(5, dtype=np.int64)
    jv, vj = np.empty_like(X), np.empty_like(X)
    kernels.jvp_kernel(X, V, model, layers, jv)
    kernels.vjp_kernel(X, G, model, layers, vj)
    np.testing.assert_allclose(jv, ref.jvp(p, X, V), rtol=1e-12, atol=1e-12)
    for b in range(5):  # the VJP is the adjoint: <G, J V> = <Jᵀ G, V>
        J = ref.jacobian(p, X[b])
        np.testing.assert_allclose(vj[b].ravel(), J.T @ G[b].ravel(), rtol=1e-12, atol=1e-12)


def test_heads_in_groups_give_the_same_bits():
    """Past ``config.SOFTMAX_BLOCK_BYTES`` the scratch holds fewer heads' probabilities
    than H: the flow takes the heads in groups and the tangent recomputes each group,
    with the same bits as when all heads fit."""
    p = tfk.TransformerParams.random(d=6, n_heads=3, d_ff=10, damping=0.5, causal=True, seed=3)
    model = kernels.pack_params(p)
    X, V = (tfk.random_states(1, 4, 6, seed=s)[0] for s in (1, 2))
    fs = structs.step_scratch(structs.ROWS, model, 4, 6, 1, X.dtype).field
    ts = structs.tangent_scratch(structs.ROWS, model, 4, 6, 1, X.dtype)
    assert fs.P.shape == (4, 12)  # all three heads side by side
    jvp_all, f_all = np.empty_like(X), np.empty_like(X)
    field.rhs_and_jvp_rows(X, V, model, 0, BOTH, f_all, jvp_all, fs, ts)
    for g in (1, 2):  # groups {0}{1}{2} and {0,1}{2}
        few = fs._replace(mt=np.empty((3, 4 * g)), P=np.empty((4, 4 * g)))
        jvp_g, f_g, flow_g = np.empty_like(X), np.empty_like(X), np.empty_like(X)
        field.rhs_and_jvp_rows(X, V, model, 0, BOTH, f_g, jvp_g, few, ts)
        field.rhs_rows(X, model, 0, BOTH, flow_g, few)
        np.testing.assert_array_equal(jvp_g, jvp_all)
        np.testing.assert_array_equal(f_g, f_all)
        np.testing.assert_array_equal(flow_g, f_all)
    np.testing.assert_allclose(jvp_all, ref.jvp(p, X[None], V[None])[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f_all, ref.vector_field(p, X[None])[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "method, activation, causal",
    [
        ("euler", "gelu", False),
        ("rk4", "gelu", True),
        ("heun", "tanh", False),
        ("averaged", "relu", True),
    ],
)
def test_tangent_state_follows_the_flow_bit_for_bit(dtype, method, activation, causal):
    """The fused primal + tangent step advances X exactly as ``tfk.integrate`` does
    (``tests/test_lanes.py`` checks the lane layout's tangent against the rows')."""
    p = tfk.TransformerParams.random(
        d=8,
        n_heads=2,
        damping=0.5,
        linear=True,
        seed=4,
        activation=activation,
        causal=causal,
        dtype=dtype,
    )
    N, T, seed, g = 6, 5, 3, 2
    kw = dict(method=method, t_final=1.0, alpha=None, c=1.0, noise=0.1)
    sched = kernels.Schedule(*api.prepare_run(p, N, **kw))
    model = kernels.pack_params(p)
    x0 = tfk.random_states(1, T, 8, seed=0, dtype=dtype)
    X, D = x0[0].copy(), directions(1, T, 8)[0].astype(dtype)
    ss = structs.step_scratch(structs.ROWS, model, T, 8, sched.b.shape[0], X.dtype)
    ts = structs.tangent_scratch(structs.ROWS, model, T, 8, sched.b.shape[0], X.dtype)
    key = np.uint64(rng.key(seed, rng.STREAM_NOISE, g))
    status = drivers.run_tangent(
        X, D, model, structs.NO_DRAW, g, sched, key, 0.0, ss, ts, np.empty(N + 1)
    )
    assert status == kernels.STATUS_OK
    flow = tfk.integrate(p, x0, N, seed=seed, start=g, **kw)
    np.testing.assert_array_equal(X, flow[0])
