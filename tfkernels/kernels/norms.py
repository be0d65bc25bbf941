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


@_sjit
def norm_tokens_jvp(X, V, L, kind, gain, eps, out, red):
    """``out = N'(X)·V`` for every token (the bias drops out); ``out`` may be ``V``.

    Per token, with ``r = 1/sqrt(σ² + eps)`` on the centred ``x_c = x − μ`` and
    ``v_c = v − mean(v)`` (layernorm), ``r = 1/sqrt(mean(x²) + eps)`` (rmsnorm) or
    ``r = 1/‖x‖`` (sphere, ``x_c = x``, ``v_c = v``): ``dr = −r³·mean(x_c v_c)``
    (``−r³⟨x, v⟩`` for the sphere) and ``N'(X)·V = (v_c·r + x_c·dr)·gain`` (no gain for
    the sphere). ``red (≥ 4, ≥ L)`` float64 scratch; the arguments as in
    :func:`norm_tokens`.
    """
    T = X.shape[0]
    d = X.shape[1] // L
    dt = out.dtype.type
    inv_d = 1.0 / d
    e = np.float64(eps)
    ln = kind == LAYERNORM
    for t in range(T):
        for q in range(4):
            for l in range(L):
                red[q, l] = 0.0
        if ln:  # the means of x and v
            for j in range(d):
                for l in range(L):
                    red[0, l] += np.float64(X[t, j * L + l])
                    red[1, l] += np.float64(V[t, j * L + l])
            for l in range(L):
                red[0, l] = red[0, l] * inv_d
                red[1, l] = red[1, l] * inv_d
        for j in range(d):  # Σ x_c², Σ x_c v_c
            for l in range(L):
                x = np.float64(X[t, j * L + l]) - red[0, l]
                v = np.float64(V[t, j * L + l]) - red[1, l]
                red[2, l] += x * x
                red[3, l] += x * v
        for l in range(L):
            if kind == SPHERE:
                r = 1.0 / np.sqrt(red[2, l])
                red[3, l] = -(r * r * r) * red[3, l]
            else:
                r = 1.0 / np.sqrt(red[2, l] * inv_d + e)
                red[3, l] = -(r * r * r) * (red[3, l] * inv_d)
            red[2, l] = r
        for j in range(d):
            g = 1.0 if kind == SPHERE else np.float64(gain[j])
            for l in range(L):
                x = np.float64(X[t, j * L + l]) - red[0, l]
                v = np.float64(V[t, j * L + l]) - red[1, l]
                out[t, j * L + l] = dt((v * red[2, l] + x * red[3, l]) * g)


@_sjit
def tangent_project_jvp(X, V, L, F, dF, red):
    """The projection of :func:`tangent_project` and its derivative together: with the
    unprojected field ``F`` and its derivative ``dF`` along ``V`` at ``X``, ``s = ⟨x, f⟩``,
    ``q = ‖x‖²``, ``ds = ⟨v, f⟩ + ⟨x, df⟩``, ``dq = 2⟨x, v⟩`` per token:
    ``dF ← df − (ds/q − s·dq/q²)·x − (s/q)·v``, then ``F ← f − (s/q)·x``, the bits of
    :func:`tangent_project`. ``red (≥ 4, ≥ L)`` float64 scratch."""
    T = X.shape[0]
    d = X.shape[1] // L
    dt = F.dtype.type
    for t in range(T):
        for q in range(4):
            for l in range(L):
                red[q, l] = 0.0
        for j in range(d):
            for l in range(L):
                i = j * L + l
                x, f = np.float64(X[t, i]), np.float64(F[t, i])
                red[0, l] += x * f
                red[1, l] += x * x
                red[2, l] += np.float64(V[t, i]) * f + x * np.float64(dF[t, i])
                red[3, l] += x * np.float64(V[t, i])
        for l in range(L):
            s, q = red[0, l], red[1, l]
            red[2, l] = red[2, l] / q - s * (2.0 * red[3, l]) / (q * q)
            red[0, l] = s / q
        for j in range(d):
            for l in range(L):
                i = j * L + l
                x = np.float64(X[t, i])
                dF[t, i] = dt(
                    np.float64(dF[t, i]) - red[2, l] * x - red[0, l] * np.float64(V[t, i])
                )
                F[t, i] = dt(np.float64(F[t, i]) - red[0, l] * x)
