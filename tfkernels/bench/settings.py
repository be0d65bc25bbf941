"""What a sweep measures: :class:`Config`, :class:`Settings` and the named presets.

Imports nothing beyond the standard library at import time, so that the command line
(:mod:`tfkernels.cli.bench`) can build its parser from :data:`PRESETS` cheaply.
"""

from dataclasses import dataclass, field, replace

#: The named configurations (T, d, heads) of issue 5's goal table.
NAMED_CONFIGS = {
    "tiny": (8, 16, 2),
    "small": (16, 32, 4),
    "medium": (32, 64, 4),
    "large": (64, 128, 8),
}


#: The models a throughput configuration may run (``Config.model``): the paper's
#: parallel field (attention + GELU FFN, damping 1) and two real blocks, issue 17's
#: harness models: ``TransformerParams.random`` arguments beside d, H.
MODELS = {
    "paper": {"damping": 1.0},
    # GPT-2: pre-LN, attention then MLP, causal, tanh GELU, biases, final ln_f.
    "gpt2": {
        "norm": "layernorm",
        "norm_position": "pre",
        "block": "sequential",
        "causal": True,
        "activation": "gelu_tanh",
        "bias": True,
        "final_norm": True,
    },
    # BERT: post-LN, attention then FFN, exact GELU, biases.
    "bert": {
        "norm": "layernorm",
        "norm_position": "post",
        "block": "sequential",
        "activation": "gelu",
        "bias": True,
    },
}

#: Issue 18's Monte Carlo batch sizes B of the named configurations (the ``mc`` preset):
#: the batches a study of many trajectories runs, not the per-trajectory latency of B = 16.
MC_BATCHES = {"tiny": 8192, "small": 2048, "medium": 512, "large": 128}


@dataclass(frozen=True)
class Config:
    """One throughput configuration: ``name``, tokens T, width d, heads H.

    ``batch`` is this configuration's own B (trajectories per call), or None to size it
    from the sweep's ``batch`` or ``work`` (:func:`tfkernels.bench.throughput.batch_for`).
    ``model`` is a key of :data:`MODELS`.
    """

    name: str
    seq_len: int
    d: int
    heads: int
    batch: int = None
    model: str = "paper"


@dataclass(frozen=True)
class Settings:
    """Everything a sweep needs; built from a preset and the command-line overrides.

    Attributes
    ----------
    preset : str
        Name written into the output file names.
    dtypes : tuple of str
    configs : tuple of Config
    n_layers : tuple of int
        Depths N of the throughput sweep.
    batch : int or None
        Trajectories per call of every config (``--batch``); None takes each config's
        own ``Config.batch``, or a power of two per config from ``work``.
    work : float
        Flops of one timed call at the largest N when ``batch`` is None.
    method : str
        Update rule of the throughput sweep (peers support euler, heun, rk4).
    peers : tuple of str
    threads : int
    repeats : int
    min_sample_s : float
    pause_s : float
        Pause between samples of different implementations, so that idle OpenMP
        workers (Numba's ``omp`` layer, PyTorch), which spin before they sleep, do not
        slow the implementation timed next (``bench/README.md``).
    scaling : dict
        ``base`` (T, d, H, N, B) and the lists ``batch``, ``layers``, ``seq_len``,
        ``width``; ``threads`` (bool).
    errors : dict
        ``linear_layers``, ``transformer_layers``, ``methods``.
    compile : {"first", "warm", "cold"}
    memory_batches : tuple of int
    sections : tuple of str
    wait_quiet_s : float
        Before each throughput point (and each scaling axis), wait up to this long for
        other processes to leave the CPUs (< 15 % busy); 0 never waits.
    peak_min_s : float
        Length of one timed run of :func:`tfkernels.bench.flops.measured_peak` (median
        of :data:`tfkernels.bench.machine.PEAK_REPEATS` runs per dtype and thread count).
    goals : {"issue5", "issue18", "issue17"}
        Which issue's goals the report judges the throughput points against
        (:func:`tfkernels.bench.report.goals`).
    """

    preset: str
    dtypes: tuple
    configs: tuple
    n_layers: tuple
    batch: int = None
    work: float = 5e8
    method: str = "euler"
    peers: tuple = ("numpy", "torch", "jax")
    threads: int = None
    repeats: int = 5
    min_sample_s: float = 0.02
    pause_s: float = 0.005
    scaling: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    compile: str = "warm"
    memory_batches: tuple = (4096,)
    sections: tuple = ("compile", "throughput", "scaling", "errors", "decay", "memory")
    wait_quiet_s: float = 0.0
    peak_min_s: float = 0.2
    goals: str = "issue5"


def _named(*names, batches=None, model="paper"):
    batches = batches or {}
    label = "" if model == "paper" else f"-{model}"
    return tuple(
        Config(n + label, *NAMED_CONFIGS[n], batch=batches.get(n), model=model) for n in names
    )


PRESETS = {
    "ci": Settings(
        preset="ci",
        dtypes=("float32",),
        configs=_named("tiny"),
        n_layers=(8,),
        batch=32,
        peers=("numpy",),
        repeats=3,
        min_sample_s=0.005,
        compile="first",
        peak_min_s=0.05,
        memory_batches=(),
        sections=("compile", "throughput", "scaling", "errors"),
        scaling={
            "base": (4, 8, 2, 4, 32),
            "batch": (16, 32),
            "layers": (4, 8),
            "seq_len": (4, 8),
            "width": (8, 16),
            "threads": True,
        },
        errors={
            "linear_layers": (8, 16, 32, 64),
            "transformer_layers": (4, 8, 16),
            "methods": ("euler", "heun", "rk4", "averaged"),
        },
    ),
    "quick": Settings(
        preset="quick",
        dtypes=("float32", "float64"),
        configs=_named("tiny", "small"),
        n_layers=(8, 32),
        work=5e8,
        repeats=7,
        min_sample_s=0.03,
        pause_s=0.05,
        compile="warm",
        wait_quiet_s=5.0,
        memory_batches=(4096,),
        scaling={
            "base": (8, 16, 2, 16, 128),
            "batch": (32, 128, 512),
            "layers": (4, 16, 64),
            "seq_len": (4, 8, 16),
            "width": (8, 16, 32),
            "threads": True,
        },
        errors={
            "linear_layers": (8, 16, 32, 64, 128),
            "transformer_layers": (4, 8, 16, 32),
            "methods": ("euler", "heun", "rk4", "averaged"),
        },
    ),
    "full": Settings(
        preset="full",
        dtypes=("float32", "float64"),
        configs=_named("tiny", "small", "medium", "large"),
        n_layers=(8, 32, 128),
        work=4e9,
        repeats=7,
        min_sample_s=0.1,
        pause_s=0.05,
        compile="cold",
        wait_quiet_s=60.0,
        memory_batches=(1024, 16384, 131072),
        scaling={
            "base": (16, 32, 4, 32, 256),
            "batch": (16, 64, 256, 1024, 4096),
            "layers": (8, 32, 128, 512),
            "seq_len": (4, 8, 16, 32, 64),
            "width": (8, 16, 32, 64, 128),
            "threads": True,
        },
        errors={
            "linear_layers": (4, 8, 16, 32, 64, 128, 256, 512, 1024),
            "transformer_layers": (4, 8, 16, 32, 64, 128, 256),
            "methods": ("euler", "heun", "rk4", "averaged"),
        },
    ),
}

# Issue 18: ``full`` at Monte Carlo batch sizes, throughput only (``--sections`` adds the
# others, with full's settings); issue 18's goals are judged on it.
PRESETS["mc"] = replace(
    PRESETS["full"],
    preset="mc",
    configs=_named("tiny", "small", "medium", "large", batches=MC_BATCHES),
    n_layers=(32,),
    peers=("numpy", "torch", "jax"),
    repeats=5,
    min_sample_s=0.1,
    wait_quiet_s=30.0,
    sections=("throughput",),
    goals="issue18",
)


# Issue 17: the real blocks (a GPT-2 and a BERT layer) at Monte Carlo batch sizes, float32,
# against peers computing the same block; issue 17's goals are judged on it.
PRESETS["blocks"] = replace(
    PRESETS["mc"],
    preset="blocks",
    dtypes=("float32",),
    configs=tuple(
        c
        for model in ("gpt2", "bert")
        for c in _named("tiny", "small", "medium", "large", batches=MC_BATCHES, model=model)
    ),
    goals="issue17",
)


def default_threads():
    """Numba's thread count (all usable cores unless NUMBA_NUM_THREADS says less)."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def sweep_threads(settings):
    """Threads of the sweep's timed calls (``settings.threads``, else all Numba threads)."""
    return settings.threads or default_threads()


def grid_configs(d_list, seq_len, heads):
    """Throughput configurations of a ``--d`` grid at one T and H.

    Raises
    ------
    ValueError
        ``heads`` does not divide every width in ``d_list``.
    """
    for d in d_list:
        if d % heads:
            raise ValueError(f"`--heads`={heads} must divide every `--d`, not {d}")
    return tuple(Config(f"T{seq_len}-d{d}-H{heads}", seq_len, d, heads) for d in d_list)
