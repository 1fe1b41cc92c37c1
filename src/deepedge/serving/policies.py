"""The autoscaling agents: what to run next, decided every decision interval.

All three size the same thing, replicas per device and flavour, from the same latency
model and cost catalog (:class:`ServingProblem`); they differ in what they look at:

* ``barista`` (predictive, after Barista): plans on two time scales. *How many* replicas
  run, and where, is sized for the forecast's upper quantile over the provisioning lead
  time (a typical cold start + one decision interval), so new replicas are warm *before*
  the rise: the cheapest configuration whose predicted p95 stays under the SLO at that
  rate. *How big* each one is (its flavour, rewritten live) is sized for the next decision
  interval only: the cheapest flavours whose ready replicas cover the upper quantile over
  that interval (:func:`~deepedge.serving.resize.solve_resize`). What it sees now corrects
  a forecast that ran low.
* ``reactive``: a threshold autoscaler like Kubernetes' HPA on one flavour: desired
  replicas = ceil(ready × utilisation / target), ignored within a 10 % tolerance, scaling
  down only to the highest recommendation of the last cooldown window.
* ``static-peak``: provisions once for the peak of the replayed period and never moves
  (a dead replica is still replaced, by the pool).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from deepedge.errors import SpecError
from deepedge.serving.costs import CostCatalog, Flavour
from deepedge.serving.forecast import Forecaster
from deepedge.serving.latency import LatencyModel
from deepedge.serving.optimize import Config, solve_exact, solve_greedy
from deepedge.serving.resize import solve_resize

__all__ = [
    "POLICIES",
    "Barista",
    "Decision",
    "Observation",
    "Policy",
    "Reactive",
    "ServingProblem",
    "StaticPeak",
    "spread",
]

POLICIES = ("barista", "reactive", "static-peak")

Placement = dict[str, dict[str, int]]


@dataclass(frozen=True)
class ServingProblem:
    """Everything a configuration is sized against: the latency model per flavour, the
    flavours and their prices, the cores each device gives replicas, and the SLO."""

    models: Mapping[str, LatencyModel]
    flavours: Mapping[str, Flavour]
    catalog: CostCatalog
    devices: Mapping[str, float]
    slo_ms: float
    min_replicas: int = 1
    max_replicas: int = 32

    def __post_init__(self) -> None:
        missing = sorted(set(self.flavours) - set(self.models))
        if missing:
            raise SpecError(
                f"no latency model for flavour(s) {', '.join(missing)}",
                hint="profile them first (`deepedge serve --profile`) or drop them",
            )

    def _args(self) -> dict:
        return {
            "models": self.models,
            "flavours": list(self.flavours.values()),
            "catalog": self.catalog,
            "devices": dict(self.devices),
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
        }

    def solve(self, rate_rps: float, *, exact: bool = True) -> Config:
        """The cheapest configuration for ``rate_rps`` (the largest the cluster can run
        when nothing is enough: the SLO will be missed, but by as little as possible)."""
        solver = solve_exact if exact else solve_greedy
        config = solver(max(rate_rps, 0.0), self.slo_ms, **self._args())
        return config if config is not None else self.largest()

    def largest(self) -> Config:
        """The configuration with the most SLO capacity the devices hold (cached)."""
        cached = self.__dict__.get("_largest")
        if cached is None:
            lo, hi = 0.0, 1.0
            while solve_exact(hi, self.slo_ms, **self._args()) is not None and hi < 1e7:
                lo, hi = hi, hi * 2
            for _ in range(30):
                mid = (lo + hi) / 2
                if solve_exact(mid, self.slo_ms, **self._args()) is None:
                    hi = mid
                else:
                    lo = mid
            cached = solve_exact(lo, self.slo_ms, **self._args())
            if cached is None:
                raise SpecError(
                    f"no flavour fits any serving device at a {self.slo_ms:g} ms SLO",
                    hint="give replicas more cores, use smaller flavours or a looser SLO",
                )
            object.__setattr__(self, "_largest", cached)  # frozen: cache by hand
        return cached

    @staticmethod
    def covers(capacity_rps: float, rate_rps: float) -> bool:
        return capacity_rps >= rate_rps * (1 - 1e-9)

    def capacity_rps(self, placement: Mapping[str, Mapping[str, int]]) -> float:
        """Total rate ``placement`` serves within the SLO (sum over replicas)."""
        return sum(
            n * self.models[f].max_rate(1, self.slo_ms)
            for per in placement.values()
            for f, n in per.items()
        )

    def cost_per_hour(self, placement: Mapping[str, Mapping[str, int]]) -> float:
        return sum(
            n * self.catalog.cost_per_hour(self.flavours[f])
            for per in placement.values()
            for f, n in per.items()
        )

    def resize(
        self,
        rate_rps: float,
        slots: Mapping[str, int],
        ready: Mapping[str, int] | None = None,
    ) -> Config | None:
        """The cheapest flavours for ``slots`` whose ``ready`` replicas serve ``rate_rps``
        (see :func:`~deepedge.serving.resize.solve_resize`)."""
        args = self._args()
        return solve_resize(
            max(rate_rps, 0.0),
            self.slo_ms,
            args["models"],
            args["flavours"],
            self.catalog,
            args["devices"],
            slots=slots,
            ready=ready,
        )

    def place(self, flavour: str, replicas: int) -> Placement:
        """``replicas`` of one flavour spread over the devices (see :func:`spread`)."""
        return spread(self.devices, self.flavours[flavour], replicas)


def spread(devices: Mapping[str, float], flavour: Flavour, replicas: int) -> Placement:
    """``replicas`` of ``flavour`` over ``devices`` (host cores free on each), each on the
    device with the most room left; as many as fit when not all do."""
    room = dict(devices)
    out: Placement = {}
    for _ in range(replicas):
        device = max(room, key=lambda d: room[d], default=None)
        if device is None or room[device] + 1e-9 < flavour.cores:
            break
        room[device] -= flavour.cores
        out.setdefault(device, {})
        out[device][flavour.name] = out[device].get(flavour.name, 0) + 1
    return out


@dataclass(frozen=True)
class Observation:
    """What an agent sees at a decision: time, the trace position, the arrival rate of
    the last interval, the replicas' CPU use, and the hourly rates observed so far.

    ``placement`` holds serving and booting replicas, ``ready_placement`` the serving ones
    (None: every replica of ``placement`` serves)."""

    t_s: float
    hour: float  # position in the trace, in (fractional) trace hours from its start
    rate_rps: float
    utilisation: float | None
    placement: Placement
    ready: int
    starting: int
    history: np.ndarray  # mean rate of every completed trace hour up to now
    lead_s: float  # provisioning lead time: a typical cold start + decision interval
    hour_s: float  # wall seconds per trace hour
    interval_s: float = 1.0  # until the next decision
    ready_placement: Placement | None = None

    def ready_per_device(self) -> dict[str, int]:
        """Serving replicas per device."""
        return _slots(self.placement if self.ready_placement is None else self.ready_placement)


@dataclass(frozen=True)
class Decision:
    placement: Placement
    planned_rps: float  # the rate the configuration was sized for
    forecast_rps: float | None = None  # the forecast's upper quantile over the lead time
    note: str = ""
    make_before_break: bool = True
    """Hold shrinking changes while replicas boot (see :meth:`ReplicaPool.apply`); a
    placement sized on the serving replicas alone needs no holding."""


class Policy(Protocol):
    name: str

    def decide(self, obs: Observation) -> Decision: ...


def _placement(config: Config, problem: ServingProblem, current: Placement) -> Placement:
    """The solved replicas, largest first, each on a device that already runs a replica
    it may take over (then on the device with most room): the pool turns a running
    replica into any flavour by a live resize, whereas moving one costs a cold start. The
    solver's own placement is one of many equivalent ones; it is the fallback."""
    wanted = sorted(
        (problem.flavours[f] for f, n in config.replicas.items() for _ in range(n)),
        key=lambda f: -f.cores,
    )
    room = dict(problem.devices)
    running = _slots(current)
    out: Placement = {}
    for flavour in wanted:
        fits = [d for d in room if room[d] + 1e-9 >= flavour.cores]
        if not fits:
            return {d: dict(per) for d, per in config.placement.items() if any(per.values())}
        device = max(fits, key=lambda d: (running.get(d, 0) > 0, room[d]))
        running[device] = running.get(device, 0) - 1
        room[device] -= flavour.cores
        out.setdefault(device, {})
        out[device][flavour.name] = out[device].get(flavour.name, 0) + 1
    return out


def _slots(placement: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Replicas per device, whatever their flavour."""
    out = {d: sum(per.values()) for d, per in placement.items()}
    return {d: n for d, n in out.items() if n > 0}


def _count(placement: Mapping[str, Mapping[str, int]]) -> int:
    return sum(n for per in placement.values() for n in per.values())


@dataclass
class StaticPeak:
    """Provision once for ``peak_rps`` and hold it."""

    problem: ServingProblem
    peak_rps: float
    name: str = "static-peak"
    _decision: Decision | None = None

    def decide(self, obs: Observation) -> Decision:
        if self._decision is None:
            config = self.problem.solve(self.peak_rps)
            placement = _placement(config, self.problem, obs.placement)
            self._decision = Decision(placement, self.peak_rps, note=config.describe())
        return self._decision


@dataclass
class Reactive:
    """HPA on CPU utilisation, one flavour, with a scale-down stabilisation window."""

    problem: ServingProblem
    flavour: str
    target: float = 0.6
    tolerance: float = 0.1
    cooldown_s: float = 3.0
    name: str = "reactive"
    _recent: deque[tuple[float, int]] = field(default_factory=deque)

    def decide(self, obs: Observation) -> Decision:
        current = _count(obs.placement)
        if not current:  # the first decision: size for what arrives now
            n = self._replicas_for(obs.rate_rps)
        elif obs.utilisation is None or not obs.ready:
            n = current
        else:
            ratio = obs.utilisation / self.target
            n = current if abs(ratio - 1) <= self.tolerance else math.ceil(obs.ready * ratio)
            if obs.starting and n > current:
                n = current  # wait for the replicas already booting before adding more
        n = max(n, self.problem.min_replicas)
        self._recent.append((obs.t_s, n))
        while self._recent and self._recent[0][0] < obs.t_s - self.cooldown_s:
            self._recent.popleft()
        if n < current:  # scale down only as far as the whole window agrees
            n = min(current, max(k for _, k in self._recent))
        placement = self.problem.place(self.flavour, n)
        return Decision(
            placement,
            self.problem.capacity_rps(placement),
            note=f"{_count(placement)}×{self.flavour} (utilisation "
            + (f"{obs.utilisation:.0%})" if obs.utilisation is not None else "n/a)"),
        )

    def _replicas_for(self, rate_rps: float) -> int:
        per = self.problem.models[self.flavour].max_rate(1, self.problem.slo_ms)
        return max(1, math.ceil(rate_rps / per)) if per > 0 else 1


@dataclass
class Barista:
    """Forecast-driven, on two time scales (see the module doc): replicas for the upper
    quantile over the lead time, flavours for the upper quantile over the next interval.

    ``forecaster_factory`` makes the forecaster, refitted every ``refit_hours`` trace
    hours on everything seen and conditioned on each newly completed hour in between.
    ``keep_within`` avoids churn: the running replicas stay while, resized, they meet the
    lead time's rate at most that much dearer than the new optimum.
    """

    problem: ServingProblem
    forecaster_factory: Callable[[], Forecaster]
    refit_hours: int = 24
    correction: float = 1.1  # the observed rate times this is never planned below
    keep_within: float = 0.1
    exact: bool = True
    name: str = "barista"
    _model: Forecaster | None = None
    _fitted_at: int = -(10**9)

    def forecast_upper(self, obs: Observation, horizon_s: float | None = None) -> float:
        """The highest upper-quantile rate from now until now + ``horizon_s`` (the lead
        time by default)."""
        horizon_s = obs.lead_s if horizon_s is None else horizon_s
        return float(np.max(self._hourly_upper(obs, horizon_s)))

    def _hourly_upper(self, obs: Observation, horizon_s: float) -> np.ndarray:
        """The upper quantile of each trace hour from the current one until now +
        ``horizon_s``, from the forecaster refitted or conditioned on the history."""
        n = len(obs.history)
        if self._model is None or n - self._fitted_at >= self.refit_hours:
            self._model = self.forecaster_factory().fit(obs.history)
            self._fitted_at = n
        else:
            self._model.update(obs.history)
        first = max(math.floor(obs.hour), n)  # the current hour is not complete yet
        last = math.floor(obs.hour + horizon_s / obs.hour_s)
        result = self._model.predict(max(last, first) - n + 1)
        return result.upper[first - n :]

    def decide(self, obs: Observation) -> Decision:
        # one forecast for both time scales: the next interval's hours lead the lead time's
        hourly = self._hourly_upper(obs, max(obs.lead_s, obs.interval_s))
        first = max(math.floor(obs.hour), len(obs.history))

        def until(horizon_s: float) -> float:  # the highest upper quantile up to now + horizon
            last = max(math.floor(obs.hour + horizon_s / obs.hour_s), first)
            return float(np.max(hourly[: last - first + 1]))

        upper = until(obs.lead_s)
        now = max(until(obs.interval_s), obs.rate_rps * self.correction)
        demand = max(upper, now)
        # horizontal: enough replicas, warm, for the lead time's peak
        config = self.problem.solve(demand, exact=self.exact)
        running = _slots(obs.placement)
        resized = self.problem.resize(demand, running) if running else None
        if (
            resized is not None
            and self.problem.covers(resized.capacity_rps, demand)
            and resized.cost_per_hour <= config.cost_per_hour * (1 + self.keep_within)
        ):
            slots, why = running, "kept"
        else:
            slots, why = _slots(_placement(config, self.problem, obs.placement)), config.describe()
        # vertical: the serving ones just big enough for the next interval
        ready = obs.ready_per_device()
        sized = self.problem.resize(now, slots, ready if any(ready.values()) else None)
        if sized is None:  # the slots come from placements that fit: not expected
            return Decision(_placement(config, self.problem, obs.placement), demand, upper, why)
        return Decision(
            sized.placement,
            now,
            forecast_rps=upper,
            note=f"{sum(slots.values())} replicas for {demand:.0f} rps ({why}); now "
            + sized.describe(),
            make_before_break=False,
        )
