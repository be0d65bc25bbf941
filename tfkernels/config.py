"""Numba flags and tunables of tfkernels, all in one place.

Every ``@njit`` in the package takes its flags from here; ``tests/test_config.py``
fails the build if a decorator hard-codes ``fastmath=``, ``cache=`` or ``parallel=``.
"""

#: Fast-math flags for every kernel. ``nnan`` and ``ninf`` are left out on purpose:
#: the kernels test states for NaN/inf to report trajectories that blow up, and
#: those checks must not be optimised away. Reassociation and contraction (FMA) are
#: allowed; they change the last bits, so kernel-versus-reference tests use
#: tolerances, and only kernel-versus-kernel reproducibility tests compare bitwise.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: The random-number generator is compiled with strict IEEE arithmetic: with
#: reassociation allowed, ``σ·(√(−2 ln u₁)·cos 2πu₂)`` was regrouped differently in
#: different callers (the flow and the decay study's tangent step), changing the
#: noise in the last bit. A draw must be a pure function of its key and counter.
RNG_FASTMATH = False

#: The overflow-safe norms and the pair's rescaling (``kernels.maths.scaled_log_norm``
#: and its neighbours) are compiled with strict IEEE arithmetic too: they divide by the
#: largest magnitude *before* multiplying, and reassociation turned
#: ``((y − x)/m)·q`` into ``(y − x)·q/m``, which overflows.
SCALED_FASTMATH = False

#: float32's GELU polynomial (``kernels.maths.erf_poly32``) is compiled with
#: contraction only: with reassociation, the kernels it was inlined into regrouped its
#: sums differently, and the row and lane kernels' tangents lost their shared bits.
CONTRACT_FASTMATH = {"contract"}

#: Compiled kernels are cached on disk (``__pycache__`` beside the source), so only
#: the first import on a machine pays the compile time.
CACHE = True

#: Division by zero gives inf/NaN as in NumPy instead of raising ZeroDivisionError.
#: The Python error model puts a branch before every float division, and that branch
#: stops LLVM from vectorizing loops that divide (the GELU's erfc); non-finite
#: results are caught by the kernels' finiteness checks anyway.
ERROR_MODEL = "numpy"

#: Reference counting (Numba's NRT) in the compiled code. Every array a jitted
#: function receives or slices gets an atomic incref/decref pair, dozens per layer.
#: No compiled function allocates (the drivers' buffers come from
#: ``kernels.structs``, allocated in Python per slice), so workers and drivers are all
#: compiled without NRT (``docs/performance.md``, "Drivers without reference counting").
WORKER_NRT = False

#: No kernel uses ``prange``: every driver is a serial GIL-free kernel over a slice of
#: the batch, and ``threads.run_threads`` runs the slices in parallel threads (a
#: ``prange`` driver compiles its fused body several times over: ``docs/performance.md``).
#:
#: Slices of a batch are cut at multiples of this many trajectories. Any value gives
#: bit-identical per-trajectory results because trajectories never interact.
BLOCK = 8

#: Largest block of attention probabilities (bytes) a trajectory's scratch holds: the
#: heads' transposed ``(T, T)`` blocks stand side by side in one ``(T, G·T)`` array,
#: all H of them while ``H·T²`` elements fit, so that the softmax runs along rows of
#: H·T columns, long enough to fill the vector loop even at T = 8. Past it, heads go
#: G at a time.
SOFTMAX_BLOCK_BYTES = 1 << 20

#: Largest state (``T·d`` elements) that the kernels run in the lane layout (a group of
#: trajectories across the vector lanes, ``kernels.structs.Lanes``) instead of the row
#: layout (one trajectory at a time). The two give identical bits; the lanes win where
#: a trajectory's rows are too short to fill vectors (``docs/performance.md``). 0 turns
#: them off.
LANES_MAX_SIZE = 512

#: Default number of trajectories per chunk in the Monte Carlo drivers. It bounds memory
#: and how long Ctrl-C waits (the running chunk finishes first): a chunk of the default
#: ``tfkernels decay`` study takes about 0.3 s on 2 idle cores (1 s with the cores
#: shared), where 65 536 took 1.1 s (4-8 s shared).
CHUNK_SIZE = 16_384

#: Relative tolerances of kernel-versus-reference tests, per dtype. float64 kernels
#: differ from the float64 reference only by summation order (reassociation) and
#: FMA contraction; float32 kernels by float32 rounding of O(d) term sums.
RTOL = {"float64": 1e-12, "float32": 1e-5}

#: Seconds a cold cache takes to compile each family of kernels for one dtype, as
#: measured for the default ``tfkernels decay`` model on an AMD Zen 5 (2 vCPUs; other
#: machines took up to 2–3× as long). Only the compile notice's estimate uses them
#: (:func:`tfkernels.compiling.estimate`): ``flow`` is :func:`tfkernels.integrate`
#: with its random numbers, ``pair`` and ``tangent`` the decay modes' kernels on top
#: of it, ``jacobian`` the JVP (and VJP) kernels of the λ̂ estimate.
COMPILE_SECONDS = {"flow": 11.0, "pair": 4.0, "tangent": 12.0, "jacobian": 15.0}

#: The pair mode's renormalization band (``kernels.drivers.run_pair``, as ChaosTools'
#: ``lyapunov``, whose default band is [1e-3, 1e3]·d0): the pair ``(X, Y)`` is rescaled
#: to ``‖Y − X‖ = d0 = ‖Y_0 − X_0‖`` (and the log of the factor accumulated into
#: ``log r``) when ``‖Y − X‖`` leaves ``[d0 / PAIR_BAND, d0 · PAIR_BAND]``, so that it
#: stays in the linear regime and far from overflow and underflow. A power of two:
#: the band's log-width ``log(PAIR_BAND)`` is then the same number in every dtype.
PAIR_BAND = 2.0**10

#: ...and when ``‖Y − X‖`` falls below ``PAIR_FLOOR · u · ‖X‖`` (u the unit roundoff of
#: the state dtype, ``u·‖X‖`` the rounding error of one update of X), then to at least
#: ``16 · PAIR_FLOOR · u · ‖X‖``: the relative rounding error of each layer's
#: ``‖X − Y‖`` stays below ``1 / PAIR_FLOOR`` (6e-8 in float64, 4e-3 in float32).
#: float32's is small because its default ε = 1e-3 leaves only ~2^11 between ‖X_0 − Y_0‖
#: and ``u·‖X_0‖`` (T·d = 64); neither edge is reached by the default study, whose
#: ``‖X − Y‖`` stays above 2^28 (float64) and 2^9 (float32) times ``u·‖X‖``.
PAIR_FLOOR_F64 = 2.0**24
PAIR_FLOOR_F32 = 2.0**8
