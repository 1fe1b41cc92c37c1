"""LC apps' request rates to plan at: the current rate, or the forecast peak over a job.

An LC app whose ``rate`` in the cluster spec is a trace (:class:`~deepedge.spec.RateTraceSpec`)
is loaded by replaying that trace, hour by hour. The Deep-Edge planner keeps every app under
its deadline *at the rate it is given*; a plan made at night at the night's rate breaks the
deadlines when the morning rise comes in the middle of the job. So the planner can plan at
the *forecast peak* instead: the forecaster (:mod:`deepedge.serving.forecast`, the one the
serving autoscaler uses) is fitted on the trace's hours before the replay position and
forecasts the hours the job will run; the peak of its upper quantile over them is the rate
planned at. :func:`planning_rates` computes it per app and :func:`spec_at_planning_rates`
gives the cluster spec at those rates, so the planner plans on them without any change of
its own.

Numpy only (statsmodels is imported by the forecaster's fit), never torch: the cluster
spec's validation imports this module for traced apps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from deepedge.errors import DataError, SpecError
from deepedge.serving.forecast import Forecaster, ForecastResult, SeasonalAutoReg
from deepedge.serving.trace import RateTrace, load_hourly
from deepedge.spec import ClusterSpec, RateTraceSpec

__all__ = [
    "LC_RATES",
    "MIN_RATE_SHARE",
    "REPLAY_HOURS",
    "LcRates",
    "PlannedRate",
    "Replay",
    "check_forecastable",
    "check_rate_trace",
    "default_forecaster",
    "describe_rates",
    "planning_rates",
    "replay",
    "replay_schedule",
    "spec_at_planning_rates",
    "start_rate",
    "trace_peaks",
]

LcRates = Literal["current", "forecast-peak"]
LC_RATES: tuple[LcRates, ...] = ("current", "forecast-peak")
"""What the planner plans traced LC apps at: their spec's ``rate_rps`` (the rate at the
replay start), or the peak of the forecast's upper quantile over the job."""
MIN_RATE_SHARE = 1e-3
"""A traced app's rate where its trace has no requests (a closed night hour), as a share
of its ``peak_rps``: a spec's rate must be positive."""
REPLAY_HOURS = 336
"""At most two weeks of trace hours are replayed (the load generator takes its schedule
as text); past them the rate stays at the last replayed hour's."""
MAX_RATE_RPS = 100_000.0  # AppSpec.rate_rps's bound

ForecasterFactory = Callable[[float], Forecaster]
"""Builds an unfitted forecaster whose upper quantile has the given level."""


def default_forecaster(level: float) -> Forecaster:
    """The forecaster that won on the bikeshare trace (see :mod:`deepedge.serving.forecast`)."""
    return SeasonalAutoReg(level=level)


@dataclass(frozen=True)
class Replay:
    """An app's trace as its load generator replays it: trace hours ``[start, end)``,
    each lasting ``hour_s`` s of wall time, at ``scale`` x the trace's own rates."""

    trace: RateTrace  # hourly, as loaded (unscaled: shared by every app replaying it)
    scale: float
    start: int
    end: int
    hour_s: float
    min_rps: float

    def hour_at(self, at_s: float) -> float:
        """The trace position (in hours, fractional) ``at_s`` seconds into the replay."""
        return self.start + max(0.0, at_s) / self.hour_s

    def rate_at(self, hour: float) -> float:
        """The replayed rate (req/s) at trace position ``hour`` (the last replayed hour's
        past the end), never below ``min_rps``."""
        i = min(math.floor(hour), self.end - 1)
        return max(float(self.trace.rates[i]) * self.scale, self.min_rps)


def replay(spec: RateTraceSpec) -> Replay:
    """The replay ``spec`` describes, its trace loaded (once per file: cached).

    Raises a one-line :class:`SpecError` for a trace that cannot be read, has no
    requests at all, or ends before ``start_hour``.
    """
    try:
        trace = load_hourly(spec.path)
    except DataError as err:
        raise SpecError(str(err), hint=err.hint) from None
    n = len(trace)
    if trace.peak_rps <= 0:
        raise SpecError(
            f"trace {spec.path} has no requests at all", hint="give a trace with some load"
        )
    start = max(0, n - 168) if spec.start_hour is None else spec.start_hour
    if start >= n:
        raise SpecError(
            f"start_hour {start} is beyond the end of trace {spec.path} ({n} hours)",
            hint=f"pick a start_hour below {n}, or leave it out (the last week's start)",
        )
    return Replay(
        trace,
        spec.peak_rps / trace.peak_rps,
        start,
        start + min(n - start, REPLAY_HOURS),
        spec.hour_s,
        MIN_RATE_SHARE * spec.peak_rps,
    )


def check_rate_trace(spec: RateTraceSpec) -> None:
    """Raise a one-line SpecError when ``spec``'s trace cannot be replayed (see :func:`replay`)."""
    replay(spec)


def start_rate(spec: RateTraceSpec) -> float:
    """The rate at the replay start: a traced app's ``rate_rps`` when the spec leaves it out."""
    r = replay(spec)
    return r.rate_at(r.start)


def replay_schedule(spec: RateTraceSpec) -> tuple[tuple[float, float], ...]:
    """The load generator's schedule for ``spec``: ``(offset s, rate rps)`` pairs from the
    replay start, one per replayed trace hour (equal neighbours merged)."""
    r = replay(spec)
    return r.trace.scaled(spec.peak_rps).schedule(r.start, r.end - r.start, r.hour_s)


@dataclass(frozen=True)
class PlannedRate:
    """The rate one LC app is planned at, and what it rests on (for the run's events)."""

    app: str
    current_rps: float
    """The app's rate at the planning time (its spec's ``rate_rps`` at the replay start)."""
    planned_rps: float
    """What the planner plans it at: the forecast peak for a traced app, else the current."""
    mean_peak_rps: float | None = None
    """The peak of the forecast's mean over the horizon (None: not forecast)."""
    horizon_hours: int = 0
    """Trace hours forecast (0: not forecast)."""
    at_hour: float | None = None
    """The trace position (hours) the forecast starts at."""
    level: float | None = None
    """The upper quantile's level whose peak is ``planned_rps``."""

    @property
    def forecast(self) -> bool:
        return self.horizon_hours > 0

    def describe(self) -> str:
        """One line, as the run's events show it."""
        if not self.forecast:
            return f"{self.app} {self.planned_rps:.3g} req/s"
        return (
            f"{self.app} {self.current_rps:.3g} -> {self.planned_rps:.3g} req/s "
            f"(mean peak {self.mean_peak_rps:.3g}, {self.level:.0%} upper over "
            f"{self.horizon_hours} h from trace hour {self.at_hour:.1f})"
        )

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "current_rps": self.current_rps,
            "planned_rps": self.planned_rps,
            "mean_peak_rps": self.mean_peak_rps,
            "horizon_hours": self.horizon_hours,
            "at_hour": self.at_hour,
            "level": self.level,
        }


def describe_rates(rates: Mapping[str, PlannedRate]) -> str:
    """The forecast apps' planned rates in one line (the others keep their spec's)."""
    shown = [r.describe() for r in rates.values() if r.forecast]
    return "; ".join(shown) if shown else "every app at its spec's rate"


def planning_rates(
    spec: ClusterSpec,
    horizon_s: float,
    *,
    at_s: float = 0.0,
    forecaster: ForecasterFactory = default_forecaster,
) -> dict[str, PlannedRate]:
    """Each LC app's rate to plan a job of ``horizon_s`` seconds at, ``at_s`` seconds into
    the LC replay (the load generator's start).

    An app without a trace is planned at its ``rate_rps``. For a traced app the forecaster
    is fitted on the trace's hours before the replay position ``start_hour + at_s /
    hour_s`` and forecasts the trace hours the job overlaps (from the one in progress, at
    least one); the app is planned at the peak of the forecast's upper quantile (at the
    spec's ``level``), never below its current rate (the plan must hold now too), and at
    the last replayed rate where the job outlasts the replay. Apps sharing a trace and a
    position share one fit: the forecast scales with the trace (the model is fitted on
    logs with a constant), so it is fitted on the trace's own rates and scaled per app.

    Raises a one-line SpecError when a trace has too few hours before the position for
    the forecaster.
    """
    if not (math.isfinite(horizon_s) and horizon_s >= 0):
        raise SpecError(f"the planning horizon must be a duration, got {horizon_s} s")
    fits: dict[tuple[int, int, int, float], ForecastResult] = {}
    out: dict[str, PlannedRate] = {}
    for app in spec.apps:
        assert app.rate_rps is not None  # set by validation
        if app.rate_trace is None:
            out[app.name] = PlannedRate(app.name, app.rate_rps, app.rate_rps)
            continue
        r = replay(app.rate_trace)
        pos = r.hour_at(at_s)
        current = app.rate_rps if at_s <= 0 else r.rate_at(pos)
        origin = math.floor(pos)
        if origin >= r.end:  # the replay is over: its last rate holds
            out[app.name] = PlannedRate(app.name, current, current)
            continue
        hours = max(1, math.ceil(pos + horizon_s / r.hour_s) - origin)
        ahead = min(hours, r.end - origin)
        level = app.rate_trace.level
        key = (id(r.trace), origin, ahead, level)
        if key not in fits:
            fits[key] = _forecast(app.name, r.trace, origin, ahead, forecaster(level))
        result = fits[key]
        upper = float(np.max(result.upper)) * r.scale
        held = r.rate_at(r.end - 1) if hours > ahead else 0.0
        out[app.name] = PlannedRate(
            app.name,
            current,
            min(MAX_RATE_RPS, max(current, upper, held)),
            mean_peak_rps=float(np.max(result.mean)) * r.scale,
            horizon_hours=hours,
            at_hour=pos,
            level=level,
        )
    return out


def _forecast(
    app: str, trace: RateTrace, origin: int, hours: int, model: Forecaster
) -> ForecastResult:
    try:
        return model.fit(trace.rates[:origin]).predict(hours)
    except DataError as err:
        raise SpecError(
            f"app {app}: cannot forecast its rate from the {origin} trace hours before the "
            f"replay position ({err})",
            hint="start the replay later in the trace (rate_trace.start_hour), or plan at "
            "the current rates (lc_rates: current)",
        ) from None


def check_forecastable(
    spec: ClusterSpec, forecaster: ForecasterFactory = default_forecaster
) -> None:
    """Raise a one-line SpecError, before anything boots, for a traced app whose replay
    starts too early in its trace for the forecaster to be fitted on the hours before."""
    for app in spec.apps:
        if app.rate_trace is None:
            continue
        model = forecaster(app.rate_trace.level)
        # the fewest points its fit takes: what the model needs plus the calibrated horizon
        need = model._min_history() + model.max_horizon
        start = replay(app.rate_trace).start
        if start < need:
            raise SpecError(
                f"app {app.name}'s trace replay starts at hour {start}, but forecasting its "
                f"rate with {model.name} needs {need} hours before it",
                hint=f"set rate_trace.start_hour to {need} or more, or plan at the current "
                "rates (lc_rates: current)",
            )


def spec_at_planning_rates(spec: ClusterSpec, rates: Mapping[str, PlannedRate]) -> ClusterSpec:
    """``spec`` with each app in ``rates`` at its planned rate: what the planner plans on
    (apps not in ``rates`` keep theirs). Not validated again: every rate came from one."""
    if not any(a.name in rates and rates[a.name].planned_rps != a.rate_rps for a in spec.apps):
        return spec
    apps = [
        a.model_copy(update={"rate_rps": rates[a.name].planned_rps}) if a.name in rates else a
        for a in spec.apps
    ]
    return spec.model_copy(update={"apps": apps})


def trace_peaks(spec: ClusterSpec) -> dict[str, PlannedRate]:
    """Each traced app at its trace's ``peak_rps`` (the busiest hour of the whole trace):
    where the interference lab measures it for plans at the forecast peak, which lies
    near the trace's peaks on busy days."""
    return {
        a.name: PlannedRate(a.name, a.rate_rps, a.rate_trace.peak_rps)
        for a in spec.apps
        if a.rate_trace is not None and a.rate_rps is not None
    }
