"""StragglerWatch: slow beyond its noise for `patience` steps, and never for noise alone."""

from __future__ import annotations

import numpy as np
import pytest

from deepedge.control.stragglers import StragglerWatch


def test_a_device_slow_for_two_steps_is_a_straggler_with_its_factor() -> None:
    watch = StragglerWatch({"a": 0.1, "b": 0.2}, spread={"a": [0.9, 1.0, 1.1], "b": [1.0]})
    watch.observe("a", 0.25)
    assert watch.slow() == {}  # one slow step is noise
    watch.observe("a", 0.35)
    watch.observe("b", 0.21)
    watch.observe("b", 0.19)
    assert watch.slow() == pytest.approx({"a": 3.0})


def test_a_fast_step_in_between_clears_it() -> None:
    watch = StragglerWatch({"a": 0.1})
    for t in (0.3, 0.1, 0.3):
        watch.observe("a", t)
    assert watch.slow() == {}
    watch.observe("a", 0.3)
    assert "a" in watch.slow()


def test_noise_alone_is_never_a_straggler() -> None:
    rng = np.random.default_rng(0)
    spread = rng.lognormal(0.0, 0.1, 200)
    spread /= np.median(spread)
    watch = StragglerWatch({"a": 0.1}, spread={"a": spread}, patience=2)
    flagged = 0
    for factor in rng.choice(spread, 2000):
        watch.observe("a", 0.1 * factor)
        flagged += bool(watch.slow())
    assert flagged == 0  # a small drift is not worth a rebalance (min_factor)


def test_a_noisy_device_needs_more_to_count_as_slow() -> None:
    watch = StragglerWatch({"calm": 0.1, "noisy": 0.1}, spread={"noisy": [1.0, 2.0]})
    assert watch.threshold("calm") == pytest.approx(1.5)
    assert watch.threshold("noisy") == pytest.approx(1.95)
    for _ in range(2):
        watch.observe("calm", 0.17)
        watch.observe("noisy", 0.17)
    assert set(watch.slow()) == {"calm"}


def test_unknown_devices_and_bad_patience() -> None:
    watch = StragglerWatch({"a": 0.1})
    watch.observe("zzz", 9.0)  # a device not in the plan is ignored
    assert watch.slow() == {}
    with pytest.raises(ValueError, match="patience"):
        StragglerWatch({"a": 0.1}, patience=0)


def test_off_plan_also_sees_a_device_back_to_speed() -> None:
    watch = StragglerWatch({"a": 0.3, "b": 0.1})
    for _ in range(2):
        watch.observe("a", 0.1)  # planned as slowed (0.3 s), running at 0.1 s again
        watch.observe("b", 0.1)
    assert watch.off_plan() == pytest.approx({"a": 1 / 3})
    assert watch.slow() == {}
