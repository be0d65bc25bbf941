"""The measured FMA peak (:func:`tfkernels.flops.measured_peak`) and the peak reference.

Nothing here asserts a wall-clock time: the ranges are wide enough for a shared, busy
machine (the measurement counts the CPU time of its threads, not the wall time).
"""

import pytest

from tfkernels.bench import flops


@pytest.fixture(scope="module")
def one_thread():
    # Short runs: the test checks plausibility, not the figure itself.
    return {
        dt: flops.measured_peak(dt, threads=1, min_seconds=0.05, repeats=3)
        for dt in ("float32", "float64")
    }


def test_measured_peak_is_plausible_against_the_nominal(one_thread):
    nominal = flops.machine_peak()
    for dt, gflops in one_thread.items():
        per_core = nominal.peak_gflops(dt, threads=1)
        assert 0.2 * per_core < gflops < 3.0 * per_core, (dt, gflops, per_core)
        clock = flops.implied_clock_ghz(gflops, dt, 1, nominal)
        assert 0.2 * nominal.clock_ghz < clock < 3.0 * nominal.clock_ghz


def test_float64_peak_is_half_of_float32(one_thread):
    ratio = one_thread["float64"] / one_thread["float32"]
    assert 0.35 < ratio < 0.65, ratio


def test_measured_peak_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        flops.measured_peak("int32")
    with pytest.raises(ValueError, match="threads"):
        flops.measured_peak("float32", threads=0)


def test_peak_reference_uses_the_larger_peak():
    nominal = flops.machine_peak(cores=2, clock_ghz=2.0, flop_per_cycle32=64)  # 128 / core
    ref = flops.PeakReference(nominal, {"float32": {1: 200.0, 2: 300.0}, "float64": {1: 50.0}})
    assert ref.peak_gflops("float32", 1) == 200.0  # measured above nominal 128
    assert ref.peak_gflops("float32", 2) == 300.0  # measured above nominal 256
    assert ref.peak_gflops("float64", 1) == 64.0  # nominal above measured 50
    assert ref.peak_gflops("float64", 2) == 128.0  # extrapolated 100 < nominal
    assert ref.implied_clock_ghz("float32", 1) == pytest.approx(200.0 / 64)
    d = ref.as_dict()
    assert d["gflops"]["float32"] == {"1": 200.0, "2": 300.0}
    assert d["implied_clock_ghz"]["float32"]["2"] == pytest.approx(300.0 / 128)
    assert "larger of nominal and measured" in d["explanation"]
    assert flops.PeakReference(nominal).peak_gflops("float32") == nominal.gflops["float32"]
