"""The decay-cost section: the decay study's pair and tangent modes against the flow.

The three run on the same model, batch and depth (the preset's scaling base), timed
interleaved; the ratios are the cost of a decay study over a plain flow.
"""

import numpy as np

from .settings import Config
from .throughput import Ours, bench_params
from .timing import time_interleaved, wait_quiet


class DecayStudy:
    """The chunk loop of :func:`tfkernels.perturbation_decay` as a timed implementation.

    ``sample`` returns the study's own ``meta["loop_time_s"]`` (drawing states and
    directions in the kernel, both trajectories or the tangent, streamed statistics),
    leaving out the λ̂ estimate that precedes the loop.
    """

    def __init__(self, params, B, T, N, mode, threads):
        import tfkernels as tfk

        self.study = tfk.perturbation_decay
        self.args = (params, B, T, N)
        self.kw = {"mode": mode, "n_threads": threads, "lambda_samples": 1, "seed": 0}

    def sample(self, n_inner):
        """Summed loop time of ``n_inner`` studies."""
        return sum(self.study(*self.args, **self.kw).meta["loop_time_s"] for _ in range(n_inner))


def decay_section(settings, bar):
    """Cost of the pair and tangent modes relative to the plain flow (same B, T, N)."""
    import tfkernels as tfk

    if not hasattr(tfk, "perturbation_decay"):
        return {"status": "skipped", "message": "tfk.perturbation_decay is not available"}
    T, d, H, N, B = settings.scaling["base"]
    dtype = settings.dtypes[0]
    bar.set_postfix_str("decay study cost")
    params = bench_params(Config("decay", T, d, H), dtype)
    x0 = tfk.random_states(B, T, d, seed=2, dtype=np.dtype(dtype))
    impls = {"flow": Ours(params, x0, N, "euler", settings.threads)}
    for mode in ("pair", "tangent"):
        impls[mode] = DecayStudy(params, B, T, N, mode, settings.threads)
        impls[mode].sample(1)
    impls["flow"].setup()
    wait_quiet(settings.wait_quiet_s)
    timed = time_interleaved(impls, settings.repeats, settings.min_sample_s, settings.pause_s)
    flow_s = timed["flow"]["median_s"]
    return {
        "status": "ok",
        "dtype": dtype,
        "T": T,
        "d": d,
        "heads": H,
        "N": N,
        "B": B,
        "flow_s": flow_s,
        **{f"{m}_s": timed[m]["median_s"] for m in ("pair", "tangent")},
        **{f"{m}_ratio": timed[m]["median_s"] / flow_s for m in ("pair", "tangent")},
    }
