"""The token norms of a block and the sphere's tangent projection, for both layouts.

Each function takes a state ``X (T, d·L)`` with ``L`` lanes (L = 1 in the row layout;
element ``(t, j)`` of lane l at ``X[t, j·L + l]``) and works on every token of every
lane. The per-token sums run over ``j`` in order, accumulated in float64 in
``red (≥ 2, L)``, with strict IEEE arithmetic (``jit.sjit``: no reassociation, no
contraction), so that a lane of a group gets the bits of the same trajectory in the
row layout: the lane loop is the innermost, independent across lanes, and vectorizes
without changing any sum's order.

* :func:`norm_tokens` — ``out = N(X)`` per token: ``layernorm``
  ``(x − μ)/sqrt(σ² + eps)·gain + bias``, ``rmsnorm`` ``x/sqrt(mean(x²) + eps)·gain``,
  ``sphere`` ``x/‖x‖`` (codes of ``methods.NORMS``); ``out`` may be ``X``;
* :func:`tangent_project` — ``F ← F − (⟨x, f⟩/‖x‖²)·x`` per token, the projection on
  the sphere's tangent space at each token of ``X``.

The values are computed in float64 and rounded once to the state dtype.
"""

import numpy as np

from ..methods import NORMS
from .jit import sjit as _sjit

LAYERNORM, RMSNORM, SPHERE = NORMS["layernorm"], NORMS["rmsnorm"], NORMS["sphere"]


@_sjit
def norm_tokens(X, L, kind, gain, bias, eps, out, red):
    """``out = N(X)`` for every token of every lane of ``X (T, d·L)``.

    Parameters
    ----------
    X, out : ndarray (T, d·L)
        State and result (may be the same array).
    L : int
        Lanes (1: row layout).
    kind : int
        ``methods.NORMS`` code: layernorm, rmsnorm or sphere.
    gain, bias : ndarray (d,)
        The norm's gain (layernorm, rmsnorm) and bias (layernorm); unused by sphere.
    eps : float
        Added to the variance (layernorm) or the mean square (rmsnorm).
    red : ndarray (≥ 2, ≥ L), float64
        Scratch: the per-lane sums.
    """
    T = X.shape[0]
    d = X.shape[1] // L
    dt = out.dtype.type
    inv_d = 1.0 / d
    e = np.float64(eps)
    for t in range(T):
        for l in range(L):
            red[0, l] = 0.0
            red[1, l] = 0.0
        if kind == LAYERNORM:
            for j in range(d):
                for l in range(L):
                    red[0, l] += np.float64(X[t, j * L + l])
            for l in range(L):
                red[0, l] = red[0, l] * inv_d
            for j in range(d):
                for l in range(L):
                    c = np.float64(X[t, j * L + l]) - red[0, l]
                    red[1, l] += c * c
            for l in range(L):
                red[1, l] = 1.0 / np.sqrt(red[1, l] * inv_d + e)
            for j in range(d):
                g, b = np.float64(gain[j]), np.float64(bias[j])
                for l in range(L):
                    c = np.float64(X[t, j * L + l]) - red[0, l]
                    out[t, j * L + l] = dt((c * red[1, l]) * g + b)
        else:
            for j in range(d):
                for l in range(L):
                    x = np.float64(X[t, j * L + l])
                    red[1, l] += x * x
            if kind == RMSNORM:
                for l in range(L):
                    red[1, l] = 1.0 / np.sqrt(red[1, l] * inv_d + e)
                for j in range(d):
                    g = np.float64(gain[j])
                    for l in range(L):
                        out[t, j * L + l] = dt((np.float64(X[t, j * L + l]) * red[1, l]) * g)
            else:
                for l in range(L):
                    red[1, l] = 1.0 / np.sqrt(red[1, l])
                for j in range(d):
                    for l in range(L):
                        out[t, j * L + l] = dt(np.float64(X[t, j * L + l]) * red[1, l])


@_sjit
def tangent_project(X, L, F, red):
    """``F ← F − (⟨x, f⟩/‖x‖²)·x`` for every token x of ``X (T, d·L)`` and its row f of
    ``F``, per lane; ``red (≥ 2, ≥ L)`` float64 scratch."""
    T = X.shape[0]
    d = X.shape[1] // L
    dt = F.dtype.type
    for t in range(T):
        for l in range(L):
            red[0, l] = 0.0
            red[1, l] = 0.0
        for j in range(d):
            for l in range(L):
                x = np.float64(X[t, j * L + l])
                red[0, l] += x * np.float64(F[t, j * L + l])
                red[1, l] += x * x
        for l in range(L):
            red[0, l] = red[0, l] / red[1, l]
        for j in range(d):
            for l in range(L):
                x = np.float64(X[t, j * L + l])
                F[t, j * L + l] = dt(np.float64(F[t, j * L + l]) - red[0, l] * x)
