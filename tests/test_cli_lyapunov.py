"""``tfkernels lyapunov``: a small run writes its three files with the numbers of the
Python call, bad options are one line before any work, and ``--help``."""

import json

import numpy as np
import pytest

import tfkernels as tfk
from test_cli import main  # (exit status, stdout, stderr) of `tfkernels argv`
from tfkernels.studies import lyapunov as lyapunov_study

SMALL = ["--trajectories", "12", "--seq-len", "2", "--d", "4", "--no-progress"]


def test_lyapunov_writes_its_files(tmp_path, capsys):
    out = tmp_path / "ly"
    argv = ["lyapunov", *SMALL, "--layers", "10", "--t-final", "2", "--k", "3"]
    code, stdout, err = main([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "lyapunov.csv",
        "lyapunov.json",
        "lyapunov.png",
    ]
    doc = json.loads((out / "lyapunov.json").read_text())
    assert doc["config"]["k"] == 3 and doc["n_trajectories"] == 12
    assert "lambda_1" in stdout and "wrote" in stdout
    p = tfk.TransformerParams.random(d=4, n_heads=1, ffn=False, damping=1.0, seed=0)
    res = tfk.lyapunov_spectrum(p, 12, 2, 10, t_final=2.0, k=3)
    np.testing.assert_array_equal(doc["exponents"], res.exponents)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--k", "17"], "`--k`=17 must be at most --seq-len * --d = 16"),
        (["--transient", "200"], "`--transient`=200 must be less than `--layers`=200"),
        (["--renorm-every", "0"], "argument --renorm-every: must be >= 1, got 0"),
        (["--heads", "3"], "`--heads`=3 must divide `--d`=8"),
    ],
)
def test_bad_options_are_one_line_before_any_work(argv, message, capsys, monkeypatch, tmp_path):
    def never(*a, **k):
        raise AssertionError("the study ran although the options are invalid")

    monkeypatch.setattr(lyapunov_study, "lyapunov_spectrum", never)
    out = tmp_path / "never"
    code, _, err = main(["lyapunov", "--seq-len", "2", *argv, "--out", str(out)], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_help(capsys):
    code, stdout, _ = main(["lyapunov", "--help"], capsys)
    assert code == 0 and "--renorm-every" in stdout and "--transient" in stdout
