"""Weight ensembles: trajectory i runs member i, drawn in the kernel from key (seed, i).

Bits: a member run alone (``ens.member(i)`` with the ordinary kernels) against the same
trajectory in the ensemble run, for the flow, both decay modes and the Lyapunov kernel;
the same bits whatever the slicing and the thread count. Distribution: the moments of
the drawn weights against ``TransformerParams.random``'s. Studies: the decay study on an
ensemble against the mean of its members' runs; the geometry study likewise.
"""

import math

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import api, config, kernels
from tfkernels.kernels import draws
from tfkernels.studies import decay, geometry, lipschitz

#: Rows (T·d > config.LANES_MAX_SIZE): the member alone runs the row layout like the
#: ensemble, so even ``log r`` (whose lane-layout sums may be reassociated) is compared
#: bitwise; the flow's states are bit-identical in either layout.
T_ROWS, D = 40, 16
T_LANES = 4

STRUCTURES = {
    "post-layernorm-sequential-bias": dict(
        norm="layernorm", norm_position="post", block="sequential", bias=True
    ),
    "pre-rmsnorm-strang-linear": dict(norm="rmsnorm", block="strang", linear=True),
    "paper-parallel": dict(damping=1.0),
    "attention-only-sphere": dict(ffn=False, norm="sphere", norm_position="tangent"),
    "ffn-only-relu": dict(attention=False, activation="relu", damping=0.5),
}


def ensemble(dtype=np.float64, per_layer=False, **kw):
    base = dict(d=D, n_heads=2, d_ff=12, weight_scale=0.6, seed=7, dtype=dtype)
    return tfk.WeightEnsemble(per_layer=per_layer, **{**base, **kw})


@pytest.mark.parametrize("per_layer", [False, True], ids=["shared", "per_layer"])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_member_alone_gives_the_ensembles_states(name, per_layer, dtype):
    ens = ensemble(dtype, per_layer, **STRUCTURES[name])
    N, B = 5, 6
    kw = dict(method="rk4", t_final=1.0, noise=0.01, seed=3)
    for T in (T_LANES, T_ROWS):
        x0 = tfk.random_states(B, T, D, seed=1, dtype=dtype)
        out = tfk.integrate(ens, x0, N, save_every=1, start=20, throw=False, **kw)
        assert np.all(np.isfinite(out))
        for b in range(B):
            alone = tfk.integrate(
                ens.member(20 + b, N), x0[b : b + 1], N, save_every=1, start=20 + b, **kw
            )
            assert alone.tobytes() == out[b : b + 1].tobytes(), (T, b)


@pytest.mark.parametrize("per_layer", [False, True], ids=["shared", "per_layer"])
@pytest.mark.parametrize("name", ["post-layernorm-sequential-bias", "paper-parallel"])
def test_member_alone_gives_the_ensembles_vector_field(name, per_layer, dtype):
    """``vector_field(ens, X, start=s)[b]`` is member ``s + b``'s field, bit for bit
    (its draw for ``layer`` with per-layer draws), in either layout of the member."""
    ens = ensemble(dtype, per_layer, **STRUCTURES[name])
    N, B = 4, 5
    layer = 2 if per_layer else 0
    for T in (T_LANES, T_ROWS):
        x = tfk.random_states(B, T, D, seed=2, dtype=dtype)
        out = tfk.vector_field(ens, x, layer=layer, start=30)
        for b in range(B):
            alone = tfk.vector_field(ens.member(30 + b, N), x[b : b + 1], layer=layer)
            assert alone.tobytes() == out[b : b + 1].tobytes(), (T, b)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "sphere"])
def test_member_alone_gives_the_ensembles_final_norm(norm, dtype):
    ens = ensemble(dtype, norm=norm, norm_position="post", final_norm=True)
    x0 = tfk.random_states(7, T_LANES, D, seed=1, dtype=dtype)
    out = tfk.integrate(ens, x0, 3, start=4)
    plain = tfk.integrate(ens.replace(final_norm=False), x0, 3, start=4)
    if norm != "sphere":  # (the post sphere norm already left every token on the sphere)
        assert not np.array_equal(out, plain)
    for b in range(7):
        member = ens.member(4 + b)
        assert member.final_norm
        alone = tfk.integrate(member, x0[b : b + 1], 3, start=4 + b)
        assert alone.tobytes() == out[b : b + 1].tobytes(), b
    if norm != "sphere":  # own parameters per member (gain 1 + z/4)
        g = np.stack([ens.member(i).final_norm_gain for i in range(200)])
        assert abs(g.mean() - 1) < 5 * 0.25 / math.sqrt(g.size)
        assert abs(g.std() - 0.25) < 0.02


@pytest.mark.parametrize("per_layer", [False, True], ids=["shared", "per_layer"])
@pytest.mark.parametrize("mode", ["pair", "tangent"])
def test_member_alone_gives_the_ensembles_log_r(mode, per_layer, dtype):
    ens = ensemble(dtype, per_layer, norm="layernorm", norm_position="post", damping=0.5)
    N, B, start = 6, 5, 11
    kw = dict(mode=mode, method="heun", t_final=3.0, noise=0.01, seed=2)
    logr, status = decay.log_ratios(ens, B, T_ROWS, N, start=start, **kw)
    assert np.all(status == kernels.STATUS_OK)
    for b in range(B):
        g = start + b
        alone, st = decay.log_ratios(ens.member(g, N), 1, T_ROWS, N, start=g, **kw)
        assert st[0] == kernels.STATUS_OK
        assert alone[0].tobytes() == logr[b].tobytes(), b


def test_member_alone_gives_the_ensembles_lyapunov_sums(dtype):
    ens = ensemble(dtype, True, norm="rmsnorm", block="sequential")
    N, B, k, T = 6, 4, 3, 3
    a, b_, h, _ = api.prepare_run(ens, N, "rk4", 1.0, None, 1.0, 0.0)
    like = np.empty((T, D), dtype=dtype)

    def sums(model, start, n):
        expo, st = np.empty((n, k)), np.empty(n, dtype=np.int64)
        kernels.lyapunov_kernel(model, a, b_, h, 5, start, 1, 2, like, expo, st)
        assert np.all(st == kernels.STATUS_OK)
        return expo

    whole = sums(api.pack(ens), 9, B)
    for i in range(B):
        alone = sums(kernels.pack_params(ens.member(9 + i, N)), 9 + i, 1)
        assert alone.tobytes() == whole[i : i + 1].tobytes(), i


def test_any_slicing_and_thread_count_gives_the_same_bits(monkeypatch):
    ens = ensemble(per_layer=True, norm="layernorm", norm_position="post")
    kw = dict(mode="pair", t_final=2.0, seed=4)
    with tfk.api.threads(2):
        whole, _ = decay.log_ratios(ens, 37, T_LANES, 5, **kw)
    monkeypatch.setattr(config, "BLOCK", 3)  # other slices across the threads
    parts = [
        decay.log_ratios(ens, hi - lo, T_LANES, 5, start=lo, n_threads=n, **kw)[0]
        for lo, hi, n in ((0, 5, 1), (5, 6, 2), (6, 37, 2))
    ]
    assert np.concatenate(parts).tobytes() == whole.tobytes()
    study = {
        n: tfk.perturbation_decay(
            ens, 37, T_LANES, 5, chunk_size=8, n_threads=n, lambda_samples=2, **kw
        )
        for n in (1, 2)
    }
    for k in study[1].stats:
        assert study[1].stats[k].tobytes() == study[2].stats[k].tobytes(), k


# ------------------------------------------------------------------ the draw
def test_member_weights_have_randoms_distribution():
    d, m, s, n_members = 12, 20, 0.7, 300
    ens = tfk.WeightEnsemble(
        d=d, n_heads=3, d_ff=m, weight_scale=s, bias=True, linear=True, norm="layernorm", seed=1
    )
    members = [ens.member(i) for i in range(n_members)]
    ref = [
        tfk.TransformerParams.random(
            d, 3, m, weight_scale=s, bias=True, linear=True, norm="layernorm", seed=i
        )
        for i in range(n_members)
    ]
    expect = {  # name: (mean, variance)
        **{k: (0.0, s * s / d) for k in ("wq", "wk", "wv", "wo", "w1", "b1", "linear")},
        **{k: (0.0, s * s / d) for k in ("bq", "bk", "bv", "bo")},
        **{k: (0.0, s * s / m) for k in ("w2", "b2")},
        **{k: (1.0, 1 / 16) for k in ("attn_norm_gain", "ffn_norm_gain")},
        **{k: (0.0, 1 / 16) for k in ("attn_norm_bias", "ffn_norm_bias")},
    }
    for k, (mu, var) in expect.items():
        for group in (members, ref):
            x = np.concatenate([getattr(p, k).ravel() for p in group])
            n = x.size
            # mean within 5 standard errors; variance within 5 of its standard errors
            # (var of the sample variance of normals: 2σ⁴/(n − 1))
            assert abs(x.mean() - mu) < 5 * math.sqrt(var / n), k
            assert abs(x.var(ddof=1) - var) < 5 * var * math.sqrt(2 / (n - 1)), k
            z = (x - mu) / math.sqrt(var)
            assert abs(np.mean(z**4) - 3.0) < 5 * math.sqrt(96 / n), k  # normal kurtosis
    # members are independent of each other and of their own other entries
    a, b = members[0].wq.ravel(), members[1].wq.ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(a.size)
    w = np.stack([p.w1[0, :4] for p in members])  # 4 entries of one row, over members
    c = np.corrcoef(w.T)[np.triu_indices(4, 1)]
    assert np.all(np.abs(c) < 5 / math.sqrt(n_members))


def test_float32_members_are_the_float64_draw_rounded_and_seeds_differ():
    e64 = ensemble(np.float64, bias=True, norm="layernorm")
    e32 = e64.astype(np.float32)
    for k in ("wq", "w1", "b2", "bo", "attn_norm_gain", "ffn_norm_bias"):
        assert np.array_equal(getattr(e32.member(4), k), getattr(e64.member(4), k).astype("f4"))
    assert not np.array_equal(e64.member(4).wq, e64.member(5).wq)
    assert not np.array_equal(e64.member(4).wq, e64.replace(seed=8).member(4).wq)
    per = e64.replace(per_layer=True).member(4, n_layers=3)
    assert per.n_sets == 3
    assert np.array_equal(per.wq[0], e64.member(4).wq)  # set 0 is the shared draw
    assert not np.array_equal(per.wq[1], per.wq[0])


def test_every_drawn_entry_is_written():
    # The template's drawn entries are NaN (draws.pack_ensemble): a member is built as
    # TransformerParams, which refuses NaN, and the packed slice model must be finite.
    for kw in STRUCTURES.values():
        ens = ensemble(**kw)
        packed = ens.pack()
        (m,) = draws.member_model(packed, 3, 1)
        for arr in (*m.weights[:7], m.block.bqkv, m.block.bo):
            assert np.all(np.isfinite(arr))
        if ens.norm in ("layernorm", "rmsnorm"):
            assert np.all(np.isfinite(m.block.norm_gain))
            assert np.all(np.isfinite(m.block.norm_bias))
        ens.member(3)
        assert packed.draw.n_draws == sum(
            getattr(ens.member(0), k).size
            for k in (
                "wq wk wv wo w1 b1 w2 b2 linear bq bk bv bo attn_norm_gain attn_norm_bias "
                "ffn_norm_gain ffn_norm_bias"
            ).split()
            if getattr(ens.member(0), k) is not None
        )


# ------------------------------------------------------------------ studies
def test_decay_study_of_an_ensemble_is_the_mean_of_its_members():
    ens = ensemble(norm="layernorm", norm_position="post", block="sequential", weight_scale=0.45)
    n, N = 12, 6
    kw = dict(t_final=6.0, seed=3, mode="tangent")
    res = tfk.perturbation_decay(ens, n, T_LANES, N, chunk_size=5, lambda_samples=10, **kw)
    rows = np.stack(
        [decay.log_ratios(ens.member(i), 1, T_LANES, N, start=i, **kw)[0][0] for i in range(n)]
    )
    np.testing.assert_allclose(res.stats["mean"], rows.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(res.stats["max"], rows.max(axis=0), rtol=1e-12, atol=1e-15)
    assert res.config["params"]["ensemble"] is True
    fixed = tfk.perturbation_decay(ens.member(0), n, T_LANES, N, lambda_samples=4, **kw)
    assert not np.allclose(res.stats["mean"], fixed.stats["mean"])  # not one model
    # λ̂: the largest of the first members' estimates, each on its own trajectory
    m = lipschitz.n_sampled_trajectories(N, 10)
    assert m == 2
    lam = [
        lipschitz.estimate_lipschitz(
            ens.member(j), T_LANES, N, n_samples=5, seed=3, run={"t_final": 6.0}, start=j
        )[0]
        for j in range(m)
    ]
    assert res.lambda_hat == max(lam)
    assert "members 0..1" in res.meta["lambda_note"]


def test_geometry_study_of_an_ensemble_is_the_mean_of_its_members():
    ens = ensemble(norm="sphere", norm_position="post", ffn=False, weight_scale=1.0)
    n, N, T = 6, 4, 5
    res = tfk.token_geometry(ens, n, T, N, t_final=2.0, save_every=2, seed=1, chunk_size=4)
    x0 = tfk.random_states(n, T, D, seed=1)
    states = np.concatenate(
        [
            tfk.integrate(ens.member(i), x0[i : i + 1], N, t_final=2.0, save_every=2, start=i)
            for i in range(n)
        ]
    )
    cos = geometry.geometry_metrics(states, res.config["energy_beta"])["mean_cosine"]
    np.testing.assert_allclose(res.stats["mean_cosine_mean"], cos.mean(axis=0), rtol=1e-12)


def test_lyapunov_study_of_an_ensemble_runs_its_members():
    ens = ensemble(per_layer=True, norm="rmsnorm", damping=1.0)
    kw = dict(n_trajectories=6, seq_len=3, n_layers=6, t_final=1.0, k=2, seed=2)
    ly = tfk.lyapunov_spectrum(ens, chunk_size=4, **kw)
    assert ly.n_valid == 6 and ly.config["params"]["ensemble"] is True
    a, b, h, _ = api.prepare_run(ens, 6, "euler", 1.0, None, 1.0, 0.0)
    expo, st = np.empty((6, 2)), np.empty(6, dtype=np.int64)
    like = np.empty((3, D))
    for i in range(6):  # each member alone, through the ordinary kernel
        kernels.lyapunov_kernel(
            kernels.pack_params(ens.member(i, 6)), a, b, h, 2, i, 0, 1, like, expo[i:], st[i:]
        )
    np.testing.assert_allclose(ly.exponents, expo.mean(axis=0), rtol=1e-12)


def test_checkpointed_ensemble_study_resumes_to_the_same_bits(tmp_path):
    ens = ensemble(norm="layernorm", norm_position="post")
    kw = dict(chunk_size=4, lambda_samples=2, seed=1)
    path = tmp_path / "ck.json"
    first = tfk.perturbation_decay(ens, 10, T_LANES, 4, checkpoint=path, **kw)
    again = tfk.perturbation_decay(ens, 10, T_LANES, 4, checkpoint=path, **kw)
    assert again.meta["resumed_chunks"] == first.meta["n_chunks"]
    assert again.stats["mean"].tobytes() == first.stats["mean"].tobytes()
    with pytest.raises(ValueError, match="checkpoint"):
        tfk.perturbation_decay(ens.replace(seed=8), 10, T_LANES, 4, checkpoint=path, **kw)


def test_sweep_over_an_ensembles_weight_scale_is_the_study_at_each_scale():
    ens = ensemble(norm="layernorm", norm_position="post")
    kw = dict(n_trajectories=10, seq_len=T_LANES, n_layers=4, chunk_size=4, lambda_samples=2)
    sw = tfk.sweep("decay", ens, {"weight_scale": [0.3, 0.9]}, **kw)
    for point, scale in enumerate((0.3, 0.9)):
        alone = tfk.perturbation_decay(ens.replace(weight_scale=scale), **kw)
        assert sw.results[point].stats["mean"].tobytes() == alone.stats["mean"].tobytes()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kw, exc, name",
    [
        (dict(d=0), ValueError, "`d`"),
        (dict(n_heads=3), ValueError, "`n_heads`"),
        (dict(d_ff=0), ValueError, "`d_ff`"),
        (dict(weight_scale=-1.0), ValueError, "`weight_scale`"),
        (dict(seed=-1), ValueError, "`seed`"),
        (dict(seed=2**63), ValueError, "`seed`"),
        (dict(per_layer="yes"), TypeError, "`per_layer`"),
        (dict(final_norm=True), ValueError, "`final_norm`"),
        (dict(norm="batchnorm"), ValueError, "`norm`"),
        (dict(norm_position="post"), ValueError, "`norm_position`"),
        (dict(activation="swish"), ValueError, "`activation`"),
        (dict(dtype=np.int32), TypeError, "`dtype`"),
        (dict(bias=True, attention=False), ValueError, "`bias`"),
    ],
)
def test_bad_arguments_name_the_argument(kw, exc, name):
    with pytest.raises(exc, match=name):
        ensemble(**kw)


def test_bad_member_calls_and_unsupported_uses_name_the_argument():
    ens = ensemble()
    with pytest.raises(ValueError, match="`i`"):
        ens.member(-1)
    with pytest.raises(ValueError, match="`n_layers`"):
        ens.replace(per_layer=True).member(0)
    with pytest.raises(TypeError, match="unknown argument"):
        ens.replace(n_layers=3)
    x = tfk.random_states(2, 3, D)
    with pytest.raises(ValueError, match="`layer`"):
        tfk.vector_field(ens, x, layer=1)  # one weight set per member
    with pytest.raises(TypeError, match="`params` is a tfkernels.WeightEnsemble"):
        api.check_params(ens)  # a call that needs one TransformerParams
    with pytest.raises(TypeError, match="`x0` has dtype"):
        tfk.integrate(ens.astype(np.float32), x, 2)
