"""JSON conversion shared by the studies' result files."""

import math

import numpy as np


def jsonable(x):
    """``x`` with numpy values converted for JSON, recursively (non-finite floats → None).

    Dicts, lists and tuples are walked (tuples become lists), arrays become nested
    lists, numpy integers, floats and bools become Python ones.
    """
    if isinstance(x, dict):
        return {k: jsonable(val) for k, val in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(val) for val in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def float_or_nan(x):
    """A float read back from JSON: ``None`` (how :func:`jsonable` wrote NaN/inf) → NaN."""
    return math.nan if x is None else float(x)


def _is_real(x):
    """A JSON number or null (NaN); not a bool."""
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


#: What each kind of entry of a result file must be, and how to say it.
_KINDS = {
    "real": (_is_real, "a number or null"),
    "int": (_is_int, "an integer"),
    "bool": (lambda x: isinstance(x, bool), "true or false"),
    "bool_or_null": (lambda x: x is None or isinstance(x, bool), "true, false or null"),
    "str": (lambda x: isinstance(x, str), "a string"),
    "dict": (lambda x: isinstance(x, dict), "an object"),
    "pair": (
        lambda x: isinstance(x, list) and len(x) == 2 and all(map(_is_real, x)),
        "a list of two numbers",
    ),
    "ints": (lambda x: isinstance(x, list) and all(map(_is_int, x)), "a list of integers"),
    "columns": (
        lambda x: (
            isinstance(x, dict)
            and all(isinstance(c, list) and all(map(_is_real, c)) for c in x.values())
            and len({len(c) for c in x.values()}) <= 1
        ),
        "an object of equally long lists of numbers",
    ),
}


def read_json_entries(path, kinds, what):
    """Read a result file's JSON object and check its entries; return it as a dict.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    kinds : dict
        Entry name -> kind (``"real"``, ``"int"``, ``"bool"``, ``"str"``, ``"dict"``,
        ``"pair"``, ``"ints"``, ``"columns"``); every name must be present. Other
        entries are left alone.
    what : str
        What the file should be, for the messages ("a DecayResult file written by
        DecayResult.to_json()").

    Raises
    ------
    TypeError
        ``path`` is not a path.
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not JSON, not an object, or an entry is missing or not of its
        kind; the message names ``path``, the file and the entry.
    """
    import json
    import os

    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"`path` must be a path, got {type(path).__name__}")
    name = os.fsdecode(path)
    if "\0" in name:
        raise ValueError(f"`path` {name!r} contains a null character")

    def bad(why):
        return ValueError(f"`path` {name!r} is not {what}: {why}")

    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(f"not JSON ({err})") from None
    if not isinstance(doc, dict):
        raise bad(f"a JSON {type(doc).__name__}, not an object")
    for key, kind in kinds.items():
        if key not in doc:
            raise bad(f"entry `{key}` is missing")
        ok, expected = _KINDS[kind]
        if not ok(doc[key]):
            raise bad(f"entry `{key}` must be {expected}, got {doc[key]!r:.60}")
    return doc
