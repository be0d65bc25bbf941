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


def test_too_few_trajectories_stop_before_any_work(stubs):
    with pytest.raises(SystemExit, match="`--trajectories`"):
        paper_cli.run_cli(parse("--trajectories", "0"))
    assert stubs["run"] == []
