"""The named structures every kernel takes, and the Python that builds them.

Compiled code receives its arguments as named tuples (Numba types each one by its
fields, so a kernel reads ``model.weights.wqkv[layer]``, never ``W[0][layer]``):

* :class:`Weights` — the weight arrays, each with a leading layer axis of length L
  (L = 1 for shared weights); absent terms are empty arrays;
* :class:`Settings` — the model's scalars (heads, mask, activation code, which terms
  are on, whether weights are per layer, β and γ in the state dtype);
* :class:`Model` — ``(weights, settings)``, what :func:`pack_params` returns;
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
from ..methods import ACTIVATIONS
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
    ],
)
Settings.__doc__ = """The model's scalars: ``n_heads``, ``activation`` (a code of
``methods.ACTIVATIONS``) as int64; ``causal``, ``attention``, ``ffn``, ``linear`` (which
terms are on) and ``per_layer`` (layer n uses weight set n, else set 0) as bool;
``beta`` and ``damping`` (γ) in the state dtype."""

Model = namedtuple("Model", ["weights", "settings"])
Model.__doc__ = "A model as the kernels take it: :class:`Weights` and :class:`Settings`."

Schedule = namedtuple("Schedule", ["a", "b", "h", "sigma"])
Schedule.__doc__ = """One layer's update for every layer n: the explicit Runge–Kutta
tableau ``a (s, s)``, ``b (s,)``, step sizes ``h (N,)`` (Δt, or α_n·c for the averaged
update) and noise scales ``sigma (N,)`` (0: none), all in the state dtype."""

FieldScratch = namedtuple("FieldScratch", ["qkv", "heads", "hidden", "mt", "qt", "P"])
FieldScratch.__doc__ = """Buffers of one evaluation of ``f``: ``qkv`` (X·[Wq|Wk|Wv]),
``heads`` (the heads' outputs: transposed ``(d, T)`` in rows, ``(T, d·G)`` in lanes),
``hidden`` (the FFN's hidden layer), ``mt`` (the softmax's column maxima, sums and query
indices), ``qt`` (the scaled Qᵀ, rows only) and ``P`` (the probabilities of a group of
heads, transposed, side by side)."""

StepScratch = namedtuple("StepScratch", ["stages", "xs", "field"])
StepScratch.__doc__ = """Buffers of one Runge–Kutta step: ``stages (s, …)`` the stage
derivatives, ``xs`` a stage input, ``field`` a :class:`FieldScratch`."""

TangentScratch = namedtuple(
    "TangentScratch", ["dstages", "ds", "S", "dqkv", "dP", "dheads", "dhidden", "qtd"]
)
TangentScratch.__doc__ = """Buffers of the tangent (JVP) of a step, beside a
:class:`StepScratch`: tangent stages and stage input, ``S`` the activation's derivative
σ'(z), and the tangents of ``qkv``, of a head's probabilities, of the heads' outputs, of
the hidden layer, and ``qtd`` the scaled dQᵀ (rows only)."""

VjpScratch = namedtuple("VjpScratch", ["qkv", "dqkv", "go", "P", "dS", "hidden", "ghidden"])
VjpScratch.__doc__ = "Buffers of the vector–Jacobian product (rows layout only)."

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
    if params.is_block:
        raise NotImplementedError(
            "the compiled kernels do not run attention biases, norms or sequential/strang "
            f"blocks yet ({params!r}); tfkernels.reference does"
        )
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
    )
    return Model(weights, settings)


def for_lanes(model):
    """``model`` with the biases repeated per lane, ``b1 (L, m·G)`` and ``b2 (L, d·G)``
    lane-interleaved like the states, so that the bias adds run along whole rows."""
    G = group_width(model.weights.b1.dtype)
    w = model.weights
    return model._replace(
        weights=w._replace(b1=np.repeat(w.b1, G, axis=-1), b2=np.repeat(w.b2, G, axis=-1))
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
    heads (:func:`head_group`). Lane layout (L lanes): every row L times as wide,
    ``heads (T, d·L)``, ``P (T, H·T·L)``, ``mt (3, H·T·L)``, no ``qt``.
    """
    m = model.weights.w2.shape[1]
    if layout == ROWS:
        G = head_group(model, T, dtype)
        stages, xs, *fs = aligned_buffers(
            ((n_stages, T, d), (T, d), (T, 3 * d), (d, T), (T, m), (3, G * T), (d, T), (T, G * T)),
            dtype,
        )
    else:
        L = group_width(dtype)
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
            ),
            dtype,
        )
    return StepScratch(stages, xs, FieldScratch(*fs))


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
            ),
            dtype,
        )
    )


def vjp_scratch(model, T, d, dtype):
    """The :class:`VjpScratch` of a ``(T, d)`` state: ``qkv``, ``dqkv (T, 3d)``,
    ``go (T, d)``, ``P``, ``dS (T, T)``, ``hidden``, ``ghidden (T, m)``."""
    m = model.weights.w2.shape[1]
    return VjpScratch(
        *aligned_buffers(((T, 3 * d), (T, 3 * d), (T, d), (T, T), (T, T), (T, m), (T, m)), dtype)
    )
