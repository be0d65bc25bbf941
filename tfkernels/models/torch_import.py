"""``TransformerParams.from_torch``: PyTorch ``nn.TransformerEncoderLayer`` and
``nn.TransformerEncoder`` as per-layer block parameters.

A PyTorch encoder layer is, with ``LN1``, ``LN2`` its ``norm1``, ``norm2``::

    norm_first=True  (pre):   x ← x + SA(LN1(x));   x ← x + FF(LN2(x))
    norm_first=False (post):  x ← LN1(x + SA(x));   x ← LN2(x + FF(x))

with ``SA`` multi-head attention (``in_proj_weight`` the stacked ``[W_q; W_k; W_v]`` in
torch's ``[out, in]`` layout, ``y = x Wᵀ + b``, scores ``Q Kᵀ/√d_h``) and ``FF(x) =
linear2(σ(linear1(x)))``. That is tfkernels' sequential block, one Euler step of size 1
per sub-layer, with ``norm="layernorm"`` at ``norm_position`` pre or post, β = 1, the
weights transposed to the right-multiplying layout (``W_q = in_proj_weight[:d].T``).
"""

import numpy as np

from .. import _validate as v
from ._common import require, stack_layers


def _activation(torch, layer, i):
    """tfkernels' name of encoder layer ``i``'s activation, or ValueError naming
    ``module``.

    Parameters
    ----------
    torch : module
    layer : torch.nn.TransformerEncoderLayer
    i : int

    Returns
    -------
    str
    """
    F, nn = torch.nn.functional, torch.nn
    act = layer.activation
    if act is F.relu or act is torch.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    if isinstance(act, nn.GELU):
        raise ValueError(
            f"`module`: layer {i}'s activation nn.GELU(approximate={act.approximate!r}) is "
            "not supported: PyTorch's inference fast path computes it as the exact GELU, so "
            "the module's own output depends on the path it takes; use 'gelu' or 'relu'"
        )
    raise ValueError(
        f"`module`: layer {i}'s activation {act!r} is not supported; the importer reads "
        "'relu' and 'gelu' (exact erf), as strings, torch.nn.functional functions or "
        "nn.ReLU / nn.GELU() modules"
    )


def _tensor(t):
    """A parameter as a float64 ndarray (exact for every float dtype), or None."""
    return None if t is None else t.detach().cpu().double().numpy()


def _check_layer_norm(torch, ln, d, what):
    """Raise unless ``ln`` is an ``nn.LayerNorm`` over the last axis of width d.

    Parameters
    ----------
    torch : module
    ln : object
    d : int
    what : str
        Its name in the message.
    """
    if not isinstance(ln, torch.nn.LayerNorm):
        raise ValueError(f"`module`: {what} must be a torch.nn.LayerNorm, got {type(ln).__name__}")
    if tuple(ln.normalized_shape) != (d,):
        raise ValueError(
            f"`module`: {what} normalizes shape {tuple(ln.normalized_shape)}, expected ({d},)"
        )


def _layer(torch, layer, i):
    """The settings and the float64 weights of encoder layer ``i``.

    Parameters
    ----------
    torch : module
    layer : torch.nn.TransformerEncoderLayer
    i : int

    Returns
    -------
    settings : dict
    weights : dict
    """
    sa = layer.self_attn
    if not sa.batch_first:
        raise ValueError(
            f"`module`: layer {i} is not batch_first; build it with batch_first=True "
            "(tfkernels' states are (batch, tokens, width))"
        )
    if sa.bias_k is not None or sa.bias_v is not None:
        raise ValueError(f"`module`: layer {i}'s attention has add_bias_kv=True (unsupported)")
    if sa.add_zero_attn:
        raise ValueError(f"`module`: layer {i}'s attention has add_zero_attn=True (unsupported)")
    if not sa._qkv_same_embed_dim or sa.in_proj_weight is None:
        raise ValueError(
            f"`module`: layer {i}'s attention has kdim or vdim different from embed_dim "
            f"(kdim={sa.kdim}, vdim={sa.vdim}, embed_dim={sa.embed_dim}); unsupported"
        )
    d = sa.embed_dim
    for name in ("norm1", "norm2"):
        _check_layer_norm(torch, getattr(layer, name), d, f"layer {i}'s {name}")
    if layer.norm1.eps != layer.norm2.eps:
        raise ValueError(
            f"`module`: layer {i}'s norm1.eps={layer.norm1.eps} and norm2.eps="
            f"{layer.norm2.eps} differ; tfkernels has one `norm_eps`"
        )
    W = _tensor(sa.in_proj_weight)
    b = _tensor(sa.in_proj_bias)
    lin1, lin2 = layer.linear1, layer.linear2
    m = lin1.out_features
    weights = {
        "wq": W[:d].T,
        "wk": W[d : 2 * d].T,
        "wv": W[2 * d :].T,
        "wo": _tensor(sa.out_proj.weight).T,
        "bq": None if b is None else b[:d],
        "bk": None if b is None else b[d : 2 * d],
        "bv": None if b is None else b[2 * d :],
        "bo": _tensor(sa.out_proj.bias),
        "w1": _tensor(lin1.weight).T,
        "b1": np.zeros(m) if lin1.bias is None else _tensor(lin1.bias),
        "w2": _tensor(lin2.weight).T,
        "b2": np.zeros(d) if lin2.bias is None else _tensor(lin2.bias),
        "attn_norm_gain": _tensor(layer.norm1.weight),
        "attn_norm_bias": _tensor(layer.norm1.bias),
        "ffn_norm_gain": _tensor(layer.norm2.weight),
        "ffn_norm_bias": _tensor(layer.norm2.bias),
    }
    settings = {
        "d": d,
        "d_ff": m,
        "n_heads": sa.num_heads,
        "norm_first": bool(layer.norm_first),
        "activation": _activation(torch, layer, i),
        "eps": float(layer.norm1.eps),
        "present": tuple(k for k, a in weights.items() if a is not None),
    }
    return settings, weights


def _dropouts(layer):
    """The dropout probabilities of an encoder layer (attention's included)."""
    ps = [layer.self_attn.dropout]
    for name in ("dropout", "dropout1", "dropout2"):
        mod = getattr(layer, name, None)
        if mod is not None:
            ps.append(mod.p)
    return ps


def from_torch(module, dtype=None):
    """Import a PyTorch ``nn.TransformerEncoderLayer`` or ``nn.TransformerEncoder``.

    The result has one weight set per layer, ``block="sequential"``,
    ``norm="layernorm"`` with ``norm_position`` ``"pre"`` (``norm_first=True``) or
    ``"post"``, the module's ``layer_norm_eps``, β = 1, and the encoder's final
    ``norm`` (if any) as the final norm; then, for hidden states ``x`` of shape
    ``(B, T, d)``, ``integrate(p, x, n_layers=L, t_final=L, method="euler")`` is
    ``module(x)`` to rounding error. Attention masks passed at call time are not part
    of the module: a causal mask is ``p.replace(causal=True)``, padding masks are not
    supported.

    Parameters
    ----------
    module : torch.nn.TransformerEncoderLayer or torch.nn.TransformerEncoder
        Built with ``batch_first=True``; activation ``"relu"`` or ``"gelu"`` (as a string,
        ``F.relu``/``F.gelu`` or ``nn.ReLU()``/``nn.GELU()``); with or without biases;
        in eval mode, or in training mode with every dropout 0.
    dtype : float32 or float64, optional
        The parameters' dtype; default the module's (float32 or float64).

    Returns
    -------
    TransformerParams

    Raises
    ------
    ImportError
        torch is not installed.
    TypeError
        ``module`` is not one of the two module types.
    ValueError
        A setting the model cannot represent (naming ``module``): dropout > 0 in
        training mode, another activation, not batch_first, ``add_bias_kv``,
        ``add_zero_attn``, kdim/vdim ≠ d, layers that differ in their settings, a final
        norm that is not a LayerNorm with the layers' eps, or parameters of a dtype
        other than float32/float64 without ``dtype=``.
    """
    torch = require("torch", "TransformerParams.from_torch")
    from ..params import TransformerParams

    nn = torch.nn
    if isinstance(module, nn.TransformerEncoder):
        layers, final = list(module.layers), module.norm
    elif isinstance(module, nn.TransformerEncoderLayer):
        layers, final = [module], None
    else:
        raise TypeError(
            "`module` must be a torch.nn.TransformerEncoderLayer or "
            f"torch.nn.TransformerEncoder, got {type(module).__name__}"
        )
    if not layers:
        raise ValueError("`module` has no layers")
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.TransformerEncoderLayer):
            raise TypeError(
                f"`module`: layer {i} must be a torch.nn.TransformerEncoderLayer, got "
                f"{type(layer).__name__}"
            )
        if layer.training and any(p > 0 for p in _dropouts(layer)):
            raise ValueError(
                f"`module`: layer {i} is in training mode with dropout "
                f"{max(_dropouts(layer))} > 0 (random); call module.eval() or set dropout=0"
            )
    parsed = [_layer(torch, layer, i) for i, layer in enumerate(layers)]
    s0 = parsed[0][0]
    for i, (s, _) in enumerate(parsed[1:], start=1):
        diff = [k for k in s0 if s[k] != s0[k]]
        if diff:
            raise ValueError(
                f"`module`: layer {i} differs from layer 0 in {diff[0]} "
                f"({s[diff[0]]!r} vs {s0[diff[0]]!r}); tfkernels' layers share their settings"
            )
    dtypes = {p.dtype for p in module.parameters()}
    if dtype is None:
        if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
            raise ValueError(
                f"`module` has parameters of dtype {sorted(map(str, dtypes))}; the importer "
                "follows float32 or float64 modules, pass dtype=np.float32 or np.float64"
            )
        dtype = np.float32 if next(iter(dtypes)) == torch.float32 else np.float64
    dtype = v.check_dtype("dtype", dtype)
    kw = stack_layers([w for _, w in parsed], dtype)
    d = s0["d"]
    if final is not None:
        _check_layer_norm(torch, final, d, "the encoder's final norm")
        if float(final.eps) != s0["eps"]:
            raise ValueError(
                f"`module`: the encoder's final norm has eps={final.eps}, its layers "
                f"{s0['eps']}; tfkernels has one `norm_eps`"
            )
        for k, t in (("final_norm_gain", final.weight), ("final_norm_bias", final.bias)):
            if t is not None:
                kw[k] = _tensor(t).astype(dtype)
    return TransformerParams(
        n_heads=s0["n_heads"],
        beta=1.0,
        causal=False,
        activation=s0["activation"],
        norm="layernorm",
        norm_position="pre" if s0["norm_first"] else "post",
        norm_eps=s0["eps"],
        final_norm=final is not None,
        block="sequential",
        **kw,
    )
