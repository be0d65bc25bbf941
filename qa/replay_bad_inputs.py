"""Replay the bad-input attempts of ``shared/qa/bad-inputs.md`` against tfkernels.

The QA pass of tfkernels 0.1.0 recorded 530 attempts (470 rows) with a class each:

* A  clear named error
* B  accepted and correct
* C  unclear or unnamed error
* D  silently accepted or coerced
* E  silently wrong or misleading
* F  crash, traceback or lost work
* G  data loss or torn output

This script re-runs the attempts against the tfkernels that ``import tfkernels`` finds
(set ``PYTHONPATH`` to the checkout under test) and classifies every outcome again,
mechanically: each replay encodes what the *right* outcome is ("raises TypeError or
ValueError whose message names `n_heads`": A; "returns and the result satisfies
<check>": B) and decides from what happens now. An exception whose message does not
name the argument is C, a wrong input that is accepted D, a wrong result E, a traceback
of the command line or a lost result F, a result folder that is torn or lost G.

Usage::

    PYTHONPATH=. python qa/replay_bad_inputs.py --out /tmp/qa-now.md

prints the counts (then and now, per class) and the rows that are C-G now; with
``--out FILE`` it also writes the whole table as Markdown (nothing is written without
it). ``--rows 380-399,458`` replays some rows only. The exit status is 1 when a row
that was A or B is C-G now (a regression) or a replay itself failed, else 0.

Every file the replays write goes into a temporary folder (``tempfile``) that is
removed at the end; the command-line attempts run ``python -m tfkernels.cli`` in
subprocesses (also for Ctrl-C and SIGKILL timing). Trajectory counts are scaled down
where the row's point survives it (the table says so: "[scaled: ...]").
"""

import argparse
import collections
import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zipfile

import numpy as np

#: Filled by :func:`import_package`: the package under test and its parameters class.
tfk = None
TP = None

#: Severity order: the class of a row of several attempts is its worst attempt's.
SEVERITY = {"B": 0, "A": 1, "C": 2, "D": 3, "E": 4, "F": 5, "G": 6}
CLASSES = "ABCDEFG"
GOOD = {"A", "B"}
#: Not replayed (reason in the text); and a replay that itself failed.
NOT_REPLAYED = "-"
FAILED = "?"

#: Row 463 is one row of 37 SIGKILL runs: 27 left a complete set (B), 10 a torn one (G);
#: that split makes the table's per-attempt counts (261 A, 153 B, ... 12 G) add up.
THEN_SPLIT = {463: {"B": 27, "G": 10}}
THEN_ATTEMPTS = {"A": 261, "B": 153, "C": 39, "D": 27, "E": 25, "F": 13, "G": 12}


# =========================================================================== table
@dataclasses.dataclass
class Row:
    """One row of bad-inputs.md."""

    num: int
    area: str
    call: str
    outcome: str
    cls: str

    @property
    def then_attempts(self):
        """``{class: attempts}`` of the QA pass (one row may hold several attempts)."""
        if self.num in THEN_SPLIT:
            return dict(THEN_SPLIT[self.num])
        m = re.search(r"\((\d+)(?: attempts)?\)\s*$", self.outcome)
        return {self.cls: int(m.group(1)) if m else 1}


_ROW = re.compile(r"^\| (\d+) \| (.*?) \| (`.*?`) \| (.*) \| ([A-G]) \|\s*$")


def read_table(path):
    """The rows of bad-inputs.md, by number."""
    rows = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            m = _ROW.match(line)
            if m:
                num = int(m.group(1))
                rows[num] = Row(num, m.group(2), m.group(3).strip("`"), m.group(4), m.group(5))
    return rows


def find_table(explicit):
    """``explicit``, else ``shared/qa/bad-inputs.md`` in a folder above this checkout."""
    if explicit:
        return explicit
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in [here, *_parents(here)]:
        cand = os.path.join(folder, "shared", "qa", "bad-inputs.md")
        if os.path.isfile(cand):
            return cand
    raise SystemExit(
        "replay_bad_inputs: error: no shared/qa/bad-inputs.md above this checkout; "
        "pass --table PATH"
    )


def _parents(path):
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return
        yield parent
        path = parent


# ======================================================================== outcomes
@dataclasses.dataclass
class Outcome:
    """The class of one attempt now and what happened."""

    cls: str
    text: str


REPLAYS = {}  # row number -> (function returning Outcome or [Outcome], note)


def case(num, fn, note=""):
    """Register ``fn`` (no arguments, returns an Outcome or a list) as the replay of row
    ``num``; ``note`` says how the replay differs from the QA pass (scaled down ...)."""
    if num in REPLAYS:
        raise RuntimeError(f"row {num} registered twice")
    REPLAYS[num] = (fn, note)


def replay(*nums, note=""):
    """Decorator form of :func:`case` for one or more rows; the function gets the row
    number."""

    def deco(fn):
        for n in nums:
            case(n, functools.partial(fn, n), note)
        return fn

    return deco


NOT_REPLAYABLE = {}  # row number -> reason


def one_line(text, limit=240):
    """``text`` on one line, at most ``limit`` characters."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def exc_text(e):
    return one_line(f"{type(e).__name__}: {e}")


def show(v):
    """A short description of a returned value."""
    if isinstance(v, np.ndarray):
        fin = np.isfinite(v) if v.dtype.kind in "fc" else np.ones(v.shape, bool)
        s = f"ndarray shape={v.shape} dtype={v.dtype} all_finite={bool(fin.all())}"
        if v.dtype.kind == "f":
            s += f" nan={int(np.isnan(v).sum())}"
            if fin.any():
                s += f" absmax={float(np.abs(v[fin]).max()):.3g}"
        return s
    if hasattr(v, "rate") and hasattr(v, "n_valid"):
        return one_line(
            f"rate={v.rate:.5g} ci=({v.rate_ci[0]:.4g}, {v.rate_ci[1]:.4g}) "
            f"lambda_hat={v.lambda_hat:.4g} n_valid={v.n_valid}/{v.n_trajectories} "
            f"bound_holds={v.bound_holds} regime={v.regime!r}"
        )
    return one_line(repr(v), 200)


_NAME_CACHE = {}


def _name_re(name):
    if name not in _NAME_CACHE:
        if name.isidentifier() and len(name) == 1:
            # 'd', 'c', 'X': only in backticks or quotes (as a bare word too common)
            pat = "[`'\"]" + re.escape(name) + "[`'\"]"
        else:
            pat = r"(?<![\w-])" + re.escape(name) + r"(?![\w-])"
        _NAME_CACHE[name] = re.compile(pat)
    return _NAME_CACHE[name]


def named(msg, names):
    """The first of ``names`` that ``msg`` names (one-letter names only in backticks or
    quotes)."""
    for nm in names:
        if _name_re(nm).search(msg):
            return nm
    return None


@dataclasses.dataclass
class Call:
    value: object = None
    exc: BaseException = None
    warns: list = dataclasses.field(default_factory=list)


def run(fn):
    """Call ``fn()``; the value or the exception, and the warnings it issued."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            value = fn()
        except Exception as e:  # noqa: BLE001 (the attempt under test may raise anything)
            return Call(exc=e, warns=list(w))
    return Call(value=value, warns=list(w))


def _judge_value(value, check):
    """``check(value)`` -> (ok, text): a bool, or a (bool, text) pair."""
    r = check(value)
    if isinstance(r, tuple):
        return bool(r[0]), r[1] if isinstance(r[1], str) else show(r[1])
    return bool(r), show(value)


STD_ERRORS = (TypeError, ValueError)


def err(fn, *names, types=STD_ERRORS, accepted="D", judge=None, also=()):
    """The right outcome: ``fn()`` raises one of ``types`` naming one of ``names`` and
    each of ``also`` (A).

    Another exception, or one that names none of them, is C. A return is ``accepted``
    (D: a bad input silently accepted), or ``judge(value)`` -> (class, text) decides.
    """
    c = run(fn)
    if c.exc is not None:
        msg = str(c.exc)
        missing = [nm for nm in also if not named(msg, (nm,))]
        if isinstance(c.exc, types) and named(msg, names) and not missing:
            return Outcome("A", exc_text(c.exc))
        if not isinstance(c.exc, types):
            why = "unexpected type"
        else:
            why = "does not name " + "/".join(missing if named(msg, names) else names)
        return Outcome("C", f"{exc_text(c.exc)} ({why})")
    if judge is not None:
        cls, text = judge(c.value)
        return Outcome(cls, text)
    return Outcome(accepted, f"accepted: {show(c.value)}")


def ok(fn, check=lambda v: True, bad="E"):
    """The right outcome: ``fn()`` returns and ``check(value)`` holds (B); a failed check
    is ``bad`` (E: a silently wrong result); any exception is C (a valid input rejected)."""
    c = run(fn)
    if c.exc is not None:
        return Outcome("C", f"valid input rejected: {exc_text(c.exc)}")
    good, text = _judge_value(c.value, check)
    return Outcome("B" if good else bad, text)


def either(fn, names, check, types=STD_ERRORS, bad="E"):
    """Both a named error (A) and a correct return (B) are right here."""
    c = run(fn)
    if c.exc is not None:
        if isinstance(c.exc, types) and named(str(c.exc), names):
            return Outcome("A", exc_text(c.exc))
        return Outcome("C", exc_text(c.exc))
    good, text = _judge_value(c.value, check)
    return Outcome("B" if good else bad, text)


def policy_int(fn, name):
    """An integer-valued float for an integer argument: issue 15's policy rejects it
    with a TypeError naming the argument (0.1.0 accepted it: B then)."""
    return err(fn, name, types=(TypeError,))


# ======================================================================== fixtures
@functools.cache
def p8():
    """The small model of most Python-API rows: d = 8, 2 heads, FFN 32."""
    return TP.random(d=8, n_heads=2, seed=0)


@functools.cache
def pd8():
    """The model of the perturbation_decay rows (the docstring's, contractive)."""
    return TP.random(d=8, n_heads=2, damping=3.0, seed=0)


@functools.cache
def p_layers():
    """Per-layer weights, 4 sets."""
    return TP.random(d=8, n_heads=2, n_layers=4, seed=0)


def x8(dtype=np.float64):
    return tfk.random_states(16, 4, 8, seed=1, dtype=dtype)


def attn_weights(d=8, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal((d, d)) / np.sqrt(d)).astype(dtype) for k in WQKVO}


WQKVO = ("wq", "wk", "wv", "wo")


def ffn_weights(d=8, m=16, lead=(), seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        w1=rng.standard_normal(lead + (d, m)) / np.sqrt(d),
        b1=rng.standard_normal(lead + (m,)) * 0.1,
        w2=rng.standard_normal(lead + (m, d)) / np.sqrt(m),
        b2=rng.standard_normal(lead + (d,)) * 0.1,
    )


@functools.cache
def p_ffn0(damping=0.5):
    """The FFN with d_ff = 0: f(X) = b2 − γX exactly."""
    b2 = np.arange(8.0) / 8
    return TP(w1=np.zeros((8, 0)), b1=np.zeros(0), w2=np.zeros((0, 8)), b2=b2, damping=damping)


def masked_nan(a, index=(1, 2)):
    m = np.ma.masked_array(np.array(a, dtype=np.float64), mask=np.zeros(np.shape(a), bool))
    m[index] = np.nan
    m[index] = np.ma.masked
    return m


def all_finite(v):
    return bool(np.all(np.isfinite(v))), show(v)


def shape_is(shape):
    return lambda v: (np.shape(v) == shape and bool(np.all(np.isfinite(v))), show(v))


def equal_to(ref_fn, rtol=0.0):
    def check(v):
        ref = ref_fn()
        same = np.shape(v) == np.shape(ref) and (
            np.array_equal(v, ref) if rtol == 0 else np.allclose(v, ref, rtol=rtol, atol=0)
        )
        return same, (
            "equal to the reference; " if same else "DIFFERS from the reference; "
        ) + show(v)

    return check


def decay_sane(n=None):
    """A DecayResult that adds up: n_valid + n_nonfinite = n, a finite rate inside its CI
    (when there are 2+ valid trajectories), a bool bound_holds."""

    def check(r):
        good = r.n_valid + r.n_nonfinite == r.n_trajectories and (n is None or r.n_valid == n)
        if r.n_valid >= 2:
            lo, hi = r.rate_ci
            good &= bool(np.isfinite(r.rate) and lo <= r.rate <= hi)
        good &= isinstance(r.bound_holds, bool)
        return good, show(r)

    return check


def log_ratios_fn():
    """``log_ratios`` (per-trajectory log r_n) of the package's decay module (only a
    module inside the package under test: an editable install elsewhere may also
    provide ``tfkernels.studies``)."""
    import importlib

    pkg = os.path.dirname(os.path.abspath(tfk.__file__))
    for mod in ("tfkernels.studies.decay", "tfkernels.decay"):
        with contextlib.suppress(ImportError, AttributeError):
            m = importlib.import_module(mod)
            if os.path.abspath(m.__file__).startswith(pkg + os.sep):
                return m.log_ratios
    raise RuntimeError(f"no log_ratios in tfkernels.studies.decay or tfkernels.decay of {pkg}")


class Scratch:
    """The temporary folder of this replay (removed at the end)."""

    root = None

    @classmethod
    def path(cls, *parts):
        return os.path.join(cls.root, *parts)

    @classmethod
    def fresh(cls, name):
        """A new empty folder under the scratch root."""
        return tempfile.mkdtemp(prefix=name + "-", dir=cls.root)


# ================================================= rows 1-53: TransformerParams(...)
def _tp_attn(**change):
    kw = attn_weights()
    kw.update(change)
    return lambda: TP(n_heads=2, **kw)


case(1, lambda: err(lambda: TP(), "wq", "linear", "attention"))
for _n, _dt in (
    (2, np.int64),
    (3, np.float16),
    (4, np.complex128),
    (5, object),
    (6, np.longdouble),
):
    case(_n, lambda dt=_dt: err(_tp_attn(wq=attn_weights()["wq"].astype(dt)), "wq"))


def _mixed():
    kw = attn_weights(dtype=np.float32)
    kw["wk"] = kw["wk"].astype(np.float64)
    return TP(n_heads=2, **kw)


case(7, lambda: err(_mixed, "wk"))
case(8, lambda: err(lambda: TP(**{k: attn_weights()[k] for k in ("wq", "wk", "wv")}), "wo"))


def _wq_shape(shape, d=None):
    def make():
        kw = attn_weights(d or 8)
        kw["wq"] = np.ones(shape)
        return TP(**kw)

    return make


case(9, lambda: err(_wq_shape((8, 7), d=7), "wq"))
case(10, lambda: err(_wq_shape((8,)), "wq"))
case(11, lambda: err(_wq_shape((2, 2, 8, 8)), "wq"))
case(12, lambda: err(_tp_attn(n_heads=3), "n_heads"))
for _n, _h in ((13, 0), (14, -1), (16, 2.5), (17, True), (18, "2")):
    case(_n, lambda h=_h: err(lambda: TP(**{**attn_weights(), "n_heads": h}), "n_heads"))
case(
    15,
    lambda: policy_int(lambda: TP(**{**attn_weights(), "n_heads": 2.0}), "n_heads"),
    "policy of issue 15: integer-valued floats are rejected (0.1.0 accepted 2.0: B then)",
)


def _heads_np():
    p = TP(**{**attn_weights(), "n_heads": np.int64(2)})
    return p.n_heads == 2 and type(p.n_heads) is int, f"n_heads={p.n_heads!r}"


case(19, lambda: ok(_heads_np, lambda r: r))
case(20, lambda: err(lambda: TP(**{k: np.zeros((0, 0)) for k in WQKVO}), "wq"))
case(21, lambda: err(lambda: TP.linear(np.zeros((0, 0))), "linear"))
case(22, lambda: ok(lambda: p_ffn0(), lambda p: (p.d_ff == 0 and p.d == 8, repr(p))))
case(23, lambda: err(lambda: TP.linear(np.zeros((0, 8, 8))), "linear"))


def _tp_bad_value(value, index):
    def make():
        kw = attn_weights()
        kw["wq"][index] = value
        return TP(n_heads=2, **kw)

    return make


case(24, lambda: err(_tp_bad_value(np.nan, (1, 2)), "wq"))
case(25, lambda: err(_tp_bad_value(np.inf, (0, 0)), "wq"))
case(
    26,
    lambda: ok(
        lambda: TP(n_heads=2, **{k: w * 1e30 for k, w in attn_weights().items()}),
        lambda p: (np.abs(p.wq).max() > 1e29, repr(p)),
    ),
)
case(27, lambda: ok(lambda: TP.linear(1e300 * np.eye(8)), lambda p: (p.d == 8, repr(p))))
for _n, _b in ((28, 0.0), (29, -1.0), (30, np.nan), (31, np.inf), (33, "1")):
    case(_n, lambda b=_b: err(_tp_attn(beta=b), "beta"))
case(32, lambda: ok(_tp_attn(beta=1e300), lambda p: (p.beta == 1e300, repr(p))))
case(
    34,
    lambda: ok(
        _tp_attn(beta=np.float32(1)), lambda p: (p.beta == 1.0 and type(p.beta) is float, p.beta)
    ),
)
for _n, _g in ((35, -1.0), (36, np.nan), (37, True), (38, 1 + 0j)):
    case(_n, lambda g=_g: err(_tp_attn(damping=g), "damping"))
for _n, _a in ((39, "softmax"), (40, None), (41, ["gelu"])):
    case(_n, lambda a=_a: err(lambda: p8().replace(activation=a), "activation"))
case(42, lambda: err(lambda: p8().replace(causal="no"), "causal"))
case(43, lambda: err(lambda: p8().replace(causal=np.array([0, 1])), "causal"))
case(
    44,
    lambda: ok(
        lambda: TP(n_heads=2, **{k: w.tolist() for k, w in attn_weights().items()}),
        lambda p: (p.dtype == np.float64 and p.d == 8, repr(p)),
    ),
)


def _same_field_as_c_order(transform):
    def go():
        kw = attn_weights()
        p = TP(n_heads=2, **{k: transform(w) for k, w in kw.items()})
        ref = TP(n_heads=2, **kw)
        X = x8()
        return np.array_equal(tfk.vector_field(p, X), tfk.vector_field(ref, X))

    return lambda: ok(go, lambda same: (same, f"same f(X) as C-order weights: {same}"))


case(45, _same_field_as_c_order(np.asfortranarray))
case(46, _same_field_as_c_order(lambda w: np.repeat(np.repeat(w, 2, 0), 2, 1)[::2, ::2]))


def _read_only(w):
    w = w.copy()
    w.setflags(write=False)
    return w


case(47, _same_field_as_c_order(_read_only))


def _masked_judge(marker):
    """A masked array accepted: E when the masked value reached the weights, else D."""

    def judge(p):
        used = marker(np.asarray(p.wq))
        return ("E" if used else "D"), f"accepted, masked value {'used' if used else 'dropped'}"

    return judge


def _tp_masked(value):
    def make():
        kw = attn_weights()
        w = np.ma.masked_array(kw["wq"], mask=np.zeros((8, 8), bool))
        w[1, 2] = value
        w[1, 2] = np.ma.masked
        kw["wq"] = w
        return TP(n_heads=2, **kw)

    return make


for _n in (48, 117):
    case(
        _n, lambda: err(_tp_masked(np.nan), "wq", judge=_masked_judge(lambda w: np.isnan(w).any()))
    )
case(118, lambda: err(_tp_masked(1e6), "wq", judge=_masked_judge(lambda w: (w == 1e6).any())))
case(49, lambda: err(lambda: TP.linear(1e300 * np.eye(4)).astype(np.float32), "linear"))


def _ffn(**change):
    kw = ffn_weights(lead=(3,))
    kw.update(change)
    return lambda: TP(**kw)


case(50, lambda: err(_ffn(b1=np.zeros(16)), "b1"))
case(51, lambda: err(_ffn(b1=np.zeros((2, 16))), "b1"))
case(52, lambda: err(lambda: TP(**{**ffn_weights(), "w2": np.ones((12, 8))}), "w2"))
case(53, lambda: err(lambda: TP(**ffn_weights(), linear=np.eye(4)), "linear"))


# ============================================== rows 54-89: TransformerParams.random
def _random(**kw):
    base = dict(d=8, n_heads=2, seed=0)
    base.update(kw)
    return lambda: TP.random(**base)


case(54, lambda: err(_random(n_heads=3), "n_heads"))
for _n, _d in ((55, 0), (56, -4), (58, 8.5), (59, True)):
    case(_n, lambda d=_d: err(_random(d=d), "d"))
case(57, lambda: policy_int(_random(d=8.0), "d"), "policy of issue 15 (B then)")
case(
    60,
    lambda: either(_random(d_ff=0), ("d_ff",), lambda p: (p.d_ff == 0, repr(p))),
    "d_ff = 0 is valid since issue 15: a named error or a model with d_ff = 0 are both right",
)
case(61, lambda: err(_random(d_ff=-1), "d_ff"))
for _n, _dt in (
    (62, int),
    (63, np.float16),
    (64, complex),
    (65, object),
    (66, None),
    (69, "bogus"),
):
    case(_n, lambda dt=_dt: err(_random(dtype=dt), "dtype"))
for _n, _dt in ((67, "float32"), (68, "f4")):
    case(_n, lambda dt=_dt: ok(_random(dtype=dt), lambda p: (p.dtype == np.float32, p.dtype)))
for _n, _ws in ((70, 0.0), (71, -1.0), (72, np.nan)):
    case(_n, lambda ws=_ws: err(_random(weight_scale=ws), "weight_scale"))
case(
    73,
    lambda: ok(
        _random(weight_scale=1e30), lambda p: (1e28 < np.abs(p.wq).max() < 1e32, np.abs(p.wq).max())
    ),
)
case(74, lambda: ok(_random(weight_scale=1e30, dtype=np.float32), lambda p: all_finite(p.wq)))
case(75, lambda: ok(_random(weight_scale=1e300), lambda p: all_finite(p.w1)))
case(76, lambda: err(_random(weight_scale=1e40, dtype=np.float32), "weight_scale", "wq"))
for _n, _L in ((77, 0), (78, -3), (79, 2.5), (80, True)):
    case(_n, lambda L=_L: err(_random(n_layers=L), "n_layers"))
for _n, _s in ((81, -1), (83, 1.5), (84, "abc"), (85, None)):
    case(_n, lambda s=_s: err(_random(seed=s), "seed"))
case(
    82,
    lambda: either(
        _random(seed=2**70),
        ("seed",),
        lambda p: (np.array_equal(p.wq, TP.random(d=8, n_heads=2, seed=2**70).wq), "deterministic"),
    ),
    "a seed above 2**63 - 1: accepted (B) or a named error (A) are both right",
)
case(86, lambda: err(_random(attention=False, ffn=False, linear=False), "attention"))
case(87, lambda: err(_random(attention="no"), "attention"))
case(88, lambda: err(_random(n_heads=0), "n_heads"))
case(
    89,
    lambda: either(_random(n_heads=3, attention=False), ("n_heads",), lambda p: (True, repr(p))),
)


# ========================================================== rows 90-102: linear(A)
case(90, lambda: ok(lambda: TP.linear(-np.eye(3)), lambda p: (p.d == 3, repr(p))))
for _n, _A in (
    (91, lambda: np.eye(3, dtype=np.int64)),
    (92, lambda: np.ones((3, 4))),
    (93, lambda: np.ones(3)),
    (95, lambda: [[1, 0], [0, 1]]),
    (96, lambda: None),
    (97, lambda: 1.0),
    (99, lambda: np.full((3, 3), np.nan)),
    (100, lambda: np.eye(3) * (1 + 1j)),
):
    case(_n, lambda A=_A: err(lambda: TP.linear(A()), "linear"))
case(94, lambda: ok(lambda: TP.linear([[-1.0, 0.0], [0.0, -1.0]]), lambda p: p.dtype == np.float64))
case(98, lambda: err(lambda: TP.linear(-np.eye(3), damping=-1), "damping"))
case(
    101,
    lambda: ok(
        lambda: TP.linear(-np.eye(3)).linear,
        lambda a: (isinstance(a, np.ndarray), type(a).__name__),
    ),
)
case(102, lambda: ok(lambda: p8().linear, lambda a: (a is None, repr(a))))


# ======================================================= rows 103-125: save / load
def _same_params(p, q):
    from dataclasses import fields

    for f in fields(p):
        a, b = getattr(p, f.name), getattr(q, f.name)
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            if a is None or b is None or a.dtype != b.dtype or not np.array_equal(a, b):
                return False
        elif a != b or type(a) is not type(b):
            return False
    return True


def _roundtrip(p, name="p.npz", load_name=None):
    def go():
        d = Scratch.fresh("npz")
        path = os.path.join(d, name)
        p().save(path)
        q = TP.load(os.path.join(d, load_name or name))
        return _same_params(p(), q), f"round trip identical: {_same_params(p(), q)}; {q!r}"

    return go


case(103, lambda: ok(_roundtrip(p8), lambda r: r))


def _save_noext():
    d = Scratch.fresh("npz")
    p8().save(os.path.join(d, "noext"))
    files = sorted(os.listdir(d))
    c = run(lambda: TP.load(os.path.join(d, "noext")))
    found = c.exc is None and _same_params(p8(), c.value)
    documented = ".npz" in (TP.save.__doc__ or "")
    return (
        found and documented,
        f"wrote {files}; load('noext') finds it: {found}; suffix documented in save(): "
        f"{documented}",
    )


case(
    104,
    lambda: either(_save_noext, ("path",), lambda r: r, bad="D"),
    "right: a named error, or the appended .npz documented and found again by load()",
)
case(105, lambda: either(_roundtrip(p8, "noext", "noext"), ("npz", "noext"), lambda r: r))


def _load_file(write, name="f.npz"):
    def go():
        d = Scratch.fresh("npz")
        path = os.path.join(d, name)
        write(path)
        return TP.load(path)

    return go


FILE_ERRORS = (ValueError, TypeError, OSError, KeyError, zipfile.BadZipFile)


case(
    106,
    lambda: err(
        lambda: TP.load(os.path.join(Scratch.fresh("npz"), "nope.npz")),
        "nope.npz",
        types=(FileNotFoundError,),
    ),
)


def _garbage(path):
    with open(path, "wb") as fh:
        fh.write(b"this is not an archive at all\n" * 8)


def _no_pickle_hint(o):
    if o.cls == "A" and "allow_pickle" in o.text:
        return Outcome("C", o.text + " (suggests allow_pickle for a file that is not a pickle)")
    return o


case(107, lambda: _no_pickle_hint(err(_load_file(_garbage, "garbage.npz"), "garbage.npz")))


def _saved_with(**override):
    def write(path):
        p8().save(path)
        with np.load(path) as z:
            kw = dict(z)
        for k, val in override.items():
            if val is None:
                kw.pop(k)
            else:
                kw[k] = val
        np.savez(path, **kw)

    return write


case(
    108,
    lambda: err(
        _load_file(_saved_with(n_heads=None)), "n_heads", types=FILE_ERRORS, also=("f.npz",)
    ),
)


def _nan_weight(path):
    w = p8().wq.copy()
    w[1, 2] = np.nan
    _saved_with(wq=w)(path)


case(109, lambda: err(_load_file(_nan_weight), "wq"))
case(
    110,
    lambda: err(
        _load_file(_saved_with(wq=np.array([None, 1], dtype=object))),
        "wq",
        "f.npz",
        "allow_pickle",
        types=FILE_ERRORS,
    ),
)
case(
    111,
    lambda: err(
        _load_file(_saved_with(n_heads=np.array([2, 2]))),
        "n_heads",
        types=FILE_ERRORS,
        also=("f.npz",),
    ),
)


def _load_dir():
    d = Scratch.path("npzdir")
    os.makedirs(d, exist_ok=True)
    return TP.load(d)


case(112, lambda: err(_load_dir, "npzdir", types=FILE_ERRORS))
case(
    113,
    lambda: err(lambda: p8().save("/proc/x/p.npz"), "/proc/x/p.npz", "/proc/x", types=FILE_ERRORS),
)


def _save_dir(trailing_sep):
    """save() to a path that is a folder (np.savez wrote ``<folder>.npz`` beside it, or
    ``<folder>/.npz`` in it with a trailing separator)."""

    def go():
        d = Scratch.fresh("savedir")
        target = os.path.join(d, "sub")
        os.mkdir(target)
        p8().save(target + (os.sep if trailing_sep else ""))
        return sorted(os.listdir(d)) + sorted(os.listdir(target))

    return go


case(114, lambda: err(_save_dir(True), "path", "sub", types=FILE_ERRORS))
case(125, lambda: err(_save_dir(False), "path", "sub", types=FILE_ERRORS))
case(115, lambda: ok(_roundtrip(p_layers), lambda r: r))
case(
    116,
    lambda: ok(
        _roundtrip(
            lambda: TP.random(
                d=8, n_heads=2, causal=True, activation="tanh", beta=2.0, seed=0
            ).astype(np.float32)
        ),
        lambda r: r,
    ),
)


def _copy_on_construct():
    w = attn_weights()
    p = TP(n_heads=2, **w)
    before = p.wq.copy()
    w["wq"][:] = 99.0
    return np.array_equal(
        p.wq, before
    ), f"p.wq unchanged after the source changed: {np.array_equal(p.wq, before)}"


case(119, lambda: ok(_copy_on_construct, lambda r: r))


def _causal_string_judge(p):
    return ("D" if p.causal else "B"), f"loaded causal={p.causal!r}"


case(
    120,
    lambda: err(
        _load_file(_saved_with(causal=np.array("False"))),
        "causal",
        types=FILE_ERRORS,
        judge=_causal_string_judge,
        also=("f.npz",),
    ),
)


def _int32_weights(path):
    _saved_with(wq=p8().wq.astype(np.int32))(path)


case(121, lambda: err(_load_file(_int32_weights), "wq", types=FILE_ERRORS))
case(
    122,
    lambda: err(
        _load_file(_saved_with(extra=np.array(1))), "extra", types=FILE_ERRORS, also=("f.npz",)
    ),
)


def _truncated(path):
    p8().save(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def _truncated_judge():
    """A truncated archive: an error naming the file (A); zipfile's BadZipFile names the
    problem, not the file, and the QA pass took it as clear (A) too."""
    c = run(_load_file(_truncated, "trunc.npz"))
    if isinstance(c.exc, zipfile.BadZipFile):
        return Outcome("A", exc_text(c.exc))
    return err(lambda: _raise(c), "trunc.npz", types=FILE_ERRORS)


def _raise(c):
    if c.exc is not None:
        raise c.exc
    return c.value


case(123, _truncated_judge)


def _pathlib_roundtrip():
    import pathlib

    d = pathlib.Path(Scratch.fresh("npz"))
    p8().save(d / "p.npz")
    q = TP.load(d / "p.npz")
    return _same_params(p8(), q), repr(q)


case(124, lambda: ok(_pathlib_roundtrip, lambda r: r))


# ========================================================= rows 126-160: random_states
def _rs(*shape, **kw):
    shape = shape or (2, 4, 8)
    return lambda: tfk.random_states(*shape, **kw)


for _n, _shape, _nm in (
    (126, (0, 4, 8), "batch"),
    (127, (-1, 4, 8), "batch"),
    (128, (2, 0, 8), "seq_len"),
    (129, (2, 4, 0), "d"),
    (131, (2.5, 4, 8), "batch"),
    (132, (True, 4, 8), "batch"),
    (134, ("3", 4, 8), "batch"),
):
    case(_n, lambda s=_shape, nm=_nm: err(_rs(*s), nm))
case(130, lambda: policy_int(_rs(2.0, 4, 8), "batch"), "policy of issue 15 (B then)")
case(133, lambda: ok(_rs(np.int32(3), 4, 8), shape_is((3, 4, 8))))
for _n, _dt in ((135, int), (136, np.float16), (137, complex), (138, object), (139, None)):
    case(_n, lambda dt=_dt: err(_rs(dtype=dt), "dtype"))
for _n, _s in (
    (140, -1),
    (142, 2**63),
    (143, 2**64 - 1),
    (144, 2**64),
    (145, 2**100),
    (147, 1e20),
    (148, np.uint64(2**64 - 1)),
):
    case(_n, lambda s=_s: err(_rs(seed=s), "seed"))
case(141, lambda: ok(_rs(seed=2**63 - 1), all_finite))
case(146, lambda: policy_int(_rs(seed=1.0), "seed"), "policy of issue 15 (B then)")
case(149, lambda: err(_rs(start=-1), "start"))
case(150, lambda: ok(_rs(2, 1, 2, start=2**63 - 2), all_finite))
case(151, lambda: err(_rs(start=2**64), "start"))
case(152, lambda: ok(_rs(scale=0.0), lambda v: (not np.any(v), show(v))))
for _n, _sc in ((153, -1.0), (154, np.nan)):
    case(_n, lambda sc=_sc: err(_rs(scale=sc), "scale"))
case(155, lambda: ok(_rs(2, 2, 2, scale=1e30, dtype=np.float32), all_finite))


def _nonfinite_judge(v):
    fin = bool(np.all(np.isfinite(v)))
    return ("B" if fin else "E"), ("" if fin else "non-finite values returned: ") + show(v)


case(156, lambda: err(_rs(2, 2, 2, scale=1e39, dtype=np.float32), "scale", judge=_nonfinite_judge))
case(
    157,
    lambda: ok(_rs(2, 2, 2, scale=1e308), all_finite),
    "the 8 draws of seed 0 stay below 1.797 (an overflowing draw would be E)",
)
case(158, lambda: err(_rs(10**12, 4, 16), "batch", "allocate", types=(MemoryError, ValueError)))


def _start_consistency():
    a = tfk.random_states(6, 2, 3, seed=4)
    b = tfk.random_states(3, 2, 3, seed=4, start=3)
    return bool(np.array_equal(a[3:], b)), "rows start… equal to a batch drawn from 0"


def _f32_is_f64_rounded():
    a = tfk.random_states(4, 2, 3, seed=5, dtype=np.float32)
    b = tfk.random_states(4, 2, 3, seed=5).astype(np.float32)
    return bool(np.array_equal(a, b)), "float32 draws == float64 draws rounded"


case(159, lambda: ok(_start_consistency, lambda r: r))
case(160, lambda: ok(_f32_is_f64_rounded, lambda r: r))


# ================================================== rows 161-189: vector_field
def _vf(X=None, p=None, **kw):
    return lambda: tfk.vector_field(p8() if p is None else p(), x8() if X is None else X(), **kw)


case(161, lambda: ok(_vf(), shape_is((16, 4, 8))))
case(162, lambda: err(lambda: tfk.vector_field(None, x8()), "params"))
case(163, lambda: err(lambda: tfk.vector_field({}, x8()), "params"))
_BAD_STATES = {
    "int": lambda: np.ones((16, 4, 8), dtype=np.int64),
    "float16": lambda: x8().astype(np.float16),
    "complex": lambda: x8().astype(complex),
    "object": lambda: x8().astype(object),
    "float32": lambda: x8(np.float32),
    "2-D": lambda: x8()[0],
    "4-D": lambda: x8()[None],
    "width": lambda: np.ones((16, 4, 6)),
    "B=0": lambda: np.ones((0, 4, 8)),
    "T=0": lambda: np.ones((4, 0, 8)),
}


def _with_value(value, index):
    def make():
        X = x8()
        X[index] = value
        return X

    return make


_BAD_STATES["NaN"] = _with_value(np.nan, (3, 1, 2))
_BAD_STATES["inf"] = _with_value(np.inf, (0, 0, 0))
for _n, _k in zip(range(164, 176), _BAD_STATES):
    case(_n, lambda k=_k: err(_vf(X=_BAD_STATES[k]), "X"))
case(176, lambda: ok(_vf(X=lambda: x8() * 1e30), all_finite))


def _overflow_judge(v):
    fin = bool(np.all(np.isfinite(v)))
    return ("B" if fin else "E"), (
        "finite" if fin else "NaN/inf returned without an error or warning: "
    ) + show(v)


def _overflow_in_f(X, p=p8):
    """f(X) overflowing: a named error or a warning is right (A), silent NaN is E."""

    def go():
        c = run(lambda: tfk.vector_field(p(), X()))
        if c.exc is not None:
            if isinstance(c.exc, (FloatingPointError, ValueError, OverflowError)):
                return Outcome("A", exc_text(c.exc))
            return Outcome("C", exc_text(c.exc))
        told = [
            w for w in c.warns if re.search(r"overflow|non-finite|nan|inf", str(w.message), re.I)
        ]
        if told and not np.all(np.isfinite(c.value)):
            return Outcome("A", f"warning: {one_line(told[0].message)}; {show(c.value)}")
        return Outcome(*_overflow_judge(c.value))

    return go


case(
    177, _overflow_in_f(lambda: x8(np.float32) * np.float32(1e30), lambda: p8().astype(np.float32))
)
case(178, _overflow_in_f(lambda: x8() * 1e200))
case(179, lambda: ok(_vf(X=lambda: x8().tolist()), equal_to(_vf())))
case(180, lambda: ok(_vf(X=lambda: np.asfortranarray(x8())), equal_to(_vf())))
case(181, lambda: ok(_vf(X=lambda: np.repeat(x8(), 2, axis=2)[:, :, ::2]), equal_to(_vf())))
case(182, lambda: ok(_vf(X=lambda: _read_only(x8())), equal_to(_vf())))


def _masked_states(name):
    def make():
        X = np.ma.masked_array(x8(), mask=np.zeros((16, 4, 8), bool))
        X[3, 1, 2] = np.nan
        X[3, 1, 2] = np.ma.masked
        return X

    return make


def _nan_out_judge(v):
    bad = not np.all(np.isfinite(v))
    return ("E" if bad else "D"), ("masked NaN reached the result: " if bad else "") + show(v)


case(183, lambda: err(_vf(X=_masked_states("X")), "X", judge=_nan_out_judge))
case(184, lambda: err(_vf(layer=1), "layer"))
case(185, lambda: err(_vf(layer=-1), "layer"))
for _n, _t in ((186, 0), (187, 1000), (188, True)):
    case(_n, lambda t=_t: err(_vf(n_threads=t), "n_threads"))
case(189, lambda: policy_int(_vf(n_threads=1.0), "n_threads"), "policy of issue 15 (B then)")


# ======================================================= rows 190-314: integrate
def _int(n_layers=8, p=None, x0=None, **kw):
    return lambda: tfk.integrate(
        p8() if p is None else p(), x8() if x0 is None else x0(), n_layers, **kw
    )


case(190, lambda: ok(_int(), shape_is((16, 4, 8))))
for _n, _L in ((191, 0), (192, -1), (193, 8.0), (194, 8.5), (195, True), (197, None)):
    case(_n, lambda L=_L: err(_int(L), "n_layers"))
case(196, lambda: ok(_int(np.int64(8)), equal_to(_int())))
for _n, _m in ((198, "Euler"), (199, None), (200, ["rk4"])):
    case(_n, lambda m=_m: err(_int(method=m), "method"))
for _n, _tf in ((201, 0.0), (202, -1.0), (203, np.nan), (204, np.inf), (209, "1")):
    case(_n, lambda tf=_tf: err(_int(t_final=tf), "t_final"))


def _p32():
    return p8().astype(np.float32)


def _x32():
    return x8(np.float32)


def _unchanged_judge(v):
    same = np.array_equal(v, _x32())
    return ("D" if same else "B"), ("x0 returned unchanged: " if same else "") + show(v)


case(205, lambda: err(_int(p=_p32, x0=_x32, t_final=1e-300), "t_final", judge=_unchanged_judge))


def _blowup_err(fn, *names):
    """A blow-up: FloatingPointError (or a ValueError naming the cause) is right."""
    return err(
        fn, "non-finite", *names, types=(FloatingPointError, ValueError), judge=_nonfinite_judge
    )


def _nan_rows(v):
    """throw=False: every trajectory either finite or NaN throughout, no inf."""
    v = np.asarray(v)
    flat = v.reshape(v.shape[0], -1)
    bad = ~np.isfinite(flat).all(axis=1)
    partial = int((bad & ~np.isnan(flat).all(axis=1)).sum())
    n_inf = int(np.isinf(flat).sum())
    return partial == 0 and n_inf == 0, f"{int(bad.sum())} NaN rows, {partial} partial, {n_inf} inf"


case(206, lambda: _blowup_err(_int(t_final=1e300), "t_final"))
case(207, lambda: ok(_int(t_final=1e300, throw=False), _nan_rows))
case(208, lambda: _blowup_err(_int(p=_p32, x0=_x32, t_final=1e40), "t_final"))
for _n, _k in ((210, 3), (211, 0), (212, -2), (213, 16), (217, True)):
    case(_n, lambda k=_k: err(_int(save_every=k), "save_every"))
case(214, lambda: ok(_int(save_every=8), shape_is((16, 2, 4, 8))))
case(215, lambda: ok(_int(save_every=1), shape_is((16, 9, 4, 8))))
case(216, lambda: policy_int(_int(save_every=2.0), "save_every"), "policy of issue 15 (B then)")
case(218, lambda: err(_int(alpha=0.5), "alpha"))
case(219, lambda: ok(_int(method="averaged"), equal_to(_int(), rtol=1e-12)))
case(220, lambda: ok(_int(method="averaged", alpha=0.5), all_finite))
for _n, _al in (
    (221, 0.0),
    (222, -0.1),
    (223, 1.5),
    (224, np.nan),
    (225, "fast"),
    (226, np.full(7, 0.1)),
    (227, np.full(9, 0.1)),
    (228, np.array([0.1] * 7 + [-0.1])),
    (229, np.array([0.1] * 7 + [np.nan])),
    (230, np.full((8, 1), 0.1)),
    (233, [0.5] * 7 + [1j]),
    (234, ["a"] * 8),
    (235, True),
):
    case(_n, lambda al=_al: err(_int(method="averaged", alpha=al), "alpha"))
case(
    231,
    lambda: ok(
        _int(method="averaged", alpha=[0.1] * 8),
        equal_to(_int(method="averaged", alpha=np.full(8, 0.1))),
    ),
)
case(232, lambda: ok(_int(method="averaged", alpha=[1] * 8), all_finite))
case(
    236,
    lambda: ok(
        _int(method="averaged", alpha=np.float32(0.5)), equal_to(_int(method="averaged", alpha=0.5))
    ),
)
case(
    237,
    lambda: ok(
        _int(method="averaged", alpha=np.array(0.5)), equal_to(_int(method="averaged", alpha=0.5))
    ),
    "right: a 0-d array is a real number (0.1.0's named TypeError was C)",
)
case(238, lambda: ok(_int(method="averaged", alpha="accelerated"), all_finite))
for _n, _c in ((239, 0.0), (240, -1.0)):
    case(_n, lambda c=_c: err(_int(method="averaged", c=c), "c"))
case(241, lambda: _blowup_err(_int(method="averaged", c=1e30), "c"))
case(242, lambda: err(_int(c=5.0), "c"))
for _n, _s in (
    (243, -0.1),
    (244, np.nan),
    (245, np.inf),
    (247, np.full(7, 0.1)),
    (248, np.array([0.1] * 7 + [-0.1])),
    (253, True),
):
    case(_n, lambda s=_s: err(_int(noise=s), "noise"))
case(246, lambda: ok(_int(noise=0.1), all_finite))
case(249, lambda: ok(_int(noise=[0.1] * 8), equal_to(_int(noise=np.full(8, 0.1)))))
case(250, lambda: _blowup_err(_int(p=_p32, x0=_x32, noise=1e30), "noise"))
case(251, lambda: _blowup_err(_int(p=_p32, x0=_x32, noise=1e39), "noise"))
case(
    252,
    lambda: either(_int(p=_p32, x0=_x32, noise=1e39, throw=False), ("noise",), _nan_rows),
    "right: a named error (noise overflows float32) or NaN rows",
)
for _n, _s in ((254, -1), (255, 2**63), (256, 2**64)):
    case(_n, lambda s=_s: err(_int(seed=s), "seed"))
for _n, _s in ((257, -5), (258, 2**64)):
    case(_n, lambda s=_s: err(_int(start=s), "start"))
case(259, lambda: err(_int(throw="no"), "throw"))
for _n, _t in ((260, 0), (261, 1000), (262, -1), (263, True)):
    case(_n, lambda t=_t: err(_int(n_threads=t), "n_threads"))
for _n, _k in zip(
    (264, 265, 266, 267, 268, 269, 270),
    ("int", "float16", "complex", "object", "float32", "2-D", "B=0"),
):
    case(_n, lambda k=_k: err(_int(x0=_BAD_STATES[k]), "x0"))
case(271, lambda: err(_int(x0=_BAD_STATES["NaN"]), "x0"))
case(272, lambda: err(_int(x0=_BAD_STATES["inf"]), "x0"))
case(273, lambda: ok(_int(x0=lambda: x8().tolist()), equal_to(_int())))
case(274, lambda: ok(_int(x0=lambda: np.asfortranarray(x8())), equal_to(_int())))
case(275, lambda: ok(_int(x0=lambda: np.repeat(x8(), 2, axis=2)[:, :, ::2]), equal_to(_int())))
case(276, lambda: ok(_int(x0=lambda: _read_only(x8())), equal_to(_int())))
case(277, lambda: err(_int(x0=_masked_states("x0")), "x0", judge=_nan_out_judge))


class _Sub(np.ndarray):
    pass


case(
    278,
    lambda: ok(
        _int(x0=lambda: x8().view(_Sub)),
        lambda v: (type(v) is np.ndarray and np.array_equal(v, _int()()), type(v).__name__),
    ),
)
case(279, lambda: ok(_int(x0=lambda: x8() * 1e30), all_finite))
case(280, lambda: _blowup_err(_int(p=_p32, x0=lambda: _x32() * np.float32(1e30))))
case(281, lambda: ok(_int(p=_p32, x0=lambda: _x32() * np.float32(1e30), throw=False), _nan_rows))
case(282, lambda: _blowup_err(_int(x0=lambda: x8() * 1e200)))
case(283, lambda: ok(_int(x0=lambda: x8() * 1e200, throw=False), _nan_rows))


def _one_bad():
    X = x8()
    X[5] *= 1e200
    return X


def _only_row_5(v):
    bad = np.flatnonzero(~np.isfinite(v.reshape(16, -1)).all(axis=1)).tolist()
    return bad == [5] and _nan_rows(v)[0], f"non-finite rows {bad}"


case(284, lambda: ok(_int(x0=_one_bad, throw=False), _only_row_5))
case(285, lambda: err(_int(x0=_one_bad), "trajectory 5", types=(FloatingPointError,)))
case(286, lambda: err(_int(x0=_one_bad, start=100), "trajectory 105", types=(FloatingPointError,)))
case(287, lambda: err(_int(8, p=p_layers), "n_layers"))
case(288, lambda: ok(_int(4, p=p_layers), shape_is((16, 4, 8))))
case(289, lambda: err(_vf(p=p_layers, layer=4), "layer"))
case(290, lambda: ok(_vf(p=p_layers, layer=3), shape_is((16, 4, 8))))
case(
    291,
    lambda: err(
        lambda: tfk.vector_field(TP.linear(np.zeros((0, 0))), np.zeros((4, 4, 0))), "linear", "X"
    ),
)
case(
    292,
    lambda: err(
        lambda: tfk.integrate(TP.linear(np.zeros((0, 0))), np.zeros((4, 4, 0)), 4), "linear", "x0"
    ),
)


def _ffn0_exact_integrate():
    p = p_ffn0()
    X = x8()
    out = tfk.integrate(p, X, 8)
    ref = X.copy()
    for _ in range(8):
        ref = ref + (1 / 8) * (p.b2 - 0.5 * ref)
    diff = float(np.abs(out - ref).max())
    return diff <= 1e-12, f"max |kernel − (X + Δt(b2 − γX))^8| = {diff:.2g}"


case(293, lambda: ok(_ffn0_exact_integrate, lambda r: r))
case(
    294,
    lambda: ok(
        lambda: tfk.vector_field(p_ffn0(), x8()),
        lambda v: (np.array_equal(v, p_ffn0().b2 - 0.5 * x8()), "f(X) == b2 − γX exactly"),
    ),
)


def _n_sets0(kind):
    if kind == "linear":
        return TP.linear(np.zeros((0, 8, 8)))
    if kind == "attention":
        return TP(n_heads=2, **{k: np.zeros((0, 8, 8)) for k in WQKVO})
    return TP(**ffn_weights(lead=(0,)))


_ANY_WEIGHT = ("linear", "wq", "wk", "wv", "wo", "w1", "b1", "w2", "b2", "params", "n_sets")
case(295, lambda: err(lambda: tfk.integrate(_n_sets0("linear"), x8(), 1), *_ANY_WEIGHT))
case(
    296,
    lambda: err(
        lambda: tfk.vector_field(_n_sets0("linear"), x8()),
        *_ANY_WEIGHT,
        accepted="E",  # whatever it returns was read past an empty weight array
    ),
)


def _masked_weight_params():
    kw = attn_weights()
    kw["wq"] = masked_nan(kw["wq"])
    return TP(n_heads=2, **kw)


case(
    297,
    lambda: err(
        lambda: tfk.integrate(_masked_weight_params(), x8(), 8), "wq", judge=_nan_out_judge
    ),
)
case(
    298,
    lambda: err(
        lambda: tfk.vector_field(_masked_weight_params(), x8()), "wq", judge=_nan_out_judge
    ),
)
case(299, lambda: ok(_int(p=lambda: TP.random(d=8, n_heads=2, beta=1e300, seed=0)), all_finite))
case(
    300,
    lambda: err(
        _int(p=lambda: TP.random(d=8, n_heads=2, beta=1e300, seed=0, dtype=np.float32), x0=_x32),
        "beta",
        types=STD_ERRORS,
    ),
)
case(
    301,
    lambda: err(
        _vf(p=lambda: TP.random(d=8, n_heads=2, beta=1e300, seed=0, dtype=np.float32), X=_x32),
        "beta",
        judge=_nonfinite_judge,
    ),
)
case(302, lambda: err(_int(8.0, save_every=2), "n_layers"))
case(303, lambda: err(_int(8.0, method="rk4"), "n_layers"))
case(304, lambda: err(_int(np.float64(8.0)), "n_layers"))
case(305, lambda: err(_int(8.0, method="averaged"), "n_layers"))


def _pd(p=None, n=100, seq_len=4, n_layers=8, **kw):
    return lambda: tfk.perturbation_decay(pd8() if p is None else p(), n, seq_len, n_layers, **kw)


case(306, lambda: err(_pd(n_layers=8.0), "n_layers"))
case(307, lambda: policy_int(_pd(seq_len=4.0), "seq_len"), "policy of issue 15 (B then)")
case(308, lambda: policy_int(_pd(n=100.0), "n_trajectories"), "policy of issue 15 (B then)")
case(309, lambda: policy_int(_pd(chunk_size=50.0), "chunk_size"), "policy of issue 15 (B then)")
case(310, lambda: policy_int(_pd(n=1e2), "n_trajectories"), "policy of issue 15 (B then)")


def _repeat_n_sets0(kind):
    def go():
        return [tfk.vector_field(_n_sets0(kind), x8()) for _ in range(3)]

    return lambda: err(
        go, *_ANY_WEIGHT, judge=lambda v: ("E", f"accepted: {[show(a) for a in v][0]}")
    )


case(311, _repeat_n_sets0("linear"))
case(312, _repeat_n_sets0("attention"))
case(313, _repeat_n_sets0("ffn"))
case(314, lambda: err(lambda: tfk.perturbation_decay(_n_sets0("linear"), 10, 4, 1), *_ANY_WEIGHT))


# ============================================== rows 315-376: perturbation_decay
def _contractive_ok(r):
    good, text = decay_sane(100)(r)
    return good and r.bound_holds is True, text


case(315, lambda: ok(_pd(n=200), decay_sane(200)))
case(316, lambda: err(lambda: tfk.perturbation_decay(None, 10, 4, 8), "params"))
for _n, _v in ((317, 0), (318, -5), (321, 2.5), (322, True), (323, "100")):
    case(_n, lambda v=_v: err(_pd(n=v), "n_trajectories"))
case(319, lambda: ok(_pd(n=1), lambda r: (r.n_valid == 1 and np.isfinite(r.rate), show(r))))
case(320, lambda: ok(_pd(n=2), decay_sane(2)))
case(324, lambda: ok(_pd(n=np.int32(100)), decay_sane(100)))
case(325, lambda: err(_pd(seq_len=0), "seq_len"))
for _n, _L in ((326, 0), (327, -1)):
    case(_n, lambda L=_L: err(_pd(n_layers=L), "n_layers"))
case(328, lambda: ok(_pd(n_layers=1), decay_sane(100)))
case(329, lambda: ok(_pd(n_layers=7), decay_sane(100)))
for _n, _tf in ((330, 0.0), (331, -1.0), (332, np.nan)):
    case(_n, lambda tf=_tf: err(_pd(t_final=tf), "t_final"))
for _n, _e in ((333, 0.0), (334, -1e-6), (335, np.nan)):
    case(_n, lambda e=_e: err(_pd(eps=e), "eps"))


@functools.cache
def _reference_rate(dtype):
    return tfk.perturbation_decay(pd8().astype(dtype), 100, 4, 8).rate


def _honest_eps(dtype):
    """An ε that vanishes or overflows in the state dtype: rejected naming `eps` (A); or
    the trajectories it spoils reported honestly: 0 valid -> bound_holds None and regime
    not a verdict (B); a result with valid trajectories must match the default ε's
    rate (B), else E."""

    def judge(r):
        if r.n_valid == 0:
            honest = r.bound_holds is None and r.regime not in (
                "contractive",
                "neutral",
                "expanding",
            )
            return ("B" if honest else "E"), f"0 valid; {show(r)}"
        ref = _reference_rate(dtype)
        close = bool(np.isfinite(r.rate) and abs(r.rate - ref) <= 0.05 * abs(ref))
        return ("B" if close else "E"), f"{show(r)}; default-ε rate {ref:.4g}"

    return judge


for _n, _e, _dt in (
    (336, 1e-20, np.float64),
    (337, 1e-300, np.float64),
    (338, 1e-12, np.float32),
    (341, 1e300, np.float64),
    (342, 1e30, np.float32),
    (343, 1e39, np.float32),
):
    case(
        _n,
        lambda e=_e, dt=_dt: err(
            _pd(p=lambda: pd8().astype(dt), eps=e), "eps", judge=_honest_eps(dt)
        ),
    )
case(339, lambda: either(_pd(eps=10.0), ("eps",), decay_sane(100)))


def _warned_eps(fn):
    c = run(fn)
    if c.exc is not None:
        if isinstance(c.exc, STD_ERRORS) and named(str(c.exc), ("eps",)):
            return Outcome("A", exc_text(c.exc))
        return Outcome("C", exc_text(c.exc))
    told = [w for w in c.warns if "eps" in str(w.message)]
    if told:
        return Outcome("A", f"warning: {one_line(told[0].message)}")
    return Outcome("D", f"accepted without a word: {show(c.value)}")


case(
    340,
    lambda: _warned_eps(_pd(eps=1e30)),
    "right: ε = 1e30 (far outside the linear regime) refused or warned about, naming eps",
)


def _same_as_tangent_without_eps(r):
    ref = tfk.perturbation_decay(pd8(), 100, 4, 8, mode="tangent")
    same = r.rate == ref.rate and np.array_equal(r.stats["mean"], ref.stats["mean"])
    return same, f"eps ignored in tangent mode (identical to no eps): {same}"


case(344, lambda: either(_pd(eps=1e-3, mode="tangent"), ("eps",), _same_as_tangent_without_eps))
for _n, _kw, _nm in (
    (345, {"mode": "Pair"}, "mode"),
    (346, {"mode": None}, "mode"),
    (347, {"method": "rk5"}, "method"),
    (348, {"seed": -1}, "seed"),
    (349, {"seed": 2**63}, "seed"),
    (350, {"seed": 2**64}, "seed"),
    (352, {"chunk_size": 0}, "chunk_size"),
    (353, {"chunk_size": -1}, "chunk_size"),
    (356, {"chunk_size": True}, "chunk_size"),
    (357, {"n_threads": 0}, "n_threads"),
    (358, {"n_threads": 1000}, "n_threads"),
    (359, {"progress": 1}, "progress"),
    (361, {"alpha": 0.5}, "alpha"),
    (362, {"method": "averaged", "alpha": np.full(7, 0.1)}, "alpha"),
    (363, {"method": "averaged", "alpha": -0.1}, "alpha"),
    (365, {"noise": -1.0}, "noise"),
    (367, {"noise": np.full(3, 0.1)}, "noise"),
    (368, {"lambda_samples": 0}, "lambda_samples"),
    (369, {"bound_rtol": -1.0}, "bound_rtol"),
):
    case(_n, lambda kw=_kw, nm=_nm: err(_pd(**kw), nm))
case(351, lambda: policy_int(_pd(seed=1.0), "seed"), "policy of issue 15 (B then)")


def _same_stats_as_default(n):
    def check(r):
        ref = tfk.perturbation_decay(pd8(), n, 4, 8)
        close = r.n_valid == n and np.allclose(r.stats["mean"], ref.stats["mean"], rtol=1e-9)
        return close, f"same statistics as the default chunking: {close}; {show(r)}"

    return check


case(354, lambda: ok(_pd(n=50, chunk_size=1), _same_stats_as_default(50)))
case(355, lambda: ok(_pd(chunk_size=10**12), _same_stats_as_default(100)))
case(
    360,
    lambda: either(_pd(progress=np.bool_(True)), ("progress",), decay_sane(100)),
    "np.bool_ is a real bool since issue 15 (a named error was A then)",
)
case(364, lambda: ok(_pd(method="averaged", alpha=np.full(8, 0.1)), decay_sane(100)))
case(366, lambda: ok(_pd(noise=0.1), decay_sane(100)))
for _n, _cl in ((370, "tcp://x"), (371, object())):
    case(
        _n,
        lambda cl=_cl: err(
            _pd(client=cl), "client", types=(NotImplementedError, TypeError, ValueError)
        ),
    )
case(372, lambda: err(lambda: tfk.perturbation_decay(TP.random(d=0, n_heads=1), 10, 4, 8), "d"))


def _ffn0_rate(r):
    expect = 8 * math.log1p(-1.0 / 8)
    good = abs(r.rate - expect) < 1e-6 and abs(r.lambda_hat + 1.0) < 1e-6
    return (
        good,
        f"rate {r.rate:.10g} (exact {expect:.10g}), lambda_hat {r.lambda_hat:.6g} (exact -1)",
    )


case(373, lambda: ok(_pd(p=lambda: p_ffn0(1.0)), _ffn0_rate))
case(
    374,
    lambda: err(lambda: tfk.perturbation_decay(_masked_weight_params(), 10, 4, 8), "wq"),
)
case(
    375, lambda: ok(lambda: _pd(n=1)().summary(), lambda s: ("1 (1 valid)" in s, one_line(s, 120)))
)


def _to_json_n1():
    path = os.path.join(Scratch.fresh("json"), "r.json")
    _pd(n=1)().to_json(path)
    with open(path) as fh:
        d = json.load(fh)
    return d["n_trajectories"] == 1, f"JSON written, n_trajectories={d['n_trajectories']}"


case(376, lambda: ok(_to_json_n1, lambda r: r))


# ============================================================ rows 377-399: blow-ups
@functools.cache
def p_blow(ws, seed=0):
    """The QA's blow-up models: the CLI's shape (d 16, 2 heads, FFN 32), weight scale ws."""
    return TP.random(d=16, n_heads=2, d_ff=32, weight_scale=ws, seed=seed)


@functools.cache
def x_blow():
    return tfk.random_states(500, 4, 16, seed=1)


def _int_throw(p):
    """throw=True on a model that may blow up: all-finite states (B) or a
    FloatingPointError (A) are right; non-finite states returned are E."""
    return err(
        lambda: tfk.integrate(p(), x_blow(), 32),
        "non-finite",
        types=(FloatingPointError,),
        judge=_nonfinite_judge,
    )


def _nan_snapshots(v):
    flat = v.reshape(v.shape[0], v.shape[1], -1)
    fin = np.isfinite(flat).all(axis=2)
    allnan = np.isnan(flat).all(axis=2)
    mixed = int((~fin & ~allnan).sum())
    monotone = bool(np.all(np.diff(fin.astype(int), axis=1) <= 0))
    return (
        mixed == 0 and monotone,
        f"snapshots NaN from the first bad one on: {monotone}; partial {mixed}",
    )


def _decay_adds_up(p, n, mode, ref_valid=None):
    """A study on a blow-up model: n_valid + n_nonfinite = n, the mean of the last layer
    equals the mean over the valid raw log r (log_ratios), no non-finite value kept."""

    def go():
        r = tfk.perturbation_decay(p(), n, 4, 32, mode=mode, seed=0)
        logr, status = log_ratios_fn()(p(), n, 4, 32, mode=mode, seed=0)
        valid = np.isfinite(logr).all(axis=1)
        good = r.n_valid + r.n_nonfinite == n and r.n_valid == int(valid.sum())
        if r.n_valid:
            ref = logr[valid, -1].mean()
            good &= bool(abs(r.stats["mean"][-1] - ref) <= 1e-9 * max(1.0, abs(ref)))
            good &= bool(np.isfinite(r.rate) or r.n_valid < 2)
        return good, f"{show(r)}; raw valid {int(valid.sum())}"

    return lambda: ok(go, lambda g: g)


def _plot_never_raises(mode):
    def go():
        d = Scratch.fresh("plot")
        texts = []
        for seed in (0, 1):
            r = tfk.perturbation_decay(p_blow(3.0, seed), 500, 4, 32, mode=mode, seed=0)
            path = os.path.join(d, f"{mode}-{seed}.png")
            c = run(lambda r=r, path=path: r.plot(path))
            if c.exc is not None:
                return Outcome(
                    "F", f"plot() raised {exc_text(c.exc)} (lambda_hat {r.lambda_hat:.4g})"
                )
            texts.append(f"lambda_hat {r.lambda_hat:.4g}: plot written")
        return Outcome("B", "; ".join(texts))

    return go


_SCALED_500 = "[scaled: 500 trajectories instead of 2000/5000]"
for _ws, (_a, _b, _c, _d, _e) in (
    (3.0, (377, 378, 379, 380, 381)),
    (6.0, (382, 383, 384, 385, 386)),
    (20.0, (387, 388, 389, 390, 391)),
):
    case(_a, lambda ws=_ws: _int_throw(lambda: p_blow(ws)), _SCALED_500)
    case(
        _b,
        lambda ws=_ws: ok(lambda: tfk.integrate(p_blow(ws), x_blow(), 32, throw=False), _nan_rows),
        _SCALED_500,
    )
    case(
        _c,
        lambda ws=_ws: ok(
            lambda: tfk.integrate(p_blow(ws), x_blow(), 32, throw=False, save_every=8),
            _nan_snapshots,
        ),
        _SCALED_500,
    )
    if _ws == 3.0:
        case(_d, _plot_never_raises("pair"), "models of seeds 0 and 1, 500 trajectories each")
        case(_e, _plot_never_raises("tangent"), "models of seeds 0 and 1, 500 trajectories each")
    else:
        case(_d, _decay_adds_up(lambda ws=_ws: p_blow(ws), 500, "pair"), _SCALED_500)
        case(_e, _decay_adds_up(lambda ws=_ws: p_blow(ws), 500, "tangent"), _SCALED_500)


def _outputs_of_blowup():
    r = tfk.perturbation_decay(p_blow(20.0), 200, 4, 32, seed=0)
    d = Scratch.fresh("blowout")
    steps = {
        "summary": r.summary,
        "to_json": lambda: r.to_json(os.path.join(d, "r.json")),
        "to_csv": lambda: r.to_csv(os.path.join(d, "r.csv")),
        "plot": lambda: r.plot(os.path.join(d, "r.png")),
    }
    for name, fn in steps.items():
        c = run(fn)
        if c.exc is not None:
            return Outcome("F", f"{name}() raised {exc_text(c.exc)}")
    with open(os.path.join(d, "r.json")) as fh:
        json.load(fh)
    return Outcome("B", f"summary, JSON, CSV and PNG written; {show(r)}")


case(392, _outputs_of_blowup, "[scaled: 200 trajectories]; weight scale 20")


@functools.cache
def p_cli(damping=4.0, dtype=np.float64):
    """The model of `tfkernels decay` (d 16, 2 heads, FFN 32, seed 0)."""
    return TP.random(d=16, n_heads=2, d_ff=32, damping=damping, seed=0, dtype=dtype)


def _summary_honest():
    def judge(r):
        s = r.summary()
        claims = re.search(r"bound holds\s+True", s) is not None
        verdict = r.regime in ("contractive", "neutral", "expanding")
        if r.n_valid == 0 and (claims or verdict):
            return "E", f"0 valid but the summary says: {one_line(s, 160)}"
        return "B", one_line(s, 160)

    return lambda: err(
        lambda: tfk.perturbation_decay(p_cli(), 500, 4, 32, eps=1e-20), "eps", judge=judge
    )


case(393, _summary_honest())


@functools.cache
def _tangent_truth(damping, n_layers, n=500):
    return tfk.perturbation_decay(p_cli(damping), n, 4, n_layers, mode="tangent", seed=0)


def _pair_matches_tangent(dtype, note_f32=False):
    def go():
        t = _tangent_truth(60.0, 64)
        r = tfk.perturbation_decay(p_cli(60.0, dtype), 500, 4, 64, mode="pair", seed=0)
        close = bool(np.isfinite(r.rate) and abs(r.rate - t.rate) <= 0.05 * abs(t.rate))
        agree = r.fraction_above_bound == t.fraction_above_bound or (
            r.bound_holds is True and t.bound_holds is True
        )
        text = (
            f"{np.dtype(dtype).name} pair rate {r.rate:.4g} (bound holds {r.bound_holds}, "
            f"{r.fraction_above_bound:.3g} above) vs float64 tangent {t.rate:.4g}; "
            f"min log r_N {r.stats['min'][-1]:.4g}"
        )
        return Outcome("B" if close and agree else "E", text)

    return go


case(394, _pair_matches_tangent(np.float64), "[scaled: 500 trajectories instead of 2000]")
case(427, _pair_matches_tangent(np.float32), "[scaled: 500 trajectories]")


@functools.cache
def p_mixed():
    """X' = aX with a so that 32 Euler steps multiply by ~1.8e306: trajectories with an
    entry above ~3 overflow at the last layer, the rest stay finite (the QA's mixed
    blow-up: 'max_finite 5.6e306')."""
    a = 32 * (math.exp(math.log(1.7976e308 / 100.0) / 32) - 1)
    return TP.linear(a * np.eye(16))


@functools.cache
def x_mixed():
    return tfk.random_states(1000, 4, 16, seed=0)


_SCALED_1000 = "[scaled: 1000 trajectories instead of 5000]"
case(
    395,
    lambda: ok(
        lambda: tfk.integrate(p_mixed(), x_mixed(), 32, throw=False),
        lambda v: (
            _nan_rows(v)[0] and 0 < (~np.isfinite(v.reshape(1000, -1)).all(1)).sum() < 1000,
            _nan_rows(v)[1],
        ),
    ),
    _SCALED_1000,
)
case(
    396,
    lambda: err(
        lambda: tfk.integrate(p_mixed(), x_mixed(), 32), "non-finite", types=(FloatingPointError,)
    ),
    _SCALED_1000,
)
case(
    397,
    lambda: ok(
        lambda: tfk.integrate(p_mixed(), x_mixed(), 32, throw=False, save_every=8), _nan_snapshots
    ),
    _SCALED_1000,
)


@functools.cache
def _mixed_study(mode):
    return tfk.perturbation_decay(p_mixed(), 1000, 4, 32, mode=mode, seed=0)


def _mixed_pair():
    c = run(lambda: _mixed_study("pair"))
    t = _mixed_study("tangent")
    if c.exc is not None:
        return Outcome("E", f"{exc_text(c.exc)}; tangent keeps {t.n_valid}")
    r = c.value
    good = r.n_valid >= 0.9 * t.n_valid and r.n_valid > 0
    if good and r.n_valid and t.n_valid:
        good = bool(abs(r.rate - t.rate) <= 0.01 * abs(t.rate))
    return Outcome(
        "B" if good else "E",
        f"pair {r.n_valid} valid (first non-finite layers {r.nonfinite_layers[:3]}), "
        f"tangent {t.n_valid}; pair {show(r)}",
    )


case(398, _mixed_pair, _SCALED_1000)
case(399, _decay_adds_up(p_mixed, 1000, "tangent"), _SCALED_1000)


# ================================================ rows 400-410: misc, Dask
def _readme_example():
    p = TP.random(d=32, n_heads=4, d_ff=128, damping=1.0, seed=0, dtype=np.float32)
    x0 = tfk.random_states(batch=500, seq_len=16, d=32, seed=1, dtype=np.float32)
    shapes = {
        "f": tfk.vector_field(p, x0).shape,
        "xN": tfk.integrate(p, x0, n_layers=64).shape,
        "snaps": tfk.integrate(p, x0, n_layers=64, method="rk4", save_every=8).shape,
        "avg": tfk.integrate(
            p, x0, n_layers=64, method="averaged", alpha="accelerated", c=1.0
        ).shape,
    }
    want = {
        "f": (500, 16, 32),
        "xN": (500, 16, 32),
        "snaps": (500, 9, 16, 32),
        "avg": (500, 16, 32),
    }
    return shapes == want, str(shapes)


case(400, lambda: ok(_readme_example, lambda r: r), "[scaled: B = 500 instead of 10,000]")


def _docstring_example():
    p = TP.random(d=8, n_heads=2, damping=3.0, seed=0)
    res = tfk.perturbation_decay(p, 256, seq_len=4, n_layers=8, seed=1)
    return (res.regime, res.bound_holds) == (
        "contractive",
        True,
    ), f"{(res.regime, res.bound_holds)}"


case(401, lambda: ok(_docstring_example, lambda r: r))


def _concurrent(threads_a, threads_b):
    def go():
        p = p8()
        X = tfk.random_states(64, 4, 8, seed=3)
        ref = tfk.integrate(p, X, 16)
        results = {}

        def work(key, n_threads):
            results[key] = [tfk.integrate(p, X, 16, n_threads=n_threads) for _ in range(5)]

        ts = [
            threading.Thread(target=work, args=("a", threads_a), daemon=True),
            threading.Thread(target=work, args=("b", threads_b), daemon=True),
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        if any(t.is_alive() for t in ts):
            return Outcome("F", "hung: a thread did not finish within 60 s")
        same = all(np.array_equal(r, ref) for v in results.values() for r in v)
        return Outcome("B" if same else "E", f"no hang; results identical to serial: {same}")

    return go


case(402, _concurrent(None, None))
case(403, _concurrent(1, 2))


def _json_roundtrip():
    r = _pd(n=200)()
    path = os.path.join(Scratch.fresh("json"), "r.json")
    r.to_json(path)
    q = type(r).from_json(path)
    diff = [k for k in r.stats if not np.array_equal(r.stats[k], q.stats[k], equal_nan=True)]
    scal = [
        k
        for k in ("rate", "lambda_hat", "n_valid", "regime", "bound_holds")
        if getattr(r, k) != getattr(q, k)
    ]
    good = not diff and not scal and tuple(r.rate_ci) == tuple(q.rate_ci)
    return good, f"stats differing {diff}, scalars differing {scal}"


case(404, lambda: ok(_json_roundtrip, lambda r: r))


def _csv_precision():
    r = _pd(n=200)()
    path = os.path.join(Scratch.fresh("csv"), "r.csv")
    r.to_csv(path)
    with open(path) as fh:
        cols = fh.readline().strip().split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    mean = data[:, cols.index("mean")]
    dev = float(np.max(np.abs(mean - r.stats["mean"]) / np.maximum(1, np.abs(r.stats["mean"]))))
    return dev < 1e-8, f"columns {cols[:5]}…; max relative deviation of mean {dev:.2g}"


case(405, lambda: ok(_csv_precision, lambda r: r))
case(406, lambda: err(lambda: _pd(n=10)().to_json("/proc/x/a.json"), "/proc/x", types=FILE_ERRORS))
case(
    407,
    lambda: err(lambda: _pd(n=10)().to_csv(_folder("csvdir")), "csvdir", types=FILE_ERRORS),
)
case(
    408,
    lambda: err(
        lambda: _pd(n=10)().plot(os.path.join(Scratch.fresh("plot"), "x.xyz")),
        "xyz",
        types=FILE_ERRORS,
    ),
)


def _folder(name):
    path = Scratch.path(name)
    os.makedirs(path, exist_ok=True)
    return path


def _dask_same_as_local():
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        return Outcome(NOT_REPLAYED, "dask.distributed is not installed")
    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with (
        LocalCluster(
            processes=False,
            n_workers=1,
            threads_per_worker=2,
            dashboard_address=None,
            local_directory=Scratch.fresh("dask"),  # not /tmp/dask-scratch-space
        ) as cluster,
        Client(cluster) as client,
    ):
        r = tfk.perturbation_decay(pd8(), 2000, 4, 8, chunk_size=512, client=client)
    loc = tfk.perturbation_decay(pd8(), 2000, 4, 8, chunk_size=512)
    same = all(np.array_equal(r.stats[k], loc.stats[k], equal_nan=True) for k in loc.stats)
    same &= r.rate == loc.rate and tuple(r.rate_ci) == tuple(loc.rate_ci)
    return Outcome("B" if same else "E", f"Dask (in-process cluster) identical to local: {same}")


case(
    409,
    lambda: ok(_dask_same_as_local, lambda o: (o.cls == "B", o.text)),
    "[scaled: 2000 trajectories, chunks of 512]",
)


def _dask_closed():
    try:
        from dask.distributed import Client
    except ImportError:
        return Outcome(NOT_REPLAYED, "dask.distributed is not installed")
    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    client = Client(
        processes=False,
        n_workers=1,
        threads_per_worker=1,
        dashboard_address=None,
        local_directory=Scratch.fresh("dask"),
    )
    client.close()
    return err(lambda: tfk.perturbation_decay(pd8(), 10, 4, 8, client=client), "client")


case(410, _dask_closed)


# ======================================================= command line (subprocesses)
@dataclasses.dataclass
class Cli:
    """A finished ``python -m tfkernels.cli`` run."""

    args: list
    rc: int
    out: str
    err: str
    secs: float
    timed_out: bool = False

    @property
    def traceback(self):
        return "Traceback (most recent call last)" in self.err

    @property
    def messages(self):
        """stderr without progress bars, Python warnings and argparse's usage block:
        the lines the user reads as the message."""
        lines, in_usage = [], False
        for part in re.split(r"[\r\n]+", self.err):
            if part.startswith("usage:"):
                in_usage = True
                continue
            if in_usage and part[:1].isspace():
                continue
            in_usage = False
            s = part.strip()
            if not s or re.match(r"^[\w ]*:\s*\d+%\|", s) or "traj/s]" in s:
                continue
            if re.search(r"\w+Warning: ", s) or s.startswith(("warnings.warn", "return ")):
                continue
            if s.startswith("compiling kernels for"):  # the cold-start notice
                continue
            lines.append(s)
        return lines

    def said(self):
        """The message, in one line (a traceback: its last line)."""
        msgs = self.messages
        if self.traceback and msgs:
            return one_line("traceback ending in: " + msgs[-1], 200)
        return one_line(
            "; ".join(msgs) if msgs else (self.out.strip().splitlines() or [""])[-1], 200
        )


def cli_env(**extra):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(tfk.__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def cli(*args, cwd=None, timeout=180):
    """Run ``python -m tfkernels.cli *args`` to the end (killed after ``timeout`` s)."""
    args = [str(a) for a in args]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "tfkernels.cli", *args],
            capture_output=True,
            text=True,
            cwd=cwd or Scratch.root,
            env=cli_env(),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        err_ = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
        return Cli(args, -9, out, err_, time.perf_counter() - t0, timed_out=True)
    return Cli(args, p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def cli_error(c, *names, rc=None):
    """The right outcome of a bad flag: a non-zero exit (``rc`` if given), no traceback,
    a message naming one of ``names`` (A). A traceback is F; an exit 0 D; an error that
    names none of them C."""
    if c.timed_out:
        return Outcome("F", f"did not finish in time ({c.secs:.0f} s)")
    if c.traceback:
        return Outcome("F", f"rc {c.rc}, {c.said()}")
    if c.rc == 0:
        return Outcome("D", f"rc 0, accepted: {c.said()}")
    text = f"rc {c.rc}: {c.said()}"
    if (rc is None or c.rc == rc) and named(" ".join(c.messages), names):
        if len(c.messages) > 2:
            return Outcome("C", text + f" ({len(c.messages)} lines)")
        return Outcome("A", text)
    return Outcome("C", text + (" (does not name " + "/".join(names) + ")"))


def cli_ok(c, check=lambda c: True):
    if c.timed_out:
        return Outcome("F", f"did not finish in time ({c.secs:.0f} s)")
    if c.traceback:
        return Outcome("F", f"rc {c.rc}, {c.said()}")
    if c.rc != 0:
        return Outcome("C", f"valid command failed, rc {c.rc}: {c.said()}")
    good, text = _judge_value(c, check) if check else (True, "")
    return Outcome("B" if good else "E", f"rc 0 in {c.secs:.1f} s; {text}")


def decay_args(*extra, trajectories=200, out=None):
    """``decay`` with a small study into a fresh folder; ``extra`` last (argparse keeps
    the last value of a repeated flag)."""
    return ["decay", "--trajectories", trajectories, "--out", out or Scratch.fresh("decay"), *extra]


# ------------------------------------------------------------ rows 411-426: bench
def _bench(*flags):
    """``bench FLAGS --out <an existing file>``: a flag the harness rejects is named
    before the --out check; a flag it accepts reaches the --out check (the sweep never
    runs). The error naming only --out therefore means "flag accepted" (D)."""
    path = Scratch.path("bench-out-is-a-file")
    with open(path, "w") as fh:
        fh.write("not a folder\n")
    c = cli("bench", *flags, "--out", path)
    o = cli_error(c, *[f for f in flags if str(f).startswith("--")])
    if o.cls in ("C", "F") and named(" ".join(c.messages), ("--out", path)):
        # the flag passed; what failed was --out (0.1.0: a FileExistsError traceback)
        return Outcome("D", f"flag accepted (stopped at --out): {c.said()}")
    return o


for _n, _flags in (
    (411, ("--threads", "0")),
    (412, ("--threads", "-1")),
    (413, ("--batch", "0")),
    (414, ("--batch", "-5")),
    (415, ("--heads", "0")),
    (416, ("--heads", "3", "--d", "16")),
    (417, ("--seq-len", "0")),
    (418, ("--seq-len", "-2", "--d", "16")),
    (419, ("--n", "0")),
    (420, ("--n", "8,,x")),
    (421, ("--repeats", "0")),
    (422, ("--dtype", "float16")),
    (423, ("--peers", "foo")),
    (424, ("--sections", "bogus")),
    (425, ("--wait-quiet", "-1")),
    (426, ("--d", "0")),
):
    case(_n, lambda f=_flags: _bench(*f), "parse only: --out is an existing file, no sweep runs")


# ------------------------------------------------ rows 429-430: λ̂ on a huge model
def _lipschitz_blowup(n_layers, t_final):
    """The right outcome: a result whose λ̂ is finite, or non-finite with bound_holds not
    True (B); or a named error about the estimate (A). SciPy's 'array must not contain
    infs or NaNs' is C."""

    def judge(r):
        if np.isfinite(r.lambda_hat) or r.bound_holds is not True:
            return "B", show(r)
        return "E", f"non-finite lambda_hat but bound_holds True: {show(r)}"

    p = lambda: TP.random(d=16, n_heads=2, d_ff=32, weight_scale=20, linear=True)  # noqa: E731
    return lambda: err(
        lambda: tfk.perturbation_decay(p(), 100, 4, n_layers, t_final=t_final),
        "lambda",
        "Lipschitz",
        "lambda_hat",
        "non-finite",
        types=(ValueError, FloatingPointError),
        judge=judge,
    )


case(429, _lipschitz_blowup(64, 4.0))
case(430, _lipschitz_blowup(128, 2.0))


# ------------------------------------------------------- row 428: quantile sketch
def _quantiles_below_sketch():
    p = TP.random(d=16, n_heads=2, d_ff=32, damping=491.5, seed=0)
    r = tfk.perturbation_decay(p, 200, 4, 512, mode="tangent", seed=0)
    logr, status = log_ratios_fn()(p, 200, 4, 512, mode="tangent", seed=0)
    qs = [k for k in r.stats if re.fullmatch(r"q\d\d", k)]
    worst, where = 0.0, None
    for k in qs:
        true = np.quantile(logr, int(k[1:]) / 100, axis=0, method="lower")
        dev = np.abs(r.stats[k] - true)
        if np.nanmax(dev) > worst:
            worst, where = float(np.nanmax(dev)), k
    last = {k: round(float(r.stats[k][-1]), 2) for k in ("q01", "q50", "q99") if k in r.stats}
    QS = (0.01, 0.5, 0.99)
    text = (
        f"last layer {last} vs true q01/q50/q99 "
        f"{[round(float(np.quantile(logr[:, -1], q, method='lower')), 2) for q in QS]}; "
        f"worst |error| {worst:.3g} ({where})"
    )
    return Outcome("B" if worst <= 0.01 else "E", text)


case(
    428,
    _quantiles_below_sketch,
    "damping 491.5, 512 tangent layers: log r_N ≈ −1620 ([scaled: 200 trajectories])",
)


# ------------------------------------------------------------ rows 431-462: CLI
case(431, lambda: cli_ok(cli(), lambda c: ("usage" in c.out.lower(), "prints help")))


def _helps():
    outs = []
    for args in (["--help"], ["decay", "--help"], ["bench", "--help"], ["paper", "--help"]):
        outs.append(cli_ok(cli(*args), lambda c, a=args: ("usage" in c.out.lower(), " ".join(a))))
    return outs


case(432, _helps)
case(
    433, lambda: cli_ok(cli("decay", "--help"), lambda c: ("--seed" in c.out, "help lists --seed"))
)
case(434, lambda: cli_error(cli("bogus"), "bogus", rc=2))


def _version():
    c = cli("--version")
    if c.rc == 0 and tfk.__version__ in c.out:
        return Outcome("B", f"prints {c.out.strip()!r}")
    return cli_error(c, "--version", rc=2)


case(435, _version)
case(436, lambda: cli_error(cli("decay", "--bogus-flag"), "--bogus-flag", rc=2))
case(437, lambda: cli_error(cli(*decay_args("--trajectories", "1e8x")), "--trajectories", rc=2))


def _cli_each(flag, values, *names, rc=2, allow_ok=()):
    """One attempt per value of ``flag``; values in ``allow_ok`` may also run (B)."""

    def go():
        outs = []
        for val in values:
            c = cli(*decay_args(flag, val))
            if val in allow_ok and c.rc == 0:
                outs.append(cli_ok(c, lambda c, v=val: (True, f"{flag} {v} runs")))
            else:
                o = cli_error(c, flag, *names, rc=rc)
                outs.append(Outcome(o.cls, f"{flag} {val}: {o.text}"))
        return outs

    return go


case(438, _cli_each("--trajectories", ["0", "-5", "1.5", "1e400", "nan", "inf"]))
case(439, _cli_each("--layers", ["0", "-3"], "n_layers"))
case(440, _cli_each("--layers", ["2.5"], "n_layers"))


def _model_flags():
    outs = []
    for flag, val, names in (
        ("--seq-len", "0", ("seq_len",)),
        ("--d", "0", ("d",)),
        ("--d", "15", ("d", "n_heads", "--heads")),
        ("--heads", "0", ("n_heads",)),
        ("--heads", "-2", ("n_heads",)),
        ("--d-ff", "0", ("d_ff",)),
    ):
        c = cli(*decay_args(flag, val))
        if flag == "--d-ff" and c.rc == 0:
            o = cli_ok(c, lambda c: (True, "--d-ff 0 runs (d_ff = 0 is valid since issue 15)"))
        else:
            o = cli_error(c, flag, *names, rc=2)
        outs.append(Outcome(o.cls, f"{flag} {val}: {o.text}"))
    return outs


case(441, _model_flags)
case(442, _cli_each("--damping", ["-1", "nan", "inf"], "damping"))
case(443, _cli_each("--eps", ["0", "nan"], "eps"))


def _eps_negative():
    c = cli(*decay_args("--eps", "-1e-6"))
    o = cli_error(c, "--eps", "eps", rc=2)
    if o.cls == "A" and "expected one argument" in o.text:
        return Outcome("C", o.text + " (the value was given: the message misleads)")
    return o


case(444, _eps_negative)


def _eps_vanishes_cli():
    out = Scratch.fresh("decay")
    c = cli(*decay_args("--eps", "1e-30", trajectories=2000, out=out))
    if c.rc != 0:
        return cli_error(c, "--eps", "eps", "valid")
    s = c.out
    if re.search(r"\(0 valid\)", s):
        if re.search(r"bound holds\s+True", s):
            return Outcome("E", "rc 0; 0 valid but 'bound holds True': " + one_line(s, 150))
        return Outcome("D", "rc 0 with 0 valid trajectories: " + one_line(s, 150))
    return cli_ok(c, lambda c: (True, one_line(c.out, 150)))


case(445, _eps_vanishes_cli, "[scaled: none, 2000 trajectories as in the QA pass]")
case(446, lambda: cli_error(cli(*decay_args("--seed", "-1")), "--seed", "seed", rc=2))
case(447, lambda: cli_error(cli(*decay_args("--seed", str(2**64))), "--seed", "seed", rc=2))
case(448, lambda: cli_error(cli(*decay_args("--seed", str(2**63))), "--seed", "seed", rc=2))
case(449, _cli_each("--chunk-size", ["0", "-1"], "chunk_size"))
case(450, _cli_each("--threads", ["0", "1000", "-1"], "n_threads"))


def _choices():
    return [
        Outcome(o.cls, f"{f} {v}: {o.text}")
        for f, v in (("--method", "rk5"), ("--dtype", "float16"))
        for o in [cli_error(cli(*decay_args(f, v)), f, rc=2)]
    ]


case(451, _choices)
case(
    452,
    lambda: cli_ok(
        cli(*decay_args("--method", "averaged", trajectories=500)),
        lambda c: ("averaged" in c.out, "summary printed"),
    ),
)


@functools.cache
def _scheduler_unreachable():
    """Started early in a thread: the connect timeout (about 30 s) is waiting, not work."""
    box = {}

    def work():
        box["cli"] = cli(*decay_args("--scheduler", "tcp://127.0.0.1:1"), timeout=150)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t, box


def _scheduler_result():
    t, box = _scheduler_unreachable()
    t.join(160)
    if "cli" not in box:
        return Outcome("F", "did not finish within 160 s")
    return cli_error(box["cli"], "--scheduler", "scheduler", "127.0.0.1", rc=2)


case(453, _scheduler_result, "run in a background thread from the start (a 30 s connect timeout)")
case(
    454,
    lambda: cli_error(
        cli(*decay_args("--scheduler", "notanaddress")), "--scheduler", "port", "address", rc=2
    ),
)


def _out_checked_first(out, trajectories="2e4"):
    def go():
        c = cli("decay", "--trajectories", trajectories, "--out", out() if callable(out) else out)
        o = cli_error(c, "--out", rc=2)
        if o.cls == "A" and "trajectories" in c.out:
            return Outcome("D", o.text + " (but only after the study ran)")
        return o

    return go


def _existing_file():
    path = Scratch.path("out-is-a-file")
    with open(path, "w") as fh:
        fh.write("x\n")
    return path


case(455, _out_checked_first("/proc/x"), "[scaled: 2e4 trajectories instead of 2e5]")
case(456, _out_checked_first(_existing_file), "[scaled: 2e4 trajectories]")
case(457, _out_checked_first(""), "[scaled: 2e4 trajectories]")
case(
    462,
    lambda: cli_ok(
        cli(*decay_args(trajectories=1)), lambda c: ("1 valid" in c.out, "1 trajectory")
    ),
)


# ------------------------------------------------------- result folders and signals
RESULT_FILES = ("decay.csv", "decay.json", "decay.png")


def snapshot(folder):
    """``{name: bytes}`` of the result files in ``folder``."""
    out = {}
    for name in RESULT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as fh:
                out[name] = fh.read()
    return out


def set_state(folder, old):
    """Judge a result folder after an interrupted or killed run against the previous set
    ``old`` ({name: bytes}): ('B', ...) for the old set intact or a complete new set,
    ('G', ...) for a mixed, torn or lost set."""
    now = snapshot(folder)
    temps = [f for f in os.listdir(folder) if f.startswith(".") and ".tmp" in f]
    tmp_note = f"; {len(temps)} temporary file(s) left" if temps else ""
    kinds = {}
    for name in RESULT_FILES:
        if name not in now:
            kinds[name] = "missing"
        elif old.get(name) == now[name]:
            kinds[name] = "old"
        else:
            kinds[name] = "new"
    values = set(kinds.values())
    if values == {"old"} and len(old) == len(RESULT_FILES):
        return "B", "previous set intact" + tmp_note
    if values == {"missing"} and not old:
        return "B", "no set written" + tmp_note
    if values == {"new"}:
        problem = _new_set_problem(now)
        if problem:
            return "G", f"new set torn: {problem}" + tmp_note
        return "B", "complete new set" + tmp_note
    desc = ", ".join(f"{k} {v}" for k, v in kinds.items())
    return "G", f"mixed set: {desc}" + tmp_note


def _new_set_problem(files):
    try:
        doc = json.loads(files["decay.json"].decode())
    except (ValueError, UnicodeDecodeError) as e:
        return f"decay.json does not parse ({type(e).__name__})"
    rows = files["decay.csv"].decode(errors="replace").strip().splitlines()
    header, body = rows[0].split(","), rows[1:]
    mean = np.array([float(line.split(",")[header.index("mean")]) for line in body])
    ref = np.array([np.nan if v is None else v for v in doc["stats"]["mean"]], dtype=float)
    if mean.shape != ref.shape:
        return f"decay.csv has {len(body)} rows, decay.json {len(ref)} layers"
    if not np.allclose(mean, ref, rtol=1e-8, equal_nan=True):
        return "decay.csv and decay.json disagree"
    png = files["decay.png"]
    if not (
        png.startswith(b"\x89PNG\r\n\x1a\n") and png.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")
    ):
        return "decay.png incomplete"
    return None


@dataclasses.dataclass
class Signalled:
    cli: Cli
    sent: bool  # False: the run ended before the signal (or sig was None)
    t_match: float = math.nan  # seconds from the start to the first match of wait_for


def run_and_signal(args, sig, wait_for, delay, timeout=120):
    """Start the CLI, wait until ``wait_for`` (a regex on its output, or a function of
    no arguments) is true, sleep ``delay`` s, send ``sig`` (None: none) and wait for
    the exit."""
    d = Scratch.fresh("proc")
    fo, fe = os.path.join(d, "out"), os.path.join(d, "err")
    t0 = time.perf_counter()
    with open(fo, "w") as so, open(fe, "w") as se:
        p = subprocess.Popen(
            [sys.executable, "-m", "tfkernels.cli", *map(str, args)],
            stdout=so,
            stderr=se,
            cwd=Scratch.root,
            env=cli_env(),
        )
        sent, t_match = False, math.nan
        try:
            while time.perf_counter() - t0 < timeout:
                if p.poll() is not None:
                    break
                if callable(wait_for):
                    hit = wait_for()
                else:
                    with open(fo) as a, open(fe) as b:
                        hit = re.search(wait_for, a.read() + b.read())
                if hit:
                    t_match = time.perf_counter() - t0
                    time.sleep(delay)
                    if sig is not None and p.poll() is None:
                        p.send_signal(sig)
                        sent = True
                    break
                time.sleep(0.02)
            p.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    with open(fo) as a, open(fe) as b:
        c = Cli(list(map(str, args)), p.returncode, a.read(), b.read(), time.perf_counter() - t0)
    return Signalled(c, sent, t_match)


BAR = r"decay:\s+\d+%"


def _sigint(trajectories, chunk, delay, old_set=False):
    """Ctrl-C during the study: exit 130, one line, no traceback, and the statistics of
    the chunks done written to --out as a complete set (B); a traceback or no result is
    F.

    With ``old_set`` (row 461) the point is the previous set in --out: it must be intact
    or replaced by a complete new (partial) set (B); a mixed or torn folder is G."""
    out = Scratch.fresh("sigint")
    old = {}
    if old_set:
        prev = cli(*decay_args("--seed", "1", trajectories=2000, out=out))
        if prev.rc != 0:
            return Outcome(FAILED, f"could not write the previous set: {prev.said()}")
        old = snapshot(out)
    args = ["decay", "--trajectories", trajectories, "--out", out]
    if chunk:
        args += ["--chunk-size", chunk]
    s = run_and_signal(args, signal.SIGINT, BAR, delay)
    c = s.cli
    if not s.sent:
        return Outcome(NOT_REPLAYED, f"the run ended (rc {c.rc}) before the signal")
    head = f"rc {c.rc}, {c.secs:.1f} s after start: {c.said()}"
    if old_set:
        cls, state = set_state(out, old)
        return Outcome(cls, f"{state} ({head})")
    if c.traceback or c.rc != 130 or len(c.messages) > 2:
        return Outcome("F", head)
    files = snapshot(out)
    if "decay.json" not in files:
        return Outcome("F", head + "; no partial result written")
    cls, state = set_state(out, {})
    if cls != "B":
        return Outcome("F", f"{head}; {state}")
    doc = json.loads(files["decay.json"])
    done, partial = doc["n_trajectories"], bool(doc.get("meta", {}).get("partial"))
    # the chunks done are written: a partial set, or all of it when the last chunk ended
    return Outcome("B", f"{head}; set of {done} trajectories written (meta.partial {partial})")


case(
    458,
    lambda: [_sigint("1.4e5", None, d) for d in (0.3, 1.0, 2.0)],
    "[scaled: 1.4e5 trajectories in chunks of the default size; SIGINT 0.3/1/2 s after "
    "the progress bar appears]",
)
case(
    459,
    lambda: _sigint("5e4", "50000", 1.0),
    "[scaled: one chunk of 5e4 instead of 2e5]; Ctrl-C waits for the chunk by design",
)
case(460, lambda: _sigint("1e5", "4096", 1.0), "[scaled: 1e5 trajectories]")
case(461, lambda: _sigint("1e5", "4096", 1.0, old_set=True), "[scaled: 1e5 trajectories]")


def folder_state(folder):
    """Names, sizes and modification times of the entries of ``folder``."""
    with os.scandir(folder) as it:
        return {e.name: (e.stat().st_size, e.stat().st_mtime_ns) for e in it}


def changed(folder):
    """A function that tells whether ``folder`` differs from now (the writing began)."""
    before = folder_state(folder)
    return lambda: folder_state(folder) != before


def _sigkill_runs():
    """SIGKILL at several moments of a run whose --out holds a previous set: twice in
    the study and six times spread over the writing phase, which begins when the folder
    first changes and lasts as long as it did in an unkilled run."""
    master = Scratch.fresh("killold")
    prev = cli(*decay_args("--seed", "1", trajectories=2000, out=master))
    if prev.rc != 0:
        return Outcome(FAILED, f"could not write the previous set: {prev.said()}")
    old = snapshot(master)
    args = ["decay", "--trajectories", "2e4", "--seed", "0", "--out"]

    def copy_of_master():
        out = Scratch.fresh("kill")
        shutil.rmtree(out)
        shutil.copytree(master, out)
        return out

    out = copy_of_master()
    ref = run_and_signal([*args, out], None, changed(out), 0.0)
    write_s = ref.cli.secs - ref.t_match if ref.cli.rc == 0 and math.isfinite(ref.t_match) else 1.0
    plan = [("bar", 0.3), ("bar", 0.8)]
    plan += [("write", round(f * write_s, 3)) for f in (0.0, 0.2, 0.4, 0.6, 0.8, 0.95)]
    outs = []
    for phase, delay in plan:
        out = copy_of_master()
        trigger = BAR if phase == "bar" else changed(out)
        s = run_and_signal([*args, out], signal.SIGKILL, trigger, delay)
        when = f"kill {delay} s after {'the progress bar' if phase == 'bar' else 'writing began'}"
        if not s.sent:
            when += f" (the run had ended, rc {s.cli.rc})"
        cls, state = set_state(out, old)
        outs.append(Outcome(cls, f"{when}: {state}"))
    outs[-1].text += f" [writing took {write_s:.2f} s in an unkilled run]"
    return outs


case(
    463,
    _sigkill_runs,
    "[scaled: 8 kills instead of 37, aimed at the study (2) and spread over the writing "
    "phase (6); 2e4 trajectories]",
)

_KILL_IN_JSON = r"""
import builtins, io, os, signal, sys
import tfkernels as tfk

out, keep = sys.argv[1], sys.argv[2]
p = tfk.TransformerParams.random(d=8, n_heads=2, damping=3.0, seed=0)


def save(res):
    if hasattr(res, "save"):
        res.save(out)
    else:  # 0.1.0: what `tfkernels decay` did
        os.makedirs(out, exist_ok=True)
        res.to_json(os.path.join(out, "decay.json"))
        res.to_csv(os.path.join(out, "decay.csv"))
        res.plot(os.path.join(out, "decay.png"))


save(tfk.perturbation_decay(p, 64, 4, 8, seed=1))
for name in os.listdir(out):
    with open(os.path.join(out, name), "rb") as a, open(os.path.join(keep, name), "wb") as b:
        b.write(a.read())
new = tfk.perturbation_decay(p, 64, 4, 8, seed=2)

def path_of(file):
    if isinstance(file, int):
        return os.readlink(f"/proc/self/fd/{file}")
    return os.fsdecode(file) if isinstance(file, (str, bytes, os.PathLike)) else ""

class Half:
    def __init__(self, f):
        self._f = f
    def write(self, data):
        self._f.write(data[: max(1, len(data) // 2)])
        self._f.flush()
        os.fsync(self._f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    def __getattr__(self, name):
        return getattr(self._f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

real_open, real_write = io.open, os.write

def opener(file, mode="r", *a, **k):
    f = real_open(file, mode, *a, **k)
    if any(m in mode for m in "wax") and ".json" in os.path.basename(path_of(file)):
        return Half(f)
    return f

def writer(fd, data):
    if ".json" in os.path.basename(path_of(fd)):
        real_write(fd, data[: max(1, len(data) // 2)])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data)

io.open = builtins.open = opener
os.write = writer
save(new)
print("SURVIVED")
"""


def _kill_in_json():
    out, keep = Scratch.fresh("killjson"), Scratch.fresh("killjson-old")
    script = Scratch.path("kill_in_json.py")
    with open(script, "w") as fh:
        fh.write(_KILL_IN_JSON)
    p = subprocess.run(
        [sys.executable, script, out, keep],
        capture_output=True,
        text=True,
        cwd=Scratch.root,
        env=cli_env(),
        timeout=180,
    )
    if "SURVIVED" in p.stdout:
        return Outcome(NOT_REPLAYED, "no write to a .json file was seen: the kill was not injected")
    if p.returncode != -signal.SIGKILL:
        return Outcome(
            FAILED, f"the writer ended with rc {p.returncode}: {one_line(p.stderr[-300:])}"
        )
    old = snapshot(keep)
    cls, state = set_state(out, old)
    return Outcome(cls, f"killed half-way through the JSON write: {state}")


case(464, _kill_in_json, "the writer kills itself after writing half of its first JSON write")


def _twice():
    out = Scratch.fresh("twice")
    first = cli(*decay_args(trajectories=500, out=out))
    second = cli(*decay_args(trajectories=500, out=out))
    if first.rc or second.rc:
        return cli_ok(second)
    text = second.out + second.err
    if re.search(r"replac|overwr|exist", text, re.I):
        return Outcome("B", "second run says it replaces the previous set: " + second.said())
    return Outcome(
        "D", "second run replaced the previous set without a word (documented in --out's help)"
    )


case(465, _twice)


def _paper_readme():
    proj = Scratch.fresh("proj")
    readme = os.path.join(proj, "README.md")
    with open(readme, "w") as fh:
        fh.write("# my project\n\nhand-written notes\n")
    before = sorted(os.listdir(proj))
    c = cli("paper", "--out", os.path.join(proj, "paper"), "--trajectories", "50", cwd=proj)
    with open(readme) as fh:
        kept = fh.read() == "# my project\n\nhand-written notes\n"
    extra = sorted(set(os.listdir(proj)) - set(before) - {"paper"})
    if not kept:
        return Outcome("G", f"rc {c.rc}; the hand-written README.md beside --out was replaced")
    if c.rc != 0 or c.traceback:
        return cli_ok(c)
    if extra:
        return Outcome("D", f"rc 0; wrote outside --out: {extra}")
    return Outcome("B", f"rc 0 in {c.secs:.1f} s; README.md untouched, nothing outside --out")


case(466, _paper_readme)


def _paper_1e3():
    c = cli("paper", "--trajectories", "1e3", "--out", Scratch.path("paper-1e3"))
    if c.rc == 0 and not c.traceback:
        return Outcome("B", f"rc 0: 1e3 read as 1000 ({c.secs:.1f} s)")
    return cli_error(c, "--trajectories", rc=2)


case(467, _paper_1e3, "right: a named error (0.1.0) or 1e3 read as 1000 like decay")


def _paper_each(values):
    return [
        Outcome(o.cls, f"--trajectories {v}: {o.text}")
        for v in values
        for o in [
            cli_error(
                cli("paper", "--trajectories", v, "--out", Scratch.path(f"paper{v}")),
                "--trajectories",
                "trajectories",
            )
        ]
    ]


case(468, lambda: _paper_each(["0", "-1"]))
case(469, lambda: cli_error(cli("paper", "--out", "/proc/x"), "--out", rc=2))


def _paper_seed():
    out = Scratch.path("paper-seed")
    o = cli_error(cli("paper", "--seed", "-1", "--out", out), "--seed", "seed")
    if o.cls == "A" and os.path.exists(out):
        return Outcome("D", o.text + " (but an empty --out folder was left behind)")
    return o


case(470, _paper_seed)


# ==================================================================== the run
def import_package():
    """Import the package under test and check that its kernels run at all (else every
    row would read as an unnamed error)."""
    global tfk, TP
    import tfkernels

    tfk = tfkernels
    TP = tfkernels.TransformerParams
    try:
        p = TP.linear(-np.eye(2))
        tfk.integrate(p, tfk.random_states(1, 1, 2), 1)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(
            f"replay_bad_inputs: error: tfkernels from {tfkernels.__file__} does not run: "
            f"{exc_text(e)} (activate the environment it is installed in)"
        ) from None


def package_identity():
    """Version, location and git commit of the package under test."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(tfk.__file__)))
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(
            ["git", "-C", root, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if r.returncode == 0:
            commit = r.stdout.strip()
    return f"tfkernels {tfk.__version__} at {root} (git {commit})"


def parse_rows(text, known):
    """``"1-50,380"`` -> the set of row numbers."""
    if not text:
        return set(known)
    chosen = set()
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        chosen.update(range(int(a), int(b or a) + 1))
    return chosen & set(known)


def worst(outcomes):
    return max(outcomes, key=lambda o: SEVERITY.get(o.cls, 7))


def replay_row(row):
    """Run the replay of ``row``; the list of its attempts' outcomes."""
    if row.num in NOT_REPLAYABLE:
        return [Outcome(NOT_REPLAYED, NOT_REPLAYABLE[row.num])]
    if row.num not in REPLAYS:
        return [Outcome(NOT_REPLAYED, "no replay written for this row")]
    fn, _ = REPLAYS[row.num]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                res = fn()
    except Exception as e:  # noqa: BLE001 (a replay that fails is reported, not fatal)
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return [
            Outcome(
                FAILED,
                f"replay failed: {exc_text(e)} [{os.path.basename(tb.filename)}:{tb.lineno}]",
            )
        ]
    return res if isinstance(res, list) else [res]


def md_cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def counts_table(rows, results):
    """Markdown lines: per class, rows and attempts then and now."""
    rows_then = collections.Counter(r.cls for r in rows.values())
    rows_now = collections.Counter()
    att_then = collections.Counter()
    att_now = collections.Counter()
    for r in rows.values():
        att_then.update(r.then_attempts)
        outs = results[r.num]
        rows_now[worst(outs).cls] += 1
        att_now.update(o.cls for o in outs)
    lines = [
        "| class | rows then | rows now | attempts then | attempts now |",
        "|---|---|---|---|---|",
    ]
    for k in CLASSES + NOT_REPLAYED + FAILED:
        if k in CLASSES or rows_now[k]:
            label = {"-": "not replayed", "?": "replay failed"}.get(k, k)
            then_r, then_a = rows_then[k] or "", att_then[k] or ""
            lines.append(f"| {label} | {then_r} | {rows_now[k]} | {then_a} | {att_now[k]} |")
    lines.append(
        f"| all | {len(rows)} | {sum(rows_now.values())} | {sum(att_then.values())} | "
        f"{sum(att_now.values())} |"
    )
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="replay_bad_inputs",
        description=__doc__.split("\n\n")[0],
    )
    ap.add_argument("--out", help="write the Markdown table here (nothing is written without it)")
    ap.add_argument("--table", help="bad-inputs.md (default: shared/qa/bad-inputs.md above here)")
    ap.add_argument("--rows", help="replay these rows only, e.g. 1-50,380,458")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each row as it runs")
    args = ap.parse_args(argv)
    if args.out is not None:
        folder = os.path.dirname(os.path.abspath(args.out))
        if args.out == "" or os.path.isdir(args.out):
            ap.error(f"--out {args.out!r} must be a file path")
        if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            ap.error(f"--out {args.out!r}: cannot write in {folder!r}")

    table = find_table(args.table)
    rows = read_table(table)
    import_package()
    t_start = time.perf_counter()
    chosen = parse_rows(args.rows, rows)
    Scratch.root = tempfile.mkdtemp(prefix="tfk-qa-replay-")
    results, secs = {}, {}
    try:
        if 453 in chosen:
            _scheduler_unreachable()  # its 30 s wait overlaps the other rows
        for num in sorted(chosen):
            t0 = time.perf_counter()
            results[num] = replay_row(rows[num])
            secs[num] = time.perf_counter() - t0
            if args.verbose:
                o = worst(results[num])
                print(
                    f"{num:4d} {rows[num].cls} -> {o.cls} {secs[num]:6.1f}s {o.text[:110]}",
                    flush=True,
                )
    finally:
        shutil.rmtree(Scratch.root, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    sub = {n: rows[n] for n in sorted(chosen)}
    report(sub, results, secs, elapsed, table, args.out)
    regressions = [
        n for n in sub if rows[n].cls in GOOD and worst(results[n]).cls not in GOOD | {NOT_REPLAYED}
    ]
    failed = [n for n in sub if worst(results[n]).cls == FAILED]
    return 1 if regressions or failed else 0


def report(rows, results, secs, elapsed, table, out):
    ident = package_identity()
    lines_counts = counts_table(rows, results)
    bad_now = [n for n in rows if worst(results[n]).cls not in GOOD | {NOT_REPLAYED}]
    skipped = [n for n in rows if worst(results[n]).cls == NOT_REPLAYED]
    regress = [n for n in bad_now if rows[n].cls in GOOD]
    print(f"replayed {len(rows)} rows of {table}")
    then = collections.Counter()
    for r in rows.values():
        then.update(r.then_attempts)
    if len(rows) == 470 and dict(then) != THEN_ATTEMPTS:
        print(f"note: the table's attempts per class {dict(then)} differ from {THEN_ATTEMPTS}")
    print(f"against {ident}")
    print(f"in {elapsed:.0f} s\n")
    print("\n".join(lines_counts))
    print(f"\nrows C-G now ({len(bad_now)}):")
    for n in bad_now:
        o = worst(results[n])
        print(
            f"  {n:4d} {rows[n].cls}->{o.cls} {one_line(rows[n].call, 60)}: {one_line(o.text, 150)}"
        )
    if skipped:
        print(f"\nnot replayed ({len(skipped)}):")
        for n in skipped:
            print(f"  {n:4d} {one_line(worst(results[n]).text, 150)}")
    if regress:
        print(f"\nREGRESSIONS (A/B then, C-G now): {regress}")
    if out is None:
        return
    doc = [
        "# Replay of the bad-input attempts",
        "",
        f"`qa/replay_bad_inputs.py` replayed {len(rows)} rows of `{os.path.basename(table)}` "
        f"against {ident} on {time.strftime('%Y-%m-%d %H:%M')}, in {elapsed:.0f} s. "
        "Classes: A clear named error; B accepted and correct; C unclear or unnamed error; "
        "D silently accepted or coerced; E silently wrong or misleading; F crash, traceback "
        "or lost work; G data loss or torn output. A row of several attempts takes its "
        'worst attempt\'s class; "then" is the QA pass on 0.1.0.',
        "",
        *lines_counts,
        "",
        "| # | area | call / input | outcome | then | now | new outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, r in rows.items():
        outs = results[n]
        o = worst(outs)
        new = o.text if len(outs) == 1 else "; ".join(f"[{x.cls}] {x.text}" for x in outs)
        note = REPLAYS.get(n, (None, ""))[1]
        if note:
            new += f" — {note}"
        doc.append(
            f"| {n} | {md_cell(r.area)} | `{md_cell(r.call)}` | {md_cell(r.outcome)} | {r.cls} | "
            f"{o.cls} | {md_cell(new)} ({secs[n]:.1f} s) |"
        )
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(doc) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    sys.exit(main())
