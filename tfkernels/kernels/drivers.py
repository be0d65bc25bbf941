"""The fused drivers: all N layers of many trajectories in one compiled call.

A driver is serial over its slice of the batch, releases the GIL and allocates nothing
(its buffers come from ``structs``, allocated in Python per slice):
:mod:`tfkernels.kernels.dispatch` runs slices in parallel threads. There is one driver
per task and layout, because what happens between two layers differs: a trajectory in
the row layout is advanced, noised and tested on its own, while a group in the lane
layout is advanced together, then noised lane by lane (each trajectory with its own
key), tested with one vectorized check, and a lane that blew up is recorded and
cleared so that the others go on. The layer itself (:mod:`tfkernels.kernels.steps`) is
the same code in both, so a trajectory gets the same bits in either.

* :func:`integrate_rows`, :func:`integrate_lanes` — the flow, with snapshots;
* :func:`geometry_rows`, :func:`geometry_lanes` — the flow, measuring the token geometry
  at the saved layers instead of storing them (``kernels.geometry``);
* :func:`vector_field_rows`, :func:`vector_field_lanes` — ``f`` of every state
  (:func:`vector_field_drawn`: each a weight-ensemble member's);
* :func:`decay_rows`, :func:`pair_lanes`, :func:`tangent_lanes` — the perturbation
  study: ``log r_n`` of a pair ``(X, X + εU)`` or of a tangent δ;
* :func:`lyapunov_rows` — the ``k`` leading Lyapunov exponents: k tangents, QR by
  MGS2 (:func:`orthonormalize`);
* :func:`jvp_batch`, :func:`vjp_batch` — ``f'(X)·V`` and ``f'(X)ᵀ·G`` of many states.

The row-layout drivers of the flow, the decay study and the Lyapunov spectrum take a
``structs.Draw`` after the model: for a weight ensemble (``draw.on``) trajectory g's
weights are drawn into the slice's model before its first layer, or before every
layer with ``draw.per_layer`` (:func:`draw_layer`, ``draws.fill_weights``); every
other model passes ``structs.NO_DRAW`` and runs on its own weights.
"""

import math

import numpy as np

from .. import config
from . import rng
from .draws import fill_final_norm, fill_weights
from .field import rhs, rhs_and_jvp, rhs_vjp
from .geometry import measure_lanes, measure_rows
from .jit import djit as _djit
from .jit import ijit as _ijit
from .jit import jit as _jit
from .layout import (
    lane_finite,
    lane_sq_dist,
    lane_sq_norms,
    load_group,
    load_lane,
    store_lane,
    zero_lane,
)
from .maths import (
    all_finite,
    is_finite,
    is_normal,
    normalize_scaled,
    rescale_difference,
    scaled_log_norm,
    sq_dist,
    sq_norm,
    strided_sq_dist,
)
from .norms import norm_tokens
from .simd import lanes
from .steps import layer_of, layer_step, step_tangent
from .structs import LANES, ROWS, STATUS_OK, SUB_ATTN, SUB_FFN

#: Mode codes of the decay drivers (``methods.MODES``).
MODE_PAIR, MODE_TANGENT = 0, 1


# ------------------------------------------------------------------ one layer
@_ijit
def draw_layer(model, draw, g, n):
    """Before layer ``n`` of trajectory ``g``: draw its weights into ``model`` when
    ``draw`` (a ``structs.Draw``) says so (layer 0 of an ensemble, every layer of a
    per-layer one; nothing for ``structs.NO_DRAW``)."""
    if draw.per_layer:
        fill_weights(model, draw, g, n)
    elif draw.on and n == 0:
        fill_weights(model, draw, g, 0)


@_ijit
def add_noise(X, σ, noise_key, n):
    """``X += σ·z`` with z the normals of layer ``n`` of this trajectory's noise key."""
    rng.add_normal(noise_key, n * X.size, σ, X)


@_ijit
def advance(X, model, sched, n, noise_key, ss):
    """Layer ``n`` of one trajectory (row layout): the block's step (``steps.layer_step``),
    then noise; returns whether X is finite. ``sched`` a ``structs.Schedule``, ``ss`` a
    ``structs.StepScratch``."""
    layer_step(ROWS, X, model, layer_of(model, n), sched.a, sched.b, sched.h[n], ss)
    if sched.sigma[n] != 0:
        add_noise(X, sched.sigma[n], noise_key, n)
    return all_finite(X)


@_ijit
def add_group_noise(X, n, σ, seed, start, status, lane):
    """The noise of layer ``n`` on each lane ``l`` of the group ``X`` whose ``status[l]``
    is ``STATUS_OK``: trajectory ``start + l``'s own draws added to the lane's own copy
    by ``rng.add_normal`` (the same operations on the same values as the row layout;
    ``lane (T, d)`` scratch)."""
    if σ[n] != 0:
        for l in range(status.shape[0]):
            if status[l] == STATUS_OK:
                store_lane(X, l, lane)
                add_noise(lane, σ[n], rng.key(seed, rng.STREAM_NOISE, start + l), n)
                load_lane(lane, l, X)


@_jit
def advance_group(X, model, sched, n, seed, start, status, lane, ss):
    """Layer ``n`` of a group (lane layout): the block's step of every lane, then
    :func:`add_group_noise`. No finiteness test: the drivers test the group."""
    layer_step(LANES, X, model, layer_of(model, n), sched.a, sched.b, sched.h[n], ss)
    add_group_noise(X, n, sched.sigma, seed, start, status, lane)


@_ijit
def copy_state(src, dst):
    """``dst[:, :] = src`` for two ``(T, d)`` states of the same shape.

    An explicit loop: array-to-array slice assignment makes Numba compile its
    shape-mismatch error message (string formatting, about 2 s of every cold compile).
    """
    T, d = src.shape
    for i in range(T):
        for j in range(d):
            dst[i, j] = src[i, j]


@_ijit
def first_unsaved(n, save_every, first):
    """Slot of ``out`` of the first snapshot after layer ``n`` fails (NaN from there)."""
    return max(0, (n + 1 + save_every - 1) // save_every - first)


# ---------------------------------------------------------------- the flow
@_ijit
def retire_lanes(X, nl, n, save_every, first, status, out):
    """After layer ``n`` of a group failed its vectorized check: each lane ``l < nl``
    still ``STATUS_OK`` that is not finite gets status ``n + 1`` and NaN in
    ``out[l, first_unsaved(…):]`` (snapshots or measured values); every lane that is
    not live (and the padding) is zeroed, so that the group check passes again.
    Returns the number of lanes retired."""
    L = lanes(X)
    gone = 0
    for l in range(L):
        if l < nl and status[l] == STATUS_OK:
            if lane_finite(X, l):
                continue
            status[l] = n + 1
            out[l, first_unsaved(n, save_every, first) :] = np.nan
            gone += 1
        zero_lane(X, l)  # a finished lane, or padding
    return gone


@_djit
def integrate_rows(x0, model, draw, sched, seed, start, save_every, first, out, status, X, ss):
    """Run all ``N = len(sched.h)`` layers of every trajectory of ``x0`` (row layout).

    Parameters
    ----------
    x0 : ndarray, shape (B, T, d)
    model : structs.Model
    draw : structs.Draw
        ``structs.NO_DRAW``, or the weight ensemble whose member ``start + b``
        trajectory b runs (:func:`draw_layer`).
    sched : structs.Schedule
    seed, start : int
        Noise of trajectory ``b`` is keyed by ``(seed, STREAM_NOISE, start + b)``.
    save_every : int
        Store the state after layer n when ``n % save_every == 0``...
    first : int
        ...in slot ``n // save_every - first`` of ``out`` (``first = 1`` skips X_0).
    out : ndarray, shape (B, S, T, d)
        Snapshots; filled with NaN from the first non-finite layer onward.
    status : ndarray of int64, shape (B,)
        ``STATUS_OK`` or the first layer n (1-based: state X_n) that was non-finite.
    X, ss
        Buffers: the state ``(T, d)`` and a ``structs.StepScratch``.
    """
    B = x0.shape[0]
    N = sched.h.shape[0]
    for bi in range(B):
        copy_state(x0[bi], X)
        noise_key = rng.key(seed, rng.STREAM_NOISE, start + bi)
        status[bi] = STATUS_OK
        if first == 0:
            copy_state(X, out[bi, 0])
        for n in range(N):
            draw_layer(model, draw, start + bi, n)
            if not advance(X, model, sched, n, noise_key, ss):
                status[bi] = n + 1
                out[bi, first_unsaved(n, save_every, first) :] = np.nan
                break
            if (n + 1) % save_every == 0:
                copy_state(X, out[bi, (n + 1) // save_every - first])


@_djit
def integrate_lanes(x0, model, sched, seed, start, save_every, first, out, status, lane, X, ss):
    """:func:`integrate_rows` with the trajectories in groups of L across the vector
    lanes (same arguments and results, bit for bit; ``model`` from
    ``structs.for_lanes``; ``lane (T, d)`` scratch, ``X (T, d·L)`` the
    group's state).

    A group runs every layer together. After each layer one vectorized check covers
    the whole group; only when it fails are the lanes checked one by one, and a lane
    that became non-finite gets its status and NaN snapshots as in
    :func:`integrate_rows` and is then zeroed (as are the padding lanes of a last,
    partial group), so that the group check passes again and the other lanes go on.
    """
    B = x0.shape[0]
    L = lanes(X)
    N = sched.h.shape[0]
    for g0 in range(0, B, L):
        nl = min(L, B - g0)
        load_group(x0, g0, X)
        live = nl
        for l in range(nl):
            status[g0 + l] = STATUS_OK
            if first == 0:
                store_lane(X, l, out[g0 + l, 0])
        for n in range(N):
            advance_group(X, model, sched, n, seed, start + g0, status[g0 : g0 + nl], lane, ss)
            if not all_finite(X):
                st, snaps = status[g0 : g0 + nl], out[g0 : g0 + nl]
                live -= retire_lanes(X, nl, n, save_every, first, st, snaps)
                if live == 0:
                    break
            if (n + 1) % save_every == 0:
                for l in range(nl):
                    if status[g0 + l] == STATUS_OK:
                        store_lane(X, l, out[g0 + l, (n + 1) // save_every - first])


@_djit
def geometry_rows(x0, model, draw, sched, seed, start, save_every, cfg, vals, status, X, ss, gs):
    """:func:`integrate_rows` measuring instead of storing: the token geometry of
    every trajectory at layers 0, k, 2k, … (``kernels.geometry.measure_rows``) into
    ``vals (B, S, M)`` (float64, the M metrics asked for), NaN from the first
    non-finite layer on; ``draw`` a ``structs.Draw`` (a weight ensemble's members,
    :func:`draw_layer`), ``cfg`` a ``structs.GeometryConfig``, ``gs`` a
    ``structs.GeometryScratch`` of one lane."""
    B = x0.shape[0]
    N = sched.h.shape[0]
    for bi in range(B):
        copy_state(x0[bi], X)
        noise_key = rng.key(seed, rng.STREAM_NOISE, start + bi)
        status[bi] = STATUS_OK
        measure_rows(X, status[bi : bi + 1], cfg, vals[bi : bi + 1, 0], gs)
        for n in range(N):
            draw_layer(model, draw, start + bi, n)
            if not advance(X, model, sched, n, noise_key, ss):
                status[bi] = n + 1
                vals[bi, first_unsaved(n, save_every, 0) :] = np.nan
                break
            if (n + 1) % save_every == 0:
                s = (n + 1) // save_every
                measure_rows(X, status[bi : bi + 1], cfg, vals[bi : bi + 1, s], gs)


@_djit
def geometry_lanes(x0, model, sched, seed, start, save_every, cfg, vals, status, lane, X, ss, gs):
    """:func:`geometry_rows` with the trajectories in groups of L across the vector
    lanes, as :func:`integrate_lanes` (the same bits): each saved layer measures the
    whole group in one pass across its lanes."""
    B = x0.shape[0]
    L = lanes(X)
    N = sched.h.shape[0]
    for g0 in range(0, B, L):
        nl = min(L, B - g0)
        load_group(x0, g0, X)
        live = nl
        st = status[g0 : g0 + nl]
        for l in range(nl):
            st[l] = STATUS_OK
        measure_lanes(X, nl, st, cfg, vals[g0 : g0 + nl, 0], gs)
        for n in range(N):
            advance_group(X, model, sched, n, seed, start + g0, st, lane, ss)
            if not all_finite(X):
                live -= retire_lanes(X, nl, n, save_every, 0, st, vals[g0 : g0 + nl])
                if live == 0:
                    break
            if (n + 1) % save_every == 0:
                measure_lanes(X, nl, st, cfg, vals[g0 : g0 + nl, (n + 1) // save_every], gs)


@_djit
def vector_field_rows(X, model, layer, out, fs):
    """``out[b] = f(X[b])`` with weight set ``layer`` for every trajectory b;
    ``fs`` a ``structs.FieldScratch``."""
    for bi in range(X.shape[0]):
        rhs(ROWS, X[bi], model, layer, SUB_ATTN | SUB_FFN, out[bi], fs)


@_djit
def vector_field_drawn(X, model, draw, start, layer, out, fs):
    """:func:`vector_field_rows` of a weight ensemble: ``out[b]`` is the field of member
    ``start + b`` at ``X[b]``, its weights drawn into ``model`` (a slice's one weight
    set, ``draws.slice_model``) as for layer ``layer`` (the draw of that layer with
    ``draw.per_layer``, else the member's one set)."""
    for bi in range(X.shape[0]):
        fill_weights(model, draw, start + bi, layer if draw.per_layer else 0)
        rhs(ROWS, X[bi], model, 0, SUB_ATTN | SUB_FFN, out[bi], fs)


@_djit
def vector_field_lanes(X, model, layer, out, G, F, fs):
    """``out[b] = f(X[b])`` for every trajectory b, in groups of L (``G``, ``F``:
    ``(T, d·L)`` scratch for a group's input and output)."""
    B = X.shape[0]
    L = lanes(G)
    for g0 in range(0, B, L):
        load_group(X, g0, G)
        rhs(LANES, G, model, layer, SUB_ATTN | SUB_FFN, F, fs)
        for l in range(min(L, B - g0)):
            store_lane(F, l, out[g0 + l])


@_djit
def norm_batch(X, kind, gain, bias, eps, red):
    """Every token of the states ``X (B, T, d)`` normed in place (``norms.norm_tokens``,
    the final norm of ``integrate``)."""
    for bi in range(X.shape[0]):
        norm_tokens(X[bi], 1, kind, gain, bias, eps, X[bi], red)


@_djit
def norm_batch_drawn(X, seed, start, kind, eps, gain, bias, red):
    """:func:`norm_batch` with trajectory ``start + b``'s own final norm, drawn into
    ``gain``, ``bias (d,)`` first (``draws.fill_final_norm``): a weight ensemble's."""
    for bi in range(X.shape[0]):
        fill_final_norm(seed, start + bi, kind, gain, bias)
        norm_tokens(X[bi], 1, kind, gain, bias, eps, X[bi], red)


# ------------------------------------------------------- the perturbation study
@_jit
def initial_state(X, seed, g, x0, k):
    """``X = X_0`` of trajectory ``g``: ``x0[k]`` when ``x0`` holds states, else (``x0``
    of length 0) the standard normal state of ``tfk.random_states`` (stream
    ``STREAM_STATE``), drawn here."""
    if x0.shape[0] > 0:
        copy_state(x0[k], X)
    else:
        rng.fill_normal(rng.key(seed, rng.STREAM_STATE, g), 0, 1.0, X)


@_jit
def initial_pair(X, Y, seed, g, eps, x0, k):
    """``X = X_0``, ``Y = X_0 + ε·U`` of trajectory ``g``; returns ``log ‖X_0 − Y_0‖``.

    ``X_0`` is :func:`initial_state` (``x0[k]``, or drawn), U a unit-Frobenius
    direction from ``STREAM_DIRECTION``; ``Y`` is used as scratch for U first.
    """
    initial_state(X, seed, g, x0, k)
    rng.fill_normal(rng.key(seed, rng.STREAM_DIRECTION, g), 0, 1.0, Y)
    scale = eps / math.sqrt(sq_norm(Y))
    for i in range(X.size):
        Y.flat[i] = X.flat[i] + scale * np.float64(Y.flat[i])
    return 0.5 * math.log(sq_dist(X, Y))


@_jit
def initial_tangent(X, D, seed, g, x0, k):
    """``X = X_0`` (:func:`initial_state`), ``D = U`` (unit direction) of trajectory
    ``g``; returns ``log ‖D‖``."""
    initial_state(X, seed, g, x0, k)
    rng.fill_normal(rng.key(seed, rng.STREAM_DIRECTION, g), 0, 1.0, D)
    inv = 1.0 / math.sqrt(sq_norm(D))
    for i in range(D.size):
        D.flat[i] = np.float64(D.flat[i]) * inv
    return 0.5 * math.log(sq_norm(D))


@_jit
def advance_state(X, model, sched, n, noise_key, ss):
    """:func:`advance` compiled once as its own function and called for both states of a
    pair (inlined twice, the cached pair loop ran slower: ``docs/performance.md``)."""
    return advance(X, model, sched, n, noise_key, ss)


#: Half the log-width of the pair's band: it is renormalized when
#: ``|log(‖X − Y‖ / d0)| > BAND_LOG`` (``config.PAIR_BAND``).
BAND_LOG = math.log(config.PAIR_BAND)


@_ijit
def pair_floor(X):
    """``(PAIR_FLOOR·u)², log(16·PAIR_FLOOR·u)`` of ``X``'s dtype (u its unit roundoff):
    the squared lower edge of ``‖X − Y‖ / ‖X‖`` and the log of the least rescaled
    ``‖X − Y‖ / ‖X‖`` (``config.PAIR_FLOOR_F64``, ``config.PAIR_FLOOR_F32``)."""
    if X.itemsize == 4:
        f = config.PAIR_FLOOR_F32 * 2.0**-24
    else:
        f = config.PAIR_FLOOR_F64 * 2.0**-53
    return f * f, math.log(16.0 * f)


@_ijit
def half_log(s, X, Y, l, L, diff):
    """``log ‖X − Y‖`` (``diff``) or ``log ‖X‖`` from its plain sum of squares ``s``,
    or :func:`maths.scaled_log_norm` when ``s`` overflowed or underflowed."""
    if is_normal(s):
        return 0.5 * math.log(s)
    return scaled_log_norm(X, Y, l, L, diff)


@_jit
def renormalize(X, Y, l, L, s, nx2, log0, log_tf):
    """Rescale ``Y − X`` (elements ``j = l, l + L, …``, as in :func:`maths.scaled_log_norm`)
    back into the band and return ``log ‖X − Y‖`` after minus before.

    ``s``, ``nx2``: the plain sums of squares of ``X − Y`` and ``X``; ``log0 = log d0``.
    The new distance is ``max(d0, 16·PAIR_FLOOR·u·‖X‖)`` (``exp(log_tf)·‖X‖``), formed by
    :func:`maths.rescale_difference` and then measured, so that the returned factor is
    the exact ratio of the two computed distances.
    """
    before = half_log(s, X, Y, l, L, True)
    target = math.exp(max(log0, log_tf + half_log(nx2, X, X, l, L, False)))
    rescale_difference(X, Y, l, L, target)
    return half_log(strided_sq_dist(X, Y, l, L), X, Y, l, L, True) - before


@_ijit
def leaves_band(raw, s, nx2, floor2):
    """Whether the pair must be renormalized: ``raw = log(‖X − Y‖ / d0)`` outside
    ``[−BAND_LOG, BAND_LOG]``, or ``‖X − Y‖² = s < floor2·‖X‖²`` (not NaN-safe: the
    callers test ``raw`` first)."""
    return raw > BAND_LOG or raw < -BAND_LOG or s < floor2 * nx2


@_jit
def run_pair(X, Y, model, draw, g, sched, noise_key, log0, ss, logr):
    """All layers of one pair (trajectory ``g``, weights drawn by :func:`draw_layer`);
    fills ``logr`` and returns the status.

    ``log r_n = log ‖X_n − Y_n‖ − log d0 + acc``: after each layer the pair is
    renormalized when it leaves the band (:func:`leaves_band`: ``‖X − Y‖`` outside
    ``[d0/PAIR_BAND, d0·PAIR_BAND]`` or below ``PAIR_FLOOR·u·‖X‖``): ``Y − X`` is
    rescaled (:func:`renormalize`) and the log of the factor goes into ``acc``, so that
    ``log r_n`` stays the cumulative log growth of the perturbation at any contraction
    or expansion (ChaosTools' ``lyapunov`` does the same). Until the first
    renormalization ``acc = 0`` and ``log r_n`` is the plain ``log(‖X_n − Y_n‖/d0)``.
    ``‖X − Y‖`` of finite states never overflows (:func:`half_log`).
    """
    if not is_finite(log0):
        logr[:] = np.nan
        return 0
    logr[0] = 0.0
    acc = 0.0
    floor2, log_tf = pair_floor(X)
    for n in range(sched.h.shape[0]):
        draw_layer(model, draw, g, n)
        okx = advance_state(X, model, sched, n, noise_key, ss)
        oky = advance_state(Y, model, sched, n, noise_key, ss)
        if not (okx and oky):
            logr[n + 1 :] = np.nan
            return n + 1
        s = sq_dist(X, Y)
        raw = 0.5 * math.log(s) - log0
        if not is_normal(s):
            raw = scaled_log_norm(X, Y, 0, 1, True) - log0
        if not is_finite(raw):  # X and Y collapsed
            logr[n + 1 :] = np.nan
            return n + 1
        logr[n + 1] = raw + acc
        nx2 = sq_norm(X)
        if leaves_band(raw, s, nx2, floor2):
            acc -= renormalize(X, Y, 0, 1, s, nx2, log0, log_tf)
    return STATUS_OK


@_jit
def advance_tangent(X, D, model, sched, n, noise_key, ss, ts):
    """Layer ``n`` of the state and its tangent: ``steps.step_tangent``, then the noise
    (on X only) and finiteness test of :func:`advance`; returns whether X is finite."""
    step_tangent(ROWS, X, D, model, layer_of(model, n), sched.a, sched.b, sched.h[n], ss, ts)
    if sched.sigma[n] != 0:
        add_noise(X, sched.sigma[n], noise_key, n)
    return all_finite(X)


@_jit
def run_tangent(X, D, model, draw, g, sched, noise_key, log0, ss, ts, logr):
    """All layers of one tangent trajectory ``g`` (weights drawn by :func:`draw_layer`),
    δ renormalized each layer.

    Layer n is :func:`advance_tangent`, so ``X`` follows the plain flow bit for bit
    (additive noise adds nothing to δ).
    ``log r_n = Σ_{k<n} log ‖δ_{k+1}‖ − log ‖δ_0‖`` with δ rescaled to unit norm after
    every layer, so it neither underflows nor overflows; a ‖δ‖² that does
    (one layer's growth beyond 1e154) is recomputed scaled (``maths.normalize_scaled``).
    """
    logr[0] = 0.0
    acc = -log0
    nrm = 1.0
    for n in range(sched.h.shape[0]):
        draw_layer(model, draw, g, n)
        ok = advance_tangent(X, D, model, sched, n, noise_key, ss, ts)
        if ok:
            s = sq_norm(D)
            nrm = math.sqrt(s)
            ok = nrm > 0.0 and is_finite(nrm)
            if not is_normal(s) and all_finite(D):
                lg = normalize_scaled(D, 0, 1)
                ok = is_finite(lg)
                if ok:
                    acc += lg
                    logr[n + 1] = acc
                    continue
        if not ok:
            logr[n + 1 :] = np.nan
            return n + 1
        acc += math.log(nrm)
        logr[n + 1] = acc
        inv = 1.0 / nrm
        for i in range(D.size):
            D.flat[i] = np.float64(D.flat[i]) * inv
    return STATUS_OK


@_djit
def decay_rows(mode, model, draw, sched, seed, start, eps, x0, logr, status, X, Y, ss, ts):
    """Log growth ``log r_n`` of trajectories ``start … start + B − 1``, n = 0 … N
    (row layout).

    Parameters
    ----------
    mode : int
        ``MODE_PAIR`` (finite perturbation ε) or ``MODE_TANGENT`` (exact linearization).
    model : structs.Model
    draw : structs.Draw
        ``structs.NO_DRAW``, or the weight ensemble whose member g trajectory g runs.
    sched : structs.Schedule
    seed, start : int
        Trajectory ``g = start + k`` draws X_0, U and its noise from keys
        ``(seed, STREAM_*, g)``; the noise is shared by X and Y.
    eps : float
        ε of the pair mode.
    x0 : ndarray, shape (B, T, d) or (0, T, d)
        The initial states X_0 of the trajectories, or none (length 0): then X_0 is
        drawn from ``(seed, STREAM_STATE, g)`` (:func:`initial_state`).
    logr : ndarray of float64, shape (B, N + 1)
        Output; NaN from the first non-finite layer on. The pair is renormalized as it
        leaves its band (:func:`run_pair`), δ every layer (:func:`run_tangent`).
    status : ndarray of int64, shape (B,)
        ``STATUS_OK``; else the first layer n (1-based) where a state or r_n was not
        finite (r_n = 0 included: X and Y collapsed), or 0 when ε·U vanished in the
        state dtype (X_0 + ε·U == X_0).
    X, Y, ss, ts
        Buffers: two states ``(T, d)`` (Y holds δ in tangent mode), a
        ``structs.StepScratch`` and a ``structs.TangentScratch``.
    """
    for k in range(logr.shape[0]):
        g = start + k
        noise_key = rng.key(seed, rng.STREAM_NOISE, g)
        if mode == MODE_PAIR:
            log0 = initial_pair(X, Y, seed, g, eps, x0, k)
            status[k] = run_pair(X, Y, model, draw, g, sched, noise_key, log0, ss, logr[k])
        else:
            log0 = initial_tangent(X, Y, seed, g, x0, k)
            status[k] = run_tangent(X, Y, model, draw, g, sched, noise_key, log0, ss, ts, logr[k])


@_djit
def pair_lanes(model, sched, seed, start, eps, x0, logr, status, u, v, pl, X, Y, ss):
    """Pair mode of :func:`decay_rows` with the trajectories in groups of L across the
    vector lanes: the states ``X``, ``Y`` of L pairs are two groups ``(T, d·L)``, each
    layer :func:`advance_group` on both (the noise of trajectory g on both of its
    states, as in :func:`run_pair`), and each lane renormalized as there.

    The states are bit-identical to :func:`run_pair`'s; ``log r_n`` agrees to
    rounding (the squared distance is summed lane by lane in the same order, but
    LLVM may reassociate ``maths.sq_dist``'s reduction). A pair whose ``r_n`` is not
    finite (a state that overflowed, or X and Y that collapsed: the same test as
    :func:`run_pair`'s) is finished as there and its lanes zeroed. ``u``, ``v``:
    ``(T, d)`` scratch; ``pl (3, L)`` float64 scratch: each lane's ``log d0``,
    accumulated log rescale factor and ``‖X‖²`` (:func:`layout.lane_sq_norms`).
    """
    B = logr.shape[0]
    L = lanes(X)
    N = sched.h.shape[0]
    floor2, log_tf = pair_floor(X)
    for g0 in range(0, B, L):
        nl = min(L, B - g0)
        live = 0
        for l in range(L):
            if l < nl:
                lg = initial_pair(u, v, seed, start + g0 + l, eps, x0, g0 + l)
                pl[0, l] = lg
                pl[1, l] = 0.0
                logr[g0 + l, 0] = 0.0
                status[g0 + l] = STATUS_OK
                if is_finite(lg):
                    live += 1
                else:
                    logr[g0 + l, :] = np.nan
                    status[g0 + l] = 0
            if l < nl and status[g0 + l] == STATUS_OK:
                load_lane(u, l, X)
                load_lane(v, l, Y)
            else:
                zero_lane(X, l)
                zero_lane(Y, l)
        st = status[g0 : g0 + nl]
        for n in range(N):
            if live == 0:
                break
            advance_group(X, model, sched, n, seed, start + g0, st, u, ss)
            advance_group(Y, model, sched, n, seed, start + g0, st, u, ss)
            lane_sq_norms(X, pl[2])
            for l in range(nl):
                if st[l] != STATUS_OK:
                    continue
                s = lane_sq_dist(X, Y, l, True)
                raw = 0.5 * math.log(s) - pl[0, l]
                if not is_normal(s) and lane_finite(X, l) and lane_finite(Y, l):
                    raw = scaled_log_norm(X, Y, l, L, True) - pl[0, l]
                if is_finite(raw):
                    logr[g0 + l, n + 1] = raw + pl[1, l]
                    if leaves_band(raw, s, pl[2, l], floor2):
                        pl[1, l] -= renormalize(X, Y, l, L, s, pl[2, l], pl[0, l], log_tf)
                else:
                    logr[g0 + l, n + 1 :] = np.nan
                    st[l] = n + 1
                    live -= 1
                    zero_lane(X, l)
                    zero_lane(Y, l)


@_djit
def tangent_lanes(model, sched, seed, start, x0, logr, status, u, v, acc, X, D, ss, ts):
    """Tangent mode of :func:`decay_rows` (:func:`run_tangent`) with the trajectories in
    groups of L across the vector lanes. The states and tangents are bit-identical to
    :func:`run_tangent`'s; the norms are summed lane by lane in the same order (LLVM
    may reassociate ``maths.sq_norm``'s reduction). ``acc (L,)`` float64 scratch: each
    lane's running ``log r``."""
    B = logr.shape[0]
    L = lanes(X)
    N = sched.h.shape[0]
    for g0 in range(0, B, L):
        nl = min(L, B - g0)
        for l in range(L):
            if l < nl:
                acc[l] = -initial_tangent(u, v, seed, start + g0 + l, x0, g0 + l)
                logr[g0 + l, 0] = 0.0
                status[g0 + l] = STATUS_OK
                load_lane(u, l, X)
                load_lane(v, l, D)
            else:
                zero_lane(X, l)
                zero_lane(D, l)
        live = nl
        st = status[g0 : g0 + nl]
        for n in range(N):
            if live == 0:
                break
            step_tangent(
                LANES, X, D, model, layer_of(model, n), sched.a, sched.b, sched.h[n], ss, ts
            )
            add_group_noise(X, n, sched.sigma, seed, start + g0, st, u)
            for l in range(nl):
                if st[l] != STATUS_OK:
                    continue
                ok = lane_finite(X, l)
                if ok:
                    s = lane_sq_dist(D, D, l, False)
                    nrm = math.sqrt(s)
                    ok = nrm > 0.0 and is_finite(nrm)
                    if not is_normal(s) and lane_finite(D, l):
                        lg = normalize_scaled(D, l, L)
                        ok = is_finite(lg)
                        if ok:
                            acc[l] += lg
                            logr[g0 + l, n + 1] = acc[l]
                            continue
                if not ok:
                    logr[g0 + l, n + 1 :] = np.nan
                    st[l] = n + 1
                    live -= 1
                    zero_lane(X, l)
                    zero_lane(D, l)
                    continue
                acc[l] += math.log(nrm)
                logr[g0 + l, n + 1] = acc[l]
                inv = 1.0 / nrm
                for t in range(D.shape[0]):
                    for j in range(l, D.shape[1], L):
                        D[t, j] = np.float64(D[t, j]) * inv


# ------------------------------------------------------ JVP and VJP of many states
@_djit
def jvp_batch(X, V, model, layers, out, fx, fs, ts):
    """``out[k] = f'(X[k])·V[k]`` with weight set ``layers[k]``, serially over k (row
    layout); ``fx (T, d)`` receives ``f(X[k])``."""
    for k in range(X.shape[0]):
        rhs_and_jvp(ROWS, X[k], V[k], model, layers[k], SUB_ATTN | SUB_FFN, fx, out[k], fs, ts)


@_djit
def layer_jvp_batch(X, D, model, layers, a, b, h, ss, ts):
    """``X[k] ← Φ(X[k])`` and ``D[k] ← Φ'(X[k])·D[k]`` in place for the layer map Φ of
    the block (tableau ``a``, ``b``, step ``h[k]``, weight set ``layers[k]``, no noise),
    serially over k (row layout): the Jacobian of a block's layer map, column by column."""
    for k in range(X.shape[0]):
        step_tangent(ROWS, X[k], D[k], model, layers[k], a, b, h[k], ss, ts)


@_djit
def vjp_batch(X, G, model, layers, out, vs):
    """``out[k] = f'(X[k])ᵀ·G[k]`` with weight set ``layers[k]``, serially over k."""
    for k in range(X.shape[0]):
        rhs_vjp(X[k], G[k], model, layers[k], out[k], vs)


# ------------------------------------------------------------ the Lyapunov spectrum
@_ijit
def dot64(U, V):
    """``⟨U, V⟩`` (Frobenius) of two arrays of the same shape, summed in float64."""
    s = 0.0
    for i in range(U.size):
        s += np.float64(U.flat[i]) * np.float64(V.flat[i])
    return s


@_jit
def orthonormalize(Q, logr):
    """QR of the ``k`` tangents ``Q (k, T, d)`` in place: ``Q ← Q̃`` with orthonormal
    columns, ``logr[j] = log R_jj`` (float64); returns whether every ``R_jj`` was
    positive and finite (else the trajectory ends).

    Modified Gram–Schmidt applied twice (MGS2): the second pass removes what the
    rounding of the first left, so ``Q̃`` is orthonormal to a few ulps however
    ill-conditioned ``Q`` was (Giraud, Langou & Rozložník 2005); ``R_jj`` is the norm
    of column j after both passes. Loops only: ``np.linalg`` would allocate inside
    compiled code. A column whose ``‖·‖²`` overflows (growth beyond about 1e154 between
    two factorizations) ends the trajectory, where tangent mode would rescale it.
    """
    k = Q.shape[0]
    for j in range(k):
        qj = Q[j]
        for _ in range(2):
            for i in range(j):
                qi = Q[i]
                r = dot64(qi, qj)
                for e in range(qj.size):
                    qj.flat[e] = np.float64(qj.flat[e]) - r * np.float64(qi.flat[e])
        nrm = math.sqrt(sq_norm(qj))  # as tangent mode's ‖δ‖: k = 1 gives its bits
        if not (nrm > 0.0 and is_finite(nrm)):
            return False
        logr[j] = math.log(nrm)
        inv = 1.0 / nrm
        for e in range(qj.size):
            qj.flat[e] = np.float64(qj.flat[e]) * inv
    return True


@_jit
def run_lyapunov(X, Q, model, draw, g, sched, transient, renorm_every, Xc, logr, acc, ss, ts):
    """All layers of one trajectory and its ``k`` tangents ``Q (k, T, d)``; ``acc (k,)``
    receives ``Σ log R_jj`` over the renormalizations after layer ``transient``;
    returns the status.

    Layer n advances tangent j by ``steps.step_tangent`` on a copy ``Xc`` of the state
    (each copy gets the bits of the plain flow), and the state becomes the last copy:
    k tangent steps per layer, k times the work of one tangent-mode trajectory. Up to
    layer ``transient`` the tangents are orthonormalized after every layer and their
    growth is dropped; after it, every ``renorm_every`` layers and after the last one,
    with the logs of the diagonal of R added up (:func:`orthonormalize`).
    """
    k = Q.shape[0]
    N = sched.h.shape[0]
    for j in range(k):
        acc[j] = 0.0
    if not orthonormalize(Q, logr):
        return 0
    for n in range(N):
        draw_layer(model, draw, g, n)
        for j in range(k):
            copy_state(X, Xc)
            step_tangent(
                ROWS, Xc, Q[j], model, layer_of(model, n), sched.a, sched.b, sched.h[n], ss, ts
            )
        copy_state(Xc, X)
        if not all_finite(X):
            return n + 1
        after = n + 1 - transient
        if after <= 0 or after % renorm_every == 0 or n + 1 == N:
            if not orthonormalize(Q, logr):
                return n + 1
            if after > 0:
                for j in range(k):
                    acc[j] += logr[j]
    return STATUS_OK


@_djit
def lyapunov_rows(
    model,
    draw,
    sched,
    seed,
    start,
    x0,
    transient,
    renorm_every,
    expo,
    status,
    X,
    Xc,
    Q,
    logr,
    ss,
    ts,
):
    """Σ log R_jj of the ``k`` leading tangents of trajectories ``start … start + B − 1``
    (row layout; the caller divides by the time after the transient).

    Parameters
    ----------
    model : structs.Model
    draw : structs.Draw
        ``structs.NO_DRAW``, or the weight ensemble whose member g trajectory g runs.
    sched : structs.Schedule
        The update (no noise: ``sched.sigma`` is not read).
    seed, start : int
        Trajectory ``g = start + b`` draws X_0 from ``(seed, STREAM_STATE, g)``
        (:func:`initial_state`) and its k initial tangents from the first ``k·T·d``
        normals of ``(seed, STREAM_DIRECTION, g)`` (the first tangent is tangent
        mode's direction U), then orthonormalized.
    x0 : ndarray, shape (B, T, d) or (0, T, d)
        The initial states, or none (drawn).
    transient, renorm_every : int
        See :func:`run_lyapunov`.
    expo : ndarray of float64, shape (B, k)
        Output: ``Σ log R_jj`` per trajectory and tangent (NaN when not OK).
    status : ndarray of int64, shape (B,)
        ``STATUS_OK``, else the first layer (1-based) where the state or a tangent was
        not finite or a tangent vanished (0: the initial tangents were dependent).
    X, Xc, Q, logr, ss, ts
        Buffers: two states ``(T, d)``, the tangents ``(k, T, d)``, ``logr (k,)``
        float64, a ``structs.StepScratch`` and a ``structs.TangentScratch``.
    """
    for b in range(expo.shape[0]):
        g = start + b
        initial_state(X, seed, g, x0, b)
        rng.fill_normal(rng.key(seed, rng.STREAM_DIRECTION, g), 0, 1.0, Q)
        status[b] = run_lyapunov(
            X, Q, model, draw, g, sched, transient, renorm_every, Xc, logr, expo[b], ss, ts
        )
        if status[b] != STATUS_OK:
            for j in range(expo.shape[1]):
                expo[b, j] = np.nan
