"""The Lyapunov spectrum: the exact spectrum of the linear system's discrete map (Euler,
RK4), Liouville's formula on a nonlinear model, the largest exponent against tangent-mode
decay, the same bits whatever the chunks and threads, a block model, blow-ups counted,
named errors, and the outputs."""

import json
import math

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import kernels, reference
from tfkernels.studies import lyapunov


def symmetric(mu, seed=0):
    """A symmetric matrix with eigenvalues ``mu`` (a random orthogonal basis)."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(mu), len(mu))))
    return (Q * np.asarray(mu)) @ Q.T


# the linear system X' = X·(A − γI): eigenvalues −1, −2, −3.5 (gaps ≥ 1), T = 2 copies
MU, GAMMA, T = np.array([-0.5, -1.5, -3.0]), 0.5, 2
N, T_FINAL, TRANSIENT = 2000, 40.0, 1000  # Δt = 0.02; after t = 20 the gaps align Q


def linear_spectrum(method):
    p = tfk.TransformerParams.linear(symmetric(MU), damping=GAMMA)
    return tfk.lyapunov_spectrum(
        p, 3, T, N, t_final=T_FINAL, k=T * 3, transient=TRANSIENT, method=method, seed=1
    )


def test_linear_euler_is_the_exact_spectrum_of_the_discrete_map():
    ly = linear_spectrum("euler")
    dt = T_FINAL / N
    exact = np.repeat(np.log(np.abs(1 + dt * (MU - GAMMA))) / dt, T)  # each eigenvalue T times
    # after the transient Q spans the eigenvectors to exp(−gap·20) ≈ 2e-9, whose effect on
    # log R_jj is second order; what is left is the rounding of 1000 logs
    np.testing.assert_allclose(ly.exponents, exact, rtol=0, atol=1e-10)
    assert ly.n_valid == 3 and ly.n_nonfinite == 0
    assert np.all(ly.exponents_ci[:, 0] <= ly.exponents + 1e-12)
    assert np.all(ly.exponents <= ly.exponents_ci[:, 1] + 1e-12)


def test_linear_rk4_is_the_eigenvalues_to_discretization_error():
    ly = linear_spectrum("rk4")
    dt = T_FINAL / N
    z = dt * (MU - GAMMA)
    stab = 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24  # RK4's amplification factor
    np.testing.assert_allclose(ly.exponents, np.repeat(np.log(stab) / dt, T), rtol=0, atol=1e-10)
    # log R(z)/Δt − μ = O(Δt⁴ μ⁵ / 120): 7e-7 for μ = −3.5, Δt = 0.02
    np.testing.assert_allclose(ly.exponents, np.repeat(MU - GAMMA, T), rtol=0, atol=2e-6)


SMALL = dict(d=4, n_heads=2, d_ff=8, damping=1.0, seed=1)


def test_liouville_sum_of_all_exponents_is_the_mean_log_det():
    p = tfk.TransformerParams.random(**SMALL)
    Tn, n, tf, seed = 3, 40, 2.0, 5  # T·d = 12
    ly = tfk.lyapunov_spectrum(p, 1, Tn, n, t_final=tf, method="heun", seed=seed)
    assert ly.exponents.shape == (12,)
    x0 = tfk.random_states(1, Tn, 4, seed=seed)
    states = tfk.integrate(p, x0, n, t_final=tf, method="heun", save_every=1)[0]
    dt = tf / n
    logdet = [
        np.linalg.slogdet(reference.layer_map_jacobian(p, X, dt, "heun"))[1] for X in states[:-1]
    ]
    # Σ_j log R_jj of an orthonormal Q is log|det Φ'| exactly; the kernel and the
    # reference round differently (fastmath, 40 layers): 1e-9 relative
    np.testing.assert_allclose(ly.exponents.sum(), np.sum(logdet) / tf, rtol=1e-9)


def test_largest_exponent_is_tangent_decay_rate():
    p = tfk.TransformerParams.random(**SMALL)
    args = (p, 400, 3, 200)
    kw = dict(t_final=20.0, seed=3)
    dec = tfk.perturbation_decay(*args, mode="tangent", **kw)
    ly0 = tfk.lyapunov_spectrum(*args, k=1, **kw)
    ly = tfk.lyapunov_spectrum(*args, k=1, transient=50, **kw)
    # the first tangent is tangent mode's direction U, renormalized every layer the same
    # way: λ_1 of a trajectory is its log r_N / t_N (transient 0), and with a transient
    # of m layers (log r_N − log r_m) / (t_N − t_m); the means agree to rounding
    logr = dec.stats["mean"]
    np.testing.assert_allclose(ly0.exponents[0], logr[-1] / 20.0, rtol=1e-12)
    np.testing.assert_allclose(ly.exponents[0], (logr[-1] - logr[50]) / 15.0, rtol=1e-12)
    # What differs from the decay *rate*: it is the least-squares slope of mean log r_n
    # over all of [0, t_N], a different weighting in time of the same log r_n. On this
    # flow log r_n is not linear in t (δ aligns slowly and the states still move), so the
    # two estimators differ by more than their intervals at any t_N we can afford
    # (t_N = 20: rate −0.160, λ_1 −0.181 from t = 0, −0.152 after t = 5; t_N = 100:
    # −0.1466 ± 0.0001 against −0.1444 ± 0.0005 after t = 25): the rate lies between them
    assert ly0.exponents[0] < dec.rate < ly.exponents[0]


def test_same_bits_whatever_the_chunks_and_threads():
    p = tfk.TransformerParams.random(**SMALL)
    pl = lyapunov.plan(p, 11, 3, 30, t_final=3.0, k=5, transient=4, renorm_every=3, seed=2)
    packed, cfg = pl.shared
    whole, st = lyapunov.chunk_exponents(packed, 0, 11, cfg)
    parts = [
        lyapunov.chunk_exponents(packed, a, b - a, cfg)[0] for a, b in ((0, 3), (3, 4), (4, 11))
    ]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert np.all(st == kernels.STATUS_OK)
    kw = dict(t_final=3.0, k=5, transient=4, renorm_every=3, seed=2)
    r1 = tfk.lyapunov_spectrum(p, 11, 3, 30, chunk_size=4, n_threads=1, **kw)
    r2 = tfk.lyapunov_spectrum(p, 11, 3, 30, chunk_size=4, n_threads=2, **kw)
    r3 = tfk.lyapunov_spectrum(p, 11, 3, 30, chunk_size=11, n_threads=2, **kw)
    for key in r1.stats:
        np.testing.assert_array_equal(r1.stats[key], r2.stats[key])
    np.testing.assert_array_equal(r1.exponents_ci, r2.exponents_ci)
    for key in ("min", "max", "q01", "q50", "q99", "count"):  # exact whatever the chunks
        np.testing.assert_array_equal(r1.stats[key], r3.stats[key])
    # the mean is merged with Chan's formula: the chunk partition moves its last bits only
    np.testing.assert_allclose(r1.exponents, r3.exponents, rtol=1e-14)
    np.testing.assert_allclose(r1.exponents, whole.mean(axis=0), rtol=1e-14)


def test_a_block_model_and_float32_run():
    p = tfk.TransformerParams.random(
        d=4, n_heads=1, norm="layernorm", norm_position="post", block="sequential", seed=0
    )
    ly = tfk.lyapunov_spectrum(p, 8, 3, 20, t_final=2.0, k=4)
    assert ly.n_valid == 8 and np.all(np.isfinite(ly.exponents))
    q = tfk.TransformerParams.random(**SMALL)
    a = tfk.lyapunov_spectrum(q, 8, 3, 20, t_final=2.0, k=3)
    b = tfk.lyapunov_spectrum(q.astype(np.float32), 8, 3, 20, t_final=2.0, k=3)
    # float32 states and tangents (float64 QR sums): rounding of 1e-7 per layer
    np.testing.assert_allclose(b.exponents, a.exponents, rtol=0, atol=1e-3)


def test_blow_ups_are_counted_not_averaged():
    p = tfk.TransformerParams.linear(np.eye(2))
    x0 = np.ones((4, 1, 2))
    x0[1] = 1e308  # ×1.1 per layer: 1.1^7·1e308 overflows at layer 7
    ly = tfk.lyapunov_spectrum(p, 4, 1, 10, k=2, x0=x0)
    assert ly.n_valid == 3 and ly.n_nonfinite == 1
    assert ly.nonfinite_indices == [1] and ly.nonfinite_layers == [7]
    np.testing.assert_allclose(ly.exponents, [math.log(1.1) / 0.1] * 2, rtol=1e-13)


BAD = [
    (dict(k=0), "`k`"),
    (dict(k=7), "`k`=7 must be at most seq_len \\* d = 6"),
    (dict(transient=10), "`transient`=10 must be less than `n_layers`=10"),
    (dict(transient=-1), "`transient`"),
    (dict(renorm_every=0), "`renorm_every`"),
    (dict(method="rk5"), "`method`"),
    (dict(x0="cube"), "`x0`"),
    (dict(seed=-1), "`seed`"),
    (dict(chunk_size=0), "`chunk_size`"),
    (dict(n_threads=0), "n_threads"),
    (dict(progress="yes"), "`progress`"),
    (dict(t_final=0.0), "`t_final`"),
]


@pytest.mark.parametrize("kwargs, message", BAD)
def test_bad_arguments_are_named(kwargs, message, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the kernel ran although the arguments are invalid")

    monkeypatch.setattr(kernels, "lyapunov_kernel", never)
    p = tfk.TransformerParams.linear(-np.eye(3))
    with pytest.raises((ValueError, TypeError), match=message):
        tfk.lyapunov_spectrum(p, 4, 2, 10, **kwargs)


def test_outputs(tmp_path):
    p = tfk.TransformerParams.random(**SMALL)
    ly = tfk.lyapunov_spectrum(p, 6, 2, 10, k=3)
    paths = ly.save(tmp_path)
    assert sorted(path.rsplit("/", 1)[-1] for path in paths) == [
        "lyapunov.csv",
        "lyapunov.json",
        "lyapunov.png",
    ]
    doc = json.loads((tmp_path / "lyapunov.json").read_text())
    np.testing.assert_array_equal(doc["exponents"], ly.exponents)
    assert doc["config"]["k"] == 3 and "versions" in doc["meta"]
    assert ly.meta["throughput"] > 0 and ly.quantiles.shape == (7, 3)
    rows = (tmp_path / "lyapunov.csv").read_text().splitlines()
    assert rows[0].startswith("index,count,mean") and len(rows) == 4
    assert "lambda_1" in ly.summary()


def test_checkpoint_resumes_and_dask_gives_the_same_bits(tmp_path):
    p = tfk.TransformerParams.random(**SMALL)
    kw = dict(t_final=2.0, k=3, transient=2, chunk_size=5, seed=4)
    local = tfk.lyapunov_spectrum(p, 17, 3, 20, **kw)
    path = tmp_path / "ly.ckpt"
    first = tfk.lyapunov_spectrum(p, 17, 3, 20, checkpoint=path, **kw)
    again = tfk.lyapunov_spectrum(p, 17, 3, 20, checkpoint=path, **kw)  # nothing left to run
    assert again.meta["resumed_chunks"] == again.meta["n_chunks"] == 4
    with pytest.raises(ValueError, match="checkpoint"):  # another configuration is refused
        tfk.lyapunov_spectrum(p, 17, 3, 20, checkpoint=path, **{**kw, "k": 2})
    dd = pytest.importorskip("dask.distributed")
    with (
        dd.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        dd.Client(cluster) as client,
    ):
        remote = tfk.lyapunov_spectrum(p, 17, 3, 20, client=client, **kw)
    for res in (first, again, remote):
        for key in local.stats:
            np.testing.assert_array_equal(res.stats[key], local.stats[key], err_msg=key)
        np.testing.assert_array_equal(res.exponents_ci, local.exponents_ci)
