"""The named structures every kernel takes, and the Python that builds them.

Compiled code receives its arguments as named tuples (Numba types each one by its
fields, so a kernel reads ``model.weights.wqkv[layer]``, never ``W[0][layer]``):

* :class:`Weights` — the weight arrays, each with a leading layer axis of length L
  (L = 1 for shared weights); absent terms are empty arrays;
* :class:`Settings` — the model's scalars (heads, mask, activation code, which terms
  are on, whether weights are per layer, β and γ in the state dtype);
* :class:`Block` — the attention biases, the norms' parameters and the layer's
  sub-steps; :class:`PlainBlock`, the same fields for the paper's field (one
  sub-step, no norm), a type of its own so that its kernels leave the block code out;
* :class:`Model` — ``(weights, settings, block)``, what :func:`pack_params` returns;
* :class:`Draw`, :class:`Ensemble` — a weight ensemble: how a trajectory's weights
  are drawn inside the kernels (:mod:`tfkernels.kernels.draws`), and the model whose
  arrays each slice's copy receives them in;
* :class:`Schedule` — the update: tableau ``a``, ``b``, step sizes ``h`` and noise
  scales ``sigma`` per layer;
* :class:`FieldScratch`, :class:`StepScratch`, :class:`TangentScratch`,
  :class:`VjpScratch` — a slice's buffers, allocated here in Python (the compiled
  drivers allocate nothing, see :mod:`tfkernels.kernels.jit`);
* :data:`ROWS`, :data:`LANES` — the two kernel layouts (one trajectory at a time; a
  group of :func:`group_width` trajectories across the vector lanes), the first
  argument of the layout-generic kernels (:mod:`tfkernels.kernels.layout`).

One definition serves both layouts; a field a layout does not use is an empty array.
"""

import math
from collections import namedtuple

import numpy as np

from .. import config
from ..methods import ACTIVATIONS, NORMS, sub_steps
from .simd import VECTOR_BYTES

#: Value of ``status`` for a trajectory that stayed finite through every layer.
STATUS_OK = -1

Weights = namedtuple(
    "Weights", ["wqkv", "wo", "w1", "b1", "w2", "b2", "A", "wqkv_t", "wo_t", "w1_t", "w2_t", "A_t"]
)
Weights.__doc__ = """The weights with a leading layer axis (:func:`pack_params`).

``wqkv (L, d, 3d)`` is ``[wq | wk | wv]`` (Q, K and V from one pass over X), ``wo (L, d,
d)``, ``w1 (L, d, m)``, ``b1 (L, m)``, ``w2 (L, m, d)``, ``b2 (L, d)``, ``A (L, d, d)``;
the ``*_t`` are the same matrices transposed, for the products with ``Wᵀ`` of the
vector–Jacobian product. In the lane layout ``b1``, ``b2`` are repeated per lane
(``(L, m·G)``, ``(L, d·G)`` for G lanes: :func:`for_lanes`)."""

Settings = namedtuple(
    "Settings",
    [
        "n_heads",
        "causal",
        "activation",
        "attention",
        "ffn",
        "linear",
        "per_layer",
        "beta",
        "damping",
        "symmetric",
    ],
)
Settings.__doc__ = """The model's scalars: ``n_heads``, ``activation`` (a code of
``methods.ACTIVATIONS``) as int64; ``causal``, ``attention``, ``ffn``, ``linear`` (which
terms are on) and ``per_layer`` (layer n uses weight set n, else set 0) as bool;
``beta`` and ``damping`` (γ) in the state dtype; ``symmetric`` (bool): every weight
set has ``W_q = W_k`` and ``b_q = b_k`` and the model is not causal, so each head's
scores are a symmetric matrix and the softmax shares half of its exponentials
(:func:`symmetric_scores`, ``maths.symmetric_exps``)."""

Block = namedtuple(
    "Block",
    [
        "bqkv",
        "bo",
        "norm_gain",
        "norm_bias",
        "subs",
        "fracs",
        "posts",
        "norm",
        "pre",
        "tangent",
        "eps",
    ],
)
Block.__doc__ = """The block around the field (``TransformerParams``, "blocks"), the same
structure for every model (the paper's parallel field without norms is one sub-step
of both sub-layers, no norm, no bias):

* ``bqkv (L, 3d)`` ``[bq | bk | bv]`` and ``bo (L, d)``, the attention biases
  (``(L, 0)``: none; repeated per lane in the lane layout, :func:`for_lanes`);
* ``norm_gain``, ``norm_bias (L, 2, d)``: the attention's (index 0) and the FFN's
  (index 1) norm parameters (ones and zeros where the norm has none; ``(L, 2, 0)``
  without a norm or for the sphere);
* the sub-steps of a layer in order (``methods``' block rules, from
  ``reference``-independent Python in :func:`sub_steps`): ``subs (k,)`` which
  sub-fields each advances (bit 1 attention, bit 2 the FFN and the linear terms),
  ``fracs (k,)`` its fraction of the step, ``posts (k,)`` the norm after it (0
  attention's, 1 the FFN's, −1 none);
* ``norm`` (``methods.NORMS`` code), ``pre`` (the sub-fields read normed tokens),
  ``tangent`` (fields projected on the sphere's tangent spaces), ``eps``."""

PlainBlock = namedtuple("PlainBlock", Block._fields)
PlainBlock.__doc__ = """A :class:`Block` of the paper's parallel field without a norm (one
sub-step of the whole field with fraction 1, no post norm; biases allowed): the same
fields, a different type, so that the kernels of such a model are compiled without the
norm, projection and sub-step code (``jit.by_block``)."""

#: Sub-field bits of ``Block.subs``.
SUB_ATTN, SUB_FFN = 1, 2

Model = namedtuple("Model", ["weights", "settings", "block"])
Model.__doc__ = """A model as the kernels take it: :class:`Weights`, :class:`Settings`
and :class:`Block`."""

Draw = namedtuple("Draw", ["on", "per_layer", "seed", "scale", "n_draws"])
Draw.__doc__ = """How the drivers draw a trajectory's weights (``draws.fill_weights``): ``on``
(bool; False: the model's own weights, :data:`NO_DRAW`), ``per_layer`` (bool: a fresh
draw before every layer, else one before the first), ``seed`` (int64: the ensemble's;
trajectory g's numbers come from key ``(seed, rng.STREAM_WEIGHTS, g)``), ``scale``
(float64, the ``weight_scale``) and ``n_draws`` (int64, normals per weight set: layer
n's set starts at counter offset ``n·n_draws``)."""

#: The draw of every model that is not an ensemble (same types, so one compile).
NO_DRAW = Draw(False, False, np.int64(0), 0.0, np.int64(0))

Ensemble = namedtuple("Ensemble", ["template", "draw", "final"])
Ensemble.__doc__ = """A weight ensemble as the dispatchers take it (``draws.pack_ensemble``):
``template`` a :class:`Model` with one weight set whose drawn entries are NaN (each
slice gets a writable copy, ``draws.slice_model``, that the drivers fill per
trajectory), ``draw`` its :class:`Draw` and ``final`` the final norm's ``(kind, eps)``
(int64 ``methods.NORMS`` code, ``eps`` in the state dtype) or None."""

Schedule = namedtuple("Schedule", ["a", "b", "h", "sigma"])
Schedule.__doc__ = """One layer's update for every layer n: the explicit Runge–Kutta
tableau ``a (s, s)``, ``b (s,)``, step sizes ``h (N,)`` (Δt, or α_n·c for the averaged
update) and noise scales ``sigma (N,)`` (0: none), all in the state dtype."""

FieldScratch = namedtuple("FieldScratch", ["qkv", "heads", "hidden", "mt", "qt", "P", "xn", "red"])
FieldScratch.__doc__ = """Buffers of one evaluation of ``f``: ``qkv`` (X·[Wq|Wk|Wv]),
``heads`` (the heads' outputs: transposed ``(d, T)`` in rows, ``(T, d·G)`` in lanes),
``hidden`` (the FFN's hidden layer), ``mt`` (the softmax's column maxima, sums and query
indices), ``qt`` (the scaled Qᵀ, rows only), ``P`` (the probabilities of a group of
heads, transposed, side by side), ``xn`` (a sub-layer's normed input, state-shaped;
``(0, 0)`` without a pre norm) and ``red (2, L)`` (float64 per-lane sums of the norms)."""

StepScratch = namedtuple("StepScratch", ["stages", "xs", "field"])
StepScratch.__doc__ = """Buffers of one Runge–Kutta step: ``stages (s, …)`` the stage
derivatives, ``xs`` a stage input, ``field`` a :class:`FieldScratch`."""

TangentScratch = namedtuple(
    "TangentScratch",
    ["dstages", "ds", "S", "dqkv", "dP", "dheads", "dhidden", "qtd", "dxn", "red"],
)
TangentScratch.__doc__ = """Buffers of the tangent (JVP) of a step, beside a
:class:`StepScratch`: tangent stages and stage input, ``S`` the activation's derivative
σ'(z), and the tangents of ``qkv``, of a head's probabilities, of the heads' outputs, of
the hidden layer, ``qtd`` the scaled dQᵀ (rows only), ``dxn`` the tangent of a
sub-layer's normed input (``(0, 0)`` without a pre norm) and ``red (4, L)`` (float64
per-lane sums of the norms' derivatives)."""

VjpScratch = namedtuple("VjpScratch", ["qkv", "dqkv", "go", "P", "dS", "hidden", "ghidden"])
VjpScratch.__doc__ = "Buffers of the vector–Jacobian product (rows layout only)."

GeometryConfig = namedtuple(
    "GeometryConfig",
    ["which", "cols", "dens_threshold", "cluster_threshold", "energy_beta", "primes"],
)
GeometryConfig.__doc__ = """What the geometry drivers measure (``kernels.geometry``):
``which`` the bits of the metrics asked for, ``cols (6,)`` (int64) the column of ``vals``
of each (−1 if not asked for), the two cosine thresholds, the energy's β (float64) and
``primes`` (int64), enough primes below 2^31 for the exact cluster count of T tokens
(:func:`rank_primes`)."""

GeometryScratch = namedtuple(
    "GeometryScratch",
    ["Xs", "U", "C", "acc", "mean", "ok", "s1", "s2", "masks", "reps", "A", "M"],
)
GeometryScratch.__doc__ = """Buffers of ``kernels.geometry.measure_group`` for a
``(T, d)`` state and L lanes (float64 whatever the state dtype): the scaled state
``Xs`` and unit tokens ``U (T, d·L)``, the cosines ``C (T, T, L)`` (for the cluster
count and the energy), per-lane sums ``acc (14, L)``, the column means ``mean (d, L)``,
flags ``ok (L,)``, the scalings ``s1``, ``s2
(L,)``, the bit masks of the thresholded cosines ``masks (T, ⌈T/64⌉, L)`` (uint64) and
the exact rank's ``reps (T,)``, ``A``, ``M (T, T)`` (int64)."""

#: The row layout: one trajectory's ``(T, d)`` state at a time; its products
#: vectorize along the rows (``simd.gemm``).
ROWS = 0
#: The lane layout: a group of L = :func:`group_width` trajectories (the lanes of one
#: vector) stored lane-interleaved, element ``(t, j)`` of lane l at ``X[t, j·L + l]``;
#: its products are broadcast-FMA tiles (``simd.lgemm``).
LANES = 1


def group_width(dtype):
    """Trajectories per group of the lane layout: the lanes of one vector of ``dtype``."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def use_lanes(T, d):
    """Whether a ``(T, d)`` configuration runs in the lane layout: states of at most
    ``config.LANES_MAX_SIZE`` elements. Both layouts give the same bits, so this is a
    choice of speed only."""
    return T * d <= config.LANES_MAX_SIZE


def pack_params(params):
    """Lay ``params`` out as the :class:`Model` every kernel takes.

    Parameters
    ----------
    params : TransformerParams

    Returns
    -------
    Model
        Fresh writable C-contiguous copies of the weights (Numba types read-only arrays
        differently, and mixing the two would multiply the specializations) with a
        leading layer axis, their transposes, and the settings.
    """
    dt = params.dtype
    lead = (1,) if params.n_sets is None else ()

    def layered(a):
        return np.array(a.reshape(lead + a.shape), dtype=dt, order="C", copy=True)

    def empty(ndim):
        # A term that is off still gets one (empty) set per layer: the kernels take
        # ``w.A[layer]`` before testing ``s.linear``, and that index must be in bounds
        # (NUMBA_BOUNDSCHECK=1 runs of the tests check it).
        return np.zeros((params.n_sets or 1,) + (0,) * (ndim - 1), dtype=dt)

    if params.attention:
        wqkv = layered(np.concatenate([params.wq, params.wk, params.wv], axis=-1))
        wo = layered(params.wo)
    else:
        wqkv, wo = empty(3), empty(3)
    if params.ffn:
        w1, b1, w2, b2 = (layered(getattr(params, k)) for k in ("w1", "b1", "w2", "b2"))
    else:
        w1, b1, w2, b2 = empty(3), empty(2), empty(3), empty(2)
    A = layered(params.linear) if params.linear is not None else empty(3)
    transposed = (np.ascontiguousarray(w.transpose(0, 2, 1)) for w in (wqkv, wo, w1, w2, A))
    weights = Weights(wqkv, wo, w1, b1, w2, b2, A, *transposed)
    block = pack_block(params, layered)
    settings = Settings(
        n_heads=np.int64(params.n_heads),
        causal=bool(params.causal),
        activation=np.int64(ACTIVATIONS[params.activation]),
        attention=bool(params.attention),
        ffn=bool(params.ffn),
        linear=params.linear is not None,
        per_layer=params.n_sets is not None and params.n_sets > 1,
        beta=dt.type(params.beta),
        damping=dt.type(params.damping),
        symmetric=symmetric_scores(wqkv, block.bqkv, bool(params.causal)),
    )
    return Model(weights, settings, block)


def symmetric_scores(wqkv, bqkv, causal):
    """Whether every head's attention scores are a symmetric matrix by construction:
    not causal, and ``W_q = W_k``, ``b_q = b_k`` (exactly) in every weight set of the
    packed ``wqkv (L, d, 3d)`` and ``bqkv (L, 3d)`` (or ``(L, 0)``: no bias). Then
    ``S_h = s·Q_h Q_hᵀ`` is positive semi-definite for any state."""
    d = wqkv.shape[1]
    if causal or d == 0:  # d = 0: attention off, its weights empty
        return False
    same_w = np.array_equal(wqkv[:, :, :d], wqkv[:, :, d : 2 * d])
    same_b = bqkv.shape[1] == 0 or np.array_equal(bqkv[:, :d], bqkv[:, d : 2 * d])
    return bool(same_w and same_b)


def pack_block(params, layered):
    """The :class:`Block` of ``params``; ``layered(a)`` gives a vector ``(d,)`` or
    ``(L, d)`` its layer axis (as :func:`pack_params` does for the weights)."""
    dt, d, n = params.dtype, params.d, params.n_sets or 1

    def vectors(names, default):
        # absent vectors are ``default`` (0 or 1), so that the kernels add or multiply
        # them without a test; all absent: an empty set per layer
        given = [getattr(params, k) for k in names]
        if all(g is None for g in given):
            return np.zeros((n, 0), dtype=dt)
        full = [
            np.full((d,), default, dtype=dt) if g is None else np.asarray(g, dtype=dt)
            for g in given
        ]
        lead = () if params.n_sets is None else (n,)
        return layered(np.concatenate([np.broadcast_to(f, lead + (d,)) for f in full], axis=-1))

    bqkv = vectors(("bq", "bk", "bv"), 0.0) if params.attention else np.zeros((n, 0), dt)
    bo = vectors(("bo",), 0.0) if params.attention else np.zeros((n, 0), dt)
    if params.norm in ("layernorm", "rmsnorm"):
        gain = vectors(("attn_norm_gain", "ffn_norm_gain"), 1.0)
        # no gain given: ones (the norm still scales by 1/sqrt(var + eps))
        gain = gain.reshape(n, 2, d) if gain.shape[1] else np.ones((n, 2, d), dtype=dt)
        bias = vectors(("attn_norm_bias", "ffn_norm_bias"), 0.0)
        bias = bias.reshape(n, 2, d) if bias.shape[1] else np.zeros((n, 2, d), dtype=dt)
    else:
        gain = bias = np.zeros((n, 2, 0), dtype=dt)
    steps = sub_steps(params)
    bit = {"attn": SUB_ATTN, "ffn": SUB_FFN}
    post = {None: -1, "attn": 0, "ffn": 1}
    plain = params.norm is None and params.block == "parallel"
    if plain and (len(steps) != 1 or steps[0][1:] != (1.0, None)):
        raise AssertionError(f"a plain block with sub-steps {steps}")
    return (PlainBlock if plain else Block)(
        bqkv=bqkv,
        bo=bo,
        norm_gain=np.ascontiguousarray(gain),
        norm_bias=np.ascontiguousarray(bias),
        subs=np.array([sum(bit[k] for k in subs) for subs, _, _ in steps], dtype=np.int64),
        fracs=np.array([f for _, f, _ in steps], dtype=dt),
        posts=np.array([post[p] for _, _, p in steps], dtype=np.int64),
        norm=np.int64(NORMS[params.norm or "none"]),
        pre=params.norm is not None and params.norm_position == "pre",
        tangent=params.norm_position == "tangent" and params.norm == "sphere",
        eps=dt.type(params.norm_eps),
    )


def final_norm(params):
    """``(kind, gain (d,), bias (d,), eps)`` of the final norm of ``params`` for
    ``norms.norm_tokens``, or None when it has none."""
    if not params.final_norm:
        return None
    dt, d = params.dtype, params.d
    gain, bias = params.final_norm_gain, params.final_norm_bias
    return (
        np.int64(NORMS[params.norm]),
        np.ones(d, dt) if gain is None else np.array(gain, dtype=dt),
        np.zeros(d, dt) if bias is None else np.array(bias, dtype=dt),
        dt.type(params.norm_eps),
    )


def for_lanes(model):
    """``model`` with the biases repeated per lane, ``b1 (L, m·G)``, ``b2 (L, d·G)``,
    ``bqkv (L, 3d·G)`` and ``bo (L, d·G)`` lane-interleaved like the states, so that
    the bias adds run along whole rows (the norms' gains and biases are read per
    element, ``norms``)."""
    G = group_width(model.weights.b1.dtype)
    w, k = model.weights, model.block
    return model._replace(
        weights=w._replace(b1=np.repeat(w.b1, G, axis=-1), b2=np.repeat(w.b2, G, axis=-1)),
        block=k._replace(bqkv=np.repeat(k.bqkv, G, axis=-1), bo=np.repeat(k.bo, G, axis=-1)),
    )


# --------------------------------------------------------------------- buffers
def empty_aligned(shape, dtype):
    """``np.empty(shape, dtype)`` starting on a 64-byte boundary (a cache line, one
    AVX-512 vector), so that no vector load of a row start splits two lines."""
    return aligned_buffers((shape,), dtype)[0]


def aligned_buffers(shapes, dtype):
    """Empty arrays of the given shapes, each starting on a 64-byte boundary, carved
    from one allocation (one ``np.empty`` instead of one per buffer).

    Returns
    -------
    list of ndarray
        C-contiguous, writable, of ``dtype``, in the order of ``shapes``.
    """
    dtype = np.dtype(dtype)
    sizes = [math.prod(shape) * dtype.itemsize for shape in shapes]
    starts, total = [], 0
    for n in sizes:
        starts.append(total)
        total += -(-n // 64) * 64
    buf = np.empty(total + 64, dtype=np.uint8)
    base = -buf.ctypes.data % 64
    return [
        buf[base + o : base + o + n].view(dtype).reshape(shape)
        for o, n, shape in zip(starts, sizes, shapes)
    ]


def head_group(model, T, dtype):
    """Heads whose probabilities ``P`` holds side by side in the row layout: all H unless
    ``H·T²`` elements pass ``config.SOFTMAX_BLOCK_BYTES``."""
    s = model.settings
    H = int(s.n_heads) if s.attention else 1
    return max(1, min(H, config.SOFTMAX_BLOCK_BYTES // (T * T * np.dtype(dtype).itemsize)))


def step_scratch(layout, model, T, d, n_stages, dtype):
    """One slice's :class:`StepScratch` for ``layout`` (:data:`ROWS` or :data:`LANES`)
    and a ``(T, d)`` state; ``n_stages`` RK stages.

    Row layout: stages ``(S, T, d)``, ``xs (T, d)``, and ``qkv (T, 3d)``, ``heads (d, T)``,
    ``hidden (T, m)``, ``mt (3, G·T)``, ``qt (d, T)``, ``P (T, G·T)`` for a group of G
    heads (:func:`head_group`), ``xn (T, d)`` with a pre norm, ``red (2, 1)``. Lane
    layout (L lanes): every row L times as wide, ``heads (T, d·L)``, ``P (T, H·T·L)``,
    ``mt (3, H·T·L)``, no ``qt``, ``red (2, L)``.
    """
    m = model.weights.w2.shape[1]
    L = 1 if layout == ROWS else group_width(dtype)
    xn = (T, d * L) if model.block.pre else (0, 0)
    if layout == ROWS:
        G = head_group(model, T, dtype)
        stages, xs, *fs = aligned_buffers(
            (
                (n_stages, T, d),
                (T, d),
                (T, 3 * d),
                (d, T),
                (T, m),
                (3, G * T),
                (d, T),
                (T, G * T),
                xn,
            ),
            dtype,
        )
    else:
        H = int(model.settings.n_heads) if model.settings.attention else 1
        stages, xs, *fs = aligned_buffers(
            (
                (n_stages, T, d * L),
                (T, d * L),
                (T, 3 * d * L),
                (T, d * L),
                (T, m * L),
                (3, H * T * L),
                (0, 0),
                (T, H * T * L),
                xn,
            ),
            dtype,
        )
    return StepScratch(stages, xs, FieldScratch(*fs, np.zeros((2, L))))


def tangent_scratch(layout, model, T, d, n_stages, dtype):
    """One slice's :class:`TangentScratch` for ``layout`` (beside :func:`step_scratch`'s):
    ``dstages (S, T, d·L)``, ``ds (T, d·L)``, ``S (T, m·L)``, ``dqkv (T, 3d·L)``,
    ``dP (T, T·L)``, ``dheads`` (``(d, T)`` rows, ``(T, d·L)`` lanes), ``dhidden (T, m·L)``
    and ``qtd (d, T)`` (rows; empty in lanes), L = 1 in the row layout."""
    m = model.weights.w2.shape[1]
    rows = layout == ROWS
    L = 1 if rows else group_width(dtype)
    return TangentScratch(
        *aligned_buffers(
            (
                (n_stages, T, d * L),
                (T, d * L),
                (T, m * L),
                (T, 3 * d * L),
                (T, T * L),
                (d, T) if rows else (T, d * L),
                (T, m * L),
                (d, T) if rows else (0, 0),
                (T, d * L) if model.block.pre else (0, 0),
            ),
            dtype,
        ),
        np.zeros((4, L)),
    )


def vjp_scratch(model, T, d, dtype):
    """The :class:`VjpScratch` of a ``(T, d)`` state: ``qkv``, ``dqkv (T, 3d)``,
    ``go (T, d)``, ``P``, ``dS (T, T)``, ``hidden``, ``ghidden (T, m)``."""
    m = model.weights.w2.shape[1]
    return VjpScratch(
        *aligned_buffers(((T, 3 * d), (T, 3 * d), (T, d), (T, T), (T, T), (T, m), (T, m)), dtype)
    )


def geometry_scratch(T, d, L):
    """One slice's :class:`GeometryScratch` for ``(T, d)`` states and ``L`` lanes."""
    Xs, U, C, acc, mean = aligned_buffers(
        ((T, d * L), (T, d * L), (T, T, L), (14, L), (d, L)), np.float64
    )
    return GeometryScratch(
        Xs,
        U,
        C,
        acc,
        mean,
        np.zeros(L, dtype=np.bool_),
        np.zeros(L),
        np.zeros(L),
        np.zeros((T, (T + 63) // 64, L), dtype=np.uint64),
        np.zeros(T, dtype=np.int64),
        np.zeros((T, T), dtype=np.int64),
        np.zeros((T, T), dtype=np.int64),
    )


def _is_prime(n):
    """Deterministic Miller–Rabin for ``n < 3 215 031 751`` (bases 2, 3, 5, 7)."""
    if n < 2 or n % 2 == 0:
        return n == 2
    r, s = n - 1, 0
    while r % 2 == 0:
        r //= 2
        s += 1
    for a in (2, 3, 5, 7):
        if a % n == 0:
            continue
        x = pow(a, r, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def hadamard_log2(m):
    """``log2`` of the Hadamard bound ``(m + 1)^{(m+1)/2} / 2^m`` on the determinant of
    an ``m × m`` 0/1 matrix (increasing in m: it bounds every minor of size ≤ m)."""
    return 0.5 * (m + 1) * math.log2(m + 1) - m


def rank_primes(T):
    """The largest primes below 2^31, as many as make their product exceed the Hadamard
    bound of a ``T × T`` 0/1 matrix (int64 array; ``kernels.geometry.exact_rank``):
    T = 32 needs 2."""
    need = hadamard_log2(T) + 1.0  # a margin of a factor 2
    primes, got, n = [], 0.0, 2**31 - 1
    while got < need:
        if _is_prime(n):
            primes.append(n)
            got += math.log2(n)
        n -= 2
    return np.array(primes, dtype=np.int64)
