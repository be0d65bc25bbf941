"""Fresh Python processes that import this copy of tfkernels.

The compile and memory probes and the peer workers each run in a new interpreter. They
must import the same tfkernels as the harness, so their ``PYTHONPATH`` starts with the
folder that holds the ``tfkernels`` package (:func:`package_root`).
"""

import json
import os
import subprocess
import sys


def package_root():
    """The folder holding the ``tfkernels`` package (a source checkout or site-packages)."""
    here = os.path.dirname(os.path.abspath(__file__))  # .../tfkernels/bench
    return os.path.dirname(os.path.dirname(here))


def child_env(extra=None):
    """This process's environment, plus ``extra``, with :func:`package_root` first on
    ``PYTHONPATH``."""
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root(), env.get("PYTHONPATH")) if p)
    return env


def run_json_script(script, args=(), extra_env=None, timeout=600):
    """Run ``python -c script *args`` in a fresh interpreter; return its last line as JSON.

    Parameters
    ----------
    script : str
        Python source that prints one JSON object as its last line of output.
    args : sequence of str
        Its ``sys.argv[1:]``.
    extra_env : dict, optional
        Environment variables to set in the child (see :func:`child_env`).
    timeout : float
        Seconds before the child is killed.

    Returns
    -------
    dict
        The decoded object, or ``{"error": <tail of stderr>}`` when the child failed.
    """
    try:
        r = subprocess.run(
            [sys.executable, "-c", script, *map(str, args)],
            env=child_env(extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if r.returncode:
        return {"error": r.stderr[-1500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])
