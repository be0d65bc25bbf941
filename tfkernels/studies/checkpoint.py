"""Checkpoints of the chunked runner: the merged statistics of a run's first chunks.

:func:`.runner.run_chunks` with ``checkpoint=PATH`` saves ``(next_chunk, stats)`` (the
merge of chunks ``0 … next_chunk − 1``) to ``PATH`` every few seconds, at the end and
when the run stops (Ctrl-C or an error); a later run with the same path and the same
configuration resumes from it. Nothing here knows what a study computes.

The file (format ``tfkernels-checkpoint``, version 1) is a NumPy ``.npz`` archive:

* ``header``: a JSON text holding ``format``, ``version``, ``config`` (what the run
  must match to resume from it: the chunk function, ``n_trajectories``,
  ``chunk_size``, the SHA-256 of the shared inputs (:func:`fingerprint`) and the
  study's own description), ``next_chunk``, ``n_chunks``, ``n_done`` (trajectories
  merged), the version of tfkernels that wrote it, the time, and ``stats``: the
  statistic as a tree (:func:`encode`) whose arrays are the archive's other members;
* ``a0``, ``a1``, …: those arrays, bit for bit.

It is read with ``allow_pickle=False``: loading runs no code from the file. The
statistic must be a dataclass (of a class already imported) whose fields hold arrays
of a numeric, bool or string dtype, numbers, strings, None, and lists, tuples and
str-keyed dicts of these. A file is written to a temporary name beside ``PATH``,
flushed to disk and renamed over ``PATH`` (:func:`.output.atomic_path`), so ``PATH``
holds the previous checkpoint or the new one, never a torn file.
"""

import dataclasses
import hashlib
import json
import os
import sys
import time
import types
import zipfile

import numpy as np

from . import output
from .serialize import jsonable

#: Name and version of the file format.
FORMAT = "tfkernels-checkpoint"
VERSION = 1


# ================================================================== the path
def check_path(path, name="checkpoint"):
    """Return ``path`` as a str if it can hold a checkpoint; raise naming ``name``.

    The path may exist (a checkpoint to resume from) but must not be a folder; its
    folder must exist or be creatable, and be writable (:func:`.output.check_out_dir`).

    Raises
    ------
    TypeError
        ``path`` is not a str or ``os.PathLike``.
    ValueError
        ``path`` is empty, a folder, or lies under a file.
    PermissionError
        Its folder cannot be written.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    if path == "":
        raise ValueError(f"`{name}` is empty; give a file path")
    if os.path.isdir(path):
        raise ValueError(f"`{name}` {path!r} is a folder; give a file path")
    folder = probe = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"`{name}` {path!r} lies under the file {probe!r}, not in a folder")
    output.check_out_dir(folder, name)  # writable
    return path


# ============================================================ the configuration
def fingerprint(obj):
    """SHA-256 (hex) of ``obj``: arrays (dtype, shape, bytes), numbers, strings, None,
    module-level functions (by module and name), and tuples (named tuples with their
    field names), lists, dicts and dataclasses of these, recursively. Equal inputs give
    equal digests in every process.

    Raises
    ------
    TypeError
        ``obj`` holds something else (named in the message).
    """
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest, x):
    """Add ``x`` to ``digest`` (see :func:`fingerprint`), each item tagged by its kind."""

    def put(tag, text=""):
        digest.update(f"{tag}:{len(text)}:{text};".encode())

    if x is None or isinstance(x, (bool, np.bool_)):
        put("b", repr(None if x is None else bool(x)))
    elif isinstance(x, (int, np.integer)):
        put("i", str(int(x)))
    elif isinstance(x, (float, np.floating)):
        put(f"f{np.dtype(type(x)).str}", float(x).hex())
    elif isinstance(x, str):
        put("s", x)
    elif isinstance(x, np.dtype):
        put("y", x.str)
    elif isinstance(x, np.ndarray):
        if x.dtype.hasobject:
            raise TypeError("`checkpoint`: cannot fingerprint an array of Python objects")
        put("a", f"{x.dtype.str}{x.shape}")
        digest.update(np.ascontiguousarray(x).tobytes())
    elif isinstance(x, (tuple, list)):
        put("t" if isinstance(x, tuple) else "l", type(x).__qualname__)
        if hasattr(x, "_fields"):
            put("n", ",".join(x._fields))
        for item in x:
            _feed(digest, item)
        put("end")
    elif isinstance(x, dict):
        put("d", str(len(x)))
        for k in sorted(x, key=repr):
            _feed(digest, k)
            _feed(digest, x[k])
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        put("c", type(x).__qualname__)
        for f in dataclasses.fields(x):
            put("k", f.name)
            _feed(digest, getattr(x, f.name))
    elif isinstance(x, types.FunctionType):
        # a module-level function is its name (as the chunk function in run_config); a
        # closure or a nested function would hide state the name does not tell
        if x.__closure__ or "<locals>" in x.__qualname__:
            raise TypeError(
                f"`checkpoint`: cannot fingerprint the nested function {x.__qualname__}"
            )
        put("fn", f"{x.__module__}.{x.__qualname__}")
    else:
        raise TypeError(f"`checkpoint`: cannot fingerprint a shared input of type {type(x)!r}")


def describe_mismatch(found, expected):
    """The entries in which two configurations differ, as text (empty when they agree);
    nested dicts are compared entry by entry (``params.sha256``)."""
    a, b = _flat(found), _flat(expected)
    diffs = [
        f"{k}: {_short(a.get(k, '(missing)'))} in the file, {_short(b.get(k, '(missing)'))} now"
        for k in sorted(set(a) | set(b))
        if a.get(k, "(missing)") != b.get(k, "(missing)")
    ]
    return "; ".join(diffs)


def _flat(d, prefix=""):
    """A nested dict as one dict keyed by dotted paths."""
    out = {}
    for k, val in d.items():
        if isinstance(val, dict) and val:
            out.update(_flat(val, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = val
    return out


def _short(x, width=60):
    text = json.dumps(x) if not isinstance(x, str) else x
    return text if len(text) <= width else text[: width - 3] + "..."


def normalize(config):
    """``config`` as it reads back from the file's JSON (for comparisons)."""
    return json.loads(json.dumps(jsonable(config), allow_nan=False))


# =================================================================== statistics
def encode(x, arrays):
    """``x`` as a JSON-ready tree; its arrays are appended to ``arrays`` and referred
    to by index. Python floats are kept exactly (``float.hex``), numpy scalars and
    arrays bit for bit.

    Raises
    ------
    TypeError
        ``x`` holds a value of another kind (named in the message).
    """
    if isinstance(x, (np.ndarray, np.generic)):  # first: np.float64 is a float
        a = np.asarray(x)
        if a.dtype.hasobject or a.dtype.kind == "V":
            raise TypeError(f"`checkpoint`: cannot save an array of dtype {a.dtype}")
        arrays.append(a)
        return {"a" if isinstance(x, np.ndarray) else "s": len(arrays) - 1}
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return {"f": x.hex()}
    if isinstance(x, list):
        return [encode(v, arrays) for v in x]
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return {"t": [encode(v, arrays) for v in x]}
    if isinstance(x, dict) and all(isinstance(k, str) for k in x):
        return {"d": {k: encode(v, arrays) for k, v in x.items()}}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        cls = type(x)
        fields = {f.name: encode(getattr(x, f.name), arrays) for f in dataclasses.fields(x)}
        return {"c": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    raise TypeError(f"`checkpoint`: cannot save a statistic holding a {type(x).__name__}")


def decode(tree, arrays):
    """Rebuild what :func:`encode` wrote; ``arrays(i)`` returns array ``i``.

    Dataclasses are looked up among the modules already imported (nothing is
    imported on behalf of the file).

    Raises
    ------
    ValueError
        The tree is malformed or names a class that is not loaded.
    """
    if tree is None or isinstance(tree, (bool, int, str)):
        return tree
    if isinstance(tree, list):
        return [decode(v, arrays) for v in tree]
    if not isinstance(tree, dict) or len(tree) not in (1, 2):
        raise ValueError(f"unexpected entry {_short(tree)}")
    if "f" in tree:
        return float.fromhex(tree["f"])
    if "a" in tree:
        return arrays(tree["a"])
    if "s" in tree:
        return arrays(tree["s"])[()]
    if "t" in tree:
        return tuple(decode(v, arrays) for v in tree["t"])
    if "d" in tree:
        return {k: decode(v, arrays) for k, v in tree["d"].items()}
    if "c" in tree:
        cls = _loaded_class(tree["c"])
        fields = {k: decode(v, arrays) for k, v in tree["fields"].items()}
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        if set(fields) != names:
            raise ValueError(
                f"the statistic {tree['c']} has fields {sorted(fields)} in the file and "
                f"{sorted(names)} in this version"
            )
        return cls(**fields)
    raise ValueError(f"unexpected entry {_short(tree)}")


def _loaded_class(name):
    """The dataclass ``module:qualname``, from a module already imported."""
    module, _, qualname = name.partition(":")
    obj = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ValueError(f"its statistic is a {name}, which is not a loaded dataclass")
    return obj


# ========================================================================= files
def write(path, config, next_chunk, n_chunks, n_done, stats):
    """Write a checkpoint atomically (see the module docstring).

    Parameters
    ----------
    path : str
        The file (checked with :func:`check_path`).
    config : dict
        JSON-ready configuration of the run.
    next_chunk, n_chunks, n_done : int
        Chunks merged, chunks of the run, trajectories merged.
    stats : statistic
        Merge of chunks ``0 … next_chunk − 1``.

    Raises
    ------
    TypeError
        ``stats`` cannot be saved (see :func:`encode`).
    OSError
        The file could not be written (the previous one is left as it was).
    """
    from .. import __version__

    arrays = []
    header = {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "next_chunk": int(next_chunk),
        "n_chunks": int(n_chunks),
        "n_done": int(n_done),
        "stats": encode(stats, arrays),
        "tfkernels": __version__,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    members = {f"a{i}": a for i, a in enumerate(arrays)}
    members["header"] = np.array(json.dumps(header, allow_nan=False))
    with output.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **members)
        fh.flush()
        os.fsync(fh.fileno())


def read_header(path, name="checkpoint"):
    """The header of the checkpoint at ``path`` (a dict), or None if there is none.

    Raises
    ------
    ValueError
        ``path`` exists but is not a checkpoint of this format and version (named
        ``name`` in the message).
    """
    return _read(path, name, with_stats=False)[0]


def read(path, name="checkpoint"):
    """``(header, stats)`` of the checkpoint at ``path``, or ``(None, None)``.

    Raises
    ------
    ValueError
        ``path`` exists but is not a readable checkpoint of this format and version.
    """
    return _read(path, name, with_stats=True)


#: What reading a file that is not a checkpoint (or is damaged) raises.
_UNREADABLE = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    zipfile.BadZipFile,
)


def _read(path, name, with_stats):
    if not os.path.exists(path):
        return None, None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"][()]))
            if header.get("format") != FORMAT or header.get("version") != VERSION:
                raise ValueError(
                    f"format {header.get('format')!r} version {header.get('version')!r}, "
                    f"not {FORMAT!r} version {VERSION}"
                )
            stats = decode(header["stats"], lambda i: z[f"a{int(i)}"]) if with_stats else None
    except _UNREADABLE as err:
        raise ValueError(
            f"`{name}` {path!r} is not a readable tfkernels checkpoint: {err}"
        ) from None
    return header, stats


def check_config(header, config, path, name="checkpoint", keys=None):
    """Refuse a checkpoint written by a run of another configuration.

    Parameters
    ----------
    header : dict or None
        :func:`read_header` of the file (None: no file, nothing to check).
    config : dict
        The configuration of this run (normalized with :func:`normalize`).
    path : str
        The file, for the message.
    name : str
        The argument named in the message.
    keys : iterable of str, optional
        Compare only these keys (all keys of both when None).

    Raises
    ------
    ValueError
        The configurations differ; the message names ``name`` and lists the keys.
    """
    if header is None:
        return
    found = header.get("config", {})
    if keys is not None:
        keys = set(keys)
        found = {k: v for k, v in found.items() if k in keys}
        config = {k: v for k, v in config.items() if k in keys}
    diff = describe_mismatch(found, config)
    if diff:
        raise ValueError(
            f"`{name}` {path!r} was written by a run with another configuration ({diff}); "
            "resume with the same arguments, or give a new path"
        )
