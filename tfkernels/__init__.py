"""tfkernels: transformer layers as a continuous dynamical system, on fused Numba kernels.

A stack of N residual layers ``X ← X + Δt·f(X)`` is forward Euler on ``dX/dt = f(X)``;
tfkernels runs that flow (and its Runge–Kutta and averaged variants) for very many
trajectories at once and measures what the theory predicts.

The public names below are imported on first use (PEP 562), so that importing a
subpackage on its own (``tfkernels.cli`` for ``tfkernels --help``) does not load Numba
and the kernels.
"""

import importlib
from importlib import metadata as _metadata

try:
    # The one version source is pyproject.toml, read back from the installed metadata.
    __version__ = _metadata.version("tfkernels")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

#: public name -> the module that defines it
_PUBLIC = {
    "ACTIVATIONS": ".methods",
    "DecayResult": ".studies.decay",
    "GeometryResult": ".studies.geometry",
    "LyapunovResult": ".studies.lyapunov",
    "METHODS": ".methods",
    "StudyInterrupted": ".studies.runner",
    "SweepResult": ".studies.sweep",
    "TransformerParams": ".params",
    "WeightEnsemble": ".ensemble",
    "integrate": ".api",
    "lyapunov_spectrum": ".studies.lyapunov",
    "perturbation_decay": ".studies.decay",
    "random_states": ".api",
    "sweep": ".studies.sweep",
    "token_geometry": ".studies.geometry",
    "vector_field": ".api",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    """Import a public name (or a subpackage, ``tfkernels.kernels`` …) on first use."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
