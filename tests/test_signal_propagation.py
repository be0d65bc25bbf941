"""Giorlandino & Goldt's cosine recursion (tfkernels.studies.signal_propagation): the
ReLU kernel and one block's map against Monte Carlo estimates of their defining
expectations, the limits and branches of the recursion, the equicorrelated states, and
the kernels' post-LN model against the reference's block."""

import math

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import reference as ref
from tfkernels.studies import signal_propagation as sp


@pytest.mark.parametrize("c", [-0.6, 0.0, 0.35, 0.9])
def test_relu_kernel_against_monte_carlo(c):
    rng = np.random.default_rng(0)
    n = 400_000
    u = rng.standard_normal(n)
    w = c * u + math.sqrt(1 - c * c) * rng.standard_normal(n)
    prod = np.maximum(u, 0) * np.maximum(w, 0)
    se = prod.std() / math.sqrt(n)
    assert abs(prod.mean() - sp.relu_kernel(c) / 2) < 4 * se


def test_relu_kernel_values():
    assert sp.relu_kernel(1.0) == pytest.approx(1.0, abs=1e-15)
    assert sp.relu_kernel(0.0) == pytest.approx(1 / math.pi, abs=1e-15)
    assert sp.relu_kernel(-1.0) == pytest.approx(0.0, abs=1e-15)
    c = np.linspace(-1, 1, 101)
    k = sp.relu_kernel(c)
    assert np.all(np.diff(k) > 0) and np.all(k >= c)  # increasing, above the identity


def mean_cosine(Z):
    U = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    C = U @ U.T
    T = len(Z)
    return (C.sum() - np.trace(C)) / (T * (T - 1))


def reference_block(X, rng, var_v=0.2, var_w=0.2, var_b=4e-4):
    """One block of the recursion's model with freshly drawn weights, from the
    reference: uniform attention (Q = K = 0), W_o = I, ReLU MLP, post-LN, α = 1."""
    d = X.shape[1]

    def draw(shape, var):
        return rng.standard_normal(shape) * math.sqrt(var)

    zero = np.zeros((d, d))
    a = ref.attention(X, zero, zero, draw((d, d), var_v / d), np.eye(d), 1, bv=draw(d, var_b))
    Y = ref.token_norm(X + a, "layernorm", eps=1e-12)
    w1, b1 = draw((d, d), var_w / d), draw(d, var_b)
    w2, b2 = draw((d, d), var_w / d), draw(d, var_b)
    return ref.token_norm(Y + ref.ffn(Y, w1, b1, w2, b2, "relu"), "layernorm", eps=1e-12)


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_block_map_against_monte_carlo(p):
    """The map is E over the weights of the cosine after one block, at large width."""
    d, T, n = 256, 4, 48
    rng = np.random.default_rng(1)
    X = sp.equicorrelated_states(n, T, d, p, seed=2)
    vals = np.array([mean_cosine(reference_block(X[k], rng)) for k in range(n)])
    se = vals.std(ddof=1) / math.sqrt(n)
    # the sample mean within 4 standard errors, plus 1/d for the finite width's bias
    assert abs(vals.mean() - sp.block_cosine_map(p, seq_len=T)) < 4 * se + 1 / d
    if p < 0.5:  # the 1/T term, (1 − p)/T, is resolved here: the T -> infinity form is off
        assert abs(sp.block_cosine_map(p, seq_len=T) - sp.block_cosine_map(p)) > 4 * se + 1 / d


def test_recursion_limits_and_branches():
    r = sp.cosine_recursion(0.3, 40)
    assert r.shape == (41,) and r[0] == 0.3
    assert np.all(np.diff(r) > 0) and r[-1] < 1  # rank collapse: rising to 1
    assert sp.block_cosine_map(1.0) == pytest.approx(1.0, abs=1e-15)  # 1 is a fixed point
    # finite T tends to the paper's T -> infinity form
    assert sp.block_cosine_map(0.3, seq_len=10**9) == pytest.approx(sp.block_cosine_map(0.3))
    # the REM branch: nothing changes below beta_c = sqrt(2/(1 - p)), more signal above
    p = 0.3
    bc = math.sqrt(2 / (1 - p))
    assert sp.attention_overlaps(p, beta=0.99 * bc) == (p, p)
    q, pa = sp.attention_overlaps(p, beta=2 * bc)
    assert pa == p and q == pytest.approx(p + (1 - p) / 2)
    assert sp.block_cosine_map(p, beta=2 * bc) < sp.block_cosine_map(p)
    # no skips at all and no MLP bias: the attention alone makes the tokens identical
    assert sp.block_cosine_map(0.3, alpha_attn=0.0, var_b=0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="seq_len"):
        sp.cosine_recursion(0.3, 5, seq_len=8, beta=1.0)


def test_equicorrelated_states():
    X = sp.equicorrelated_states(3, 6, 20, 0.4, seed=0)
    assert X.shape == (3, 6, 20)
    np.testing.assert_allclose(X.mean(axis=-1), 0, atol=1e-14)
    G = np.einsum("bid,bjd->bij", X, X) / 20
    want = np.full((6, 6), 0.4) + 0.6 * np.eye(6)
    np.testing.assert_allclose(G, np.broadcast_to(want, G.shape), atol=1e-13)
    # a gain-1 LayerNorm (eps -> 0) leaves them unchanged
    np.testing.assert_allclose(ref.token_norm(X, "layernorm", eps=0.0), X, atol=1e-13)
    with pytest.raises(ValueError, match="cosine"):
        sp.equicorrelated_states(1, 4, 10, 1.0)


def test_post_ln_params_is_the_recursions_block():
    """One kernel layer (Δt = 1) of post_ln_params is LN(x + attn), then LN(y + MLP)."""
    d, T, L = 16, 5, 2
    p = sp.post_ln_params(d, L, beta=0.7, seed=3)
    assert p.n_heads == 1 and p.activation == "relu" and p.d_ff == d
    X0 = sp.equicorrelated_states(2, T, d, 0.3, seed=4)
    snaps = tfk.integrate(p, X0, n_layers=L, t_final=float(L), save_every=1)
    for b in range(2):
        X = X0[b]
        for n in range(L):
            w = {k: getattr(p, k)[n] for k in ("wq", "wk", "wv", "wo", "bv")}
            a = ref.attention(X, w["wq"], w["wk"], w["wv"], w["wo"], 1, beta=0.7, bv=w["bv"])
            Y = ref.token_norm(X + a, "layernorm", eps=1e-12)
            h = ref.ffn(Y, p.w1[n], p.b1[n], p.w2[n], p.b2[n], "relu")
            X = ref.token_norm(Y + h, "layernorm", eps=1e-12)
            np.testing.assert_allclose(snaps[b, n + 1], X, rtol=0, atol=1e-12)
