"""The compiled token-geometry measurement (``kernels.geometry``, inside the flow's
drivers) against the NumPy reference ``geometry_metrics``: the same counts (``dens``,
clusters) and the real metrics to a few ulps, on random, clustered and chained states,
at thresholds exactly; the exact cluster count against an exact rational rank; the
choice of metrics; the same bits whatever the chunks, threads and layout; and the
sphere model as Geshkovski et al.'s update."""

import importlib.util
import math
import pathlib
from fractions import Fraction

import numpy as np
import pytest

import tfkernels as tfk
from test_geometry import clustered_states
from tfkernels import config, kernels
from tfkernels.kernels import geometry as kg
from tfkernels.kernels import structs
from tfkernels.studies import geometry

ROOT = pathlib.Path(__file__).resolve().parents[1]


def measured(p, x0, n_layers=2, t_final=0.5, metrics=None, beta=1.7):
    """The kernel's per-trajectory values at every layer and the reference's values of
    the same snapshots (``tfk.integrate``: the same flow)."""
    B, T, d = x0.shape
    cfg = geometry.plan(
        p, B, T, n_layers, t_final=t_final, x0=x0, metrics=metrics, energy_beta=beta
    ).shared[1]
    got = geometry.measure_flow(p, x0, cfg, 0)
    snaps = tfk.integrate(p, x0, n_layers, t_final=t_final, save_every=1, throw=False)
    return got, geometry.geometry_metrics(snaps, beta)


def assert_agree(got, ref, names=geometry.METRICS):
    for name in names:
        g, r = got[name], ref[name]
        if name in ("dens", "clusters"):  # counts over the same cosine bits
            np.testing.assert_array_equal(g, r, err_msg=name)
        else:  # sums in another order: a few ulps of values of order 1
            np.testing.assert_allclose(g, r, rtol=1e-14, atol=2e-15, err_msg=name)


def attention(d, dtype=np.float64, beta=3.0):
    return tfk.TransformerParams.random(d=d, n_heads=1, ffn=False, beta=beta, seed=1, dtype=dtype)


# ------------------------------------------------------------- against the reference
@pytest.mark.parametrize("T, d", [(2, 3), (7, 2), (32, 2), (9, 40), (40, 16)])
def test_kernel_metrics_match_the_numpy_reference(T, d, dtype):
    # (9, 40) and (40, 16) exceed config.LANES_MAX_SIZE: the row layout
    x0 = clustered_states(21, T, d, seed=T + d).astype(dtype)
    got, ref = measured(attention(d, dtype), x0)
    assert_agree(got, ref)
    # the clustered states exercise the thresholds: several cluster counts, dens in (0, 1)
    assert len(np.unique(got["clusters"])) > 1
    assert np.any((got["dens"] > 0) & (got["dens"] < 1)) or T == 2


def test_random_states_and_every_choice_of_metrics():
    x0 = tfk.random_states(19, 6, 3, seed=4)
    p = attention(3)
    full, ref = measured(p, x0)
    assert_agree(full, ref)
    for metrics in (("dens",), ("clusters", "energy"), ("rank_collapse_fro", "mean_cosine")):
        part, _ = measured(p, x0, metrics=metrics)
        assert set(part) == set(metrics)
        for name in metrics:  # a metric's bits do not depend on the others asked for
            np.testing.assert_array_equal(part[name], full[name], err_msg=name)


def tie_state(c):
    """Two unit tokens of R² whose reference cosine is exactly ``c`` (x₁ = (1, 0),
    x₂ = (c, s) with c² + s² rounding to 1, so that both norms are exactly 1), and a
    third token opposite the first."""
    s = math.sqrt(1.0 - c * c)
    for cand in (s, np.nextafter(s, 0.0), np.nextafter(s, 1.0)):
        if c * c + cand * cand == 1.0:
            return np.array([[1.0, 0.0], [c, cand], [-1.0, 0.0]])
    raise AssertionError(f"no exact unit vector with first component {c!r}")


@pytest.mark.parametrize("threshold", [geometry.DENS_THRESHOLD, geometry.CLUSTER_THRESHOLD])
def test_cosines_at_the_thresholds_count_strictly_above(threshold):
    cs = [np.nextafter(threshold, 0.0), threshold, np.nextafter(threshold, 1.0)]
    x0 = np.stack([tie_state(c) for c in cs])
    ref = geometry.geometry_metrics(x0, 1.0)
    # the construction is exact: the reference's cosine of tokens 0 and 1 is c itself
    p = tfk.TransformerParams(linear=np.zeros((2, 2)))
    got, ref1 = measured(p, x0, n_layers=1, t_final=1.0)
    assert_agree(got, ref1)
    dens = got["dens"][:, 0]
    clusters = got["clusters"][:, 0]
    pair = 2 / 6  # one pair of 3 tokens, both orders
    if threshold == geometry.DENS_THRESHOLD:
        np.testing.assert_array_equal(dens, [0.0, 0.0, pair])
    else:
        np.testing.assert_array_equal(clusters, [3.0, 3.0, 2.0])
    np.testing.assert_array_equal(ref["dens"], dens)


def chained_states(n, T, step, seed):
    """Tokens on the unit circle at angles ``k·step`` (a chain: neighbours within the
    cluster threshold, the next but one not), shuffled, with groups of coincident ones."""
    gen = np.random.default_rng(seed)
    out = np.empty((n, T, 2))
    for b in range(n):
        ang = np.cumsum(gen.choice([0.0, step, 3 * step], size=T)) + gen.uniform(0, 6.3)
        ang += gen.normal(0.0, 1e-4 * step, T)
        out[b] = np.stack([np.cos(ang), np.sin(ang)], axis=1)[gen.permutation(T)]
    return out


def test_chains_of_tokens_take_the_exact_rank():
    step = 0.0120  # cos(step) > 0.9999 > cos(2·step): not an equivalence
    x0 = chained_states(40, 16, step, seed=0)
    p = tfk.TransformerParams(linear=np.zeros((2, 2)))
    got, ref = measured(p, x0, n_layers=1, t_final=1.0)
    assert_agree(got, ref)
    # the chains do leave the clique path: some counts are not the number of distinct rows
    A = geometry_cosines(x0) > geometry.CLUSTER_THRESHOLD
    distinct = np.array([len({r.tobytes() for r in a}) for a in A])
    assert np.any(got["clusters"][:, 0] != distinct)


def geometry_cosines(X):
    """The reference's cosines (its own computation, repeated for the test)."""
    d = X.shape[-1]
    n2 = sum(X[..., k] * X[..., k] for k in range(d))
    U = X / np.sqrt(n2)[..., None]
    C = U[:, :, None, 0] * U[:, None, :, 0]
    for k in range(1, d):
        C = C + U[:, :, None, k] * U[:, None, :, k]
    return C


def rational_rank(A):
    """The rank of an integer matrix by Gaussian elimination over the rationals."""
    M = [[Fraction(int(x)) for x in row] for row in A]
    rank, rows, cols = 0, len(M), len(M[0])
    for c in range(cols):
        piv = next((r for r in range(rank, rows) if M[r][c] != 0), None)
        if piv is None:
            continue
        M[rank], M[piv] = M[piv], M[rank]
        for r in range(rows):
            if r != rank and M[r][c] != 0:
                f = M[r][c] / M[rank][c]
                M[r] = [a - f * b for a, b in zip(M[r], M[rank])]
        rank += 1
    return rank


@pytest.mark.parametrize("T", [5, 12, 70])
def test_exact_rank_of_symmetric_01_matrices(T):
    gen = np.random.default_rng(T)
    L = 3
    gs = structs.geometry_scratch(T, 1, L)
    primes = kernels.rank_primes(T)
    for trial in range(12):
        masks = gs.masks
        masks[:] = 0
        mats = []
        for lane in range(L):
            dens = [0.05, 0.3, 0.7][(trial + lane) % 3]
            A = (gen.random((T, T)) < dens).astype(np.int64)
            A = np.triu(A, 1)
            A = A + A.T + np.eye(T, dtype=np.int64)
            if trial % 4 == 0:  # duplicate tokens: repeated rows and columns
                idx = gen.integers(0, max(1, T // 3), T)
                A = A[np.ix_(idx, idx)]
                np.fill_diagonal(A, 1)
            mats.append(A)
            for i in range(T):
                for j in range(T):
                    if A[i, j]:
                        masks[i, j >> 6, lane] |= np.uint64(1) << np.uint64(j & 63)
        for lane, A in enumerate(mats):
            want = rational_rank(A) if T <= 12 else np.linalg.matrix_rank(A)
            assert kg.exact_rank(masks, T, lane, primes, gs) == want
            k = kg.clique_count(masks, T, lane, gs.reps)
            assert k == -1 or k == want


def test_rank_primes_pass_the_hadamard_bound():
    for T, n in ((2, 1), (32, 2), (100, 0)):
        ps = kernels.rank_primes(T)
        assert n == 0 or ps.size == n
        assert all(p < 2**31 for p in ps) and len(set(ps.tolist())) == ps.size
        for p in ps[:3]:
            assert all(int(p) % q for q in range(3, 50000, 2))  # no small factor
        assert sum(math.log2(p) for p in ps) > structs.hadamard_log2(T)


def test_zero_and_nonfinite_tokens_give_nan():
    x0 = clustered_states(4, 5, 3, seed=2)
    x0[1, 3] = 0.0
    p = tfk.TransformerParams(linear=np.zeros((3, 3)))
    got, ref = measured(p, x0, n_layers=1, t_final=1.0)
    for name in geometry.METRICS:
        assert np.isnan(got[name][1]).all() and np.isfinite(got[name][[0, 2, 3]]).all()
    assert_agree(got, ref)


def test_scale_extremes_match_the_reference():
    x0 = clustered_states(6, 4, 3, seed=7)
    x0 *= np.array([1.0, 2.0**-1060, 2.0**1000, 1e-300, 1e300, 3.0])[:, None, None]
    got = geometry.measure_flow(
        tfk.TransformerParams(linear=np.zeros((3, 3))),
        x0,
        geometry.plan(
            tfk.TransformerParams(linear=np.zeros((3, 3))), 6, 4, 1, x0=x0, energy_beta=1.0
        ).shared[1],
        0,
    )
    ref = geometry.geometry_metrics(x0, 1.0)
    for name in geometry.METRICS:
        np.testing.assert_allclose(got[name][:, 0], ref[name], rtol=1e-14, atol=2e-15)


# ------------------------------------------------------------------------ the bits
def test_same_bits_in_both_layouts():
    x0 = tfk.random_states(13, 8, 4, seed=3)
    p = attention(4)
    runs = []
    for size in (10**9, 0):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(config, "LANES_MAX_SIZE", size)
            runs.append(measured(p, x0, n_layers=3)[0])
    for name in geometry.METRICS:
        np.testing.assert_array_equal(runs[0][name], runs[1][name], err_msg=name)


def sphere(beta, d=2):
    eye = np.eye(d)
    return tfk.TransformerParams(
        wq=eye,
        wk=eye,
        wv=eye,
        wo=eye,
        n_heads=1,
        beta=beta * math.sqrt(d),
        norm="sphere",
        norm_position="post",
    )


@pytest.mark.parametrize("metrics", [("dens",), None])
def test_sphere_study_same_bits_whatever_the_chunks_and_threads(metrics):
    p = sphere(4.0)
    kw = dict(t_final=3.0, x0="sphere", seed=5, metrics=metrics)
    runs = [
        tfk.token_geometry(p, 37, 12, 30, chunk_size=cs, n_threads=nt, **kw)
        for cs, nt in ((37, 2), (1, 1), (8, 2), (16, 1))
    ]
    for other in runs[1:]:
        assert other.stats.keys() == runs[0].stats.keys()
        for key in runs[0].stats:
            np.testing.assert_array_equal(other.stats[key], runs[0].stats[key], err_msg=key)
    if metrics is None:  # dens alone: the same bits as among all the metrics
        one = tfk.token_geometry(p, 37, 12, 30, **dict(kw, metrics="dens"))
        for key in one.stats:
            np.testing.assert_array_equal(one.stats[key], runs[0].stats[key], err_msg=key)
    else:
        assert set(runs[0].stats) == {"layer", "t", "count"} | {
            f"dens_{s}" for s in ("mean", "std", "min", "max")
        }
        with pytest.raises(ValueError, match="was not measured"):
            runs[0].metric("energy")


@pytest.mark.parametrize(
    "metrics, match",
    [
        ("cos", "`metrics` must name metrics"),
        ((), "`metrics` must name at least one"),
        (("dens", "dens"), "`metrics` names a metric twice"),
        (3, "`metrics` must be a metric name"),
    ],
)
def test_bad_metrics_are_refused(metrics, match):
    with pytest.raises((TypeError, ValueError), match=match):
        tfk.token_geometry(sphere(1.0), 4, 3, 2, metrics=metrics)


def test_sweep_metric_must_be_measured():
    with pytest.raises(ValueError, match="`metric` 'energy' must be one of the study's"):
        tfk.sweep(
            "token_geometry",
            sphere(1.0),
            {"beta": [1.0]},
            metric="energy",
            metrics=("dens",),
            n_trajectories=4,
            seq_len=3,
            n_layers=2,
        )


# ------------------------------------------------------- Geshkovski et al.'s model
def their_update(X, beta, dt, steps):
    """``X ← normalize(X + Δt·softmax(β X Xᵀ) X)`` in NumPy (the update of Geshkovski
    et al.'s phase-diagram script, with Q = K = V = I)."""
    X = X.copy()
    for _ in range(steps):
        S = beta * np.einsum("bid,bjd->bij", X, X)
        S = np.exp(S - S.max(axis=-1, keepdims=True))
        S /= S.sum(axis=-1, keepdims=True)
        X = X + dt * np.einsum("bij,bjd->bid", S, X)
        X /= np.linalg.norm(X, axis=-1, keepdims=True)
    return X


def test_sphere_model_is_their_update_and_dens_their_density():
    beta, B, T = 3.0, 12, 32
    X0 = tfk.random_states(B, T, 2, seed=9)
    X0 /= np.linalg.norm(X0, axis=-1, keepdims=True)
    ours = tfk.integrate(sphere(beta), X0, 40, t_final=4.0)
    theirs = their_update(X0, beta, 0.1, 40)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)  # the same map, to rounding
    geo = tfk.token_geometry(sphere(beta), B, T, 40, t_final=4.0, x0=X0, metrics="dens")
    IP = np.einsum("bid,bjd->bij", theirs, theirs)
    off = ~np.eye(T, dtype=bool)
    pooled = (IP[:, off] > 0.999).sum() / (B * T * (T - 1))  # their pooled fraction
    assert geo.metric("dens")[-1] == pytest.approx(pooled, abs=1e-15)


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "geshkovski_diagram", ROOT / "bench" / "geshkovski_diagram.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_boundary_is_the_crossing_time_of_the_equiangular_ode():
    from scipy.integrate import solve_ivp

    bench = load_bench()
    n = bench.N_TOKENS
    betas = [0.1, 2.0, 5.0]
    tstar = bench.boundary(betas)

    def hit(t, r, b):
        return r[0] - 0.999

    hit.terminal = True
    for b, want in zip(betas, tstar):
        sol = solve_ivp(
            lambda t, r, b: 2 * (1 - r) * ((n - 1) * r + 1) / (np.exp(b * (1 - r)) + n - 1),
            (0.0, 10 * want),
            [bench.RHO0],
            events=hit,
            args=(b,),
            rtol=1e-11,
            atol=1e-13,
        )
        assert sol.t_events[0][0] == pytest.approx(want, rel=1e-7)
    assert np.all(np.diff(tstar) > 0)  # a larger β clusters later


def test_their_checkpoints_are_steps_of_our_layers():
    layers = load_bench().their_checkpoint_layers()
    assert len(layers) == 200 and layers[0] == 1 and layers[-1] == 300
    assert np.all(np.diff(layers) >= 1)
