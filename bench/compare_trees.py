"""Old against new: the same workloads timed with two source trees of tfkernels.

Each tree runs in its own process (``PYTHONPATH`` set to it), warm (a first call
compiles or loads the kernels and is not timed), alternating old/new ``--rounds``
times; each workload is the median of ``--repeats`` calls. Prints new/old per round.

    git worktree add /tmp/old <commit>
    python bench/compare_trees.py --old /tmp/old --new . [--rounds 3]

Workloads: ``tfk.integrate`` of the paper's model (damping 1, d_ff = 4d, N = 32) at
the Monte Carlo batch sizes of tiny, small and medium, float32 and float64, and the
default decay study's ``log r`` in pair and tangent mode (16 384 trajectories).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = {"tiny": (8, 16, 2, 8192), "small": (16, 32, 4, 2048), "medium": (32, 64, 4, 512)}


def workloads(repeats):
    """Median seconds of every workload with the tfkernels on ``sys.path``."""
    import numpy as np

    import tfkernels as tfk
    from tfkernels.studies import decay

    def median(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    out = {}
    for name, (T, d, H, B) in CONFIGS.items():
        for dt in (np.float32, np.float64):
            p = tfk.TransformerParams.random(d, H, 4 * d, damping=1.0, seed=0, dtype=dt)
            x0 = tfk.random_states(B, T, d, seed=1, dtype=dt)
            key = f"integrate {name} {np.dtype(dt).name}"
            out[key] = median(lambda p=p, x0=x0: tfk.integrate(p, x0, 32))
    p = tfk.TransformerParams.random(d=16, n_heads=2, d_ff=32, damping=4.0, seed=0)
    for mode in ("pair", "tangent"):
        out[f"decay {mode}"] = median(lambda m=mode: decay.log_ratios(p, 16384, 4, 32, mode=m))
    return out


def run_tree(tree, repeats):
    """:func:`workloads` in a fresh process with ``tree`` first on the path."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as f:
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); import compare_trees as c; "
            "json.dump(c.workloads(int(sys.argv[2])), open(sys.argv[3], 'w'))"
        )
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run(
            [sys.executable, "-c", code, here, str(repeats), f.name], env=env, check=True
        )
        return json.load(open(f.name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="source tree of the old tfkernels")
    ap.add_argument("--new", required=True, help="source tree of the new tfkernels")
    ap.add_argument("--rounds", type=int, default=3, help="old/new alternations")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per workload")
    a = ap.parse_args()
    rounds = [(run_tree(a.old, a.repeats), run_tree(a.new, a.repeats)) for _ in range(a.rounds)]
    for key in rounds[0][0]:
        old = statistics.median(o[key] for o, _ in rounds)
        ratios = " ".join(f"{n[key] / o[key]:.3f}" for o, n in rounds)
        print(f"{key:26s} old {old * 1e3:8.1f} ms   new/old {ratios}")


if __name__ == "__main__":
    main()
