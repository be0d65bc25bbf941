"""Integration methods and activations as data, mapped to integer codes for the kernels.

A method is an explicit Runge–Kutta tableau, checked when it is built; the kernels run
one generic explicit RK step driven by the tableau, so adding a method adds no code to
the compiled kernels and no new specialization.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta tableau ``(a, b, c)`` with its order of accuracy.

    Parameters
    ----------
    a : array_like, shape (s, s)
        Strictly lower-triangular stage coefficients.
    b : array_like, shape (s,)
        Weights of the stages in the update; must sum to 1.
    order : int
        Classical order of the method.

    Notes
    -----
    ``c_i = Σ_j a_ij`` (the stage times as fractions of Δt) is derived, not stored,
    so the consistency condition holds by construction.
    """

    a: tuple
    b: tuple
    order: int

    def __post_init__(self):
        a = np.asarray(self.a, dtype=np.float64)
        b = np.asarray(self.b, dtype=np.float64)
        s = b.shape[0]
        if a.shape != (s, s):
            raise ValueError(f"tableau `a` must be {s}x{s}, got {a.shape}")
        if np.any(np.triu(a) != 0):
            raise ValueError("tableau `a` must be strictly lower triangular (explicit)")
        if abs(b.sum() - 1.0) > 1e-15:
            raise ValueError(f"tableau weights `b` must sum to 1, got {b.sum()}")

    @property
    def arrays(self):
        """``(a, b, c)`` as float64 arrays for the kernels."""
        a = np.asarray(self.a, dtype=np.float64)
        return a, np.asarray(self.b, dtype=np.float64), a.sum(axis=1)


TABLEAUS = {
    "euler": ButcherTableau(a=((0.0,),), b=(1.0,), order=1),
    "heun": ButcherTableau(a=((0.0, 0.0), (1.0, 0.0)), b=(0.5, 0.5), order=2),
    "rk4": ButcherTableau(
        a=(
            (0.0, 0.0, 0.0, 0.0),
            (0.5, 0.0, 0.0, 0.0),
            (0.0, 0.5, 0.0, 0.0),
            (0.0, 0.0, 1.0, 0.0),
        ),
        b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
        order=4,
    ),
}

#: Update rules; "averaged" is ``X + α_n·c·f(X) (+ η_n)``, a one-stage rule whose
#: step size is ``α_n·c`` instead of Δt.
METHODS = {"euler": 0, "heun": 1, "rk4": 2, "averaged": 3}

#: Activation σ of the feed-forward block.
ACTIVATIONS = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "tanh": 3, "identity": 4}

#: Perturbation-study modes.
MODES = {"pair": 0, "tangent": 1}


def tableau(method):
    """Return the Butcher tableau that advances ``method`` one layer."""
    return TABLEAUS["euler" if method == "averaged" else method]
