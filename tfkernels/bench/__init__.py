"""The benchmark harness (``tfkernels bench``): tfkernels against NumPy, PyTorch and JAX.

Sweeps over depth N and width d (throughput against the peers), scaling in B, N, T, d
and threads, compile and start-up time, memory, the global error E(N) of every
integration method with its fitted order, and the cost of the decay study. Writes
``<out>/bench-<preset>.json`` and ``.csv``, PNG plots, and regenerates
``<out>/README.md`` from every ``bench-*.json`` (and ``paper/paper.json``) found there.
The command line is :mod:`tfkernels.cli.bench`; importing this package imports none of
its modules.

Modules
-------
``settings``    Config, Settings and the presets (ci, quick, full, mc)
``timing``      interleaved medians, the CPU monitor of other processes, waiting for quiet
``machine``     CPU facts, nominal and measured peak, GEMM ceiling, versions, git state
``fresh``       fresh interpreters that import this copy of tfkernels
``probes``      first-call, cold-compile / warm-start and memory probes (flow, decay study)
``throughput``  the throughput section: ours against every peer variant per point
``scaling``     the scaling section: time against B, N, T, d and threads
``errors``      the error section: E(N) and the fitted order of every method
``decay_cost``  the decay-cost section: pair and tangent modes against the flow
``run``         run_sweep: every section in order, then the outputs
``output``      JSON and CSV writers (then plots and README)
``plots``       the PNG plots
``report``      the results README and issue 5's or issue 18's goals judged from a sweep
``flops``       the FLOP model and the machine's peak (nominal and measured)
``peers``       the same flow in NumPy, PyTorch and JAX, each in a worker process

Measurement rules
-----------------
* Throughput is in *trajectory-layers per second*: ``B·N / time`` of one
  :func:`tfkernels.integrate` call (the public API, validation and packing included).
* GFLOP/s comes from the FLOP model of :mod:`tfkernels.bench.flops`; the fraction of
  peak divides by the larger of the nominal peak (``flops.machine_peak``: cores ×
  reported clock × flop/cycle) and the measured FMA peak (``flops.measured_peak``,
  measured once per run on 1 thread and on the sweep's threads) for the threads used;
  both are in the JSON (``machine.peak``, ``machine.measured_peak``). The reported
  clock of a virtual machine is its base clock, and the cores boost above it under
  load, so the nominal peak alone could be exceeded.
* Every implementation is warmed up (its first call — Numba cache load or JAX jit
  compile — is reported as ``first_call_s``), then calibrated so that one timed sample
  lasts at least ``min_sample_s``; the samples of all implementations of one point are
  interleaved, ``repeats`` rounds in rotating order with a short pause between
  implementations, and each is summarised by its median. Ratios are only formed
  between medians of the same point of the same run.
* A peer's output is compared with ours before it is timed (max-norm difference
  relative to ``max|ours|``, at most :data:`~tfkernels.bench.throughput.PEER_RTOL`); a
  peer that disagrees is reported as ``mismatch`` and not timed.
* Benchmarks assert nothing about time; ``tests/test_harness.py`` only checks that the
  outputs are complete and correct.
"""
