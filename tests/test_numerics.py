"""Honest numerics of the decay study (issue 15, part 3): the pair mode's
renormalization, overflow-safe norms, a quantile sketch without a range, ε checked
against the dtype, undetermined results, plots of anything, and λ̂ at huge states and
independent of Numba's cache.

Each test names the attempts (#) of ``../shared/qa/bad-inputs.md`` it covers.
"""

import argparse
import json
import math
import re
import warnings

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import config, kernels
from tfkernels import reference as ref
from tfkernels.cli import decay as decay_cli
from tfkernels.kernels import maths, rng
from tfkernels.studies import decay, lipschitz, stats
from tfkernels.studies.stats import DecayStats

OK = kernels.STATUS_OK


def directions(n, T, d, seed=0):
    """The unit directions U the study draws for trajectories 0 … n − 1."""
    u = np.empty((n, T, d))
    rng._normal_batch(seed, rng.STREAM_DIRECTION, 0, 1.0, u)
    return u / np.sqrt((u * u).sum(axis=(1, 2)))[:, None, None]


def small(damping, dtype=np.float64, **kw):
    return tfk.TransformerParams.random(
        d=4, n_heads=2, d_ff=8, damping=damping, seed=0, dtype=dtype, **kw
    )


@pytest.fixture(params=[True, False], ids=["lanes", "rows"])
def layout(request, monkeypatch):
    """Run the decay kernels in the lane layout (T·d = 12) or force the row layout."""
    if not request.param:
        monkeypatch.setattr(config, "LANES_MAX_SIZE", 0)
    return request.param


# ----------------------------------------------------- pair-mode renormalization
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_pair_follows_tangent_under_strong_damping(dtype, layout):  # 394, 427
    p = small(60.0, dtype)
    kw = dict(seed=1)
    pair, st_p = decay.log_ratios(p, 40, 3, 64, mode="pair", **kw)
    tan, st_t = decay.log_ratios(p, 40, 3, 64, mode="tangent", **kw)
    assert np.all(st_p == OK) and np.all(st_t == OK)
    assert tan[:, -1].mean() < -150  # e^-150: far below any fixed floor of ‖X − Y‖
    if dtype == np.float64:  # ε = 1e-6, rounding below 2^-24 per layer
        np.testing.assert_allclose(pair, tan, atol=1e-5, rtol=0)
    else:  # ε = 1e-3, rounding up to 2^-8 per layer (PAIR_FLOOR_F32)
        np.testing.assert_allclose(pair, tan, atol=0.02, rtol=2e-3)
        np.testing.assert_allclose(pair.mean(axis=0), tan.mean(axis=0), atol=0.02, rtol=2e-4)


def test_pair_follows_tangent_under_expansion(layout):
    A = 6.0 * np.eye(4) + np.random.default_rng(0).standard_normal((4, 4))
    p = small(0.0).replace(linear=A)
    pair, st_p = decay.log_ratios(p, 24, 3, 32, mode="pair", t_final=4.0)
    tan, _ = decay.log_ratios(p, 24, 3, 32, mode="tangent", t_final=4.0)
    assert np.all(st_p == OK) and tan[:, -1].min() > 15  # ‖X − Y‖ grew far beyond 2^10·ε
    np.testing.assert_allclose(pair, tan, atol=1e-3, rtol=0)  # O(2^10·ε) nonlinearity


def test_pair_renormalization_matches_the_reference(layout):
    p = small(30.0, linear=True)
    N, T, n, eps = 24, 3, 12, 1e-6
    logr, st = decay.log_ratios(p, n, T, N, mode="pair", eps=eps, seed=2)
    assert np.all(st == OK) and logr[:, -1].max() < -8  # renormalized at least once
    x0 = tfk.random_states(n, T, 4, seed=2)
    expect = ref.perturbation_ratios(p, x0, directions(n, T, 4, seed=2), eps, N, log=True)
    np.testing.assert_allclose(logr, expect, atol=1e-7, rtol=0)
    with np.errstate(divide="ignore"):
        plain = ref.perturbation_ratios(
            p, x0, directions(n, T, 4, seed=2), eps, N, band=np.inf, floor=0.0, log=True
        )
    assert np.abs(plain - expect).max() > 1e-3  # without it the pair drowns in rounding


def test_reference_pair_mode_renormalizes_on_a_linear_system():
    A = np.random.default_rng(3).standard_normal((3, 3))
    p = tfk.TransformerParams.linear(A, damping=290.0)
    N = 300
    x0 = np.random.default_rng(4).standard_normal((2, 2, 3))
    u = np.random.default_rng(5).standard_normal((2, 2, 3))
    u /= np.sqrt((u * u).sum(axis=(1, 2)))[:, None, None]
    M = np.eye(3) + (A - 290.0 * np.eye(3)) / N  # X_{n+1} = X_n M
    exact = np.zeros((2, N + 1))
    for b in range(2):  # log ‖u Mⁿ‖, renormalized every step
        D = u[b].copy()
        for k in range(N):
            D = D @ M
            nrm = np.linalg.norm(D)
            exact[b, k + 1] = exact[b, k] + math.log(nrm)
            D /= nrm
    assert exact[:, -1].max() < -900  # r_N ≈ e^-960: below float64's e^-745
    pair = ref.perturbation_ratios(p, x0, u, 1e-6, N, log=True)
    np.testing.assert_allclose(pair, exact, atol=1e-6, rtol=0)
    with np.errstate(divide="ignore"):
        plain = ref.perturbation_ratios(p, x0, u, 1e-6, N, band=np.inf, floor=0.0, log=True)
    assert not np.all(np.isfinite(plain))  # X − Y underflowed to 0


# ------------------------------------------------------------ overflow-safe norms
def growing_params(gain):
    """relu FFN: x₀ > 0 grows by ~gain/N per layer, x₀ ≤ 0 decays."""
    return tfk.TransformerParams(
        w1=np.array([[1.0], [0.0]]),
        b1=np.zeros(1),
        w2=np.array([[gain, 0.0]]),
        b2=np.zeros(2),
        activation="relu",
        damping=1.0,
    )


def test_pair_keeps_huge_finite_states(layout):  # 398
    p = growing_params(1e30)  # X reaches 1e230: ‖X − Y‖² of the plain pair overflowed
    pair, st_p = decay.log_ratios(p, 64, 1, 8, mode="pair", seed=3)
    tan, st_t = decay.log_ratios(p, 64, 1, 8, mode="tangent", seed=3)
    assert np.all(st_p == OK) and np.all(st_t == OK)
    assert pair[:, -1].max() > 400
    np.testing.assert_allclose(pair, tan, atol=1e-6, rtol=0)
    res = tfk.perturbation_decay(p, 64, 1, 8, seed=3, lambda_samples=4)
    assert res.n_valid == 64 and res.regime == "expanding"


def test_scaled_norms_neither_overflow_nor_underflow():
    for scale in (1e200, 1e-200, 1.0):
        A = np.array([[3.0, -4.0], [0.0, 12.0]]) * scale
        B = np.zeros((2, 2))
        expect = math.log(13.0) + math.log(scale)
        assert maths.scaled_log_norm(A, B, 0, 1, True) == pytest.approx(expect, rel=1e-15)
        assert maths.scaled_log_norm(A, B, 0, 1, False) == pytest.approx(expect, rel=1e-15)
        D = A.copy()
        assert maths.normalize_scaled(D, 0, 1) == pytest.approx(expect, rel=1e-15)
        np.testing.assert_allclose(D, A / (13.0 * scale), rtol=1e-15)
        Y = B.copy()
        Y[0, 0] = scale
        maths.rescale_difference(B, Y, 0, 1, 1e-6)
        np.testing.assert_allclose(Y, [[1e-6, 0.0], [0.0, 0.0]], rtol=1e-15)
    lane = np.arange(8.0).reshape(2, 4) * 1e300  # lanes l = 1 of L = 2: columns 1, 3
    assert maths.scaled_log_norm(lane, lane, 1, 2, False) == pytest.approx(
        math.log(1e300 * math.sqrt(1 + 9 + 25 + 49)), rel=1e-15
    )
    assert maths.scaled_log_norm(B, B, 0, 1, True) == -np.inf


# --------------------------------------------------------------- quantile sketch
def test_sketch_covers_any_finite_log_r():  # 428
    rng_ = np.random.default_rng(0)
    for center, spread in ((-1650.0, 1.0), (5000.0, 3.0), (0.0, 3e4), (-1e9, 1e6)):
        x = center + spread * rng_.standard_normal((500, 2))
        x[:, 0] = np.sort(x[:, 0])
        s = DecayStats.from_chunk(x, np.full(500, OK), 0, np.arange(2.0), np.zeros(2))
        acc = s.accuracy()
        assert not s.quantiles_out_of_range().any()
        for q, est in zip(stats.QUANTILES, s.quantiles()):
            exact = np.quantile(x, q, axis=0, method="lower")
            assert np.all(np.abs(est - exact) <= acc), (center, spread, q)
        fine = spread * 8 < stats.HIST_MAX_BINS * stats.HIST_WIDTH
        assert np.all(s.hist_level == 0) == fine
        assert np.all(acc < stats.HIST_WIDTH * 2.0**s.hist_level)


def test_sketch_says_when_a_quantile_is_out_of_range():
    x = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 4e12]])  # 4e12 > 2^40
    s = DecayStats.from_chunk(x, np.full(4, OK), 0, np.arange(2.0), np.zeros(2))
    assert s.n_high.tolist() == [0, 1] and s.vmax[1] == 4e12
    out = s.quantiles_out_of_range((0.01, 0.5, 0.99, 1.0))[:, 1].tolist()
    assert out == [False, False, False, True]
    q = s.quantiles((0.01, 0.5, 0.99, 1.0))[:, 1]
    assert np.all(np.abs(q[:3] - [1.0, 2.0, 3.0]) <= stats.HIST_WIDTH / 2) and math.isnan(q[3])
    assert s.hist_level.tolist() == [0, 0]


def test_tangent_quantiles_far_below_the_old_sketch_range():  # 428
    A = np.array([[0.0, 3.0], [-3.0, 0.5]])
    p = tfk.TransformerParams.linear(A, damping=200.0)
    kw = dict(mode="tangent", t_final=5.0, seed=4)
    res = tfk.perturbation_decay(p, 300, 1, 2400, chunk_size=100, lambda_samples=2, **kw)
    logr, _ = decay.log_ratios(p, 300, 1, 2400, **kw)
    assert logr[:, -1].max() < -1100  # below the old [-1024, 1024]
    assert logr[:, -1].max() - logr[:, -1].min() > 0.05  # 50 bins
    for name, q in zip(stats.QUANTILE_NAMES, stats.QUANTILES):
        exact = np.quantile(logr, q, axis=0, method="lower")
        assert np.all(np.abs(res.stats[name] - exact) <= stats.HIST_WIDTH / 2 + 1e-12), name
    assert res.meta["quantile_accuracy_log_r"] == pytest.approx(stats.HIST_WIDTH / 2, rel=1e-8)


# ------------------------------------------------------------------------ ε checks
@pytest.mark.parametrize(
    "eps, dtype, match",
    [
        (1e-20, np.float64, "vanishes in float64"),  # 336, 393
        (1e-300, np.float64, "vanishes in float64"),  # 337
        (1e-12, np.float32, "vanishes in float32"),  # 338
        (1e300, np.float64, "overflows float64"),  # 341
        (1e30, np.float32, "overflows float32"),  # 342
        (1e39, np.float32, "overflows float32"),  # 343
    ],
)
def test_eps_the_dtype_cannot_use_is_rejected_up_front(eps, dtype, match, monkeypatch):
    def never(*a, **k):
        raise AssertionError("a kernel ran")

    monkeypatch.setattr(decay, "estimate_lipschitz", never)
    with pytest.raises(ValueError, match=re.escape(f"`eps`={eps:g} {match}")):
        tfk.perturbation_decay(small(1.0, dtype), 10, 2, 4, eps=eps)
    with pytest.raises(ValueError, match="`eps`"):
        decay.log_ratios(small(1.0, dtype), 10, 2, 4, eps=eps)


def test_eps_limits_follow_the_dtype_and_state_size():
    lo, hi = decay.eps_range(np.float64, 64)
    assert lo == 8 * np.finfo(np.float64).eps and hi == math.sqrt(np.finfo(np.float64).max) / 1024
    assert decay.check_eps(lo, np.float64, 64) == lo
    with pytest.raises(ValueError, match="`eps`"):
        decay.check_eps(lo / 2, np.float64, 64)
    for dt in ("float64", "float32"):  # the defaults are fine for any sensible size
        assert decay.check_eps(decay.DEFAULT_EPS[dt], dt, 4096) == decay.DEFAULT_EPS[dt]
    # tangent mode ignores ε
    tfk.perturbation_decay(small(1.0), 8, 2, 2, eps=1e-300, mode="tangent", lambda_samples=1)


def test_eps_larger_than_the_states_warns():  # 340
    with pytest.warns(UserWarning, match="`eps`=1e\\+30 is larger than the states"):
        res = tfk.perturbation_decay(small(4.0), 20, 2, 4, eps=1e30, lambda_samples=2)
    assert res.config["eps"] == 1e30


def _parse(*argv):
    parser = argparse.ArgumentParser()
    decay_cli.configure_parser(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("eps", ["1e-30", "1e300"])
def test_command_line_eps_is_one_line_exit_2(tmp_path, capsys, monkeypatch, eps):  # 445
    def never(*a, **k):
        raise AssertionError("the study ran")

    monkeypatch.setattr(decay, "perturbation_decay", never)
    assert decay_cli.run_cli(_parse("--eps", eps, "--out", str(tmp_path / "o"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfkernels decay: error: `--eps`=") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------ undetermined results
def test_no_valid_trajectory_is_undetermined(tmp_path):  # 336-343, 393
    p = tfk.TransformerParams.linear(1e300 * np.eye(2))  # overflows in the second layer
    with pytest.warns(RuntimeWarning, match="undetermined"):
        res = tfk.perturbation_decay(p, 30, 2, 4, seed=0, lambda_samples=2)
    assert res.n_valid == 0 and res.n_nonfinite == 30
    assert res.bound_holds is None and res.regime == "undetermined"
    assert math.isnan(res.rate) and math.isnan(res.fraction_above_bound)
    text = res.summary()
    assert "bound holds    undetermined (no valid trajectory)" in text
    assert "regime         undetermined" in text and "True" not in text
    paths = res.save(tmp_path)
    back = tfk.DecayResult.from_json(paths[-1])
    assert back.bound_holds is None and back.regime == "undetermined"
    table = np.genfromtxt(paths[0], delimiter=",", names=True)
    assert np.all(table["count"] == 0) and np.all(np.isnan(table["mean"]))


def test_classify_without_trajectories():
    assert decay.classify((math.nan, math.nan), math.nan, math.nan, 0) == "undetermined"


def test_command_line_exits_3_when_undetermined(tmp_path, capsys):  # 445
    args = _parse(
        *("--trajectories", "40", "--layers", "4", "--seq-len", "2", "--d", "4"),
        *("--d-ff", "8", "--damping", "1e300", "--out", str(tmp_path)),
    )
    with pytest.warns(RuntimeWarning, match="undetermined"):
        assert decay_cli.run_cli(args) == decay_cli.EXIT_UNDETERMINED == 3
    out = capsys.readouterr().out
    assert "regime         undetermined" in out
    raw = json.loads((tmp_path / "decay.json").read_text())
    assert raw["regime"] == "undetermined" and raw["bound_holds"] is None
    assert {f.name for f in tmp_path.iterdir()} == {"decay.json", "decay.csv", "decay.png"}
    parser = argparse.ArgumentParser()
    decay_cli.configure_parser(parser)
    assert "3 the study ran and wrote its files" in parser.format_help().replace("\n", " ")


# --------------------------------------------------------------------------- plots
@pytest.fixture(scope="module")
def tiny_result():
    return tfk.perturbation_decay(small(3.0), 60, 2, 8, seed=1, lambda_samples=2)


@pytest.mark.parametrize(
    "change",
    [
        dict(lambda_hat=1943.0),  # 380, 381: exp(λ̂ t) = inf
        dict(lambda_hat=-1e300),
        dict(lambda_hat=math.inf),
        dict(lambda_hat=math.nan),
        dict(stats="inf-nan"),
        dict(stats="all-nan"),
        dict(stats="huge"),
    ],
)
def test_plot_never_raises(tmp_path, tiny_result, change):
    import dataclasses

    kw = dict(change)
    table = {k: np.array(v, dtype=float) for k, v in tiny_result.stats.items()}
    what = kw.pop("stats", None)
    cols = [*stats.QUANTILE_NAMES, "mean", "min", "max"]
    if what == "inf-nan":
        for c in cols:
            table[c][2], table[c][3] = np.inf, np.nan
    elif what == "all-nan":
        for c in cols:
            table[c][:] = np.nan
    elif what == "huge":
        for c in cols:
            table[c] *= 1e3  # log r ~ -1e3: r underflows
    res = dataclasses.replace(tiny_result, stats=table, **kw)
    res.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- λ̂
def test_lambda_hat_at_huge_finite_states():  # 429, 430, 374
    p = tfk.TransformerParams.random(d=16, n_heads=2, d_ff=32, linear=True, weight_scale=20, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = tfk.perturbation_decay(p, 100, 4, 64, t_final=4.0)
    note = res.meta["lambda_note"]
    assert (note is None) == math.isfinite(res.lambda_hat)
    assert note is None or "not finite" in note
    assert res.bound_holds is None or math.isfinite(res.lambda_hat)


def test_lambda_hat_scales_huge_jacobians_exactly(monkeypatch):
    p = small(1.0)
    packed = kernels.pack_params(p)
    X = tfk.random_states(1, 3, 4, seed=0)[0]
    plain = lipschitz._lognorm_dense(packed, X, 0)
    J = lipschitz._jacobian_dense(packed, X, 0)
    for k in (400, -400):
        monkeypatch.setattr(lipschitz, "_jacobian_dense", lambda *a, k=k: J * 2.0**k)
        huge = lipschitz._lognorm_dense(packed, X, 0)
        assert huge == (plain[0] * 2.0**k, plain[1] * 2.0**k)  # JᵀJ would overflow
    monkeypatch.setattr(lipschitz, "_jacobian_dense", lambda *a: J * np.inf)
    assert all(math.isnan(x) for x in lipschitz._lognorm_dense(packed, X, 0))


CACHE_PROBE = """
import json
import tfkernels as tfk
from tfkernels import kernels
from tfkernels.studies import lipschitz
p = tfk.TransformerParams.random(d=4, n_heads=2, d_ff=8, damping=1.0, seed=0)
X = tfk.random_states(1, 3, 4, seed=1)[0]
lam, lip = lipschitz._lognorm_lanczos(kernels.pack_params(p), X, 0)
print(json.dumps([lam.hex(), lip.hex()]))
"""


@pytest.mark.slow
def test_lambda_hat_same_compiled_or_from_the_cache(tmp_path):
    """A kernel read from Numba's cache must compute what the freshly compiled one did:
    λ̂ (Lanczos with the JVP and VJP kernels) from a run that compiles into an empty
    cache folder and from a second run that loads from it (they differed in the last
    bit: ``kernels.linking``)."""
    from tfkernels.bench import fresh

    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [fresh.run_json_script(CACHE_PROBE, extra_env=env) for _ in range(2)]
    assert "error" not in runs[0], runs[0]
    assert runs[0] == runs[1]
    assert any(tmp_path.rglob("*vjp_batch*.nbi"))  # the second run did load from the cache
