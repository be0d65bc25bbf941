"""A study prepared for the runner (:class:`Plan`), and running one (:func:`run_plan`).

A study's public function validates its arguments, prepares what its chunks share (packed
parameters, a chunk configuration, estimates formed before the run) and then runs the
chunks on :func:`.runner.run_chunks`. The prepared state is a :class:`Plan`, so that a
sweep (:mod:`.sweep`) can run the plans of all its grid points as one run of the runner
and finish each with the same code as the study alone.
"""

import dataclasses
import math
import time

from .. import threads
from . import runner
from .environment import environment


@dataclasses.dataclass
class Plan:
    """A study ready to run.

    Attributes
    ----------
    chunk_fn : callable
        The study's chunk function (``chunk_fn(start, length, *shared)``).
    shared : tuple
        Its shared inputs.
    n_trajectories, chunk_size : int
        The runner's chunking.
    finish : callable
        ``finish(run_result, env, wall)`` → the study's result, from the runner's
        :class:`~.runner.RunResult`, the :func:`.environment.environment` of the run
        and its wall time in seconds.
    name : str
        The study's name (progress bar, messages).
    checkpoint_info : dict, optional
        The study's configuration for a checkpoint (:func:`.runner.run_chunks`).
    desc : str, optional
        Label of the progress bar (default ``name``).
    """

    chunk_fn: object
    shared: tuple
    n_trajectories: int
    chunk_size: int
    finish: object
    name: str
    checkpoint_info: dict = None
    desc: str = None


def run_plan(pl, *, n_threads=None, progress=False, client=None, checkpoint=None, t_begin=None):
    """Run a :class:`Plan` on the runner and finish it.

    Parameters
    ----------
    pl : Plan
    n_threads, progress, client, checkpoint
        As for :func:`.runner.run_chunks` (validated by the caller).
    t_begin : float, optional
        ``time.perf_counter()`` when the study began (default: now).

    Returns
    -------
    The study's result.

    Raises
    ------
    tfkernels.studies.runner.StudyInterrupted
        Ctrl-C stopped the run; its ``result`` is the study's result of the chunks
        merged so far (None when none was).
    """
    t_begin = time.perf_counter() if t_begin is None else t_begin
    with threads.threads(n_threads):
        try:
            chunks = runner.run_chunks(
                pl.chunk_fn,
                pl.n_trajectories,
                pl.chunk_size,
                shared=pl.shared,
                client=client,
                n_threads=n_threads,
                progress=progress,
                desc=pl.desc or pl.name,
                checkpoint=checkpoint,
                checkpoint_info=pl.checkpoint_info if checkpoint is not None else None,
            )
            interrupted = False
        except runner.StudyInterrupted as stop:
            chunks, interrupted = stop.result, True
        env = environment()  # inside: records the thread count used
    if chunks.cluster is not None:
        env["cluster"] = chunks.cluster
    res = pl.finish(chunks, env, time.perf_counter() - t_begin) if chunks.next_chunk else None
    if interrupted:  # also when the last chunk was running: the interrupt is not dropped
        raise runner.StudyInterrupted(
            res,
            f"{pl.name} interrupted after {chunks.n_done:,} of {pl.n_trajectories:,} trajectories",
        ) from None
    return res


def run_meta(chunks, n_layers, wall):
    """The ``meta`` entries every study records about its run: progress (``partial``,
    chunks and trajectories done, resumed, the checkpoint), the wall and chunk-loop
    times and the throughput in trajectory-layers per second over the chunk loop
    (``chunks`` a :class:`~.runner.RunResult`, ``wall`` seconds)."""
    n_run = chunks.n_done - chunks.n_resumed
    return {
        "partial": chunks.partial,
        "n_trajectories_done": chunks.n_done,
        "n_chunks_done": chunks.next_chunk,
        "n_chunks": chunks.n_chunks,
        "resumed_chunks": chunks.next_chunk - chunks.n_run,
        "checkpoint": chunks.checkpoint,
        "wall_time_s": wall,
        "loop_time_s": chunks.loop_time,
        "throughput": n_run * n_layers / chunks.loop_time if n_run else math.nan,
        "throughput_unit": "trajectory-layers per second over the chunk loop",
    }


def check_and_run(pl, *, n_threads=None, progress=False, client=None, checkpoint=None):
    """Validate the run arguments of a study (``n_threads``, ``progress``, ``client``,
    ``checkpoint``: errors name them) and :func:`run_plan` the :class:`Plan` ``pl``."""
    from .. import _validate as v
    from . import checkpoint as ckpt

    threads.check_n_threads(n_threads)
    v.check_bool("progress", progress)
    runner.check_client(client)
    if checkpoint is not None:
        checkpoint = ckpt.check_path(checkpoint, "checkpoint")
    return run_plan(
        pl, n_threads=n_threads, progress=progress, client=client, checkpoint=checkpoint
    )
