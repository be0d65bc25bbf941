"""Safe result writing, shared by every study, the CLI and the benchmark harness.

Two rules, so that no run loses or tears a result set:

* :func:`check_out_dir` checks an output folder before any work starts: an empty
  path, an existing file or a path that cannot be written is an error naming the
  argument (``ValueError`` or ``PermissionError``). It creates nothing, so a study
  that fails later leaves no empty folder behind.
* :class:`ResultSet` writes a set of files atomically: each file goes to a temporary
  name in the same folder and is ``os.replace``\\ d over its final name only when every
  file of the set was written, the JSON last; on any error the temporary files are
  removed and the previous set is left untouched.
"""

import contextlib
import os
import re
import secrets
import time

__all__ = ["check_out_dir", "ResultSet", "atomic_path", "write_text"]

#: A temporary file older than this (seconds) was left by a killed writer: the next
#: :class:`ResultSet` in its folder removes it (a live one lasts as long as one write).
STALE_TMP_S = 600.0
_TMP_NAME = re.compile(r"^\.[^/]*\.tmp-[0-9a-f]{8}(\.[^./]*)?$")


def check_out_dir(path, name="out_dir"):
    """Check that ``path`` is (or can be created as) a writable folder.

    Nothing is created: for a missing folder the nearest existing ancestor must be a
    writable folder. Returns the path; raises ``ValueError`` for an empty path or an
    existing file, ``PermissionError`` for a folder that cannot be written; every
    message names ``name``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    if path == "":
        raise ValueError(f"`{name}` is empty; give an output folder")
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == os.path.abspath(probe):
            break
        probe = parent
    if not os.path.isdir(probe):
        what = "is a file" if probe == path else f"lies under the file {probe!r}"
        raise ValueError(f"`{name}` {path!r} {what}, not a folder")
    if not _writable(probe):
        raise PermissionError(f"`{name}` {path!r}: cannot write in {probe!r}")
    return path


def _writable(folder):
    """Whether a file can really be created in ``folder`` (root ignores mode bits)."""
    try:
        fd, tmp = _mkstemp(folder, "probe")
    except OSError:
        return False
    os.close(fd)
    os.remove(tmp)
    return True


def _mkstemp(folder, final_name):
    """Create a new hidden temporary file beside ``final_name`` keeping its suffix
    (matplotlib picks the format from it); return ``(fd, path)``."""
    stem, ext = os.path.splitext(os.path.basename(final_name))
    for _ in range(100):
        tmp = os.path.join(folder, f".{stem}.tmp-{secrets.token_hex(4)}{ext}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder!r}")


class ResultSet:
    """A set of result files in one folder, replaced together.

    Use it as a context manager::

        with ResultSet(out_dir, name="--out") as rs:
            res.to_csv(rs.path("decay.csv"))
            res.to_json(rs.path("decay.json"))
        rs.paths   # the final paths, JSON last

    :meth:`path` returns the temporary path to write a file to. On a normal exit every
    file is renamed over its final name (JSON files last, so a reader that finds a new
    JSON finds the rest of the new set); on an error the temporary files are removed
    and nothing of the previous set changes. The folder is checked with
    :func:`check_out_dir` and created on entry.
    """

    def __init__(self, out_dir, name="out_dir"):
        self.out_dir = check_out_dir(out_dir, name)
        self._tmp = {}
        self.paths = []

    def __enter__(self):
        os.makedirs(self.out_dir, exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        return self

    def path(self, filename):
        """The temporary path to write ``filename`` (a bare name in the folder) to."""
        if os.path.basename(filename) != filename or filename in ("", ".", ".."):
            raise ValueError(f"`filename` must be a bare file name, got {filename!r}")
        if filename in self._tmp:
            return self._tmp[filename]
        fd, tmp = _mkstemp(self.out_dir, filename)
        os.close(fd)
        self._tmp[filename] = tmp
        return tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
            return False
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise
        return False

    def commit(self):
        """Rename every temporary file over its final name, JSON files last."""
        order = sorted(self._tmp, key=lambda f: f.endswith(".json"))
        for filename in order:
            final = os.path.join(self.out_dir, filename)
            os.replace(self._tmp[filename], final)
            del self._tmp[filename]
            self.paths.append(final)

    def abort(self):
        """Remove the temporary files not yet renamed."""
        for tmp in self._tmp.values():
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        self._tmp.clear()


def remove_stale_temporaries(folder, age_s=None):
    """Remove the temporary files of this module older than ``age_s`` (default
    :data:`STALE_TMP_S`) from ``folder``: those a killed writer (SIGKILL) left."""
    age_s = STALE_TMP_S if age_s is None else age_s
    now = time.time()
    with os.scandir(folder) as it:
        for entry in it:
            if not (_TMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False)):
                continue
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > age_s:
                    os.remove(entry.path)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; replace ``path`` with it on success."""
    folder = os.path.dirname(os.path.abspath(path))
    with ResultSet(folder, name="path") as rs:
        yield rs.path(os.path.basename(path))


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def save_result(result, out_dir, stem, plot=True):
    """Write ``result``'s ``<stem>.csv``, ``<stem>.png`` (when ``plot``) and
    ``<stem>.json`` into ``out_dir`` as one :class:`ResultSet` (the JSON last), with its
    ``to_csv``, ``plot`` and ``to_json``; returns the paths written."""
    with ResultSet(out_dir, name="out_dir") as rs:
        result.to_csv(rs.path(f"{stem}.csv"))
        if plot:
            result.plot(rs.path(f"{stem}.png"))
        result.to_json(rs.path(f"{stem}.json"))
    return rs.paths


def write_csv(path, table, int_columns=()):
    """Write ``table`` (a dict of equally long columns) as CSV with a header row,
    atomically; ``int_columns`` are written as integers, the others with 10 digits."""
    import numpy as np

    cols = list(table)
    rows = np.column_stack([np.asarray(table[c], dtype=np.float64) for c in cols])
    fmt = ["%d" if c in int_columns else "%.10g" for c in cols]
    with atomic_path(path) as tmp:
        np.savetxt(tmp, rows, delimiter=",", header=",".join(cols), comments="", fmt=fmt)


def save_figure(fig, path, dpi=120):
    """Save the matplotlib ``fig`` to ``path`` atomically, then close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)


class TableResult:
    """Storage of a study's result dataclass with a per-row table ``stats`` (a dict of
    equally long columns): :meth:`to_dict`, :meth:`to_json`, :meth:`to_csv`. A class
    names the integer columns of its CSV in ``CSV_INT_COLUMNS``."""

    CSV_INT_COLUMNS = ()

    def to_dict(self):
        """All fields as JSON-ready Python values."""
        import dataclasses

        import numpy as np

        from .serialize import jsonable

        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["stats"] = {k: np.asarray(val) for k, val in self.stats.items()}
        return jsonable(d)

    def to_json(self, path):
        """Write the result as JSON, atomically (a temporary file renamed over ``path``)."""
        import json

        write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    def to_csv(self, path):
        """Write the table ``stats`` as CSV (one row per entry), atomically."""
        write_csv(path, self.stats, int_columns=self.CSV_INT_COLUMNS)
