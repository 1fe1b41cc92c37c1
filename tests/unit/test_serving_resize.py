"""Vertical scaling: solve_resize matches brute force over every flavour assignment, counts
only serving replicas, and says when the rate cannot be covered."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from deepedge.errors import SpecError
from deepedge.serving import DEFAULT_CATALOG, DEFAULT_FLAVOURS, LatencyModel
from deepedge.serving.resize import solve_resize

SLO = 100.0
FLAVOURS = list(DEFAULT_FLAVOURS)
MODELS = {  # capacity per core grows with the quota, as measured on the boards
    f.name: LatencyModel(f.name, mu_rps=f.cores * (500 + 1200 * f.cores), base_ms=1.0, k=0.5)
    for f in FLAVOURS
}
DEVICES = {"orin": 0.28, "xavier": 0.19, "rpi": 0.11}


def resize(rate: float, slots: dict, ready: dict | None = None, devices: dict = DEVICES):
    return solve_resize(
        rate, SLO, MODELS, FLAVOURS, DEFAULT_CATALOG, devices, slots=slots, ready=ready
    )


def brute(rate: float, slots: dict) -> float | None:
    """The cheapest covering assignment by enumerating every flavour of every replica."""
    cap = {f.name: MODELS[f.name].max_rate(1, SLO) for f in FLAVOURS}
    cost = {f.name: DEFAULT_CATALOG.cost_per_hour(f) for f in FLAVOURS}
    places = [d for d, n in slots.items() for _ in range(n)]
    best = None
    for pick in itertools.product(FLAVOURS, repeat=len(places)):
        used = dict.fromkeys(DEVICES, 0.0)
        for d, f in zip(places, pick, strict=True):
            used[d] += f.cores
        if any(used[d] > DEVICES[d] + 1e-9 for d in used):
            continue
        if sum(cap[f.name] for f in pick) >= rate:
            c = sum(cost[f.name] for f in pick)
            best = c if best is None else min(best, c)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_resize_is_the_cheapest_assignment_that_covers_the_rate(seed: int) -> None:
    rng = np.random.default_rng(seed)
    slots = {d: int(rng.integers(0, 3)) for d in DEVICES}
    slots["orin"] = max(slots["orin"], 1)
    top = resize(1e9, slots)
    assert top is not None
    for rate in rng.uniform(1.0, top.capacity_rps, size=5):
        config = resize(float(rate), slots)
        expected = brute(float(rate), slots)
        assert expected is not None
        assert config.cost_per_hour == pytest.approx(expected)
        assert config.capacity_rps >= rate
        assert {d: sum(per.values()) for d, per in config.placement.items()} == {
            d: n for d, n in slots.items() if n
        }
        for d, per in config.placement.items():
            assert sum(
                n * next(f.cores for f in FLAVOURS if f.name == k) for k, n in per.items()
            ) <= (DEVICES[d] + 1e-9)


def test_booting_replicas_take_the_cheapest_flavour_and_serve_nothing() -> None:
    cheapest = min(FLAVOURS, key=DEFAULT_CATALOG.cost_per_hour)
    config = resize(50.0, {"orin": 1, "xavier": 1}, ready={"orin": 1})
    assert config.placement["xavier"] == {cheapest.name: 1}
    alone = resize(50.0, {"orin": 1})
    assert config.capacity_rps == pytest.approx(alone.capacity_rps)  # xavier counts nothing
    # nothing ready anywhere: every replica waits at the cheapest flavour
    idle = resize(50.0, {"orin": 2}, ready={})
    assert idle.placement == {"orin": {cheapest.name: 2}} and idle.capacity_rps == 0


def test_a_rate_beyond_the_replicas_gets_their_most_capacity_and_says_so() -> None:
    config = resize(1e6, {"orin": 1, "rpi": 1})
    assert config.capacity_rps < 1e6
    assert config.placement["orin"] == {"l": 1}  # the largest that fits each device
    assert config.placement["rpi"] == {"s": 1}


def test_slots_that_do_not_fit_their_device_or_name_no_device() -> None:
    assert resize(10.0, {"rpi": 5}) is None  # 5 × 0.04 cores > 0.11
    with pytest.raises(SpecError, match="unknown device"):
        resize(10.0, {"jetson": 1})
