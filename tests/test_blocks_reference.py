"""Tests of the reference's real transformer blocks against independent truth.

Attention biases, layernorm / rmsnorm / sphere norms pre / post / tangent, parallel /
sequential / Strang blocks and the final norm (``tfkernels.reference``). The truth: direct
formulas written here (einsum over heads, ``np.var``, ``np.linalg.norm``), central finite
differences, ``scipy.integrate.solve_ivp`` at tight tolerances, the paper's arithmetic for
the old models (bit for bit), and the closed-form equiangular ODE of the sphere model.
"""

import itertools
import math

import numpy as np
import pytest
import scipy.special
from scipy.integrate import solve_ivp

from tfkernels import reference as ref
from tfkernels.params import TransformerParams

#: Every valid (norm, norm_position): no norm, the two learned norms and the sphere pre
#: and post, and the sphere's tangent projection.
NORM_CASES = [(None, "pre")] + [
    (n, pos) for n in ("layernorm", "rmsnorm", "sphere") for pos in ("pre", "post")
]
NORM_CASES.append(("sphere", "tangent"))
BLOCKS = ("parallel", "sequential", "strang")
METHODS = ("euler", "heun", "rk4", "averaged")


def _rng(seed):
    """A fresh NumPy generator with a fixed seed."""
    return np.random.default_rng(seed)


def _block(norm=None, norm_position="pre", block="parallel", seed=1, **kw):
    """A small block model: d=4, 2 heads, d_ff 6, damping 0.3, attention biases."""
    opts = dict(
        d=4,
        n_heads=2,
        d_ff=6,
        damping=0.3,
        bias=True,
        norm=norm,
        norm_position=norm_position,
        block=block,
        seed=seed,
    )
    opts.update(kw)
    return TransformerParams.random(**opts)


def _state(shape, seed=0, sphere=False):
    """A random state; with ``sphere`` each token on the unit sphere."""
    X = _rng(seed).standard_normal(shape)
    return X / np.linalg.norm(X, axis=-1, keepdims=True) if sphere else X


def _fd(fun, X, V, h=1e-5):
    """Central finite difference of ``fun`` at ``X`` along ``V`` (error O(h²))."""
    return (fun(X + h * V) - fun(X - h * V)) / (2.0 * h)


def _assert_fd(exact, approx, what):
    """The JVP agrees with the finite difference to 1e-7 relative to its size.

    The central difference with h = 1e-5 has a truncation error ~h²·|f'''| ≈ 1e-10 and
    a rounding error ~1e-16/h ≈ 1e-11 on these O(1) maps; 1e-7 leaves room for larger
    third derivatives (norms near a small token, softmax) and still catches any wrong
    term, whose error is O(1).
    """
    scale = max(1.0, float(np.max(np.abs(approx))))
    np.testing.assert_allclose(exact, approx, rtol=0, atol=1e-7 * scale, err_msg=what)


# ---------------------------------------------------------------------- pieces
def test_attention_biases_match_einsum_formulation():
    rng = _rng(5)
    T, d, H = 5, 6, 3
    X = rng.standard_normal((T, d))
    wq, wk, wv, wo = (rng.standard_normal((d, d)) / math.sqrt(d) for _ in range(4))
    bq, bk, bv, bo = (rng.standard_normal(d) for _ in range(4))
    beta, dh = 1.7, d // H
    Q, K, V = ((X @ w + b).reshape(T, H, dh) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
    for causal in (False, True):
        S = beta * np.einsum("ihc,jhc->hij", Q, K) / math.sqrt(dh)
        if causal:
            S = np.where(np.tril(np.ones((T, T), dtype=bool)), S, -np.inf)
        O = np.einsum("hij,jhc->ihc", scipy.special.softmax(S, axis=-1), V).reshape(T, d)
        got = ref.attention(
            X, wq, wk, wv, wo, H, beta=beta, causal=causal, bq=bq, bk=bk, bv=bv, bo=bo
        )
        np.testing.assert_allclose(got, O @ wo + bo, rtol=1e-13, atol=1e-13)


def test_norms_match_direct_formulas():
    rng = _rng(6)
    X = rng.standard_normal((4, 7)) * 3 + 1
    g, b, eps = rng.standard_normal(7), rng.standard_normal(7), 1e-3
    want = (X - X.mean(1, keepdims=True)) / np.sqrt(X.var(1, keepdims=True) + eps) * g + b
    np.testing.assert_allclose(ref.token_norm(X, "layernorm", g, b, eps), want, rtol=1e-13)
    want = X / np.sqrt(np.mean(X**2, axis=1, keepdims=True) + eps) * g
    np.testing.assert_allclose(ref.token_norm(X, "rmsnorm", g, None, eps), want, rtol=1e-13)
    Y = ref.token_norm(X, "sphere")
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(Y * np.linalg.norm(X, axis=1, keepdims=True), X, rtol=1e-14)
    # defaults: gain ones, bias zeros
    np.testing.assert_array_equal(
        ref.token_norm(X, "layernorm", None, None, eps),
        ref.token_norm(X, "layernorm", np.ones(7), np.zeros(7), eps),
    )
    with pytest.raises(ValueError, match="rmsnorm"):
        ref.token_norm(X, "rmsnorm", g, b)
    with pytest.raises(ValueError, match="kind"):
        ref.token_norm(X, "batchnorm")


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "sphere"])
def test_norm_jvp_matches_finite_differences(kind):
    rng = _rng(7)
    X, V = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    g = None if kind == "sphere" else rng.standard_normal(5)
    b = rng.standard_normal(5) if kind == "layernorm" else None
    exact = ref.token_norm_jvp(X, V, kind, g, b, 1e-2)
    _assert_fd(exact, _fd(lambda Y: ref.token_norm(Y, kind, g, b, 1e-2), X, V), kind)


def test_tangent_projection_and_its_jvp():
    rng = _rng(8)
    X, F = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    P = ref.tangent_project(X, F)
    np.testing.assert_allclose(np.sum(P * X, axis=1), 0.0, atol=1e-14)
    np.testing.assert_allclose(ref.tangent_project(X, P), P, atol=1e-14)  # idempotent
    dX, dF = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    exact = ref.tangent_project_jvp(X, dX, F, dF)
    approx = _fd(lambda t: ref.tangent_project(X + t * dX, F + t * dF), 0.0, 1.0)
    _assert_fd(exact, approx, "tangent projection")


# --------------------------------------------------------------------- sub-fields
def test_sub_fields_follow_their_definition():
    X = _state((3, 4), seed=2)
    for norm, pos in NORM_CASES:
        p = _block(norm, pos, linear=True)
        w = p.layer(0)
        Fa, Ff = ref.sub_fields(p, X)
        pre = norm is not None and pos == "pre"
        Na = ref.token_norm(X, norm, p.attn_norm_gain, p.attn_norm_bias, p.norm_eps) if pre else X
        Nf = ref.token_norm(X, norm, p.ffn_norm_gain, p.ffn_norm_bias, p.norm_eps) if pre else X
        g = ref.attention(
            Na, w.wq, w.wk, w.wv, w.wo, 2, beta=p.beta, bq=w.bq, bk=w.bk, bv=w.bv, bo=w.bo
        )
        h = ref.ffn(Nf, w.w1, w.b1, w.w2, w.b2, p.activation) - p.damping * X + X @ w.linear
        if pos == "tangent":
            g, h = (
                F - np.sum(F * X, 1, keepdims=True) * X / np.sum(X * X, 1)[:, None] for F in (g, h)
            )
        np.testing.assert_allclose(Fa, g, rtol=1e-13, atol=1e-14, err_msg=f"{norm} {pos}")
        np.testing.assert_allclose(Ff, h, rtol=1e-13, atol=1e-14, err_msg=f"{norm} {pos}")
        np.testing.assert_allclose(ref.vector_field(p, X), Fa + Ff, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("norm, pos", NORM_CASES)
@pytest.mark.parametrize("per_layer", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_field_jvp_matches_finite_differences(norm, pos, per_layer, causal):
    p = _block(norm, pos, n_layers=2 if per_layer else None, causal=causal, linear=True)
    X = _state((3, 4), seed=3, sphere=pos == "tangent")
    V = _state((3, 4), seed=4)
    layer = 1 if per_layer else 0
    exact = ref.jvp(p, X, V, layer)
    _assert_fd(exact, _fd(lambda Y: ref.vector_field(p, Y, layer), X, V), f"{norm} {pos}")


# -------------------------------------------------------------------------- steps
@pytest.mark.parametrize("norm, pos", NORM_CASES)
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("method", METHODS)
def test_step_jvp_matches_finite_differences(norm, pos, block, method):
    p = _block(norm, pos, block, n_layers=2, causal=block == "strang")
    X = _state((2, 3, 4), seed=5, sphere=pos == "tangent")
    V = _state((2, 3, 4), seed=6)
    kw = dict(dt=0.3, method=method, layer=1, alpha=0.2, c=1.5)
    Xn, Vn = ref.step_jvp(p, X, V, **kw)
    np.testing.assert_array_equal(Xn, ref.step(p, X, **kw))
    _assert_fd(Vn, _fd(lambda Y: ref.step(p, Y, **kw), X, V), f"{norm} {pos} {block}")


@pytest.mark.parametrize("per_layer", [False, True])
def test_shared_norm_parameters_and_biases_per_layer_agree(per_layer):
    """Layer n of per-layer weights is the shared model ``p.layer(n)`` (same bits)."""
    p = _block("layernorm", "post", "strang", n_layers=3 if per_layer else None)
    X = _state((2, 3, 4), seed=7)
    V = _state((2, 3, 4), seed=8)
    for n in range(3):
        q = p.layer(n)
        assert q.n_sets is None and q.is_block
        np.testing.assert_array_equal(ref.step(p, X, 0.2, "heun", n), ref.step(q, X, 0.2, "heun"))
        a, b = ref.step_jvp(p, X, V, 0.2, "rk4", n), ref.step_jvp(q, X, V, 0.2, "rk4")
        np.testing.assert_array_equal(a[1], b[1])


def test_block_structure_written_out():
    """The sub-steps in order, spelled out here with Euler (the fields from sub_fields)."""
    X = _state((3, 4), seed=9)
    h = 0.25
    Fa = lambda p, Y: ref.sub_fields(p, Y)[0]
    Ff = lambda p, Y: ref.sub_fields(p, Y)[1]
    Na = lambda p, Y: ref.token_norm(Y, p.norm, p.attn_norm_gain, p.attn_norm_bias, p.norm_eps)
    Nf = lambda p, Y: ref.token_norm(Y, p.norm, p.ffn_norm_gain, p.ffn_norm_bias, p.norm_eps)
    p = _block("layernorm", "pre", "sequential")
    Y = X + h * Fa(p, X)
    np.testing.assert_allclose(ref.step(p, X, h), Y + h * Ff(p, Y), rtol=1e-14, atol=1e-14)
    p = _block("layernorm", "post", "sequential")
    Y = Na(p, X + h * Fa(p, X))
    want = Nf(p, Y + h * Ff(p, Y))
    np.testing.assert_allclose(ref.step(p, X, h), want, rtol=1e-14, atol=1e-14)
    p = _block("rmsnorm", "post", "strang")
    Y = Nf(p, X + h / 2 * Ff(p, X))
    Y = Na(p, Y + h * Fa(p, Y))
    want = Nf(p, Y + h / 2 * Ff(p, Y))
    np.testing.assert_allclose(ref.step(p, X, h), want, rtol=1e-14, atol=1e-14)
    p = _block("layernorm", "post", "parallel")
    want = Na(p, X + h * (Fa(p, X) + Ff(p, X)))
    np.testing.assert_allclose(ref.step(p, X, h), want, rtol=1e-14, atol=1e-14)
    # attention off: a parallel post block ends with the FFN's norm
    p = _block("layernorm", "post", "parallel", attention=False)
    want = Nf(p, X + h * Ff(p, X))
    np.testing.assert_allclose(ref.step(p, X, h), want, rtol=1e-14, atol=1e-14)


def test_averaged_sub_steps_are_euler_with_alpha_c():
    for block in BLOCKS:
        p = _block("rmsnorm", "post", block)
        X = _state((2, 3, 4), seed=10)
        np.testing.assert_array_equal(
            ref.step(p, X, 0.7, "averaged", alpha=0.2, c=1.5), ref.step(p, X, 0.2 * 1.5)
        )


def test_post_sphere_keeps_tokens_on_the_sphere():
    for block in BLOCKS:
        p = _block("sphere", "post", block, weight_scale=2.0)
        X = ref.integrate(p, _state((2, 3, 4), seed=11, sphere=True), 5, "rk4", save_every=1)
        np.testing.assert_allclose(np.linalg.norm(X, axis=-1), 1.0, rtol=0, atol=4e-16)


def test_tangent_rk4_keeps_the_norm_to_fifth_order():
    """|‖x_i‖ − 1| after one rk4 step of the projected field is O(Δt⁵) (the local error
    of a fourth-order method on a flow that keeps ‖x_i‖ exactly): halving Δt divides it
    by ≈ 32; the fitted slope over Δt = 0.4 … 0.05 is 5.2 here, asserted ≥ 4.7."""
    p = _block("sphere", "tangent", "parallel", ffn=False, bias=False, beta=2.0)
    X = _state((3, 4), seed=12, sphere=True)
    dts = np.array([0.4, 0.2, 0.1, 0.05])
    dev = [np.max(np.abs(np.linalg.norm(ref.step(p, X, dt, "rk4"), axis=1) - 1)) for dt in dts]
    assert min(dev) > 1e-13  # above rounding, so the slope measures the method
    slope = np.polyfit(np.log(dts), np.log(dev), 1)[0]
    assert slope >= 4.7, (dev, slope)


# ---------------------------------------------------- the old model, bit for bit
def _paper_field(p, X):
    """The paper's field ``g + h − γX + XA`` from the pieces, in the old order."""
    F = np.zeros_like(X)
    if p.wq is not None:
        F = F + ref.attention(X, p.wq, p.wk, p.wv, p.wo, p.n_heads, p.beta, p.causal)
    if p.w1 is not None:
        F = F + ref.ffn(X, p.w1, p.b1, p.w2, p.b2, p.activation)
    if p.damping != 0.0:
        F = F - p.damping * X
    if p.linear is not None:
        F = F + X @ p.linear
    return F


def test_old_models_keep_their_bits():
    p = TransformerParams.random(d=4, n_heads=2, damping=0.4, linear=True, seed=13)
    X = _state((3, 4), seed=14)
    f = lambda Y: _paper_field(p, Y)
    np.testing.assert_array_equal(ref.vector_field(p, X), f(X))
    dt = 0.3
    k1 = f(X)
    k2 = f(X + (dt / 2.0) * k1)
    k3 = f(X + (dt / 2.0) * k2)
    k4 = f(X + dt * k3)
    want = X + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    np.testing.assert_array_equal(ref.step(p, X, dt, "rk4"), want)
    np.testing.assert_array_equal(ref.step(p, X, dt, "averaged", alpha=0.2, c=2.0), X + 0.4 * k1)


@pytest.mark.parametrize("method", METHODS)
def test_parallel_block_without_norm_equals_the_old_model(method):
    """Zero attention biases (a block by ``is_block``) and, with attention off, a
    sequential block run the old arithmetic: the same bits."""
    p = TransformerParams.random(d=4, n_heads=2, damping=0.4, linear=True, seed=15, n_layers=3)
    z = np.zeros((3, 4))
    q = p.replace(bq=z, bk=z, bv=z, bo=z)
    assert q.is_block and not p.is_block
    X, U = _state((2, 3, 4), seed=16), _state((2, 3, 4), seed=17)
    kw = dict(method=method, alpha="accelerated" if method == "averaged" else None)
    np.testing.assert_array_equal(ref.integrate(q, X, 3, **kw), ref.integrate(p, X, 3, **kw))
    np.testing.assert_array_equal(
        ref.tangent_ratios(q, X, U, 3, **kw), ref.tangent_ratios(p, X, U, 3, **kw)
    )
    np.testing.assert_array_equal(ref.jvp(q, X, U, 1), ref.jvp(p, X, U, 1))
    f = TransformerParams.random(d=4, n_heads=2, attention=False, damping=0.4, seed=18)
    s = f.replace(block="sequential")
    assert s.is_block
    np.testing.assert_array_equal(ref.integrate(s, X, 3, **kw), ref.integrate(f, X, 3, **kw))


# ------------------------------------------------------------ integrate, noise
def test_final_norm_only_on_the_returned_final_state():
    p = _block("layernorm", "pre", "sequential", final_norm=True)
    p0 = p.replace(final_norm=False, final_norm_gain=None, final_norm_bias=None)
    X = _state((2, 3, 4), seed=19)
    out = ref.integrate(p, X, 4, "heun")
    raw = ref.integrate(p0, X, 4, "heun")
    want = ref.token_norm(raw, "layernorm", p.final_norm_gain, p.final_norm_bias, p.norm_eps)
    np.testing.assert_array_equal(out, want)
    saved = ref.integrate(p, X, 4, "heun", save_every=2)
    np.testing.assert_array_equal(saved, ref.integrate(p0, X, 4, "heun", save_every=2))
    np.testing.assert_array_equal(saved[:, -1], raw)


def test_noise_is_added_after_the_whole_layer():
    p = _block("sphere", "post", "strang")
    X = _state((2, 3, 4), seed=20, sphere=True)
    eta = 0.01 * _rng(21).standard_normal((2, 3, 3, 4))
    Y = X
    for n in range(3):
        Y = ref.step(p, Y, 0.6 / 3, "rk4", n) + eta[:, n]
    np.testing.assert_array_equal(ref.integrate(p, X, 3, "rk4", t_final=0.6, eta=eta), Y)


def test_layer_map_jacobian():
    """Columns are finite differences of the step; for the old model's Euler step it is
    ``I + Δt·J_f``."""
    X = _state((3, 4), seed=22)
    p = _block("layernorm", "post", "sequential")
    J = ref.layer_map_jacobian(p, X, 0.3, "heun")
    for k in (0, 5, 11):
        E = np.zeros(12)
        E[k] = 1.0
        col = _fd(lambda Y: ref.step(p, Y, 0.3, "heun"), X, E.reshape(3, 4)).ravel()
        _assert_fd(J[:, k], col, f"column {k}")
    q = TransformerParams.random(d=4, n_heads=2, damping=0.4, seed=23)
    np.testing.assert_allclose(
        ref.layer_map_jacobian(q, X, 0.3), np.eye(12) + 0.3 * ref.jacobian(q, X), atol=1e-15
    )
    B = ref.layer_map_jacobian(p, np.stack([X, 2 * X]), 0.3, "heun")
    assert B.shape == (2, 12, 12)
    np.testing.assert_array_equal(B[0], J)


# ------------------------------------------------------------- convergence orders
@pytest.fixture(scope="module")
def pre_norm_ode():
    """A pre-LN model, its initial state, and the ODE solution at t = 1 (DOP853, rtol
    1e-12) of the full field ``dX/dt = F_a + F_f``."""
    p = _block("layernorm", "pre", "parallel", d_ff=8, seed=3, damping=0.0)
    X0 = _state((3, 4), seed=0)
    fun = lambda t, y: ref.vector_field(p, y.reshape(3, 4)).ravel()
    sol = solve_ivp(fun, (0.0, 1.0), X0.ravel(), method="DOP853", rtol=1e-12, atol=1e-12)
    assert sol.success
    return p, X0, sol.y[:, -1].reshape(3, 4)


@pytest.mark.parametrize(
    "block, method, order",
    [
        ("sequential", "euler", 1),
        ("sequential", "heun", 1),
        ("sequential", "rk4", 1),
        ("strang", "euler", 1),
        ("strang", "heun", 2),
        ("strang", "rk4", 2),
    ],
)
def test_splitting_orders_against_solve_ivp(pre_norm_ode, block, method, order):
    """Lie–Trotter is order 1 whatever the method, Strang min(2, order of the method):
    the slope of log error against log Δt over N = 16 … 128, within ±0.15 (the errors
    are ≥ 1e-5, far above the ODE solution's 1e-12, and the fitted slopes are within
    0.06 of the order here)."""
    p, X0, exact = pre_norm_ode
    q = p.replace(block=block)
    Ns = np.array([16, 32, 64, 128])
    errs = [np.linalg.norm(ref.integrate(q, X0, int(N), method) - exact) for N in Ns]
    assert min(errs) > 1e-7
    slope = np.polyfit(np.log(1.0 / Ns), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.15, (errs, slope)


# --------------------------------------------------------- the equiangular sphere
def test_sphere_equiangular_ode():
    """n tokens on S^{n−1} with all pairwise inner products ρ, Q = K = V = I, attention
    only, projected on the sphere: every ⟨x_i, x_j⟩ follows

        ρ' = 2(1 − ρ)((n − 1)ρ + 1) / (e^{β(1 − ρ)} + n − 1).

    This is the self-attention dynamics (SA) of Geshkovski, Letrouit, Polyanskiy and
    Rigollet, "A mathematical perspective on transformers", ``ẋ_i = P⊥_{x_i}(Σ_j
    e^{β⟨x_i, x_j⟩} x_j / Z_i)``, with Q = K = V = I: then ``ẋ_i = e^{βρ}/Z Σ_{j≠i}
    (x_j − ρ x_i)``, ``Z = e^β + (n − 1)e^{βρ}``, and ``d⟨x_i, x_k⟩/dt`` is the formula
    (derived here; the symmetry keeps the configuration equiangular). Our score is
    ``β_model·⟨x_i, x_j⟩/√d_h`` with one head, d_h = d = n, so β_model = β·√n gives the
    paper's β; W_o = I changes nothing (the output is the attention average itself).
    """
    n, beta, rho0, t_final = 5, 2.0, 0.3, 2.0
    eye = np.eye(n)
    p = TransformerParams(
        wq=eye,
        wk=eye,
        wv=eye,
        wo=eye,
        n_heads=1,
        beta=beta * math.sqrt(n),
        norm="sphere",
        norm_position="tangent",
    )
    # x_i = a·e_i + b·1: the symmetric square root of the Gram matrix (1 − ρ)I + ρ11ᵀ.
    a = math.sqrt(1.0 - rho0)
    b = (math.sqrt(1.0 + (n - 1) * rho0) - a) / n
    X0 = a * eye + b * np.ones((n, n))
    G0 = X0 @ X0.T
    np.testing.assert_allclose(G0, (1 - rho0) * eye + rho0, atol=1e-15)
    N = 200
    states = ref.integrate(p, X0, N, "rk4", t_final=t_final, save_every=20)
    times = np.linspace(0.0, t_final, N // 20 + 1)
    rhs = lambda t, r: 2 * (1 - r) * ((n - 1) * r + 1) / (np.exp(beta * (1 - r)) + n - 1)
    sol = solve_ivp(rhs, (0.0, t_final), [rho0], t_eval=times, rtol=1e-12, atol=1e-14)
    off = ~np.eye(n, dtype=bool)
    for Xk, rho in zip(states, sol.y[0]):
        G = Xk @ Xk.T
        np.testing.assert_allclose(G[off], rho, rtol=0, atol=1e-8)
        np.testing.assert_allclose(np.diag(G), 1.0, rtol=0, atol=1e-8)
    assert sol.y[0, -1] - rho0 > 0.3  # the tokens do cluster: ρ moves, the test bites


def test_every_valid_combination_runs():
    """Smoke over the whole grid of norm × position × block × method, 2 layers."""
    X = _state((2, 3, 4), seed=24, sphere=True)
    for (norm, pos), block, method in itertools.product(NORM_CASES, BLOCKS, METHODS):
        p = _block(norm, pos, block, n_layers=2, final_norm=norm is not None)
        out = ref.integrate(p, X, 2, method)
        assert out.shape == X.shape and np.all(np.isfinite(out))
