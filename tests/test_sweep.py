"""Sweeps: every grid point bit-identical to the single study with its settings (decay and
geometry, locally and on Dask), the tidy table and its exports, and errors naming the
argument for a bad grid."""

import csv

import numpy as np
import pytest

import tfkernels as tfk

N, T, L = 23, 3, 8  # trajectories (not a multiple of the chunk size), tokens, layers


def small(**kw):
    kw = dict(dict(d_ff=8, damping=2.0, seed=0), **kw)
    return tfk.TransformerParams.random(d=4, n_heads=2, **kw)


def attention_only(**kw):
    return tfk.TransformerParams.random(d=4, n_heads=2, ffn=False, seed=1, **kw)


def assert_same_stats(a, b):
    assert a.stats.keys() == b.stats.keys()
    for key in a.stats:
        np.testing.assert_array_equal(a.stats[key], b.stats[key], err_msg=key)


DECAY = dict(n_trajectories=N, seq_len=T, n_layers=L, lambda_samples=3, chunk_size=5)
GEO = dict(n_trajectories=N, seq_len=T, n_layers=L, save_every=2, chunk_size=4, x0="sphere")


# ------------------------------------------------------------- the same bits
def test_decay_points_equal_the_single_studies():
    p = small()
    res = tfk.sweep(
        "perturbation_decay", p, {"damping": [1.0, 3.0], "beta": [0.5, 2.0]}, seed=4, **DECAY
    )
    assert res.settings == ["damping", "beta"] and len(res.results) == 4
    k = 0
    for damping in (1.0, 3.0):
        for beta in (0.5, 2.0):
            one = tfk.perturbation_decay(p.replace(damping=damping, beta=beta), seed=4, **DECAY)
            assert_same_stats(res.results[k], one)
            assert res.results[k].rate == one.rate and res.results[k].lambda_hat == one.lambda_hat
            assert res.table["damping"][k] == damping and res.table["beta"][k] == beta
            assert res.table["rate"][k] == one.rate
            k += 1
    assert res.values().shape == (2, 2)
    np.testing.assert_array_equal(res.values().ravel(), res.table["rate"])
    # the settings matter: more damping, faster decay
    assert res.values()[1, 0] < res.values()[0, 0]


def test_geometry_points_equal_the_single_studies():
    p = attention_only()
    grid = {"beta": [0.5, 4.0], "weight_scale": [0.5, 1.0, 2.0]}
    res = tfk.sweep(tfk.token_geometry, p, grid, metric="mean_cosine", t_final=2.0, **GEO)
    k = 0
    for beta in grid["beta"]:
        for scale in grid["weight_scale"]:
            q = p.replace(beta=beta, **{w: getattr(p, w) * scale for w in ("wq", "wk", "wv", "wo")})
            one = tfk.token_geometry(q, t_final=2.0, **GEO)
            assert_same_stats(res.results[k], one)
            k += 1
    S = L // 2 + 1
    assert res.values().shape == (2, 3, S)
    assert len(res.table["t"]) == 6 * S
    np.testing.assert_array_equal(res.values()[1, 2], res.results[5].metric("mean_cosine"))
    assert not np.array_equal(res.values()[0, 0], res.values()[1, 2])


def test_study_settings_dt_and_eps():
    p = small()
    res = tfk.sweep("decay", p, {"dt": [0.05, 0.2]}, **DECAY)
    for k, dt in enumerate((0.05, 0.2)):
        one = tfk.perturbation_decay(p, t_final=dt * L, **DECAY)
        assert_same_stats(res.results[k], one)
    res = tfk.sweep("decay", p, {"eps": [1e-5, 1e-4]}, **DECAY)
    one = tfk.perturbation_decay(p, eps=1e-4, **DECAY)
    assert_same_stats(res.results[1], one)
    geo = tfk.sweep("geometry", attention_only(), {"energy_beta": [0.0, 3.0]}, **GEO)
    assert np.all(geo.results[0].metric("energy") == 1.0)  # β = 0: every term is 1
    one = tfk.token_geometry(attention_only(), energy_beta=3.0, **GEO)
    assert_same_stats(geo.results[1], one)


# -------------------------------------------------------------------- outputs
def test_table_csv_xarray_and_plots(tmp_path):
    p = attention_only()
    res = tfk.sweep("geometry", p, {"beta": [0.5, 1.0, 4.0]}, **GEO)
    assert res.metric == "dens"
    paths = res.save(tmp_path / "out")
    assert sorted(x.rsplit("/", 1)[1] for x in paths) == ["sweep.csv", "sweep.json", "sweep.png"]
    with open(tmp_path / "out" / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["beta", "t", "dens", "dens_std", "n_valid"]
    S = L // 2 + 1
    assert len(rows) == 3 * S and float(rows[S]["beta"]) == 1.0
    np.testing.assert_allclose([float(r["dens"]) for r in rows], res.table["dens"], rtol=1e-9)
    xr = pytest.importorskip("xarray")
    ds = res.to_xarray()
    assert isinstance(ds, xr.Dataset) and ds["dens"].dims == ("beta", "layer")
    np.testing.assert_array_equal(ds["dens"].sel(beta=4.0).values, res.results[2].metric("dens"))
    dec = tfk.sweep("decay", small(), {"damping": [1.0, 2.0, 3.0]}, **DECAY)
    dec.plot(tmp_path / "line.png")
    assert (tmp_path / "line.png").stat().st_size > 0
    ds = dec.to_xarray()
    assert ds["rate"].dims == ("damping",)
    two = tfk.sweep("decay", small(), {"damping": [1.0, 2.0], "beta": [1.0, 2.0]}, **DECAY)
    two.plot(tmp_path / "heat.png")
    assert (tmp_path / "heat.png").stat().st_size > 0


def test_to_xarray_without_xarray_names_it(monkeypatch):
    import builtins

    res = tfk.sweep("decay", small(), {"damping": [1.0]}, **DECAY)
    real = builtins.__import__

    def no_xarray(name, *a, **kw):
        if name == "xarray":
            raise ImportError("no xarray")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_xarray)
    with pytest.raises(ImportError, match="pip install xarray"):
        res.to_xarray()


# --------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "grid, err, match",
    [
        ([("beta", [1.0])], TypeError, "`grid` must be a dict"),
        ({}, ValueError, "`grid` must have one or two settings"),
        ({"beta": [1.0], "damping": [1.0], "eps": [1e-6]}, ValueError, "one or two settings"),
        ({"temperature": [1.0]}, ValueError, "`grid` setting 'temperature' is unknown"),
        ({"energy_beta": [1.0]}, ValueError, "`grid` setting 'energy_beta' is unknown"),
        ({"beta": "1,2"}, TypeError, r"`grid\['beta'\]` must be a sequence of numbers"),
        ({"beta": ["a", "b"]}, TypeError, r"`grid\['beta'\]` must be a sequence of real"),
        ({"beta": []}, ValueError, r"`grid\['beta'\]` must be a non-empty 1-D"),
        ({"beta": [[1.0, 2.0]]}, ValueError, r"`grid\['beta'\]` must be a non-empty 1-D"),
        ({"beta": [1.0, np.nan]}, ValueError, r"`grid\['beta'\]` must hold finite"),
        ({"dt": [0.1], "t_final": [1.0]}, ValueError, "both 'dt' and 't_final'"),
        ({"beta": [1.0, -1.0]}, ValueError, r"`grid` point \{'beta': -1.0\}: .*`beta`"),
        ({"eps": [1e-30]}, ValueError, r"`grid` point \{'eps': 1e-30\}: `eps`"),
    ],
)
def test_bad_grid_is_refused_naming_it(grid, err, match):
    with pytest.raises(err, match=match):
        tfk.sweep("decay", small(), grid, **DECAY)


def test_bad_sweep_arguments_are_refused_naming_them():
    p = small()
    with pytest.raises(ValueError, match="`study` must be one of"):
        tfk.sweep("lyapunov", p, {"beta": [1.0]}, **DECAY)
    with pytest.raises(ValueError, match="also given as a study argument"):
        tfk.sweep("decay", p, {"eps": [1e-6]}, eps=1e-5, **DECAY)
    with pytest.raises(ValueError, match="also given as a study argument"):
        tfk.sweep("decay", p, {"dt": [0.1]}, t_final=1.0, **DECAY)
    with pytest.raises(TypeError, match="needs the study argument `n_layers`"):
        tfk.sweep("decay", p, {"beta": [1.0]}, n_trajectories=4, seq_len=3)
    with pytest.raises(TypeError, match="`save_every` is not an argument of the decay study"):
        tfk.sweep("decay", p, {"beta": [1.0]}, save_every=2, **DECAY)
    with pytest.raises(ValueError, match="`checkpoint` .* is a folder"):  # test_sweep_checkpoint
        tfk.sweep("geometry", p, {"beta": [1.0]}, checkpoint=".", **GEO)
    with pytest.raises(ValueError, match="unknown `metric`"):
        tfk.sweep("geometry", p, {"beta": [1.0]}, metric="cosine", **GEO)
    with pytest.raises(ValueError, match="`x0`"):
        tfk.sweep("geometry", p, {"beta": [1.0]}, **dict(GEO, x0="cube"))


# ----------------------------------------------------------------------- Dask
def test_sweep_and_geometry_on_dask_give_the_local_bits():
    dd = pytest.importorskip("distributed")
    p = attention_only()
    x0 = tfk.random_states(N, T, p.d, seed=3)
    geo_kw = dict(GEO, x0=x0)
    local_geo = tfk.token_geometry(p, **geo_kw)
    local_sw = tfk.sweep("decay", small(), {"damping": [1.0, 3.0]}, **DECAY)
    with (
        dd.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        dd.Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        remote_geo = tfk.token_geometry(p, client=client, **geo_kw)
        remote_sw = tfk.sweep("decay", small(), {"damping": [1.0, 3.0]}, client=client, **DECAY)
    assert_same_stats(remote_geo, local_geo)
    for a, b in zip(remote_sw.results, local_sw.results):
        assert_same_stats(a, b)
    assert "cluster" in remote_sw.meta and "cluster" in remote_geo.meta
