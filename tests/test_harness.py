"""The benchmark harness, its probes, the FLOP model, the peers and the paper's experiments.

Nothing here asserts a wall-clock time: benchmarks are not tests. The sweep test runs
the ``quick`` preset end to end with the NumPy peer (the one peer CI installs; PyTorch
and JAX are optional and timed by ``tfkernels bench`` itself) and checks that every
output and every JSON field is there.
"""

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels.bench import flops, fresh, output, peers, probes, run, settings, throughput
from tfkernels.cli import bench as bench_cli
from tfkernels.studies import paper


# --------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # no waiting for a quiet machine in CI: the sweep's figures are not asserted on
    quick = replace(
        settings.PRESETS["quick"],
        threads=settings.default_threads(),
        peers=("numpy",),
        wait_quiet_s=0.0,
    )
    doc = run.run_sweep(quick, str(out), progress=False, plots=True)
    return out, doc


def test_quick_sweep_writes_every_output(ci_run):
    out, doc = ci_run
    for name in ("bench-quick.json", "bench-quick.csv", "README.md", *doc["plots"]):
        assert (out / name).is_file(), name
    assert len(doc["plots"]) == 4
    readme = (out / "README.md").read_text()
    assert "Preset `quick`" in readme and "do not edit by hand" in readme
    assert "Nominal machine peak =" in readme and "Measured FMA peak" in readme
    assert "implied clock" in readme and "% peak uses the larger" in readme
    rows = (out / "bench-quick.csv").read_text().splitlines()
    assert rows[0].split(",") == list(output.CSV_FIELDS) and len(rows) > 10


def test_quick_sweep_json_has_every_field(ci_run):
    out, _ = ci_run
    doc = json.loads((out / "bench-quick.json").read_text())
    for key in (
        "preset",
        "created",
        "command",
        "settings",
        "machine",
        "compile",
        "throughput",
        "scaling",
        "errors",
        "elapsed_s",
        "plots",
    ):
        assert key in doc, key
    m = doc["machine"]
    assert m["peak"]["gflops"]["float32"] > 0 and "peak =" in m["peak"]["explanation"]
    # measured FMA peak on 1 and the sweep's threads; % peak divides by the larger
    threads = str(doc["settings"]["threads"])
    for dt in ("float32", "float64"):
        assert {"1", threads} == set(m["measured_peak"]["gflops"][dt])
        assert m["measured_peak"]["implied_clock_ghz"][dt]["1"] > 0
        used = m["peak_used"]["gflops"][dt]
        assert used == max(
            m["peak_used"]["nominal_gflops"][dt], m["measured_peak"]["gflops"][dt][threads]
        )
    assert set(m["gemm_gflops"]) == {"float32", "float64"}
    assert {"python", "numpy", "numba", "scipy", "tfkernels", "torch", "jax"} <= set(m["versions"])
    assert "first_call_s" in doc["compile"]["float32"]["in_process"]
    # Fresh processes must see their kernels load (or compile), never "already loaded".
    for dt in ("float32", "float64"):
        warm = doc["compile"][dt]["warm"]
        assert warm["how"] != "already loaded", warm
        assert warm["loaded"] or warm["compiled"]
    decay = doc["compile"]["decay"]
    assert "pair mode" in decay["workload"] and decay["warm"]["how"] != "already loaded"
    decay_kernels = set(decay["warm"]["loaded"] + decay["warm"]["compiled"])
    flow_kernels = set(
        doc["compile"]["float64"]["warm"]["loaded"] + doc["compile"]["float64"]["warm"]["compiled"]
    )
    assert decay_kernels - flow_kernels, "the decay study needs kernels the flow does not"
    for p in doc["throughput"]:
        for key in (
            "config",
            "dtype",
            "B",
            "N",
            "T",
            "d",
            "heads",
            "flops_per_traj_layer",
            "peak_gflops",
            "nominal_peak_gflops",
            "measured_peak_gflops",
            "best_peer",
        ):
            assert key in p, key
        assert p["peak_gflops"] == m["peak_used"]["gflops"][p["dtype"]]
        for key in (
            "median_s",
            "times_s",
            "n_inner",
            "traj_layers_per_s",
            "gflops",
            "frac_peak",
            "first_call_s",
        ):
            assert key in p["ours"], key
        assert len(p["ours"]["times_s"]) == doc["settings"]["repeats"]
        numpy_peer = p["peers"]["numpy"]
        assert numpy_peer["status"] == "ok", numpy_peer
        for key in ("best_variant", "speedup", "traj_layers_per_s", "max_rel_diff", "variants"):
            assert key in numpy_peer, key
    for axis in ("B", "N", "T", "d"):
        assert doc["scaling"][axis]["exponent"] is not None
    threads = doc["scaling"]["threads"]["points"]
    assert threads[0]["speedup"] == 1.0 and "efficiency" in threads[-1]
    for system in ("linear", "transformer"):
        methods = doc["errors"][system]["methods"]
        assert set(methods) == {"euler", "heun", "rk4", "averaged"}
        assert all(r["order"] is not None for r in methods.values())


def test_error_scaling_orders_are_close_to_theory(ci_run):
    _, doc = ci_run
    for system in ("linear", "transformer"):
        for m, r in doc["errors"][system]["methods"].items():
            assert abs(r["order"] - r["expected_order"]) < 0.35, (system, m, r["order"])


# ----------------------------------------------------------------- the probes
def test_kernel_dispatchers_cover_the_kernel_modules():
    from numba.core.dispatcher import Dispatcher

    found = probes.kernel_dispatchers()
    assert found and all(isinstance(d, Dispatcher) for d in found.values())
    assert len({id(d) for d in found.values()}) == len(found)  # each one once
    modules = {name.rsplit(".", 1)[0] for name in found}
    assert len(modules) > 1 and all(m.startswith("tfkernels.kernels.") for m in modules)


_FAKE_KERNEL = """
from numba import njit


@njit(cache=True)
def add_one(x):
    return x + 1


alias = add_one   # the same dispatcher under a second name is counted once
"""


@pytest.fixture
def fake_kernels(tmp_path, monkeypatch):
    """A package ``fakekern`` with one cached kernel in ``fakekern.sub``."""
    pkg = tmp_path / "fakekern"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sub.py").write_text(_FAKE_KERNEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fakekern"
    for name in ("fakekern", "fakekern.sub"):
        sys.modules.pop(name, None)


def test_cache_counts_see_a_compile_then_a_cache_load(fake_kernels):
    import importlib

    assert probes.kernel_dispatchers(fake_kernels, imported_only=True) == {}
    before = probes.cache_counts(probes.kernel_dispatchers(fake_kernels, imported_only=True))
    found = probes.kernel_dispatchers(fake_kernels)  # imports fakekern.sub
    assert list(found) == ["fakekern.sub.add_one"]
    found["fakekern.sub.add_one"](1)
    change = probes.count_change(before, probes.cache_counts(found))
    assert change["how"] == "cache miss (compiled)" and change["misses"] == 1
    assert change["compiled"] == ["fakekern.sub.add_one"] and change["loaded"] == []

    before = probes.cache_counts(found)
    found["fakekern.sub.add_one"](2)
    assert probes.count_change(before, probes.cache_counts(found))["how"] == "already loaded"

    importlib.reload(sys.modules["fakekern.sub"])  # a new dispatcher, same cache
    found = probes.kernel_dispatchers(fake_kernels)
    before = probes.cache_counts(found)
    found["fakekern.sub.add_one"](3)
    change = probes.count_change(before, probes.cache_counts(found))
    assert change["how"] == "cache hit (loaded)" and change["loaded"] == ["fakekern.sub.add_one"]


def test_first_call_probe_counts_every_kernel_it_runs():
    first = probes.first_call("float64", 1)  # loads (or compiles) the lane flow
    again = probes.first_call("float64", 1)
    assert first["workload"].startswith("integrate") and again["how"] == "already loaded"
    assert again["hits"] == again["misses"] == 0
    if first["how"] != "already loaded":  # another test may have run it first
        assert first["loaded"] or first["compiled"]


def test_decay_probe_runs_the_default_decay_study():
    a = probes.decay_defaults()
    # The default of `tfkernels decay`: d=16, 2 heads, d_ff=32, damping 4, T=4,
    # 32 Euler layers, float64, pair mode; a few trajectories.
    assert (a.d, a.heads, a.d_ff, a.damping, a.seq_len, a.layers, a.method, a.dtype, a.mode) == (
        16,
        2,
        32,
        4.0,
        4,
        32,
        "euler",
        "float64",
        "pair",
    )
    assert a.trajectories == probes.DECAY_TRAJECTORIES
    assert probes.decay_defaults(dtype="float32").dtype == "float32"


def test_readme_and_goals_report_both_compile_workloads():
    start = {
        "import_s": 0.2,
        "first_call_s": 8.0,
        "total_s": 8.2,
        "how": "cache miss (compiled)",
        "compiled": ["a", "b"],
        "loaded": [],
    }
    doc = {
        "compile": {
            "mode": "cold",
            "float32": {
                "in_process": {"first_call_s": 0.01, "how": "cache hit (loaded)"},
                "cold": start,
                "warm": dict(start, total_s=0.4),
            },
            "decay": {
                "workload": "perturbation_decay pair mode",
                "cold": dict(start, total_s=12.0),
                "warm": dict(start, total_s=0.5),
            },
        }
    }
    from tfkernels.bench import report

    text = "\n".join(report.readme_compile(doc))
    assert "flow, float32" in text and "`tfkernels decay`" in text
    assert "perturbation_decay pair mode" in text and "2 kernels compiled" in text
    verdicts = {name: ok for name, ok, _ in report.goals(doc)}
    assert verdicts == {
        "cold compile, flow, float32 < 10 s": True,
        "warm start, flow, float32 < 1 s": True,
        "cold compile, `tfkernels decay` < 10 s": False,
        "warm start, `tfkernels decay` < 1 s": True,
    }
    # A document written before the decay probe existed still reads.
    old = {
        "compile": {
            "mode": "warm",
            "float64": {
                "in_process": {"first_call_s": 0.01, "how": "already loaded"},
                "warm": {"import_s": 0.2, "first_call_s": 0.2, "total_s": 0.4},
            },
        }
    }
    assert len(report.readme_compile(old)) == 1 and len(report.goals(old)) == 1


def test_bench_command_imports_only_its_settings():
    code = (
        "import sys, tfkernels.cli.bench; print(sorted(m for m in sys.modules if "
        "m.startswith(('tfkernels.bench.', 'matplotlib', 'tqdm'))))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=fresh.child_env(),
        check=True,
    )
    assert r.stdout.split() == ["['tfkernels.bench.settings']"]


# ---------------------------------------------------------------- the FLOP model
def test_flop_model_matches_a_hand_count():
    # T = 8 tokens, d = 16, H = 2 heads (d_h = 8), m = 64, GELU, damping on.
    T, d, H, m = 8, 16, 2, 64
    hand = {
        "projections": 4 * (2 * 8 * 16 * 16),  # Q, K, V, O: 4 x 4096
        "scores": 2 * 8 * 8 * 16,  # H heads x 2·T²·d_h = 2·T²·d
        "weighted_values": 2 * 8 * 8 * 16,
        "softmax": 15 * 2 * 8 * 8,  # 15 flops x H·T² scores
        "ffn_matmuls": 2 * 8 * 16 * 64 * 2,  # X W1 and σ W2
        "ffn_biases": 8 * 64 + 8 * 16,
        "activation": 20 * 8 * 64,  # 20 flops per GELU
        "damping": 8 * 16,
        "sum_terms": 2 * 8 * 16,  # three terms summed: two adds
    }
    got = flops.flops_per_eval(flops.FlowConfig(seq_len=T, d=d, n_heads=H, d_ff=m))
    assert {k: v for k, v in got.items() if k != "total"} == hand
    assert got["total"] == sum(hand.values()) == 66_432
    cfg = flops.FlowConfig(seq_len=T, d=d, n_heads=H)
    assert flops.flops_per_layer(cfg, "euler") == 66_432 + 2 * T * d
    assert flops.flops_per_layer(cfg, "averaged") == 66_432 + 2 * T * d
    # RK4: four evaluations, three a_ij and four b_i multiply-adds.
    assert flops.flops_per_layer(cfg, "rk4") == 4 * 66_432 + 7 * 2 * T * d


def test_flop_model_counts_causal_pairs_only():
    full = flops.flops_per_eval(flops.FlowConfig(seq_len=8, d=16, n_heads=2))
    causal = flops.flops_per_eval(flops.FlowConfig(seq_len=8, d=16, n_heads=2, causal=True))
    assert causal["scores"] == 2 * 36 * 16 and full["scores"] == 2 * 64 * 16


def test_flow_config_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_heads"):
        flops.FlowConfig(seq_len=4, d=6, n_heads=4)
    with pytest.raises(ValueError, match="activation"):
        flops.FlowConfig(seq_len=4, d=8, activation="swish")


@pytest.mark.parametrize(
    "flags, vendor, family, expect",
    [
        ("sse2 avx avx2 fma", "GenuineIntel", 6, 32),
        ("sse2 avx avx2 fma avx512f", "GenuineIntel", 6, 64),
        ("sse2 avx avx2 fma avx512f", "AuthenticAMD", 25, 32),  # Zen 4: 256-bit datapaths
        ("sse2 avx avx2 fma avx512f", "AuthenticAMD", 26, 64),  # Zen 5: full 512-bit
        ("sse2", "GenuineIntel", 6, 8),
    ],
)
def test_machine_peak_from_cpu_flags(flags, vendor, family, expect):
    info = {"flags": flags, "vendor_id": vendor, "cpu family": str(family), "cpu MHz": "2450.000"}
    p = flops.machine_peak(cpuinfo=info, cores=2)
    assert p.flop_per_cycle == {"float32": expect, "float64": expect // 2}
    assert p.gflops["float32"] == pytest.approx(2 * p.clock_ghz * expect)
    assert "peak = 2 cores" in p.explanation


def test_machine_peak_of_this_machine_is_positive():
    p = flops.machine_peak()
    assert p.cores >= 1 and p.clock_ghz > 0 and p.gflops["float64"] > 0
    assert p.peak_gflops("float32", threads=1) == pytest.approx(p.gflops["float32"] / p.cores)


# -------------------------------------------------------------------------- peers
@pytest.mark.parametrize(
    "kw",
    [
        dict(activation="gelu"),
        dict(activation="relu", causal=True, linear=True),
        dict(activation="gelu_tanh", attention=False),
        dict(activation="tanh", ffn=False, beta=0.5),
    ],
)
def test_numpy_peer_vector_field_matches_tfkernels(kw):
    p = tfk.TransformerParams.random(8, 2, damping=0.7, seed=4, **kw)
    X = tfk.random_states(5, 6, 8, seed=1)
    f = peers.numpy_vector_field(peers.flow_spec(p, 4))
    np.testing.assert_allclose(f(X), tfk.vector_field(p, X), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_numpy_peer_flow_matches_tfkernels(method):
    p = tfk.TransformerParams.random(8, 2, damping=1.0, seed=2)
    x0 = tfk.random_states(9, 4, 8, seed=3)
    flow = peers.build("numpy", peers.flow_spec(p, 6, method), threads=2, py_threads=2)
    flow.load(x0)
    flow.run()
    np.testing.assert_allclose(
        flow.result(), tfk.integrate(p, x0, 6, method=method), rtol=1e-10, atol=1e-12
    )


def test_missing_peer_is_reported_unavailable(monkeypatch):
    def missing(name):
        raise peers.PeerUnavailable(f"{name} is not installed")

    monkeypatch.setattr(peers, "library_version", missing)
    out = io.BytesIO()
    peers.serve("torch", 1, {}, io.BytesIO(), out)
    out.seek(0)
    assert pickle.load(out) == ("unavailable", "torch is not installed")


class _WrongPeer:
    status, message = "ok", ""

    def setup(self, spec, x0):
        return x0 + 1.0, 0.01


def test_disagreeing_peer_is_reported_and_not_timed():
    x0 = np.ones((2, 3, 4))
    check = throughput.check_peer(_WrongPeer(), None, x0, x0, "float64")
    assert check["status"] == "mismatch" and "not timed" in check["message"]


def test_peer_flow_spec_rejects_per_layer_weights_and_averaged():
    p = tfk.TransformerParams.random(4, 2, n_layers=3)
    with pytest.raises(ValueError, match="per-layer"):
        peers.flow_spec(p, 3)
    with pytest.raises(ValueError, match="method"):
        peers.flow_spec(tfk.TransformerParams.random(4, 2), 3, "averaged")


# ------------------------------------------------------------------ CLI settings
def _args(*argv):
    parser = argparse.ArgumentParser()
    bench_cli.configure_parser(parser)
    return parser.parse_args(list(argv))


def test_settings_grid_from_command_line():
    s = bench_cli.settings_from_args(
        _args(
            "--n",
            "8,32",
            "--d",
            "16,64",
            "--seq-len",
            "16",
            "--dtype",
            "float32",
            "--peers",
            "none",
        )
    )
    assert s.preset == "custom" and s.n_layers == (8, 32) and s.peers == ()
    assert [(c.seq_len, c.d, c.heads) for c in s.configs] == [(16, 16, 4), (16, 64, 4)]


def test_settings_errors_name_the_option():
    with pytest.raises(ValueError, match="--heads"):
        bench_cli.settings_from_args(_args("--d", "6", "--heads", "4"))


@pytest.mark.parametrize(
    "argv, match",
    [
        (("--peers", "numpy,tensorflow"), "--peers"),
        (("--n", "8,x"), "--n"),
        (("--dtype", "float16"), "--dtype"),
    ],
)
def test_bad_options_stop_in_the_parser(argv, match, capsys):
    with pytest.raises(SystemExit):
        _args(*argv)
    assert f"argument {match}:" in capsys.readouterr().err


# -------------------------------------------------------------------------- paper
def test_paper_figure1_euler_order_is_one():
    fig1 = paper.figure1()
    assert abs(fig1["slope"] + 1.0) <= 0.15


def test_paper_writes_every_figure_and_field(tmp_path):
    doc = paper.run_paper(str(tmp_path), fig2_trajectories=64, fig3_iterations=2000)
    saved = json.loads((tmp_path / "paper.json").read_text())
    for fig, key in (
        ("figure1", "slope"),
        ("figure2", "rate"),
        ("figure2", "lambda"),
        ("figure3", "slope_standard"),
        ("figure3", "slope_accelerated"),
    ):
        assert np.isfinite(saved[fig][key]), (fig, key)
    assert sorted(os.listdir(tmp_path)) == [
        "figure1.png",
        "figure2.png",
        "figure3.png",
        "paper.json",
    ]
    assert doc["figure2"]["lambda"] == pytest.approx(-1.0)
    assert doc["figure2"]["bound_holds"]
    # The linear problem's theory: accelerated error ~ t^(-2 mu_min).
    assert doc["figure3"]["slope_accelerated"] == pytest.approx(
        doc["figure3"]["theory_accelerated"], abs=0.15
    )


# ------------------------------------------------------------ result files (issue 15)
def test_readme_is_written_only_when_missing_or_generated(tmp_path):
    from tfkernels.bench import report

    path = tmp_path / "README.md"
    assert report.write_readme(str(tmp_path)) == str(path)
    assert report.is_generated_readme(str(path))
    assert report.write_readme(str(tmp_path)) == str(path)  # its own: regenerated
    path.write_text("# my project\n\nHand-written.\n")
    with pytest.warns(UserWarning, match="not generated by tfkernels"):
        assert report.write_readme(str(tmp_path)) is None
    assert path.read_text() == "# my project\n\nHand-written.\n"
    assert [f for f in os.listdir(tmp_path) if ".tmp-" in f] == []


def _stub_writers(monkeypatch, tag, fail=False):
    from tfkernels.bench import plots

    def write_csv(doc, path):
        with open(path, "w") as fh:
            fh.write(tag)

    def plot(doc, path):
        with open(path, "w") as fh:
            fh.write(tag[:1])
            if fail:
                raise RuntimeError("plot failed midway")
            fh.write(tag[1:])

    monkeypatch.setattr(output, "write_csv", write_csv)
    monkeypatch.setattr(output, "write_readme", lambda out_dir: None)
    for _, name, _ in output.PLOTS:
        monkeypatch.setattr(plots, name, plot)


def test_sweep_outputs_are_one_set_and_an_error_keeps_the_old_one(tmp_path, monkeypatch):
    doc = {"preset": "x", "throughput": [1], "errors": [1], "tag": "old"}
    _stub_writers(monkeypatch, "old")
    output.write_outputs(dict(doc), str(tmp_path))
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(
        ["bench-x.json", "bench-x.csv"]
        + [f"bench-x-{s}.png" for s in ("throughput", "speedup", "errors")]
    )
    assert json.loads((tmp_path / "bench-x.json").read_text())["plots"] == [
        "bench-x-throughput.png",
        "bench-x-speedup.png",
        "bench-x-errors.png",
    ]
    _stub_writers(monkeypatch, "new", fail=True)
    with pytest.raises(RuntimeError, match="midway"):
        output.write_outputs(dict(doc, tag="new"), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == names  # no temporary file left
    assert json.loads((tmp_path / "bench-x.json").read_text())["tag"] == "old"
    for name in names:
        if not name.endswith(".json"):
            assert (tmp_path / name).read_text() == "old", name


def test_paper_checks_its_folder_before_any_work(tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("the experiments ran")

    monkeypatch.setattr(paper, "figure1", never)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="`out_dir`"):
        paper.run_paper(str(tmp_path / "file"))
    with pytest.raises(ValueError, match="`out_dir`"):
        paper.run_paper("")
    with pytest.raises(PermissionError, match="`out_dir`"):
        paper.run_paper("/proc/tfkernels-x")


@pytest.mark.parametrize("out", ["", "file", "/proc/x"])
def test_bench_checks_out_before_the_sweep(out, tmp_path, monkeypatch, capsys):
    from tfkernels.bench import run
    from tfkernels.cli import main

    def never(*args, **kwargs):
        raise AssertionError("the sweep ran although --out is unusable")

    monkeypatch.setattr(run, "run_sweep", never)
    if out == "file":
        out = str(tmp_path / "a-file")
        open(out, "w").close()
    assert main(["bench", "--preset", "quick", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0]
