"""What both importers share: the optional-dependency import and the stacking of the
per-layer weights."""

import importlib

import numpy as np


def require(module, what):
    """Import an optional dependency, or raise ImportError naming the extra.

    Parameters
    ----------
    module : str
        The module to import (``"torch"``, ``"safetensors"``).
    what : str
        The importer that needs it, for the message.

    Returns
    -------
    module

    Raises
    ------
    ImportError
        The module is not installed; the message says ``pip install "tfkernels[models]"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f'{what} needs the optional dependency `{module}`: pip install "tfkernels[models]"'
        ) from err


def stack_layers(per_layer, dtype):
    """Stack the layers' weights into per-layer arrays of ``dtype``.

    Parameters
    ----------
    per_layer : list of dict
        One dict per layer, the same keys in each; a value is an ndarray or None
        (None in every layer, or in none).
    dtype : numpy dtype

    Returns
    -------
    dict
        The key's ``(L, ...)`` array, for the keys whose values are not None.
    """
    out = {}
    for k in per_layer[0]:
        vals = [layer[k] for layer in per_layer]
        if all(a is None for a in vals):
            continue
        out[k] = np.stack([np.asarray(a, dtype=np.float64) for a in vals]).astype(dtype)
    return out
