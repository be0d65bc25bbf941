"""``tfkernels geometry`` and ``tfkernels sweep``: small runs that write their three files
(with provenance), the β × t phase diagram, one-line errors naming the flag before any
work (and no file written), and ``--help``."""

import csv
import json

import numpy as np
import pytest

import tfkernels as tfk
from test_cli import main  # (exit status, stdout, stderr) of `tfkernels argv`
from tfkernels import cli
from tfkernels.cli import grids
from tfkernels.studies import geometry as geometry_study
from tfkernels.studies import sweep as sweep_study

SMALL = ["--trajectories", "24", "--seq-len", "4", "--d", "4", "--no-progress"]


def test_geometry_writes_its_files_with_provenance(tmp_path, capsys):
    out = tmp_path / "g"
    argv = ["geometry", *SMALL, "--layers", "6", "--t-final", "2", "--save-every", "2"]
    code, stdout, err = main([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "geometry.csv",
        "geometry.json",
        "geometry.png",
    ]
    doc = json.loads((out / "geometry.json").read_text())
    assert doc["config"]["x0"] == "sphere" and doc["n_trajectories"] == 24
    assert "versions" in doc["meta"] and "machine" in doc["meta"]
    assert "mean_cosine" in stdout and "wrote" in stdout
    # the same study from Python: the same numbers
    p = tfk.TransformerParams.random(d=4, n_heads=1, ffn=False, seed=0)
    res = tfk.token_geometry(p, 24, 4, 6, t_final=2.0, save_every=2, x0="sphere")
    np.testing.assert_array_equal(doc["stats"]["dens_mean"], res.metric("dens"))


def test_ensemble_options_run_the_api_studies(tmp_path, capsys):
    # geometry, lyapunov and sweep with --ensemble: the WeightEnsemble of the model
    # flags (--per-layer: a fresh draw per layer), the numbers of the Python API
    kw = dict(d=4, n_heads=1, ffn=False, seed=2)
    argv = ["geometry", *SMALL, "--layers", "4", "--seed", "2", "--ensemble", "--per-layer"]
    code, _, err = main([*argv, "--out", str(tmp_path / "g")], capsys)
    assert code == 0, err
    ens = tfk.WeightEnsemble(**kw, per_layer=True)
    res = tfk.token_geometry(ens, 24, 4, 4, t_final=10.0, x0="sphere", seed=2)
    doc = json.loads((tmp_path / "g" / "geometry.json").read_text())
    np.testing.assert_array_equal(doc["stats"]["mean_cosine_mean"], res.metric("mean_cosine"))
    assert doc["config"]["params"]["per_layer"] is True

    argv = ["lyapunov", *SMALL, "--layers", "4", "--k", "2", "--seed", "2", "--ensemble"]
    code, _, err = main([*argv, "--out", str(tmp_path / "l")], capsys)
    assert code == 0, err
    ens = tfk.WeightEnsemble(**kw, damping=1.0)  # the lyapunov command's default damping
    ly = tfk.lyapunov_spectrum(ens, 24, 4, 4, k=2, t_final=10.0, seed=2)
    doc = json.loads((tmp_path / "l" / "lyapunov.json").read_text())
    np.testing.assert_array_equal(doc["exponents"], ly.exponents)

    # the ensemble of post-LN blocks, over the weight scale
    argv = ["sweep", *SMALL, "--layers", "2", "--ensemble", "--grid", "weight_scale=0.5,2"]
    argv += ["--d-ff", "8", "--norm", "layernorm", "--norm-position", "post"]
    code, stdout, err = main([*argv, "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    post_ln = dict(d_ff=8, norm="layernorm", norm_position="post")
    sw = tfk.sweep(
        "decay",
        tfk.WeightEnsemble(d=4, n_heads=1, seed=0, **post_ln),
        {"weight_scale": [0.5, 2.0]},
        n_trajectories=24,
        seq_len=4,
        n_layers=2,
        progress=False,
    )
    doc = json.loads((tmp_path / "s" / "sweep.json").read_text())
    rates = [r["rate"] for r in doc["results"]]
    np.testing.assert_array_equal(rates, [r.rate for r in sw.results])
    assert rates[1] > rates[0]  # larger weights: a faster-growing perturbation


def test_geometry_beta_range_is_a_phase_diagram(tmp_path, capsys):
    out = tmp_path / "pd"
    argv = ["geometry", *SMALL, "--layers", "4", "--t-final", "4", "--beta", "0.5:4:3"]
    code, stdout, err = main([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    with open(out / "geometry.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["beta", "t", "dens", "dens_std", "n_valid"]
    assert len(rows) == 3 * 5
    assert sorted({float(r["beta"]) for r in rows}) == [0.5, 2.25, 4.0]
    doc = json.loads((out / "geometry.json").read_text())
    assert doc["grid"] == {"beta": [0.5, 2.25, 4.0]} and doc["metric"] == "dens"
    assert (out / "geometry.png").stat().st_size > 0
    assert "token_geometry over beta (3 points)" in stdout


def test_geometry_measures_what_is_asked(tmp_path, capsys):
    # a --beta range measures only --metric; --metrics chooses for one β
    out = tmp_path / "m"
    argv = ["geometry", *SMALL, "--layers", "4", "--model", "sphere", "--d", "2"]
    code, _, err = main([*argv, "--beta", "1:2:2", "--out", str(out)], capsys)
    assert code == 0, err
    doc = json.loads((out / "geometry.json").read_text())
    assert [r["config"]["metrics"] for r in doc["results"]] == [["dens"], ["dens"]]
    code, stdout, err = main([*argv, "--metrics", "energy,dens", "--out", str(out)], capsys)
    assert code == 0, err
    doc = json.loads((out / "geometry.json").read_text())
    assert doc["config"]["metrics"] == ["dens", "energy"]
    assert "energy_mean" in doc["stats"] and "clusters_median" not in doc["stats"]
    assert "energy" in stdout and "clusters" not in stdout


def test_sweep_writes_the_table(tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["sweep", *SMALL, "--layers", "4", "--d-ff", "8", "--grid", "damping=1,3"]
    code, stdout, err = main([*argv, "--grid", "beta=0.5:1:2", "--out", str(out)], capsys)
    assert code == 0, err
    with open(out / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(float(r["damping"]), float(r["beta"])) for r in rows] == [
        (1.0, 0.5),
        (1.0, 1.0),
        (3.0, 0.5),
        (3.0, 1.0),
    ]
    assert float(rows[2]["rate"]) < float(rows[0]["rate"])  # more damping, faster decay
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.json", "sweep.png"]
    code, _, err = main(
        ["sweep", *SMALL, "--study", "geometry", "--layers", "4", "--grid", "dt=0.1,0.5",
         "--metric", "energy", "--out", str(tmp_path / "sg")],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "sg" / "sweep.json").read_text())
    assert doc["metric"] == "energy" and doc["study"] == "token_geometry"


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a study or a sweep runs."""

    def never(*args, **kwargs):
        raise AssertionError("the work ran although the arguments are invalid")

    monkeypatch.setattr(geometry_study, "token_geometry", never)
    monkeypatch.setattr(sweep_study, "sweep", never)


BAD = [
    (["geometry", "--beta", "1:2"], "argument --beta: a range is A:B:N, got '1:2'"),
    (["geometry", "--beta", "0:1:3"], "argument --beta: must be > 0.0, got 0.0"),
    (["geometry", "--beta", "1:2:0"], "argument --beta: N of A:B:N must lie in [1, 10000]"),
    (["geometry", "--beta", "a,b"], "argument --beta: not a list of numbers: 'a,b'"),
    (["geometry", "--seq-len", "1"], "argument --seq-len: must be >= 2, got 1"),
    (["geometry", "--layers", "10", "--save-every", "3"], "`--save-every`=3 must divide"),
    (["geometry", "--heads", "3"], "`--heads`=3 must divide `--d`=8"),
    (["geometry", "--model", "sphere", "--heads", "2"], "`--model sphere` has one head"),
    (["geometry", "--model", "sphere", "--ensemble"], "`--ensemble` describes a random model"),
    (["geometry", "--model", "sphere", "--norm", "rmsnorm"], "`--norm` describes a random"),
    (["geometry", "--norm-position", "post"], "`--norm-position` post needs a `--norm`"),
    (["sweep", "--norm-position", "tangent"], "`--norm-position` tangent needs `--norm` sphere"),
    (["geometry", "--per-layer"], "`--per-layer` draws each layer's weights of an `--ensemble`"),
    (["sweep", "--per-layer"], "`--per-layer` draws each layer's weights of an `--ensemble`"),
    (["geometry", "--x0", "cube"], "argument --x0: invalid choice: 'cube'"),
    (["geometry", "--metric", "cos"], "argument --metric: invalid choice: 'cos'"),
    (["geometry", "--metrics", "dens,cos"], "`--metrics` must name metrics of"),
    (
        ["geometry", "--beta", "1:2:2", "--metrics", "energy"],
        "`--metrics` must include the diagram's `--metric` 'dens'",
    ),
    (["sweep", "--grid", "temp=1"], "`--grid` setting 'temp' is unknown"),
    (["sweep", "--study", "decay", "--grid", "energy_beta=1"], "setting 'energy_beta'"),
    (["sweep", "--grid", "beta"], "argument --grid: must be NAME=VALUES"),
    (["sweep", "--grid", "beta=x"], "argument --grid: not a list of numbers"),
    (["sweep", "--grid", "beta=1", "--grid", "beta=2"], "`--grid` names a setting twice"),
    (
        ["sweep", "--grid", "beta=1", "--grid", "damping=1", "--grid", "c=1"],
        "`--grid` may be given once or twice",
    ),
    (["sweep", "--grid", "dt=0.1", "--t-final", "1"], "`--t-final` cannot be given"),
]


@pytest.mark.parametrize("argv, message", BAD)
def test_bad_options_are_one_line_before_any_work(argv, message, capsys, no_work, tmp_path):
    out = tmp_path / "never"
    code, stdout, err = main([*argv, "--out", str(out)], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_errors_of_the_study_are_one_line(tmp_path, capsys):
    out = tmp_path / "never"
    code, _, err = main(["sweep", *SMALL, "--grid", "eps=1e-40", "--out", str(out)], capsys)
    assert code == 2 and "`grid` point {'eps': 1e-40}: `eps`" in err
    # a model the kernels cannot run yet is an expected error, not a crash
    from tfkernels import kernels
    from tfkernels.cli import geometry as geometry_cli

    argv = ["geometry", *SMALL, "--model", "sphere", "--layers", "2"]
    sphere = geometry_cli.model_from_args(cli.build_parser(argv).parse_args(argv), 1.0)
    try:
        kernels.pack_params(sphere)
        runs = True
    except NotImplementedError:
        runs = False
    code, _, err = main([*argv, "--out", str(out)], capsys)
    if runs:
        assert code == 0, err
    else:
        assert code == 2 and "do not run" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_sweep_without_grid_runs_the_default(tmp_path, capsys):
    code, stdout, err = main(
        ["sweep", *SMALL, "--layers", "2", "--d-ff", "4", "--out", str(tmp_path / "d")], capsys
    )
    assert code == 0, err
    assert "perturbation_decay over damping (4 points)" in stdout


def test_help_explains(capsys):
    for command, words in (
        ("geometry", ["--beta", "A:B:N", "phase diagram", "--x0", "--no-progress", "--out"]),
        ("sweep", ["--grid", "NAME=VALUES", "--study", "--metric"]),
    ):
        code, out, _ = main([command, "--help"], capsys)
        assert code == 0
        for w in words:
            assert w in out, (command, w)
    code, out, _ = main(["--help"], capsys)
    assert "geometry" in out and "sweep" in out


def test_parse_values():
    assert grids.parse_values("0.1:9:90")[:2] == (0.1, 0.1 + 8.9 / 89)
    assert grids.parse_values("0.1:9:90")[-1] == 9.0 and len(grids.parse_values("0.1:9:90")) == 90
    assert grids.parse_values("2") == (2.0,)
    assert grids.parse_values("1, 2,3") == (1.0, 2.0, 3.0)
    assert grids.parse_values("5:7:1") == (5.0,)
