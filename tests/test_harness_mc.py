"""The ``mc`` preset of the harness (issue 18): Monte Carlo batch sizes, ratios to each
peer and the best one, the fraction of the measured FMA peak, the goals, machine facts.

As in ``tests/test_harness.py``, nothing here asserts a time: the sweep runs the preset
shrunk to tiny shapes, few repeats and the NumPy peer, and the tests check that every
output and field is there; the goal verdicts are checked on a document made by hand.
"""

import argparse
import json
from dataclasses import replace

import pytest

from tfkernels.bench import machine, output, report, run, settings, throughput
from tfkernels.bench.settings import Config
from tfkernels.cli import bench as bench_cli


# ------------------------------------------------------------------ the preset
def test_mc_preset_has_the_monte_carlo_batches():
    mc = settings.PRESETS["mc"]
    assert [(c.name, c.seq_len, c.d, c.heads, c.batch) for c in mc.configs] == [
        ("tiny", 8, 16, 2, 8192),
        ("small", 16, 32, 4, 2048),
        ("medium", 32, 64, 4, 512),
        ("large", 64, 128, 8, 128),
    ]
    assert mc.n_layers == (32,) and mc.dtypes == ("float32", "float64")
    assert mc.peers == ("numpy", "torch", "jax") and mc.method == "euler"
    assert mc.sections == ("throughput",) and mc.goals == "issue18"
    assert mc.batch is None  # each config's own B
    full = settings.PRESETS["full"]  # the other sections, if asked for, are full's
    assert (mc.scaling, mc.errors, mc.compile) == (full.scaling, full.errors, full.compile)
    # the other presets keep issue 5's goals and work-sized batches
    for name in ("ci", "quick", "full"):
        s = settings.PRESETS[name]
        assert s.goals == "issue5" and all(c.batch is None for c in s.configs), name


def test_batch_is_the_option_then_the_config_then_the_work():
    mc = replace(settings.PRESETS["mc"], threads=2)
    assert [throughput.batch_for(mc, c) for c in mc.configs] == [8192, 2048, 512, 128]
    assert throughput.batch_for(replace(mc, batch=64), mc.configs[0]) == 64
    quick = replace(settings.PRESETS["quick"], threads=2)
    b = throughput.batch_for(quick, quick.configs[0])
    assert b & (b - 1) == 0 and 16 <= b <= 4096  # a power of two from `work`


def _args(*argv):
    parser = argparse.ArgumentParser()
    bench_cli.configure_parser(parser)
    return parser.parse_args(list(argv))


def test_mc_preset_from_the_command_line():
    s = bench_cli.settings_from_args(_args("--preset", "mc", "--peers", "numpy"))
    assert s.preset == "mc" and s.peers == ("numpy",) and s.goals == "issue18"
    assert [c.batch for c in s.configs] == [8192, 2048, 512, 128]
    s = bench_cli.settings_from_args(_args("--preset", "mc", "--batch", "64"))
    assert s.preset == "custom" and s.batch == 64 and s.goals == "issue18"


# -------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def mc_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-mc")
    # tiny shapes under the goal configs' names, so that both goal levels are judged
    mc = replace(
        settings.PRESETS["mc"],
        configs=(Config("tiny", 4, 8, 2, batch=16), Config("large", 4, 8, 2, batch=8)),
        n_layers=(2,),
        peers=("numpy",),
        repeats=2,
        min_sample_s=0.002,
        pause_s=0.0,
        wait_quiet_s=0.0,
        peak_min_s=0.02,
        threads=settings.default_threads(),
    )
    doc = run.run_sweep(mc, str(out), progress=False, plots=True)
    return out, doc


def test_mc_sweep_records_ratios_peak_fractions_and_goals(mc_run):
    out, _ = mc_run
    doc = json.loads((out / "bench-mc.json").read_text())
    assert set(doc["section_s"]) == {"machine", "throughput"}
    for key in ("compile", "scaling", "errors", "decay", "memory"):
        assert key not in doc, key
    pts = doc["throughput"]
    assert [(p["config"], p["dtype"], p["B"]) for p in pts] == [
        ("tiny", "float32", 16),
        ("large", "float32", 8),
        ("tiny", "float64", 16),
        ("large", "float64", 8),
    ]
    for p in pts:
        assert p["ours"]["frac_measured_peak"] == pytest.approx(
            p["ours"]["gflops"] / p["measured_peak_gflops"]
        )
        assert p["peers"]["numpy"]["status"] == "ok"
        assert p["best_peer"]["speedup"] == p["peers"]["numpy"]["speedup"]
        g = p["goal"]
        assert g["speedup_need"] == (2.5 if p["config"] == "tiny" else 1.5)
        assert g["speedup_met"] == (p["best_peer"]["speedup"] >= g["speedup_need"])
        if p["dtype"] == "float32":
            assert g["peak_need"] == (0.5 if p["config"] == "tiny" else 0.7)
            assert g["peak_basis"] == "measured FMA peak"
            assert g["met"] == (g["speedup_met"] and g["peak_met"])
        else:
            assert "peak_need" not in g and g["met"] == g["speedup_met"]


def test_mc_sweep_records_the_machine_facts(mc_run):
    _, doc = mc_run
    f = doc["machine"]["facts"]
    for key in (
        "model_name",
        "vector_isa",
        "vector_bits",
        "fma_datapath_bits",
        "kernel_vector_bits",
        "logical_cpus",
        "physical_cores",
        "threads_per_core",
        "sockets",
    ):
        assert key in f, key
    assert f["vector_bits"] in (128, 256, 512, machine.UNKNOWN)
    assert f["kernel_vector_bits"] in (256, 512)
    assert set(f["clock"]) >= {"base_ghz", "max_ghz", "reported_mhz", "implied_ghz"}
    n = str(doc["settings"]["threads"])
    for dt in ("float32", "float64"):
        assert f["measured_peak_gflops"][dt] == doc["machine"]["measured_peak"]["gflops"][dt][n]
        assert f["clock"]["implied_ghz"][dt] > 0
    assert {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"} <= set(doc["machine"]["env"])
    assert isinstance(doc["machine"]["blas"], list)


def test_mc_sweep_readme_csv_and_summary(mc_run, capsys):
    out, doc = mc_run
    readme = (out / "README.md").read_text()
    assert "Preset `mc`" in readme and "Machine facts:" in readme and "vector ISA" in readme
    for column in ("tfkernels ms", "numpy ms (×ours)", "best peer (×ours)"):
        assert column in readme, column
    assert "% measured FMA peak" in readme and "goal (issue 18)" in readme
    assert "Issue 18 goals, judged from this run" in readme and "Issue 5 goals" not in readme
    assert "(machine " in readme and "throughput " in readme  # the sections' seconds
    rows = (out / "bench-mc.csv").read_text().splitlines()
    head = rows[0].split(",")
    assert head == list(output.CSV_FIELDS) and "goal_met" in head
    ours = [r.split(",") for r in rows[1:] if ",tfkernels," in r]
    assert len(ours) == 4 and all(r[head.index("frac_measured_peak")] for r in ours)
    assert sorted(doc["plots"]) == ["bench-mc-speedup.png", "bench-mc-throughput.png"]
    bench_cli.print_summary(doc)
    text = capsys.readouterr().out
    assert "Machine facts:" in text and "goal (issue 18)" in text
    assert "tiny float32 N=2 B=16: ≥ 2.5× best peer" in text


# ------------------------------------------------------------- the goals, judged
def _point(config, dtype, speedups, frac=0.6):
    """A throughput point with the peers' speed-ups given (None: not timed)."""
    peers = {}
    for name, s in speedups.items():
        if s is None:
            peers[name] = {"status": "skipped", "variants": {}}
        else:
            peers[name] = {
                "status": "ok",
                "best_variant": "v",
                "median_s": 0.01 * s,
                "traj_layers_per_s": 1e6 / s,
                "speedup": s,
            }
    p = {
        "config": config,
        "dtype": dtype,
        "N": 32,
        "B": 512,
        "T": 4,
        "d": 8,
        "heads": 2,
        "ours": {
            "median_s": 0.01,
            "traj_layers_per_s": 1e6,
            "gflops": 100.0,
            "frac_peak": frac,
            "frac_measured_peak": frac,
        },
        "peers": peers,
    }
    return throughput.add_best_peer([p])[0]


def test_issue18_goals_are_judged_per_config():
    tiny = _point("tiny", "float32", {"numpy": 9.0, "torch": 4.0, "jax": 3.0}, frac=0.55)
    assert report.issue18_goal(tiny) == {
        "speedup_need": 2.5,
        "speedup": 3.0,
        "speedup_met": True,
        "peak_need": 0.5,
        "frac_peak": 0.55,
        "peak_met": True,
        "peak_basis": "measured FMA peak",
        "met": True,
    }
    medium = report.issue18_goal(_point("medium", "float32", {"jax": 1.6}, frac=0.65))
    assert (medium["speedup_met"], medium["peak_met"], medium["met"]) == (True, False, False)
    large = report.issue18_goal(_point("large", "float64", {"jax": 1.4, "torch": 3.0}))
    assert large["speedup"] == 1.4 and large["met"] is False and "peak_need" not in large
    untimed = report.issue18_goal(_point("small", "float64", {"jax": None}))
    assert untimed["speedup_met"] is None and untimed["met"] is None
    assert report.issue18_goal(_point("T16-d64-H4", "float32", {"jax": 5.0})) is None


def test_issue18_report_shows_every_peer_and_the_goal():
    pts = report.add_goals(
        [
            _point("tiny", "float32", {"numpy": 9.0, "torch": 4.0, "jax": 3.0}, frac=0.55),
            _point("large", "float32", {"numpy": 5.0, "torch": 2.0, "jax": 1.2}, frac=0.8),
        ],
        "issue18",
    )
    doc = {"settings": {"goals": "issue18"}, "throughput": pts}
    lines = report.throughput_table(doc)
    assert "| numpy ms (×ours) | torch ms (×ours) | jax ms (×ours) |" in lines[0]
    assert "90.0 [v] (9.00×)" in lines[2] and "**3.00×** jax[v]" in lines[2]
    assert "| 55.0 | yes (≥ 2.5× yes, ≥ 50 % peak yes) |" in lines[2]
    assert "**no** (≥ 1.5× no, ≥ 70 % peak yes)" in lines[3]
    verdicts = {name: ok for name, ok, _ in report.goals(doc)}
    assert verdicts == {
        "tiny float32 N=32 B=512: ≥ 2.5× best peer": True,
        "tiny float32 N=32 B=512: ≥ 50 % of the measured FMA peak": True,
        "large float32 N=32 B=512: ≥ 1.5× best peer": False,
        "large float32 N=32 B=512: ≥ 70 % of the measured FMA peak": True,
    }
    # a sweep of issue 5's goals keeps its table and goals
    doc5 = {"throughput": pts}
    assert report.goal_set(doc5) == "issue5"
    assert "best peer (×ours)" not in report.throughput_table(doc5)[0]
    assert all("N=32 B=512" not in name for name, _, _ in report.goals(doc5))


# --------------------------------------------------------------- machine facts
INTEL = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 85
model name	: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
cpu MHz		: 1000.021
physical id	: 0
siblings	: 4
cpu cores	: 2
flags		: fpu sse sse2 avx fma avx2

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
physical id	: 1
siblings	: 4
cpu cores	: 2
flags		: fpu sse sse2 avx fma avx2
"""

ZEN4 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
cpu MHz		: 2596.132
physical id	: 0
siblings	: 2
cpu cores	: 2
flags		: fpu sse2 avx fma avx2 avx512f avx512dq
"""

ARM = """processor	: 0
BogoMIPS	: 50.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32
CPU implementer	: 0x41
CPU part	: 0xd0c
"""


def _facts(tmp_path, text, freqs=None):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    root = tmp_path / "cpu"
    for cpu, files in (freqs or {}).items():
        d = root / cpu / "cpufreq"
        d.mkdir(parents=True)
        for name, khz in files.items():
            (d / name).write_text(f"{khz}\n")
    return machine.cpu_facts(str(info), str(root))


def test_cpu_facts_of_an_intel_machine_with_cpufreq(tmp_path):
    f = _facts(
        tmp_path,
        INTEL,
        {"cpu0": {"base_frequency": 2400000, "cpuinfo_max_freq": 3700000}, "cpu1": {}},
    )
    assert f["model_name"] == "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"
    assert (f["vector_isa"], f["vector_bits"], f["fma_datapath_bits"]) == ("AVX2", 256, 256)
    assert (f["logical_cpus"], f["sockets"], f["cores_per_socket"]) == (2, 2, 2)
    assert (f["physical_cores"], f["threads_per_core"]) == (4, 2)
    c = f["clock"]
    assert (c["base_ghz"], c["max_ghz"], c["min_ghz"]) == (2.4, 3.7, machine.UNKNOWN)
    assert c["reported_mhz"] == pytest.approx(1000.021)
    assert c["sources"]["base_ghz"].endswith("base_frequency")


def test_cpu_facts_without_cpufreq(tmp_path):
    f = _facts(tmp_path, INTEL)
    assert f["clock"]["base_ghz"] == 2.4  # from the model name
    assert f["clock"]["sources"]["base_ghz"] == "/proc/cpuinfo model name"
    assert f["clock"]["max_ghz"] == machine.UNKNOWN
    (tmp_path / "zen4").mkdir()
    z = _facts(tmp_path / "zen4", ZEN4)
    assert (z["vector_isa"], z["vector_bits"], z["fma_datapath_bits"]) == ("AVX-512", 512, 256)
    assert z["clock"]["base_ghz"] == machine.UNKNOWN and z["threads_per_core"] == 1


def test_cpu_facts_degrade_to_unknown(tmp_path):
    arm = _facts(tmp_path, ARM)
    assert (arm["vector_isa"], arm["vector_bits"]) == ("NEON", 128)
    for key in ("model_name", "vendor", "sockets", "physical_cores", "threads_per_core"):
        assert arm[key] == machine.UNKNOWN, key
    assert arm["clock"]["reported_mhz"] == machine.UNKNOWN
    none = machine.cpu_facts(str(tmp_path / "missing"), str(tmp_path / "missing"))
    assert none["vector_bits"] == none["fma"] == none["clock"]["base_ghz"] == machine.UNKNOWN
    assert none["logical_cpus"] >= 1  # os.cpu_count()
    text = report.readme_machine_facts({"facts": none})[0]
    assert "vector ISA unknown (unknown registers" in text and "base unknown" in text


def test_cpu_facts_of_this_machine():
    f = machine.cpu_facts()
    assert isinstance(f["model_name"], str) and f["logical_cpus"] >= 1
    assert f["vector_bits"] in (128, 256, 512, machine.UNKNOWN)
    assert isinstance(f["clock"]["base_ghz"], float) or f["clock"]["base_ghz"] == "unknown"


def test_parse_cpuinfo_blocks():
    blocks = machine.parse_cpuinfo(INTEL + "\n\n")
    assert len(blocks) == 2 and blocks[1]["physical id"] == "1"
    assert machine.parse_cpuinfo("") == [] and machine.parse_cpuinfo("no colon\n") == []
