"""Tests of the plain-NumPy reference (the oracle) against independent truth.

Independent truth here means: closed forms (known activation values, the matrix
exponential, matrix powers of the linearised step), a differently written formulation
(einsum over heads with ``scipy.special.softmax``), central finite differences, and
``scipy.integrate.solve_ivp`` at tight tolerances.
"""

import math

import numpy as np
import pytest
import scipy.special
from scipy.integrate import solve_ivp

from tfkernels import reference as ref
from tfkernels.methods import TABLEAUS
from tfkernels.params import TransformerParams

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "tanh", "identity")
METHOD_ORDERS = {"euler": 1, "heun": 2, "rk4": 4}


def _rng(seed):
    """A fresh NumPy generator with a fixed seed."""
    return np.random.default_rng(seed)


def _unit(U):
    """Normalise each trajectory of U (T, d) or (B, T, d) to unit Frobenius norm."""
    if U.ndim == 2:
        return U / np.linalg.norm(U)
    return U / np.linalg.norm(U, axis=(1, 2), keepdims=True)


def _nonlinear(seed=1, **kw):
    """A small transformer: T=3, d=4, 2 heads, FFN, damping."""
    opts = dict(d=4, n_heads=2, damping=0.5, seed=seed)
    opts.update(kw)
    return TransformerParams.random(**opts)


# --------------------------------------------------------------------- activations
@pytest.mark.parametrize(
    "name, z, expected",
    [
        ("gelu", 1.0, 0.8413447460685429),
        ("gelu", -1.0, -0.15865525393145707),
        ("gelu", 0.0, 0.0),
        ("gelu_tanh", 1.0, 0.8411919906082768),
        ("gelu_tanh", -1.0, -0.1588080093917233),
        ("relu", -2.0, 0.0),
        ("relu", 1.5, 1.5),
        ("tanh", 0.5, 0.46211715726000974),
        ("identity", -3.25, -3.25),
    ],
)
def test_activation_known_values(name, z, expected):
    assert ref.activation(np.array([z]), name)[0] == pytest.approx(expected, rel=1e-15, abs=1e-300)


def test_gelu_tanh_close_to_gelu():
    z = np.linspace(-4, 4, 81)
    assert np.max(np.abs(ref.activation(z, "gelu") - ref.activation(z, "gelu_tanh"))) < 1e-3


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_derivative_matches_finite_differences(name):
    z = _rng(3).standard_normal(50) * 2.0
    z = z[np.abs(z) > 1e-3]  # keep away from the relu kink
    h = 1e-6
    fd = (ref.activation(z + h, name) - ref.activation(z - h, name)) / (2 * h)
    np.testing.assert_allclose(ref.activation_derivative(z, name), fd, rtol=1e-7, atol=1e-9)


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match="activation"):
        ref.activation(np.ones(3), "swish")
    with pytest.raises(ValueError, match="activation"):
        ref.activation_derivative(np.ones(3), "swish")


# ------------------------------------------------------------------------- softmax
def test_softmax_rows_sum_to_one_and_match_scipy():
    S = _rng(4).standard_normal((5, 7)) * 10.0
    P = ref.softmax_rows(S)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert np.all(P >= 0)
    np.testing.assert_allclose(P, scipy.special.softmax(S, axis=1), rtol=1e-14, atol=1e-300)


def test_softmax_rows_is_stable():
    S = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1001.0, -999.0]])
    P = ref.softmax_rows(S)
    assert np.all(np.isfinite(P))
    np.testing.assert_allclose(P[0], scipy.special.softmax([0.0, 1.0, -1.0]), rtol=1e-14)
    np.testing.assert_allclose(P[1], scipy.special.softmax([0.0, -1.0, 1.0]), rtol=1e-14)


def test_softmax_rows_masked_entries_are_zero():
    S = np.array([[0.5, -np.inf, -np.inf], [0.1, 0.2, -np.inf]])
    P = ref.softmax_rows(S)
    assert P[0, 0] == 1.0 and P[0, 1] == 0.0 and P[1, 2] == 0.0
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-15)


# ----------------------------------------------------------------------- attention
def _attention_einsum(X, wq, wk, wv, wo, H, beta, causal):
    """Vectorised multi-head attention, written independently of the reference."""
    T, d = X.shape
    dh = d // H
    Q = (X @ wq).reshape(T, H, dh)
    K = (X @ wk).reshape(T, H, dh)
    V = (X @ wv).reshape(T, H, dh)
    S = np.einsum("ihk,jhk->hij", Q, K) * (beta / math.sqrt(dh))
    if causal:
        S = S + np.where(np.tril(np.ones((T, T))) == 1, 0.0, -np.inf)[None]
    P = scipy.special.softmax(S, axis=-1)
    O = np.einsum("hij,jhk->ihk", P, V).reshape(T, d)
    return O @ wo


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("H, beta", [(1, 1.0), (2, 0.7), (4, 2.5)])
def test_attention_matches_einsum(causal, H, beta):
    rng = _rng(5)
    T, d = 6, 8
    X = rng.standard_normal((T, d))
    w = [rng.standard_normal((d, d)) / math.sqrt(d) for _ in range(4)]
    got = ref.attention(X, *w, n_heads=H, beta=beta, causal=causal)
    np.testing.assert_allclose(
        got, _attention_einsum(X, *w, H, beta, causal), rtol=1e-12, atol=1e-13
    )


def test_causal_vector_field_ignores_future_tokens():
    rng = _rng(6)
    p = TransformerParams.random(d=4, n_heads=2, damping=0.3, linear=True, causal=True, seed=2)
    T = 5
    X = rng.standard_normal((T, 4))
    F = ref.vector_field(p, X)
    for i in range(T - 1):
        Y = X.copy()
        Y[i + 1 :] = rng.standard_normal((T - i - 1, 4)) * 3.0
        G = ref.vector_field(p, Y)
        np.testing.assert_array_equal(G[: i + 1], F[: i + 1])
        assert not np.allclose(G[i + 1 :], F[i + 1 :])
    # Without the mask, the first token does see the others.
    p_full = p.replace(causal=False)
    Y = X.copy()
    Y[-1] += 1.0
    assert not np.allclose(ref.vector_field(p_full, Y)[0], ref.vector_field(p_full, X)[0])


def test_ffn_matches_formula_and_is_tokenwise():
    rng = _rng(7)
    T, d, m = 4, 3, 5
    X = rng.standard_normal((T, d))
    w1, b1 = rng.standard_normal((d, m)), rng.standard_normal(m)
    w2, b2 = rng.standard_normal((m, d)), rng.standard_normal(d)
    got = ref.ffn(X, w1, b1, w2, b2, activation="gelu")
    for i in range(T):
        z = X[i] @ w1 + b1
        hidden = np.array([0.5 * zk * (1 + math.erf(zk / math.sqrt(2))) for zk in z])
        np.testing.assert_allclose(got[i], hidden @ w2 + b2, rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------------- the field f
def test_vector_field_linear_system():
    rng = _rng(8)
    A = rng.standard_normal((4, 4))
    X = rng.standard_normal((3, 4))
    p = TransformerParams.linear(A, damping=0.75)
    np.testing.assert_allclose(ref.vector_field(p, X), X @ A - 0.75 * X, rtol=1e-14, atol=1e-14)


def test_vector_field_sums_terms_and_batches():
    rng = _rng(9)
    p = TransformerParams.random(d=4, n_heads=2, damping=0.4, linear=True, beta=1.3, seed=3)
    X = rng.standard_normal((3, 3, 4))
    F = ref.vector_field(p, X)
    assert F.shape == X.shape and F.dtype == np.float64
    for b in range(3):
        x = X[b]
        expected = (
            _attention_einsum(x, p.wq, p.wk, p.wv, p.wo, 2, 1.3, False)
            + ref.ffn(x, p.w1, p.b1, p.w2, p.b2, "gelu")
            - 0.4 * x
            + x @ p.linear
        )
        np.testing.assert_allclose(F[b], expected, rtol=1e-12, atol=1e-13)
        np.testing.assert_array_equal(F[b], ref.vector_field(p, x))


def test_vector_field_float32_params_computed_in_float64():
    p64 = _nonlinear(seed=4)
    p32 = p64.astype(np.float32)
    X = _rng(10).standard_normal((3, 4)).astype(np.float32)
    F = ref.vector_field(p32, X)
    assert F.dtype == np.float64
    expected = ref.vector_field(
        p64.replace(
            **{
                k: getattr(p32, k).astype(np.float64)
                for k in ("wq", "wk", "wv", "wo", "w1", "b1", "w2", "b2")
            }
        ),
        X.astype(np.float64),
    )
    np.testing.assert_array_equal(F, expected)


def test_per_layer_weights_use_set_n():
    p = _nonlinear(seed=5, linear=True, n_layers=3)
    X = _rng(11).standard_normal((2, 3, 4))
    for n in range(3):
        np.testing.assert_array_equal(
            ref.vector_field(p, X, layer=n), ref.vector_field(p.layer(n), X)
        )
    assert not np.allclose(ref.vector_field(p, X, 0), ref.vector_field(p, X, 1))
    with pytest.raises(ValueError, match="layer"):
        ref.vector_field(p, X, layer=3)


def test_layer_weights_duck_typing():
    class Bare:  # only the linear term and nothing else
        linear = np.eye(2)

    X = np.array([[1.0, 2.0]])
    np.testing.assert_array_equal(ref.vector_field(Bare(), X), X)


# ------------------------------------------------------------------- JVP, Jacobian
@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_jvp_matches_central_differences(act, causal, per_layer):
    rng = _rng(12)
    p = TransformerParams.random(
        d=4,
        n_heads=2,
        damping=0.3,
        linear=True,
        beta=1.5,
        activation=act,
        causal=causal,
        seed=6,
        n_layers=3 if per_layer else None,
    )
    layer = 2 if per_layer else 0
    X = rng.standard_normal((2, 4, 4))
    V = rng.standard_normal((2, 4, 4))
    h = 1e-6
    fd = (ref.vector_field(p, X + h * V, layer) - ref.vector_field(p, X - h * V, layer)) / (2 * h)
    got = ref.jvp(p, X, V, layer)
    scale = np.max(np.abs(fd))
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-6 * scale)
    # Linear in V.
    np.testing.assert_allclose(
        ref.jvp(p, X, 2.0 * V - V[::-1], layer),
        2.0 * got - ref.jvp(p, X, V[::-1], layer),
        rtol=1e-12,
        atol=1e-12,
    )


def test_jacobian_is_jvp_matrix():
    rng = _rng(13)
    p = _nonlinear(seed=7, causal=True)
    X = rng.standard_normal((3, 4))
    V = rng.standard_normal((3, 4))
    J = ref.jacobian(p, X)
    assert J.shape == (12, 12)
    np.testing.assert_allclose(J @ V.ravel(), ref.jvp(p, X, V).ravel(), rtol=1e-12, atol=1e-13)
    # Row-major vec: ∂f[i, j]/∂X[k, l] by central differences.
    h = 1e-6
    i, j, k, l = 2, 1, 0, 3
    E = np.zeros_like(X)
    E[k, l] = h
    fd = (ref.vector_field(p, X + E)[i, j] - ref.vector_field(p, X - E)[i, j]) / (2 * h)
    assert J[i * 4 + j, k * 4 + l] == pytest.approx(fd, rel=1e-6, abs=1e-8)
    assert np.all(J[0 * 4 : 1 * 4, 1 * 4 :] == 0)  # causal: token 0 ignores tokens 1, 2


def test_jacobian_and_log_norm_of_linear_system():
    rng = _rng(14)
    A = rng.standard_normal((3, 3))
    p = TransformerParams.linear(A, damping=0.6)
    X = rng.standard_normal((2, 3))
    M = A - 0.6 * np.eye(3)
    J = ref.jacobian(p, X)
    np.testing.assert_allclose(J, np.kron(np.eye(2), M.T), rtol=1e-14, atol=1e-15)
    expected = np.max(np.linalg.eigvalsh(0.5 * (M + M.T)))
    assert ref.log_norm(J) == pytest.approx(expected, rel=1e-13)
    Js = ref.jacobian(p, np.stack([X, 2 * X]))
    np.testing.assert_allclose(ref.log_norm(Js), [expected, expected], rtol=1e-13)


def test_log_norm_known_value():
    J = np.array([[-1.0, 4.0], [0.0, -1.0]])  # symmetric part eigenvalues -1 ± 2
    assert ref.log_norm(J) == pytest.approx(1.0, rel=1e-14)


# ------------------------------------------------------------------------ stepping
def _rk_by_tableau(p, X, dt, method, layer=0):
    """One explicit RK step driven by the package's Butcher tableau."""
    a, b, _ = TABLEAUS[method].arrays
    ks = []
    for i in range(len(b)):
        Y = X + dt * sum(a[i, j] * ks[j] for j in range(i))
        ks.append(ref.vector_field(p, Y, layer))
    return X + dt * sum(bi * k for bi, k in zip(b, ks))


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_step_matches_butcher_tableau(method):
    p = _nonlinear(seed=8, n_layers=2)
    X = _rng(15).standard_normal((2, 3, 4))
    np.testing.assert_allclose(
        ref.step(p, X, 0.1, method, layer=1),
        _rk_by_tableau(p, X, 0.1, method, layer=1),
        rtol=1e-14,
        atol=1e-15,
    )


def test_averaged_default_equals_euler_exactly():
    p = _nonlinear(seed=9)
    x0 = _rng(16).standard_normal((3, 3, 4))
    e = ref.integrate(p, x0, 7, method="euler", t_final=1.3, save_every=1)
    a = ref.integrate(p, x0, 7, method="averaged", t_final=1.3, save_every=1, alpha=None, c=1.0)
    np.testing.assert_array_equal(a, e)


def test_averaged_update_formula():
    p = _nonlinear(seed=10)
    x0 = _rng(17).standard_normal((3, 4))
    # (1 − α) X + α (X + c f(X)) with the accelerated α_n = 2/(n+2), written out.
    X = x0.copy()
    for n in range(5):
        al = 2.0 / (n + 2)
        X = (1 - al) * X + al * (X + 0.5 * ref.vector_field(p, X))
    got = ref.integrate(p, x0, 5, method="averaged", alpha="accelerated", c=0.5)
    np.testing.assert_allclose(got, X, rtol=1e-13, atol=1e-14)


def test_alpha_schedule():
    np.testing.assert_array_equal(ref.alpha_schedule(None, 4, 0.25), [0.25] * 4)
    np.testing.assert_array_equal(ref.alpha_schedule(0.3, 3, 0.1), [0.3] * 3)
    np.testing.assert_allclose(ref.alpha_schedule("accelerated", 4, 0.1), [1, 2 / 3, 1 / 2, 2 / 5])
    np.testing.assert_array_equal(ref.alpha_schedule([0.1, 0.2], 2, 0.5), [0.1, 0.2])
    assert ref.alpha_schedule(None, 3, 0.1).dtype == np.float64
    with pytest.raises(ValueError):
        ref.alpha_schedule([0.1, 0.2], 3, 0.5)
    with pytest.raises(ValueError):
        ref.alpha_schedule("nesterov", 3, 0.5)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "averaged"])
def test_noise_added_after_each_layer(method):
    rng = _rng(18)
    p = _nonlinear(seed=11, n_layers=4)
    x0 = rng.standard_normal((2, 3, 4))
    eta = 0.1 * rng.standard_normal((2, 4, 3, 4))
    X = x0.copy()
    for n in range(4):
        X = (
            ref.step(p, X, 0.25, method, layer=n, alpha=0.3 if method == "averaged" else None)
            + eta[:, n]
        )
    got = ref.integrate(p, x0, 4, method, alpha=0.3, eta=eta)
    np.testing.assert_array_equal(got, X)
    single = ref.integrate(p, x0[1], 4, method, alpha=0.3, eta=eta[1])
    np.testing.assert_array_equal(single, X[1])
    with pytest.raises(ValueError, match="eta"):
        ref.integrate(p, x0, 4, method, eta=eta[0])


def test_noise_on_linear_system_matches_recurrence():
    rng = _rng(19)
    A = rng.standard_normal((3, 3))
    p = TransformerParams.linear(A, damping=0.2)
    N, dt = 6, 1.0 / 6
    M = np.eye(3) + dt * (A - 0.2 * np.eye(3))
    x0 = rng.standard_normal((2, 3))
    eta = rng.standard_normal((N, 2, 3))
    X = x0
    for n in range(N):
        X = X @ M + eta[n]
    np.testing.assert_allclose(ref.integrate(p, x0, N, "euler", eta=eta), X, rtol=1e-13, atol=1e-13)


def test_integrate_shapes_and_save_every():
    p = _nonlinear(seed=12)
    rng = _rng(20)
    x0 = rng.standard_normal((2, 3, 4))
    full = ref.integrate(p, x0, 6, "heun", save_every=1)
    assert full.shape == (2, 7, 3, 4)
    np.testing.assert_array_equal(full[:, 0], x0)
    np.testing.assert_array_equal(full[:, -1], ref.integrate(p, x0, 6, "heun"))
    every3 = ref.integrate(p, x0, 6, "heun", save_every=3)
    assert every3.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(every3, full[:, ::3])
    every4 = ref.integrate(p, x0, 6, "heun", save_every=4)  # 6 // 4 + 1 = 2 states
    np.testing.assert_array_equal(every4, full[:, [0, 4]])
    single = ref.integrate(p, x0[0], 6, "heun", save_every=2)
    assert single.shape == (4, 3, 4)
    np.testing.assert_array_equal(single, full[0, ::2])
    assert ref.integrate(p, x0[0], 6, "heun").shape == (3, 4)


def test_integrate_rejects_bad_input():
    p = _nonlinear(seed=13)
    with pytest.raises(ValueError, match="method"):
        ref.integrate(p, np.zeros((3, 4)), 2, method="leapfrog")
    with pytest.raises(ValueError, match="x0"):
        ref.integrate(p, np.zeros(4), 2)
    with pytest.raises(ValueError, match="n_layers"):
        ref.integrate(p, np.zeros((3, 4)), 0)
    with pytest.raises(ValueError, match="save_every"):
        ref.integrate(p, np.zeros((3, 4)), 2, save_every=0)


def test_linear_exact_shapes_and_derivative():
    rng = _rng(21)
    A = rng.standard_normal((3, 3))
    x0 = rng.standard_normal((2, 4, 3))
    np.testing.assert_allclose(ref.linear_exact(A, 0.5, x0, 0.0), x0, rtol=0, atol=0)
    t = np.array([0.0, 0.5, 1.0])
    Xs = ref.linear_exact(A, 0.5, x0, t)
    assert Xs.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(Xs[:, 1], ref.linear_exact(A, 0.5, x0, 0.5), rtol=1e-14)
    assert ref.linear_exact(A, 0.5, x0[0], t).shape == (3, 4, 3)
    h = 1e-5
    dX = (ref.linear_exact(A, 0.5, x0, 0.5 + h) - ref.linear_exact(A, 0.5, x0, 0.5 - h)) / (2 * h)
    X = Xs[:, 1]
    np.testing.assert_allclose(dX, X @ A - 0.5 * X, rtol=1e-8, atol=1e-9)


# -------------------------------------------------------------- convergence orders
_LEVELS = {"euler": range(4, 10), "heun": range(3, 8), "rk4": range(2, 6)}
_SLOP = {"euler": 0.15, "heun": 0.15, "rk4": 0.3}


def _fitted_order(params, x0, method, truth_at):
    """Slope of log E(N) against log Δt, E(N) = max_n ‖X(t_n) − X_n‖, N = 2^k."""
    errs, dts = [], []
    for k in _LEVELS[method]:
        N = 2**k
        Xs = ref.integrate(params, x0, N, method=method, save_every=1)
        err = np.max(np.linalg.norm(Xs - truth_at(N), axis=(-2, -1)))
        assert err > 1e-10  # well above rounding, so the slope measures truncation
        errs.append(err)
        dts.append(1.0 / N)
    return np.polyfit(np.log(dts), np.log(errs), 1)[0]


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_convergence_order_linear_system(method):
    rng = _rng(22)
    A = rng.standard_normal((4, 4)) / 2.0
    p = TransformerParams.linear(A, damping=0.5)
    x0 = rng.standard_normal((3, 4))

    def truth_at(N):
        return ref.linear_exact(A, 0.5, x0, np.linspace(0.0, 1.0, N + 1))

    order = _fitted_order(p, x0, method, truth_at)
    assert abs(order - METHOD_ORDERS[method]) < _SLOP[method], order


@pytest.fixture(scope="module")
def nonlinear_truth():
    """The small transformer and its DOP853 solution on the grid of the finest N."""
    p = _nonlinear(seed=1)
    x0 = _rng(23).standard_normal((3, 4))
    n_max = 2 ** max(max(r) for r in _LEVELS.values())
    sol = solve_ivp(
        lambda t, y: ref.vector_field(p, y.reshape(3, 4)).ravel(),
        (0.0, 1.0),
        x0.ravel(),
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
        t_eval=np.linspace(0.0, 1.0, n_max + 1),
    )
    assert sol.success
    return p, x0, n_max, sol.y.T.reshape(n_max + 1, 3, 4)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_convergence_order_nonlinear_transformer(method, nonlinear_truth):
    p, x0, n_max, grid = nonlinear_truth

    def truth_at(N):
        return grid[:: n_max // N]

    order = _fitted_order(p, x0, method, truth_at)
    assert abs(order - METHOD_ORDERS[method]) < _SLOP[method], order


# ------------------------------------------------------------- perturbation decay
def _linear_step_matrix(L, dt, method, alpha=None, c=1.0):
    """Matrix M of one step on the linear system ``dX/dt = X L``: X_{n+1} = X_n M."""
    I = np.eye(L.shape[0])
    hL = dt * L
    if method == "euler":
        return I + hL
    if method == "heun":
        return I + hL + hL @ hL / 2
    if method == "rk4":
        return I + hL + hL @ hL / 2 + hL @ hL @ hL / 6 + hL @ hL @ hL @ hL / 24
    return I + (dt if alpha is None else alpha) * c * L


@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "averaged"])
def test_ratios_linear_system_equal_matrix_powers(method):
    rng = _rng(24)
    A = rng.standard_normal((3, 3))
    gamma, N, t_final = 1.5, 8, 2.0
    p = TransformerParams.linear(A, damping=gamma)
    x0 = rng.standard_normal((4, 2, 3))
    u = _unit(rng.standard_normal((4, 2, 3)))
    M = _linear_step_matrix(A - gamma * np.eye(3), t_final / N, method, alpha=0.2, c=0.7)
    expected = np.array(
        [
            [np.linalg.norm(u[b] @ np.linalg.matrix_power(M, n)) for n in range(N + 1)]
            for b in range(4)
        ]
    )
    kw = dict(method=method, t_final=t_final, alpha=0.2, c=0.7)
    pair = ref.perturbation_ratios(p, x0, u, 1e-3, N, **kw)
    tangent = ref.tangent_ratios(p, x0, u, N, **kw)
    assert pair.shape == tangent.shape == (4, N + 1)
    assert np.all(pair[:, 0] == 1.0)
    np.testing.assert_allclose(tangent, expected, rtol=1e-13)
    np.testing.assert_allclose(pair, expected, rtol=1e-9)  # cancellation in X − Y
    # Same noise on both: the difference of a linear system does not see it.
    eta = rng.standard_normal((4, N, 2, 3))
    np.testing.assert_allclose(
        ref.perturbation_ratios(p, x0, u, 1e-3, N, eta=eta, **kw), expected, rtol=1e-8
    )
    # Single trajectory.
    np.testing.assert_allclose(ref.tangent_ratios(p, x0[2], u[2], N, **kw), expected[2], rtol=1e-13)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "averaged"])
def test_pair_mode_matches_tangent_mode_nonlinear(method):
    rng = _rng(25)
    N = 6
    p = _nonlinear(seed=14, linear=True, n_layers=N, beta=1.2)
    x0 = rng.standard_normal((3, 3, 4))
    u = _unit(rng.standard_normal((3, 3, 4)))
    eta = 0.05 * rng.standard_normal((3, N, 3, 4))
    alpha = "accelerated" if method == "averaged" else None
    pair = ref.perturbation_ratios(p, x0, u, 1e-7, N, method=method, alpha=alpha, c=0.5, eta=eta)
    tangent = ref.tangent_ratios(p, x0, u, N, method=method, alpha=alpha, c=0.5, eta=eta)
    np.testing.assert_allclose(pair, tangent, rtol=1e-5)
    assert not np.allclose(tangent[:, -1], 1.0)


@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "averaged"])
def test_step_jvp_matches_finite_differences(method):
    rng = _rng(26)
    p = _nonlinear(seed=15, activation="tanh", causal=True)
    X = rng.standard_normal((2, 3, 4))
    V = rng.standard_normal((2, 3, 4))
    h = 1e-6
    fd = (
        ref.step(p, X + h * V, 0.3, method, alpha=0.4)
        - ref.step(p, X - h * V, 0.3, method, alpha=0.4)
    ) / (2 * h)
    Xn, Vn = ref.step_jvp(p, X, V, 0.3, method, alpha=0.4)
    np.testing.assert_array_equal(Xn, ref.step(p, X, 0.3, method, alpha=0.4))
    np.testing.assert_allclose(Vn, fd, rtol=1e-6, atol=1e-8)
