"""The SLO guard's decisions from a synthetic request stream (no cluster)."""

from __future__ import annotations

import math

import pytest

from deepedge.apps.stats import RequestRecord
from deepedge.control.slo_guard import GuardSettings, SloGuard
from deepedge.plan.problem import DeviceOption, IntensityLevel, PlanningProblem

DEADLINE = 100.0


def requests(t0: float, t1: float, latency_ms: float, rate: float = 50.0, app: str = "a"):
    """Requests completing from t0 to t1 at ``rate``, each ``latency_ms`` late."""
    n = int((t1 - t0) * rate)
    out = []
    for i in range(n):
        done = t0 + i / rate
        out.append(RequestRecord(app, done - latency_ms / 1e3, done, done, latency_ms, True, None))
    return out


def guard(**settings) -> SloGuard:
    return SloGuard(
        {"a": DEADLINE, "b": DEADLINE}, {"a": "dev", "b": "other"}, GuardSettings(**settings)
    )


def test_quiet_apps_leave_the_plan_alone():
    g = guard()
    g.observe(requests(0, 10, 40))
    assert g.check(10.0, {"dev": 1.0}) == []
    assert g.caps == {}


def test_an_app_near_its_deadline_cuts_its_device_then_takes_it_out():
    g = guard(hold_s=1.0)
    g.observe(requests(0, 2, 85))  # 85 % of the deadline: over the 80 % trip
    (cut,) = g.check(2.0, {"dev": 1.0, "other": 1.0})
    assert (cut.device, cut.kind, cut.before, cut.after) == ("dev", "cut", 1.0, 0.5)
    assert g.caps == {"dev": 0.5}
    g.observe(requests(2, 2.5, 85))
    assert g.check(2.5, {"dev": 0.5}) == []  # holding: the cut has not had time to show
    g.observe(requests(2.5, 3.5, 85))
    (cut,) = g.check(3.5, {"dev": 0.5})
    assert cut.after == 0.25
    g.observe(requests(3.5, 5, 95))
    (off,) = g.check(5.0, {"dev": 0.25})
    assert (off.kind, off.after) == ("off", 0.0)  # 0.125 is below min_intensity
    assert g.caps == {"dev": 0.0}
    g.observe(requests(5, 7, 95))
    assert g.check(7.0, {"other": 1.0}) == []  # not training: nothing more to cut


def test_failed_requests_count_as_missed():
    g = guard()
    recs = requests(0, 1, 10)
    recs[-5:] = [r._replace(ok=False, latency_ms=math.nan, error="TimeoutError") for r in recs[-5:]]
    g.observe(recs)
    assert g.p95_ms(1.0)["a"] == math.inf
    assert g.check(1.0, {"dev": 1.0})[0].kind == "cut"


def test_too_few_requests_say_nothing():
    g = guard(min_requests=4)
    g.observe(requests(0, 1, 500, rate=3))
    assert g.p95_ms(1.0) == {}
    assert g.check(1.0, {"dev": 1.0}) == []


def test_caps_lift_one_level_after_a_quiet_spell_and_back_off_when_they_flap():
    g = guard(clear_s=2.0, hold_s=0.5)
    g.observe(requests(0, 1, 90))
    g.check(1.0, {"dev": 1.0})
    assert g.caps == {"dev": 0.5}
    g.observe(requests(1, 2, 60))  # between clear (50 %) and trip: no change either way
    assert g.check(2.0, {"dev": 0.5}) == []
    g.observe(requests(2, 5, 20))
    assert g.check(3.0, {"dev": 0.5}) == []  # quiet since 3.0 ...
    (lift,) = g.check(5.0, {"dev": 0.5})  # ... for clear_s
    assert (lift.kind, lift.before, lift.after) == ("restore", 0.5, 1.0)
    assert g.caps == {}
    g.observe(requests(5, 6, 90))  # trips again right after the lift
    assert g.check(6.0, {"dev": 1.0})[0].kind == "cut"
    g.observe(requests(6, 12, 20))
    assert g.check(7.0, {"dev": 0.5}) == []  # quiet since 7.0 ...
    assert g.check(10.9, {"dev": 0.5}) == []  # ... but the back-off doubled clear_s to 4 s
    assert g.check(11.0, {"dev": 0.5})[0].kind == "restore"


def test_a_device_out_of_the_plan_comes_back_at_the_least_intensity():
    g = guard(clear_s=1.0, hold_s=0.1)
    g.observe(requests(0, 1, 99))
    g.check(1.0, {"dev": 0.3})
    assert g.caps == {"dev": 0.0}
    g.observe(requests(1, 3, 10))
    assert g.check(2.0, {}) == []  # quiet since 2.0
    (back,) = g.check(3.0, {})
    assert (back.before, back.after) == (0.0, 0.2)


def test_settings_are_checked():
    with pytest.raises(ValueError):
        GuardSettings(clear=0.9, trip=0.8)
    with pytest.raises(ValueError):
        GuardSettings(cut=1.0)


def test_capped_problem_keeps_only_levels_at_or_below_the_cap():
    levels = tuple(IntensityLevel(c, 1 / c, 64) for c in (0.25, 0.5, 0.75, 1.0))
    problem = PlanningProblem(
        (DeviceOption("x", 0.01, 0.001, levels), DeviceOption("y", 0.01, 0.001, levels)), 64
    )
    capped = problem.with_caps({"x": 0.5, "y": 0.1}, why="SLO guard")
    x, y = capped.devices
    assert {lv.intensity for lv in x.levels} == {0.25, 0.5}
    assert y.levels == () and not y.usable and "SLO guard" in (y.excluded_reason or "")
    assert [d.name for d in capped.usable()] == ["x"]


def test_a_cap_waits_for_the_load_that_tripped_it_to_pass():
    g = guard(clear_s=1.0, hold_s=0.1)
    g.observe(requests(0, 5, 20, rate=20))
    g.observe(requests(5, 6, 99, rate=60))  # a 3x spike: the device is cut ...
    g.check(6.0, {"dev": 1.0})
    g.observe(requests(6, 7, 99, rate=60))
    g.check(7.0, {"dev": 0.5})
    g.observe(requests(7, 8, 99, rate=60))
    g.check(8.0, {"dev": 0.25})
    assert g.caps == {"dev": 0.0}
    # ... out of the plan its app is quiet again, but still under three times the load
    for t in range(8, 14):
        g.observe(requests(t, t + 1, 10, rate=60))
        assert g.check(t + 1.0, {}) == [], t
    # the spike over: the rate counted over 5 s falls back, then the cap lifts a level
    # a second
    lifted = []
    for t in range(14, 24):
        g.observe(requests(t, t + 1, 10, rate=20))
        lifted += g.check(t + 1.0, {"dev": g.caps.get("dev", 1.0)} if lifted else {})
    assert [a.after for a in lifted] == [0.2, 0.4, 0.8, 1.0]
