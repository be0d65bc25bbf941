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
