"""Peers: the same flow written in NumPy, PyTorch and JAX, for the benchmark harness.

Each peer computes the flow of :func:`tfkernels.integrate` — ``N`` explicit
Runge–Kutta layers of ``f(X) = g(X) + h(X) − γ·X + X·A`` (shared weights) — on the
same initial states and weights, batched the way that library is meant to be used:

``numpy``
    One ``(B·T, d) @ (d, ·)`` GEMM per projection, batched ``matmul`` per head for
    the scores, in-place softmax; the batch is cut into cache-sized chunks. Two
    variants, the faster counts: ``blas-threads`` (``OPENBLAS_NUM_THREADS`` = the
    thread count, one Python thread) and ``py-threads`` (``OPENBLAS_NUM_THREADS=1``,
    chunks spread over a pool of Python threads; NumPy releases the GIL in its
    kernels). OpenBLAS's idle worker threads spin for ``2**28`` cycles (≈ 0.1 s)
    before they sleep, slowing whatever runs next on the same cores;
    ``blas-threads`` therefore sets ``OPENBLAS_THREAD_TIMEOUT=4`` (spin 2**4 cycles;
    the measurements are in ``bench/README.md``, "OpenBLAS note").
``torch``
    Eager PyTorch under ``torch.no_grad()``, ``torch.set_num_threads(threads)``.
``jax``
    ``jax.jit(jax.vmap(flow))`` with ``lax.scan`` over the layers. XLA flags must be
    set before ``jax`` is imported, so each variant runs in its own process:
    ``default`` and ``eigen-st`` (``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``).

Every peer variant runs in a subprocess (``python -m tfkernels.bench.peers --serve``) that
the harness keeps for the whole sweep: thread pools (OpenMP in torch, OpenBLAS, XLA's)
then never share a process with Numba's, environment variables can differ per
variant, and a peer that is not installed is reported as skipped. The worker does its
own timing, so the pipe transfer is never timed.
"""

import argparse
import pickle
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from ..methods import METHODS, sub_steps, tableau
from .fresh import child_env

PEERS = ("numpy", "torch", "jax")

#: Elements of the largest per-chunk intermediate of the NumPy peer (≈ L2-sized).
NUMPY_CHUNK_ELEMS = 1 << 17


class PeerUnavailable(RuntimeError):
    """The peer's library is not installed (the peer is skipped, not failed)."""


@dataclass(frozen=True)
class Variant:
    """One way of running a peer: its name and the environment it needs.

    Attributes
    ----------
    peer : str
        ``numpy``, ``torch`` or ``jax``.
    name : str
        Variant label, e.g. ``eigen-st``.
    env : dict
        Environment variables set in the worker process before any import.
    options : dict
        Options passed to the peer's builder.
    """

    peer: str
    name: str
    env: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @property
    def label(self):
        """``peer[variant]``."""
        return f"{self.peer}[{self.name}]"


def variants(peer, threads):
    """Return the variants of ``peer`` the harness measures (the faster one counts).

    Parameters
    ----------
    peer : str
        One of :data:`PEERS`.
    threads : int
        Threads each variant may use.

    Returns
    -------
    list of Variant
    """
    n = str(threads)
    if peer == "numpy":
        return [
            Variant(
                "numpy",
                "blas-threads",
                {"OPENBLAS_NUM_THREADS": n, "OPENBLAS_THREAD_TIMEOUT": "4"},
                {"py_threads": 1},
            ),
            Variant("numpy", "py-threads", {"OPENBLAS_NUM_THREADS": "1"}, {"py_threads": threads}),
        ]
    if peer == "torch":
        return [Variant("torch", "eager", {}, {})]
    if peer == "jax":
        return [
            Variant("jax", "default", {"XLA_FLAGS": ""}, {}),
            Variant("jax", "eigen-st", {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}, {}),
        ]
    raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


# ------------------------------------------------------------------ the flow spec
def flow_spec(params, n_layers, method="euler", t_final=1.0):
    """Describe the flow as a picklable dict of plain arrays and settings.

    Parameters
    ----------
    params : TransformerParams
        Shared weights (per-layer weights are not supported by the peers).
    n_layers : int
    method : {"euler", "heun", "rk4"}
    t_final : float

    Returns
    -------
    dict
    """
    if params.n_sets is not None:
        raise ValueError("the peers support shared weights only; `params` has per-layer sets")
    if method not in METHODS or method == "averaged":
        raise ValueError(f"peers run euler, heun or rk4, got `method`={method!r}")
    a, b, _ = tableau(method).arrays
    weights = {
        k: np.asarray(getattr(params, k))
        for k in ("wq", "wk", "wv", "wo", "w1", "b1", "w2", "b2", "linear")
        if getattr(params, k) is not None
    }
    return {
        "block": block_spec(params, weights),
        "weights": weights,
        "n_heads": params.n_heads,
        "beta": params.beta,
        "causal": params.causal,
        "damping": params.damping,
        "activation": params.activation,
        "n_layers": int(n_layers),
        "dt": float(t_final) / int(n_layers),
        "a": a,
        "b": b,
        "dtype": np.dtype(params.dtype).name,
        "method": method,
    }


def block_spec(params, weights):
    """The block settings of ``params`` for the peers, or None for the paper's model.

    Adds the attention biases (zeros where absent, ``bqkv`` fused) and the norm
    parameters (ones and zeros where absent) to ``weights``; returns ``norm``,
    ``position``, ``eps``, ``final`` and the layer's sub-steps ``(subs, fraction,
    post norm)`` (:func:`sub_steps`).
    """
    if not params.is_block:
        return None
    d, dt = params.d, params.dtype
    zeros, ones = np.zeros(d, dtype=dt), np.ones(d, dtype=dt)
    if params.attention:
        biases = [getattr(params, f"b{k}") for k in "qkv"]
        weights["bqkv"] = np.concatenate([zeros if b is None else np.asarray(b) for b in biases])
        weights["bo"] = zeros if params.bo is None else np.asarray(params.bo)
    for sub in ("attn", "ffn", "final"):
        for kind, default in (("gain", ones), ("bias", zeros)):
            given = getattr(params, f"{sub}_norm_{kind}")
            weights[f"{sub}_{kind}"] = default if given is None else np.asarray(given)
    return {
        "norm": params.norm,
        "position": params.norm_position if params.norm else None,
        "eps": float(params.norm_eps),
        "final": bool(params.final_norm),
        "sub_steps": sub_steps(params),
    }


def block_layer(X, spec, ops):
    """One layer of a block model, written with operators only (every peer).

    ``ops`` gives the peer's ``attn(X)`` (attention with its biases), ``ffn(X)`` (the
    FFN alone, None when off), ``norm(X, which)`` for ``which`` in attn, ffn, final,
    and ``rowdot(X, Y)`` (per-token inner products, keeping the last axis).
    """
    blk, w = spec["block"], spec["weights"]
    pre, tangent = blk["position"] == "pre", blk["position"] == "tangent"
    γ = spec["damping"]

    def field(Z, subs):
        out = None
        for sub in subs:
            Y = ops.norm(Z, sub) if pre else Z
            if sub == "attn":
                F = ops.attn(Y)
            else:
                F = ops.ffn(Y) if "w1" in w else None
                if γ:
                    F = Z * (-γ) if F is None else F - γ * Z
                if "linear" in w:
                    F = Z @ ops.linear if F is None else F + Z @ ops.linear
            out = F if out is None else out + F
        if tangent:
            out = out - (ops.rowdot(Z, out) / ops.rowdot(Z, Z)) * Z
        return out

    for subs, frac, post in blk["sub_steps"]:
        X = rk_layer(lambda Z, s=subs: field(Z, s), X, spec, frac)
        if post is not None:
            X = ops.norm(X, post)
    return X


def rk_layer(f, X, spec, fraction=1.0):
    """One explicit RK step ``X + h Σ b_i k_i`` (h = ``fraction``·Δt) written with
    operators only.

    Works for NumPy arrays and torch/JAX tensors alike.
    """
    a, b, dt = spec["a"], spec["b"], spec["dt"] * fraction
    # Python floats are "weak" scalars: they keep a float32 state float32 in every library.
    ks = []
    for i in range(len(b)):
        xi = X
        for j in range(i):
            if a[i, j] != 0:
                xi = xi + float(dt * a[i, j]) * ks[j]
        ks.append(f(xi))
    out = X
    for i, k in enumerate(ks):
        out = out + float(dt * b[i]) * k
    return out


# ------------------------------------------------------------------------ NumPy
def _numpy_activation(name):
    from scipy.special import erf

    s2, c = np.sqrt(0.5), np.sqrt(2.0 / np.pi)
    return {
        "gelu": lambda z: 0.5 * z * (1.0 + erf(z * z.dtype.type(s2))),
        "gelu_tanh": lambda z: 0.5 * z * (1.0 + np.tanh(z.dtype.type(c) * (z + 0.044715 * z**3))),
        "relu": lambda z: np.maximum(z, 0),
        "tanh": np.tanh,
        "identity": lambda z: z,
    }[name]


def numpy_vector_field(spec):
    """Return ``f`` acting on a batch ``(B, T, d)`` in NumPy."""
    w = spec["weights"]
    dt_ = np.dtype(spec["dtype"])
    wqkv = np.concatenate([w["wq"], w["wk"], w["wv"]], axis=1) if "wq" in w else None
    act = _numpy_activation(spec["activation"])
    γ = dt_.type(spec["damping"])

    def f(X):
        B, T, d = X.shape
        X2 = X.reshape(B * T, d)
        out = -γ * X2 if γ else np.zeros_like(X2)
        if wqkv is not None:
            out += _numpy_heads(X2 @ wqkv, B, T, spec) @ w["wo"]
        if "w1" in w:
            out += act(X2 @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]
        if "linear" in w:
            out += X2 @ w["linear"]
        return out.reshape(B, T, d)

    return f


def _numpy_heads(qkv, B, T, spec):
    """The heads' outputs ``(B·T, d)`` of attention from the projections ``qkv (B·T, 3d)``."""
    H, d = spec["n_heads"], qkv.shape[1] // 3
    dh = d // H
    qkv = qkv.reshape(B, T, 3, H, dh).transpose(2, 0, 3, 1, 4)
    S = qkv[0] @ qkv[1].transpose(0, 1, 3, 2)
    S *= qkv.dtype.type(spec["beta"] / np.sqrt(dh))
    if spec["causal"]:
        S[..., np.triu(np.ones((T, T), dtype=bool), 1)] = -np.inf
    S -= S.max(axis=-1, keepdims=True)
    np.exp(S, out=S)
    S /= S.sum(axis=-1, keepdims=True)
    return (S @ qkv[2]).transpose(0, 2, 1, 3).reshape(B * T, d)


def _norm(X, which, blk, w, lib):
    """The block's norm ``which`` (attn, ffn, final) of every token of X, with the
    array functions of ``lib`` (``sqrt``, ``mean``, ``sum`` over the last axis keeping
    it)."""
    if blk["norm"] == "sphere":
        return X / lib.sqrt(lib.sum(X * X))
    if blk["norm"] == "rmsnorm":
        return X / lib.sqrt(lib.mean(X * X) + blk["eps"]) * w[f"{which}_gain"]
    Xc = X - lib.mean(X)
    return Xc / lib.sqrt(lib.mean(Xc * Xc) + blk["eps"]) * w[f"{which}_gain"] + w[f"{which}_bias"]


def numpy_block_ops(spec):
    """The operations :func:`block_layer` needs, in NumPy, on batches ``(B, T, d)``."""
    w, blk = spec["weights"], spec["block"]
    act = _numpy_activation(spec["activation"])
    lib = SimpleNamespace(
        sqrt=np.sqrt,
        mean=lambda Z: Z.mean(axis=-1, keepdims=True),
        sum=lambda Z: Z.sum(axis=-1, keepdims=True),
    )
    wqkv = np.concatenate([w["wq"], w["wk"], w["wv"]], axis=1) if "wq" in w else None

    def attn(X):
        B, T, d = X.shape
        qkv = X.reshape(B * T, d) @ wqkv + w["bqkv"]
        return (_numpy_heads(qkv, B, T, spec) @ w["wo"] + w["bo"]).reshape(B, T, d)

    def ffn(X):
        return act(X @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]

    return SimpleNamespace(
        attn=attn,
        ffn=ffn,
        norm=lambda X, which: _norm(X, which, blk, w, lib),
        rowdot=lambda A, B: lib.sum(A * B),
        linear=w.get("linear"),
    )


def peer_layer(spec, f, ops):
    """The function advancing a state one layer: an RK step of ``f`` for the paper's
    model, :func:`block_layer` for a block."""
    if spec["block"] is None:
        return lambda X: rk_layer(f, X, spec)
    return lambda X: block_layer(X, spec, ops)


def final_norm(spec, ops, X):
    """``X`` with the block's final norm applied when it has one."""
    blk = spec["block"]
    return ops.norm(X, "final") if blk is not None and blk["final"] else X


class NumpyFlow:
    """The NumPy peer: chunks of trajectories, optionally over Python threads."""

    def __init__(self, spec, threads, py_threads=1):
        self.spec = spec
        self.f = numpy_vector_field(spec) if spec["block"] is None else None
        self.ops = numpy_block_ops(spec) if spec["block"] is not None else None
        self.layer = peer_layer(spec, self.f, self.ops)
        self.pool = ThreadPoolExecutor(py_threads) if py_threads > 1 else None
        self.py_threads = py_threads
        self.x0 = self.out = None

    def load(self, x0):
        """Keep the initial states; choose the chunk size."""
        self.x0 = np.ascontiguousarray(x0)
        B, T, d = x0.shape
        w = self.spec["weights"]
        width = max(3 * d, w["w1"].shape[1] if "w1" in w else 0, self.spec["n_heads"] * T)
        per_traj = T * width
        chunk = max(1, NUMPY_CHUNK_ELEMS // per_traj)
        chunk = min(chunk, -(-B // self.py_threads))
        self.chunks = [slice(i, min(i + chunk, B)) for i in range(0, B, chunk)]

    def _run_chunk(self, sl):
        X = self.x0[sl]
        for _ in range(self.spec["n_layers"]):
            X = self.layer(X)
        self.out[sl] = final_norm(self.spec, self.ops, X)

    def run(self):
        """Advance every trajectory through all layers."""
        self.out = np.empty_like(self.x0)
        if self.pool is None:
            for sl in self.chunks:
                self._run_chunk(sl)
        else:
            list(self.pool.map(self._run_chunk, self.chunks))

    def result(self):
        """The final states as a NumPy array."""
        return self.out


# ------------------------------------------------------------------------ torch
class TorchFlow:
    """The PyTorch peer: eager ops under ``torch.no_grad()``."""

    def __init__(self, spec, threads):
        try:
            import torch
        except ImportError as exc:
            raise PeerUnavailable(f"torch is not installed ({exc})") from None
        torch.set_num_threads(threads)
        self.torch, self.spec = torch, spec
        w = {k: torch.from_numpy(np.array(v)) for k, v in spec["weights"].items()}
        if "wq" in w:
            w["wqkv"] = torch.cat([w["wq"], w["wk"], w["wv"]], dim=1)
        self.w = w
        self.ops = self._ops() if spec["block"] is not None else None
        self.layer = peer_layer(spec, self._f, self.ops)
        self.X = self.out = None

    def _heads(self, qkv):
        """The heads' outputs ``(B, T, d)`` from the projections ``qkv (B, T, 3d)``."""
        spec = self.spec
        B, T, d3 = qkv.shape
        H, d = spec["n_heads"], d3 // 3
        dh = d // H
        qkv = qkv.reshape(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)
        S = (qkv[0] @ qkv[1].transpose(-1, -2)) * (spec["beta"] / dh**0.5)
        if spec["causal"]:
            S = S.masked_fill(self.mask[:T, :T], float("-inf"))
        P = self.torch.softmax(S, dim=-1)
        return (P @ qkv[2]).permute(0, 2, 1, 3).reshape(B, T, d)

    def _ffn(self, X):
        torch, w, act = self.torch, self.w, self.spec["activation"]
        z = X @ w["w1"] + w["b1"]
        if act in ("gelu", "gelu_tanh"):
            z = torch.nn.functional.gelu(z, approximate="none" if act == "gelu" else "tanh")
        elif act == "relu":
            z = torch.relu(z)
        elif act == "tanh":
            z = torch.tanh(z)
        return z @ w["w2"] + w["b2"]

    def _f(self, X):
        w, spec = self.w, self.spec
        out = X * (-spec["damping"]) if spec["damping"] else self.torch.zeros_like(X)
        if "wqkv" in w:
            out = out + self._heads(X @ w["wqkv"]) @ w["wo"]
        if "w1" in w:
            out = out + self._ffn(X)
        if "linear" in w:
            out = out + X @ w["linear"]
        return out

    def _norm(self, X, which):
        """The block's norm as a PyTorch user writes it (``F.layer_norm``,
        ``F.rms_norm``)."""
        F, blk, w = self.torch.nn.functional, self.spec["block"], self.w
        shape = (X.shape[-1],)
        if blk["norm"] == "layernorm":
            return F.layer_norm(X, shape, w[f"{which}_gain"], w[f"{which}_bias"], blk["eps"])
        if blk["norm"] == "rmsnorm":
            return F.rms_norm(X, shape, w[f"{which}_gain"], blk["eps"])
        return X / self.torch.linalg.vector_norm(X, dim=-1, keepdim=True)

    def _ops(self):
        w = self.w
        return SimpleNamespace(
            attn=lambda X: self._heads(X @ w["wqkv"] + w["bqkv"]) @ w["wo"] + w["bo"],
            ffn=self._ffn,
            norm=self._norm,
            rowdot=lambda A, B: (A * B).sum(dim=-1, keepdim=True),
            linear=w.get("linear"),
        )

    def load(self, x0):
        """Wrap the initial states (no copy)."""
        torch = self.torch
        self.X = torch.from_numpy(np.ascontiguousarray(x0))
        T = x0.shape[1]
        self.mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)

    def run(self):
        """Advance every trajectory through all layers."""
        with self.torch.no_grad():
            X = self.X
            for _ in range(self.spec["n_layers"]):
                X = self.layer(X)
            self.out = final_norm(self.spec, self.ops, X)

    def result(self):
        """The final states as a NumPy array."""
        return self.out.numpy()


# -------------------------------------------------------------------------- JAX
class JaxFlow:
    """The JAX peer: ``jit(vmap(flow))`` with ``lax.scan`` over the layers."""

    def __init__(self, spec, threads):
        try:
            import jax
        except ImportError as exc:
            raise PeerUnavailable(f"jax is not installed ({exc})") from None
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        self.jax, self.jnp, self.spec = jax, jnp, spec
        w = {k: jnp.asarray(v) for k, v in spec["weights"].items()}
        if "wq" in w:
            w["wqkv"] = jnp.concatenate([w["wq"], w["wk"], w["wv"]], axis=1)
        self.w = w
        self.fn = jax.jit(jax.vmap(self._flow, in_axes=(0, None)))
        self.X = self.out = None

    def _heads(self, qkv):
        """The heads' outputs ``(T, d)`` from one trajectory's projections ``(T, 3d)``."""
        jax, jnp, spec = self.jax, self.jnp, self.spec
        T, d3 = qkv.shape
        H, d = spec["n_heads"], d3 // 3
        dh = d // H
        qkv = qkv.reshape(T, 3, H, dh)
        S = jnp.einsum("thc,shc->hts", qkv[:, 0], qkv[:, 1]) * (spec["beta"] / dh**0.5)
        if spec["causal"]:
            S = jnp.where(jnp.tril(jnp.ones((T, T), dtype=bool)), S, -jnp.inf)
        P = jax.nn.softmax(S, axis=-1)
        return jnp.einsum("hts,shc->thc", P, qkv[:, 2]).reshape(T, d)

    def _ffn(self, X, w):
        jax, jnp, act = self.jax, self.jnp, self.spec["activation"]
        z = X @ w["w1"] + w["b1"]
        if act in ("gelu", "gelu_tanh"):
            z = jax.nn.gelu(z, approximate=act == "gelu_tanh")
        elif act == "relu":
            z = jax.nn.relu(z)
        elif act == "tanh":
            z = jnp.tanh(z)
        return z @ w["w2"] + w["b2"]

    def _f(self, X, w):
        spec = self.spec
        out = X * (-spec["damping"]) if spec["damping"] else self.jnp.zeros_like(X)
        if "wqkv" in w:
            out = out + self._heads(X @ w["wqkv"]) @ w["wo"]
        if "w1" in w:
            out = out + self._ffn(X, w)
        if "linear" in w:
            out = out + X @ w["linear"]
        return out

    def _ops(self, w):
        jnp = self.jnp
        lib = SimpleNamespace(
            sqrt=jnp.sqrt,
            mean=lambda Z: jnp.mean(Z, axis=-1, keepdims=True),
            sum=lambda Z: jnp.sum(Z, axis=-1, keepdims=True),
        )
        return SimpleNamespace(
            attn=lambda X: self._heads(X @ w["wqkv"] + w["bqkv"]) @ w["wo"] + w["bo"],
            ffn=lambda X: self._ffn(X, w),
            norm=lambda X, which: _norm(X, which, self.spec["block"], w, lib),
            rowdot=lambda A, B: lib.sum(A * B),
            linear=w.get("linear"),
        )

    def _flow(self, X, w):
        ops = self._ops(w) if self.spec["block"] is not None else None
        layer = peer_layer(self.spec, lambda Z: self._f(Z, w), ops)

        def body(X, _):
            return layer(X), None

        X = self.jax.lax.scan(body, X, None, length=self.spec["n_layers"])[0]
        return final_norm(self.spec, ops, X)

    def load(self, x0):
        """Copy the initial states to the (CPU) device."""
        self.X = self.jax.device_put(np.ascontiguousarray(x0))

    def run(self):
        """Advance every trajectory through all layers (waits for the result)."""
        self.out = self.fn(self.X, self.w).block_until_ready()

    def result(self):
        """The final states as a NumPy array."""
        return np.asarray(self.out)


def build(peer, spec, threads, **options):
    """Return the flow object of ``peer`` (``load``, ``run``, ``result``).

    Raises
    ------
    PeerUnavailable
        When the peer's library is not installed.
    """
    if peer == "numpy":
        return NumpyFlow(spec, threads, **options)
    if peer == "torch":
        return TorchFlow(spec, threads)
    if peer == "jax":
        return JaxFlow(spec, threads)
    raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


def library_version(peer):
    """The version string of the peer's library, or raise PeerUnavailable."""
    try:
        mod = __import__(peer)
    except ImportError as exc:
        raise PeerUnavailable(f"{peer} is not installed ({exc})") from None
    return getattr(mod, "__version__", "?")


# --------------------------------------------------------------- worker process
def serve(peer, threads, options, stdin, stdout):
    """Answer the harness's requests until ``exit`` (runs inside the worker).

    Requests and replies are pickles on the binary pipes:
    ``("setup", spec, x0)`` → ``("ok", {"out", "first_s"})``;
    ``("time", n)`` → ``("ok", seconds for n runs)``; ``("exit",)``.
    """

    def reply(*msg):
        pickle.dump(msg, stdout, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.flush()

    try:
        reply("ready", {"version": library_version(peer), "threads": threads})
    except PeerUnavailable as exc:
        reply("unavailable", str(exc))
        return
    flow = None
    while True:
        try:
            req = pickle.load(stdin)
        except EOFError:
            return
        try:
            if req[0] == "exit":
                return
            if req[0] == "setup":
                flow = build(peer, req[1], threads, **options)
                flow.load(req[2])
                t0 = time.perf_counter()
                flow.run()
                reply("ok", {"out": flow.result(), "first_s": time.perf_counter() - t0})
            elif req[0] == "time":
                t0 = time.perf_counter()
                for _ in range(req[1]):
                    flow.run()
                reply("ok", time.perf_counter() - t0)
            else:
                reply("error", f"unknown request {req[0]!r}")
        except PeerUnavailable as exc:
            reply("unavailable", str(exc))
        except Exception:  # noqa: BLE001 - reported to the harness, which goes on
            reply("error", traceback.format_exc(limit=6))


class PeerProcess:
    """The harness's handle on one peer variant running in its own process.

    Parameters
    ----------
    variant : Variant
    threads : int

    Attributes
    ----------
    status : str
        ``ok``, ``skipped`` (library missing) or ``error``.
    message : str
        Why it was skipped or failed.
    version : str
    """

    def __init__(self, variant, threads):
        self.variant, self.threads = variant, threads
        self.status, self.message, self.version = "ok", "", None
        env = child_env(variant.env)
        self.log = tempfile.TemporaryFile()
        cmd = [
            sys.executable,
            "-m",
            "tfkernels.bench.peers",
            "--serve",
            variant.peer,
            "--threads",
            str(threads),
            "--options",
            repr(variant.options),
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env
        )
        kind, payload = self._read()
        if kind == "ready":
            self.version = payload["version"]
        else:
            self._fail("skipped" if kind == "unavailable" else "error", payload)

    def _stderr_tail(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def _read(self):
        try:
            return pickle.load(self.proc.stdout)
        except (EOFError, pickle.UnpicklingError):
            self.proc.wait()
            return "error", (
                f"worker exited with code {self.proc.returncode}: {self._stderr_tail()}"
            )

    def _fail(self, status, message):
        self.status, self.message = status, str(message).strip()
        self.close()

    def request(self, *msg):
        """Send a request and return its payload; raise RuntimeError on a failure."""
        if self.status != "ok":
            raise RuntimeError(f"{self.variant.label} is {self.status}: {self.message}")
        try:
            pickle.dump(msg, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._fail("error", f"worker died: {self._stderr_tail()}")
            raise RuntimeError(self.message) from None
        kind, payload = self._read()
        if kind == "ok":
            return payload
        if kind == "unavailable":
            self._fail("skipped", payload)
        elif kind == "error" and self.proc.poll() is not None:
            self._fail("error", payload)
        raise RuntimeError(str(payload))

    def setup(self, spec, x0):
        """Build the flow on ``x0``; return ``(output, first-call seconds)``."""
        r = self.request("setup", spec, x0)
        return r["out"], r["first_s"]

    def sample(self, n_inner):
        """Seconds for ``n_inner`` back-to-back runs, timed inside the worker."""
        return self.request("time", int(n_inner))

    def close(self):
        """Stop the worker."""
        if self.proc.poll() is None:
            try:
                pickle.dump(("exit",), self.proc.stdin)
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _main(argv=None):
    parser = argparse.ArgumentParser(description="tfkernels peer worker (used by the harness)")
    parser.add_argument("--serve", required=True, choices=PEERS)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--options", default="{}")
    args = parser.parse_args(argv)
    import ast

    options = ast.literal_eval(args.options)
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # library chatter must not corrupt the pickle stream
    serve(args.serve, args.threads, options, sys.stdin.buffer, out)


if __name__ == "__main__":
    _main()
