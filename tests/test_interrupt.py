"""Checkpoints and Ctrl-C (issue 15, part 2): the runner saves its merged prefix
atomically and resumes from it bit-identically, refuses a checkpoint of another
configuration, and stops at a chunk boundary on SIGINT; the decay study and
``tfkernels decay`` on top of it (the Dask path is in test_distributed.py)."""

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import tfkernels as tfk
from runner_doubles import Trace
from tfkernels.cli import decay as decay_cli
from tfkernels.studies import checkpoint as ckpt
from tfkernels.studies import decay, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trace_chunk(chunk_start, chunk_len, tag=None):
    return Trace(((chunk_start, chunk_len, tag),))


def other_chunk(chunk_start, chunk_len, tag=None):
    return Trace(((chunk_start, chunk_len, tag),))


#: What :func:`signalling_chunk` does at which chunk start: "once" raises one SIGINT,
#: "twice" two. Set by the tests (the chunk function's name is part of a checkpoint).
SIGNALS = {}
STARTED = []


def signalling_chunk(chunk_start, chunk_len):
    """Chunk function that sends this process SIGINT (as Ctrl-C does) while it runs."""
    STARTED.append(chunk_start)
    for _ in range({"once": 1, "twice": 2}.get(SIGNALS.get(chunk_start), 0)):
        signal.raise_signal(signal.SIGINT)
        for _ in range(100):  # bytecodes: the Python handler runs among them
            pass
    return Trace(((chunk_start, chunk_len),))


class Stop(Exception):
    """Raised by an ``on_merge`` to stop a run part-way."""


def stop_after(k):
    """An ``on_merge`` that stops the run once ``k`` chunks are merged."""

    def on_merge(next_chunk, stats):
        if next_chunk == k:
            raise Stop(k)

    return on_merge


@pytest.fixture
def writes(monkeypatch):
    """Every checkpoint write, as ``next_chunk``."""
    seen = []
    write = ckpt.write

    def spy(path, config, next_chunk, *args):
        seen.append(next_chunk)
        return write(path, config, next_chunk, *args)

    monkeypatch.setattr(ckpt, "write", spy)
    return seen


@pytest.fixture
def sigint_default():
    """SIGINT has Python's default handler (as in a script), before and after."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    STARTED.clear()
    SIGNALS.clear()
    yield
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------- runner: resume
@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_stopped_run_resumes_from_its_checkpoint(tmp_path, writes, k):
    path = tmp_path / "run.ckpt"
    full = runner.run_chunks(trace_chunk, 23, 5, shared=("w",))
    with pytest.raises(Stop):
        runner.run_chunks(
            trace_chunk, 23, 5, shared=("w",), checkpoint=path, on_merge=stop_after(k)
        )
    assert writes == [k] and ckpt.read_header(path)["next_chunk"] == k  # written on the error
    out = runner.run_chunks(trace_chunk, 23, 5, shared=("w",), checkpoint=path)
    assert out.stats == full.stats
    assert (out.n_run, out.next_chunk, out.n_done, out.n_resumed) == (5 - k, 5, 23, min(5 * k, 23))
    assert not out.partial and out.checkpoint == str(path)
    again = runner.run_chunks(trace_chunk, 23, 5, shared=("w",), checkpoint=path)
    assert again.stats == full.stats and again.n_run == 0  # a finished file: no chunk runs
    assert sorted(os.listdir(tmp_path)) == ["run.ckpt"]  # no temporary file left


def test_checkpoints_are_written_when_due_and_at_the_end(tmp_path, writes):
    runner.run_chunks(trace_chunk, 23, 5, checkpoint=tmp_path / "a", checkpoint_every=0)
    assert writes == [1, 2, 3, 4, 5]
    writes.clear()
    runner.run_chunks(trace_chunk, 23, 5, checkpoint=tmp_path / "b", checkpoint_every=3600)
    assert writes == [5]


def test_the_file_on_disk_is_complete_after_every_merge(tmp_path):
    path = tmp_path / "c.npz"
    seen = []

    def on_merge(next_chunk, stats):  # runs after the runner's write of this merge
        header, saved = ckpt.read(path)
        seen.append((header["next_chunk"], header["n_done"], saved == stats))

    runner.run_chunks(trace_chunk, 12, 5, checkpoint=path, checkpoint_every=0, on_merge=on_merge)
    assert seen == [(1, 5, True), (2, 10, True), (3, 12, True)]


# ------------------------------------------------------------- runner: refusals
@pytest.mark.parametrize(
    "change, key",
    [
        (dict(n_trajectories=24), "n_trajectories"),
        (dict(chunk_size=4), "chunk_size"),
        (dict(shared=("v",)), "shared_sha256"),
        (dict(chunk_fn=other_chunk), "chunk_fn"),
        (dict(checkpoint_info={"seed": 2}), "seed"),
    ],
)
def test_a_checkpoint_of_another_configuration_is_refused(tmp_path, change, key):
    path = tmp_path / "run.ckpt"
    base = dict(
        chunk_fn=trace_chunk,
        n_trajectories=23,
        chunk_size=5,
        shared=("w",),
        checkpoint_info={"seed": 1},
    )
    with pytest.raises(Stop):
        runner.run_chunks(**base, checkpoint=path, on_merge=stop_after(2))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=rf"`checkpoint` .*another configuration \({key}: "):
        runner.run_chunks(**dict(base, **change), checkpoint=path)
    assert path.read_bytes() == before  # refused: the file is left as it was


def test_what_is_not_a_checkpoint_is_refused(tmp_path):
    good = tmp_path / "good.npz"
    runner.run_chunks(trace_chunk, 10, 5, checkpoint=good)
    bad = {
        "text": b"not a checkpoint",
        "truncated": good.read_bytes()[:200],
        "empty": b"",
    }
    np.save(tmp_path / "array.npy", np.arange(3))
    np.savez(tmp_path / "other.npz", header=np.array(json.dumps({"format": "x", "version": 1})))
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    for name in [*bad, "array.npy", "other.npz"]:
        with pytest.raises(ValueError, match="`checkpoint` .* not a readable tfkernels checkpoint"):
            runner.run_chunks(trace_chunk, 10, 5, checkpoint=tmp_path / name)


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(checkpoint="DIR"), ValueError, "`checkpoint` .* is a folder"),
        (dict(checkpoint=""), ValueError, "`checkpoint` is empty"),
        (dict(checkpoint=3), TypeError, "`checkpoint` must be a path"),
        (dict(checkpoint="FILE/x"), ValueError, "`checkpoint` .* lies under the file"),
        (dict(checkpoint="c", resume=(1, Trace(()))), ValueError, "`resume` or `checkpoint`"),
        (dict(checkpoint="c", checkpoint_every=-1), ValueError, "`checkpoint_every`"),
        (dict(checkpoint_every=1), ValueError, "need a `checkpoint`"),
        (dict(checkpoint="c", checkpoint_info=[1]), TypeError, "`checkpoint_info`"),
        (dict(checkpoint="c", checkpoint_info={"chunk_size": 3}), ValueError, "`checkpoint_info`"),
        (dict(checkpoint="c", checkpoint_info={"x": object()}), TypeError, "`checkpoint_info`"),
        (dict(checkpoint="c", shared=(object(),)), TypeError, "`checkpoint`: cannot fingerprint"),
    ],
)
def test_bad_checkpoint_arguments_are_refused(tmp_path, kw, exc, match):
    (tmp_path / "FILE").write_text("")
    places = {
        "DIR": str(tmp_path),
        "FILE/x": str(tmp_path / "FILE" / "x"),
        "c": str(tmp_path / "c"),
    }
    kw = {k: places.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}
    with pytest.raises(exc, match=match):
        runner.run_chunks(trace_chunk, 10, 5, **kw)


@dataclasses.dataclass
class Opaque:
    thing: object

    def merge(self, other):
        return self


def opaque_chunk(chunk_start, chunk_len):
    return Opaque(thing=object())


def test_a_statistic_that_cannot_be_saved_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(TypeError, match="`checkpoint`: cannot save a statistic holding a object"):
        runner.run_chunks(opaque_chunk, 10, 5, checkpoint=tmp_path / "c")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------- runner: atomicity
@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    path = tmp_path / "run.ckpt"
    with pytest.raises(Stop):
        runner.run_chunks(trace_chunk, 23, 5, checkpoint=path, on_merge=stop_after(2))
    before = path.read_bytes()
    savez = np.savez

    def torn(fh, **members):  # half a file, then the failure
        savez(fh, **members)
        fh.truncate(fh.tell() // 2)
        raise failure

    monkeypatch.setattr(ckpt.np, "savez", torn)
    with pytest.raises(type(failure)):
        runner.run_chunks(trace_chunk, 23, 5, checkpoint=path, checkpoint_every=0)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["run.ckpt"]
    monkeypatch.setattr(ckpt.np, "savez", savez)
    assert runner.run_chunks(trace_chunk, 23, 5, checkpoint=path).n_resumed == 10


def test_a_write_error_while_a_chunk_fails_keeps_the_chunks_error(tmp_path, monkeypatch):
    def failing(*args):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "write", failing)
    with pytest.raises(Stop) as info:
        runner.run_chunks(trace_chunk, 23, 5, checkpoint=tmp_path / "c", on_merge=stop_after(2))
    assert any("was not updated: disk full" in n for n in getattr(info.value, "__notes__", [""]))


# ----------------------------------------------------------- runner: statistics
def test_statistics_and_inputs_round_trip_bit_for_bit(tmp_path):
    p = tfk.TransformerParams.random(d=4, n_heads=2, d_ff=8, damping=3.0, seed=0)
    k = decay._check_args(
        p, 40, 2, 6, "euler", 1.0, None, 1.0, 0.0, None, "pair", 0, 20, None, False, 1, None, None
    )
    cfg = decay._chunk_config(p, k, -0.5)
    packed = tfk.kernels.pack_params(p)
    stats = decay.decay_chunk(0, 20, packed, cfg).merge(decay.decay_chunk(20, 20, packed, cfg))
    stats.batches.append((0, float("nan")))  # an empty chunk's NaN slope
    path = tmp_path / "s.npz"
    ckpt.write(path, {"x": 1}, 2, 2, 40, stats)
    _, back = ckpt.read(path)
    assert type(back) is type(stats)
    for f in dataclasses.fields(stats):
        a, b = getattr(stats, f.name), getattr(back, f.name)
        assert type(a) is type(b), f.name
        if f.name == "hist":
            assert [x.tobytes() for x in a] == [x.tobytes() for x in b]
        elif isinstance(a, np.ndarray):
            assert (a.dtype, a.tobytes()) == (b.dtype, b.tobytes()), f.name
        else:
            assert repr(a) == repr(b), f.name
    shared = (packed, cfg)
    assert ckpt.fingerprint(shared) == ckpt.fingerprint((tfk.kernels.pack_params(p), cfg))
    nudged = cfg.log_bound.copy()
    nudged[-1] = np.nextafter(nudged[-1], np.inf)
    assert ckpt.fingerprint(shared) != ckpt.fingerprint(
        (packed, dataclasses.replace(cfg, log_bound=nudged))
    )
    assert ckpt.fingerprint((1, 2.0)) != ckpt.fingerprint((1.0, 2))
    assert ckpt.fingerprint(np.zeros(2, np.float32)) != ckpt.fingerprint(np.zeros(2))


# ------------------------------------------------------------ runner: Ctrl-C
def test_ctrl_c_stops_at_the_next_chunk_boundary(tmp_path, sigint_default, writes):
    SIGNALS[10] = "once"  # during chunk 2 of 5
    path = tmp_path / "c.npz"
    with pytest.raises(runner.StudyInterrupted) as info:
        runner.run_chunks(signalling_chunk, 23, 5, checkpoint=path, checkpoint_every=3600)
    assert isinstance(info.value, KeyboardInterrupt)
    out = info.value.result
    assert STARTED == [0, 5, 10]  # the running chunk finished, none started after it
    assert [c[0] for c in out.stats.chunks] == [0, 5, 10]
    assert (out.next_chunk, out.n_done, out.n_run, out.partial) == (3, 15, 3, True)
    assert writes == [3]  # saved on the interrupt
    SIGNALS.clear()
    full = runner.run_chunks(signalling_chunk, 23, 5)
    assert runner.run_chunks(signalling_chunk, 23, 5, checkpoint=path).stats == full.stats


def test_a_second_ctrl_c_drops_the_running_chunk(sigint_default):
    SIGNALS[10] = "twice"
    with pytest.raises(runner.StudyInterrupted) as info:
        runner.run_chunks(signalling_chunk, 23, 5)
    out = info.value.result
    assert STARTED == [0, 5, 10] and (out.next_chunk, out.n_done) == (2, 10)
    assert [c[0] for c in out.stats.chunks] == [0, 5]


def test_ctrl_c_in_the_last_chunk_still_stops_with_the_whole_result(sigint_default):
    SIGNALS[20] = "once"
    with pytest.raises(runner.StudyInterrupted) as info:
        runner.run_chunks(signalling_chunk, 23, 5)
    assert not info.value.result.partial and info.value.result.n_done == 23


def test_ctrl_c_before_any_chunk_is_merged(sigint_default):
    SIGNALS[0] = "twice"
    with pytest.raises(runner.StudyInterrupted) as info:
        runner.run_chunks(signalling_chunk, 23, 5)
    out = info.value.result
    assert out.stats is None and (out.next_chunk, out.n_done, out.partial) == (0, 0, True)


def test_off_the_main_thread_the_runner_leaves_signals_alone(tmp_path, sigint_default):
    got = {}

    def body():
        got["out"] = runner.run_chunks(trace_chunk, 12, 5, checkpoint=tmp_path / "c")

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert got["out"].n_done == 12


# --------------------------------------------------------------- the decay study
def small(**kw):
    return tfk.TransformerParams.random(d=4, n_heads=2, d_ff=8, damping=3.0, seed=0, **kw)


KW = dict(n_trajectories=300, seq_len=2, n_layers=6, chunk_size=40, seed=1)


class InterruptingBar:
    """tqdm stand-in that raises KeyboardInterrupt (as Ctrl-C would) at its ``at``-th
    update: after that many chunks were merged."""

    at = None

    def __init__(self, *args, **kwargs):
        self.n = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += 1
        if self.n == InterruptingBar.at:
            raise KeyboardInterrupt


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(k)``: the next runs are interrupted after their k-th chunk."""
    tqdm_auto = pytest.importorskip("tqdm.auto")
    monkeypatch.setattr(tqdm_auto, "tqdm", InterruptingBar)
    monkeypatch.setattr(runner, "CHECKPOINT_EVERY_S", 0.0)

    def set_at(k):
        InterruptingBar.at = k

    return set_at


def same_result(a, b):
    """Two DecayResults hold bit-identical statistics and estimates."""
    assert a.stats.keys() == b.stats.keys()
    for k in a.stats:
        assert a.stats[k].tobytes() == b.stats[k].tobytes(), k
    for name in ("rate", "rate_ci", "lambda_hat", "L_hat", "bound_holds", "regime"):
        np.testing.assert_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.n_trajectories, a.n_valid, a.n_nonfinite) == (
        b.n_trajectories,
        b.n_valid,
        b.n_nonfinite,
    )
    assert a.to_dict()["config"] == b.to_dict()["config"]


def test_an_interrupted_study_resumes_bit_identically(tmp_path, interrupt_at):
    p, path = small(), tmp_path / "decay.ckpt"
    full = tfk.perturbation_decay(p, **KW)
    assert full.meta["partial"] is False and full.meta["resumed_chunks"] == 0
    interrupt_at(3)
    with pytest.raises(tfk.StudyInterrupted, match="after 120 of 300 trajectories") as info:
        tfk.perturbation_decay(p, **KW, checkpoint=path)
    part = info.value.result
    assert part.meta["partial"] is True and part.meta["n_trajectories_done"] == 120
    assert part.n_trajectories == 120 and part.config["n_trajectories"] == 300
    assert part.meta["n_chunks_done"] == 3 and part.meta["checkpoint"] == str(path)
    interrupt_at(2)  # interrupted again, one chunk further on
    with pytest.raises(tfk.StudyInterrupted):
        tfk.perturbation_decay(p, **KW, checkpoint=path)
    assert ckpt.read_header(path)["next_chunk"] == 5
    interrupt_at(None)
    res = tfk.perturbation_decay(p, **KW, checkpoint=path)
    same_result(res, full)
    assert res.meta["resumed_chunks"] == 5 and res.meta["partial"] is False
    again = tfk.perturbation_decay(p, **KW, checkpoint=path)
    same_result(again, full)
    assert again.meta["resumed_chunks"] == again.meta["n_chunks"] == 8
    assert np.isnan(again.meta["throughput"])  # this call ran no chunk
    again.to_json(tmp_path / "again.json")
    assert "nan trajectory-layers/s" in tfk.DecayResult.from_json(tmp_path / "again.json").summary()


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(seed=2), "seed"),
        (dict(mode="tangent"), "mode"),
        (dict(n_layers=7), "n_layers"),
        (dict(n_trajectories=301), "n_trajectories"),
        (dict(chunk_size=41), "chunk_size"),
        (dict(params=small(dtype=np.float32)), "params.dtype"),
        (dict(params=small(activation="tanh")), "params.activation"),
        (dict(method="heun"), "method"),
    ],
)
def test_a_study_refuses_a_checkpoint_of_other_arguments_before_any_kernel(
    tmp_path, monkeypatch, change, key
):
    path = tmp_path / "decay.ckpt"
    tfk.perturbation_decay(small(), **KW, checkpoint=path)
    monkeypatch.setattr(decay, "estimate_lipschitz", None)  # a kernel run would fail
    kw = dict(KW, params=small())
    kw.update(change)
    with pytest.raises(ValueError, match=rf"`checkpoint` .*another configuration \((.*; )?{key}: "):
        tfk.perturbation_decay(**kw, checkpoint=path)


# ------------------------------------------------------------------ the command
def parse(*argv):
    parser = argparse.ArgumentParser()
    decay_cli.configure_parser(parser)
    small_model = ["--layers", "6", "--seq-len", "2", "--d", "4", "--d-ff", "8"]
    return parser.parse_args(["--trajectories", "300", "--chunk-size", "40", *small_model, *argv])


def test_the_command_is_interrupted_and_resumed(tmp_path, capsys, interrupt_at):
    ck = tmp_path / "ck.npz"
    full, part = tmp_path / "full", tmp_path / "part"
    assert decay_cli.run_cli(parse("--out", str(full))) == 0
    capsys.readouterr()
    interrupt_at(2)
    assert decay_cli.run_cli(parse("--out", str(part), "--checkpoint", str(ck))) == 130
    io = capsys.readouterr()
    assert io.out == ""
    assert io.err.splitlines() == [
        f"tfkernels decay: interrupted: 80 of 300 trajectories done, written to {part} "
        f"(meta.partial); run the same command to resume from {ck}"
    ]
    saved = json.loads((part / "decay.json").read_text())
    assert saved["meta"]["partial"] is True and saved["meta"]["n_trajectories_done"] == 80
    assert sorted(os.listdir(part)) == ["decay.csv", "decay.json", "decay.png"]
    interrupt_at(None)
    assert decay_cli.run_cli(parse("--out", str(part), "--checkpoint", str(ck))) == 0
    a = tfk.DecayResult.from_json(full / "decay.json")
    b = tfk.DecayResult.from_json(part / "decay.json")
    same_result(a, b)
    assert b.meta["resumed_chunks"] == 2
    capsys.readouterr()
    assert decay_cli.run_cli(parse("--out", str(part), "--checkpoint", str(ck), "--seed", "3")) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "`checkpoint`" in err[0] and "seed: 0 in the file, 3 now" in err[0]


def test_ctrl_c_of_the_command_outside_the_chunk_loop(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(decay, "estimate_lipschitz", interrupted)
    assert decay_cli.run_cli(parse("--out", str(tmp_path / "o"))) == 130
    assert capsys.readouterr().err == "tfkernels decay: interrupted: no result written\n"
    assert not (tmp_path / "o").exists()


def test_sigint_to_the_command_exits_130_with_one_line_and_partial_results(tmp_path):
    """A real ``tfkernels decay`` process sent SIGINT part-way through a long run."""
    out, ck = tmp_path / "out", tmp_path / "ck.npz"
    cmd = [sys.executable, "-m", "tfkernels.cli", "decay", "--trajectories", "1e9"]
    cmd += ["--chunk-size", "500", "--layers", "4", "--seq-len", "2", "--d", "4", "--d-ff", "8"]
    cmd += ["--out", str(out), "--checkpoint", str(ck)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    err = bytearray()
    reader = threading.Thread(
        target=lambda: [err.extend(b) for b in iter(lambda: proc.stderr.read1(), b"")]
    )
    reader.start()
    try:
        for _ in range(3000):  # the bar appears when the chunk loop starts (minutes at most)
            if b"decay:" in err or proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join()
    text = err.decode()
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    assert rc == 130, text
    assert "Traceback" not in text and proc.stdout.read() == b""
    ours = [ln for ln in lines if ln.startswith("tfkernels")]
    assert ours == [lines[-1]] and lines[-1].startswith("tfkernels decay: interrupted: ")
    saved = json.loads((out / "decay.json").read_text())
    done, chunks = saved["meta"]["n_trajectories_done"], saved["meta"]["n_chunks_done"]
    assert saved["meta"]["partial"] is True and saved["n_trajectories"] == done
    assert done == 500 * chunks > 0  # at a chunk boundary, the running chunk included
    assert f"{done:,} of 1,000,000,000 trajectories done" in lines[-1]
    assert ckpt.read_header(ck)["next_chunk"] == chunks
