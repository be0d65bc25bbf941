"""Initial states of a study: drawn (``"normal"``, ``"sphere"``) or given by the user.

Every study takes ``x0=``:

* ``"normal"`` (the default): trajectory g starts at the standard normal state of
  ``tfk.random_states(..., seed=seed, start=g)`` (stream ``STREAM_STATE``);
* ``"sphere"``: the same draws with each token (row) divided by its Euclidean norm, so
  the tokens are uniform on the unit sphere ``S^{d−1}``;
* an array ``(n_trajectories, T, d)`` of the parameters' dtype: trajectory g starts at
  ``x0[g]``.

:func:`check_x0` validates the argument before any compiled code runs;
:func:`chunk_states` returns the initial states of one chunk, which depend only on the
trajectory indices (never on the chunk size, the threads or the worker).
"""

import numpy as np

from .. import api

#: The drawn initial states, by name.
KINDS = ("normal", "sphere")


def check_x0(x0, params, n_trajectories, seq_len):
    """Validate a study's ``x0`` argument.

    Parameters
    ----------
    x0 : {"normal", "sphere"} or array_like, shape (n_trajectories, seq_len, d)
        The initial states (see the module docstring).
    params : TransformerParams
        The model: an array must have its dtype and width ``d``.
    n_trajectories, seq_len : int
        The study's (validated) number of trajectories and tokens.

    Returns
    -------
    kind : str
        ``"normal"``, ``"sphere"`` or ``"array"``.
    states : ndarray or None
        The C-contiguous array for ``"array"``, else None.

    Raises
    ------
    TypeError, ValueError
        Naming ``x0``: not one of :data:`KINDS` nor an array; an array of another
        dtype, shape or with NaN/inf.
    """
    if isinstance(x0, str):
        if x0 not in KINDS:
            raise ValueError(f"`x0` must be one of {list(KINDS)} or an array, got {x0!r}")
        return x0, None
    if x0 is None:
        raise TypeError(f"`x0` must be one of {list(KINDS)} or an array, got None")
    states = api.check_states("x0", x0, params)
    want = (n_trajectories, seq_len, params.d)
    if states.shape != want:
        raise ValueError(
            f"`x0` must have shape (n_trajectories, seq_len, d) = {want}, got {states.shape}"
        )
    return "array", states


def chunk_states(kind, states, start, n, seq_len, d, dtype, seed):
    """The initial states of trajectories ``start … start + n − 1``.

    Parameters
    ----------
    kind, states
        From :func:`check_x0`.
    start, n : int
        First global trajectory index and number of trajectories.
    seq_len, d : int
        State shape (T, d).
    dtype : numpy.dtype
        State dtype.
    seed : int
        Seed of the drawn states.

    Returns
    -------
    ndarray, shape (n, seq_len, d)
        C-contiguous; for ``"sphere"`` every token has norm 1 to rounding (each row is
        divided by ``sqrt(sum of squares)`` of that row alone, so a token's bits depend
        only on its own draws).
    """
    if kind == "array":
        return np.ascontiguousarray(states[start : start + n])
    X = api.random_states(n, seq_len, d, seed=seed, start=start, dtype=dtype)
    if kind == "sphere":
        X /= np.sqrt((X * X).sum(axis=-1, keepdims=True))
    return X


def describe(kind, states):
    """The JSON-ready description of ``x0`` recorded in a result's ``config``."""
    if kind != "array":
        return kind
    return {"array": list(states.shape), "dtype": states.dtype.name}
