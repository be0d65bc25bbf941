"""Option types of the grid commands (``geometry``, ``sweep``): lists of values.

Imports only :mod:`tfkernels._validate` through :mod:`.common`, so that ``--help`` stays
fast.
"""

import argparse

from .. import _validate as v
from . import common

#: Most values one range ``A:B:N`` may have.
MAX_VALUES = 10_000


def parse_values(text):
    """The values ``text`` writes: ``A:B:N`` (N evenly spaced values from A to B, both
    included), or a comma list ``x1,x2,...`` (one value included).

    Raises
    ------
    ValueError
        Not numbers, N not an integer in ``[1, MAX_VALUES]``, or a value not finite.
    """
    text = text.strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"a range is A:B:N, got {text!r}")
        try:
            a, b = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"a range is A:B:N with numbers A and B, got {text!r}") from None
        n = common.parse_integer(parts[2])
        if not 1 <= n <= MAX_VALUES:
            raise ValueError(f"N of A:B:N must lie in [1, {MAX_VALUES}], got {n}")
        if n == 1:
            vals = [a]
        else:
            vals = [a + (b - a) * k / (n - 1) for k in range(n)]
            vals[-1] = b
    else:
        words = [w for w in text.split(",") if w.strip()]
        if not words:
            raise ValueError(f"needs a value, a comma list or A:B:N, got {text!r}")
        try:
            vals = [float(w) for w in words]
        except ValueError:
            raise ValueError(f"not a list of numbers: {text!r}") from None
    return tuple(vals)


def values(flag, minimum=None, strict=False):
    """argparse type of a flag holding one value, a comma list or ``A:B:N``, each value
    finite and ``>= minimum`` (``> minimum`` if strict)."""

    def convert(text):
        vals = common._checked(flag, lambda: parse_values(text))
        for x in vals:
            common._checked(
                flag, lambda x=x: v.check_float(flag, x, minimum=minimum, strict=strict)
            )
        return vals

    convert.flag = flag
    return convert


def setting(flag):
    """argparse type of ``NAME=VALUES`` (VALUES as for :func:`values`): a pair
    ``(name, values)``; the name is checked by the sweep."""

    def convert(text):
        name, sep, rest = text.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(
                f"must be NAME=VALUES (e.g. beta=0.5:4:8), got {text!r}"
            )
        return name.strip(), common._checked(flag, lambda: parse_values(rest))

    convert.flag = flag
    return convert
