"""Cost of each term of one ``rhs`` call, one thread, for the configurations of issue 5.

Each piece of ``kernels.field.rhs`` in the row layout (the four projections, the heads'
scores + softmax, the softmax alone, the GELU, the whole attention and FFN terms) is
called in a compiled loop on one trajectory's buffers, so the figures are nanoseconds
per call with no Python in between. The pieces overlap (attention contains the QKV
product, the heads' probabilities and W_o), and a piece timed alone runs a little slower than inside
``rhs`` (its loop and call overhead is its own); read them as where the time goes,
not as a partition. The last two lines time the lane layout's ``rhs`` and FFN on a
group, per trajectory (against the row layout's ``rhs``: a ratio above 100 % means
the lanes are slower for that configuration).

    python bench/term_costs.py [--configs tiny,small] [--dtypes float32,float64]
"""

import argparse
import time

import numpy as np
from numba import njit

import tfkernels as tfk
from tfkernels import config, kernels
from tfkernels.kernels import attention, field, maths, structs
from tfkernels.kernels.simd import gemm, gemm_ld

BOTH = structs.SUB_ATTN | structs.SUB_FFN  # the whole field

CONFIGS = {"tiny": (8, 16, 2), "small": (16, 32, 4), "medium": (32, 64, 4), "large": (64, 128, 8)}

_jit = njit(cache=False, fastmath=config.FASTMATH, error_model=config.ERROR_MODEL)


@_jit
def _rhs(n, X, model, out, fs):
    for _ in range(n):
        field.rhs_rows(X, model, 0, BOTH, out, fs)


@_jit
def _rhs_lanes(n, X, model, out, fs):
    for _ in range(n):
        field.rhs_lanes(X, model, 0, BOTH, out, fs)


@_jit
def _softmax(n, P, mt):
    for _ in range(n):
        maths.softmax_columns(P, P.shape[1], False, False, mt, 1)


@_jit
def _gelu(n, hidden, b):
    for _ in range(n):
        maths.bias_activate(hidden, b, maths.GELU)


@_jit
def _gemm(n, X, w, out):
    for _ in range(n):
        gemm(X, w, out, False)


@_jit
def _gemm_t(n, Xt, w, out):
    """``out = Xtᵀ w``, ``Xt (K, R)`` read transposed: the W_o product, whose input
    ``heads (d, T)`` holds the heads' outputs transposed."""
    K_, R = Xt.shape
    m = w.shape[1]
    for _ in range(n):
        gemm_ld(Xt, 0, 1, R, w, 0, m, out, 0, m, R, K_, m, False)


@_jit
def _heads(n, qkv, H, qt, P, mt):
    for _ in range(n):
        attention.head_probs(qkv, 0, H, qkv.shape[1] // 3 // H, False, False, qt, P, mt)


@_jit
def _attention(n, X, model, fs, out):
    w, s = model.weights, model.settings
    for _ in range(n):
        attention.attention_rows(
            X, w.wqkv[0], model.block.bqkv[0], w.wo[0], s.n_heads, 1.0, False, False, fs, out
        )


@_jit
def _ffn(n, X, model, fs, out):
    w = model.weights
    for _ in range(n):
        field.ffn(structs.ROWS, X, w.w1[0], w.b1[0], w.w2[0], w.b2[0], maths.GELU, fs.hidden, out)


@_jit
def _ffn_lanes(n, X, model, fs, out):
    w = model.weights
    for _ in range(n):
        field.ffn(structs.LANES, X, w.w1[0], w.b1[0], w.w2[0], w.b2[0], maths.GELU, fs.hidden, out)


def per_call_ns(fn, *args, min_time=0.2):
    """Median nanoseconds per iteration of ``fn(n, *args)`` over 5 timed runs."""
    fn(1, *args)
    n = 1
    while True:
        t0 = time.perf_counter()
        fn(n, *args)
        if time.perf_counter() - t0 >= min_time / 5:
            break
        n *= 4
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn(n, *args)
        times.append((time.perf_counter() - t0) / n)
    return float(np.median(times)) * 1e9


def term_costs(name, dtype):
    """``{term: (ns per call, calls per rhs)}`` for configuration ``name``."""
    T, d, H = CONFIGS[name]
    p = tfk.TransformerParams.random(d, H, damping=1.0, seed=0, dtype=dtype)
    model = kernels.pack_params(p)
    w = model.weights
    X = tfk.random_states(1, T, d, seed=1, dtype=dtype)[0]
    fs = structs.step_scratch(structs.ROWS, model, T, d, 1, X.dtype).field
    out = np.zeros_like(X)
    field.rhs_rows(X, model, 0, BOTH, out, fs)  # fills qkv, qt, hidden with real values
    scores = fs.P.copy()
    L = structs.group_width(dtype)
    lm = structs.for_lanes(model)
    XL = np.repeat(X, L, axis=1)  # a group of L copies, lane-interleaved
    fl = structs.step_scratch(structs.LANES, model, T, d, 1, X.dtype).field
    outl = np.zeros_like(XL)
    return {
        "rhs": (per_call_ns(_rhs, X, model, out, fs), 1),
        "attention": (per_call_ns(_attention, X, model, fs, out), 1),
        "  QKV product": (per_call_ns(_gemm, X, w.wqkv[0], fs.qkv), 1),
        "  scores + softmax (all heads)": (per_call_ns(_heads, fs.qkv, H, fs.qt, fs.P, fs.mt), 1),
        "  softmax (all heads)": (per_call_ns(_softmax, scores, fs.mt), 1),
        "  W_o product": (per_call_ns(_gemm_t, fs.heads, w.wo[0], out), 1),
        "FFN": (per_call_ns(_ffn, X, model, fs, out), 1),
        "  W_1 product": (per_call_ns(_gemm, X, w.w1[0], fs.hidden), 1),
        "  GELU": (per_call_ns(_gelu, fs.hidden, w.b1[0]), 1),
        "  W_2 product": (per_call_ns(_gemm, fs.hidden, w.w2[0], out), 1),
        "rhs, lane layout, per trajectory": (per_call_ns(_rhs_lanes, XL, lm, outl, fl) / L, 1),
        "  FFN, lane layout, per trajectory": (per_call_ns(_ffn_lanes, XL, lm, fl, outl) / L, 1),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--dtypes", default="float32,float64")
    args = ap.parse_args(argv)
    for dtype in args.dtypes.split(","):
        for name in args.configs.split(","):
            costs = term_costs(name, dtype)
            total = costs["rhs"][0]
            print(f"{name} {CONFIGS[name]} {dtype}: rhs {total:.0f} ns")
            for term, (ns, calls) in costs.items():
                if term != "rhs":
                    print(
                        f"  {term:28s} {ns:9.0f} ns × {calls} = {100 * ns * calls / total:5.1f} %"
                    )


if __name__ == "__main__":
    main()
