"""The counter-based generator's own log and cosine against libm, and its normals."""

import math

import numpy as np
import pytest
from numba import njit

from tfkernels.kernels import rng


@njit(cache=False)
def _draws(k, n):
    """``(u1, u2, log_unit(u1), cos_2pi(u2), libm log, libm cos, normal)`` of ``n`` draws."""
    out = np.empty((7, n))
    for i in range(n):
        u1 = rng.uniform(k, 2 * i)
        u2 = rng.uniform(k, 2 * i + 1)
        out[0, i] = u1
        out[1, i] = u2
        out[2, i] = rng.log_unit(u1)
        out[3, i] = rng.cos_2pi(u2)
        out[4, i] = math.log(u1)
        out[5, i] = math.cos(2.0 * math.pi * u2)
        out[6, i] = rng.normal(k, i)
    return out


@pytest.fixture(scope="module")
def draws():
    return _draws(rng.key(3, rng.STREAM_NOISE, 11), 200_000)


def test_log_unit_within_one_ulp_of_libm(draws):
    got, want = draws[2], draws[4]
    assert np.all(np.abs(got - want) <= np.spacing(np.abs(want)))
    # the ends of the uniforms' range and both sides of the √2 split
    for u in (
        2.0**-54,
        2.0**-53 * 1.5,
        0.5,
        1 - 2.0**-53,
        1 / math.sqrt(2),
        0.70710678118654746,
        0.70710678118654757,
        0.25 * math.sqrt(2) * (1 + 2.0**-52),
    ):
        assert abs(rng.log_unit(u) - math.log(u)) <= np.spacing(abs(math.log(u))), u
    assert rng.log_unit(1.0) == 0.0


def test_cos_2pi_within_two_ulp(draws):
    u2, got, libm = draws[1], draws[3], draws[5]
    # libm's cos(2π·u) rounds its argument first (an absolute error up to ~4.4e-16
    # near u = 1), so it is only a rough check. The oracle: ``4u = q + r`` exactly in
    # float64 (q the nearest integer), then the extended-precision cosine or sine of
    # ``πr/2`` by the quadrant, where the platform has an extended long double.
    assert np.all(np.abs(got - libm) <= 1e-15)
    if np.finfo(np.longdouble).nmant < 63:
        pytest.skip("no extended-precision long double on this platform")
    q = np.floor(4 * u2 + 0.5)
    r = (4 * u2 - q).astype(np.longdouble)
    half_pi = np.longdouble("1.57079632679489661923132169163975144209858")
    c, s = np.cos(half_pi * r), np.sin(half_pi * r)
    want = np.choose(q.astype(int) % 4, [c, -s, -c, s])
    err = np.abs(got.astype(np.longdouble) - want)
    # Horner in strict float64: measured 1.48 ulp at most on these draws
    assert np.all(err <= 2 * np.spacing(np.abs(want).astype(np.float64)))
    exact = {
        0.0: 1.0,
        0.125: math.sqrt(0.5),
        0.25: 0.0,
        0.5: -1.0,
        0.75: 0.0,
        1.0: 1.0,
        1 / 3: -0.5,
        1 / 6: 0.5,
    }
    for x, c in exact.items():
        assert abs(rng.cos_2pi(x) - c) <= 2 * np.spacing(max(abs(c), 0.5)), x


def test_normal_close_to_libm_box_muller(draws):
    u1, u2, z = draws[0], draws[1], draws[6]
    radius = np.sqrt(-2.0 * np.log(u1))
    libm = radius * np.cos(2.0 * np.pi * u2)
    # libm's cosine errs by up to ~4.4e-16 (its rounded argument), times the radius
    assert np.all(np.abs(z - libm) <= 1e-15 * np.maximum(1.0, radius))
    assert np.all(np.isfinite(z))


def test_fill_and_add_normal_agree_with_normal():
    k = np.uint64(rng.key(5, rng.STREAM_STATE, 2))  # a Python int from Numba
    out = np.empty((3, 7))
    rng.fill_normal(k, 40, 0.5, out)
    want = np.array([0.5 * rng.normal(k, 40 + i) for i in range(21)]).reshape(3, 7)
    assert np.array_equal(out, want)
    x = np.ones((3, 7), dtype=np.float32)
    x[0, 0] = np.float32(1e-3)
    want[0, 0] += 1e-3 - 1.0
    rng.add_normal(k, 40, 0.5, x)
    assert np.array_equal(x, (1.0 + want).astype(np.float32))
