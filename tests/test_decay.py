"""The perturbation-decay study: JVP/VJP kernels, pair and tangent modes, streaming
statistics, estimates, determinism, outputs and argument checks."""

import argparse
import json
import math

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import kernels
from tfkernels import reference as ref
from tfkernels.cli import decay as decay_cli
from tfkernels.kernels import rng
from tfkernels.studies import decay, lipschitz, stats

RUN = dict(method="euler", t_final=1.0, alpha=None, c=1.0, noise=0.0)


def directions(n, T, d, seed=0, start=0):
    """The unit directions U the study draws for trajectories ``start …``."""
    u = np.empty((n, T, d))
    rng._normal_batch(seed, rng.STREAM_DIRECTION, start, 1.0, u)
    return u / np.sqrt((u * u).sum(axis=(1, 2)))[:, None, None]


def small(damping=3.0, seed=0, **kw):
    return tfk.TransformerParams.random(d=4, n_heads=2, d_ff=8, damping=damping, seed=seed, **kw)


# ----------------------------------------------------------------- the λ̂ estimate
def test_lanczos_estimate_matches_dense():
    p = tfk.TransformerParams.random(d=6, n_heads=3, d_ff=12, damping=1.0, linear=True, seed=2)
    dense = lipschitz.estimate_lipschitz(p, 5, 8, n_samples=4, run=RUN)
    lanczos = lipschitz.estimate_lipschitz(p, 5, 8, n_samples=4, run=RUN, dense_max=0)
    assert dense[2]["method"] == "dense" and lanczos[2]["method"] == "lanczos"
    np.testing.assert_allclose(lanczos[:2], dense[:2], rtol=1e-8)
    X = tfk.random_states(1, 5, 6, seed=0)[0]  # first sampled state: layer 0 of trajectory 0
    J = ref.jacobian(p, X)
    assert dense[0] >= ref.log_norm(J) - 1e-12
    assert dense[1] >= np.linalg.norm(J, 2) - 1e-12


# ------------------------------------------------------------------ modes vs exact
def stability_matrix(B, h, method):
    """M with X_{n+1} = X_n M for the linear field f(X) = X B."""
    hB = h * B
    terms = {"euler": 1, "heun": 2, "rk4": 4}[method]
    M, P = np.eye(len(B)), np.eye(len(B))
    for k in range(1, terms + 1):
        P = P @ hB / k
        M = M + P
    return M


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("mode", ["pair", "tangent"])
def test_linear_model_matches_matrix_powers(method, mode):
    A = np.random.default_rng(1).standard_normal((3, 3))
    p = tfk.TransformerParams.linear(A, damping=0.7)
    N, T, n = 12, 2, 16
    logr, status = decay.log_ratios(p, n, T, N, method=method, mode=mode, seed=4)
    assert np.all(status == kernels.STATUS_OK)
    M = stability_matrix(A - 0.7 * np.eye(3), 1.0 / N, method)
    U = directions(n, T, 3, seed=4)
    exact = np.empty((n, N + 1))
    for b in range(n):
        D = U[b]
        for k in range(N + 1):
            exact[b, k] = math.log(np.linalg.norm(D))
            D = D @ M
    tol = 1e-9 if mode == "pair" else 1e-12
    np.testing.assert_allclose(logr, exact, atol=tol, rtol=0)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "averaged"])
def test_pair_and_tangent_match_reference_with_noise(method):
    p = small(damping=1.0, linear=True, activation="gelu_tanh")
    N, T, n, seed, sigma = 6, 3, 4, 5, 0.3
    x0 = tfk.random_states(n, T, 4, seed=seed)
    U = directions(n, T, 4, seed=seed)
    eta = np.zeros((n, N, T, 4))
    for b in range(n):  # the study's shared noise, as the reference takes it
        rng.fill_normal(np.uint64(rng.key(seed, rng.STREAM_NOISE, b)), 0, sigma, eta[b])
    kw = dict(method=method, noise=sigma, seed=seed)
    pair, _ = decay.log_ratios(p, n, T, N, mode="pair", eps=1e-6, **kw)
    tan, _ = decay.log_ratios(p, n, T, N, mode="tangent", **kw)
    np.testing.assert_allclose(
        pair, np.log(ref.perturbation_ratios(p, x0, U, 1e-6, N, method, eta=eta)), atol=1e-8
    )
    np.testing.assert_allclose(
        tan, np.log(ref.tangent_ratios(p, x0, U, N, method, eta=eta)), atol=1e-12
    )


def test_pair_agrees_with_tangent_to_first_order():
    p = tfk.TransformerParams.random(d=8, n_heads=2, damping=0.5, seed=7)
    tan, _ = decay.log_ratios(p, 32, 4, 16, mode="tangent")
    errs = [
        np.abs(decay.log_ratios(p, 32, 4, 16, mode="pair", eps=e)[0] - tan).max()
        for e in (1e-2, 1e-3, 1e-4)
    ]
    assert errs[2] < 1e-4
    assert errs[0] > 5 * errs[1] > 25 * errs[2]  # O(ε): shrinks with ε
    p32 = p.astype(np.float32)  # float32: default ε = 1e-3
    t32, _ = decay.log_ratios(p32, 32, 4, 16, mode="tangent")
    np.testing.assert_allclose(t32, tan, atol=1e-5)
    np.testing.assert_allclose(decay.log_ratios(p32, 32, 4, 16)[0], tan, atol=1e-2)


def test_tangent_renormalization_survives_extreme_decay():
    p = tfk.TransformerParams.linear(np.zeros((2, 2)), damping=200.0)
    logr, status = decay.log_ratios(p, 3, 1, 2000, mode="tangent", t_final=5.0)
    assert np.all(status == kernels.STATUS_OK)
    expected = np.arange(2001) * math.log(1 - 200.0 * 5.0 / 2000)  # r_n = 0.5^n
    np.testing.assert_allclose(logr[0], expected, rtol=1e-12)
    assert logr[0, -1] < -1000  # far below float64's smallest normal (e^-708)


# -------------------------------------------------------------------- the study
def test_contractive_model_stays_under_the_bound():
    p = small(damping=4.0)
    res = tfk.perturbation_decay(p, 600, 3, 16, seed=1, chunk_size=50)
    assert res.lambda_hat < 0
    assert res.bound_holds and res.fraction_above_bound == 0.0
    assert res.regime == "contractive"
    assert res.rate_ci[0] < res.rate < res.rate_ci[1] < res.lambda_hat
    assert res.n_valid == 600 and res.n_nonfinite == 0
    assert np.all(res.stats["max"] <= res.stats["log_bound"] + 1e-6)
    assert res.meta["rate_ci_method"].startswith("batch means over 12 chunks")


def test_expanding_model_is_reported_expanding():
    A = 0.8 * np.eye(4) + 0.1 * np.random.default_rng(0).standard_normal((4, 4))
    p = small(damping=0.0, seed=1).replace(linear=A)
    res = tfk.perturbation_decay(p, 300, 3, 16, seed=2, mode="tangent")
    assert res.regime == "expanding"
    assert res.rate_ci[0] > 0 and res.lambda_hat > 0
    assert res.meta["rate_ci_method"].startswith("per-trajectory")  # one chunk


def test_regime_never_calls_growth_contractive():
    assert decay.classify((0.1, 0.3), -1.0, 0.1, 100) == "expanding"
    assert decay.classify((-0.3, -0.1), 0.5, 0.1, 100) == "expanding"
    assert decay.classify((-0.3, 0.1), -1.0, 0.1, 100) == "neutral"
    assert decay.classify((math.nan, math.nan), -1.0, 0.1, 1) == "neutral"
    assert decay.classify((-0.3, -0.1), -1.0, 0.1, 100) == "contractive"


def blowup_params():
    """relu FFN: x₀ > 0 grows by ~1e30 per layer (overflow), x₀ ≤ 0 decays."""
    return tfk.TransformerParams(
        w1=np.array([[1.0], [0.0]]),
        b1=np.zeros(1),
        w2=np.array([[1e30, 0.0]]),
        b2=np.zeros(2),
        activation="relu",
        damping=1.0,
    )


@pytest.mark.parametrize("mode", ["pair", "tangent"])
def test_nonfinite_trajectories_are_counted_excluded_and_reported(mode):
    n = 200
    res = tfk.perturbation_decay(blowup_params(), n, 1, 16, mode=mode, seed=3, chunk_size=64)
    x0 = tfk.random_states(n, 1, 2, seed=3)
    blows = np.flatnonzero(x0[:, 0, 0] > 0)
    assert 50 < blows.size < 150
    assert res.n_nonfinite == blows.size and res.n_valid == n - blows.size
    assert res.nonfinite_indices == blows[: stats.N_BAD_KEPT].tolist()
    assert all(1 <= k <= 16 for k in res.nonfinite_layers)
    assert np.all(res.stats["count"] == n - blows.size)
    assert np.all(np.isfinite(res.stats["mean"]))
    np.testing.assert_allclose(
        res.stats["mean"], np.log(1 - 1 / 16) * np.arange(17), atol=1e-6
    )  # the survivors decay like (1 − γΔt)^n


# ------------------------------------------------------------- statistics & CI
def test_streamed_statistics_match_numpy():
    p = small(damping=1.0, activation="tanh")
    kw = dict(seed=6)
    res = tfk.perturbation_decay(p, 500, 3, 10, chunk_size=37, **kw)
    logr, _ = decay.log_ratios(p, 500, 3, 10, **kw)
    s = res.stats
    np.testing.assert_allclose(s["mean"], logr.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(s["std"], logr.std(axis=0, ddof=1), rtol=1e-9, atol=1e-14)
    np.testing.assert_array_equal(s["max"], logr.max(axis=0))
    np.testing.assert_array_equal(s["min"], logr.min(axis=0))
    for name, q in zip(stats.QUANTILE_NAMES, stats.QUANTILES):
        exact = np.quantile(logr, q, axis=0, method="lower")
        assert np.all(np.abs(s[name] - exact) <= stats.HIST_WIDTH / 2 + 1e-12), name
    t = s["t"]
    np.testing.assert_allclose(res.rate, np.polyfit(t, logr.mean(axis=0), 1)[0], rtol=1e-10)
    assert res.meta["rate_ci_method"].startswith("batch means over 14 chunks")


def test_single_chunk_ci_uses_per_trajectory_slopes():
    p = small(damping=2.0)
    res = tfk.perturbation_decay(p, 400, 3, 8, seed=0)
    logr, _ = decay.log_ratios(p, 400, 3, 8, seed=0)
    slopes = np.array([np.polyfit(res.stats["t"], row, 1)[0] for row in logr])
    from scipy import stats

    half = stats.t.ppf(0.975, 399) * slopes.std(ddof=1) / math.sqrt(400)
    np.testing.assert_allclose(res.rate_ci, (res.rate - half, res.rate + half), rtol=1e-8)


# ----------------------------------------------------------------- determinism
def test_per_trajectory_log_r_identical_across_chunks_and_threads():
    p = small(damping=1.0)
    kw = dict(method="heun", noise=0.1, seed=9)
    full, _ = decay.log_ratios(p, 50, 3, 8, n_threads=2, **kw)
    one, _ = decay.log_ratios(p, 50, 3, 8, n_threads=1, **kw)
    parts = [
        decay.log_ratios(p, n, 3, 8, start=s, n_threads=1, **kw)[0]
        for s, n in ((0, 1), (1, 20), (21, 29))
    ]
    np.testing.assert_array_equal(full, one)
    np.testing.assert_array_equal(full, np.concatenate(parts))
    tan = [decay.log_ratios(p, 50, 3, 8, mode="tangent", n_threads=t, **kw)[0] for t in (1, 2)]
    np.testing.assert_array_equal(*tan)


def test_merged_statistics_independent_of_threads():
    p = small(damping=1.0)
    a, b = (
        tfk.perturbation_decay(p, 300, 3, 8, chunk_size=40, n_threads=t, seed=2) for t in (1, 2)
    )
    for k in a.stats:
        np.testing.assert_array_equal(a.stats[k], b.stats[k])
    assert (a.rate, a.rate_ci, a.lambda_hat) == (b.rate, b.rate_ci, b.lambda_hat)
    assert [r.meta["machine"]["numba_threads"] for r in (a, b)] == [1, 2]
    c = tfk.perturbation_decay(p, 300, 3, 8, chunk_size=300, seed=2)
    for k in ("count", "min", "max", *stats.QUANTILE_NAMES):
        np.testing.assert_array_equal(a.stats[k], c.stats[k])  # exact parts
    np.testing.assert_allclose(a.stats["mean"], c.stats["mean"], rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------- outputs
def test_json_csv_plot(tmp_path):
    p = small(damping=3.0)
    res = tfk.perturbation_decay(p, 100, 2, 8, seed=1, mode="tangent")
    res.to_json(tmp_path / "r.json")
    back = tfk.DecayResult.from_json(tmp_path / "r.json")
    assert (back.rate, back.rate_ci, back.regime) == (res.rate, tuple(res.rate_ci), res.regime)
    for k in res.stats:
        np.testing.assert_array_equal(back.stats[k], res.stats[k])
    raw = json.loads((tmp_path / "r.json").read_text())
    assert raw["config"]["seed"] == 1 and raw["config"]["mode"] == "tangent"
    assert {"numpy", "numba", "tfkernels"} <= set(raw["meta"]["versions"])
    assert raw["meta"]["throughput"] > 0 and raw["meta"]["wall_time_s"] > 0
    res.to_csv(tmp_path / "r.csv")
    table = np.genfromtxt(tmp_path / "r.csv", delimiter=",", names=True)
    np.testing.assert_allclose(table["mean"], res.stats["mean"], rtol=1e-9)
    res.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_command_line(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    decay_cli.configure_parser(parser)
    args = parser.parse_args(
        [
            "--trajectories",
            "2e2",
            "--layers",
            "4",
            "--seq-len",
            "2",
            "--d",
            "4",
            "--d-ff",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    assert args.trajectories == 200
    assert decay_cli.run_cli(args) == 0
    out = capsys.readouterr().out
    assert "rate (95% CI)" in out and "lambda_hat" in out and "throughput" in out
    assert {f.name for f in tmp_path.iterdir()} == {"decay.json", "decay.csv", "decay.png"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--trajectories", "0.5"])


# ------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "kw, exc, name",
    [
        (dict(eps=0.0), ValueError, "eps"),
        (dict(eps=-1e-6), ValueError, "eps"),
        (dict(n_trajectories=0), ValueError, "n_trajectories"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(mode="finite"), ValueError, "mode"),
        (dict(method="rk5"), ValueError, "method"),
        (dict(n_layers=0), ValueError, "n_layers"),
        (dict(seq_len=0), ValueError, "seq_len"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(lambda_samples=0), ValueError, "lambda_samples"),
        (dict(n_threads=0), ValueError, "n_threads"),
        (dict(n_trajectories=2.5), TypeError, "n_trajectories"),
        (dict(progress="yes"), TypeError, "progress"),
    ],
)
def test_bad_arguments_raise_naming_them(kw, exc, name):
    args = dict(n_trajectories=10, seq_len=2, n_layers=4)
    args.update(kw)
    with pytest.raises(exc, match=f"`{name}`"):
        tfk.perturbation_decay(small(), **args)


def test_params_and_client_checked():
    with pytest.raises(TypeError, match="`params`"):
        tfk.perturbation_decay("model", 10, 2, 4)
    with pytest.raises(NotImplementedError, match="client"):
        tfk.perturbation_decay(small(), 10, 2, 4, client=object())


# ------------------------------------------------------------ result files (issue 15)
@pytest.fixture(scope="module")
def tiny_result():
    return tfk.perturbation_decay(small(damping=3.0), 100, 2, 8, seed=1, mode="tangent")


def _listing(folder):
    return sorted(f.name for f in folder.iterdir())


def test_save_writes_the_documented_set_json_last(tmp_path, tiny_result):
    paths = tiny_result.save(tmp_path / "new" / "dir")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["decay.csv", "decay.png", "decay.json"]
    assert _listing(tmp_path / "new" / "dir") == ["decay.csv", "decay.json", "decay.png"]
    back = tfk.DecayResult.from_json(paths[-1])
    assert back.rate == tiny_result.rate


@pytest.mark.parametrize("broken", ["to_csv", "plot", "to_json"])
def test_save_error_midway_keeps_the_previous_set(tmp_path, tiny_result, monkeypatch, broken):
    # QA 463/464: a run killed while writing left a torn or mixed set
    tiny_result.save(tmp_path)
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    real = getattr(decay.DecayResult, broken)

    def midway(self, path):
        real(self, path)
        with open(path, "r+b") as fh:
            fh.truncate(10)
        raise RuntimeError("killed midway")

    monkeypatch.setattr(decay.DecayResult, broken, midway)
    with pytest.raises(RuntimeError, match="midway"):
        tiny_result.save(tmp_path)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before


def test_to_json_never_leaves_a_truncated_file(tmp_path, tiny_result, monkeypatch):
    path = tmp_path / "r.json"
    tiny_result.to_json(path)
    before = path.read_text()

    def fail_dumps(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr(decay.json, "dumps", fail_dumps)
    with pytest.raises(ValueError, match="boom"):
        tiny_result.to_json(path)
    assert path.read_text() == before and _listing(tmp_path) == ["r.json"]


def test_save_checks_the_folder_naming_it(tmp_path, tiny_result):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="`out_dir`"):
        tiny_result.save(tmp_path / "file")
    with pytest.raises(ValueError, match="`out_dir`"):
        tiny_result.save("")
    with pytest.raises(PermissionError, match="`out_dir`"):
        tiny_result.save("/proc/tfkernels-x")


@pytest.mark.parametrize(
    "out, match",
    [("", "is empty"), ("FILE", "is a file"), ("FILE/sub", "lies under"), ("/proc/x", "cannot")],
)
def test_command_line_bad_out_is_one_line_exit_2_before_the_study(
    tmp_path, capsys, monkeypatch, out, match
):
    # QA 455-457: the study ran, then a traceback
    def never(*a, **k):
        raise AssertionError("the study ran")

    monkeypatch.setattr(decay, "perturbation_decay", never)
    (tmp_path / "FILE").write_text("x")
    parser = argparse.ArgumentParser()
    decay_cli.configure_parser(parser)
    args = parser.parse_args(["--out", out.replace("FILE", str(tmp_path / "FILE"))])
    assert decay_cli.run_cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfkernels decay: error:") and err.count("\n") == 1
    assert "`--out`" in err and match in err
