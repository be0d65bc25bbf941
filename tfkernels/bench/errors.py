"""The error section: global error E(N) at t = 1 of every method, and its fitted order.

Two systems: the linear one against its exact solution (``expm``) and a small
transformer against a tight DOP853 reference solution.
"""

import numpy as np

from .scaling import fit_exponent

#: Expected order of convergence of each method (averaged with α = Δt, c = 1 is Euler).
EXPECTED_ORDER = {"euler": 1, "heun": 2, "rk4": 4, "averaged": 1}

#: Errors below these are rounding / reference noise and are left out of order fits.
ERROR_FLOOR = {"linear": 1e-12, "transformer": 1e-10}


def stable_matrix(d, seed, margin=0.5):
    """A random ``d×d`` matrix shifted so that ``λ_max((A+Aᵀ)/2) = -margin``."""
    A = np.random.default_rng(seed).standard_normal((d, d)) / np.sqrt(d)
    lam = np.linalg.eigvalsh((A + A.T) / 2).max()
    return A - (lam + margin) * np.eye(d)


def fitted_order(layers, errors, floor):
    """``-slope`` of log E against log N over the errors above ``floor``."""
    keep = [(n, e) for n, e in zip(layers, errors) if e > floor and np.isfinite(e)]
    if len(keep) < 2:
        return None
    slope = fit_exponent(*zip(*keep))
    return None if slope is None else -slope


def method_kwargs(method):
    """Keyword arguments of :func:`tfkernels.integrate` for an error study method."""
    return (
        {"method": method, "alpha": None, "c": 1.0} if method == "averaged" else {"method": method}
    )


def global_errors(params, x0, exact, layers, method):
    """``E(N) = max_b ‖X_N − X(1)‖_F / ‖X(1)‖_F`` for each N."""
    import tfkernels as tfk

    errs = []
    for N in layers:
        X = tfk.integrate(params, x0, N, **method_kwargs(method))
        num = np.linalg.norm((X - exact).reshape(len(x0), -1), axis=1)
        errs.append(float(np.max(num / np.linalg.norm(exact.reshape(len(x0), -1), axis=1))))
    return errs


def linear_problem(d=6, seed=3):
    """The linear system of the error study and its exact solution at t = 1 (expm)."""
    import scipy.linalg

    import tfkernels as tfk

    A = stable_matrix(d, seed)
    params = tfk.TransformerParams.linear(A)
    x0 = tfk.random_states(4, 2, d, seed=seed)
    return params, x0, x0 @ scipy.linalg.expm(A), "expm"


def transformer_problem(d=8, heads=2, T=4, seed=5):
    """A small transformer and its DOP853 reference solution (rtol 1e-12) at t = 1."""
    from scipy.integrate import solve_ivp

    import tfkernels as tfk

    params = tfk.TransformerParams.random(d, heads, damping=1.0, seed=seed)
    x0 = tfk.random_states(2, T, d, seed=seed)

    def fun(t, y):
        return tfk.vector_field(params, y.reshape(1, T, d)).ravel()

    exact = np.stack(
        [
            solve_ivp(fun, (0.0, 1.0), x.ravel(), method="DOP853", rtol=1e-12, atol=1e-14)
            .y[:, -1]
            .reshape(T, d)
            for x in x0
        ]
    )
    return params, x0, exact, "solve_ivp DOP853 rtol=1e-12 atol=1e-14"


def error_section(settings, bar):
    """Global error E(N) and fitted order of each method, linear and transformer."""
    es = settings.errors
    out = {}
    for system, make, key in (
        ("linear", linear_problem, "linear_layers"),
        ("transformer", transformer_problem, "transformer_layers"),
    ):
        bar.set_postfix_str(f"errors {system}")
        params, x0, exact, how = make()
        layers = list(es[key])
        entry = {
            "reference": how,
            "layers": layers,
            "d": params.d,
            "T": x0.shape[1],
            "B": x0.shape[0],
            "floor": ERROR_FLOOR[system],
            "methods": {},
        }
        for m in es["methods"]:
            errs = global_errors(params, x0, exact, layers, m)
            entry["methods"][m] = {
                "errors": errs,
                "expected_order": EXPECTED_ORDER[m],
                "order": fitted_order(layers, errs, ERROR_FLOOR[system]),
            }
            bar.update()
        out[system] = entry
    return out
