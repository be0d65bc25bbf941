"""Dong et al.'s ablation (tfkernels.studies.rank_collapse): every variant's kernel run
against the reference's composition of the sub-layers (the "no residual" layer is
forward Euler with Δt = 1 and damping 1), and the study's numbers against the residual
ratio formed directly from reference states."""

import math

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import reference as ref
from tfkernels.studies import rank_collapse as rc

D, H, M, T, L = 8, 2, 12, 5, 3


def weights(seed=1):
    # a larger scale than BERT's so that the attention is far from uniform and the
    # sub-layers' outputs are of the size of the state (a strict test of the rounding)
    w = rc.bert_weights(D, L, d_ff=M, seed=seed)
    return {k: a * 20.0 for k, a in w.items()}


def sub_layers(w, layer):
    """g, h and LN of one layer, from the reference."""

    def g(X):
        return ref.attention(X, *(w[k][layer] for k in ("wq", "wk", "wv", "wo")), n_heads=H)

    def h(X):
        zero_m, zero_d = np.zeros(M), np.zeros(D)
        return ref.ffn(X, w["w1"][layer], zero_m, w["w2"][layer], zero_d, "gelu")

    def ln(X):
        return ref.token_norm(X, "layernorm", eps=rc.BERT_EPS)

    return g, h, ln


def reference_layer(variant, w, layer, X):
    g, h, ln = sub_layers(w, layer)
    if variant == "attention":
        return ln(g(X))
    if variant == "attention+skip":
        return ln(X + g(X))
    if variant == "attention+ffn":
        Y = ln(g(X))
        return ln(Y + h(Y))
    if variant == "attention+ffn (no skips)":
        return ln(h(ln(g(X))))
    Y = ln(X + g(X))
    return ln(Y + h(Y))


def test_no_residual_layer_is_the_sublayer_itself():
    """Euler, Δt = 1, damping 1, attention only, no norm: X_{n+1} = g_n(X_n)."""
    w = weights()
    p = tfk.TransformerParams(**{k: w[k] for k in ("wq", "wk", "wv", "wo")}, n_heads=H, damping=1.0)
    X0 = tfk.random_states(3, T, D, seed=5)
    snaps = tfk.integrate(p, X0, n_layers=L, t_final=float(L), save_every=1)
    for b in range(3):
        X = X0[b]
        for layer in range(L):
            X = sub_layers(w, layer)[0](X)
            # X + (g − X) rounds once at the scale of X and g
            tol = 4e-15 * max(np.abs(X).max(), np.abs(snaps[b, layer]).max())
            np.testing.assert_allclose(snaps[b, layer + 1], X, rtol=0, atol=tol)


@pytest.mark.parametrize("variant", rc.VARIANTS)
def test_variant_matches_reference(variant):
    w = weights()
    p, n_run, every = rc.variant_params(variant, w, n_heads=H)
    assert n_run == every * L
    X0 = tfk.random_states(2, T, D, seed=7)
    snaps = tfk.integrate(p, X0, n_layers=n_run, t_final=float(n_run), save_every=every)
    assert snaps.shape == (2, L + 1, T, D)
    for b in range(2):
        X = X0[b]
        for layer in range(L):
            X = reference_layer(variant, w, layer, X)
            # LayerNorm outputs are O(1); a few roundings of X per sub-step, amplified
            # by the LayerNorm's 1/std (at most ~10 here)
            np.testing.assert_allclose(snaps[b, layer + 1], X, rtol=0, atol=1e-12)


def test_variants_differ():
    """The variants are five different maps (a mix-up of the skips would show here)."""
    w = weights()
    X0 = tfk.random_states(1, T, D, seed=9)
    outs = []
    for variant in rc.VARIANTS:
        p, n_run, every = rc.variant_params(variant, w, n_heads=H)
        outs.append(tfk.integrate(p, X0, n_layers=n_run, t_final=float(n_run))[0])
    for i in range(len(outs)):
        for j in range(i):
            assert np.abs(outs[i] - outs[j]).max() > 1e-3, (rc.VARIANTS[i], rc.VARIANTS[j])


def dong_ratio(X):
    """Dong et al.'s ratio with their composite norm, from its definition."""
    R = X - X.mean(axis=0, keepdims=True)

    def comp(A):
        return math.sqrt(np.abs(A).sum(axis=0).max() * np.abs(A).sum(axis=1).max())

    return comp(R) / comp(X)


def test_rank_collapse_by_depth_against_reference():
    out = rc.rank_collapse_by_depth(
        "attention+ffn", d=D, n_heads=H, d_ff=M, seq_len=T, n_layers=L, n_models=2, n_inputs=3
    )
    assert out["composite"].shape == out["frobenius"].shape == (2, L + 1)
    assert out["n_nonfinite"] == 0
    for k in range(2):
        w = rc.bert_weights(D, L, d_ff=M, seed=k)
        X0 = tfk.random_states(3, T, D, seed=k)  # x0="normal" with seed k
        vals = np.zeros(L + 1)
        for b in range(3):
            X = X0[b]
            vals[0] += dong_ratio(X) / 3
            for layer in range(L):
                X = reference_layer("attention+ffn", w, layer, X)
                vals[layer + 1] += dong_ratio(X) / 3
        # a ratio's absolute error is that of the states' rounding (~1e-16, relative to
        # their size) and of the study's fixed-point sums (2^-52): atol 1e-15
        np.testing.assert_allclose(out["composite"][k], vals, rtol=1e-9, atol=1e-15)


def test_bert_weights_scale():
    w = rc.bert_weights(64, 2, seed=0)
    assert w["w1"].shape == (2, 64, 256) and w["w2"].shape == (2, 256, 64)
    s = rc.BERT_STD * math.sqrt(rc.BERT_WIDTH / 64)
    for a in w.values():  # 8k-33k draws each: the sample std within 3 %
        assert abs(a.std() / s - 1) < 0.03


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        rc.variant_params("san", weights(), n_heads=H)
