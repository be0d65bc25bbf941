"""The compile notice and the second compile process (tfkernels.compiling; issue 15, part 7)."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

import tfkernels as tfk
from tfkernels import compiling


def _kernel(name, module="tfkernels.fake"):
    """A fresh, uncached jitted function that claims to live in ``module``."""

    def f(x):
        return x[0] + 1.0

    f.__name__ = f.__qualname__ = name
    f.__module__ = module
    return njit(cache=False)(f)


@pytest.fixture
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(compiling, "_announced", set())


def test_notice_one_line_per_dtype_on_compile_only(fresh_announcements):
    out = io.StringIO()
    k = _kernel("notice_probe")
    with compiling.notice(out, estimate_s=12.4):
        k(np.zeros(2))  # compiles: float64
        k(np.zeros(2))  # compiled already: no event
        k(np.zeros(2, np.float32))  # a new dtype compiles
    lines = out.getvalue().splitlines()
    assert lines == [
        "compiling kernels for float64, once per machine (~12 s)",
        "compiling kernels for float32, once per machine (~12 s)",
    ]


def test_notice_ignores_other_packages_and_nests(fresh_announcements):
    out, inner = io.StringIO(), io.StringIO()
    with compiling.notice(out):
        _kernel("foreign", module="someone_else")(np.zeros(1))
        assert out.getvalue() == ""
        with compiling.notice(inner, estimate_s=3):
            _kernel("nested")(np.zeros(1))
        _kernel("after")(np.zeros(1))  # float64 announced already in this process
    assert out.getvalue() == ""
    assert inner.getvalue() == "compiling kernels for float64, once per machine (~3 s)\n"


def _record(log, item):
    log.append(item)


class _FakeProc:
    def __init__(self, calls):
        self.calls, self.waited = calls, False

    def wait(self):
        self.waited = True

    def poll(self):
        return 0


def test_prepare_starts_second_process_on_first_compile(monkeypatch):
    monkeypatch.setenv(compiling.ENV_SWITCH, "1")
    monkeypatch.setattr(compiling, "_second_process_allowed", lambda: True)
    spawned, log = [], []

    def spawn(calls):
        spawned.append(_FakeProc(calls))
        log.append("spawn")
        return spawned[-1]

    monkeypatch.setattr(compiling, "_spawn", spawn)
    k = _kernel("prepare_probe")
    bg = [(_record, (log, "background"))]
    info = compiling.prepare([(k, (np.zeros(1),)), (_record, (log, "fg2"))], bg)
    assert log == ["spawn", "fg2", "background"]  # background runs here after the wait
    assert len(spawned) == 1 and spawned[0].calls == bg and spawned[0].waited
    assert info["compiled"] and info["second_process"]


def test_prepare_without_compiling_starts_nothing(monkeypatch):
    monkeypatch.setattr(compiling, "_second_process_allowed", lambda: True)
    monkeypatch.setattr(compiling, "_spawn", lambda calls: pytest.fail("spawned"))
    log = []
    k = _kernel("warm_probe")
    k(np.zeros(1))  # compiled before: the foreground compiles nothing
    info = compiling.prepare([(k, (np.zeros(1),))], [(_record, (log, "bg"))])
    assert log == ["bg"] and not info["compiled"] and not info["second_process"]


def test_prepare_compiles_background_here_when_foreground_is_warm(monkeypatch):
    """Only a foreground compile hands the background calls to a second process; a
    background call that compiles here must not start one for itself."""
    monkeypatch.setattr(compiling, "_second_process_allowed", lambda: True)
    monkeypatch.setattr(compiling, "_spawn", lambda calls: pytest.fail("spawned"))
    warm, cold = _kernel("warm_fg"), _kernel("cold_bg")
    warm(np.zeros(1))
    info = compiling.prepare([(warm, (np.zeros(1),))], [(cold, (np.zeros(1),))])
    assert info["compiled"] and not info["second_process"]


def test_second_process_switch(monkeypatch):
    monkeypatch.setenv(compiling.ENV_SWITCH, "0")
    assert not compiling._second_process_allowed()
    assert compiling.estimate((["flow"], ["jacobian"])) == pytest.approx(
        tfk.config.COMPILE_SECONDS["flow"] + tfk.config.COMPILE_SECONDS["jacobian"]
    )


def test_spawn_runs_the_pickled_calls(tmp_path):
    target = tmp_path / "made"
    proc = compiling._spawn([(os.mkdir, (str(target),))])
    assert proc.wait() == 0
    assert target.is_dir()


_STUDY = """
import json, sys
import tfkernels as tfk
p = tfk.TransformerParams.random(d=4, n_heads=1, d_ff=4, damping=2.0, seed=1)
r = tfk.perturbation_decay(p, 64, seq_len=2, n_layers=4, seed=3)
print(json.dumps(r.meta["compile"]))
print(json.dumps([r.lambda_hat, r.L_hat, r.rate, list(r.stats["mean"]), list(r.stats["q50"])]))
"""


def test_study_with_second_process_is_bit_identical(tmp_path):
    """On a fresh cache, the default study compiles its λ̂ kernels in a second process and
    loads them from the cache; every number equals a run in which this process compiled
    or loaded everything itself (this test process)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), **{compiling.ENV_SWITCH: "1"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    r = subprocess.run(
        [sys.executable, "-c", _STUDY], env=env, capture_output=True, text=True, check=True
    )
    info, got = map(json.loads, r.stdout.splitlines())
    assert info["compiled"]
    assert info["second_process"] == compiling._second_process_allowed()
    p = tfk.TransformerParams.random(d=4, n_heads=1, d_ff=4, damping=2.0, seed=1)
    ref = tfk.perturbation_decay(p, 64, seq_len=2, n_layers=4, seed=3)
    want = [ref.lambda_hat, ref.L_hat, ref.rate, list(ref.stats["mean"]), list(ref.stats["q50"])]
    assert got == json.loads(json.dumps(want))
