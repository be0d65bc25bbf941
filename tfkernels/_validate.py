"""Input checks run in Python before any compiled code.

Each check raises ``TypeError`` or ``ValueError`` whose message names the argument,
the offending value and, where there is one, the fix.
"""

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_dtype(name, dtype):
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise TypeError.

    ``None`` is rejected (NumPy would read it as float64).
    """
    if dtype is None:
        raise TypeError(f"`{name}` must be float32 or float64, got None")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError) as err:  # np.dtype("(f4,2)"): SyntaxError
        raise TypeError(f"`{name}` must be float32 or float64, got {dtype!r}") from err
    if dt not in FLOAT_DTYPES:
        raise TypeError(
            f"`{name}` must be float32 or float64, got {dt}. "
            "Convert with `.astype(np.float64)` or `.astype(np.float32)`."
        )
    return dt


def check_array(name, a, *, ndim=None, dtype=None, finite=True, nonempty=True):
    """Check an array argument and return it C-contiguous.

    Parameters
    ----------
    name : str
        Argument name used in error messages.
    a : array_like
        The value to check.
    ndim : int or tuple of int, optional
        Allowed numbers of dimensions.
    dtype : numpy.dtype, optional
        Required dtype. When None the array must be float32 or float64.
    finite : bool
        Reject NaN and inf.
    nonempty : bool
        Reject a zero-size dimension (the caller checks sizes itself when False).
    masked arrays (``numpy.ma``) are always rejected: the kernels would use the
    masked values.
    """
    if np.ma.isMaskedArray(a):
        raise TypeError(
            f"`{name}` is a masked array; masks are not supported. Pass a plain array, "
            "e.g. `a.filled(0.0)` or `np.ma.getdata(a)`."
        )
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must be a float32 or float64 array: {err}") from None
    if a.dtype.kind not in "f":
        raise TypeError(
            f"`{name}` must be a float32 or float64 array, got dtype {a.dtype}. "
            "Convert with `.astype(np.float64)`."
        )
    if dtype is not None and a.dtype != dtype:
        raise TypeError(
            f"`{name}` has dtype {a.dtype} but {dtype} is required here "
            f"(all arrays of one call share a dtype); use `.astype(np.{dtype})`."
        )
    check_dtype(name, a.dtype)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            raise ValueError(
                f"`{name}` must have {' or '.join(map(str, allowed))} dimensions, "
                f"got shape {a.shape}"
            )
    if nonempty and a.size == 0:
        raise ValueError(f"`{name}` must not have a zero-size dimension, got shape {a.shape}")
    if finite and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(
            f"`{name}` contains NaN or inf (first at index {tuple(int(i) for i in bad)})"
        )
    return np.ascontiguousarray(a)


def check_int(name, value, *, minimum=None, maximum=None):
    """Return ``value`` as a Python int if it is an integer in ``[minimum, maximum]``.

    Policy (the same for every integer argument of the package): Python ints and NumPy
    integers are accepted; ``bool``, floats (also integer-valued ones such as ``8.0``
    or ``np.float64(8)``), strings and arrays are rejected with a TypeError naming the
    argument. Out-of-range values raise ValueError naming the argument.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        hint = ""
        if isinstance(value, numbers.Real) and float(value).is_integer():
            hint = f"; pass `{name}={int(value)}` (floats are not accepted as integers)"
        raise TypeError(f"`{name}` must be an integer, got {value!r}{hint}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum}, got {value}")
    return value


#: Largest seed of the counter-based generator (its keys are int64): seeds are
#: integers in ``[0, 2**63 - 1]``.
MAX_SEED = 2**63 - 1


def check_seed(name, value):
    """Return a generator seed as a Python int in ``[0, MAX_SEED]``, else raise."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        if int(value) > MAX_SEED:
            raise ValueError(
                f"`{name}` must be an integer in [0, 2**63 - 1], got {int(value)}; "
                f"reduce it, e.g. `{name} % 2**63`"
            )
    return check_int(name, value, minimum=0, maximum=MAX_SEED)


def check_bool(name, value):
    """Return ``bool(value)`` for a Python bool or NumPy ``bool_``; else raise TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r}")
    return bool(value)


def check_float(name, value, *, minimum=None, strict=False):
    """Return ``float(value)`` if it is a finite real ``>= minimum`` (``>`` if strict)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")
    if minimum is not None:
        if strict and value <= minimum:
            raise ValueError(f"`{name}` must be > {minimum}, got {value}")
        if not strict and value < minimum:
            raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def check_fits(name, value, dtype):
    """Raise ValueError if the finite float ``value`` overflows to inf in ``dtype``."""
    if abs(value) > float(np.finfo(dtype).max):
        raise ValueError(
            f"`{name}`={value} overflows {np.dtype(dtype).name} (max "
            f"{float(np.finfo(dtype).max):.4g}); use a smaller value or float64"
        )
    return value


#: Most bytes NumPy allows in one array (the largest ``np.intp``).
MAX_BYTES = int(np.iinfo(np.intp).max)


def check_size(what, shape, dtype):
    """Raise ValueError if an array of ``shape`` and ``dtype`` would exceed
    :data:`MAX_BYTES`; ``what`` names the arguments that give the shape (e.g.
    ``"`batch` × `seq_len` × `d`"``).

    NumPy refuses such an array with an error that names no argument ("Maximum allowed
    dimension exceeded"); an array that fits the address space but not the memory
    still raises NumPy's ``MemoryError``.
    """
    size = 1
    for n in shape:
        size *= int(n)
    nbytes = size * np.dtype(dtype).itemsize
    if nbytes > MAX_BYTES:
        raise ValueError(
            f"{what} = {' × '.join(map(str, shape))} elements of {np.dtype(dtype).name} "
            f"({nbytes:.3g} bytes) exceed the largest array NumPy can allocate "
            f"({MAX_BYTES:.3g} bytes)"
        )


def check_choice(name, value, choices):
    """Return the integer code of ``value`` in the registry ``choices``."""
    try:
        known = value in choices
    except TypeError:
        known = False
    if not isinstance(value, str) or not known:
        raise ValueError(
            f"unknown `{name}` {value!r}; choose one of {', '.join(map(repr, choices))}"
        )
    return choices[value]
