"""The weights of a weight ensemble, drawn inside the kernels.

Trajectory ``g`` of an ensemble has its own weights: the drivers
(:mod:`tfkernels.kernels.drivers`, row layout) call :func:`fill_weights` before its
first layer (or before every layer, ``Draw.per_layer``), writing the draw into the
slice's own copy of the model (:func:`slice_model`) in exactly the layout
``structs.pack_params`` gives, and then run the same layer code as for any model. The
numbers are the counter-based normals of key ``(seed, rng.STREAM_WEIGHTS, g)``, so an
ensemble needs no memory per trajectory and trajectory g gets the same weights in
any slice, chunk, thread or worker; ``WeightEnsemble.member(g)`` calls the same
compiled :func:`fill_weights` (:func:`member_model`), so a member run alone gets the
same bits.

The draw of one weight set (``TransformerParams.random``'s distribution and order;
``z`` standard normal, fan-in ``d`` or ``m = d_ff``), at counters ``n·n_draws + i``
for layer n's set (n = 0 without ``per_layer``), in this order, each matrix row-major:

* attention: ``wq, wk, wv, wo`` (d×d each), ``z·scale/√d``;
* FFN: ``w1`` (d×m) and ``b1`` (m), ``z·scale/√d``; ``w2`` (m×d) and ``b2`` (d),
  ``z·scale/√m``;
* linear: ``A`` (d×d), ``z·scale/√d``;
* attention biases (``bias=True``): ``bq, bk, bv, bo``, ``z·scale/√d``;
* norms: for each parameter the norm has (gain, then bias: layernorm both, rmsnorm
  the gain), for each sub-layer that is on (attention, then FFN): ``d`` values, a
  gain ``1 + z/4``, a bias ``z/4``.

The final norm's parameters (``final_norm=True``, applied by ``integrate`` after the
last layer) come from key ``(seed, rng.STREAM_FINAL_NORM, g)``: the gain ``1 + z/4`` at
counters ``0 … d − 1``, the bias ``z/4`` (layernorm) at ``d … 2d − 1``
(:func:`fill_final_norm`).

Every value is formed in float64 and rounded once to the state dtype. This module is
compiled with strict IEEE arithmetic (``config.RNG_FASTMATH``), like the generator.
"""

import math

import numpy as np
from numba import njit

from .. import config
from ..methods import NORMS
from . import rng
from .structs import Draw, Ensemble

_jit = njit(
    cache=config.CACHE,
    fastmath=config.RNG_FASTMATH,
    error_model=config.ERROR_MODEL,
    _nrt=config.WORKER_NRT,
)

_LAYERNORM, _RMSNORM = NORMS["layernorm"], NORMS["rmsnorm"]


@_jit
def _rows(k, off, c, M, c0, width):
    """Rows of ``M[0]``'s columns ``c0 … c0 + width − 1`` get ``c·z`` from counter
    ``off`` on, row-major; returns the next counter. Indexed loops with the normal
    inlined (``rng._normal``, under this module's strict flags, as in
    ``rng.fill_normal``), so that no row slice is built."""
    for r in range(M.shape[1]):
        base = off + r * width
        for j in range(width):
            M[0, r, c0 + j] = c * rng._normal(k, base + j)
    return off + M.shape[1] * width


@_jit
def _vector(k, off, shift, c, v, c0, width):
    """``v[0, c0 + j] = shift + c·z`` for j < ``width``; returns the next counter."""
    for j in range(width):
        v[0, c0 + j] = shift + c * rng._normal(k, off + j)
    return off + width


@_jit
def _norm_vector(k, off, shift, c, v, sub, width):
    """``v[0, sub, j] = shift + c·z`` for j < ``width`` (a norm's gain or bias);
    returns the next counter."""
    for j in range(width):
        v[0, sub, j] = shift + c * rng._normal(k, off + j)
    return off + width


@_jit
def fill_weights(model, draw, g, layer):
    """Draw weight set ``layer`` of trajectory ``g`` into ``model``'s one weight set, in
    place (the module docstring gives the distribution and the order).

    ``model`` a ``structs.Model`` from :func:`slice_model` (writable, one weight set),
    ``draw`` its ``structs.Draw``. Only the arrays the flow and its tangent read are
    filled: the transposes ``*_t`` of the vector–Jacobian product stay empty.
    """
    k = rng.key(draw.seed, rng.STREAM_WEIGHTS, g)
    off = layer * draw.n_draws
    w, s, b = model.weights, model.settings, model.block
    scale = draw.scale
    if s.attention:
        d = w.wqkv.shape[1]
        c = scale / math.sqrt(d)
        for part in range(3):
            off = _rows(k, off, c, w.wqkv, part * d, d)
        off = _rows(k, off, c, w.wo, 0, d)
    if s.ffn:
        d, m = w.w1.shape[1], w.w1.shape[2]
        c = scale / math.sqrt(d)
        off = _rows(k, off, c, w.w1, 0, m)
        off = _vector(k, off, 0.0, c, w.b1, 0, m)
        c = scale / math.sqrt(m)
        off = _rows(k, off, c, w.w2, 0, d)
        off = _vector(k, off, 0.0, c, w.b2, 0, d)
    if s.linear:
        d = w.A.shape[1]
        off = _rows(k, off, scale / math.sqrt(d), w.A, 0, d)
    if b.bqkv.shape[1] > 0:
        d = b.bo.shape[1]
        c = scale / math.sqrt(d)
        for part in range(4):
            if part < 3:
                off = _vector(k, off, 0.0, c, b.bqkv, part * d, d)
            else:
                off = _vector(k, off, 0.0, c, b.bo, 0, d)
    if b.norm == _LAYERNORM or b.norm == _RMSNORM:
        d = b.norm_gain.shape[2]
        n_kinds = 2 if b.norm == _LAYERNORM else 1
        for kind in range(n_kinds):
            for sub in range(2):
                if (sub == 0 and s.attention) or (sub == 1 and s.ffn):
                    if kind == 0:
                        off = _norm_vector(k, off, 1.0, 0.25, b.norm_gain, sub, d)
                    else:
                        off = _norm_vector(k, off, 0.0, 0.25, b.norm_bias, sub, d)


@_jit
def fill_final_norm(seed, g, kind, gain, bias):
    """The final norm's ``gain (d,)`` and ``bias (d,)`` of trajectory ``g`` (``kind`` a
    ``methods.NORMS`` code: layernorm draws both, rmsnorm the gain; others nothing)."""
    k = rng.key(seed, rng.STREAM_FINAL_NORM, g)
    d = gain.shape[0]
    if kind == _LAYERNORM or kind == _RMSNORM:
        for j in range(d):
            gain[j] = 1.0 + 0.25 * rng._normal(k, j)
    if kind == _LAYERNORM:
        for j in range(d):
            bias[j] = 0.25 * rng._normal(k, d + j)


def count_draws(model):
    """Normals per weight set of ``model`` (a ``structs.Model`` with one set): the
    counter stride between the sets of consecutive layers."""
    w, s, b = model.weights, model.settings, model.block
    n = 0
    if s.attention:
        n += w.wqkv[0].size + w.wo[0].size
    if s.ffn:
        n += w.w1[0].size + w.b1[0].size + w.w2[0].size + w.b2[0].size
    if s.linear:
        n += w.A[0].size
    n += b.bqkv[0].size + b.bo[0].size
    if int(b.norm) in (_LAYERNORM, _RMSNORM):
        kinds = 2 if int(b.norm) == _LAYERNORM else 1
        n += kinds * (int(s.attention) + int(s.ffn)) * b.norm_gain.shape[2]
    return n


def _drawn(model):
    """The arrays of ``model`` that :func:`fill_weights` writes (those of the terms
    that are on, with the biases and norm parameters it draws)."""
    w, s, b = model.weights, model.settings, model.block
    out = []
    if s.attention:
        out += [w.wqkv, w.wo]
    if s.ffn:
        out += [w.w1, w.b1, w.w2, w.b2]
    if s.linear:
        out.append(w.A)
    if b.bqkv.shape[1]:
        out += [b.bqkv, b.bo]
    return out


def pack_ensemble(template, seed, scale, per_layer, final=None):
    """The :class:`~.structs.Ensemble` of a weight ensemble.

    Parameters
    ----------
    template : structs.Model
        ``pack_params`` of a ``TransformerParams`` with the ensemble's structure and
        shared weights (one set): its drawn entries are set to NaN here (an entry
        :func:`fill_weights` missed would show), the rest (an absent sub-layer's norm
        gain, rmsnorm's zero bias) kept; the transposes are emptied.
    seed : int
    scale : float
    per_layer : bool
    final : (int, float) or None
        The final norm's ``(kind, eps)``, or None.

    Returns
    -------
    structs.Ensemble
    """
    w, s, b = template.weights, template.settings, template.block
    empty = np.zeros((1, 0, 0), dtype=w.wqkv.dtype)
    model = template._replace(
        weights=w._replace(wqkv_t=empty, wo_t=empty, w1_t=empty, w2_t=empty, A_t=empty),
        settings=s._replace(symmetric=False),  # each trajectory draws its own W_q, W_k
    )
    for a in _drawn(model):
        a[...] = np.nan
    if int(b.norm) in (_LAYERNORM, _RMSNORM):
        for sub, on in enumerate((s.attention, s.ffn)):
            if on:
                b.norm_gain[:, sub] = np.nan
                if int(b.norm) == _LAYERNORM:
                    b.norm_bias[:, sub] = np.nan
    draw = Draw(
        on=True,
        per_layer=bool(per_layer),
        seed=np.int64(seed),
        scale=float(scale),
        n_draws=np.int64(count_draws(model)),
    )
    return Ensemble(model, draw, final)


def slice_model(ens):
    """A writable copy of ``ens.template`` (a ``structs.Ensemble``) for one slice of a
    batch: the buffers :func:`fill_weights` draws each trajectory's weights into (the
    weights, attention biases and norm parameters copied; the rest shared)."""
    m = ens.template
    w = m.weights._make(np.array(a, copy=True) for a in m.weights)
    k = m.block
    block = k._replace(
        **{n: getattr(k, n).copy() for n in ("bqkv", "bo", "norm_gain", "norm_bias")}
    )
    return m._replace(weights=w, block=block)


def member_model(ens, g, n_sets):
    """The weight sets ``0 … n_sets − 1`` of trajectory ``g`` of the ensemble ``ens``,
    drawn by the compiled :func:`fill_weights` (the drivers' own draw).

    Returns
    -------
    list of structs.Model
        One single-set model per weight set (copies), in the packed layout.
    """
    out = []
    for n in range(n_sets):
        m = slice_model(ens)
        fill_weights(m, ens.draw, np.int64(g), np.int64(n))
        out.append(m)
    return out
