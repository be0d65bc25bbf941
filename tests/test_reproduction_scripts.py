"""The reproduction scripts of bench/ (rank collapse, cosine propagation, Geshkovski et
al.'s phase diagram) on tiny settings: they write their figure, table and JSON with
provenance, and the JSON's numbers are those of the study functions (and, for the
phase diagram, of their algorithm in PyTorch from the same initial tokens)."""

import csv
import importlib.util
import json
import os

import numpy as np
import pytest

from tfkernels.studies import rank_collapse as rc
from tfkernels.studies import signal_propagation as sp

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rank_collapse_script(tmp_path):
    args = ["--d", "8", "--heads", "2", "--seq-len", "4", "--layers", "3", "--models", "3"]
    load("rank_collapse").main([*args, "--inputs", "2", "--out", str(tmp_path)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["rank_collapse.csv", "rank_collapse.json", "rank_collapse.png"]
    doc = json.loads((tmp_path / "rank_collapse.json").read_text())
    assert "versions" in doc and "machine" in doc and doc["settings"]["n_models"] == 3
    one = rc.rank_collapse_by_depth(
        "transformer", d=8, n_heads=2, seq_len=4, n_layers=3, n_models=3, n_inputs=2
    )
    want = np.median(one["composite"], axis=0)
    np.testing.assert_array_equal(doc["results"]["transformer"]["composite"]["median"], want)
    with open(tmp_path / "rank_collapse.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(rc.VARIANTS) * 2 * 4  # variants x norms x layers


def test_cosine_propagation_script(tmp_path):
    args = ["--widths", "8,12", "--layers", "3", "--seq-len", "4", "--models", "4"]
    args += ["--rem-betas", "3", "--rem-seq-len", "4", "--rem-d", "8", "--rem-models", "2"]
    load("cosine_propagation").main([*args, "--inputs", "2", "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "cosine_propagation.json").read_text())
    assert (tmp_path / "cosine_propagation.png").stat().st_size > 0
    theory = sp.cosine_recursion(0.2, 3, seq_len=4, **sp.DEFAULT_VARIANCES)
    np.testing.assert_array_equal(doc["recursion"], theory)
    for d in ("8", "12"):
        r = doc["results"][d]
        assert r["max_abs_diff"] == np.abs(np.array(r["mean"]) - theory).max()
    rem = doc["rem_regime"]["3.0"]
    np.testing.assert_array_equal(rem["recursion"], sp.cosine_recursion(0.2, 3, beta=3.0))
    assert rem["n_models"] == 2
    with open(tmp_path / "cosine_propagation.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 4


def test_geshkovski_script(tmp_path):
    gesh = load("geshkovski_diagram")
    args = ["--trajectories", "8", "--betas", "2", "--peer-betas", "0"]
    gesh.main([*args, "--out", str(tmp_path)])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["geshkovski.csv", "geshkovski.json", "geshkovski.png"]
    doc = json.loads((tmp_path / "geshkovski.json").read_text())
    assert doc["setup"]["betas"] == [0.1, 9.0] and doc["timing"]["same_machine_peer"] is None
    with open(tmp_path / "geshkovski.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 301


def test_geshkovski_model_is_their_algorithm():
    # the diagram's model (sphere retraction, beta*sqrt(2)) against their update in
    # PyTorch, from the same initial tokens: dens at their 200 checkpoints counts the
    # same pairs (the states differ by rounding only; no cosine lands that close to
    # 0.999), so the two differ by the rounding of a mean of fractions against their
    # pooled fraction, far below one pair
    pytest.importorskip("torch")
    import tfkernels as tfk

    gesh = load("geshkovski_diagram")
    x0 = tfk.random_states(16, gesh.N_TOKENS, gesh.D, seed=1)
    x0 /= np.linalg.norm(x0, axis=-1, keepdims=True)
    beta = 4.0
    p = gesh.sphere_model().replace(beta=beta * np.sqrt(gesh.D))
    ours = tfk.token_geometry(p, 16, gesh.N_TOKENS, gesh.STEPS, t_final=gesh.T_FINAL,
                              x0=x0, metrics=("dens",), progress=False)  # fmt: skip
    _, theirs = gesh.their_loop_seconds(beta, x0=x0, threads=1)
    mine = np.asarray(ours.metric("dens"))[gesh.their_checkpoint_layers()]
    assert 0.05 < mine[-1] <= 1.0  # clustering has begun: the test compares something
    pair = 1.0 / (16 * gesh.N_TOKENS * (gesh.N_TOKENS - 1))
    assert np.abs(mine - np.asarray(theirs)).max() <= pair / 1000
