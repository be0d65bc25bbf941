"""``TransformerParams.from_safetensors``: the blocks of a BERT- or GPT-2-style
checkpoint as per-layer block parameters.

BERT (Hugging Face ``BertModel`` names; linear weights ``[out, in]``, ``y = x Wᵀ + b``),
layer ``i`` under ``encoder.layer.{i}.`` (after any prefix, e.g. ``bert.``)::

    a = LN_a(x + Attn(x))        attention.self.{query,key,value}, attention.output.dense,
                                 attention.output.LayerNorm
    x = LN_f(a + W_o·gelu(W_i a))  intermediate.dense, output.dense, output.LayerNorm

a post-LN sequential block. GPT-2 (``GPT2Model`` names; ``Conv1D`` weights ``[in, out]``,
``y = x W + b``), layer ``i`` under ``h.{i}.`` (after any prefix, e.g. ``transformer.``)::

    x = x + Attn(ln_1(x))        attn.c_attn (fused q, k, v columns), attn.c_proj, causal
    x = x + MLP(ln_2(x))         mlp.c_fc, mlp.c_proj, gelu_tanh ("gelu_new")
    out = ln_f(x)                the final norm

a pre-LN sequential causal block with a final norm. Both use scores ``Q Kᵀ/√d_h``
(β = 1). Embeddings, position embeddings and poolers are not blocks and are ignored:
the parameters act on hidden states.
"""

import errno
import json
import os
import re

import numpy as np

from .. import _validate as v
from ._common import require, stack_layers

#: Activation names: tfkernels' own and Hugging Face's ``hidden_act`` /
#: ``activation_function`` values that are one of them exactly.
_ACTIVATION_ALIASES = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_tanh",
    "relu": "relu",
    "tanh": "tanh",
    "identity": "identity",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "linear": "identity",
}

#: Per architecture: the layer-key pattern, the config.json names of (n_heads,
#: norm_eps, activation), and an example key for messages.
_ARCHS = {
    "bert": {
        "layer": re.compile(r"^(?P<prefix>(?:.*\.)?)encoder\.layer\.(?P<i>\d+)\.(?P<rest>.+)$"),
        "config": ("num_attention_heads", "layer_norm_eps", "hidden_act"),
        "example": "encoder.layer.0.attention.self.query.weight",
        "stem": "encoder.layer",
    },
    "gpt2": {
        "layer": re.compile(r"^(?P<prefix>(?:.*\.)?)h\.(?P<i>\d+)\.(?P<rest>.+)$"),
        "config": ("n_head", "layer_norm_epsilon", "activation_function"),
        "example": "h.0.attn.c_attn.weight (or transformer.h.0.attn.c_attn.weight)",
        "stem": "h",
    },
}


def _activation_name(name, source):
    """tfkernels' name for an activation given by ``source`` (for the message)."""
    if not isinstance(name, str) or name not in _ACTIVATION_ALIASES:
        raise ValueError(
            f"{source}={name!r} is not a supported activation; expected one of "
            f"{sorted(_ACTIVATION_ALIASES)}"
        )
    return _ACTIVATION_ALIASES[name]


def _read_config(path):
    """The ``config.json`` beside ``path`` as a dict, its path, or (None, path).

    Parameters
    ----------
    path : str

    Returns
    -------
    (dict or None, str)
    """
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(cfg_path):
        return None, cfg_path
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"`path`: the config file {cfg_path!r} is unreadable: {err}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"`path`: the config file {cfg_path!r} is not a JSON object")
    return cfg, cfg_path


def _settings(arch, cfg, cfg_path, n_heads, norm_eps, activation):
    """Resolve n_heads, norm_eps and activation: config.json, else the keyword, else
    ValueError naming the missing argument; both given and different: ValueError.

    Returns
    -------
    (int, float, str)
    """
    keys = _ARCHS[arch]["config"]
    given = {
        "n_heads": None if n_heads is None else v.check_int("n_heads", n_heads, minimum=1),
        "norm_eps": None if norm_eps is None else v.check_float("norm_eps", norm_eps, minimum=0.0),
        "activation": None if activation is None else _activation_name(activation, "`activation`"),
    }
    out = {}
    for (name, kw), key in zip(given.items(), keys):
        from_cfg = None
        if cfg is not None and cfg.get(key) is not None:
            raw = cfg[key]
            where = f"{key} in {cfg_path!r}"
            if name == "n_heads":
                from_cfg = v.check_int(where, raw, minimum=1)
            elif name == "norm_eps":
                from_cfg = v.check_float(where, raw, minimum=0.0)
            else:
                from_cfg = _activation_name(raw, where)
        if kw is not None and from_cfg is not None and kw != from_cfg:
            raise ValueError(
                f"`{name}`={kw!r} disagrees with {key}={cfg[key]!r} in {cfg_path!r}; "
                "leave it out or fix the file"
            )
        val = kw if kw is not None else from_cfg
        if val is None:
            raise ValueError(
                f"`{name}` is missing: pass {name}=… or put {key!r} in a config.json "
                f"beside `path` ({cfg_path!r} "
                + ("lacks it)" if cfg is not None else "does not exist)")
            )
        out[name] = val
    if arch == "gpt2" and cfg is not None:
        if cfg.get("scale_attn_by_inverse_layer_idx"):
            raise ValueError(
                f"`path`: {cfg_path!r} sets scale_attn_by_inverse_layer_idx (unsupported)"
            )
        if cfg.get("scale_attn_weights", True) is False:
            raise ValueError(f"`path`: {cfg_path!r} sets scale_attn_weights=false (unsupported)")
    return out["n_heads"], out["norm_eps"], out["activation"]


def _layer_keys(arch, keys, path):
    """Group the layer keys: ``(prefix, {i: {rest: key}})``; ValueError naming ``path``
    when there are none or several prefixes, or the indices are not 0 … L−1."""
    spec = _ARCHS[arch]
    found, prefixes = {}, set()
    for k in keys:
        m = spec["layer"].match(k)
        if m is None:
            continue
        prefixes.add(m["prefix"])
        found.setdefault(int(m["i"]), {})[m["rest"]] = k
    if not found:
        raise ValueError(
            f"`path` {path!r} is not a {arch} checkpoint: no key like {spec['example']!r} "
            f"(its keys start {sorted(keys)[:3]})"
        )
    if len(prefixes) > 1:
        raise ValueError(
            f"`path` {path!r} holds {arch} layers under several prefixes {sorted(prefixes)}"
        )
    if sorted(found) != list(range(len(found))):
        raise ValueError(
            f"`path` {path!r}: the {arch} layer indices {sorted(found)} are not 0 … "
            f"{len(found) - 1}"
        )
    return prefixes.pop(), found


def _select(layers, n):
    """The layer indices that ``layers`` selects among n, in order."""
    if layers is None:
        return list(range(n))
    if isinstance(layers, slice):
        idx = list(range(n))[layers]
    elif isinstance(layers, range):
        idx = list(layers)
    elif isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        idx = [int(layers)]
    else:
        try:
            idx = list(layers)
        except TypeError:
            raise TypeError(
                "`layers` must be None, an int, a slice, a range or a sequence of ints, "
                f"got {type(layers).__name__}"
            ) from None
        for i in idx:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"`layers` must hold ints, got {i!r}")
    idx = [int(i) for i in idx]
    if not idx:
        raise ValueError(f"`layers`={layers!r} selects no layer (the file has {n})")
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ValueError(
            f"`layers`: layer {bad[0]} is out of range (the file has {n}: 0 … {n - 1})"
        )
    return idx


def _bert_layer(get):
    """The float64 weights of one BERT layer (``[out, in]`` transposed).

    ``get(name, *aliases)`` reads the layer's tensor ``name`` (or the first alias
    present: older checkpoints name the LayerNorm parameters ``gamma`` and ``beta``).
    """

    def lin(name):
        return get(f"{name}.weight").T, get(f"{name}.bias")

    def ln(name):
        return get(f"{name}.weight", f"{name}.gamma"), get(f"{name}.bias", f"{name}.beta")

    wq, bq = lin("attention.self.query")
    wk, bk = lin("attention.self.key")
    wv, bv = lin("attention.self.value")
    wo, bo = lin("attention.output.dense")
    w1, b1 = lin("intermediate.dense")
    w2, b2 = lin("output.dense")
    ga, ba = ln("attention.output.LayerNorm")
    gf, bf = ln("output.LayerNorm")
    return {
        "wq": wq,
        "wk": wk,
        "wv": wv,
        "wo": wo,
        "bq": bq,
        "bk": bk,
        "bv": bv,
        "bo": bo,
        "w1": w1,
        "b1": b1,
        "w2": w2,
        "b2": b2,
        "attn_norm_gain": ga,
        "attn_norm_bias": ba,
        "ffn_norm_gain": gf,
        "ffn_norm_bias": bf,
    }


def _gpt2_layer(get):
    """The float64 weights of one GPT-2 layer (``Conv1D`` ``[in, out]`` as they are).

    ``get(name)`` reads the layer's tensor ``name``.
    """
    W, b = get("attn.c_attn.weight"), get("attn.c_attn.bias")
    if W.ndim != 2 or W.shape[1] != 3 * W.shape[0] or b.shape != (W.shape[1],):
        raise ValueError(
            f"attn.c_attn has shapes {W.shape} and {b.shape}; expected (d, 3d) and (3d,)"
        )
    d = W.shape[0]
    return {
        "wq": W[:, :d],
        "wk": W[:, d : 2 * d],
        "wv": W[:, 2 * d :],
        "wo": get("attn.c_proj.weight"),
        "bq": b[:d],
        "bk": b[d : 2 * d],
        "bv": b[2 * d :],
        "bo": get("attn.c_proj.bias"),
        "w1": get("mlp.c_fc.weight"),
        "b1": get("mlp.c_fc.bias"),
        "w2": get("mlp.c_proj.weight"),
        "b2": get("mlp.c_proj.bias"),
        "attn_norm_gain": get("ln_1.weight"),
        "attn_norm_bias": get("ln_1.bias"),
        "ffn_norm_gain": get("ln_2.weight"),
        "ffn_norm_bias": get("ln_2.bias"),
    }


def from_safetensors(
    path, arch="bert", layers=None, *, n_heads=None, norm_eps=None, activation=None, dtype=None
):
    """Import the blocks of a BERT- or GPT-2-style ``.safetensors`` checkpoint.

    The result has one weight set per selected layer, ``block="sequential"``,
    ``norm="layernorm"``: ``"post"`` for BERT, ``"pre"`` with ``causal=True`` and the
    final norm ``ln_f`` for GPT-2 (only when the selection ends with the file's last
    layer: ``ln_f`` follows it). For hidden states ``x`` (the output of the embeddings,
    which are not imported), ``integrate(p, x, n_layers=L, t_final=L, method="euler")``
    is the checkpoint's encoder (BERT) or ``GPT2Model``'s last hidden state (GPT-2).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.safetensors`` file. A ``config.json`` beside it (as Hugging Face ships
        it) gives the settings: BERT ``num_attention_heads``, ``layer_norm_eps``,
        ``hidden_act``; GPT-2 ``n_head``, ``layer_norm_epsilon``,
        ``activation_function``.
    arch : {"bert", "gpt2"}
    layers : None, int, slice, range or sequence of int
        The layers to import, in the order given (default all).
    n_heads, norm_eps, activation : optional
        The settings when config.json lacks them; if both give one, they must agree.
        ``activation`` in tfkernels' names or Hugging Face's (``gelu_new`` and
        ``gelu_pytorch_tanh`` are ``gelu_tanh``).
    dtype : float32 or float64, optional
        Default: the file's (its tensors must then be float32 or float64).

    Returns
    -------
    TransformerParams

    Raises
    ------
    ImportError
        safetensors is not installed.
    FileNotFoundError
        No file at ``path``.
    TypeError, ValueError
        Naming the argument: not a safetensors file or not the layout of ``arch``
        (``path``), a missing or disagreeing setting, a bad ``layers`` selection, or
        tensors of another dtype without ``dtype=``.
    """
    from ..params import TransformerParams, _check_path

    path = _check_path(path)
    v.check_choice("arch", arch, _ARCHS)
    if dtype is not None:
        dtype = v.check_dtype("dtype", dtype)
    st = require("safetensors", "TransformerParams.from_safetensors")
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "`path`: no such safetensors file", path)
    if os.path.isdir(path):
        raise ValueError(f"`path` {path!r} is a directory; give the .safetensors file")
    try:
        fh = st.safe_open(path, framework="numpy")
    except (OSError, ValueError, st.SafetensorError) as err:
        raise ValueError(f"`path` {path!r} is not a safetensors file: {err}") from None
    cfg, cfg_path = _read_config(path)
    heads, eps, act = _settings(arch, cfg, cfg_path, n_heads, norm_eps, activation)
    with fh:
        keys = list(fh.keys())
        prefix, found = _layer_keys(arch, keys, path)
        idx = _select(layers, len(found))
        file_dtypes = set()

        def getter(i):
            names = found[i]

            def get(rest, *aliases):
                key = next((names[r] for r in (rest, *aliases) if r in names), None)
                if key is None:
                    raise ValueError(
                        f"`path` {path!r}: layer {i} lacks "
                        f"{prefix}{_ARCHS[arch]['stem']}.{i}.{rest} (not a complete {arch} "
                        "layer)"
                    )
                return read(key)

            return get

        def read(key):
            try:
                a = fh.get_tensor(key)
            except (TypeError, ValueError, st.SafetensorError) as err:
                raise ValueError(
                    f"`path` {path!r}: tensor {key!r} is unreadable with NumPy ({err}); "
                    "bfloat16 files are not supported"
                ) from None
            file_dtypes.add(a.dtype)
            return a.astype(np.float64)

        build = _bert_layer if arch == "bert" else _gpt2_layer
        per_layer = []
        for i in idx:
            try:
                per_layer.append(build(getter(i)))
            except ValueError as err:
                if str(err).startswith("`path`"):
                    raise
                raise ValueError(f"`path` {path!r}: layer {i}: {err}") from None
        final = {}
        if arch == "gpt2" and idx[-1] == len(found) - 1:
            for k, rest in (("final_norm_gain", "ln_f.weight"), ("final_norm_bias", "ln_f.bias")):
                if prefix + rest not in keys:
                    raise ValueError(f"`path` {path!r}: no final norm {prefix + rest!r}")
                final[k] = read(prefix + rest)
    if dtype is None:
        if len(file_dtypes) != 1 or next(iter(file_dtypes)) not in (np.float32, np.float64):
            raise ValueError(
                f"`path` {path!r} holds tensors of dtype {sorted(map(str, file_dtypes))}; "
                "pass dtype=np.float32 or np.float64"
            )
        dtype = np.dtype(next(iter(file_dtypes)))
    kw = stack_layers(per_layer, dtype)
    kw.update({k: a.astype(dtype) for k, a in final.items()})
    try:
        return TransformerParams(
            n_heads=heads,
            beta=1.0,
            causal=arch == "gpt2",
            activation=act,
            norm="layernorm",
            norm_position="post" if arch == "bert" else "pre",
            norm_eps=eps,
            final_norm=bool(final),
            block="sequential",
            **kw,
        )
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`path` {path!r}: the {arch} weights do not fit together: {err}"
        ) from None
