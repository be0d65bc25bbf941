"""Safe result writing (tfkernels.studies.output): the folder check before any work,
and result sets replaced atomically (issue 15, part 1)."""

import os

import pytest

from tfkernels.studies import output


def _temps(folder):
    return [f for f in os.listdir(folder) if ".tmp-" in f]


# ------------------------------------------------------------------ check_out_dir
def test_check_accepts_an_existing_and_a_missing_folder_and_creates_nothing(tmp_path):
    assert output.check_out_dir(str(tmp_path)) == str(tmp_path)
    missing = tmp_path / "a" / "b"
    assert output.check_out_dir(missing) == str(missing)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda p: "", ValueError, "`--out` is empty"),
        (lambda p: str(p / "file"), ValueError, "`--out` .* is a file"),
        (lambda p: str(p / "file" / "sub"), ValueError, "`--out` .* lies under the file"),
        (lambda p: "/proc/tfkernels-x", PermissionError, "`--out` .* cannot write"),
    ],
)
def test_check_rejects_bad_folders_naming_the_argument(tmp_path, make, exc, match):
    (tmp_path / "file").write_text("x")
    with pytest.raises(exc, match=match):
        output.check_out_dir(make(tmp_path), "--out")


def test_check_rejects_a_non_path():
    with pytest.raises(TypeError, match="`out_dir`"):
        output.check_out_dir(3)


def test_check_rejects_a_folder_it_cannot_write(tmp_path, monkeypatch):
    # root ignores mode bits, so the probe file's creation is made to fail
    def refuse(folder, name):
        raise PermissionError("no")

    monkeypatch.setattr(output, "_mkstemp", refuse)
    with pytest.raises(PermissionError, match="`out_dir`"):
        output.check_out_dir(tmp_path)


# ---------------------------------------------------------------------- ResultSet
def _write_set(folder, tag, fail_at=None):
    with output.ResultSet(folder) as rs:
        for name in ("a.csv", "b.png", "r.json"):
            with open(rs.path(name), "w") as fh:
                fh.write(tag[: len(tag) // 2])
                if name == fail_at:
                    raise RuntimeError("killed midway")
                fh.write(tag[len(tag) // 2 :])
    return rs.paths


def test_result_set_writes_every_file_json_last(tmp_path):
    paths = _write_set(tmp_path / "out", "new")
    assert [os.path.basename(p) for p in paths] == ["a.csv", "b.png", "r.json"]
    for p in paths:
        assert open(p).read() == "new"
    assert _temps(tmp_path / "out") == []


@pytest.mark.parametrize("fail_at", ["a.csv", "b.png", "r.json"])
def test_result_set_error_midway_keeps_the_old_set_and_no_temporary_file(tmp_path, fail_at):
    _write_set(tmp_path, "old")
    with pytest.raises(RuntimeError, match="midway"):
        _write_set(tmp_path, "newer", fail_at=fail_at)
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "b.png", "r.json"]
    for name in os.listdir(tmp_path):
        assert (tmp_path / name).read_text() == "old"


def test_result_set_failed_rename_removes_the_rest(tmp_path, monkeypatch):
    _write_set(tmp_path, "old")
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(output.os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        _write_set(tmp_path, "new")
    assert _temps(tmp_path) == []
    # the JSON, renamed last, is still the old one
    assert (tmp_path / "r.json").read_text() == "old"


def test_result_set_keeps_the_suffix_and_takes_only_bare_names(tmp_path):
    with output.ResultSet(tmp_path) as rs:
        tmp = rs.path("figure.png")
        assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
        for bad in ("../x.json", "sub/x.json", ""):
            with pytest.raises(ValueError, match="`filename`"):
                rs.path(bad)
    assert os.listdir(tmp_path) == ["figure.png"]


def test_result_set_checks_the_folder_first(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="`--out`"):
        output.ResultSet(tmp_path / "f", name="--out")


def test_write_text_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "README.md"
    output.write_text(path, "one")
    assert path.read_text() == "one"

    def boom(src, dst):
        raise OSError("no rename")

    monkeypatch.setattr(output.os, "replace", boom)
    with pytest.raises(OSError):
        output.write_text(path, "two")
    assert path.read_text() == "one" and _temps(tmp_path) == []


KILLED_WRITER = """
import os, signal, sys
from tfkernels.studies import output
with output.ResultSet(sys.argv[1]) as rs:
    with open(rs.path("a.csv"), "w") as fh:
        fh.write("new")
    with open(rs.path("r.json"), "w") as fh:
        fh.write("ne")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_leaves_the_old_set_and_its_temporaries_are_cleaned(tmp_path):
    import signal
    import subprocess
    import sys

    _write_set(tmp_path, "old")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(output.__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], env=env)
    assert proc.returncode == -signal.SIGKILL
    for name in ("a.csv", "b.png", "r.json"):
        assert (tmp_path / name).read_text() == "old"
    left = _temps(tmp_path)
    assert len(left) == 2
    _write_set(tmp_path, "new")  # too fresh to be stale: kept
    assert sorted(_temps(tmp_path)) == sorted(left)
    for name in left:
        old = os.path.getmtime(tmp_path / name) - 2 * output.STALE_TMP_S
        os.utime(tmp_path / name, (old, old))
    _write_set(tmp_path, "newer")
    assert _temps(tmp_path) == [] and (tmp_path / "r.json").read_text() == "newer"
