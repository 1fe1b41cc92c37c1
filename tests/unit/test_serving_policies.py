"""The autoscaling agents' decisions and the replayed trace, without processes."""

from __future__ import annotations

import numpy as np
import pytest

from deepedge.errors import SpecError
from deepedge.serving import (
    DEFAULT_CATALOG,
    Flavour,
    LatencyModel,
    RateTrace,
    SeasonalNaive,
)
from deepedge.serving.policies import (
    Barista,
    Observation,
    Reactive,
    ServingProblem,
    StaticPeak,
    spread,
)
from deepedge.serving.run import ReplayTrace
from deepedge.serving.service import make_policy

FLAVOURS = {"s": Flavour("s", 0.1, 512), "l": Flavour("l", 0.3, 1024)}
MODELS = {
    "s": LatencyModel("s", mu_rps=60.0, base_ms=5.0, k=1.0),
    "l": LatencyModel("l", mu_rps=180.0, base_ms=3.0, k=1.0),
}


def problem(devices: dict[str, float] | None = None) -> ServingProblem:
    return ServingProblem(
        MODELS, FLAVOURS, DEFAULT_CATALOG, devices or {"a": 0.4, "b": 0.4, "c": 0.2}, 100.0
    )


def obs(**kw) -> Observation:
    base = {
        "t_s": 10.0,
        "hour": 200.0,
        "rate_rps": 10.0,
        "utilisation": None,
        "placement": {},
        "ready": 0,
        "starting": 0,
        "history": np.ones(200),
        "lead_s": 2.0,
        "hour_s": 1.0,
    }
    return Observation(**(base | kw))


def count(placement: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for per in placement.values():
        for f, n in per.items():
            out[f] = out.get(f, 0) + n
    return out


def test_a_flavour_without_a_latency_model_is_refused() -> None:
    with pytest.raises(SpecError, match="no latency model for flavour"):
        ServingProblem({"s": MODELS["s"]}, FLAVOURS, DEFAULT_CATALOG, {"a": 1.0}, 100.0)


def test_problem_solves_within_the_devices_and_falls_back_to_the_largest() -> None:
    p = problem()
    small = p.solve(5.0)
    assert p.capacity_rps(small.placement) >= 5.0
    huge = p.solve(1e6)  # beyond the cluster: the most it can do, not None
    assert huge == p.largest()
    for device, per in huge.placement.items():
        assert sum(FLAVOURS[f].cores * n for f, n in per.items()) <= p.devices[device] + 1e-9
    assert p.capacity_rps(huge.placement) > p.capacity_rps(small.placement)


def test_spread_puts_each_replica_on_the_device_with_most_room() -> None:
    placed = spread({"a": 0.35, "b": 0.2}, FLAVOURS["s"], 6)
    assert placed == {"a": {"s": 3}, "b": {"s": 2}}  # the sixth does not fit anywhere


def test_static_peak_decides_once_for_the_peak() -> None:
    policy = StaticPeak(problem(), peak_rps=250.0)
    first = policy.decide(obs(rate_rps=1.0))
    later = policy.decide(obs(rate_rps=300.0, placement=first.placement))
    assert later is first
    assert problem().capacity_rps(first.placement) >= 250.0


def test_reactive_scales_up_on_utilisation_and_down_only_after_the_cooldown() -> None:
    policy = Reactive(problem(), "s", target=0.6, cooldown_s=3.0)
    two = {"a": {"s": 1}, "b": {"s": 1}}
    up = policy.decide(obs(t_s=1.0, utilisation=0.9, placement=two, ready=2))
    assert sum(count(up.placement).values()) == 3  # ceil(2 × 0.9 / 0.6)
    three = up.placement
    steady = policy.decide(obs(t_s=2.0, utilisation=0.62, placement=three, ready=3))
    assert sum(count(steady.placement).values()) == 3  # within the 10 % tolerance
    low = policy.decide(obs(t_s=3.0, utilisation=0.1, placement=three, ready=3))
    assert sum(count(low.placement).values()) == 3  # the window still holds 3
    later = policy.decide(obs(t_s=6.5, utilisation=0.1, placement=three, ready=3))
    assert sum(count(later.placement).values()) == 1
    booting = policy.decide(obs(t_s=7.0, utilisation=1.0, placement=three, ready=2, starting=1))
    assert sum(count(booting.placement).values()) == 3  # waits for the booting replica


def slots(placement: dict) -> dict[str, int]:
    return {d: sum(per.values()) for d, per in placement.items() if sum(per.values())}


def test_barista_starts_replicas_for_the_lead_time_and_sizes_them_for_now() -> None:
    day = np.array([5.0] * 8 + [100.0] * 4 + [20.0] * 12)  # a morning peak at 8-11
    history = np.tile(day, 30)  # 30 days, the next hour is 0 (midnight)
    p = problem()
    policy = Barista(p, lambda: SeasonalNaive(season=24, calib_hours=48))
    at_night = obs(hour=len(history) + 2.5, history=history, lead_s=2.0, rate_rps=5.0)
    before_rise = obs(hour=len(history) + 6.5, history=history, lead_s=2.0, rate_rps=5.0)
    # the lead window of the first ends at 4.5 h (night); of the second at 8.5 h (the peak)
    assert policy.forecast_upper(at_night) == pytest.approx(5.0)
    assert policy.forecast_upper(before_rise) == pytest.approx(100.0)
    assert policy.forecast_upper(before_rise, horizon_s=1.0) == pytest.approx(5.0)
    decision = policy.decide(before_rise)
    assert decision.forecast_rps == pytest.approx(100.0)
    assert decision.planned_rps == pytest.approx(5.5)  # the next hour is night: 5 × 1.1
    # enough replicas run for the peak once resized, but they cost what the night needs
    peak = p.resize(100.0, slots(decision.placement))
    assert peak is not None and peak.capacity_rps >= 100.0
    night = p.solve(5.5)
    assert p.cost_per_hour(decision.placement) < peak.cost_per_hour
    assert p.cost_per_hour(decision.placement) <= night.cost_per_hour * len(peak.placement)
    assert not decision.make_before_break
    # what arrives now counts when the forecast ran low
    surprised = policy.decide(obs(hour=len(history) + 2.5, history=history, rate_rps=150.0))
    assert surprised.planned_rps == pytest.approx(165.0)
    assert p.capacity_rps(surprised.placement) >= 165.0


def test_barista_sizes_only_the_serving_replicas_for_now() -> None:
    p = problem({"a": 0.4, "b": 0.4})
    history = np.full(24 * 14, 150.0)  # needs l + s
    policy = Barista(p, lambda: SeasonalNaive(season=24, calib_hours=48))
    running = {"a": {"s": 1}, "b": {"s": 1}}
    serving = {"a": {"s": 1}}  # b's replica still boots
    decision = policy.decide(
        obs(hour=len(history), history=history, placement=running, ready_placement=serving)
    )
    assert slots(decision.placement) == {"a": 1, "b": 1}  # nothing restarts
    assert decision.placement["b"] == {"s": 1}  # the booting one: the cheapest flavour
    assert decision.placement["a"] == {"l": 1}  # the serving one: as much as it can give


def test_barista_keeps_running_replicas_that_resized_meet_the_plan() -> None:
    p = problem()
    history = np.full(24 * 14, 50.0)
    policy = Barista(p, lambda: SeasonalNaive(season=24, calib_hours=48))
    now = obs(hour=len(history), history=history, rate_rps=40.0)
    best = p.solve(policy.forecast_upper(now) + 1e-9)
    assert best.placement == {"a": {"s": 2}}
    moved = {"c": {"s": 2}}  # the same replicas on another device
    kept = policy.decide(obs(hour=len(history), history=history, placement=moved))
    assert kept.placement == moved  # as good, elsewhere: nothing moves
    assert "(kept)" in kept.note
    dear = {"a": {"l": 1}, "b": {"l": 1}}  # twice what the plan needs: resized in place
    cheaper = policy.decide(obs(hour=len(history), history=history, placement=dear))
    assert slots(cheaper.placement) == {"a": 1, "b": 1}
    assert p.cost_per_hour(cheaper.placement) < p.cost_per_hour(dear)
    assert p.capacity_rps(cheaper.placement) >= cheaper.planned_rps


def test_barista_moves_no_replica_that_the_new_configuration_keeps() -> None:
    p = problem()
    history = np.full(24 * 14, 150.0)
    policy = Barista(p, lambda: SeasonalNaive(season=24, calib_hours=48), keep_within=0.0)
    running = {"c": {"s": 1}}  # too small for 150 rps: must grow
    grown = policy.decide(obs(hour=len(history), history=history, placement=running))
    assert slots(grown.placement)["c"] == 1  # the running replica stays where it is
    assert grown.placement["c"] == {"s": 1}  # the most c can give now (l does not fit)
    full = p.resize(150.0, slots(grown.placement))  # what they serve once all are up
    assert full is not None and full.capacity_rps >= 150.0


def test_make_policy_builds_each_policy_and_refuses_others() -> None:
    trace = ReplayTrace(np.ones(400), np.array([1.0, 3.0, 2.0]), 1.0, 400)
    assert make_policy("static-peak", problem(), trace).peak_rps == 3.0
    assert make_policy("reactive", problem(), trace).flavour in FLAVOURS
    assert make_policy("barista", problem(), trace).name == "barista"
    with pytest.raises(SpecError, match="unknown serving policy"):
        make_policy("hpa", problem(), trace)


def test_replay_trace_scales_to_the_busiest_hour_and_schedules_each_hour() -> None:
    rates = np.arange(1.0, 11.0)  # peak 10 at the last hour
    trace = RateTrace(rates, 3600.0, "t", "test")
    replay = ReplayTrace.from_trace(trace, hours=3, peak_rps=100.0, hour_s=2.0, start_hour=2)
    assert replay.window.tolist() == [30.0, 40.0, 50.0]
    assert replay.history.tolist() == [10.0, 20.0]
    assert replay.schedule() == ((0.0, 30.0), (2.0, 40.0), (4.0, 50.0))
    assert replay.duration_s == 6.0
    with pytest.raises(SpecError, match="cannot replay"):
        ReplayTrace.from_trace(trace, hours=5, peak_rps=10.0, hour_s=1.0, start_hour=8)
    with pytest.raises(SpecError, match="needs hours"):
        ReplayTrace.from_trace(
            RateTrace(rates, 60.0, "m", "test"), hours=2, peak_rps=1.0, hour_s=1.0
        )
