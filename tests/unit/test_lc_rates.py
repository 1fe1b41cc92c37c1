"""LC apps whose rate is a trace: the spec, the replay schedule, the forecast peak the
planner plans at, and the run controller planning at it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from deepedge.errors import DataError, PlanInfeasible, SpecError
from deepedge.serving import RateTrace
from deepedge.serving.lc_rates import (
    MIN_RATE_SHARE,
    PlannedRate,
    check_forecastable,
    planning_rates,
    replay_schedule,
    spec_at_planning_rates,
    start_rate,
    trace_peaks,
)
from deepedge.spec import ClusterSpec, RateTraceSpec, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "deepedge" / "examples"
MONDAY_2AM = (339 - 1) * 24 + 2  # 5 Dec 2011 (day 339 of the trace), before the morning rise
HOUR_S = 60.0


def traced(start_hour: int | None = MONDAY_2AM, **app: object) -> ClusterSpec:
    """Two devices; ``cam`` on ``orin`` replays bikeshare, ``still`` on ``nano`` does not."""
    trace = {"path": "bikeshare", "peak_rps": 20, "hour_s": HOUR_S}
    if start_hour is not None:
        trace["start_hour"] = start_hour
    return parse_spec(
        ClusterSpec,
        {
            "devices": [
                {"name": "orin", "kind": "x", "cpu_cores": 1, "memory_mb": 4096, "reserved_mb": 0},
                {"name": "nano", "kind": "y", "cpu_cores": 1, "memory_mb": 4096, "reserved_mb": 0},
            ],
            "apps": [
                {"name": "cam", "device": "orin", "deadline_ms": 60, "rate_trace": trace, **app},
                {"name": "still", "device": "nano", "deadline_ms": 60, "rate_rps": 3},
            ],
        },
    )


# --- the spec


def test_a_traced_app_takes_its_rate_from_the_trace_at_the_replay_start() -> None:
    spec = traced()
    cam = spec.apps[0]
    assert cam.rate_trace is not None and cam.rate_rps == pytest.approx(start_rate(cam.rate_trace))
    # bikeshare: 8 rentals at 2 am that Monday, 651 in the year's busiest hour
    assert cam.rate_rps == pytest.approx(20 * 8 / 651)
    assert "rate_rps" in cam.model_fields_set
    # written out with the rate filled in, it loads again unchanged
    assert ClusterSpec.model_validate(spec.model_dump()) == spec
    # given, rate_rps overrides the trace's as the current rate
    assert traced(rate_rps=7).apps[0].rate_rps == 7


def test_the_default_start_is_the_last_week_and_a_closed_hour_still_has_a_rate() -> None:
    assert replay_schedule(traced(None).apps[0].rate_trace)[0][0] == 0.0
    spec = RateTraceSpec(path="bikeshare", peak_rps=20, start_hour=(2 - 1) * 24 + 5)  # 0 rentals
    assert start_rate(spec) == pytest.approx(MIN_RATE_SHARE * 20)


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ({"rate_trace": None}, "rate_rps is required (or a rate_trace to replay)"),
        ({"rate_trace": {"path": "nope.csv", "peak_rps": 5}}, "cannot read trace nope.csv"),
        (
            {"rate_trace": {"path": "bikeshare", "peak_rps": 5, "start_hour": 9000}},
            "start_hour 9000 is beyond the end of trace bikeshare (8760 hours)",
        ),
        ({"rate_trace": {"path": "bikeshare", "peak_rps": 0}}, "rate_trace.peak_rps"),
        ({"rate_trace": {"path": "bikeshare", "peak_rps": 5, "hour_s": -1}}, "hour_s"),
        ({"rate_trace": {"path": "bikeshare", "peak_rps": 5, "level": 1}}, "level"),
    ],
)
def test_bad_traces_are_one_line_spec_errors(app: dict, message: str) -> None:
    data = {
        "devices": [{"name": "d", "kind": "rpi4"}],
        "apps": [{"name": "a", "device": "d", "deadline_ms": 50, **app}],
    }
    with pytest.raises(SpecError) as err:
        parse_spec(ClusterSpec, data)
    line = err.value.one_line()
    assert message in line and "\n" not in line


def test_a_user_csv_is_replayed_by_the_hour(tmp_path: Path) -> None:
    csv = tmp_path / "rate.csv"
    rates = [1.0, 3.0] * 24 + [2.0, 2.0]  # 30 min steps: 25 hours at 2 req/s each
    csv.write_text("t,rate\n" + "".join(f"{i * 1800},{r}\n" for i, r in enumerate(rates)))
    spec = RateTraceSpec(path=str(csv), peak_rps=10, hour_s=30, start_hour=0)
    assert start_rate(spec) == pytest.approx(10.0)  # every hour is the peak
    assert replay_schedule(spec) == ((0.0, 10.0),)  # 25 equal hours: one step


def test_the_example_traced_cluster_validates() -> None:
    from deepedge.validation import problems

    spec = load_spec(ClusterSpec, EXAMPLES / "traced-cluster.yaml")
    assert problems(spec) == []
    cam = next(a for a in spec.apps if a.rate_trace is not None)
    assert 0 < cam.rate_rps < cam.rate_trace.peak_rps
    check_forecastable(spec)


# --- the replay schedule


def test_hourly_integrates_a_finer_trace() -> None:
    tr = RateTrace(np.array([1.0, 3.0, 0.0, 2.0, 5.0]), 1800.0, "x", "test")
    hourly = tr.hourly()
    assert hourly.interval_s == 3600 and len(hourly) == 2  # the last half hour is dropped
    np.testing.assert_allclose(hourly.rates, [2.0, 1.0])
    with pytest.raises(DataError, match="less than an hour"):
        RateTrace(np.ones(3), 600.0, "short", "test").hourly()


def test_schedule_compresses_hours_and_merges_equal_rates() -> None:
    tr = RateTrace(np.array([1.0, 2.0, 2.0, 0.0, 4.0]), 3600.0, "x", "test")
    assert tr.schedule(1, 3, 10.0) == ((0.0, 2.0), (20.0, 0.0))
    assert tr.schedule(0, 100, 10.0) == ((0.0, 1.0), (10.0, 2.0), (30.0, 0.0), (40.0, 4.0))
    # a finer trace keeps its steps; a start inside an interval begins at offset 0
    fine = RateTrace(np.array([1.0, 5.0, 3.0, 7.0]), 1800.0, "x", "test")
    assert fine.schedule(0, 2, 60.0) == ((0.0, 1.0), (30.0, 5.0), (60.0, 3.0), (90.0, 7.0))
    for bad in ((5, 1, 10.0), (0, 0, 10.0), (0, 1, 0.0)):
        with pytest.raises(DataError):
            tr.schedule(*bad)


def test_the_replay_schedule_is_the_scaled_trace_from_the_start() -> None:
    cam = traced().apps[0]
    steps = replay_schedule(cam.rate_trace)
    assert steps[0] == (0.0, pytest.approx(cam.rate_rps, rel=1e-5))
    offsets = [t for t, _ in steps]
    assert offsets == sorted(set(offsets)) and all(t % HOUR_S == 0 for t in offsets)
    assert max(r for _, r in steps) <= 20.0 + 1e-9
    # the load generator takes it as it is
    from deepedge.session import lc_target

    target = lc_target(cam, 5000, "127.0.0.1")
    assert target.schedule == steps and target.rate_rps == cam.rate_rps


# --- the forecast peak


def test_the_forecast_peak_covers_the_morning_rise_and_untraced_apps_keep_their_rate() -> None:
    spec = traced()
    # 8 trace hours from 2 am: the 8 am commute is in the horizon
    rates = planning_rates(spec, horizon_s=8 * HOUR_S)
    cam, still = rates["cam"], rates["still"]
    assert still == PlannedRate("still", 3.0, 3.0) and not still.forecast
    assert cam.forecast and cam.horizon_hours == 8 and cam.level == 0.95
    assert cam.current_rps == spec.apps[0].rate_rps
    assert cam.planned_rps >= cam.mean_peak_rps >= cam.current_rps
    assert cam.planned_rps > 10 * cam.current_rps  # the rise, not the night
    actual = 20 / 651 * np.array([8, 2, 7, 25, 90, 283, 404, 190])  # what the trace holds
    assert cam.planned_rps >= 0.8 * actual.max()
    assert "cam" in cam.describe() and "->" in cam.describe()
    # a short horizon at night sees no rise; later into the replay the forecast moves on
    night = planning_rates(spec, horizon_s=HOUR_S)["cam"]
    assert night.horizon_hours == 1 and night.planned_rps < 0.3 * cam.planned_rps
    later = planning_rates(spec, horizon_s=HOUR_S, at_s=5.5 * HOUR_S)["cam"]
    assert later.at_hour == pytest.approx(MONDAY_2AM + 5.5)
    assert later.horizon_hours == 2  # the 8th hour's second half and the 9th's first
    assert later.planned_rps > 5 * night.planned_rps


def test_the_forecast_scales_with_peak_rps_and_apps_share_a_fit() -> None:
    calls = []

    def counting(level: float):
        from deepedge.serving.lc_rates import default_forecaster

        calls.append(level)
        return default_forecaster(level)

    base = traced()
    double = base.apps[0].model_copy(
        update={
            "name": "cam2",
            "rate_trace": base.apps[0].rate_trace.model_copy(update={"peak_rps": 40}),
            "rate_rps": 2 * base.apps[0].rate_rps,
        }
    )
    spec = base.model_copy(update={"apps": [*base.apps, double]})
    rates = planning_rates(spec, horizon_s=4 * HOUR_S, forecaster=counting)
    assert len(calls) == 1
    assert rates["cam2"].planned_rps == pytest.approx(2 * rates["cam"].planned_rps, rel=1e-6)


def test_a_replay_too_early_in_its_trace_cannot_be_forecast() -> None:
    spec = traced(start_hour=100)
    with pytest.raises(SpecError, match="needs 528 hours before it") as err:
        check_forecastable(spec)
    assert "lc_rates: current" in (err.value.hint or "")
    with pytest.raises(SpecError, match="cannot forecast its rate from the 100 trace hours"):
        planning_rates(spec, horizon_s=HOUR_S)


def test_the_spec_at_planning_rates_changes_only_the_rates() -> None:
    spec = traced()
    assert spec_at_planning_rates(spec, {}) is spec
    rates = planning_rates(spec, horizon_s=8 * HOUR_S)
    planned = spec_at_planning_rates(spec, rates)
    assert planned.apps[0].rate_rps == rates["cam"].planned_rps
    assert planned.apps[1] == spec.apps[1] and planned.devices == spec.devices
    assert spec.apps[0].rate_rps == rates["cam"].current_rps  # the original is untouched
    # the interference lab measures traced apps at their trace's peak
    at_peaks = spec_at_planning_rates(spec, trace_peaks(spec))
    assert [a.rate_rps for a in at_peaks.apps] == [20.0, 3.0]


# --- the planner at the forecast peak


class _Bounds:
    """A latency model whose p95 grows with the app's rate and the training beside it."""

    def book(self, key: str) -> _Bounds:
        return self

    def app(self, kind: str, rate_rps: float) -> dict[str, float]:
        return {"p95_ms": 5 + 2 * rate_rps, "cpu_cores": 0.01 * rate_rps}

    def p95_upper_beside_training(self, key, apps, batches, intensity):
        return {
            name: np.array([10 + 3 * rate + 0.5 * b * intensity for b in batches])
            for name, (_, rate) in apps.items()
        }


def _plan(spec: ClusterSpec):
    from deepedge.plan.deadline import cluster_problem, deadline_plan

    problem = cluster_problem(
        spec.devices,
        spec.apps,
        {"orin": (0.01, 0.001), "nano": (0.01, 0.004)},
        global_batch=32,
        comm_s=lambda k: 0.001 * (k > 1),
        need_mb=lambda b: 100.0,
        interference=_Bounds(),
        device_keys={d.name: d.name for d in spec.devices},
    )
    return deadline_plan(problem)


def test_the_planner_at_the_forecast_peak_leaves_out_what_the_current_rate_allows() -> None:
    spec = traced()
    now = _plan(spec)  # cam at night: p95 bound ~11 ms + training, deadline 60 ms
    assert "orin" in now.local_batches and now.local_batches["orin"] > 16  # the fast device
    rates = planning_rates(spec, horizon_s=8 * HOUR_S)
    peak = _plan(spec_at_planning_rates(spec, rates))  # at the rise: over 57 ms with any
    assert peak.local_batches == {"nano": 32}
    reason = next(e.reason for e in peak.excluded if e.device == "orin")
    assert "cam" in reason


# --- the run controller


def _controller(tmp_path: Path, spec: ClusterSpec, **options: object):
    from deepedge.control import RunController, RunOptions
    from deepedge.control.retraining import Profiling
    from deepedge.spec import JobSpec

    job = JobSpec.model_validate(
        {
            "dataset": {"kind": "synthetic", "train_size": 64, "test_size": 8},
            "global_batch": 8,
            "epochs": 1,
        }
    )
    ctl = RunController(spec, job, RunOptions(out=tmp_path, **options), initial_state={})
    ctl.session = SimpleNamespace(spec=spec, lc_elapsed_s=lambda: 0.0)
    ctl.profiling = Profiling({}, None, [], 0.0)
    return ctl


class _Retraining:
    """Plans by recording the LC rates it was asked to plan at; fails at ``fail_above``."""

    def __init__(self, fail_above: float = float("inf")) -> None:
        self.lc_rates: dict = {}
        self.asked: list[dict] = []
        self.fail_above = fail_above

    def plan_from(self, profiling, names):
        self.asked.append(dict(self.lc_rates))
        if any(r.planned_rps > self.fail_above for r in self.lc_rates.values()):
            raise PlanInfeasible("every device breaks cam's deadline")
        plan = SimpleNamespace(predicted_step_s=HOUR_S / 8)  # 8 steps: one trace hour
        return SimpleNamespace(
            plans={n: plan for n in names}, feasible_lower_bound_s=None, lower_bound_s=1.0
        )


def test_the_controller_plans_again_at_the_forecast_peak_over_the_predicted_job(
    tmp_path: Path,
) -> None:
    spec = traced()
    ctl = _controller(tmp_path, spec)
    retraining = _Retraining()
    ctl._plan_at_lc_rates(retraining, ["deep-edge"])
    assert retraining.asked[0] == {}  # first at the current rates, for the job's duration
    assert retraining.asked[1]["cam"].planned_rps > spec.apps[0].rate_rps
    assert retraining.asked[1]["cam"].horizon_hours == 1  # 8 steps of 1/8 trace hour
    assert ctl.lc_rates == retraining.lc_rates == retraining.asked[1]
    (event,) = ctl.events.of_kind("lc-rates")
    assert "forecast peak" in event.message and "cam" in event.message
    assert event.data["horizon_s"] == pytest.approx(HOUR_S)
    assert set(event.data["rates"]) == {"cam"}


def test_no_plan_at_the_peak_keeps_the_plan_at_the_current_rates(tmp_path: Path) -> None:
    ctl = _controller(tmp_path, traced())
    retraining = _Retraining(fail_above=0.0)
    planning = ctl._plan_at_lc_rates(retraining, ["deep-edge"])
    assert planning.plans["deep-edge"].predicted_step_s == HOUR_S / 8
    assert retraining.lc_rates == {} and ctl.lc_rates == {}
    assert "planning at the current rates" in ctl.events.of_kind("lc-rates")[-1].message


def test_current_rates_or_blind_policies_plan_once_without_a_forecast(tmp_path: Path) -> None:
    for options, names in (({"lc_rates": "current"}, ["deep-edge"]), ({}, ["proportional"])):
        ctl = _controller(tmp_path, traced(), **options)
        retraining = _Retraining()
        ctl._plan_at_lc_rates(retraining, names)
        assert retraining.asked == [{}] and not ctl.events.of_kind("lc-rates")


def test_the_controller_refuses_a_trace_it_cannot_forecast_before_booting(tmp_path: Path) -> None:
    from deepedge.errors import UsageError

    with pytest.raises(SpecError, match="needs 528 hours"):
        _controller(tmp_path, traced(start_hour=100))
    _controller(tmp_path, traced(start_hour=100), lc_rates="current")  # no forecast: fine
    with pytest.raises(UsageError, match="unknown lc_rates"):
        _controller(tmp_path, traced(), lc_rates="peak")
