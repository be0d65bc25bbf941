"""Initial states from the user (``x0=``) in the perturbation-decay study: ``"normal"``
keeps the in-kernel draws, an array of those same draws gives the same bits, ``"sphere"``
is invariant to the chunking, and a bad ``x0`` is refused naming it."""

import numpy as np
import pytest

import tfkernels as tfk
from tfkernels.studies import decay, initial

B, T, D = 11, 3, 4  # T·d = 12: the lane layout; B not a multiple of the chunks


def small(dtype=np.float64):
    return tfk.TransformerParams.random(d=D, n_heads=2, d_ff=8, damping=2.0, seed=4, dtype=dtype)


@pytest.mark.parametrize("mode", ["pair", "tangent"])
def test_array_of_the_normal_draws_gives_the_same_bits(mode, dtype):
    p = small(dtype)
    x0 = tfk.random_states(B, T, D, seed=5, dtype=dtype)
    drawn = decay.log_ratios(p, B, T, 6, mode=mode, seed=5)
    given = decay.log_ratios(p, B, T, 6, mode=mode, seed=5, x0=x0)
    np.testing.assert_array_equal(given[0], drawn[0])
    np.testing.assert_array_equal(given[1], drawn[1])
    # and x0 is really used: other states give other ratios
    other = decay.log_ratios(p, B, T, 6, mode=mode, seed=5, x0=2.0 * x0)
    assert not np.array_equal(other[0], drawn[0])


def test_normal_is_the_default_bit_for_bit():
    p = small()
    a = tfk.perturbation_decay(p, B, T, 6, seed=2, chunk_size=4, lambda_samples=2)
    b = tfk.perturbation_decay(p, B, T, 6, seed=2, chunk_size=4, lambda_samples=2, x0="normal")
    for key in a.stats:
        np.testing.assert_array_equal(a.stats[key], b.stats[key])
    assert a.config["x0"] == "normal"


def test_sphere_states_are_unit_tokens_and_chunk_invariant():
    X = initial.chunk_states("sphere", None, 3, 5, T, D, np.dtype(np.float64), 9)
    np.testing.assert_allclose(np.linalg.norm(X, axis=-1), 1.0, rtol=1e-15)
    whole = initial.chunk_states("sphere", None, 0, 8, T, D, np.dtype(np.float64), 9)
    np.testing.assert_array_equal(whole[3:8], X)
    direct = tfk.random_states(8, T, D, seed=9)
    direct = direct / np.linalg.norm(direct, axis=-1, keepdims=True)
    np.testing.assert_allclose(whole, direct, rtol=1e-15, atol=0)


@pytest.mark.parametrize("mode", ["pair", "tangent"])
def test_sphere_and_array_decay_same_bits_whatever_the_chunks(mode):
    """Per trajectory: the same bits in any chunk; the study's statistics: the same bits
    whatever the threads (the merged statistics depend on the chunk size only, as for
    ``"normal"``: Chan's merge is not associative in its last bits)."""
    p = small()
    x0 = tfk.random_states(B, T, D, seed=1, scale=0.5)
    for start in ("sphere", x0):
        k = decay._check_args(
            p,
            B,
            T,
            5,
            "euler",
            1.0,
            None,
            1.0,
            0.0,
            None,
            mode,
            3,
            None,
            None,
            False,
            1,
            None,
            None,
            x0=start,
        )
        cfg = decay._chunk_config(p, k, 0.0)
        packed = tfk.kernels.pack_params(p)
        whole = decay.chunk_log_ratios(packed, 0, B, cfg, k["x0"])
        for cs in (3, 4):
            parts = [
                decay.chunk_log_ratios(packed, s, min(cs, B - s), cfg, k["x0"])[0]
                for s in range(0, B, cs)
            ]
            np.testing.assert_array_equal(np.concatenate(parts), whole[0])
        runs = [
            tfk.perturbation_decay(
                p,
                B,
                T,
                5,
                mode=mode,
                seed=3,
                chunk_size=4,
                n_threads=nt,
                lambda_samples=2,
                x0=start,
            )
            for nt in (1, 2)
        ]
        for key in runs[0].stats:
            np.testing.assert_array_equal(runs[1].stats[key], runs[0].stats[key])
    # an array of the sphere states is the sphere study
    sph = initial.chunk_states("sphere", None, 0, B, T, D, np.dtype(np.float64), 3)
    a = decay.log_ratios(p, B, T, 5, mode=mode, seed=3, x0="sphere")
    b = decay.log_ratios(p, B, T, 5, mode=mode, seed=3, x0=sph)
    np.testing.assert_array_equal(a[0], b[0])


def test_log_ratios_with_an_array_and_a_start():
    """Row i of ``x0`` is trajectory ``start + i`` (the noise and U of that index)."""
    p = small()
    x0 = tfk.random_states(B, T, D, seed=5)
    whole = decay.log_ratios(p, B, T, 4, seed=5, x0=x0, noise=0.01)
    tail = decay.log_ratios(p, B - 4, T, 4, seed=5, x0=x0[4:], start=4, noise=0.01)
    np.testing.assert_array_equal(tail[0], whole[0][4:])


@pytest.mark.parametrize(
    "x0, err, match",
    [
        ("uniform", ValueError, r"`x0` must be one of \['normal', 'sphere'\]"),
        (None, TypeError, "`x0`"),
        (np.zeros((B, T, D), dtype=np.float32), TypeError, "`x0` has dtype float32"),
        (np.zeros((B + 1, T, D)), ValueError, r"`x0` must have shape"),
        (np.zeros((B, T, D + 1)), ValueError, "`x0` has width"),
        (np.zeros((B, T)), ValueError, "`x0` must have 3 dimensions"),
        (np.full((B, T, D), np.nan), ValueError, "`x0` contains NaN"),
        (np.zeros((B, T, D), dtype=np.int64), TypeError, "`x0` must be a float32 or float64"),
    ],
)
def test_bad_x0_is_refused_naming_it(x0, err, match):
    with pytest.raises(err, match=match):
        tfk.perturbation_decay(small(), B, T, 4, x0=x0)
