"""Integration methods and the name registries that the public API validates against.

A method is an explicit Runge–Kutta tableau, checked when it is built. ``api.prepare_run``
turns the tableau into arrays ``a``, ``b`` and the per-layer step sizes ``h`` (in the
state's dtype), and those arrays are what the kernels receive: they run one generic
explicit RK step driven by them, so adding a method adds no code to the compiled kernels
and no new specialization. The integer codes of :data:`METHODS` never reach the kernels;
those of :data:`ACTIVATIONS` do (packed with the weights' integer settings), and so do
those of :data:`MODES` (the decay study passes one to its kernel).
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
        Classical order of the method (documentation; nothing checks or reads it).

    Raises
    ------
    ValueError
        If ``a`` is not ``s×s`` for ``s = len(b)``, is not strictly lower triangular,
        or ``b`` does not sum to 1 (within 1e-15).

    Notes
    -----
    ``c_i = Σ_j a_ij`` (the stage times as fractions of Δt) is derived, not stored,
    so the consistency condition holds by construction. The kernels do not use ``c``:
    a layer's weights are constant over its step, so ``f`` does not depend on the
    stage time.
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
        """``(a, b, c)`` as float64 arrays; ``api.prepare_run`` casts ``a`` and ``b`` to
        the state's dtype for the kernels and drops ``c``."""
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

#: Update rules by name. Only the names are used (validation, the CLI's choices); the
#: codes are read nowhere. "averaged" is ``X + α_n·c·f(X) (+ η_n)``: Euler's tableau
#: with the step size ``α_n·c`` instead of Δt (see :func:`tableau`).
METHODS = {"euler": 0, "heun": 1, "rk4": 2, "averaged": 3}

#: Activation σ of the feed-forward block; the code is what the kernels branch on.
ACTIVATIONS = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "tanh": 3, "identity": 4}

#: Normalizations of a block (``TransformerParams.norm``; None is "none"): the code is
#: what the kernels branch on.
NORMS = {"none": 0, "layernorm": 1, "rmsnorm": 2, "sphere": 3}

#: Where the normalization sits (``TransformerParams.norm_position``).
NORM_POSITIONS = {"pre": 0, "post": 1, "tangent": 2}

#: How a block composes its attention and feed-forward sub-layers
#: (``TransformerParams.block``).
BLOCKS = {"parallel": 0, "sequential": 1, "strang": 2}

#: Perturbation-study modes; the code is passed to the decay kernel, which defines
#: the same values as ``MODE_PAIR`` and ``MODE_TANGENT``.
MODES = {"pair": 0, "tangent": 1}


def sub_steps(params):
    """One layer of ``params``' block as sub-steps ``(subs, fraction of Δt, norm after
    it)``, ``subs`` a tuple of "attn", "ffn" and the norm "attn", "ffn" or None.

    ``parallel``: one step of ``F_a + F_f`` (then ``N_a``, or ``N_f`` when attention is
    off, with a post norm); ``sequential``: attention, then FFN; ``strang``: ½ FFN,
    attention, ½ FFN (``TransformerParams``). A sub-layer whose field is zero has no
    sub-step and no norm. The rule the compiled kernels and the benchmark's peers run
    (``tfkernels.reference`` writes its own, from the maths).

    Parameters
    ----------
    params : TransformerParams

    Returns
    -------
    list of (tuple of str, float, str or None)
    """
    has = {
        "attn": bool(params.attention),
        "ffn": bool(params.ffn or params.linear is not None or params.damping != 0),
    }
    post = params.norm is not None and params.norm_position == "post"

    def post_of(sub):
        return sub if post else None

    if params.block == "parallel":
        subs = tuple(k for k in ("attn", "ffn") if has[k])
        return [(subs, 1.0, post_of("attn" if has["attn"] else "ffn"))]
    a = [(("attn",), 1.0, post_of("attn"))] if has["attn"] else []
    if params.block == "sequential":
        return a + ([(("ffn",), 1.0, post_of("ffn"))] if has["ffn"] else [])
    f = [(("ffn",), 0.5, post_of("ffn"))] if has["ffn"] else []
    return f + a + f


def tableau(method):
    """Return the Butcher tableau that advances ``method`` one layer (Euler's for
    ``"averaged"``, whose difference lies in the step sizes only)."""
    return TABLEAUS["euler" if method == "averaged" else method]
