"""The ``tfkernels`` command line: every flag checked by the parser with its name, one-line
errors (exit status 2), ``--debug`` tracebacks, and the exit status of a bug (1).

The QA rows are those of ``qa/bad-inputs.md``. Nothing here runs a study: the studies
and the sweep are replaced by functions that fail the test if they are called, or
that raise the error under test.
"""

import argparse
import subprocess
import sys

import pytest

from tfkernels import cli
from tfkernels.bench import fresh
from tfkernels.bench import run as bench_run
from tfkernels.cli import common
from tfkernels.studies import decay as decay_study
from tfkernels.studies import paper as paper_study


def main(argv, capsys):
    """``tfkernels argv``: (exit status, stdout, stderr); a parser error's SystemExit too."""
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a study or the sweep runs."""

    def never(*args, **kwargs):
        raise AssertionError("the work ran although the arguments are invalid")

    monkeypatch.setattr(decay_study, "perturbation_decay", never)
    monkeypatch.setattr(paper_study, "run_paper", never)
    monkeypatch.setattr(bench_run, "run_sweep", never)


BAD = [
    # bench (QA 411-418)
    (["bench", "--threads", "0"], "argument --threads: must be >= 1, got 0"),  # 411
    (["bench", "--threads", "-1"], "argument --threads: must be >= 1, got -1"),  # 412
    (["bench", "--batch", "0"], "argument --batch: must be >= 1, got 0"),  # 413
    (["bench", "--heads", "0"], "argument --heads: must be >= 1, got 0"),  # 415
    (["bench", "--seq-len", "0"], "argument --seq-len: must be >= 1, got 0"),  # 417
    (["bench", "--seq-len", "-2", "--d", "16"], "argument --seq-len: must be >= 1, got -2"),
    (["bench", "--heads", "3", "--d", "16"], "`--heads`=3 must divide every `--d`, not 16"),
    (["bench", "--heads", "3"], "`--heads`=3 must divide every `--d`"),
    (["bench", "--threads", "100000"], "`--threads`=100000 exceeds"),
    (["bench", "--n", "8,,x"], "argument --n: not an integer: 'x'"),
    (["bench", "--n", ""], "argument --n: needs a comma-separated list of integers"),
    (["bench", "--d", "16,0"], "argument --d: must be >= 1, got 0"),
    (["bench", "--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    (["bench", "--wait-quiet", "-1"], "argument --wait-quiet: must be >= 0.0, got -1.0"),
    (["bench", "--wait-quiet", "nan"], "argument --wait-quiet: must be finite, got nan"),
    (["bench", "--dtype", "float16"], "argument --dtype: unknown 'float16'"),
    (["bench", "--dtype", ""], "argument --dtype: needs at least one of float32, float64"),
    (["bench", "--peers", "foo"], "argument --peers: unknown 'foo'"),
    (["bench", "--sections", "bogus"], "argument --sections: unknown 'bogus'"),
    (["bench", "--sections", "none"], "argument --sections: needs at least one of"),
    (["bench", "--method", "averaged"], "argument --method: invalid choice"),
    (["bench", "--out", ""], "`--out` is empty"),
    # decay (QA 438-451)
    (["decay", "--eps", "-1e-6"], "argument --eps: must be > 0.0, got -1e-06"),  # 444
    (["decay", "--eps=-1e-6"], "argument --eps: must be > 0.0, got -1e-06"),
    (["decay", "--eps", "0"], "argument --eps: must be > 0.0, got 0.0"),
    (["decay", "--eps", "nan"], "argument --eps: must be finite, got nan"),
    (["decay", "--eps", "1e39", "--dtype", "float32"], "`--eps`=1e+39 overflows float32"),
    (["decay", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),  # 446
    (["decay", "--seed", str(2**64)], "argument --seed: must be an integer in [0, 2**63 - 1]"),
    (["decay", "--seed", str(2**63)], "argument --seed: must be an integer in [0, 2**63 - 1]"),
    (["decay", "--seed", "1.5"], "argument --seed: must be an integer, got '1.5'"),
    (["decay", "--trajectories", "0"], "argument --trajectories: must be >= 1, got 0"),
    (["decay", "--trajectories", "1e400"], "argument --trajectories: '1e400' is too large"),
    (["decay", "--trajectories", "inf"], "argument --trajectories: must be a finite integer"),
    (["decay", "--trajectories", "1e8x"], "argument --trajectories: not an integer: '1e8x'"),
    (["decay", "--trajectories", str(2**63 + 1)], "argument --trajectories: must be <= "),
    (["decay", "--layers", "0"], "argument --layers: must be >= 1, got 0"),
    (["decay", "--layers", "2.5"], "argument --layers: must be an integer, got '2.5'"),
    (["decay", "--seq-len", "-3"], "argument --seq-len: must be >= 1, got -3"),
    (["decay", "--d", "0"], "argument --d: must be >= 1, got 0"),
    (["decay", "--heads", "-2"], "argument --heads: must be >= 1, got -2"),
    (["decay", "--heads", "3"], "`--heads`=3 must divide `--d`=16"),
    (["decay", "--d-ff", "0"], "argument --d-ff: must be >= 1, got 0"),
    (["decay", "--damping", "-1"], "argument --damping: must be >= 0.0, got -1.0"),
    (["decay", "--damping", "-inf"], "argument --damping: must be finite, got -inf"),
    (["decay", "--damping", "1e39", "--dtype", "float32"], "`--damping`=1e+39 overflows"),
    (["decay", "--chunk-size", "0"], "argument --chunk-size: must be >= 1, got 0"),
    (["decay", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (["decay", "--threads", "100000"], "`--threads`=100000 exceeds"),
    (["decay", "--scheduler", " "], "argument --scheduler: must not be empty"),
    (["decay", "--method", "rk5"], "argument --method: invalid choice: 'rk5'"),
    (["decay", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["decay", "--out", ""], "`--out` is empty"),
    # paper (QA 467-470)
    (["paper", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),  # 470
    (["paper", "--trajectories", "0"], "argument --trajectories: must be >= 1, got 0"),
    (["paper", "--out", "/proc/x"], "`--out` '/proc/x': cannot write"),
    # the command itself
    (["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
    (["decay", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
]


@pytest.mark.parametrize("argv, match", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_flag_is_one_line_naming_it_exit_2_before_any_work(argv, match, capsys, no_work):
    code, out, err = main(argv, capsys)
    prefix = f"tfkernels {argv[0]}: error: " if argv[0] in cli.SUBCOMMANDS else "tfkernels: "
    assert code == 2 and out == ""
    assert err.startswith(prefix) and err.count("\n") == 1, err
    assert match in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, key, value",
    [
        (["decay", "--trajectories", "1e6"], "trajectories", 1_000_000),
        (["decay", "--trajectories", "1_000"], "trajectories", 1000),
        (["decay", "--layers", "8.0"], "layers", 8),
        (["decay", "--seed", str(2**63 - 1)], "seed", 2**63 - 1),
        (["decay", "--eps", "1e-8"], "eps", 1e-8),
        (["decay", "--damping", "0"], "damping", 0.0),
        (["paper", "--trajectories", "1e3"], "trajectories", 1000),  # QA 467: as decay
        (["bench", "--n", "8, 32"], "n", (8, 32)),
        (["bench", "--dtype", "both"], "dtype", ("float32", "float64")),
        (["bench", "--peers", "none"], "peers", ()),
        (["bench", "--wait-quiet", "0"], "wait_quiet", 0.0),
    ],
)
def test_good_values_parse(argv, key, value):
    args = cli.build_parser(argv).parse_args(argv)
    assert getattr(args, key) == value
    assert not args.debug


def test_every_valued_flag_is_checked_by_its_own_type():
    """A new option must get a checking type (``common``) named after it, or be listed
    here with where it is checked."""
    elsewhere = {"--out", "--checkpoint", "--model"}  # in check_args, before any work
    for name in cli.SUBCOMMANDS:
        parser = cli.build_parser([name])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
            name
        ]
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.choices:
                continue  # flags, --help, choices (checked by argparse)
            flag = action.option_strings[0]
            if flag in elsewhere:
                continue
            assert getattr(action.type, "flag", None) == flag, f"{name} {flag}"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_on_either_side_of_the_subcommand(where):
    argv = ["--debug", "decay"] if where == "before" else ["decay", "--debug"]
    assert cli.build_parser(argv).parse_args(argv).debug is True
    assert cli.build_parser(["decay"]).parse_args(["decay"]).debug is False


TINY = ["--trajectories", "8", "--layers", "2", "--d", "4", "--d-ff", "4", "--seq-len", "2"]


def _raising(exc):
    def study(*args, **kwargs):
        raise exc

    return study


@pytest.mark.parametrize(
    "exc",
    [
        FloatingPointError("2 trajectory(ies) became non-finite at layer 3"),
        ValueError("`params` something the API rejects"),
        MemoryError("Unable to allocate 8 EiB"),
        ValueError("a message\nover two lines"),
    ],
    ids=["blow-up", "api", "memory", "two-lines"],
)
def test_an_expected_error_inside_the_study_is_one_line_exit_2(tmp_path, capsys, monkeypatch, exc):
    monkeypatch.setattr(decay_study, "perturbation_decay", _raising(exc))
    code, out, err = main(["decay", *TINY, "--out", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err == f"tfkernels decay: error: {common.one_line(exc)}\n"
    assert list(tmp_path.iterdir()) == []
    for debug in (["--debug", "decay"], ["decay", "--debug"]):
        with pytest.raises(type(exc)):
            cli.main([*debug, *TINY, "--out", str(tmp_path)])


def test_an_unexpected_exception_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_run, "run_sweep", _raising(RuntimeError("boom")))
    argv = ["bench", "--preset", "ci", "--out", str(tmp_path)]
    code, out, err = main(argv, capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("tfkernels bench: internal error: RuntimeError: boom")
    assert "--debug" in err
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["--debug", *argv])


@pytest.mark.parametrize("cmd", ["bench", "paper"])
def test_expected_errors_of_bench_and_paper_are_one_line(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench_run, "run_sweep", _raising(ValueError("`x` is bad")))
    monkeypatch.setattr(paper_study, "run_paper", _raising(FloatingPointError("blew up")))
    argv = [cmd, "--out", str(tmp_path)] + (["--preset", "ci"] if cmd == "bench" else [])
    code, out, err = main(argv, capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"tfkernels {cmd}: error: ")


def test_one_line_joins_lines():
    assert common.one_line("a\n  b \n\nc") == "a; b; c"


@pytest.mark.parametrize(
    "text, value",
    [("12", 12), (" 1_000 ", 1000), ("1e6", 10**6), ("2.5e3", 2500), ("-4", -4), ("8.0", 8)],
)
def test_parse_integer(text, value):
    assert common.parse_integer(text) == value


@pytest.mark.parametrize("text", ["", "x", "1.5", "1e-3", "nan", "-inf", "0x10", "1e50"])
def test_parse_integer_rejects(text):
    with pytest.raises(ValueError):
        common.parse_integer(text)


@pytest.mark.parametrize("word", ["-1", "-1.5", "-1e-6", "-.5", "-1E+3", "-inf", "-nan"])
def test_negative_numbers_are_values(word):
    assert common.NEGATIVE_NUMBER.match(word)
    assert not common.NEGATIVE_NUMBER.match("--eps") and not common.NEGATIVE_NUMBER.match("-h")


# ------------------------------------------------------------------- end to end
def command(*argv):
    """Run ``python -m tfkernels.cli argv`` in a fresh process; (status, stderr)."""
    r = subprocess.run(
        [sys.executable, "-m", "tfkernels.cli", *argv],
        capture_output=True,
        text=True,
        env=fresh.child_env(),
        timeout=120,
    )
    return r.returncode, r.stderr


@pytest.mark.parametrize(
    "argv, match",
    [
        (["decay", "--eps", "-1e-6"], "argument --eps: must be > 0.0"),
        (["decay", "--heads", "3"], "`--heads`=3 must divide `--d`=16"),
        (["paper", "--out", "/proc/x"], "`--out` '/proc/x': cannot write"),
        (["bench", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    ],
)
def test_end_to_end_one_line_without_traceback(argv, match):
    code, err = command(*argv)
    assert code == 2 and err.count("\n") == 1 and match in err, err
    assert "Traceback" not in err


def test_end_to_end_debug_shows_the_traceback():
    code, err = command("--debug", "decay", "--heads", "3")
    assert code == 1 and "Traceback (most recent call last)" in err
    assert "ValueError: `--heads`=3 must divide `--d`=16" in err


@pytest.mark.parametrize("argv", [[], ["decay"], ["bench"], ["paper"]])
def test_help_documents_debug_and_exit_status(argv):
    r = subprocess.run(
        [sys.executable, "-m", "tfkernels.cli", *argv, "--help"],
        capture_output=True,
        text=True,
        env=fresh.child_env(),
        timeout=120,
    )
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--debug" in text and "exit status: 0 success; 1 an unexpected error" in text
    assert "2 a bad option or input" in text and "130 interrupted" in text
    assert ("3 the study ran" in text) == (argv == ["decay"])
