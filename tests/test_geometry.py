"""The token-geometry study: each metric against its definition (float64 loops), the
streamed statistics against the per-trajectory values, bit-identical results whatever the
chunks and threads, blow-up counting, argument checks, outputs, and the equiangular ODE of
the sphere model."""

import json
import math

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels.studies import geometry


# ------------------------------------------------------------- direct definitions
def direct_metrics(X, beta):
    """Every metric of one state ``X (T, d)`` from its definition, with plain loops."""
    T = X.shape[0]
    u = [X[i] / math.sqrt(sum(float(x) ** 2 for x in X[i])) for i in range(T)]
    C = np.array([[float(np.dot(u[i], u[j])) for j in range(T)] for i in range(T)])
    pairs = [(i, j) for i in range(T) for j in range(T) if i != j]
    mean_cos = sum(C[i, j] for i, j in pairs) / len(pairs)
    dens = sum(C[i, j] > 0.999 for i, j in pairs) / len(pairs)
    clusters = np.linalg.matrix_rank((C > 0.9999).astype(float))
    mean = X.mean(axis=0)
    R = X - mean[None, :]

    def composite(M):
        n1 = max(sum(abs(M[i, j]) for i in range(T)) for j in range(M.shape[1]))
        ninf = max(sum(abs(M[i, j]) for j in range(M.shape[1])) for i in range(T))
        return math.sqrt(n1 * ninf)

    def fro(M):
        return math.sqrt(sum(float(x) ** 2 for x in M.flat))

    energy = sum(math.exp(beta * C[i, j]) for i in range(T) for j in range(T))
    energy /= math.exp(beta) * T * T
    return {
        "mean_cosine": mean_cos,
        "dens": dens,
        "clusters": clusters,
        "rank_collapse": composite(R) / composite(X),
        "rank_collapse_fro": fro(R) / fro(X),
        "energy": energy,
    }


def clustered_states(n, T, d, seed):
    """States whose tokens gather around 1–3 centres with spreads around the thresholds."""
    gen = np.random.default_rng(seed)
    out = np.empty((n, T, d))
    for b in range(n):
        centres = gen.standard_normal((gen.integers(1, 4), d))
        which = gen.integers(0, centres.shape[0], T)
        spread = [1e-5, 1e-3, 3e-2, 1.0][b % 4]
        out[b] = centres[which] * gen.uniform(0.5, 2.0, (T, 1))
        out[b] += spread * gen.standard_normal((T, d))
    return out


def small(dtype=np.float64, **kw):
    kw = dict(dict(ffn=False, beta=3.0, seed=0, damping=0.0), **kw)
    return tfk.TransformerParams.random(d=6, n_heads=2, dtype=dtype, **kw)


# ------------------------------------------------------------------ the metrics
@pytest.mark.parametrize("T, d", [(2, 3), (5, 4), (7, 2)])
def test_each_metric_matches_its_definition(T, d):
    X = clustered_states(12, T, d, seed=T * d)
    got = geometry.geometry_metrics(X, 1.7)
    for b in range(X.shape[0]):
        want = direct_metrics(X[b], 1.7)
        for name in geometry.METRICS:
            # float64 sums in another order: a few ulps of values of order 1
            np.testing.assert_allclose(got[name][b], want[name], rtol=1e-13, atol=1e-15)
    # the thresholds are exercised: clustered and spread states, 1 to T clusters
    assert {0.0, 1.0} <= set(np.round(got["dens"], 6)) or got["dens"].max() > 0.5
    assert got["clusters"].min() < T and got["clusters"].max() == T


def test_metrics_of_a_batch_do_not_depend_on_the_batch():
    X = clustered_states(9, 5, 3, seed=1)
    whole = geometry.geometry_metrics(X.reshape(3, 3, 5, 3), 2.0)
    for b in range(9):
        one = geometry.geometry_metrics(X[b], 2.0)
        for name in geometry.METRICS:
            assert whole[name].reshape(9)[b] == one[name]


def test_metrics_do_not_depend_on_the_scale_of_a_state():
    X = clustered_states(8, 5, 3, seed=5)
    ref = geometry.geometry_metrics(X, 1.0)
    for scale in (2.0**-1000, 2.0**1000, 1e300):
        got = geometry.geometry_metrics(X * scale, 1.0)
        for name in geometry.METRICS:
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-14, atol=1e-15)


def test_zero_token_and_nonfinite_states_give_nan():
    X = clustered_states(3, 4, 3, seed=2)
    X[1, 2] = 0.0
    X[2, 0, 0] = np.inf
    got = geometry.geometry_metrics(X, 1.0)
    for name in geometry.METRICS:
        assert np.isfinite(got[name][0]) and np.isnan(got[name][1:]).all(), name


# --------------------------------------------------------------- the statistics
def test_study_statistics_match_the_per_trajectory_values():
    p = small()
    B, T, N, k = 23, 5, 12, 3
    x0 = clustered_states(B, T, p.d, seed=3)
    geo = tfk.token_geometry(p, B, T, N, t_final=2.0, save_every=k, x0=x0, chunk_size=5)
    snaps = tfk.integrate(p, x0, N, t_final=2.0, save_every=k)
    beta = p.beta / math.sqrt(p.d / p.n_heads)
    ref = geometry.geometry_metrics(snaps, beta)  # (B, S) each: the NumPy reference
    # the values the study reduced: measured inside the compiled flow
    cfg = geometry.plan(p, B, T, N, t_final=2.0, save_every=k, x0=x0).shared[1]
    vals = geometry.measure_flow(p, x0, cfg, 0)
    for name in geometry.METRICS:
        # the counts are the same numbers; the real values agree to a few ulps
        np.testing.assert_allclose(vals[name], ref[name], rtol=1e-14, atol=1e-15, err_msg=name)
    np.testing.assert_allclose(geo.t, np.linspace(0.0, 2.0, N // k + 1), rtol=1e-15)
    assert geo.n_valid == B and geo.n_nonfinite == 0
    for name in geometry.REAL_METRICS:
        x = vals[name]
        # the means and stds are exact from values rounded to multiples of 2^-52
        np.testing.assert_allclose(geo.metric(name), x.mean(axis=0), rtol=0, atol=1e-15)
        np.testing.assert_allclose(geo.metric(name, "std"), x.std(axis=0, ddof=1), atol=1e-12)
        np.testing.assert_array_equal(geo.metric(name, "min"), x.min(axis=0))
        np.testing.assert_array_equal(geo.metric(name, "max"), x.max(axis=0))
    cl = vals["clusters"]
    np.testing.assert_array_equal(geo.metric("clusters"), cl.mean(axis=0))
    for q in geometry.CLUSTER_QUANTILES:
        want = np.quantile(cl, q, axis=0, method="lower")
        np.testing.assert_array_equal(geo.metric("clusters", f"q{round(100 * q):02d}"), want)
    np.testing.assert_array_equal(geo.metric("clusters", "median"), geo.stats["clusters_q50"])


@pytest.mark.parametrize("x0", ["sphere", "normal"])
def test_same_bits_whatever_the_chunks_and_threads(x0, dtype):
    p = small(dtype=dtype)
    runs = [
        tfk.token_geometry(
            p,
            29,
            4,
            10,
            t_final=1.5,
            save_every=2,
            x0=x0,
            seed=7,
            noise=0.01,
            chunk_size=cs,
            n_threads=nt,
        )
        for cs, nt in ((29, 2), (1, 1), (4, 2), (10, 1))
    ]
    for other in runs[1:]:
        assert other.stats.keys() == runs[0].stats.keys()
        for key in runs[0].stats:
            np.testing.assert_array_equal(other.stats[key], runs[0].stats[key], err_msg=key)
    # and the seed matters
    again = tfk.token_geometry(p, 29, 4, 10, t_final=1.5, save_every=2, x0=x0, seed=8)
    assert not np.array_equal(again.stats["mean_cosine_mean"], runs[0].stats["mean_cosine_mean"])


def test_sphere_start_is_the_normalized_normal_draws():
    p = small()
    geo = tfk.token_geometry(p, 40, 4, 2, x0="sphere", seed=1)
    X = tfk.random_states(40, 4, p.d, seed=1)
    X /= np.linalg.norm(X, axis=-1, keepdims=True)
    same = tfk.token_geometry(p, 40, 4, 2, x0=X, seed=1)
    np.testing.assert_allclose(
        geo.metric("mean_cosine"), same.metric("mean_cosine"), rtol=0, atol=1e-15
    )
    assert geo.stats["clusters_min"][0] == 4  # distinct random tokens at t = 0
    normal = tfk.token_geometry(p, 40, 4, 2, x0="normal", seed=1)
    # cosines do not see the norms at t = 0; the flow from unnormalized tokens differs
    assert normal.metric("mean_cosine")[0] == pytest.approx(geo.metric("mean_cosine")[0], abs=1e-15)
    assert normal.metric("mean_cosine")[-1] != geo.metric("mean_cosine")[-1]


def test_blown_up_and_zero_token_trajectories_are_counted_and_excluded():
    d, T, B = 6, 3, 8
    p = tfk.TransformerParams(linear=60.0 * np.eye(d))  # X(t) grows by 1 + 60·Δt per layer
    x0 = clustered_states(B, T, d, seed=4)
    x0[[2, 5]] *= 1e305  # these overflow float64 within a few layers
    x0[6, 1] = 0.0  # a zero token: cosines undefined from layer 0
    geo = tfk.token_geometry(p, B, T, 10, t_final=1.0, save_every=2, x0=x0, chunk_size=3)
    assert geo.n_nonfinite == 3 and geo.n_valid == B - 3
    assert geo.nonfinite_indices == [2, 5, 6]
    assert geo.nonfinite_layers[2] == 0 and 1 <= geo.nonfinite_layers[0] <= 10
    keep = [0, 1, 3, 4, 7]
    ref = tfk.token_geometry(p, 5, T, 10, t_final=1.0, save_every=2, x0=x0[keep])
    for key in ref.stats:
        np.testing.assert_array_equal(geo.stats[key], ref.stats[key], err_msg=key)
    # nothing valid: NaN statistics, no error
    none = tfk.token_geometry(p, 2, T, 10, save_every=2, x0=x0[[2, 5]])
    assert none.n_valid == 0 and np.isnan(none.metric("mean_cosine")).all()
    assert np.isnan(none.metric("clusters", "median")).all()


# ------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(x0="uniform"), ValueError, r"`x0` must be one of"),
        (dict(x0=np.zeros((5, 4, 6), dtype=np.float32)), TypeError, "`x0` has dtype float32"),
        (dict(x0=np.zeros((6, 4, 6))), ValueError, r"`x0` must have shape \(n_trajectories"),
        (dict(x0=np.zeros((5, 4, 5))), ValueError, "`x0` has width 5"),
        (dict(x0=np.full((5, 4, 6), np.nan)), ValueError, "`x0` contains NaN"),
        (dict(x0=[[1.0]]), ValueError, "`x0` must have 3 dimensions"),
        (dict(seq_len=1), ValueError, "`seq_len` must be >= 2"),
        (dict(save_every=3), ValueError, "`save_every`=3 must divide `n_layers`=4"),
        (dict(energy_beta=-1.0), ValueError, "`energy_beta`"),
        (dict(chunk_size=0), ValueError, "`chunk_size`"),
        (dict(n_trajectories=0), ValueError, "`n_trajectories`"),
        (dict(n_trajectories=2**34 + 1), ValueError, "`n_trajectories`"),
        (dict(method="rk5"), ValueError, "`method`"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kw, err, match):
    args = dict(n_trajectories=5, seq_len=4, n_layers=4)
    args.update(kw)
    with pytest.raises(err, match=match):
        tfk.token_geometry(small(), **args)


def test_metric_names_are_checked():
    geo = tfk.token_geometry(small(), 3, 3, 2)
    with pytest.raises(ValueError, match="`name`"):
        geo.metric("cosine")
    with pytest.raises(ValueError, match="`stat` must be one of"):
        geo.metric("energy", "median")


# -------------------------------------------------------------------- outputs
def test_save_writes_json_csv_png(tmp_path):
    geo = tfk.token_geometry(small(), 6, 3, 4, save_every=2, x0="sphere")
    paths = geo.save(tmp_path / "out")
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == [
        "geometry.csv",
        "geometry.json",
        "geometry.png",
    ]
    doc = json.loads((tmp_path / "out" / "geometry.json").read_text())
    assert doc["config"]["x0"] == "sphere" and doc["n_valid"] == 6
    np.testing.assert_array_equal(doc["stats"]["mean_cosine_mean"], geo.metric("mean_cosine"))
    header = (tmp_path / "out" / "geometry.csv").read_text().splitlines()[0].split(",")
    assert header == list(geo.stats)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["geometry.csv", "geometry.json", "geometry.png"]
    )


# ------------------------------------------------------- the equiangular sphere
def test_equiangular_mean_cosine_follows_the_exact_ode():
    """n tokens on S^{n−1} with all pairwise inner products ρ₀, Q = K = V = I, attention
    only, projected on the sphere (the model of ``tests/test_blocks_reference.py``):
    the mean cosine follows ρ' = 2(1 − ρ)((n − 1)ρ + 1) / (e^{β(1 − ρ)} + n − 1)."""
    from scipy.integrate import solve_ivp

    n, beta, rho0, t_final = 5, 2.0, 0.3, 2.0
    eye = np.eye(n)
    p = tfk.TransformerParams(
        wq=eye,
        wk=eye,
        wv=eye,
        wo=eye,
        n_heads=1,
        beta=beta * math.sqrt(n),
        norm="sphere",
        norm_position="tangent",
    )
    a = math.sqrt(1.0 - rho0)
    b = (math.sqrt(1.0 + (n - 1) * rho0) - a) / n
    X0 = a * eye + b * np.ones((n, n))
    x0 = np.stack([X0, X0[::-1]])  # two trajectories: the tokens in either order
    geo = tfk.token_geometry(
        p, 2, n, 200, t_final=t_final, method="rk4", save_every=20, x0=x0, energy_beta=beta
    )
    sol = solve_ivp(
        lambda t, r: 2 * (1 - r) * ((n - 1) * r + 1) / (np.exp(beta * (1 - r)) + n - 1),
        (0.0, float(geo.t[-1])),  # t_final, to rounding (the saved times are n·Δt)
        [rho0],
        t_eval=geo.t,
        rtol=1e-12,
        atol=1e-14,
    )
    rho = sol.y[0]
    # rk4 with Δt = 0.01: the reference test's tolerance
    np.testing.assert_allclose(geo.metric("mean_cosine"), rho, rtol=0, atol=1e-8)
    # the energy of an equiangular configuration: (1 + (n − 1)e^{β(ρ − 1)}) / n
    want_e = (1 + (n - 1) * np.exp(beta * (rho - 1))) / n
    np.testing.assert_allclose(geo.metric("energy"), want_e, rtol=0, atol=1e-7)
    assert rho[-1] - rho0 > 0.3  # the tokens do cluster: the test bites


def test_checkpoint_resumes_to_the_same_bits(tmp_path):
    p = small()
    kw = dict(save_every=2, x0="sphere", chunk_size=4, seed=2)
    whole = tfk.token_geometry(p, 14, 3, 4, **kw)
    ck = tmp_path / "geo.ckpt"
    first = tfk.token_geometry(p, 14, 3, 4, checkpoint=ck, **kw)
    again = tfk.token_geometry(p, 14, 3, 4, checkpoint=ck, **kw)  # finished: no chunk runs
    assert again.meta["resumed_chunks"] == again.meta["n_chunks"] == 4
    for res in (first, again):
        for key in whole.stats:
            np.testing.assert_array_equal(res.stats[key], whole.stats[key], err_msg=key)
    with pytest.raises(ValueError, match="`checkpoint`"):
        tfk.token_geometry(p, 14, 3, 4, checkpoint=ck, **dict(kw, seed=3))
