"""Memory safety (issue 15, part 4): every index the kernels take is in bounds.

CI runs this module and the kernel test modules a second time with Numba's bounds
checking on (``NUMBA_BOUNDSCHECK=1``, README's test section), in a Numba cache of its
own: the cache's index does not record the flag, so a shared cache would load
unchecked code (checking nothing) or leave slow checked code for the normal run.

The tests here make sure that step checks something: the package's decorators leave
the flag to the environment, a kernel compiled with the package's flags raises
IndexError on an out-of-bounds read when the flag is on, and, in the checked run
itself, the package's own kernels do when their Python checks are bypassed.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

import numba
import numpy as np
import pytest

import tfkernels as tfk
from tfkernels import kernels
from tfkernels.bench import fresh

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "tfkernels"

#: This run is the bounds-checked one (README's test section sets the variable).
CHECKED_RUN = os.environ.get("NUMBA_BOUNDSCHECK") == "1"


def test_no_decorator_overrides_the_environment():
    """``boundscheck=`` in a decorator would override NUMBA_BOUNDSCHECK for that kernel."""
    bad = [
        f"{path.name}:{n}"
        for path in PKG.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bboundscheck\s*=", line)
    ]
    assert not bad, bad


PROBE = """
import numpy as np
from tfkernels.kernels import simd
from tfkernels.kernels.jit import djit

@djit
def read(a, i):
    return a[i]

@djit
def vcopy(a, i, out):  # out[:L] = a[i:i + L], L lanes: the SIMD intrinsics
    simd.vstore(out, 0, simd.vload(a, i, simd.vzero(a)))

L = simd.VECTOR_BYTES // 8
a, out = np.zeros(L + 1), np.zeros(L)
for name, call in [
    ("index", lambda: read(a, L + 1)),
    ("vload", lambda: vcopy(a, 2, out)),
    ("vstore", lambda: vcopy(a, 0, out[1:].copy())),
]:
    try:
        call()
    except IndexError:
        print(name, "IndexError")
    else:
        print(name, "no error")
vcopy(a, 1, out)  # in bounds: no error
"""


def test_the_flag_makes_an_out_of_bounds_access_an_index_error():
    """A kernel compiled with the package's flags (no NRT, numpy error model, cached)
    checks its indices when NUMBA_BOUNDSCHECK=1 (in a fresh cache: see the module),
    and so do the SIMD loads and stores of ``kernels.simd``, which bypass Numba's
    indexing."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = pathlib.Path(tmp, "probe.py")  # a file: Numba caches no `python -c` code
        probe.write_text(PROBE)
        env = fresh.child_env({"NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": tmp})
        r = subprocess.run(
            [sys.executable, str(probe)], capture_output=True, text=True, env=env, timeout=300
        )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == [
        "index IndexError",
        "vload IndexError",
        "vstore IndexError",
    ], r.stdout + r.stderr


@pytest.mark.skipif(not CHECKED_RUN, reason="only in the NUMBA_BOUNDSCHECK=1 run")
def test_the_package_kernels_are_checked_in_the_checked_run():
    """In the checked run the kernels really were compiled with bounds checks (not
    loaded unchecked from a shared cache): with the Python checks bypassed, a weight
    set that does not exist is an IndexError. (Unchecked, this would read past the
    weights: it runs only here.)"""
    assert numba.config.BOUNDSCHECK, "NUMBA_BOUNDSCHECK=1 but Numba did not read it"
    p = tfk.TransformerParams.random(d=4, n_heads=2, d_ff=4, seed=0)
    X = tfk.random_states(3, 2, 4, seed=1)
    out = np.empty_like(X)
    with pytest.raises(IndexError):
        kernels.vector_field(kernels.pack_params(p), X, 1, out)  # the API says `layer`


@pytest.mark.parametrize("n_layers", [None, 1, 3])
@pytest.mark.parametrize("terms", [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
def test_every_weight_has_one_set_per_layer(n_layers, terms):
    """A term that is off still has one (empty) weight set per layer: the kernels take
    ``w.A[layer]`` before they test whether the linear term is on (the checked run
    found ``(1, 0, 0)`` placeholders indexed at layer 1 and 2)."""
    attention, ffn, linear = map(bool, terms)
    p = tfk.TransformerParams.random(
        d=4, n_heads=2, d_ff=4, attention=attention, ffn=ffn, linear=linear, n_layers=n_layers
    )
    w = kernels.pack_params(p).weights
    assert {a.shape[0] for a in w} == {n_layers or 1}, {k: a.shape for k, a in w._asdict().items()}


def test_ci_runs_the_checked_step_of_the_readme():
    """.ci/run follows README's test section: the same modules in the checked run."""
    root = ROOT

    def modules(text):
        text = text.replace("\\\n", " ")
        line = next(li for li in text.splitlines() if "NUMBA_BOUNDSCHECK=1" in li)
        assert 'NUMBA_CACHE_DIR="$' in line, line  # a cache of its own
        return re.findall(r"tests/test_\w+\.py", line)

    readme = modules((root / "README.md").read_text())
    assert "tests/test_boundscheck.py" in readme
    assert modules((root / ".ci" / "run").read_text()) == readme
