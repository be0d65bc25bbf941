"""The kernels' Python entry points: pick the layout, allocate each slice's buffers,
and run the slices of a batch in parallel threads (:func:`tfkernels.threads.run_threads`).

Inputs are validated by the callers (:mod:`tfkernels.api`, the studies). A ``(T, d)``
configuration of at most ``config.LANES_MAX_SIZE`` elements runs in the lane layout
(``structs.use_lanes``), anything larger in the row layout; both give the same bits
(``tests/test_lanes.py``), so the choice is one of speed. Trajectory ``start + k`` gets
the same bits in any slice.

``model`` is a ``structs.Model``, or for :func:`integrate`, :func:`decay_kernel` and
:func:`lyapunov_kernel` a ``structs.Ensemble`` (a weight ensemble, whose trajectories
each have their own weights): it always runs in the row layout (the lanes of a group
share one set of weights), each slice drawing into its own copy of the template
(``draws.slice_model``).

Every entry point runs its slices with Python's cyclic garbage collector paused
(:func:`run`): a kernel's first call compiles it (or loads it from Numba's cache), and
Numba's compiler allocates millions of short-lived objects whose collection passes took
a fifth of a cold compile (``docs/performance.md``); the compiled kernels themselves
allocate nothing, and the collector resumes when the call returns.
"""

import contextlib
import gc

import numpy as np

from .. import threads
from . import draws, drivers, structs
from .structs import LANES, ROWS


def run(body, batch):
    """``threads.run_threads(body, batch)`` with the cyclic garbage collector paused."""
    with _collector_paused():
        threads.run_threads(body, batch)


def _rows_model(model):
    """``(layer model, draw, lanes allowed)`` of a ``structs.Model`` or
    ``structs.Ensemble``: an ensemble's slice buffers come from :func:`_slice` (called
    per slice)."""
    if isinstance(model, structs.Ensemble):
        return model.template, model.draw, False
    return model, structs.NO_DRAW, True


def _slice(model):
    """The model one slice runs: its own copy of an ensemble's template, else ``model``."""
    if isinstance(model, structs.Ensemble):
        return draws.slice_model(model)
    return model


@contextlib.contextmanager
def _collector_paused():
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def integrate(model, x0, sched, seed, start, save_every, first, out, status):
    """Run every layer of ``sched`` on every trajectory of ``x0`` into ``out``/``status``
    (see ``drivers.integrate_rows`` for the arguments)."""
    B, T, d = x0.shape
    dt = x0.dtype
    shape, draw, lanes_ok = _rows_model(model)
    if lanes_ok and structs.use_lanes(T, d):
        L = structs.group_width(dt)
        lm = structs.for_lanes(model)

        def body(lo, hi):
            lane, X = structs.aligned_buffers(((T, d), (T, d * L)), dt)
            ss = structs.step_scratch(LANES, model, T, d, sched.b.shape[0], dt)
            drivers.integrate_lanes(
                x0[lo:hi],
                lm,
                sched,
                seed,
                start + lo,
                save_every,
                first,
                out[lo:hi],
                status[lo:hi],
                lane,
                X,
                ss,
            )
    else:

        def body(lo, hi):
            X = structs.empty_aligned((T, d), dt)
            ss = structs.step_scratch(ROWS, shape, T, d, sched.b.shape[0], dt)
            drivers.integrate_rows(
                x0[lo:hi],
                _slice(model),
                draw,
                sched,
                seed,
                start + lo,
                save_every,
                first,
                out[lo:hi],
                status[lo:hi],
                X,
                ss,
            )

    run(body, B)


def geometry_kernel(model, x0, sched, seed, start, save_every, cfg, vals, status):
    """Run every layer of ``sched`` on every trajectory of ``x0``, measuring the token
    geometry at the saved layers into ``vals (B, S, M)`` (the M metrics asked for; see
    ``drivers.geometry_rows`` for the arguments). ``model`` a ``structs.Model`` or a
    weight ensemble's ``structs.Ensemble`` (row layout, as :func:`integrate`)."""
    B, T, d = x0.shape
    dt = x0.dtype
    shape, draw, lanes_ok = _rows_model(model)
    if lanes_ok and structs.use_lanes(T, d):
        L = structs.group_width(dt)
        lm = structs.for_lanes(model)

        def body(lo, hi):
            lane, X = structs.aligned_buffers(((T, d), (T, d * L)), dt)
            ss = structs.step_scratch(LANES, model, T, d, sched.b.shape[0], dt)
            gs = structs.geometry_scratch(T, d, L)
            drivers.geometry_lanes(
                x0[lo:hi], lm, sched, seed, start + lo, save_every, cfg, vals[lo:hi],
                status[lo:hi], lane, X, ss, gs,
            )  # fmt: skip
    else:

        def body(lo, hi):
            X = structs.empty_aligned((T, d), dt)
            ss = structs.step_scratch(ROWS, shape, T, d, sched.b.shape[0], dt)
            gs = structs.geometry_scratch(T, d, 1)
            drivers.geometry_rows(
                x0[lo:hi], _slice(model), draw, sched, seed, start + lo, save_every, cfg,
                vals[lo:hi], status[lo:hi], X, ss, gs,
            )  # fmt: skip

    run(body, B)


def final_norm(params, X):
    """Apply the final norm of ``params`` (if it has one) to every token of the states
    ``X (B, T, d)`` in place (``drivers.norm_batch``)."""
    fin = structs.final_norm(params)
    if fin is not None:
        drivers.norm_batch(X, *fin, np.zeros((2, 1)))


def ensemble_final_norm(ens, X, start):
    """The final norm of a weight ensemble (``ens`` a ``structs.Ensemble`` with
    ``final``) on every token of ``X (B, T, d)`` in place, trajectory ``start + b``
    with its own parameters (``drivers.norm_batch_drawn``); nothing without one."""
    if ens.final is None:
        return
    kind, eps = ens.final
    d = X.shape[2]

    def body(lo, hi):
        gain, bias = np.ones(d, X.dtype), np.zeros(d, X.dtype)
        drivers.norm_batch_drawn(
            X[lo:hi], ens.draw.seed, np.int64(start + lo), kind, eps, gain, bias, np.zeros((2, 1))
        )

    run(body, X.shape[0])


def vector_field(model, X, layer, out, start=0):
    """``out[b] = f(X[b])`` with weight set ``layer`` for every trajectory b; for a
    weight ensemble (``structs.Ensemble``) member ``start + b``'s field
    (``drivers.vector_field_drawn``, row layout)."""
    B, T, d = X.shape
    dt = X.dtype
    if isinstance(model, structs.Ensemble):

        def body(lo, hi):
            fs = structs.step_scratch(ROWS, model.template, T, d, 1, dt).field
            drivers.vector_field_drawn(
                X[lo:hi], _slice(model), model.draw, start + lo, layer, out[lo:hi], fs
            )
    elif structs.use_lanes(T, d):
        L = structs.group_width(dt)
        lm = structs.for_lanes(model)

        def body(lo, hi):
            G, F = structs.aligned_buffers(((T, d * L),) * 2, dt)
            fs = structs.step_scratch(LANES, model, T, d, 1, dt).field
            drivers.vector_field_lanes(X[lo:hi], lm, layer, out[lo:hi], G, F, fs)
    else:

        def body(lo, hi):
            fs = structs.step_scratch(ROWS, model, T, d, 1, dt).field
            drivers.vector_field_rows(X[lo:hi], model, layer, out[lo:hi], fs)

    run(body, B)


def decay_kernel(mode, model, a, b, h, sigma, seed, start, eps, dtype_like, logr, status, x0=None):
    """``log r_n`` of trajectories ``start … start + B − 1`` (``drivers.decay_rows`` for
    the arguments; ``a, b, h, sigma`` the schedule, ``dtype_like`` a ``(T, d)`` array of
    the state dtype; ``x0`` the B initial states, or None: drawn in the kernel). Both
    modes run in the lane layout where the flow does."""
    T, d = dtype_like.shape
    dt = dtype_like.dtype
    sched = structs.Schedule(a, b, h, sigma)
    S = b.shape[0]
    if x0 is None:
        x0 = np.empty((0, T, d), dtype=dt)

    def x0_of(lo, hi):
        return x0[lo:hi] if x0.shape[0] else x0

    shape, draw, lanes_ok = _rows_model(model)
    if lanes_ok and structs.use_lanes(T, d):
        L = structs.group_width(dt)
        lm = structs.for_lanes(model)

        def body(lo, hi):
            X, Y, u, v = structs.aligned_buffers(((T, d * L), (T, d * L), (T, d), (T, d)), dt)
            ss = structs.step_scratch(LANES, model, T, d, S, dt)
            if mode == drivers.MODE_PAIR:
                drivers.pair_lanes(
                    lm,
                    sched,
                    seed,
                    start + lo,
                    eps,
                    x0_of(lo, hi),
                    logr[lo:hi],
                    status[lo:hi],
                    u,
                    v,
                    np.empty((3, L)),
                    X,
                    Y,
                    ss,
                )
            else:
                ts = structs.tangent_scratch(LANES, model, T, d, S, dt)
                drivers.tangent_lanes(
                    lm,
                    sched,
                    seed,
                    start + lo,
                    x0_of(lo, hi),
                    logr[lo:hi],
                    status[lo:hi],
                    u,
                    v,
                    np.empty(L),
                    X,
                    Y,
                    ss,
                    ts,
                )
    else:

        def body(lo, hi):
            X, Y = structs.aligned_buffers(((T, d), (T, d)), dt)
            ss = structs.step_scratch(ROWS, shape, T, d, S, dt)
            ts = structs.tangent_scratch(ROWS, shape, T, d, S, dt)
            drivers.decay_rows(
                mode,
                _slice(model),
                draw,
                sched,
                seed,
                start + lo,
                eps,
                x0_of(lo, hi),
                logr[lo:hi],
                status[lo:hi],
                X,
                Y,
                ss,
                ts,
            )

    run(body, logr.shape[0])


def lyapunov_kernel(
    model, a, b, h, seed, start, transient, renorm_every, dtype_like, expo, status, x0=None
):
    """``Σ log R_jj`` of the ``k = expo.shape[1]`` leading tangents of trajectories
    ``start … start + B − 1`` into ``expo (B, k)`` (``drivers.lyapunov_rows`` for the
    arguments; ``a, b, h`` the update, ``dtype_like`` a ``(T, d)`` array of the state
    dtype, ``x0`` the B initial states or None: drawn in the kernel). Row layout only."""
    T, d = dtype_like.shape
    dt = dtype_like.dtype
    k = expo.shape[1]
    sched = structs.Schedule(a, b, h, np.zeros(h.shape[0], dtype=dt))
    S = b.shape[0]
    if x0 is None:
        x0 = np.empty((0, T, d), dtype=dt)
    shape, draw, _ = _rows_model(model)

    def body(lo, hi):
        X, Xc, Q = structs.aligned_buffers(((T, d), (T, d), (k, T, d)), dt)
        ss = structs.step_scratch(ROWS, shape, T, d, S, dt)
        ts = structs.tangent_scratch(ROWS, shape, T, d, S, dt)
        drivers.lyapunov_rows(
            _slice(model),
            draw,
            sched,
            seed,
            start + lo,
            x0[lo:hi] if x0.shape[0] else x0,
            transient,
            renorm_every,
            expo[lo:hi],
            status[lo:hi],
            X,
            Xc,
            Q,
            np.empty(k),
            ss,
            ts,
        )

    run(body, expo.shape[0])


def jvp_kernel(X, V, model, layers, out):
    """``out[k] = f'(X[k])·V[k]`` with weight set ``layers[k]``, parallel over k
    (C-contiguous arrays, validated by the caller)."""
    T, d = X.shape[1:]

    def body(lo, hi):
        fx = structs.empty_aligned((T, d), X.dtype)
        fs = structs.step_scratch(ROWS, model, T, d, 1, X.dtype).field
        ts = structs.tangent_scratch(ROWS, model, T, d, 1, X.dtype)
        drivers.jvp_batch(X[lo:hi], V[lo:hi], model, layers[lo:hi], out[lo:hi], fx, fs, ts)

    run(body, X.shape[0])


def layer_jvp_kernel(X, D, model, layers, a, b, h):
    """``X[k] ← Φ(X[k])``, ``D[k] ← Φ'(X[k])·D[k]`` in place for the block's layer map
    (``drivers.layer_jvp_batch``), parallel over k."""
    T, d = X.shape[1:]

    def body(lo, hi):
        ss = structs.step_scratch(ROWS, model, T, d, len(b), X.dtype)
        ts = structs.tangent_scratch(ROWS, model, T, d, len(b), X.dtype)
        drivers.layer_jvp_batch(X[lo:hi], D[lo:hi], model, layers[lo:hi], a, b, h[lo:hi], ss, ts)

    run(body, X.shape[0])


def vjp_kernel(X, G, model, layers, out):
    """``out[k] = f'(X[k])ᵀ·G[k]`` with weight set ``layers[k]``, parallel over k."""
    run(
        lambda lo, hi: drivers.vjp_batch(
            X[lo:hi],
            G[lo:hi],
            model,
            layers[lo:hi],
            out[lo:hi],
            structs.vjp_scratch(model, *X.shape[1:], X.dtype),
        ),
        X.shape[0],
    )
