"""Counter-based random numbers: every draw is a pure function of its key and counter.

A key is the SplitMix64 hash of ``(seed, stream, trajectory)``; the ``i``-th standard
normal of a key is a Box–Muller transform of the uniforms at counters ``2i`` and
``2i + 1``. Nothing is sequential, so trajectory ``k`` gets the same numbers whatever
batch, chunk, thread or worker draws them.

Notes
-----
SplitMix64 (Steele, Lea & Flood, OOPSLA 2014) passes BigCrush as a hash of a counter;
its finalizer is applied twice per draw (key, then key ⊕ counter). Box–Muller uses only
the cosine branch: one normal per two uniforms, in float64, cast to the state dtype
by the caller.
"""

import math

import numpy as np
from numba import njit, uint64

from . import config

#: Streams of independent numbers for one trajectory.
STREAM_STATE, STREAM_DIRECTION, STREAM_NOISE = 0, 1, 2

_GOLDEN = uint64(0x9E3779B97F4A7C15)
_M1 = uint64(0xBF58476D1CE4E5B9)
_M2 = uint64(0x94D049BB133111EB)
_TWO_PI = 2.0 * math.pi


@njit(cache=config.CACHE, fastmath=config.RNG_FASTMATH)
def mix64(z):
    """SplitMix64 finalizer: a bijective avalanche hash of a uint64."""
    z = (z ^ (z >> uint64(30))) * _M1
    z = (z ^ (z >> uint64(27))) * _M2
    return z ^ (z >> uint64(31))


@njit(cache=config.CACHE, fastmath=config.RNG_FASTMATH)
def key(seed, stream, trajectory):
    """Return the uint64 key of ``(seed, stream, trajectory)``."""
    k = mix64(uint64(seed) + _GOLDEN)
    k = mix64(k ^ (uint64(stream) * _GOLDEN))
    return mix64(k ^ (uint64(trajectory) + _GOLDEN))


@njit(cache=config.CACHE, fastmath=config.RNG_FASTMATH)
def uniform(k, counter):
    """Uniform float64 in the open interval (0, 1) for ``(key, counter)``.

    ``k`` is cast to uint64 first: a key that crossed into Python comes back as an
    int (typed int64 by Numba), and int64 ^ uint64 would not be a bitwise xor.
    """
    bits = mix64(uint64(k) ^ mix64(uint64(counter) + _GOLDEN))
    return ((bits >> uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@njit(cache=config.CACHE, fastmath=config.RNG_FASTMATH)
def normal(k, i):
    """The ``i``-th standard normal (float64) of key ``k``."""
    u1 = uniform(k, 2 * i)
    u2 = uniform(k, 2 * i + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)


@njit(cache=config.CACHE, fastmath=config.RNG_FASTMATH)
def fill_normal(k, offset, scale, out):
    """Fill the flat array ``out`` with ``scale·normal(k, offset + i)``."""
    for i in range(out.size):
        out.flat[i] = scale * normal(k, offset + i)


@njit(cache=config.CACHE, fastmath=config.RNG_FASTMATH, nogil=True)
def _normal_batch(seed, stream, start, scale, out):
    """``out[b]`` gets ``scale``·the normals of trajectory ``start + b`` (serial, no GIL;
    ``api.run_threads`` splits a batch over threads)."""
    for b in range(out.shape[0]):
        fill_normal(key(seed, stream, start + b), 0, scale, out[b])
