"""The weights of the transformer vector field, validated on construction."""

import os
import zipfile
from dataclasses import dataclass, fields

import numpy as np

from . import _validate as v
from .methods import ACTIVATIONS, BLOCKS, NORM_POSITIONS, NORMS

#: The weights of the three terms of f (at least one term must be on).
_TERMS = ("wq", "wk", "wv", "wo", "w1", "b1", "w2", "b2", "linear")
#: Attention biases and the sub-layers' norm parameters: vectors ``(d,)`` or ``(L, d)``.
_ATTN_BIASES = ("bq", "bk", "bv", "bo")
_NORM_PARAMS = ("attn_norm_gain", "attn_norm_bias", "ffn_norm_gain", "ffn_norm_bias")
#: The final norm's parameters: ``(d,)``, never per layer.
_FINAL = ("final_norm_gain", "final_norm_bias")
#: Every array field; all but ``_FINAL`` follow the per-layer rule.
_MATRICES = _TERMS + _ATTN_BIASES + _NORM_PARAMS + _FINAL
_LAYERED = _TERMS + _ATTN_BIASES + _NORM_PARAMS
#: Fields whose base shape is a vector (one axis, two with a layer axis).
_VECTORS = ("b1", "b2") + _ATTN_BIASES + _NORM_PARAMS + _FINAL
#: The FFN weights whose hidden width m = d_ff may be 0.
_FFN_M = ("w1", "b1", "w2")
#: The scalar entries of a saved file and the dtype kinds each may have.
_SCALARS = {"n_heads": "iu", "beta": "f", "causal": "b", "damping": "f", "activation": "U"}
#: The parameters each norm has (``<sub>_norm_<kind>`` fields).
_NORM_KINDS = {None: (), "layernorm": ("gain", "bias"), "rmsnorm": ("gain",), "sphere": ()}
#: Scalar entries added with the blocks; a file written before them lacks them and
#: gets these defaults.
_BLOCK_SCALARS = {
    "norm": ("U", "none"),
    "norm_position": ("U", "pre"),
    "norm_eps": ("f", 1e-5),
    "final_norm": ("b", False),
    "block": ("U", "parallel"),
}


def _check_path(path):
    """``path`` as a str (bytes decoded); TypeError or ValueError naming ``path``."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"`path` must be a file name or os.PathLike, got {type(path).__name__}")
    path = os.fsdecode(path)
    if not path:
        raise ValueError("`path` is empty; give a file name such as 'p.npz'")
    if "\0" in path:
        raise ValueError(f"`path` {path!r} contains a null character")
    return path


@dataclass(frozen=True, eq=False)
class TransformerParams:
    """Weights and settings of a transformer block, the vector field
    ``f(X) = g(X) + h(X) − γ·X + X·A`` with its normalization and composition.

    Rows of ``X`` are tokens; weights multiply on the right (``Q = X @ wq + bq``). Every
    weight may carry a leading axis of length ``n_layers`` (per-layer weights, a
    non-autonomous ODE in which layer n uses set n); either all present weights have
    it or none does (the final norm's parameters never have it).

    The block (``../shared/DESIGN.md``, "Blocks and normalization"), with ``N_a``,
    ``N_f`` the attention's and the FFN's norms and ``Φ^h_F`` one step of size h of the
    chosen method on ``dX/dt = F(X)``:

    * the sub-fields are ``F_a(X) = g(N_a(X))`` and ``F_f(X) = h(N_f(X)) − γX + X·A``
      with ``norm_position="pre"``; ``g(X)``, ``h(X) − γX + X·A`` otherwise (the
      linear terms go with the FFN);
    * ``block="parallel"``: one step ``Φ^h_{F_a + F_f}`` (the paper's ``f = g + h``);
      ``"sequential"``: ``Φ^h_{F_f} ∘ Φ^h_{F_a}`` (attention first: a standard layer,
      Lie–Trotter, global order 1); ``"strang"``: ``Φ^{h/2}_{F_f} ∘ Φ^h_{F_a} ∘
      Φ^{h/2}_{F_f}`` (Macaron, order min(2, order of the method));
    * ``norm_position="post"``: each sub-step is followed by its norm, ``X ← N_a(Φ_{F_a}(X))``,
      ``X ← N_f(Φ_{F_f}(X))`` (BERT; with ``"sphere"`` the Euler-then-renormalise
      retraction); a parallel block's one sub-step is followed by ``N_a``;
    * ``norm_position="tangent"`` (``norm="sphere"`` only): each (sub-)field is
      projected on the tangent space of the sphere, token by token,
      ``F_i ← F_i − ⟨x_i, F_i⟩ x_i / ‖x_i‖²``, so that every method keeps ``‖x_i‖``;
    * the final norm (``final_norm=True``) is applied to the state after the last
      layer, to what ``integrate`` returns (not to the states a study measures).

    Norms act on each token (row) ``x ∈ R^d``: ``layernorm`` ``(x − μ)/sqrt(σ² + eps)·gain
    + bias`` (μ, σ² the mean and biased variance of x), ``rmsnorm`` ``x / sqrt(mean(x²) +
    eps)·gain``, ``sphere`` ``x / ‖x‖``.

    Parameters
    ----------
    wq, wk, wv, wo : ndarray, shape (d, d) or (L, d, d), or None
        Attention projections; all four or none (attention off).
    w1 : ndarray, shape (d, m) or (L, d, m), or None
    b1 : ndarray, shape (m,) or (L, m), or None
    w2 : ndarray, shape (m, d) or (L, m, d), or None
    b2 : ndarray, shape (d,) or (L, d), or None
        Feed-forward weights; all four or none (FFN off).
    linear : ndarray, shape (d, d) or (L, d, d), or None
        The linear term ``A`` in ``X·A``.
    n_heads : int
        Number of attention heads H; must divide d.
    beta : float
        Inverse temperature of the softmax (> 0).
    causal : bool
        Mask attention to tokens ``j <= i``.
    damping : float
        γ ≥ 0.
    activation : str
        One of ``gelu``, ``gelu_tanh``, ``relu``, ``tanh``, ``identity``.
    bq, bk, bv, bo : ndarray, shape (d,) or (L, d), or None
        Attention biases (each optional, zero when None; attention must be on).
    norm : {None, "layernorm", "rmsnorm", "sphere"}
        The normalization of the block (None: none, the paper's model).
    norm_position : {"pre", "post", "tangent"}
        Where the norm sits (above); ``"tangent"`` needs ``norm="sphere"``.
    norm_eps : float
        The ``eps`` of layernorm and rmsnorm (≥ 0; unused by ``"sphere"``).
    attn_norm_gain, attn_norm_bias, ffn_norm_gain, ffn_norm_bias : ndarray or None
        Shape (d,) or (L, d): the attention's and the FFN's norm parameters (layernorm:
        gain and bias; rmsnorm: gain only; sphere: none). A gain that is None is ones,
        a bias zeros.
    final_norm : bool or None
        Apply a final norm of kind ``norm`` to the output of the last layer. None: on
        exactly when ``final_norm_gain`` or ``final_norm_bias`` is given.
    final_norm_gain, final_norm_bias : ndarray, shape (d,), or None
        Its parameters (ones and zeros when None).
    block : {"parallel", "sequential", "strang"}
        How the attention and FFN sub-layers compose (above).

    Raises
    ------
    TypeError, ValueError
        On a wrong shape, dtype, a non-finite weight or an out-of-range setting,
        naming the argument.

    Examples
    --------
    >>> import numpy as np, tfkernels as tfk
    >>> p = tfk.TransformerParams.random(d=8, n_heads=2, damping=1.0, seed=0)
    >>> p.d, p.d_ff, p.n_heads, p.dtype
    (8, 32, 2, dtype('float64'))
    """

    wq: np.ndarray = None
    wk: np.ndarray = None
    wv: np.ndarray = None
    wo: np.ndarray = None
    w1: np.ndarray = None
    b1: np.ndarray = None
    w2: np.ndarray = None
    b2: np.ndarray = None
    linear: np.ndarray = None
    n_heads: int = 1
    beta: float = 1.0
    causal: bool = False
    damping: float = 0.0
    activation: str = "gelu"
    bq: np.ndarray = None
    bk: np.ndarray = None
    bv: np.ndarray = None
    bo: np.ndarray = None
    norm: str = None
    norm_position: str = "pre"
    norm_eps: float = 1e-5
    attn_norm_gain: np.ndarray = None
    attn_norm_bias: np.ndarray = None
    ffn_norm_gain: np.ndarray = None
    ffn_norm_bias: np.ndarray = None
    final_norm: bool = None
    final_norm_gain: np.ndarray = None
    final_norm_bias: np.ndarray = None
    block: str = "parallel"

    def __post_init__(self):
        set_ = lambda k, val: object.__setattr__(self, k, val)  # noqa: E731 (frozen)
        present = [k for k in _TERMS if getattr(self, k) is not None]
        if not present:
            raise ValueError(
                "TransformerParams needs at least one of attention (wq, wk, wv, wo), "
                "FFN (w1, b1, w2, b2) or `linear`"
            )
        for group in (("wq", "wk", "wv", "wo"), ("w1", "b1", "w2", "b2")):
            given = [k for k in group if getattr(self, k) is not None]
            if given and len(given) != len(group):
                missing = [k for k in group if k not in given]
                raise ValueError(
                    f"{', '.join(f'`{k}`' for k in given)} given but "
                    f"{', '.join(f'`{k}`' for k in missing)} missing"
                )
        dtype = np.asarray(getattr(self, present[0])).dtype
        self._check_block_settings()
        present += [k for k in _ATTN_BIASES + _NORM_PARAMS + _FINAL if getattr(self, k) is not None]
        for k in present:
            # d_ff = 0 is valid (the FFN is then b2): w1, b1, w2 may be empty.
            a = v.check_array(k, getattr(self, k), dtype=dtype, nonempty=k not in _FFN_M)
            a = a.copy()
            a.setflags(write=False)
            set_(k, a)
        final = [k for k in present if k in _FINAL]
        present = [k for k in present if k not in _FINAL]
        # Per-layer weights: the vectors (biases, norm parameters) have one axis,
        # matrices two, plus one.
        per_layer = {k: getattr(self, k).ndim == (2 if k in _VECTORS else 3) for k in present}
        for k in present + final:
            base = 1 if k in _VECTORS else 2
            if k in final and getattr(self, k).ndim != 1:
                raise ValueError(
                    f"`{k}` must have shape (d,) (the final norm has no layer axis), got "
                    f"shape {getattr(self, k).shape}"
                )
            if getattr(self, k).ndim not in (base, base + 1):
                raise ValueError(
                    f"`{k}` must have {base} dimensions (or {base + 1} with a leading "
                    f"layer axis), got shape {getattr(self, k).shape}"
                )
        if len(set(per_layer.values())) > 1:
            raise ValueError(
                "either every weight has a leading layer axis or none does; per-layer: "
                f"{', '.join(f'`{k}`' for k, p in per_layer.items() if p)}; shared: "
                f"{', '.join(f'`{k}`' for k, p in per_layer.items() if not p)}"
            )
        n_sets = getattr(self, present[0]).shape[0] if per_layer[present[0]] else None
        lead = () if n_sets is None else (n_sets,)
        ref = getattr(self, present[0])
        d = ref.shape[-1] if present[0] not in ("w1", "b1") else self.w2.shape[-1]
        m = None if self.w1 is None else self.w1.shape[-1]
        expect = {
            "wq": (d, d),
            "wk": (d, d),
            "wv": (d, d),
            "wo": (d, d),
            "w1": (d, m),
            "b1": (m,),
            "w2": (m, d),
            "b2": (d,),
            "linear": (d, d),
            **{k: (d,) for k in _ATTN_BIASES + _NORM_PARAMS},
        }
        if n_sets == 0 or d == 0:
            raise ValueError(
                f"`{present[0]}` must not have a zero-size dimension (d={d}"
                f"{'' if n_sets is None else f', layer axis {n_sets}'}), got shape "
                f"{getattr(self, present[0]).shape}"
            )
        for k in present:
            if getattr(self, k).shape != lead + expect[k]:
                raise ValueError(
                    f"`{k}` must have shape {lead + expect[k]} (d={d}"
                    f"{'' if m is None else f', d_ff={m}'}), got {getattr(self, k).shape}"
                )
        for k in final:
            if getattr(self, k).shape != (d,):
                raise ValueError(
                    f"`{k}` must have shape ({d},) (d={d}), got {getattr(self, k).shape}"
                )
        n_heads = v.check_int("n_heads", self.n_heads, minimum=1)
        if d % n_heads:
            raise ValueError(f"`n_heads`={n_heads} must divide the width d={d}")
        set_("n_heads", n_heads)
        beta = v.check_float("beta", self.beta, minimum=0.0, strict=True)
        set_("beta", v.check_fits("beta", beta, dtype))
        set_(
            "damping",
            v.check_fits("damping", v.check_float("damping", self.damping, minimum=0.0), dtype),
        )
        set_("causal", v.check_bool("causal", self.causal))
        v.check_choice("activation", self.activation, ACTIVATIONS)
        set_("norm_eps", v.check_fits("norm_eps", self.norm_eps, dtype))

    def _check_block_settings(self):
        """Validate the block's settings and which optional arrays go with them."""
        set_ = lambda k, val: object.__setattr__(self, k, val)  # noqa: E731 (frozen)
        norm = "none" if self.norm is None else self.norm
        if not isinstance(norm, str):
            raise TypeError(f"`norm` must be None or a str, got {type(norm).__name__}")
        v.check_choice("norm", norm, NORMS)
        set_("norm", None if norm == "none" else norm)
        v.check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        v.check_choice("block", self.block, BLOCKS)
        set_("norm_eps", v.check_float("norm_eps", self.norm_eps, minimum=0.0))
        if self.norm is None and self.norm_position != "pre":
            raise ValueError(f"`norm_position`={self.norm_position!r} needs a `norm` (it is None)")
        if self.norm_position == "tangent" and self.norm != "sphere":
            raise ValueError(
                f"`norm_position`='tangent' is the projection on the sphere: it needs "
                f"norm='sphere', got norm={self.norm!r}"
            )
        if self.wq is None:
            given = [k for k in _ATTN_BIASES if getattr(self, k) is not None]
            if given:
                raise ValueError(f"`{given[0]}` given but attention is off (`wq` is None)")
        given_final = [k for k in _FINAL if getattr(self, k) is not None]
        final = self.final_norm
        final = bool(given_final) if final is None else v.check_bool("final_norm", final)
        if given_final and not final:
            raise ValueError(f"`{given_final[0]}` given but `final_norm` is False")
        if final and self.norm is None:
            raise ValueError("`final_norm` is True but `norm` is None (it is a norm of that kind)")
        set_("final_norm", final)
        own = _NORM_KINDS[self.norm]  # the parameters this norm has
        for k in _NORM_PARAMS + _FINAL:
            if getattr(self, k) is None:
                continue
            kind = k.rsplit("_", 1)[1]
            if kind not in own:
                raise ValueError(
                    f"`{k}` given but norm={self.norm!r} has "
                    + (f"only {', '.join(own)}" if own else "no parameters")
                )
            term = k.split("_", 1)[0]
            if (term == "attn" and self.wq is None) or (term == "ffn" and self.w1 is None):
                raise ValueError(f"`{k}` given but the {term} sub-layer is off")

    # ---------------------------------------------------------------- derived
    @property
    def dtype(self):
        """The dtype shared by every weight."""
        return next(getattr(self, k) for k in _MATRICES if getattr(self, k) is not None).dtype

    @property
    def d(self):
        """Token width d."""
        for k in ("wq", "linear", "w2"):
            if getattr(self, k) is not None:
                return getattr(self, k).shape[-1]

    @property
    def d_ff(self):
        """Hidden width m of the FFN (None when the FFN is off)."""
        return None if self.w1 is None else self.w1.shape[-1]

    @property
    def attention(self):
        """Whether the attention term is on."""
        return self.wq is not None

    @property
    def ffn(self):
        """Whether the feed-forward term is on."""
        return self.w1 is not None

    @property
    def n_sets(self):
        """Number of per-layer weight sets, or None for shared (autonomous) weights."""
        for k in _TERMS:
            a = getattr(self, k)
            if a is not None:
                base = 1 if k in _VECTORS else 2
                return a.shape[0] if a.ndim == base + 1 else None

    @property
    def is_block(self):
        """Whether the model uses anything beyond the paper's parallel field ``f = g + h
        − γX + X·A``: attention biases, a norm, or a sequential or Strang block."""
        return (
            self.norm is not None
            or self.block != "parallel"
            or any(getattr(self, k) is not None for k in _ATTN_BIASES)
        )

    def layer(self, n):
        """Return the shared-weight parameters that layer ``n`` uses.

        ``n`` is an integer ``>= 0``, below ``n_sets`` for per-layer weights (shared
        weights are the same for every layer); otherwise TypeError or ValueError
        naming ``n``.
        """
        n = v.check_int("n", n, minimum=0)
        if self.n_sets is None:
            return self
        if n >= self.n_sets:
            raise ValueError(f"`n`={n} but the parameters have {self.n_sets} weight sets")
        return self.replace(
            **{k: getattr(self, k)[n] for k in _LAYERED if getattr(self, k) is not None}
        )

    def replace(self, **changes):
        """Return a copy with some fields replaced (validated again).

        Raises
        ------
        TypeError
            A name in ``changes`` is not a field (named in the message).
        """
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = sorted(set(changes) - set(kw))
        if unknown:
            raise TypeError(
                f"unknown field(s) {', '.join(f'`{k}`' for k in unknown)}; the fields are "
                f"{', '.join(kw)}"
            )
        if "final_norm" not in changes and any(k in changes for k in _FINAL):
            kw["final_norm"] = None  # decided again by whether its parameters are given
        kw.update(changes)
        return TransformerParams(**kw)

    def astype(self, dtype):
        """Return a copy with every weight cast to ``dtype`` (float32 or float64)."""
        dtype = v.check_dtype("dtype", dtype)
        return self.replace(
            **{k: getattr(self, k).astype(dtype) for k in _MATRICES if getattr(self, k) is not None}
        )

    def __repr__(self):
        block = ""
        if self.is_block:
            biases = [k for k in _ATTN_BIASES if getattr(self, k) is not None]
            block = (
                f", block={self.block!r}, norm={self.norm!r}"
                + (f", norm_position={self.norm_position!r}" if self.norm else "")
                + (", final_norm=True" if self.final_norm else "")
                + (f", biases={'+'.join(biases)}" if biases else "")
            )
        terms = [
            t
            for t, on in (
                ("attention", self.attention),
                ("ffn", self.ffn),
                ("linear", self.linear is not None),
            )
            if on
        ]
        return (
            f"TransformerParams(d={self.d}, n_heads={self.n_heads}, d_ff={self.d_ff}, "
            f"terms={'+'.join(terms)}, activation={self.activation!r}, beta={self.beta}, "
            f"causal={self.causal}, damping={self.damping}{block}, n_sets={self.n_sets}, "
            f"dtype={self.dtype})"
        )

    # ----------------------------------------------------------- constructors
    @classmethod
    def random(
        cls,
        d,
        n_heads,
        d_ff=None,
        *,
        damping=0.0,
        beta=1.0,
        activation="gelu",
        causal=False,
        attention=True,
        ffn=True,
        linear=False,
        n_layers=None,
        seed=0,
        dtype=np.float64,
        weight_scale=1.0,
        bias=False,
        norm=None,
        norm_position="pre",
        norm_eps=1e-5,
        final_norm=False,
        block="parallel",
    ):
        """Draw random weights with variance ``weight_scale² / fan_in``.

        The norm parameters are drawn too (layernorm: gain ``1 + z/4`` and bias ``z/4``
        with z standard normal; rmsnorm: the gain), so that a random block exercises
        them; they are drawn after every other weight, so that the other weights are
        those of the same call without a norm.

        Parameters
        ----------
        d : int
            Token width.
        n_heads : int
            Attention heads; must divide d.
        d_ff : int, optional
            FFN hidden width m (default 4d).
        damping, beta, activation, causal
            As in the class.
        attention, ffn, linear : bool
            Which terms to include (``linear`` draws a d×d matrix ``A``).
        n_layers : int, optional
            Draw one independent weight set per layer (non-autonomous ODE).
        seed : int
            Seed of the NumPy generator the weights are drawn from (any non-negative
            integer).
        dtype : float32 or float64
        weight_scale : float
            Scale of every weight (> 0).
        bias : bool
            Draw the attention biases ``bq, bk, bv, bo`` (attention must be on).
        norm, norm_position, norm_eps, final_norm, block
            As in the class.

        Returns
        -------
        TransformerParams
        """
        d = v.check_int("d", d, minimum=1)
        d_ff = 4 * d if d_ff is None else v.check_int("d_ff", d_ff, minimum=1)
        dtype = v.check_dtype("dtype", dtype)
        scale = v.check_float("weight_scale", weight_scale, minimum=0.0, strict=True)
        lead = () if n_layers is None else (v.check_int("n_layers", n_layers, minimum=1),)
        # The largest array: the fused (d, 3d) attention projections or (d, d_ff) FFN
        # weights of every layer, drawn in float64.
        v.check_size(
            "the weights, `n_layers` × `d` × 3·max(`d`, `d_ff`)",
            lead + (d, 3 * max(d, d_ff)),
            np.float64,
        )
        attention = v.check_bool("attention", attention)
        ffn = v.check_bool("ffn", ffn)
        linear = v.check_bool("linear", linear)
        causal = v.check_bool("causal", causal)
        rng = np.random.default_rng(v.check_int("seed", seed, minimum=0))

        def draw(shape, fan_in):
            with np.errstate(over="ignore"):
                w = (rng.standard_normal(lead + shape) * (scale / np.sqrt(fan_in))).astype(dtype)
            if not np.all(np.isfinite(w)):
                raise ValueError(
                    f"`weight_scale`={scale:g} overflows {dtype.name}: some weights are "
                    "inf; use a smaller scale or float64"
                )
            return w

        kw = {}
        if attention:
            kw.update(
                wq=draw((d, d), d), wk=draw((d, d), d), wv=draw((d, d), d), wo=draw((d, d), d)
            )
        if ffn:
            kw.update(
                w1=draw((d, d_ff), d),
                b1=draw((d_ff,), d),
                w2=draw((d_ff, d), d_ff),
                b2=draw((d,), d_ff),
            )
        if linear:
            kw.update(linear=draw((d, d), d))
        if v.check_bool("bias", bias) and attention:
            kw.update({k: draw((d,), d) for k in _ATTN_BIASES})

        def norm_param(kind, shape):
            z = rng.standard_normal(shape) / 4
            return (1.0 + z if kind == "gain" else z).astype(dtype)

        norm_kinds = _NORM_KINDS.get(norm, ())
        subs = [t for t, on in (("attn", attention), ("ffn", ffn)) if on]
        for kind in norm_kinds:
            for sub in subs:
                kw[f"{sub}_norm_{kind}"] = norm_param(kind, lead + (d,))
        if v.check_bool("final_norm", final_norm):
            for kind in norm_kinds:
                kw[f"final_norm_{kind}"] = norm_param(kind, (d,))
        return cls(
            n_heads=n_heads,
            beta=beta,
            causal=causal,
            damping=damping,
            activation=activation,
            norm=norm,
            norm_position=norm_position,
            norm_eps=norm_eps,
            final_norm=final_norm,
            block=block,
            **kw,
        )

    @classmethod
    def _linear(cls, A, damping=0.0):
        """Return the linear system ``f(X) = X·A − γX`` (attention and FFN off).

        Called as ``TransformerParams.linear(A)``; on an instance, ``params.linear``
        is the matrix A itself (or None).

        Parameters
        ----------
        A : ndarray, shape (d, d) or (L, d, d)
        damping : float
            γ ≥ 0.

        Examples
        --------
        >>> import numpy as np, tfkernels as tfk
        >>> p = tfk.TransformerParams.linear(-np.eye(3))
        >>> p.linear.shape, p.attention, p.ffn
        ((3, 3), False, False)
        """
        return cls(linear=A, damping=damping)

    @classmethod
    def from_torch(cls, module, dtype=None):
        """Import a PyTorch ``nn.TransformerEncoderLayer`` or ``nn.TransformerEncoder``.

        Per-layer weights, ``block="sequential"``, layernorm pre (``norm_first=True``)
        or post, the encoder's final norm; ``integrate(p, x, n_layers=L, t_final=L,
        method="euler")`` then reproduces ``module(x)`` on hidden states ``x`` to
        rounding error. Needs ``pip install "tfkernels[models]"``; see
        :func:`tfkernels.models.torch_import.from_torch` for what is supported and the
        errors (each names ``module``).

        Parameters
        ----------
        module : torch.nn.TransformerEncoderLayer or torch.nn.TransformerEncoder
            ``batch_first=True``, relu or gelu, eval mode (or every dropout 0).
        dtype : float32 or float64, optional
            Default: the module's.

        Returns
        -------
        TransformerParams
        """
        from .models.torch_import import from_torch

        return from_torch(module, dtype=dtype)

    @classmethod
    def from_safetensors(
        cls,
        path,
        arch="bert",
        layers=None,
        *,
        n_heads=None,
        norm_eps=None,
        activation=None,
        dtype=None,
    ):
        """Import the blocks of a BERT- or GPT-2-style ``.safetensors`` checkpoint.

        ``arch="bert"``: post-LN, separate query/key/value, ``[out, in]`` weights;
        ``arch="gpt2"``: pre-LN, causal, fused ``c_attn``, ``Conv1D`` ``[in, out]``
        weights, the final ``ln_f``. The settings the weights do not carry come from the
        ``config.json`` beside the file, else from the keyword arguments (which must
        agree with it), else a ValueError names the missing one. Embeddings and pooler
        are not blocks: the user passes hidden states. Needs ``pip install
        "tfkernels[models]"``; see :func:`tfkernels.models.safetensors_import.
        from_safetensors`.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.safetensors`` file.
        arch : {"bert", "gpt2"}
        layers : None, int, slice, range or sequence of int
            The blocks to import, in order (default all).
        n_heads : int, optional
        norm_eps : float, optional
        activation : str, optional
            tfkernels' names or Hugging Face's (``gelu_new`` is ``gelu_tanh``).
        dtype : float32 or float64, optional
            Default: the file's.

        Returns
        -------
        TransformerParams
        """
        from .models.safetensors_import import from_safetensors

        return from_safetensors(
            path,
            arch=arch,
            layers=layers,
            n_heads=n_heads,
            norm_eps=norm_eps,
            activation=activation,
            dtype=dtype,
        )

    # ---------------------------------------------------------------- storage
    def save(self, path):
        """Write the parameters to ``path`` as ``.npz``.

        Like ``np.savez``, ``.npz`` is appended to a ``path`` that lacks it (and
        :meth:`load` finds the file either way).
        """
        path = _check_path(path)
        target = path if path.endswith(".npz") else path + ".npz"
        if os.path.isdir(path) or os.path.isdir(target):
            raise ValueError(f"`path` {path!r} is a directory; give a file name such as 'p.npz'")
        arrays = {k: getattr(self, k) for k in _MATRICES if getattr(self, k) is not None}
        np.savez(
            path,
            n_heads=self.n_heads,
            beta=self.beta,
            causal=self.causal,
            damping=self.damping,
            activation=self.activation,
            norm="none" if self.norm is None else self.norm,
            norm_position=self.norm_position,
            norm_eps=self.norm_eps,
            final_norm=self.final_norm,
            block=self.block,
            **arrays,
        )

    @classmethod
    def load(cls, path):
        """Read parameters written by :meth:`save`.

        ``path`` may omit the ``.npz`` suffix that :meth:`save` (like ``np.savez``)
        appends. Pickled data is never loaded.

        Raises
        ------
        FileNotFoundError
            No file at ``path`` (nor at ``path + ".npz"``).
        ValueError
            The file is not an archive written by :meth:`save`, or an entry is
            missing, unknown or malformed; the message names the file and the entry.
        """
        path = _check_path(path)
        if not os.path.exists(path) and os.path.exists(path + ".npz"):
            path = path + ".npz"
        if not os.path.exists(path):
            err = FileNotFoundError(f"`path`: no parameters file {path!r} (nor {path + '.npz'!r})")
            err.filename = path
            raise err

        def bad(what):
            return ValueError(
                f"`path` {path!r} is not a TransformerParams file written by "
                f"TransformerParams.save(): {what}"
            )

        try:
            z = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise bad(f"not a .npz archive ({type(err).__name__})") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise bad("a single .npy array, not a .npz archive")
        with z:
            files = set(z.files)
            unknown = sorted(files - set(_MATRICES) - set(_SCALARS) - set(_BLOCK_SCALARS))
            if unknown:
                raise bad(f"unknown entr{'y' if len(unknown) == 1 else 'ies'} {unknown}")

            def entry(k):
                try:
                    return z[k]
                except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
                    raise bad(f"entry `{k}` is unreadable ({type(err).__name__})") from None

            kw = {k: entry(k) for k in _MATRICES if k in files}
            scalars = {k: (kinds, None) for k, kinds in _SCALARS.items()}
            scalars.update(_BLOCK_SCALARS)
            for k, (kinds, default) in scalars.items():
                if k not in files:
                    if default is None:
                        raise bad(f"entry `{k}` is missing")
                    kw[k] = default
                    continue
                val = entry(k)
                if val.shape != () or val.dtype.kind not in kinds:
                    raise bad(
                        f"entry `{k}` must be a scalar of kind {kinds!r}, got dtype "
                        f"{val.dtype} shape {val.shape}"
                    )
                kw[k] = str(val) if kinds == "U" else val.item()
        try:
            return cls(**kw)
        except (TypeError, ValueError) as err:
            raise bad(str(err)) from None


class _ConstructorOnClass:
    """``TransformerParams.linear`` is the constructor; ``params.linear`` the matrix.

    A non-data descriptor: attribute lookup on an instance finds the field value in the
    instance ``__dict__`` first, so only lookups on the class reach ``__get__``.
    """

    def __get__(self, obj, cls):
        return cls._linear


# Installed after @dataclass has read the field default (None) for ``linear``.
TransformerParams.linear = _ConstructorOnClass()
