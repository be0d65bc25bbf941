"""tfkernels: transformer layers as a continuous dynamical system, on fused Numba kernels.

A stack of N residual layers ``X ← X + Δt·f(X)`` is forward Euler on ``dX/dt = f(X)``;
tfkernels runs that flow (and its Runge–Kutta and averaged variants) for very many
trajectories at once and measures what the theory predicts.
"""

from importlib import metadata as _metadata

from .api import integrate, random_states, vector_field
from .methods import ACTIVATIONS, METHODS
from .params import TransformerParams
from .studies.decay import DecayResult, perturbation_decay

try:
    # The one version source is pyproject.toml, read back from the installed metadata.
    __version__ = _metadata.version("tfkernels")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ACTIVATIONS",
    "DecayResult",
    "METHODS",
    "TransformerParams",
    "integrate",
    "perturbation_decay",
    "random_states",
    "vector_field",
    "__version__",
]
