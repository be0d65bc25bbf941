"""Dong et al.'s rank-collapse ablation at initialisation, on the kernels.

Dong, Cordonnier & Loukas (2021, "Attention is not all you need: pure attention loses
rank doubly exponentially with depth", ICML) measure how close the token matrix of
each layer is to rank one, ``‖X − 1·mean(X)‖ / ‖X‖`` (mean over tokens, composite norm
``sqrt(‖·‖₁‖·‖_∞)``), in BERT at initialisation with parts of each layer removed (their
Figure 2). Their ablation code keeps BERT's post-LayerNorms and removes the attention's
skip connection (``LN(g(X))`` instead of ``LN(X + g(X))``) and/or the whole MLP
sub-block; the MLP sub-block, when kept, keeps its own skip (``LN(X + h(X))``).

The variants (:data:`VARIANTS`), each a stack of post-LN layers with LayerNorm gain 1,
bias 0 (BERT's initialisation):

``"attention"``
    ``X ← LN(g(X))`` (their "SAN");
``"attention+ffn"``
    ``X ← LN(g(X))``, then ``X ← LN(X + h(X))`` (their "SAN + MLP");
``"attention+ffn (no skips)"``
    ``X ← LN(g(X))``, then ``X ← LN(h(X))`` (the paper's theory: no skip at all);
``"attention+skip"``
    ``X ← LN(X + g(X))`` (their "SAN + skip");
``"transformer"``
    ``X ← LN(X + g(X))``, then ``X ← LN(X + h(X))`` (BERT's layer).

A layer without a residual is forward Euler with Δt = 1 and damping γ = 1:
``X + Δt·(g(X) − γX) = g(X)`` (up to one rounding of ``X``). A layer whose attention
has no skip but whose MLP does is two kernel layers of a parallel block with γ = 1 and
per-layer weights: an attention layer (MLP output weights zero: ``h = 0``) and an MLP
layer (``W_o = 0``: ``g = 0``) with the linear term ``A = I``, which puts the skip back:
``X + (h(X) − X + X·I) = X + h(X)``. ``tests/test_rank_collapse.py`` checks every
variant against the reference's composition of the sub-layers.
"""

import math

import numpy as np

from .. import _validate as v

#: The variants of the ablation, in the figure's order.
VARIANTS = (
    "attention",
    "attention+ffn",
    "attention+ffn (no skips)",
    "attention+skip",
    "transformer",
)
#: BERT's initialisation: weights ``N(0, 0.02²)`` at width 768 (FFN 3072), biases 0.
BERT_STD = 0.02
BERT_WIDTH = 768
#: BERT's LayerNorm eps.
BERT_EPS = 1e-12


def bert_weights(d, n_layers, *, d_ff=None, seed=0, dtype=np.float64):
    """Per-layer weights of BERT's initialisation at width d.

    Every weight is ``N(0, s²)`` with ``s = 0.02·sqrt(768/d)``: the variance × fan-in of
    BERT-base's weights (std 0.02 at width 768, FFN 3072 = 4·768), so that each
    projection scales the signal as it does in BERT-base. Biases are zero (none).

    Parameters
    ----------
    d, n_layers : int
        Width and number of layers L.
    d_ff : int, optional
        FFN width (default 4d).
    seed : int
        Seed of the NumPy generator.
    dtype : float32 or float64

    Returns
    -------
    dict of ndarray
        ``wq, wk, wv, wo`` (L, d, d), ``w1`` (L, d, d_ff), ``w2`` (L, d_ff, d).
    """
    d = v.check_int("d", d, minimum=1)
    L = v.check_int("n_layers", n_layers, minimum=1)
    m = 4 * d if d_ff is None else v.check_int("d_ff", d_ff, minimum=1)
    s = BERT_STD * math.sqrt(BERT_WIDTH / d)
    rng = np.random.default_rng(v.check_int("seed", seed, minimum=0))
    shapes = {"wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d), "w1": (d, m), "w2": (m, d)}
    return {k: (rng.standard_normal((L,) + sh) * s).astype(dtype) for k, sh in shapes.items()}


def variant_params(variant, weights, *, n_heads, activation="gelu", beta=1.0):
    """The kernels' model of one variant, built from :func:`bert_weights`.

    Parameters
    ----------
    variant : str
        One of :data:`VARIANTS`.
    weights : dict of ndarray
        Per-layer weights (:func:`bert_weights`).
    n_heads : int
    activation : str
    beta : float
        The softmax's inverse temperature.

    Returns
    -------
    params : TransformerParams
    n_layers : int
        Kernel layers to run with Δt = 1 (``t_final = n_layers``): L, or 2L for the
        split variants.
    save_every : int
        Kernel layers per layer of the model (1, or 2).
    """
    from ..params import TransformerParams

    variant = v.check_choice("variant", variant, {k: k for k in VARIANTS})
    L, d = weights["wq"].shape[:2]
    m = weights["w1"].shape[-1]
    dt = weights["wq"].dtype
    attn = {k: weights[k] for k in ("wq", "wk", "wv", "wo")}
    common = dict(
        n_heads=n_heads,
        beta=beta,
        activation=activation,
        norm="layernorm",
        norm_position="post",
        norm_eps=BERT_EPS,
    )
    if variant in ("attention", "attention+skip"):
        damping = 1.0 if variant == "attention" else 0.0
        return TransformerParams(**attn, damping=damping, block="parallel", **common), L, 1
    ffn = dict(w1=weights["w1"], b1=np.zeros((L, m), dt), w2=weights["w2"], b2=np.zeros((L, d), dt))
    if variant == "transformer":
        return TransformerParams(**attn, **ffn, block="sequential", **common), L, 1

    # split variants: kernel layer 2l is layer l's attention (MLP output zero), 2l + 1 its
    # MLP (attention output zero), a parallel block with damping 1; the linear term I
    # on the MLP layers keeps the MLP's skip ("attention+ffn")
    def interleave(a_layer, f_layer):
        out = np.empty((2 * L,) + a_layer.shape[1:], dtype=dt)
        out[0::2], out[1::2] = a_layer, f_layer
        return out

    zero = {k: np.zeros_like(a) for k, a in ffn.items()}
    split = {k: interleave(attn[k], attn[k]) for k in ("wq", "wk", "wv")}
    split["wo"] = interleave(attn["wo"], np.zeros_like(attn["wo"]))
    split["w1"] = interleave(ffn["w1"], ffn["w1"])
    split["b1"] = interleave(zero["b1"], ffn["b1"])
    split["w2"] = interleave(zero["w2"], ffn["w2"])
    split["b2"] = interleave(zero["b2"], ffn["b2"])
    eye = np.broadcast_to(np.eye(d, dtype=dt), (L, d, d))
    skip = eye if variant == "attention+ffn" else np.zeros((L, d, d), dt)
    split["linear"] = interleave(np.zeros((L, d, d), dt), skip)
    return TransformerParams(**split, damping=1.0, block="parallel", **common), 2 * L, 2


def rank_collapse_by_depth(
    variant,
    *,
    d=128,
    n_heads=2,
    d_ff=None,
    seq_len=32,
    n_layers=24,
    n_models=64,
    n_inputs=8,
    seed=0,
    n_threads=None,
):
    """The rank-collapse ratios of one variant across depth, per random model.

    Model k draws its weights with :func:`bert_weights` (seed ``seed + k``) and runs
    ``n_inputs`` standard normal initial states (``x0="normal"``, seed ``seed + k``)
    through :func:`tfkernels.token_geometry`; its value at each layer is the mean over
    its inputs.

    Parameters
    ----------
    variant : str
        One of :data:`VARIANTS`.
    d, n_heads, d_ff, seq_len, n_layers : int
        Width, heads, FFN width (default 4d), tokens T, layers L of the model.
    n_models, n_inputs : int
        Random models, and inputs per model.
    seed : int
    n_threads : int, optional

    Returns
    -------
    dict
        ``layer`` (L + 1,), ``composite`` and ``frobenius`` (n_models, L + 1): the
        per-model mean of ``rank_collapse`` and ``rank_collapse_fro``; ``n_nonfinite``,
        the trajectories excluded.
    """
    from .geometry import token_geometry

    comp, fro, bad = [], [], 0
    for k in range(v.check_int("n_models", n_models, minimum=1)):
        w = bert_weights(d, n_layers, d_ff=d_ff, seed=seed + k)
        p, n_run, every = variant_params(variant, w, n_heads=n_heads)
        geo = token_geometry(
            p,
            n_inputs,
            seq_len=seq_len,
            n_layers=n_run,
            t_final=float(n_run),
            save_every=every,
            x0="normal",
            seed=seed + k,
            n_threads=n_threads,
        )
        comp.append(geo.metric("rank_collapse"))
        fro.append(geo.metric("rank_collapse_fro"))
        bad += geo.n_nonfinite
    return {
        "layer": np.arange(n_layers + 1),
        "composite": np.array(comp),
        "frobenius": np.array(fro),
        "n_nonfinite": bad,
    }
