"""The load generator's rate schedule: an exact, seeded non-homogeneous Poisson process."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepedge.apps.loadgen import LoadGenerator, LoadTarget, schedule_arrivals


def arrivals(schedule, seed: int = 0, end_s: float = math.inf) -> np.ndarray:
    return np.array(list(schedule_arrivals(schedule, np.random.default_rng(seed), end_s=end_s)))


def test_counts_per_step_follow_the_rates() -> None:
    schedule = ((0.0, 50.0), (10.0, 0.0), (20.0, 200.0), (25.0, 5.0))
    t = arrivals(schedule, seed=7, end_s=40.0)
    assert np.all(np.diff(t) > 0) and t[0] >= 0 and t[-1] < 40.0
    for lo, hi, rate in ((0, 10, 50), (20, 25, 200), (25, 40, 5)):
        n, mean = np.count_nonzero((t >= lo) & (t < hi)), rate * (hi - lo)
        assert abs(n - mean) < 4 * math.sqrt(mean), (lo, hi, n, mean)
    assert np.count_nonzero((t >= 10) & (t < 20)) == 0  # a zero-rate step sends nothing


def test_restarting_at_every_boundary_stays_poisson() -> None:
    """1000 one-second steps of the same rate are one homogeneous process: the draw
    discarded at each boundary must neither lose nor add arrivals."""
    t = arrivals(tuple((float(i), 10.0) for i in range(1000)), seed=3, end_s=1000.0)
    assert abs(len(t) - 10_000) < 4 * math.sqrt(10_000)
    gaps = np.diff(t)
    assert abs(gaps.mean() - 0.1) < 4 * 0.1 / math.sqrt(len(gaps))
    assert abs(gaps.std() - 0.1) < 0.01  # exponential: sd = mean


def test_seeded_and_deterministic() -> None:
    schedule = ((0.0, 30.0), (1.0, 80.0))
    a, b = arrivals(schedule, seed=5, end_s=3.0), arrivals(schedule, seed=5, end_s=3.0)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, arrivals(schedule, seed=6, end_s=3.0))


def test_a_final_zero_rate_ends_the_schedule() -> None:
    t = arrivals(((0.0, 100.0), (2.0, 0.0)), seed=1)  # no end_s: finite all the same
    assert len(t) > 0 and t[-1] < 2.0
    assert len(arrivals(((0.0, 0.0),))) == 0
    assert len(arrivals(((0.0, 100.0), (5.0, 100.0)), end_s=1.0)) < 200  # end_s cuts it


@pytest.mark.parametrize(
    "schedule",
    [(), ((1.0, 5.0),), ((0.0, 5.0), (0.0, 6.0)), ((0.0, -1.0),), ((0.0, math.inf),), (1, 2)],
)
def test_malformed_schedules_are_refused(schedule) -> None:
    with pytest.raises(ValueError, match="schedule"):
        list(schedule_arrivals(schedule, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="schedule"):
        LoadTarget("a", "127.0.0.1", 80, 1.0, schedule=schedule)


def test_targets_keep_their_schedule_through_json() -> None:
    target = LoadTarget("a", "127.0.0.1", 80, 9.0, schedule=[[0, 9], [1, 0]], protocol="http")
    assert target.schedule == ((0.0, 9.0), (1.0, 0.0))
    assert target.path == "/predict" and target.payload_bytes == 3 * 32 * 32
    with pytest.raises(ValueError, match="protocol"):
        LoadTarget("a", "127.0.0.1", 80, 1.0, protocol="grpc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path"):
        LoadTarget("a", "127.0.0.1", 80, 1.0, protocol="http", path="predict")


def test_set_rate_refuses_a_scheduled_target() -> None:
    gen = LoadGenerator([LoadTarget("a", "127.0.0.1", 80, 1.0, schedule=((0.0, 1.0),))])
    with pytest.raises(ValueError, match="schedule"):
        gen.set_rate("a", 5.0)
    assert not gen.running()
