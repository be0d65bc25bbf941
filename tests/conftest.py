"""Shared fixtures. Every random input is seeded; nothing uses global ``np.random``."""

import numpy as np
import pytest

import tfkernels as tfk

DTYPES = [np.float64, np.float32]


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def small_params(dtype):
    return tfk.TransformerParams.random(
        d=6, n_heads=2, d_ff=10, damping=0.5, linear=True, seed=3, dtype=dtype
    )
