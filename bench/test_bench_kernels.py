"""pytest-benchmark micro-benchmarks of each tfkernels kernel.

Run with ``pytest bench/ --benchmark-only`` (add ``--benchmark-columns=median,ops``
for a compact table, ``--benchmark-json=FILE`` to keep the numbers). These are
benchmarks, not tests: they assert nothing about time. Every benchmark is warmed up
once first, so compile or cache-load time is never part of a measurement; the
throughput sweep with peers and fractions of peak is ``tfkernels bench``.
"""

import numpy as np
import pytest

import tfkernels as tfk

#: (name, T, d, heads) — issue 5's tiny and small configurations.
CONFIGS = [("tiny", 8, 16, 2), ("small", 16, 32, 4)]
DTYPES = ["float32", "float64"]
B, N = 64, 16


def _setup(config, dtype, **kw):
    _, T, d, H = config
    p = tfk.TransformerParams.random(d, H, damping=1.0, seed=1, dtype=np.dtype(dtype), **kw)
    x0 = tfk.random_states(B, T, d, seed=2, dtype=np.dtype(dtype))
    return p, x0


def _run(benchmark, fn, traj_layers):
    fn()  # warm-up: compile or load from the on-disk cache
    benchmark.extra_info["traj_layers"] = traj_layers
    benchmark(fn)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c[0])
@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "averaged"])
def test_integrate(benchmark, method, config, dtype):
    """The fused flow: all N layers of B trajectories in one call."""
    p, x0 = _setup(config, dtype)
    _run(benchmark, lambda: tfk.integrate(p, x0, N, method=method), B * N)


@pytest.mark.parametrize("dtype", DTYPES)
def test_integrate_causal_relu(benchmark, dtype):
    """The causal mask and another activation take the same kernel."""
    p, x0 = _setup(CONFIGS[0], dtype, causal=True, activation="relu")
    _run(benchmark, lambda: tfk.integrate(p, x0, N), B * N)


@pytest.mark.parametrize("dtype", DTYPES)
def test_integrate_noise_and_snapshots(benchmark, dtype):
    """Averaged update with Gaussian noise, every layer stored."""
    p, x0 = _setup(CONFIGS[0], dtype)
    _run(
        benchmark,
        lambda: tfk.integrate(
            p, x0, N, method="averaged", alpha="accelerated", noise=0.01, save_every=1
        ),
        B * N,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_integrate_linear(benchmark, dtype):
    """The linear system X·A − γX alone (attention and FFN off)."""
    A = np.random.default_rng(0).standard_normal((16, 16)).astype(dtype) / 4
    p = tfk.TransformerParams.linear(A, damping=0.5)
    x0 = tfk.random_states(B, 8, 16, seed=2, dtype=np.dtype(dtype))
    _run(benchmark, lambda: tfk.integrate(p, x0, N), B * N)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c[0])
def test_vector_field(benchmark, config, dtype):
    """One evaluation of f on B states."""
    p, x0 = _setup(config, dtype)
    _run(benchmark, lambda: tfk.vector_field(p, x0), B)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_states(benchmark, dtype):
    """The counter-based normal generator, 4096 states of 8×16."""
    _run(benchmark, lambda: tfk.random_states(4096, 8, 16, seed=3, dtype=np.dtype(dtype)), 0)


@pytest.mark.parametrize("mode", ["pair", "tangent"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_perturbation_decay(benchmark, mode, dtype):
    """The decay study's chunk loop (λ̂ estimated from a single sample)."""
    study = getattr(tfk, "perturbation_decay", None)
    if study is None:
        pytest.skip("tfk.perturbation_decay is not available")
    p, _ = _setup(CONFIGS[0], dtype)
    _run(benchmark, lambda: study(p, B, 8, N, mode=mode, lambda_samples=1), B * N)
