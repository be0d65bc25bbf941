"""``tfkernels paper`` (tfkernels.cli.paper): options, the argument checks, what it prints,
and that it writes nothing outside ``--out`` (no README beside it)."""

import argparse
import os

import pytest

from tfkernels.cli import paper as paper_cli
from tfkernels.studies import paper


def parse(*argv):
    parser = argparse.ArgumentParser()
    paper_cli.configure_parser(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def stubs(monkeypatch):
    """Stub the experiments; yield the calls."""
    calls = {"run": []}

    def run_paper(out, seed, fig2_trajectories):
        calls["run"].append((out, seed, fig2_trajectories))
        return {"summary": ["finding one", "finding two"], "plots": ["figure1.png"]}

    monkeypatch.setattr(paper, "run_paper", run_paper)
    yield calls


def test_defaults():
    args = parse()
    assert (args.out, args.seed, args.trajectories) == ("results/paper", 0, 1000)


@pytest.mark.parametrize("name", ["paper", "elsewhere"])
def test_runs_the_experiments_and_writes_nothing_beside_out(tmp_path, capsys, stubs, name):
    out = tmp_path / name
    assert paper_cli.run_cli(parse("--out", str(out), "--seed", "3", "--trajectories", "64")) == 0
    assert stubs["run"] == [(str(out), 3, 64)]
    assert os.listdir(tmp_path) == []  # the stub wrote nothing, nor did the command
    text = capsys.readouterr().out
    assert "finding one\nfinding two\n" in text and "1 plot(s)" in text
    assert "regenerated" not in text


def test_a_hand_written_readme_beside_out_is_never_replaced(tmp_path, stubs):
    # QA 466: `cd proj && tfkernels paper --out proj/paper` replaced proj/README.md
    readme = tmp_path / "README.md"
    readme.write_text("# my project\n")
    assert paper_cli.run_cli(parse("--out", str(tmp_path / "paper"))) == 0
    assert readme.read_text() == "# my project\n"
    assert sorted(os.listdir(tmp_path)) == ["README.md"]


@pytest.mark.parametrize(
    "out, match",
    [("", "is empty"), ("FILE", "is a file"), ("FILE/sub", "lies under"), ("/proc/x", "cannot")],
)
def test_a_bad_out_is_one_line_exit_2_before_any_work(tmp_path, capsys, stubs, out, match):
    # QA 469: `paper --out /proc/x` was a FileNotFoundError traceback
    (tmp_path / "FILE").write_text("x")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    assert paper_cli.run_cli(parse("--out", out)) == 2
    assert stubs["run"] == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`--out`" in err and match in err
    assert err.startswith("tfkernels paper: error:")


@pytest.mark.parametrize(
    "argv, match",
    [
        (("--trajectories", "0"), "argument --trajectories: must be >= 1, got 0"),
        (("--trajectories", "1.5"), "argument --trajectories: must be an integer"),
        (("--seed", "-1"), "argument --seed: must be >= 0, got -1"),  # QA 470
        (("--seed", str(2**63 - 3)), "argument --seed: must be <= 9223372036854775804"),
    ],
)
def test_bad_options_stop_in_the_parser(stubs, capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2 and match in capsys.readouterr().err
    assert stubs["run"] == []


def test_options_in_range_and_exponent_notation_parse():
    args = parse("--trajectories", "1e3", "--seed", str(paper.MAX_SEED))
    assert (args.trajectories, args.seed) == (1000, 2**63 - 4)
    assert paper_cli.MAX_SEED == paper.MAX_SEED  # repeated in the CLI for a fast --help


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(seed=-1), ValueError, "`seed` must be >= 0"),
        (dict(seed=paper.MAX_SEED + 1), ValueError, "`seed` must be <= "),
        (dict(seed=1.0), TypeError, "`seed` must be an integer"),
        (dict(fig2_trajectories=0), ValueError, "`fig2_trajectories` must be >= 1"),
        (dict(fig3_iterations=0), ValueError, "`fig3_iterations` must be >= 1"),
        (dict(plots="yes"), TypeError, "`plots` must be True or False"),
    ],
)
def test_run_paper_checks_its_arguments_before_creating_out(tmp_path, kw, exc, match):
    # QA 470: `paper --seed -1` was a NumPy traceback and left an empty folder behind
    with pytest.raises(exc, match=match):
        paper.run_paper(str(tmp_path / "out"), **kw)
    assert not (tmp_path / "out").exists()
