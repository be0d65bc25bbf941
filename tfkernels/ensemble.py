"""Weight ensembles: every trajectory of a study runs its own random weights."""

import dataclasses

import numpy as np

from . import _validate as v
from .methods import NORMS
from .params import TransformerParams


@dataclasses.dataclass(frozen=True, eq=False)
class WeightEnsemble:
    """An ensemble of random transformers: trajectory ``i`` of a study runs member ``i``.

    Accepted in place of a ``TransformerParams`` by :func:`tfkernels.integrate`,
    :func:`tfkernels.perturbation_decay` (and ``decay.log_ratios``),
    :func:`tfkernels.token_geometry` and :func:`tfkernels.lyapunov_spectrum`; trajectory
    ``i`` (its global index: ``start + b`` in ``integrate``) runs the weights of member
    ``i``. Nothing is stored per member: the kernels draw member i's weights from the
    counter-based generator keyed by ``(seed, i)`` (``tfkernels.kernels.draws``) before
    its first layer, into per-thread buffers in the layout of
    ``kernels.pack_params``, so a study over 10⁶ members needs no more memory than one
    over a fixed model, and trajectory i gets the same weights (and bits) whatever the
    chunking, the thread count or the Dask workers. :meth:`member` returns member i's
    weights as ``TransformerParams``, drawn by the same compiled code: running it alone
    gives the same bits as trajectory i of the ensemble.

    The distribution is that of :meth:`TransformerParams.random` with the same
    arguments (not its bits): every weight independent, ``wq, wk, wv, wo, w1, b1``,
    ``A`` (``linear``) and the attention biases ``N(0, weight_scale²/d)``, ``w2, b2``
    ``N(0, weight_scale²/d_ff)``; layernorm gains ``1 + z/4`` and biases ``z/4``,
    rmsnorm gains ``1 + z/4`` (z standard normal), one per sub-layer that is on. Values
    are formed in float64 and rounded to ``dtype``.

    Ensembles run in the kernels' row layout only (the lanes of a group share one set of
    weights), so a small ``T·d`` (at most ``config.LANES_MAX_SIZE``) runs slower per
    trajectory-layer than the same fixed model. A draw costs about 12 layers of the
    flow at T = 16 (8 ns a normal on a Xeon core): +12 % for a 50-layer decay study at
    d = d_ff = 64, 13× the flow with ``per_layer=True`` (``docs/performance.md``).

    Parameters
    ----------
    d, n_heads, d_ff
        Width, heads and FFN width (default ``4·d``), as in
        :meth:`TransformerParams.random`.
    damping, beta, activation, causal, attention, ffn, linear, weight_scale, bias
        As in :meth:`TransformerParams.random`.
    norm, norm_position, norm_eps, block
        The block, as in :class:`TransformerParams`.
    final_norm : bool
        A final norm of kind ``norm`` after the last layer of ``integrate`` (member i's
        own gain ``1 + z/4`` and bias ``z/4``, drawn from another stream; studies
        measure the states before it, as for ``TransformerParams``).
    seed : int
        Seed of the ensemble's weights, in ``[0, 2**63 − 1]``; independent of a study's
        ``seed`` (initial states, directions, noise), which draws from other streams.
    dtype : float32 or float64
    per_layer : bool
        Draw a fresh weight set before every layer (a non-autonomous flow, as
        ``TransformerParams.random(n_layers=N)``): layer n of member i uses set n of
        key ``(seed, i)``. Default: one set per member, shared by its layers.

    Raises
    ------
    TypeError, ValueError
        On a bad argument, naming it (the checks of :meth:`TransformerParams.random`).

    Examples
    --------
    >>> import tfkernels as tfk
    >>> ens = tfk.WeightEnsemble(d=8, n_heads=2, d_ff=8, damping=2.0, seed=0)
    >>> p3 = ens.member(3)                     # trajectory 3's weights
    >>> p3.d, p3.d_ff, p3.n_sets
    (8, 8, None)
    >>> res = tfk.perturbation_decay(ens, 64, seq_len=4, n_layers=8, lambda_samples=4)
    >>> res.config["params"]["ensemble"]
    True
    """

    d: int
    n_heads: int
    d_ff: int = None
    damping: float = 0.0
    beta: float = 1.0
    activation: str = "gelu"
    causal: bool = False
    attention: bool = True
    ffn: bool = True
    linear: bool = False
    seed: int = 0
    dtype: np.dtype = np.float64
    weight_scale: float = 1.0
    bias: bool = False
    norm: str = None
    norm_position: str = "pre"
    norm_eps: float = 1e-5
    final_norm: bool = False
    block: str = "parallel"
    per_layer: bool = False

    def __post_init__(self):
        set_ = lambda k, val: object.__setattr__(self, k, val)  # noqa: E731 (frozen)
        set_("seed", v.check_seed("seed", self.seed))
        set_("per_layer", v.check_bool("per_layer", self.per_layer))
        set_("final_norm", v.check_bool("final_norm", self.final_norm))
        if v.check_bool("bias", self.bias) and not v.check_bool("attention", self.attention):
            raise ValueError("`bias`=True draws attention biases, but `attention` is False")
        # One member with the same structure validates every other argument (with the
        # messages of TransformerParams.random, naming the argument) and is the shape
        # of the kernels' buffers.
        template = TransformerParams.random(**self._random_kwargs(), seed=0)
        set_("_template", template)
        for k in ("d", "n_heads", "d_ff", "beta", "damping", "norm", "norm_eps"):
            set_(k, getattr(template, k))
        set_("dtype", template.dtype)
        set_("weight_scale", float(self.weight_scale))
        for k in ("causal", "attention", "ffn", "linear", "bias"):
            set_(k, bool(getattr(self, k)))

    def _random_kwargs(self):
        """The arguments of ``TransformerParams.random`` (all but ``seed``)."""
        return dict(
            d=self.d,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
            damping=self.damping,
            beta=self.beta,
            activation=self.activation,
            causal=self.causal,
            attention=self.attention,
            ffn=self.ffn,
            linear=self.linear,
            dtype=self.dtype,
            weight_scale=self.weight_scale,
            bias=self.bias,
            norm=self.norm,
            norm_position=self.norm_position,
            norm_eps=self.norm_eps,
            final_norm=self.final_norm,
            block=self.block,
        )

    # ---------------------------------------------------------------- derived
    @property
    def n_sets(self):
        """None: the ensemble fits any number of layers (a per-layer one draws a set
        per layer)."""
        return None

    @property
    def is_block(self):
        """As ``TransformerParams.is_block``."""
        return self._template.is_block

    @property
    def template(self):
        """A ``TransformerParams`` with the members' structure (not a member)."""
        return self._template

    def pack(self):
        """The ``kernels.structs.Ensemble`` the kernels take (small: no member's weights)."""
        from .kernels import draws, pack_params

        final = None
        if self.final_norm:
            final = (np.int64(NORMS[self.norm]), self.dtype.type(self.norm_eps))
        return draws.pack_ensemble(
            pack_params(self._template), self.seed, self.weight_scale, self.per_layer, final
        )

    def replace(self, **changes):
        """A copy with some arguments replaced (validated again); TypeError naming an
        unknown one."""
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(kw))
        if unknown:
            raise TypeError(
                f"unknown argument(s) {', '.join(f'`{k}`' for k in unknown)}; the "
                f"arguments are {', '.join(kw)}"
            )
        kw.update(changes)
        return WeightEnsemble(**kw)

    def astype(self, dtype):
        """The same ensemble in ``dtype`` (float32 or float64)."""
        return self.replace(dtype=v.check_dtype("dtype", dtype))

    def summary(self):
        """JSON-ready description (``ensemble: True`` and every argument)."""
        out = {"ensemble": True}
        for f in dataclasses.fields(self):
            val = getattr(self, f.name)
            out[f.name] = val.name if f.name == "dtype" else val
        out["n_sets"] = None
        return out

    def __repr__(self):
        shown = self.summary()
        args = ", ".join(
            f"{f.name}={shown[f.name] if f.name == 'dtype' else repr(shown[f.name])}"
            for f in dataclasses.fields(self)
        )
        return f"WeightEnsemble({args})"

    # ----------------------------------------------------------------- members
    def member(self, i, n_layers=None):
        """The weights of member ``i`` (trajectory i of a study) as ``TransformerParams``.

        Drawn by the kernels' own compiled draw, so ``integrate(ens.member(i), x0[i:i+1],
        …, start=i)`` gives the bits of trajectory i of ``integrate(ens, x0, …)``.

        Parameters
        ----------
        i : int
            Member index in ``[0, 2**63 − 1]``.
        n_layers : int, optional
            Layers of the run (required with ``per_layer=True``: the member then has
            one weight set per layer; ignored otherwise).

        Returns
        -------
        TransformerParams
        """
        from .kernels import draws

        i = v.check_seed("i", i)
        n_sets = 1
        if self.per_layer:
            if n_layers is None:
                raise ValueError(
                    "`n_layers` is required: a per_layer=True ensemble draws one weight "
                    "set per layer"
                )
            n_sets = v.check_int("n_layers", n_layers, minimum=1)
            v.check_size(
                "the member's weights, `n_layers` × `d` × 3·max(`d`, `d_ff`)",
                (n_sets, self.d, 3 * max(self.d, self.d_ff or 0)),
                self.dtype,
            )
        elif n_layers is not None:
            v.check_int("n_layers", n_layers, minimum=1)
        models = draws.member_model(self.pack(), i, n_sets)
        sets = [_unpack(m, self._template) for m in models]
        if self.per_layer:
            kw = {k: np.stack([s[k] for s in sets]) for k in sets[0]}
        else:
            kw = sets[0]
        t = self._template
        if self.final_norm:
            gain, bias = np.ones(self.d, self.dtype), np.zeros(self.d, self.dtype)
            kind = NORMS[self.norm]
            draws.fill_final_norm(np.int64(self.seed), np.int64(i), np.int64(kind), gain, bias)
            if self.norm in ("layernorm", "rmsnorm"):
                kw["final_norm_gain"] = gain
            if self.norm == "layernorm":
                kw["final_norm_bias"] = bias
        # the template has the same arrays (it is one draw of random's): every one replaced
        return t.replace(**kw)


def _unpack(model, template):
    """The ``TransformerParams`` arrays of a one-set packed ``model`` (the inverse of
    ``pack_params`` for the arrays an ensemble draws; copies)."""
    w, b = model.weights, model.block
    d = template.d
    kw = {}
    if template.attention:
        q = w.wqkv[0]
        kw.update(wq=q[:, :d], wk=q[:, d : 2 * d], wv=q[:, 2 * d :], wo=w.wo[0])
    if template.ffn:
        kw.update(w1=w.w1[0], b1=w.b1[0], w2=w.w2[0], b2=w.b2[0])
    if template.linear is not None:
        kw["linear"] = w.A[0]
    if template.bq is not None:
        bq = b.bqkv[0]
        kw.update(bq=bq[:d], bk=bq[d : 2 * d], bv=bq[2 * d :], bo=b.bo[0])
    kinds = {"layernorm": ("gain", "bias"), "rmsnorm": ("gain",)}.get(template.norm, ())
    for sub, on, idx in (("attn", template.attention, 0), ("ffn", template.ffn, 1)):
        if on:
            for kind in kinds:
                arr = b.norm_gain if kind == "gain" else b.norm_bias
                kw[f"{sub}_norm_{kind}"] = arr[0, idx]
    return {k: np.array(a, copy=True) for k, a in kw.items()}


def is_ensemble(params):
    """Whether ``params`` is a :class:`WeightEnsemble`."""
    return isinstance(params, WeightEnsemble)
