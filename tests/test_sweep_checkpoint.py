"""Sweep checkpoints: an interrupted sweep (decay or geometry) resumes from its file to
the bits of an uninterrupted one, per grid point; a file of another grid or model is
refused; ``tfkernels sweep``, ``geometry`` (one study or a β diagram) and ``lyapunov``
with ``--checkpoint`` resume the same way."""

import numpy as np
import pytest

import test_interrupt
import tfkernels as tfk
from test_cli import main  # (exit status, stdout, stderr) of `tfkernels argv`
from tfkernels.studies import checkpoint as ckpt
from tfkernels.studies import runner

#: ``interrupt_at(k)``: the next runs are interrupted after their k-th chunk (the fixture
#: of test_interrupt.py, whose progress-bar stand-in raises KeyboardInterrupt)
interrupt_at = test_interrupt.interrupt_at

N, T, L = 23, 3, 8  # 23 trajectories in chunks of 5 or 4: the last chunk is shorter


def same_points(a, b):
    assert len(a.results) == len(b.results)
    for ra, rb in zip(a.results, b.results):
        assert ra.stats.keys() == rb.stats.keys()
        for key in ra.stats:
            assert np.asarray(ra.stats[key]).tobytes() == np.asarray(rb.stats[key]).tobytes(), key
    for key in a.table:
        np.testing.assert_array_equal(a.table[key], b.table[key], err_msg=key)


CASES = {
    "decay": (
        lambda: tfk.TransformerParams.random(d=4, n_heads=2, d_ff=8, damping=2.0, seed=0),
        {"damping": [1.0, 3.0]},
        dict(n_trajectories=N, seq_len=T, n_layers=L, lambda_samples=3, chunk_size=5, seed=4),
    ),
    "geometry": (
        lambda: tfk.TransformerParams.random(d=4, n_heads=2, ffn=False, seed=1),
        {"beta": [0.5, 4.0], "dt": [0.1, 0.3]},
        dict(n_trajectories=N, seq_len=T, n_layers=L, save_every=2, chunk_size=4, x0="sphere"),
    ),
}


@pytest.mark.parametrize("study", sorted(CASES))
def test_an_interrupted_sweep_resumes_bit_identically(tmp_path, interrupt_at, study):
    make, grid, kw = CASES[study]
    p, path = make(), tmp_path / "sweep.ckpt"
    full = tfk.sweep(study, p, grid, **kw)
    per_point = -(-N // kw["chunk_size"])
    interrupt_at(per_point + 2)  # inside the second point
    with pytest.raises(tfk.StudyInterrupted):
        tfk.sweep(study, p, grid, progress=True, checkpoint=path, **kw)
    assert ckpt.read_header(path)["next_chunk"] == per_point + 2
    interrupt_at(None)
    res = tfk.sweep(study, p, grid, checkpoint=path, **kw)
    same_points(res, full)
    assert res.meta["resumed_chunks"] == per_point + 2
    assert res.meta["checkpoint"] == str(path)
    resumed = [r.meta["resumed_chunks"] for r in res.results]
    assert resumed == [per_point, 2] + [0] * (len(res.results) - 2)
    assert res.results[0].meta["checkpoint"] == str(path)
    again = tfk.sweep(study, p, grid, checkpoint=path, **kw)  # finished: no chunk runs
    same_points(again, full)
    assert again.meta["resumed_chunks"] == again.meta["n_chunks"] == per_point * len(res.results)


@pytest.mark.parametrize(
    "change",
    [
        dict(grid={"beta": [0.5, 4.0], "dt": [0.1, 0.4]}),
        dict(grid={"beta": [0.5, 4.0]}),
        dict(params=tfk.TransformerParams.random(d=4, n_heads=2, ffn=False, seed=2)),
        dict(metric="mean_cosine", seed=3),
    ],
    ids=["values", "settings", "weights", "seed"],
)
def test_a_checkpoint_of_another_sweep_is_refused(tmp_path, change):
    make, grid, kw = CASES["geometry"]
    path = tmp_path / "sweep.ckpt"
    tfk.sweep("geometry", make(), grid, checkpoint=path, **kw)
    args = dict(params=make(), grid=grid, **kw)
    args.update(change)
    with pytest.raises(ValueError, match="checkpoint"):
        tfk.sweep("geometry", checkpoint=path, **args)


def test_a_decay_checkpoint_is_not_a_sweep_checkpoint(tmp_path):
    make, grid, kw = CASES["decay"]
    path = tmp_path / "one.ckpt"
    tfk.perturbation_decay(make(), checkpoint=path, **kw)
    with pytest.raises(ValueError, match="checkpoint"):
        tfk.sweep("decay", make(), grid, checkpoint=path, **kw)


def test_bad_checkpoint_path_is_refused(tmp_path):
    make, grid, kw = CASES["decay"]
    with pytest.raises(ValueError, match="`checkpoint`.*folder"):
        tfk.sweep("decay", make(), grid, checkpoint=tmp_path, **kw)


def test_nested_functions_cannot_be_fingerprinted():
    def inner():
        return 1

    assert ckpt.fingerprint(runner.run_chunks) == ckpt.fingerprint(runner.run_chunks)
    assert ckpt.fingerprint(runner.run_chunks) != ckpt.fingerprint(runner.chunk_bounds)
    with pytest.raises(TypeError, match="nested function"):
        ckpt.fingerprint((inner,))


SMALL = ["--trajectories", "24", "--seq-len", "4", "--d", "4"]


#: Each study command with a checkpoint: its arguments and the CSV it writes.
COMMANDS = {
    "sweep": (["sweep", "--layers", "4", "--d-ff", "8", "--grid", "damping=1,3"], "sweep.csv"),
    "geometry": (["geometry", "--layers", "4", "--d-ff", "8"], "geometry.csv"),
    "diagram": (["geometry", "--layers", "4", "--d-ff", "8", "--beta", "0.5:2:2"], "geometry.csv"),
    "lyapunov": (["lyapunov", "--layers", "4", "--d-ff", "8", "--k", "3"], "lyapunov.csv"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_the_command_resumes_from_its_checkpoint(tmp_path, capsys, interrupt_at, command):
    args, csv = COMMANDS[command]
    argv = [*args, *SMALL, "--chunk-size", "8", "--checkpoint", str(tmp_path / "s.ckpt")]
    code, _, err = main([*argv, "--no-progress", "--out", str(tmp_path / "full")], capsys)
    assert code == 0, err
    (tmp_path / "s.ckpt").unlink()
    interrupt_at(2)  # the progress bar (the stand-in) interrupts after 2 chunks
    code, out, _ = main([*argv, "--out", str(tmp_path / "r")], capsys)
    assert code == 130 and "resume from" in out
    assert not (tmp_path / "r" / csv).exists()
    interrupt_at(None)
    code, _, err = main([*argv, "--no-progress", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    full = (tmp_path / "full" / csv).read_bytes()
    assert (tmp_path / "r" / csv).read_bytes() == full
    # the same file with other options is refused, in one line, before any work
    code, _, err = main([*argv, "--seed", "5", "--out", str(tmp_path / "x")], capsys)
    assert code != 0 and "checkpoint" in err and len(err.strip().splitlines()) == 1
