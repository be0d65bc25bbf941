"""The FLOP model of the transformer flow, and this machine's peak FLOP rate.

Both are the yardstick of the benchmark harness (:mod:`tfkernels.bench`): a measured
time becomes GFLOP/s through :func:`flops_per_layer`, and GFLOP/s becomes a fraction of
the machine through :func:`machine_peak`.

The FLOP model
--------------
One evaluation of ``f(X) = g(X) + h(X) − γ·X + X·A`` on a state ``X`` of shape
``(T, d)`` with H heads of width ``d_h = d/H`` and FFN width m costs

=====================  ==============================================  =============
term                   count                                           T=8, d=16, H=2
=====================  ==============================================  =============
Q, K, V, O projections ``4 · 2·T·d·d``                                 16 384
scores ``Q_h K_hᵀ``    ``2·P·d`` (all heads; P = T² pairs, T(T+1)/2     2 048
                       when causal)
``P_h V_h``            ``2·P·d``                                       2 048
softmax                ``SOFTMAX_FLOPS · H·P`` (scale, max, subtract,  1 920
                       exp, sum, normalise per score)
FFN matmuls            ``2·T·d·m + 2·T·m·d``                           32 768
FFN biases             ``T·m + T·d``                                   640
activation             ``ACTIVATION_FLOPS[σ] · T·m``                   10 240 (gelu)
linear term ``X·A``    ``2·T·d·d``                                     —
damping ``−γX``        ``T·d``                                         128
summing the terms      ``T·d`` per term after the first                256
=====================  ==============================================  =============

(the last column is the hand count of ``tests/test_harness.py``, m = 4d = 64, no linear
term: 66 432 flops per evaluation). A matmul of ``(a×b)·(b×c)`` counts ``2·a·b·c``
(one multiply and one add per term). Transcendentals count as the polynomial and
range-reduction work a vectorized implementation does, not as one flop:
``EXP_FLOPS = 10`` per ``exp``, and ``erf``/``tanh`` about the same; the constants
are conventions, written down so that every GFLOP/s figure can be recomputed.

An explicit Runge–Kutta step with s stages costs s evaluations plus its vector
combinations: ``2·T·d`` per non-zero tableau coefficient (``a_ij`` forming the stage
inputs ``X + h Σ a_ij k_j``, ``b_i`` forming the update ``X + h Σ b_i k_i``; one
multiply-add per element with the scalar ``h·a_ij`` or ``h·b_i``). Euler (and the
averaged update ``X + α_n c f(X)``) is one evaluation plus
``2·T·d``. Additive noise is not counted.

With m = 4d the total per Euler layer is ``24·T·d² + 4·T²·d + 15·H·T² + 20·T·m + …``,
the formula of issue 5.

The machine peak
----------------
``peak = cores × clock × flop/cycle``, with ``flop/cycle = lanes × FMA units × 2``
(a fused multiply-add is two flops), read from what the machine reports; see
:func:`machine_peak`. That *nominal* peak uses the clock the machine reports, which in
a virtual machine is the base clock: under load the cores boost above it, and a
register-tiled kernel can then exceed the nominal peak. :func:`measured_peak` therefore
also measures the peak — independent FMA chains held in vector registers, nothing but
FMAs — and :class:`PeakReference` divides by the larger of the two.
"""

import os
import re
import statistics
import time
from dataclasses import dataclass, field, replace

import numpy as np
from numba import njit

from .. import config
from ..kernels.simd import VECTOR_BYTES, lanes, sload, vfma, vload, vsplat, vstore, vzero
from ..methods import tableau

#: Flops per ``exp`` (range reduction + degree-5/6 polynomial + scaling, vectorized).
EXP_FLOPS = 10

#: Flops per softmax score: the β/√d_h scale (1), running max (1), subtract (1),
#: exp (EXP_FLOPS), row sum (1), normalisation multiply (1).
SOFTMAX_FLOPS = 5 + EXP_FLOPS

#: Flops per activation element. GELU (erf form, ``0.5·z·(1 + erf(z/√2))``): erf as a
#: rational/exp approximation ≈ 16, plus scale, add 1, two multiplies = 20.
#: gelu_tanh: cubic (4) + tanh via one exp (EXP_FLOPS + 3) + 3 = 20.
ACTIVATION_FLOPS = {"gelu": 20, "gelu_tanh": 20, "relu": 1, "tanh": 13, "identity": 0}


@dataclass(frozen=True)
class FlowConfig:
    """The shape of the flow whose flops are counted.

    Parameters
    ----------
    seq_len : int
        T, tokens per trajectory.
    d : int
        Token width.
    n_heads : int
        H; must divide d.
    d_ff : int, optional
        FFN width m (default 4d).
    attention, ffn, linear, damping : bool
        Which terms of ``f`` are present (``damping``: γ ≠ 0).
    causal : bool
        Causal mask (only ``T(T+1)/2`` scores computed).
    activation : str
        FFN activation, a key of :data:`ACTIVATION_FLOPS`.
    norm, norm_position, block, final_norm
        The block, as in :class:`~tfkernels.TransformerParams` (None, "pre",
        "parallel", False: the paper's model).
    bias : bool
        Attention biases (``bq, bk, bv, bo``).
    """

    seq_len: int
    d: int
    n_heads: int = 1
    d_ff: int = None
    attention: bool = True
    ffn: bool = True
    linear: bool = False
    damping: bool = True
    causal: bool = False
    activation: str = "gelu"
    norm: str = None
    norm_position: str = "pre"
    block: str = "parallel"
    bias: bool = False
    final_norm: bool = False

    def __post_init__(self):
        for name in ("seq_len", "d", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.d % self.n_heads:
            raise ValueError(f"`n_heads`={self.n_heads} must divide `d`={self.d}")
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d)
        if self.activation not in ACTIVATION_FLOPS:
            raise ValueError(
                f"`activation` must be one of {sorted(ACTIVATION_FLOPS)}, got {self.activation!r}"
            )

    @property
    def is_block(self):
        """Whether this is a block beyond the paper's field (a norm, attention biases, a
        sequential or Strang block), as ``TransformerParams.is_block``."""
        return bool(self.norm) or self.block != "parallel" or self.bias

    @classmethod
    def from_params(cls, params, seq_len):
        """Describe the flow of a :class:`~tfkernels.TransformerParams` on T tokens."""
        return cls(
            seq_len=seq_len,
            d=params.d,
            n_heads=params.n_heads,
            d_ff=params.d_ff or 4 * params.d,
            attention=params.attention,
            ffn=params.ffn,
            linear=params.linear is not None,
            damping=params.damping != 0,
            causal=params.causal,
            activation=params.activation,
            norm=params.norm,
            norm_position=params.norm_position,
            block=params.block,
            bias=any(getattr(params, k) is not None for k in ("bq", "bk", "bv", "bo")),
            final_norm=bool(params.final_norm),
        )


def score_pairs(seq_len, causal):
    """Number P of (query, key) pairs per head: ``T²``, or ``T(T+1)/2`` when causal."""
    return seq_len * (seq_len + 1) // 2 if causal else seq_len * seq_len


def flops_per_eval(cfg):
    """Flops of one evaluation of ``f`` on one trajectory, by term.

    Parameters
    ----------
    cfg : FlowConfig

    Returns
    -------
    dict
        Term name → flops, and ``"total"``.
    """
    T, d, m, H = cfg.seq_len, cfg.d, cfg.d_ff, cfg.n_heads
    terms = {}
    if cfg.attention:
        P = score_pairs(T, cfg.causal)
        terms["projections"] = 4 * 2 * T * d * d
        terms["scores"] = 2 * P * d
        terms["weighted_values"] = 2 * P * d
        terms["softmax"] = SOFTMAX_FLOPS * H * P
    if cfg.ffn:
        terms["ffn_matmuls"] = 2 * T * d * m + 2 * T * m * d
        terms["ffn_biases"] = T * m + T * d
        terms["activation"] = ACTIVATION_FLOPS[cfg.activation] * T * m
    if cfg.linear:
        terms["linear"] = 2 * T * d * d
    if cfg.damping:
        terms["damping"] = T * d
    n_terms = sum((cfg.attention, cfg.ffn, cfg.linear, cfg.damping))
    terms["sum_terms"] = max(n_terms - 1, 0) * T * d
    terms["total"] = sum(terms.values())
    return terms


def stage_combination_flops(method, seq_len, d):
    """Flops of a Runge–Kutta step's vector work (stage inputs, weights, the update).

    Parameters
    ----------
    method : {"euler", "heun", "rk4", "averaged"}
    seq_len, d : int

    Returns
    -------
    int
    """
    a, b, _ = tableau(method).arrays
    n_coeffs = int(np.count_nonzero(a) + np.count_nonzero(b))
    # One multiply-add per element and coefficient (h·a_ij and h·b_i are scalars).
    return 2 * seq_len * d * n_coeffs


#: Flops per element of a token norm (layernorm: mean, centre, variance, scale, gain
#: and bias; rmsnorm: sum of squares, scale, gain; sphere: sum of squares, scale) and
#: of the tangent projection ``F − ⟨x, F⟩/⟨x, x⟩·x`` (two inner products, a multiply-add).
NORM_FLOPS = {"layernorm": 7, "rmsnorm": 4, "sphere": 3}
PROJECTION_FLOPS = 6


def _sub_layer_flops(cfg, sub):
    """Flops of one evaluation of the sub-field ``sub`` ("attn" or "ffn") of a block:
    its terms, its biases, its pre norm and the tangent projection."""
    T, d = cfg.seq_len, cfg.d
    if sub == "attn":
        part = replace(cfg, ffn=False, linear=False, damping=False)
    else:
        part = replace(cfg, attention=False)
    if not (part.attention or part.ffn or part.linear or part.damping):
        return 0
    total = flops_per_eval(part)["total"]
    if sub == "attn" and cfg.bias:
        total += 4 * T * d
    if cfg.norm and cfg.norm_position == "pre":
        total += NORM_FLOPS[cfg.norm] * T * d
    if cfg.norm_position == "tangent":
        total += PROJECTION_FLOPS * T * d
    return total


def block_flops_per_layer(cfg, method="euler"):
    """Flops of one layer of a block (what :func:`flops_per_layer` counts when the
    configuration has a norm, biases or a sequential or Strang block): every sub-step's
    stages, its RK combination and its post norm. The final norm, once per trajectory
    and not per layer, is left out."""
    n_stages = len(tableau(method).b)
    T, d = cfg.seq_len, cfg.d
    fa, ff = _sub_layer_flops(cfg, "attn"), _sub_layer_flops(cfg, "ffn")
    if cfg.block == "parallel":
        steps = [fa + ff + (T * d if fa and ff else 0)]
    elif cfg.block == "sequential":
        steps = [f for f in (fa, ff) if f]
    else:
        steps = [f for f in (ff, fa, ff) if f]
    post = NORM_FLOPS[cfg.norm] * T * d if cfg.norm and cfg.norm_position == "post" else 0
    combine = stage_combination_flops(method, T, d)
    return sum(n_stages * f + combine + post for f in steps)


def flops_per_layer(cfg, method="euler"):
    """Flops of one layer (one step) of one trajectory: a *trajectory-layer*.

    Parameters
    ----------
    cfg : FlowConfig
    method : {"euler", "heun", "rk4", "averaged"}

    Returns
    -------
    int

    Examples
    --------
    >>> flops_per_layer(FlowConfig(seq_len=8, d=16, n_heads=2))
    66688
    """
    if cfg.is_block:
        return block_flops_per_layer(cfg, method)
    n_stages = len(tableau(method).b)
    return n_stages * flops_per_eval(cfg)["total"] + stage_combination_flops(
        method, cfg.seq_len, cfg.d
    )


# ------------------------------------------------------------------- machine peak
#: (vendor, family) whose 512-bit instructions run on 256-bit datapaths (AMD Zen 4):
#: AVX-512 is supported but the FMA throughput is that of AVX2.
HALF_RATE_AVX512 = {("AuthenticAMD", 25)}


@dataclass(frozen=True)
class MachinePeak:
    """Peak FLOP rate of this machine, with how it was obtained.

    Attributes
    ----------
    cores : int
        Physical cores this process may run on.
    clock_ghz : float
    vector_bits : int
        Width of the FMA datapath used for the peak.
    fma_units : int
        FMA (or, without FMA, add + multiply) pipes per core.
    flop_per_cycle : dict
        ``{"float32": ..., "float64": ...}`` per core.
    gflops : dict
        ``{"float32": ..., "float64": ...}`` for all ``cores``.
    explanation : str
        How every number was obtained, for printing.
    sources : dict
        Where cores, clock and SIMD features were read.
    """

    cores: int
    clock_ghz: float
    vector_bits: int
    fma_units: int
    flop_per_cycle: dict
    gflops: dict
    explanation: str
    sources: dict = field(default_factory=dict)

    def peak_gflops(self, dtype, threads=None):
        """Peak GFLOP/s for ``dtype`` on ``threads`` cores (default all)."""
        key = np.dtype(dtype).name
        if key not in self.flop_per_cycle:
            raise ValueError(f"`dtype` must be float32 or float64, got {key}")
        n = self.cores if threads is None else min(int(threads), self.cores)
        return n * self.clock_ghz * self.flop_per_cycle[key]

    def as_dict(self):
        """A JSON-ready dict of every field."""
        return {
            "cores": self.cores,
            "clock_ghz": self.clock_ghz,
            "vector_bits": self.vector_bits,
            "fma_units": self.fma_units,
            "flop_per_cycle": dict(self.flop_per_cycle),
            "gflops": dict(self.gflops),
            "explanation": self.explanation,
            "sources": dict(self.sources),
        }


def read_cpuinfo(path="/proc/cpuinfo"):
    """Return the first processor block of ``/proc/cpuinfo`` as a dict (empty if absent)."""
    info = {}
    try:
        with open(path) as fh:
            for line in fh:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def read_clock_ghz(cpuinfo, sysfs="/sys/devices/system/cpu/cpu0/cpufreq"):
    """Return ``(GHz, source)``: sysfs base or max frequency, else ``cpu MHz``.

    sysfs ``base_frequency`` (the nominal clock) is preferred over
    ``cpuinfo_max_freq`` (the highest boost, not sustained on all cores); in a
    virtual machine neither exists and ``/proc/cpuinfo`` ``cpu MHz`` is the clock the
    hypervisor reports.
    """
    for name in ("base_frequency", "cpuinfo_max_freq"):
        try:
            with open(os.path.join(sysfs, name)) as fh:
                return int(fh.read().strip()) / 1e6, f"{sysfs}/{name}"
        except (OSError, ValueError):
            continue
    if "cpu MHz" in cpuinfo:
        return float(cpuinfo["cpu MHz"]) / 1e3, "/proc/cpuinfo 'cpu MHz'"
    return 2.0, "unknown (assumed 2.0 GHz)"


def count_cores(cpuinfo):
    """Return ``(physical cores usable by this process, source)``.

    The affinity mask counts logical CPUs; with SMT (``siblings > cpu cores`` in
    ``/proc/cpuinfo``) two logical CPUs share one core's FMA units.
    """
    try:
        logical = len(os.sched_getaffinity(0))
        source = "os.sched_getaffinity"
    except AttributeError:
        logical, source = os.cpu_count() or 1, "os.cpu_count"
    try:
        smt = max(int(cpuinfo["siblings"]) // int(cpuinfo["cpu cores"]), 1)
    except (KeyError, ValueError, ZeroDivisionError):
        smt = 1
    if smt > 1:
        source += f" / {smt} threads per core"
    return max(logical // smt, 1), source


def simd_features(cpuinfo):
    """Return ``(vector bits, has FMA, note)`` from the CPU flags."""
    flags = set(cpuinfo.get("flags", cpuinfo.get("Features", "")).split())
    fma = "fma" in flags or "asimd" in flags  # AArch64 NEON always has FMA
    if "avx512f" in flags:
        vendor = cpuinfo.get("vendor_id", "")
        family = int(cpuinfo.get("cpu family", "0") or 0)
        if (vendor, family) in HALF_RATE_AVX512:
            return 256, fma, f"avx512f on {vendor} family {family}: 256-bit datapaths"
        return 512, fma, "avx512f"
    for flag, bits in (("avx2", 256), ("avx", 256), ("asimd", 128), ("sse2", 128)):
        if flag in flags:
            return bits, fma, flag
    return 64, fma, "no SIMD flag found (scalar)"


def machine_peak(cores=None, clock_ghz=None, flop_per_cycle32=None, cpuinfo=None):
    """Compute this machine's peak FLOP rate from what it reports.

    ``peak = cores × clock × flop/cycle``; ``flop/cycle = lanes × units × 2`` where
    lanes are the float32 (float64) elements of the widest vector register
    (avx512f: 16 (8); avx2: 8 (4); SSE/NEON: 4 (2)), units are 2 FMA pipes when the
    ``fma`` flag is present (× 2 flops per fused multiply-add), else one add and one
    multiply pipe.

    Parameters
    ----------
    cores, clock_ghz, flop_per_cycle32 : optional
        Overrides of the detected values (float64 is always half of float32).
    cpuinfo : dict, optional
        A parsed ``/proc/cpuinfo`` block (for tests); read from the machine by default.

    Returns
    -------
    MachinePeak

    Examples
    --------
    >>> p = machine_peak(cores=2, clock_ghz=2.45, flop_per_cycle32=32)
    >>> round(p.gflops["float32"], 1), round(p.gflops["float64"], 1)
    (156.8, 78.4)
    """
    info = read_cpuinfo() if cpuinfo is None else cpuinfo
    n_cores, core_src = count_cores(info)
    clock, clock_src = read_clock_ghz(info)
    bits, fma, simd_note = simd_features(info)
    # With FMA: 2 FMA pipes x 2 flops. Without: one add pipe + one multiply pipe.
    units = 2
    f32 = (bits // 32) * (units * 2 if fma else 2)
    srcs = {"cores": core_src, "clock": clock_src, "simd": simd_note, "fma": fma}
    if cores is not None:
        n_cores, srcs["cores"] = int(cores), "given"
    if clock_ghz is not None:
        clock, srcs["clock"] = float(clock_ghz), "given"
    if flop_per_cycle32 is not None:
        f32, srcs["simd"] = int(flop_per_cycle32), "given"
    fpc = {"float32": f32, "float64": f32 // 2}
    gflops = {k: n_cores * clock * v for k, v in fpc.items()}
    pipes = f"{units} FMA units x 2 flops" if fma else "1 add + 1 mul unit"
    text = (
        f"peak = {n_cores} cores ({srcs['cores']}) x {clock:.3f} GHz ({srcs['clock']}) x "
        f"{fpc['float32']} float32 flop/cycle [{bits}-bit vectors ({srcs['simd']}): "
        f"{bits // 32} float32 lanes x {pipes}] = {gflops['float32']:.1f} GFLOP/s float32, "
        f"{gflops['float64']:.1f} GFLOP/s float64 ({fpc['float64']} flop/cycle)"
    )
    return MachinePeak(
        cores=n_cores,
        clock_ghz=clock,
        vector_bits=bits,
        fma_units=units,
        flop_per_cycle=fpc,
        gflops=gflops,
        explanation=text,
        sources=srcs,
    )


def cpu_model(cpuinfo=None):
    """The CPU model name, vendor and family as one string."""
    info = read_cpuinfo() if cpuinfo is None else cpuinfo
    parts = [info.get("model name", "unknown CPU"), info.get("vendor_id", "")]
    if "cpu family" in info:
        parts.append(f"family {info['cpu family']} model {info.get('model', '?')}")
    return re.sub(r"\s+", " ", ", ".join(p for p in parts if p))


# ------------------------------------------------------------- measured FMA peak
#: Serial worker: no reference counting (``config.WORKER_NRT``), it allocates nothing.
#: GIL-free, so that one call per thread runs in parallel (``threads.run_each``).
_jit = njit(
    cache=config.CACHE,
    fastmath=config.FASTMATH,
    error_model=config.ERROR_MODEL,
    _nrt=config.WORKER_NRT,
    nogil=True,
)

#: Independent FMA chains per thread in :func:`measured_peak`. Full FMA throughput needs
#: at least latency × pipes chains in flight (4 cycles × 2 pipes = 8 on current x86
#: cores); 16 is where the measured rate stopped growing on the development machine
#: (bench/README.md, "The machine peak"). With AVX2's 16 registers the two operand
#: vectors become memory operands of the FMA (a load per FMA, within the two loads per
#: cycle), not a spill of an accumulator.
FMA_CHAINS = 16


@_jit
def _fma_chains(coef, out, o, n_iter):
    """``n_iter`` rounds of FMA_CHAINS independent ``c ← c·m + a`` vector FMAs.

    The accumulators start from ``out.flat[o : o + FMA_CHAINS·L]`` (distinct values, so
    the compiler cannot merge chains) and are stored back there, so nothing is dead.
    ``m`` and ``a`` (``coef[0]``, ``coef[1]``) keep every chain finite and normal.
    """
    z = vzero(out)
    L = lanes(z)
    m = vsplat(sload(coef, 0), z)
    a = vsplat(sload(coef, 1), z)
    c0 = vload(out, o, z)
    c1 = vload(out, o + L, z)
    c2 = vload(out, o + 2 * L, z)
    c3 = vload(out, o + 3 * L, z)
    c4 = vload(out, o + 4 * L, z)
    c5 = vload(out, o + 5 * L, z)
    c6 = vload(out, o + 6 * L, z)
    c7 = vload(out, o + 7 * L, z)
    c8 = vload(out, o + 8 * L, z)
    c9 = vload(out, o + 9 * L, z)
    c10 = vload(out, o + 10 * L, z)
    c11 = vload(out, o + 11 * L, z)
    c12 = vload(out, o + 12 * L, z)
    c13 = vload(out, o + 13 * L, z)
    c14 = vload(out, o + 14 * L, z)
    c15 = vload(out, o + 15 * L, z)
    for _ in range(n_iter):
        c0 = vfma(c0, m, a)
        c1 = vfma(c1, m, a)
        c2 = vfma(c2, m, a)
        c3 = vfma(c3, m, a)
        c4 = vfma(c4, m, a)
        c5 = vfma(c5, m, a)
        c6 = vfma(c6, m, a)
        c7 = vfma(c7, m, a)
        c8 = vfma(c8, m, a)
        c9 = vfma(c9, m, a)
        c10 = vfma(c10, m, a)
        c11 = vfma(c11, m, a)
        c12 = vfma(c12, m, a)
        c13 = vfma(c13, m, a)
        c14 = vfma(c14, m, a)
        c15 = vfma(c15, m, a)
    vstore(out, o, c0)
    vstore(out, o + L, c1)
    vstore(out, o + 2 * L, c2)
    vstore(out, o + 3 * L, c3)
    vstore(out, o + 4 * L, c4)
    vstore(out, o + 5 * L, c5)
    vstore(out, o + 6 * L, c6)
    vstore(out, o + 7 * L, c7)
    vstore(out, o + 8 * L, c8)
    vstore(out, o + 9 * L, c9)
    vstore(out, o + 10 * L, c10)
    vstore(out, o + 11 * L, c11)
    vstore(out, o + 12 * L, c12)
    vstore(out, o + 13 * L, c13)
    vstore(out, o + 14 * L, c14)
    vstore(out, o + 15 * L, c15)


def _fma_threads(coef, out, n_iter):
    """:func:`_fma_chains` once per row of ``out``, one row per thread, in parallel."""
    from ..threads import run_each

    n_rows, width = out.shape
    run_each(lambda t: _fma_chains(coef, out, t * width, n_iter), n_rows)


def fma_lanes(dtype):
    """Lanes of the vector :func:`measured_peak` runs for ``dtype`` (16/8 with AVX-512)."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def measured_peak(dtype="float32", threads=1, min_seconds=0.2, repeats=5):
    """Measure the peak FLOP rate: independent vector FMAs on ``threads`` threads.

    Every thread runs :data:`FMA_CHAINS` independent chains ``c ← c·m + a`` of
    full-width vector FMAs (:mod:`tfkernels.kernels.simd`: one AVX-512 register, or one
    AVX2 register) held in registers — no loads or stores in the loop, enough chains
    to cover FMA latency × throughput — and stores the results so that nothing is
    optimised away. This is the rate the cores actually sustain, at whatever clock they
    run under load (boost included), which the nominal :func:`machine_peak` cannot see.

    A run's time is the time its threads were on a CPU, ``min(wall, process CPU time /
    threads)``, so that other processes sharing the cores lower the measured peak less
    (they cannot raise it).

    Parameters
    ----------
    dtype : {"float32", "float64"}
    threads : int
        Threads (one row of chains each); at most ``NUMBA_NUM_THREADS``.
    min_seconds : float
        The inner loop is lengthened until one run takes at least this long.
    repeats : int
        Timed runs; the median is reported.

    Returns
    -------
    float
        GFLOP/s: ``threads × iterations × FMA_CHAINS × lanes × 2`` flops (a fused
        multiply-add counts two) over the median run time. Divide by
        ``threads × flop/cycle`` for the clock the cores ran at
        (:func:`implied_clock_ghz`).

    Examples
    --------
    >>> measured_peak("float32", threads=1, min_seconds=0.05, repeats=3) > 0
    True
    """
    from ..threads import threads as threads_context

    dt = np.dtype(dtype)
    if dt.name not in ("float32", "float64"):
        raise ValueError(f"`dtype` must be float32 or float64, got {dt.name}")
    n_threads = int(threads)
    if n_threads < 1:
        raise ValueError(f"`threads` must be a positive integer, got {threads!r}")
    if repeats < 1:
        raise ValueError(f"`repeats` must be at least 1, got {repeats!r}")
    L = fma_lanes(dt)
    # m·c + a with c near 1: every value stays near a/(1 − m) = 1, normal and finite.
    coef = np.array([0.5, 0.5], dtype=dt)
    out = (1.0 + np.arange(n_threads * FMA_CHAINS * L) / 1024.0).astype(dt)
    out = out.reshape(n_threads, FMA_CHAINS * L)

    with threads_context(n_threads):
        _fma_threads(coef, out, 1)  # compile, or load the cache
        n_iter = 1 << 12
        while True:
            elapsed = _busy_seconds(coef, out, n_iter, n_threads)
            if elapsed >= min_seconds:
                break
            grow = 2.0 if elapsed < 1e-3 else 1.2 * min_seconds / elapsed
            n_iter = int(n_iter * min(max(grow, 1.25), 64.0))
        times = [_busy_seconds(coef, out, n_iter, n_threads) for _ in range(repeats)]
    if not np.all(np.isfinite(out)):  # reading ``out`` also keeps the work alive
        raise RuntimeError("the FMA chains of measured_peak did not stay finite")
    flop = 2.0 * n_threads * n_iter * FMA_CHAINS * L
    return flop / statistics.median(times) / 1e9


def _busy_seconds(coef, out, n_iter, n_threads):
    """Seconds one :func:`_fma_threads` call kept its threads on a CPU.

    ``min(wall, process CPU time / threads)``: on a shared machine other processes take
    turns on the cores and the wall time counts their share; the CPU time of this
    process (all its threads) does not. The ``min`` keeps the wall time when the CPU
    time is larger (another thread of this process was busy too).
    """
    w0, c0 = time.perf_counter(), time.process_time()
    _fma_threads(coef, out, n_iter)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return max(min(wall, cpu / n_threads), 1e-9)


def implied_clock_ghz(gflops, dtype, threads, peak=None):
    """The clock (GHz) at which ``threads`` cores deliver ``gflops``.

    ``gflops / (threads × flop/cycle)`` with the flop/cycle of ``peak`` (a
    :class:`MachinePeak`; :func:`machine_peak` by default).
    """
    peak = machine_peak() if peak is None else peak
    return gflops / (int(threads) * peak.flop_per_cycle[np.dtype(dtype).name])


@dataclass
class PeakReference:
    """The denominator of "% of peak": the larger of the nominal and the measured peak.

    Attributes
    ----------
    nominal : MachinePeak
        :func:`machine_peak`: cores × reported clock × flop/cycle.
    measured : dict
        ``{dtype: {threads: GFLOP/s}}`` from :func:`measured_peak`.
    min_seconds, repeats : float, int
        How :func:`measured_peak` was run.
    """

    nominal: MachinePeak
    measured: dict = field(default_factory=dict)
    min_seconds: float = 0.2
    repeats: int = 5

    @classmethod
    def measure(
        cls, threads=(1,), dtypes=("float32", "float64"), min_seconds=0.2, repeats=5, nominal=None
    ):
        """Run :func:`measured_peak` for every dtype and thread count."""
        nominal = machine_peak() if nominal is None else nominal
        measured = {
            np.dtype(dt).name: {
                int(n): measured_peak(dt, n, min_seconds, repeats) for n in sorted(set(threads))
            }
            for dt in dtypes
        }
        return cls(nominal, measured, min_seconds, repeats)

    def _threads(self, threads):
        return self.nominal.cores if threads is None else int(threads)

    def measured_gflops(self, dtype, threads=None):
        """Measured GFLOP/s on ``threads`` threads (None if not measured).

        A thread count that was not measured is extrapolated linearly from the largest
        measured count below it (an upper bound: boost clocks fall as more cores load).
        """
        per = self.measured.get(np.dtype(dtype).name, {})
        n = self._threads(threads)
        if n in per:
            return per[n]
        below = [k for k in per if k < n]
        return per[max(below)] * n / max(below) if below else None

    def peak_gflops(self, dtype, threads=None):
        """``max(nominal, measured)`` GFLOP/s for ``dtype`` on ``threads`` threads."""
        nominal = self.nominal.peak_gflops(dtype, threads)
        measured = self.measured_gflops(dtype, threads)
        return nominal if measured is None else max(nominal, measured)

    def implied_clock_ghz(self, dtype, threads):
        """Clock (GHz) implied by the measured rate: measured / (threads × flop/cycle)."""
        gf = self.measured_gflops(dtype, threads)
        return None if gf is None else implied_clock_ghz(gf, dtype, threads, self.nominal)

    def summary(self):
        """One sentence: measured peaks, implied clocks, and which peak % uses."""
        parts = []
        for n in sorted({k for per in self.measured.values() for k in per}):
            rates = " / ".join(
                f"{self.measured[dt][n]:.0f} {dt}" for dt in self.measured if n in self.measured[dt]
            )
            clocks = sorted(
                {
                    round(self.implied_clock_ghz(dt, n), 2)
                    for dt in self.measured
                    if n in self.measured[dt]
                }
            )
            parts.append(
                f"{rates} GFLOP/s on {n} thread(s) (implied clock "
                f"{' / '.join(f'{c:.2f}' for c in clocks)} GHz)"
            )
        if not parts:
            return "measured FMA peak: not measured; % peak uses the nominal peak"
        return (
            f"measured FMA peak ({FMA_CHAINS} independent vector FMA chains per "
            f"thread, median of {self.repeats} runs of >= {self.min_seconds:g} s): "
            + "; ".join(parts)
            + "; % peak divides by the larger of nominal and "
            "measured for the threads used"
        )

    def as_dict(self):
        """A JSON-ready dict: the measured rates, implied clocks and the peak used."""
        return {
            "gflops": {
                dt: {str(n): v for n, v in per.items()} for dt, per in self.measured.items()
            },
            "implied_clock_ghz": {
                dt: {str(n): self.implied_clock_ghz(dt, n) for n in per}
                for dt, per in self.measured.items()
            },
            "fma_chains": FMA_CHAINS,
            "lanes": {dt: fma_lanes(dt) for dt in self.measured},
            "min_seconds": self.min_seconds,
            "repeats": self.repeats,
            "explanation": self.summary(),
        }
