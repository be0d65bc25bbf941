"""One layer: the explicit Runge–Kutta step of the state, and of the state with its
tangent, written once for both layouts (first argument: the layout).

A method is data (``methods.TABLEAUS``): the step :func:`rk_step` runs any explicit
tableau ``(a, b)`` with step ``h``; with the Euler tableau and ``h = α_n·c`` it is the
averaged update. The noise and finiteness bookkeeping after a step differs between a
single trajectory and a group of lanes, and lives with the drivers
(:mod:`tfkernels.kernels.drivers`).
"""

from .field import block_norm, n_lanes, rhs, rhs_and_jvp
from .jit import by_block
from .jit import ijit as _ijit
from .jit import jit as _jit
from .norms import norm_tokens, norm_tokens_jvp
from .structs import LANES, ROWS


@_ijit
def layer_of(model, n):
    """Weight set used by layer ``n``: n with per-layer weights, else 0."""
    return n if model.settings.per_layer else 0


@_ijit
def stage_input(X, stages, a, h, i, xs):
    """``xs = X + Σ_{j<i} (h a_ij) k_j``: the input of RK stage ``i``.

    Each coefficient is read once outside its ``(T, d)`` loop (LLVM cannot hoist it
    past stores that may alias ``a``); shared by :func:`rk_step` and :func:`step_tangent`,
    so both produce the same bits.
    """
    T, d = X.shape
    for r in range(T):
        for col in range(d):
            xs[r, col] = X[r, col]
    for j in range(i):
        c = h * a[i, j]
        for r in range(T):
            for col in range(d):
                xs[r, col] += c * stages[j, r, col]


@_ijit
def step_update(X, stages, b, h, acc):
    """``X += h Σ_i b_i k_i``, the sum formed in ``acc (T, d)`` stage by stage."""
    T, d = X.shape
    z = X.dtype.type(0)
    for r in range(T):
        for col in range(d):
            acc[r, col] = z
    for i in range(b.shape[0]):
        c = b[i]
        for r in range(T):
            for col in range(d):
                acc[r, col] += c * stages[i, r, col]
    for r in range(T):
        for col in range(d):
            X[r, col] += h * acc[r, col]


@_ijit
def rk_step(layout, X, model, layer, subs, a, b, h, ss):
    """Advance ``X`` in place by one explicit RK step of size ``h`` on the field of the
    sub-layers ``subs`` (``structs.SUB_ATTN | SUB_FFN`` for the whole field).

    ``k_i = f(X + h Σ_{j<i} a_ij k_j)`` (:func:`stage_input`), then
    ``X += h Σ_i b_i k_i`` (:func:`step_update`, ``ss.xs`` holding the sum at the end).
    ``ss`` is a ``structs.StepScratch``. One :func:`~tfkernels.kernels.field.rhs` call
    site (each one is compiled in full).
    """
    stages, xs = ss.stages, ss.xs
    for i in range(b.shape[0]):
        src = X
        if i > 0:
            stage_input(X, stages, a, h, i, xs)
            src = xs
        rhs(layout, src, model, layer, subs, stages[i], ss.field)
    step_update(X, stages, b, h, xs)


def _post_norm_tangent_plain(layout, X, D, model, layer, p, ss, ts):
    pass


@by_block(_post_norm_tangent_plain)
def post_norm_tangent(layout, X, D, model, layer, p, ss, ts):
    """``D ← N'(X)·D``, then ``X ← N(X)``, in place, with sub-layer ``p``'s norm;
    nothing for a plain block."""
    k = model.block
    L = n_lanes(layout, X)
    gain = k.norm_gain[layer, p]
    norm_tokens_jvp(X, D, L, k.norm, gain, k.eps, D, ts.red)
    norm_tokens(X, L, k.norm, gain, k.norm_bias[layer, p], k.eps, X, ss.field.red)


@_ijit
def layer_step(layout, X, model, layer, a, b, h, ss):
    """One layer of the block in place: its sub-steps in order (``structs.Block``),
    each an :func:`rk_step` of size ``h·fraction`` on its sub-fields followed by its
    post norm, if any. The paper's parallel field is one sub-step of the whole field
    with fraction 1 and no norm, so its bits are those of a plain :func:`rk_step`."""
    k = model.block
    for i in range(k.subs.shape[0]):
        rk_step(layout, X, model, layer, k.subs[i], a, b, h * k.fracs[i], ss)
        p = k.posts[i]
        if p >= 0:
            block_norm(layout, X, model, layer, p, X, ss.field.red)


@_ijit
def _step_tangent(layout, X, D, model, layer, subs, a, b, h, ss, ts):
    """One explicit RK step of the state and of its linearization, in place.

    ``X`` advances exactly as in :func:`rk_step` (the same :func:`stage_input` /
    :func:`step_update`, so bit-identical), and ``D ← D + h Σ b_i dk_i`` with
    ``dk_i = f'(x_i)·(D + h Σ_{j<i} a_ij dk_j)`` at the stage states ``x_i``, each
    stage's JVP taken from its own forward pass
    (:func:`~tfkernels.kernels.field.rhs_and_jvp`). ``ss`` a ``structs.StepScratch``,
    ``ts`` a ``structs.TangentScratch``.
    """
    stages, xs, dstages, ds = ss.stages, ss.xs, ts.dstages, ts.ds
    for i in range(b.shape[0]):
        if i == 0:
            rhs_and_jvp(layout, X, D, model, layer, subs, stages[0], dstages[0], ss.field, ts)
            continue
        stage_input(X, stages, a, h, i, xs)
        stage_input(D, dstages, a, h, i, ds)
        rhs_and_jvp(layout, xs, ds, model, layer, subs, stages[i], dstages[i], ss.field, ts)
    step_update(X, stages, b, h, xs)
    step_update(D, dstages, b, h, ds)


@_ijit
def _layer_tangent(layout, X, D, model, layer, a, b, h, ss, ts):
    """One layer of the block and its linearization, in place: :func:`layer_step`'s
    sub-steps, each a ``_step_tangent`` of size ``h·fraction`` on its sub-fields, and
    after a post norm ``X ← N(X)`` the tangent ``D ← N'(X)·D`` (taken at the state
    before the norm). ``X`` gets the bits of :func:`layer_step`."""
    k = model.block
    for i in range(k.subs.shape[0]):
        _step_tangent(layout, X, D, model, layer, k.subs[i], a, b, h * k.fracs[i], ss, ts)
        p = k.posts[i]
        if p >= 0:
            post_norm_tangent(layout, X, D, model, layer, p, ss, ts)


@_jit
def step_tangent_rows(X, D, model, layer, a, b, h, ss, ts):
    """:func:`step_tangent` in the row layout."""
    _layer_tangent(ROWS, X, D, model, layer, a, b, h, ss, ts)


@_jit
def step_tangent_lanes(X, D, model, layer, a, b, h, ss, ts):
    """:func:`step_tangent` in the lane layout."""
    _layer_tangent(LANES, X, D, model, layer, a, b, h, ss, ts)


@_ijit
def step_tangent(layout, X, D, model, layer, a, b, h, ss, ts):
    """One layer of the block and its linearization, in place (a call of
    :func:`step_tangent_rows` or :func:`step_tangent_lanes`; see ``_layer_tangent``)."""
    if layout == LANES:
        step_tangent_lanes(X, D, model, layer, a, b, h, ss, ts)
    else:
        step_tangent_rows(X, D, model, layer, a, b, h, ss, ts)
