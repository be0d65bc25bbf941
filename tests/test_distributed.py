"""Studies on a Dask cluster: identical to the local run, complete when a worker dies,
progress per chunk, bounded client memory, and no dask import without a client; the
runner's Dask path with a study-free chunk function."""

import argparse
import collections
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tfkernels as tfk
from runner_doubles import RecordingBar, Trace, recording_bars
from tfkernels.cli import decay as decay_cli
from tfkernels.studies import checkpoint as ckpt
from tfkernels.studies import distributed as tfd
from tfkernels.studies import runner

dd = pytest.importorskip("distributed")
tqdm_auto = pytest.importorskip("tqdm.auto")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    with dd.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with dd.Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


@pytest.fixture
def bars(monkeypatch):
    """tqdm patched with ``runner_doubles.RecordingBar``: the list of bars made."""
    yield from recording_bars(monkeypatch)


def small(damping=3.0, seed=0, **kw):
    return tfk.TransformerParams.random(d=4, n_heads=2, d_ff=8, damping=damping, seed=seed, **kw)


def blowup_params():
    """relu FFN: x₀ > 0 overflows within a few layers, x₀ ≤ 0 decays (as in test_decay)."""
    return tfk.TransformerParams(
        w1=np.array([[1.0], [0.0]]),
        b1=np.zeros(1),
        w2=np.array([[1e30, 0.0]]),
        b2=np.zeros(2),
        activation="relu",
        damping=1.0,
    )


def assert_same_result(a, b):
    """Every statistic of two DecayResults is bit-identical (timings aside)."""
    assert a.stats.keys() == b.stats.keys()
    for k in a.stats:
        assert a.stats[k].dtype == b.stats[k].dtype, k
        assert a.stats[k].tobytes() == b.stats[k].tobytes(), k
    for name in (
        "rate",
        "rate_ci",
        "lambda_hat",
        "L_hat",
        "bound_holds",
        "fraction_above_bound",
        "regime",
        "n_trajectories",
        "n_valid",
        "n_nonfinite",
        "nonfinite_indices",
        "nonfinite_layers",
    ):
        np.testing.assert_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.to_dict()["config"] == b.to_dict()["config"]
    for k in ("n_chunks", "rate_ci_method", "lambda_method", "lambda_n_samples"):
        assert a.meta[k] == b.meta[k], k


CASES = {
    "pair-float64": (
        small(damping=4.0),
        dict(n_trajectories=600, seq_len=3, n_layers=16, chunk_size=50, seed=1),
    ),
    "tangent-nonfinite": (
        blowup_params(),
        dict(n_trajectories=200, seq_len=1, n_layers=16, mode="tangent", chunk_size=64, seed=3),
    ),
    "ensemble-per-layer-post": (
        tfk.WeightEnsemble(
            d=4, n_heads=2, d_ff=8, norm="layernorm", norm_position="post", per_layer=True, seed=5
        ),
        dict(n_trajectories=300, seq_len=3, n_layers=8, chunk_size=70, seed=4),
    ),
    "heun-noise-float32": (
        small(damping=1.0, dtype=np.float32),
        dict(
            n_trajectories=300,
            seq_len=3,
            n_layers=8,
            method="heun",
            noise=0.1,
            chunk_size=70,
            seed=2,
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cluster_result_identical_to_local(client, case):
    params, kw = CASES[case]
    local = tfk.perturbation_decay(params, n_threads=2, **kw)
    remote = tfk.perturbation_decay(params, client=client, **kw)
    assert_same_result(local, remote)
    assert remote.meta["n_chunks"] > 1
    cl = remote.meta["cluster"]
    assert (cl["n_workers"], cl["n_threads"]) == (2, 2)
    assert cl["scheduler"] == client.scheduler.address
    if case == "tangent-nonfinite":
        assert 0 < remote.n_nonfinite < 200 and len(remote.nonfinite_indices) == 10


def test_geometry_sweep_on_the_cluster_identical_to_local(client):
    """The phase diagram's study (the sphere model, the metrics measured in the flow)
    gives the same bits on the cluster as locally."""
    eye = np.eye(2)
    p = tfk.TransformerParams(
        wq=eye, wk=eye, wv=eye, wo=eye, n_heads=1, norm="sphere", norm_position="post"
    )
    kw = dict(
        n_trajectories=60,
        seq_len=8,
        n_layers=20,
        t_final=2.0,
        x0="sphere",
        metrics=("dens", "clusters"),
        chunk_size=16,
        seed=4,
    )
    grid = {"beta": [1.0, 6.0]}
    local = tfk.sweep("token_geometry", p, grid, n_threads=2, **kw)
    remote = tfk.sweep("token_geometry", p, grid, client=client, **kw)
    for a, b in zip(local.results, remote.results):
        assert a.stats.keys() == b.stats.keys()
        for k in a.stats:
            assert a.stats[k].tobytes() == b.stats[k].tobytes(), k
    assert remote.meta["n_chunks"] == 8


def test_progress_advances_once_per_chunk_and_memory_is_bounded(client, bars):
    params, kw = (
        small(damping=2.0),
        dict(n_trajectories=1000, seq_len=2, n_layers=8, chunk_size=30, seed=4),
    )
    local = tfk.perturbation_decay(params, progress=True, **kw)
    remote = tfk.perturbation_decay(params, progress=True, client=client, **kw)
    assert_same_result(local, remote)
    n_chunks = -(-1000 // 30)
    for bar in bars:  # the local bar and the cluster bar alike
        assert bar.kwargs["total"] == 1000 and bar.kwargs["disable"] is False
        assert len(bar.updates) == n_chunks and sum(bar.updates) == 1000
    cl = remote.meta["cluster"]
    assert cl["max_in_flight"] == tfd.IN_FLIGHT_PER_THREAD * 2 < n_chunks
    assert 1 <= cl["max_results_held"] <= cl["max_in_flight"]


def test_killed_worker_chunks_are_recomputed_and_counted_once(client, bars, monkeypatch):
    params = small(damping=1.0)
    kw = dict(n_trajectories=2400, seq_len=4, n_layers=32, chunk_size=40, seed=5)  # 60 chunks
    local = tfk.perturbation_decay(params, **kw)
    pids = client.run(os.getpid)
    victim = pids[sorted(pids)[0]]
    killed_at = []

    class KillingBar(RecordingBar):
        def update(self, n=1):
            super().update(n)
            if not killed_at:  # the first chunk is in: kill a worker mid-run
                killed_at.append(len(self.updates))
                os.kill(victim, signal.SIGKILL)

    monkeypatch.setattr(tqdm_auto, "tqdm", KillingBar)
    t_start = time.time()
    remote = tfk.perturbation_decay(params, progress=True, client=client, **kw)
    assert killed_at == [1]
    assert_same_result(local, remote)
    assert remote.n_trajectories == remote.n_valid == 2400
    assert int(remote.stats["count"][0]) == 2400
    bar = bars[-1]
    assert len(bar.updates) == 60 and sum(bar.updates) == 2400  # every chunk once
    assert rescheduled_chunks(client, t_start)  # the dead worker's chunks ran elsewhere
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it
    assert victim not in client.run(os.getpid).values()


def test_a_restarted_client_resumes_from_the_checkpoint(cluster, client, tmp_path, monkeypatch):
    params = small(damping=2.0)
    kw = dict(n_trajectories=600, seq_len=2, n_layers=8, chunk_size=40, seed=6)  # 15 chunks
    local = tfk.perturbation_decay(params, **kw)
    path = tmp_path / "decay.ckpt"
    monkeypatch.setattr(runner, "CHECKPOINT_EVERY_S", 0.0)  # a write after every merge

    class CtrlCBar(RecordingBar):
        def update(self, n=1):  # Ctrl-C once 3 chunks are merged (and saved)
            super().update(n)
            if ckpt.read_header(path) and ckpt.read_header(path)["next_chunk"] >= 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(tqdm_auto, "tqdm", CtrlCBar)
    with pytest.raises(tfk.StudyInterrupted) as info:
        tfk.perturbation_decay(params, client=client, progress=True, checkpoint=path, **kw)
    part = info.value.result
    done = part.meta["n_chunks_done"]
    assert part.meta["partial"] is True and 3 <= done < 15
    assert part.n_trajectories == 40 * done == part.meta["n_trajectories_done"]
    assert ckpt.read_header(path)["next_chunk"] == done
    monkeypatch.setattr(tqdm_auto, "tqdm", RecordingBar)
    with dd.Client(cluster, set_as_default=False) as fresh:
        remote = tfk.perturbation_decay(params, client=fresh, progress=True, checkpoint=path, **kw)
    assert_same_result(local, remote)
    assert remote.meta["resumed_chunks"] == done and remote.meta["partial"] is False
    assert RecordingBar.bars[-1].kwargs["initial"] == 40 * done
    assert sum(RecordingBar.bars[-1].updates) == 600 - 40 * done


def rescheduled_chunks(client, since):
    """Chunk keys taken from a worker by its removal (running or held) after ``since``."""

    def story(dask_scheduler):
        return sorted(
            {
                t.key
                for t in dask_scheduler.transition_log
                if t.timestamp >= since
                and str(t.key).startswith("decay_chunk-")
                and t.start in ("processing", "memory")
                and t.finish != "memory"
                and "worker" in t.stimulus_id
            }
        )

    return client.run_on_scheduler(story)


Shared = collections.namedtuple("Shared", "weights scale")


def trace_chunk(chunk_start, chunk_len, shared, tag):
    """Chunk function of the generic runner tests: bounds, inputs and their flags."""
    w = shared.weights
    return Trace(
        ((chunk_start, chunk_len, tag, float(w.sum() * shared.scale), bool(w.flags.writeable)),)
    )


def test_runner_on_the_cluster_merges_any_study_in_chunk_order(client, bars):
    shared = (Shared(weights=np.arange(6.0).reshape(2, 3), scale=0.5), "tag")
    local = runner.run_chunks(trace_chunk, 100, 7, shared=shared)
    remote = runner.run_chunks(
        trace_chunk, 100, 7, shared=shared, client=client, progress=True, desc="trace"
    )
    assert remote.stats == local.stats  # chunk order, writable arrays
    assert [c[:2] for c in remote.stats.chunks] == runner.chunk_bounds(100, 7)
    assert all(c[4] for c in remote.stats.chunks)
    assert (remote.n_chunks, remote.n_run) == (15, 15)
    assert remote.cluster["n_workers"] == 2 and remote.cluster["max_in_flight"] == 6
    assert sum(bars[-1].updates) == 100 and bars[-1].kwargs["desc"] == "trace"
    prefix = runner.run_chunks(trace_chunk, 35, 7, shared=shared).stats  # chunks 0-4
    resumed = runner.run_chunks(
        trace_chunk, 100, 7, shared=shared, client=client, resume=(5, prefix)
    )
    assert resumed.stats == local.stats and resumed.n_run == 10


def test_back_to_back_runs_on_the_same_inputs_share_no_keys(client):
    """With content-derived keys, the second of two quick runs on the same inputs lost
    its scattered data to the first run's release ("lost dependencies")."""
    shared = (Shared(weights=np.ones((2, 2)), scale=1.0), "again")
    runs = [runner.run_chunks(trace_chunk, 40, 7, shared=shared, client=client) for _ in range(4)]
    assert all(r.stats == runs[0].stats for r in runs)


def test_command_line_scheduler_option(cluster, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    decay_cli.configure_parser(parser)
    args = parser.parse_args(
        [
            "--trajectories",
            "3e2",
            "--layers",
            "4",
            "--seq-len",
            "2",
            "--d",
            "4",
            "--d-ff",
            "8",
            "--chunk-size",
            "100",
            "--scheduler",
            cluster.scheduler_address,
            "--out",
            str(tmp_path),
        ]
    )
    assert args.scheduler == cluster.scheduler_address
    assert decay_cli.run_cli(args) == 0
    assert "rate (95% CI)" in capsys.readouterr().out
    res = tfk.DecayResult.from_json(tmp_path / "decay.json")
    assert res.n_trajectories == 300 and res.meta["cluster"]["n_workers"] == 2


def test_bad_clients_are_refused(cluster):
    with pytest.raises(NotImplementedError, match="`client`"):
        tfk.perturbation_decay(small(), 10, 2, 4, client="tcp://127.0.0.1:8786")
    closed = dd.Client(cluster, set_as_default=False)
    closed.close()
    with pytest.raises(ValueError, match="`client`"):
        tfk.perturbation_decay(small(), 10, 2, 4, client=closed)


def test_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import now fails
    with pytest.raises(ImportError, match=r'pip install "tfkernels\[dask\]"'):
        tfd.connect("tcp://127.0.0.1:8786")


def test_local_run_does_not_import_dask():
    code = (
        "import sys\n"
        "import tfkernels as tfk, tfkernels.studies.distributed\n"
        "p = tfk.TransformerParams.random(d=4, n_heads=2, d_ff=8, damping=3.0, seed=0)\n"
        "res = tfk.perturbation_decay(p, 50, 2, 4, chunk_size=20, progress=False)\n"
        "assert res.n_trajectories == 50\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'))\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
