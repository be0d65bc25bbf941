"""``tfkernels paper`` (tfkernels.cli.paper): options, the argument check, what it prints,
and the results README it regenerates only for an output folder named ``paper``."""

import argparse

import pytest

from tfkernels.cli import paper as paper_cli
from tfkernels.studies import paper


def parse(*argv):
    parser = argparse.ArgumentParser()
    paper_cli.configure_parser(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def stubs(monkeypatch):
    """Stub the experiments (the README is really written); yield the calls."""
    calls = {"run": []}

    def run_paper(out, seed, fig2_trajectories):
        calls["run"].append((out, seed, fig2_trajectories))
        return {"summary": ["finding one", "finding two"], "plots": ["figure1.png"]}

    monkeypatch.setattr(paper, "run_paper", run_paper)
    yield calls


def test_defaults():
    args = parse()
    assert (args.out, args.seed, args.trajectories) == ("results/paper", 0, 1000)


@pytest.mark.parametrize("name, readme", [("paper", True), ("elsewhere", False)])
def test_runs_the_experiments_and_regenerates_the_readme_of_a_paper_folder(
    tmp_path, capsys, stubs, name, readme
):
    out = tmp_path / name
    assert paper_cli.run_cli(parse("--out", str(out), "--seed", "3", "--trajectories", "64")) == 0
    assert stubs["run"] == [(str(out), 3, 64)]
    assert (tmp_path / "README.md").exists() == readme
    text = capsys.readouterr().out
    assert "finding one\nfinding two\n" in text and "1 plot(s)" in text
    assert ("regenerated" in text) == readme


def test_too_few_trajectories_stop_before_any_work(stubs):
    with pytest.raises(SystemExit, match="`--trajectories`"):
        paper_cli.run_cli(parse("--trajectories", "0"))
    assert stubs["run"] == []
