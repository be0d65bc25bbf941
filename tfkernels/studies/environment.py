"""What a study's result records about the run: versions, machine, and the model it ran.

Every study puts :func:`environment` into its result's ``meta`` and
:func:`params_summary` into its ``config``, so a result file says what produced it.
"""

import hashlib
import os
import platform

import numpy as np

from ..ensemble import is_ensemble

#: The weight arrays of ``TransformerParams`` that :func:`params_summary` hashes.
_WEIGHTS = ("wq", "wk", "wv", "wo", "w1", "b1", "w2", "b2", "linear")


def environment():
    """Versions and machine description for a result's metadata.

    Returns
    -------
    dict
        ``versions`` (tfkernels, python, numpy, numba, scipy) and ``machine``
        (platform, machine, processor, cpu_count, and ``numba_threads``: the Numba
        thread count in effect when this is called).
    """
    import numba
    import scipy

    from .. import __version__

    return {
        "versions": {
            "tfkernels": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "scipy": scipy.__version__,
        },
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or cpu_model(),
            "cpu_count": os.cpu_count(),
            "numba_threads": numba.get_num_threads(),
        },
    }


def cpu_model():
    """The CPU's model name from ``/proc/cpuinfo``, or ``""`` where there is none."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def params_summary(params):
    """JSON-ready description of ``params`` with a SHA-256 hash of its weights.

    Parameters
    ----------
    params : TransformerParams

    Returns
    -------
    dict
        Shape and settings (``d, n_heads, d_ff, terms, activation, beta, causal,
        damping, n_sets, dtype``) and ``sha256`` over the weight arrays present.
    """
    if is_ensemble(params):
        return params.summary()
    digest = hashlib.sha256()
    for k in _WEIGHTS:
        w = getattr(params, k)
        if w is not None:
            digest.update(k.encode() + np.ascontiguousarray(w).tobytes())
    terms = [
        t
        for t, on in (
            ("attention", params.attention),
            ("ffn", params.ffn),
            ("linear", params.linear is not None),
        )
        if on
    ]
    return {
        "d": params.d,
        "n_heads": params.n_heads,
        "d_ff": params.d_ff,
        "terms": terms,
        "activation": params.activation,
        "beta": params.beta,
        "causal": params.causal,
        "damping": params.damping,
        "n_sets": params.n_sets,
        "dtype": params.dtype.name,
        "sha256": digest.hexdigest(),
    }
