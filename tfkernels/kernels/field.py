"""The vector field ``f(X) = g(X) + h(X) − γX + X·A`` and its derivatives, written once
for both layouts.

Every function here takes the layout (``structs.ROWS`` or ``structs.LANES``) as its
first argument and reaches what differs between the layouts only through the
primitives of :mod:`tfkernels.kernels.layout` (the products and the attention); the
rest runs along whole rows of a state ``(T, d·L)`` (L = 1 in rows). The bodies are
inlined into one compiled function per layout (``rhs_rows``, ``rhs_lanes``, …, each a
one-line call of the body with the layout constant, so that Numba prunes the other
layout's branches before typing); :func:`rhs` and :func:`rhs_and_jvp` call the one of
their layout.

* :func:`rhs` — ``f(X)``;
* :func:`rhs_and_jvp` — ``f(X)`` and the exact Jacobian–vector product ``f'(X)·V`` from
  one forward pass, whose activations (Q, K, V, every head's softmax, σ'(z)) the JVP
  reuses; the forward part is :func:`rhs` operation for operation, so the state it
  yields is bit-identical to the plain flow's;
* :func:`rhs_vjp` — the vector–Jacobian product ``f'(X)ᵀ·G`` (row layout only: it serves
  the λ̂ estimate of the decay study, not a hot loop).

Vectors are ``(T, d)`` matrices; ``Jᵀ`` is the adjoint for the Frobenius inner product,
so ``⟨G, J V⟩ = ⟨Jᵀ G, V⟩``.
"""

from .attention import attention_vjp
from .jit import by_block
from .jit import ijit as _ijit
from .jit import jit as _jit
from .layout import attention, attention_tangent, product
from .maths import activate_prime, add_bias, bias_activate, bias_activate_prime
from .norms import norm_tokens, norm_tokens_jvp, tangent_project, tangent_project_jvp
from .simd import gemm, lanes
from .structs import LANES, ROWS, SUB_ATTN, SUB_FFN


@_ijit
def damped_linear(layout, X, γ, A, linear, out):
    """``out = −γX`` (``+ X·A`` when ``linear``): the terms of ``f`` linear in X."""
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            out[i, j] = -γ * X[i, j]
    if linear:
        product(layout, X, A, out, True)


@_ijit
def ffn(layout, X, w1, b1, w2, b2, act, hidden, out):
    """``out += σ(X W_1 + b_1) W_2 + b_2``; ``hidden (T, m·L)``."""
    product(layout, X, w1, hidden, False)
    bias_activate(hidden, b1, act)
    product(layout, hidden, w2, out, True)
    add_bias(out, b2)


@_ijit
def fill_zero(out):
    """``out[:, :] = 0`` (an explicit loop, as ``drivers.copy_state``)."""
    z = out.dtype.type(0)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = z


@_ijit
def n_lanes(layout, X):
    """Lanes of a state: 1 in the row layout, ``simd.lanes`` in the lane layout."""
    if layout == LANES:
        return lanes(X)
    return 1


def _block_norm_plain(layout, X, model, layer, which, out, red):
    pass


@by_block(_block_norm_plain)
def block_norm(layout, X, model, layer, which, out, red):
    """``out`` = ``X`` with its tokens normed by sub-layer ``which``'s norm (0
    attention, 1 FFN; ``out`` may be ``X``), ``red`` the norms' float64 sums: a pre
    norm's input (:func:`sub_input`) or a post norm (``steps.layer_step``); nothing for
    a plain block."""
    k = model.block
    norm_tokens(
        X,
        n_lanes(layout, X),
        k.norm,
        k.norm_gain[layer, which],
        k.norm_bias[layer, which],
        k.eps,
        out,
        red,
    )


@_ijit
def sub_input(layout, X, model, layer, which, fs):
    """The input of sub-layer ``which`` (0 attention, 1 FFN): ``X``, or its tokens
    normed by that sub-layer's norm into ``fs.xn`` with a pre norm (:func:`block_norm`)."""
    if model.block.pre:
        block_norm(layout, X, model, layer, which, fs.xn, fs.red)
        return fs.xn
    return X


def _project_plain(layout, X, model, out, fs):
    pass


@by_block(_project_plain)
def project(layout, X, model, out, fs):
    """``out ← P⊥ out`` on the sphere's tangent spaces at ``X``
    (``norms.tangent_project``); nothing for a plain block."""
    tangent_project(X, n_lanes(layout, X), out, fs.red)


def _project_jvp_plain(layout, X, V, model, out, dout, ts):
    pass


@by_block(_project_jvp_plain)
def project_jvp(layout, X, V, model, out, dout, ts):
    """:func:`project` of ``out`` and its derivative along ``V`` into ``dout``
    (``norms.tangent_project_jvp``); nothing for a plain block."""
    tangent_project_jvp(X, V, n_lanes(layout, X), out, dout, ts.red)


@_ijit
def attention_sub(layout, X, model, layer, fs, out):
    """``out += g(N_a(X)) + b_o``: the attention sub-field with its biases, on the
    normed tokens with a pre norm (the activations left in ``fs`` for the JVP)."""
    w, s, k = model.weights, model.settings, model.block
    Xa = sub_input(layout, X, model, layer, 0, fs)
    H, beta, mask, sym = s.n_heads, s.beta, s.causal, s.symmetric
    attention(layout, Xa, w.wqkv[layer], k.bqkv[layer], w.wo[layer], H, beta, mask, sym, fs, out)
    add_bias(out, k.bo[layer])


@_ijit
def _rhs(layout, X, model, layer, subs, out, fs):
    """``out`` = the field of the sub-layers ``subs`` (bits ``structs.SUB_ATTN``,
    ``SUB_FFN``) at ``X`` with weight set ``layer`` of ``model`` (a ``structs.Model``):
    ``F_a = g(N_a(X))`` (biases included) and ``F_f = h(N_f(X)) − γX + X·A`` (``N``
    the identity without a pre norm), projected on the sphere's tangent spaces with
    the tangent position. ``fs`` a ``structs.FieldScratch``. With both bits and no
    block, the paper's ``f = g + h − γX + X·A`` in its original order of operations.
    """
    w, s = model.weights, model.settings
    if subs & SUB_FFN:
        damped_linear(layout, X, s.damping, w.A[layer], s.linear, out)
    else:
        fill_zero(out)
    if s.attention and subs & SUB_ATTN:
        attention_sub(layout, X, model, layer, fs, out)
    if s.ffn and subs & SUB_FFN:
        Xf = sub_input(layout, X, model, layer, 1, fs)
        ffn(
            layout,
            Xf,
            w.w1[layer],
            w.b1[layer],
            w.w2[layer],
            w.b2[layer],
            s.activation,
            fs.hidden,
            out,
        )
    if model.block.tangent:
        project(layout, X, model, out, fs)


def _pre_norm_jvp_plain(layout, X, V, model, layer, which, ts):
    pass


@by_block(_pre_norm_jvp_plain)
def pre_norm_jvp(layout, X, V, model, layer, which, ts):
    """``ts.dxn`` = ``N'(X)·V`` of sub-layer ``which``'s norm; nothing for a plain
    block."""
    k = model.block
    norm_tokens_jvp(
        X,
        V,
        n_lanes(layout, X),
        k.norm,
        k.norm_gain[layer, which],
        k.eps,
        ts.dxn,
        ts.red,
    )


@_ijit
def sub_tangent(layout, X, V, model, layer, which, ts):
    """The tangent of :func:`sub_input`: ``V``, or ``N'(X)·V`` of sub-layer ``which``'s
    norm into ``ts.dxn`` with a pre norm (:func:`pre_norm_jvp`)."""
    if model.block.pre:
        pre_norm_jvp(layout, X, V, model, layer, which, ts)
        return ts.dxn
    return V


@_ijit
def _rhs_and_jvp(layout, X, V, model, layer, subs, out, dout, fs, ts):
    """``out`` = the field of the sub-layers ``subs`` at ``X`` (bit-identical to
    :func:`rhs`) and ``dout`` its exact derivative along ``V``.

    One forward pass, the operations of :func:`rhs` in the same order, with σ'(z) kept
    in ``ts.S`` and the attention's activations in ``fs``; the JVP then costs only the
    products with the tangent, of the sub-layers' inputs ``N'(X)·V`` with a pre norm
    (:func:`sub_tangent`). With the tangent position the projection and its derivative
    come last, together (``norms.tangent_project_jvp``). ``fs`` a
    ``structs.FieldScratch``, ``ts`` a ``structs.TangentScratch``.
    """
    w, s = model.weights, model.settings
    A, w1, b1, w2, b2 = w.A[layer], w.w1[layer], w.b1[layer], w.w2[layer], w.b2[layer]
    attn = s.attention and (subs & SUB_ATTN) != 0
    ff = s.ffn and (subs & SUB_FFN) != 0
    # the forward pass: rhs with the activations kept
    if subs & SUB_FFN:
        damped_linear(layout, X, s.damping, A, s.linear, out)
        damped_linear(layout, V, s.damping, A, s.linear, dout)
    else:
        fill_zero(out)
        fill_zero(dout)
    if attn:
        attention_sub(layout, X, model, layer, fs, out)
    if ff:
        Xf = sub_input(layout, X, model, layer, 1, fs)
        product(layout, Xf, w1, fs.hidden, False)
        bias_activate_prime(fs.hidden, b1, s.activation, ts.S)
        product(layout, fs.hidden, w2, out, True)
        add_bias(out, b2)
    # the tangent
    if attn:
        Va = sub_tangent(layout, X, V, model, layer, 0, ts)
        H, beta, mask, sym = s.n_heads, s.beta, s.causal, s.symmetric
        attention_tangent(layout, Va, w.wqkv[layer], w.wo[layer], H, beta, mask, sym, fs, ts, dout)
    if ff:
        Vf = sub_tangent(layout, X, V, model, layer, 1, ts)
        dhidden, S = ts.dhidden, ts.S
        product(layout, Vf, w1, dhidden, False)
        for i in range(dhidden.shape[0]):
            for j in range(dhidden.shape[1]):
                dhidden[i, j] *= S[i, j]
        product(layout, dhidden, w2, dout, True)
    if model.block.tangent:
        project_jvp(layout, X, V, model, out, dout, ts)


@_jit
def rhs_rows(X, model, layer, subs, out, fs):
    """:func:`rhs` in the row layout."""
    _rhs(ROWS, X, model, layer, subs, out, fs)


@_jit
def rhs_lanes(X, model, layer, subs, out, fs):
    """:func:`rhs` in the lane layout."""
    _rhs(LANES, X, model, layer, subs, out, fs)


@_ijit
def rhs(layout, X, model, layer, subs, out, fs):
    """``out`` = the field of the sub-layers ``subs`` at ``X`` with weight set ``layer``
    of ``model`` (a ``structs.Model``); ``fs`` a ``structs.FieldScratch`` (a call of
    :func:`rhs_rows` or :func:`rhs_lanes`, see ``_rhs``)."""
    if layout == LANES:
        rhs_lanes(X, model, layer, subs, out, fs)
    else:
        rhs_rows(X, model, layer, subs, out, fs)


@_jit
def rhs_and_jvp_rows(X, V, model, layer, subs, out, dout, fs, ts):
    """:func:`rhs_and_jvp` in the row layout."""
    _rhs_and_jvp(ROWS, X, V, model, layer, subs, out, dout, fs, ts)


@_jit
def rhs_and_jvp_lanes(X, V, model, layer, subs, out, dout, fs, ts):
    """:func:`rhs_and_jvp` in the lane layout."""
    _rhs_and_jvp(LANES, X, V, model, layer, subs, out, dout, fs, ts)


@_ijit
def rhs_and_jvp(layout, X, V, model, layer, subs, out, dout, fs, ts):
    """``out = f(X)`` and ``dout = f'(X)·V`` (a call of :func:`rhs_and_jvp_rows` or
    :func:`rhs_and_jvp_lanes`; see ``_rhs_and_jvp``)."""
    if layout == LANES:
        rhs_and_jvp_lanes(X, V, model, layer, subs, out, dout, fs, ts)
    else:
        rhs_and_jvp_rows(X, V, model, layer, subs, out, dout, fs, ts)


# ------------------------------------------------------------------------ VJP
@_jit
def ffn_vjp(X, G, w1, w1_t, b1, w2_t, act, vs, out):
    """``out += W_1 ((G W_2ᵀ) ⊙ σ'(X W_1 + b_1))`` in row form."""
    hidden, gh = vs.hidden, vs.ghidden
    gemm(X, w1, hidden, False)
    gemm(G, w2_t, gh, False)
    for i in range(X.shape[0]):
        for j in range(hidden.shape[1]):
            gh[i, j] *= activate_prime(hidden[i, j] + b1[j], act)
    gemm(gh, w1_t, out, True)


@_jit
def rhs_vjp(X, G, model, layer, out, vs):
    """``out = f'(X)ᵀ·G`` with weight set ``layer`` (row layout); ``vs`` a
    ``structs.VjpScratch``."""
    w, s = model.weights, model.settings
    T, d = X.shape
    for i in range(T):
        for j in range(d):
            out[i, j] = -s.damping * G[i, j]
    if s.linear:
        gemm(G, w.A_t[layer], out, True)
    if s.attention:
        attention_vjp(
            X,
            G,
            w.wqkv[layer],
            model.block.bqkv[layer],
            w.wqkv_t[layer],
            w.wo_t[layer],
            s.n_heads,
            s.beta,
            s.causal,
            vs,
            out,
        )
    if s.ffn:
        ffn_vjp(X, G, w.w1[layer], w.w1_t[layer], w.b1[layer], w.w2_t[layer], s.activation, vs, out)
