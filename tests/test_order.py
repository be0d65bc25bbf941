"""Measured convergence orders of the compiled integrators match theory.

The global error ``E(N) = max_n ‖X(t_n) − X_n‖`` over all layers is fitted against
``Δt`` on a log-log scale, for the linear system (exact solution by ``expm``) and for a
small nonlinear transformer (``solve_ivp`` DOP853 at rtol = atol = 1e-12).
"""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import tfkernels as tfk
from tfkernels import reference

ORDERS = {"euler": 1, "heun": 2, "rk4": 4}
# N ranges where the error is far above float64 rounding (checked below) and in the
# asymptotic regime; RK4 is fitted on coarser grids for that reason.
LAYERS = {"euler": [16, 32, 64, 128, 256], "heun": [8, 16, 32, 64, 128], "rk4": [4, 8, 16, 32]}
BAND = {"euler": 0.15, "heun": 0.15, "rk4": 0.3}


def fitted_order(errors, layers):
    slope = np.polyfit(np.log(1.0 / np.asarray(layers)), np.log(errors), 1)[0]
    return slope


def global_errors(p, x0, method, exact):
    errs = []
    for N in LAYERS[method]:
        X = tfk.integrate(p, x0, N, method=method, save_every=1)
        t = np.arange(N + 1) / N
        errs.append(max(np.linalg.norm(X[:, n] - exact(t[n])) for n in range(N + 1)))
    assert min(errs) > 1e-11, "errors too close to rounding for a clean fit"
    return errs


@pytest.mark.parametrize("method", ORDERS)
def test_linear_system_order_against_expm(method):
    rng = np.random.default_rng(0)
    d = 6
    A = rng.standard_normal((d, d)) / np.sqrt(d)
    p = tfk.TransformerParams.linear(A, damping=0.3)
    x0 = tfk.random_states(3, 2, d, seed=1)
    errs = global_errors(p, x0, method, lambda t: reference.linear_exact(A, 0.3, x0, t))
    assert abs(fitted_order(errs, LAYERS[method]) - ORDERS[method]) < BAND[method]


@pytest.mark.parametrize("method", ORDERS)
def test_transformer_order_against_solve_ivp(method):
    p = tfk.TransformerParams.random(
        d=4, n_heads=2, d_ff=8, damping=0.5, causal=True, activation="gelu_tanh", seed=4
    )
    x0 = tfk.random_states(1, 3, 4, seed=2)
    shape = x0.shape[1:]
    fun = lambda t, y: reference.vector_field(p, y.reshape(shape)).ravel()
    grid = np.arange(257) / 256  # contains every t_n of every N used
    sol = solve_ivp(
        fun, (0, 1), x0[0].ravel(), method="DOP853", rtol=1e-12, atol=1e-12, t_eval=grid
    )
    exact = lambda t: sol.y[:, int(round(t * 256))].reshape(shape)
    errs = global_errors(p, x0, method, exact)
    assert abs(fitted_order(errs, LAYERS[method]) - ORDERS[method]) < BAND[method]
