"""Serving a checkpoint on a started cluster: replay a trace, let an agent scale, measure.

:class:`ServingSession` owns the front end and the replica pool for one checkpoint. Its
:meth:`~ServingSession.latency_models` measures p95 against arrival rate per flavour and
replica count (or reads them from the knowledge base), and :meth:`~ServingSession.replay`
runs one policy over a time-compressed trace:

* the load is open-loop Poisson over HTTP through the front end, its rate following the
  trace hour by hour (:class:`ReplayTrace`), and latency counts from each request's
  scheduled send time;
* every decision interval the policy sees the last interval's arrival rate, the replicas'
  CPU use and the hourly rates so far, and its decision goes to the pool at once;
* what it cost is the flavours' list prices over the replicas' lifetimes, booting and
  draining included, in trace hours.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepedge.apps.loadgen import LoadGenerator, LoadTarget
from deepedge.apps.stats import RequestRecord, latency_summary
from deepedge.cluster.api import ClusterBackend
from deepedge.errors import SpecError
from deepedge.monitor.samples import Sample
from deepedge.serving.costs import CostCatalog, Flavour
from deepedge.serving.frontend import FrontendProcess
from deepedge.serving.latency import LatencyModel, LatencyPoint, fit_latency_models
from deepedge.serving.policies import Decision, Observation, Policy, ServingProblem, spread
from deepedge.serving.pool import ReplicaPool
from deepedge.serving.trace import RateTrace

__all__ = [
    "SERIES",
    "LatencyMeasurement",
    "ReplayTrace",
    "ServeResult",
    "ServingSession",
    "tick_samples",
]

_TICK_S = 0.1
_BOOT_TIMEOUT_S = 180.0
_DEFAULT_COLD_START_S = 5.0  # the lead time's cold start before one was measured


@dataclass(frozen=True)
class ReplayTrace:
    """The hours to replay (``window``, rps) and the hours before them (``history``, for
    the forecaster), both scaled alike; one trace hour lasts ``hour_s`` wall seconds."""

    history: np.ndarray
    window: np.ndarray
    hour_s: float
    start_hour: int
    name: str = "trace"

    @classmethod
    def from_trace(
        cls,
        trace: RateTrace,
        *,
        hours: int,
        peak_rps: float,
        hour_s: float,
        start_hour: int | None = None,
    ) -> ReplayTrace:
        """``hours`` of an hourly ``trace`` from ``start_hour`` (default: the last
        ``hours``), scaled so that the trace's busiest hour is ``peak_rps`` (a quiet week
        replays quieter than a busy one, as it would)."""
        if trace.interval_s != 3600:
            raise SpecError(
                f"trace {trace.name!r} has {trace.interval_s:g} s intervals; replay needs hours",
                hint="load it with bin_s=3600",
            )
        if hours < 1 or peak_rps <= 0 or hour_s <= 0:
            raise SpecError("need hours >= 1, peak_rps > 0 and hour_s > 0")
        start = len(trace) - hours if start_hour is None else start_hour
        if start < 0 or start + hours > len(trace):
            raise SpecError(
                f"cannot replay {hours} h from hour {start}: the trace has {len(trace)} hours"
            )
        window = np.asarray(trace.rates[start : start + hours], dtype=float)
        if window.max() <= 0:
            raise SpecError(f"trace {trace.name!r} has no requests in the replayed hours")
        scale = peak_rps / float(np.max(trace.rates))
        return cls(
            np.asarray(trace.rates[:start], dtype=float) * scale,
            window * scale,
            hour_s,
            start,
            trace.name,
        )

    @property
    def duration_s(self) -> float:
        return len(self.window) * self.hour_s

    def schedule(self) -> tuple[tuple[float, float], ...]:
        """The load generator's piecewise-constant rate schedule (one step per hour)."""
        return tuple((i * self.hour_s, float(r)) for i, r in enumerate(self.window))


@dataclass(frozen=True)
class LatencyMeasurement:
    """p95 points per flavour and replica count, and each flavour's measured capacity
    per replica (requests/s at full use of its quota)."""

    points: list[LatencyPoint]
    capacity_rps: dict[str, float]
    cpu_per_request_s: float  # the first estimate, on one replica at a low rate

    def fit(self) -> dict[str, LatencyModel]:
        return fit_latency_models(self.points, self.capacity_rps)


@dataclass
class ServeResult:
    """One policy's replay: the summary numbers, its timeline and every request."""

    policy: str
    summary: dict[str, Any]
    timeline: list[dict[str, Any]]
    records: list[RequestRecord] = field(repr=False)
    actions: list[tuple[float, str]] = field(default_factory=list)


SERIES = ("trace", "observed", "forecast", "capacity")
"""The rates of a tick row that the live dashboard charts."""


def tick_samples(policy: str, row: dict[str, Any], now: float) -> list[Sample]:
    """One decision interval's row (:meth:`ServingSession.replay`'s ``on_tick``) as monitor
    samples, so a dashboard reading the store follows the replay live."""
    rates = [
        Sample.of("deepedge_serving_rate_rps", row[f"{name}_rps"], now, policy=policy, series=name)
        for name in SERIES
        if row.get(f"{name}_rps") is not None
    ]
    p95 = row.get("p95_ms")
    return [
        *rates,
        Sample.of("deepedge_serving_cost_per_hour", row["cost_per_hour"], now, policy=policy),
        Sample.of("deepedge_serving_p95_seconds", math.nan if p95 is None else p95 / 1e3, now,
                  policy=policy),
        Sample.of("deepedge_serving_replicas", row["ready"], now, policy=policy, state="ready"),
        Sample.of("deepedge_serving_replicas", row["starting"], now, policy=policy,
                  state="starting"),
    ]  # fmt: skip


class ServingSession:
    """The front end and replicas of one checkpoint on ``cluster`` (already started)."""

    def __init__(
        self,
        cluster: ClusterBackend,
        checkpoint: Path,
        workdir: Path,
        *,
        payload_bytes: int,
        flavours: Sequence[Flavour],
        catalog: CostCatalog,
        slo_ms: float,
        devices: Sequence[str] | None = None,
        python: str = sys.executable,
        replica_args: Sequence[str] = (),
        images: Path | None = None,
        status: Callable[[str], None] = lambda _m: None,
    ) -> None:
        if not slo_ms > 0:
            raise SpecError(f"the SLO must be positive, got {slo_ms} ms")
        self.cluster = cluster
        self.workdir = Path(workdir)
        self.flavours = {f.name: f for f in flavours}
        self.catalog = catalog
        self.slo_ms = slo_ms
        self.status = status
        self.payload_bytes = payload_bytes
        self.images = images  # requests carry these images in turn (else one random image)
        self.events: list[tuple[float, str, str]] = []
        self.frontend = FrontendProcess(python=python, log_path=self.workdir / "frontend.log")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.frontend.start(timeout_s=60)
        try:
            self.pool = ReplicaPool(
                cluster,
                checkpoint,
                self.frontend,
                self.workdir / "replicas",
                payload_bytes=payload_bytes,
                devices=devices,
                python=python,
                replica_args=replica_args,
                on_event=lambda kind, msg: self.events.append((time.monotonic(), kind, msg)),
            )
        except BaseException:
            self.frontend.stop()
            raise

    # -- the latency model ----------------------------------------------------------------
    def measure_latency(
        self,
        *,
        replicas: Sequence[int] = (1, 2),
        loads: Sequence[float] = (0.15, 0.35, 0.55, 0.7, 0.85),
        step_s: float = 4.0,
        min_requests: int = 300,
        seed: int = 0,
    ) -> LatencyMeasurement:
        """p95 against arrival rate for every flavour and replica count, at ``loads`` ×
        the replicas' nominal CPU capacity (flavour cores / CPU per request, first
        estimated on one replica), and each flavour's capacity from the CPU its replicas
        spent per request under that load."""
        cpu_per_request = self._cpu_per_request(seed)
        points: list[LatencyPoint] = []
        capacities: dict[str, list[float]] = {}
        for flavour in sorted(self.flavours.values(), key=lambda f: f.cores):
            for c in replicas:
                placement = spread(self.pool.capacity, flavour, c)
                if sum(n for per in placement.values() for n in per.values()) < c:
                    self.status(f"    {c}×{flavour.name} do not fit on the devices: skipped")
                    continue
                self.pool.apply(placement, self.flavours)
                self.pool.wait_ready(_BOOT_TIMEOUT_S)
                self._settle_drains()
                nominal = c * flavour.cores / cpu_per_request
                # a warm-up step at the middle load (discarded), then one step per load,
                # long enough for ~min_requests (a p95 of 30 samples is noise)
                rates = [max(1.0, f * nominal) for f in (loads[len(loads) // 2], *loads)]
                steps = [max(step_s, min(min_requests / r, 3 * step_s)) for r in rates]
                bounds = np.concatenate([[0.0], np.cumsum(steps)])
                cpu_before = self._replica_cpu()
                started, records = self._constant_load(rates, steps, seed)
                served = sum(1 for r in records if r.ok)
                if served:
                    per_request = (self._replica_cpu() - cpu_before) / served
                    capacities.setdefault(flavour.name, []).append(flavour.cores / per_request)
                measured = []
                for i, rate in enumerate(rates[1:], start=1):
                    lo, hi = started + bounds[i] + 0.5, started + bounds[i + 1]
                    stats = latency_summary(records, deadline_ms=self.slo_ms, start_s=lo, end_s=hi)
                    if stats.requests and math.isfinite(stats.p95_ms):  # not failed requests
                        measured.append(
                            LatencyPoint(flavour.name, c, rate, stats.p95_ms, None, stats.requests)
                        )
                points.extend(measured)
                self.status(
                    f"    {c}×{flavour.name}: p95 "
                    + ", ".join(f"{p.p95_ms:.0f}" for p in measured)
                    + f" ms at {', '.join(f'{p.rate_rps:.0f}' for p in measured)} rps"
                )
        self.pool.apply({}, self.flavours)
        self._settle_drains()
        return LatencyMeasurement(
            points, {f: float(np.median(v)) for f, v in capacities.items()}, cpu_per_request
        )

    def _replica_cpu(self) -> float:
        """CPU seconds the ready replicas have used, all together."""
        return sum(
            self.cluster.devices[r.device].partition_usage(r.partition).cpu_seconds
            for r in self.pool.ready()
        )

    def _cpu_per_request(self, seed: int) -> float:
        """CPU seconds one request costs a replica: served at a low rate on the largest
        flavour, from its partition's CPU time."""
        flavour = max(self.flavours.values(), key=lambda f: f.cores)
        self.pool.apply(spread(self.pool.capacity, flavour, 1), self.flavours)
        self.pool.wait_ready(_BOOT_TIMEOUT_S)
        replica = self.pool.ready()[0]
        device = self.cluster.devices[replica.device]
        before = device.partition_usage(replica.partition).cpu_seconds
        _, records = self._constant_load([20.0], [3.0], seed)
        used = device.partition_usage(replica.partition).cpu_seconds - before
        served = sum(1 for r in records if r.ok)
        if not served:
            raise SpecError("no request was served while measuring the replicas' CPU cost")
        per = used / served
        self.status(f"    a request costs a replica {per * 1e3:.2f} ms of CPU")
        return per

    def _constant_load(
        self, rates: Sequence[float], steps_s: Sequence[float], seed: int
    ) -> tuple[float, list[RequestRecord]]:
        """``rates[i]`` for ``steps_s[i]`` seconds each; (start time, every request)."""
        starts = np.concatenate([[0.0], np.cumsum(steps_s)])
        schedule = tuple((float(t), r) for t, r in zip(starts, rates, strict=False))
        gen = LoadGenerator(
            [self._target(schedule)], seed=seed, duration_s=float(starts[-1]), timeout_s=10
        )
        gen.start()
        started = gen.started_at or time.time()
        while gen.running():
            self.pool.poll()
            time.sleep(_TICK_S)
        return started, gen.stop()

    def _target(self, schedule: tuple[tuple[float, float], ...]) -> LoadTarget:
        return LoadTarget(
            "serve",
            "127.0.0.1",
            self.frontend.port,
            max(r for _, r in schedule) or 1.0,
            payload_bytes=self.payload_bytes,
            protocol="http",
            schedule=schedule,
            images=str(self.images) if self.images else None,
        )

    def _settle_drains(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(r.state == "draining" for r in self.pool.replicas.values()):
            self.pool.poll()
            if time.monotonic() > deadline:
                break
            time.sleep(_TICK_S)

    # -- one policy over a trace --------------------------------------------------------------
    def replay(
        self,
        policy: Policy,
        trace: ReplayTrace,
        problem: ServingProblem,
        *,
        interval_s: float = 1.0,
        seed: int = 0,
        on_tick: Callable[[dict[str, Any]], None] | None = None,
    ) -> ServeResult:
        """Run ``policy`` over ``trace``; replicas left from an earlier replay are stopped
        first, so every policy starts from its own first decision."""
        self.pool.apply({}, self.flavours)
        self._settle_drains()
        self.events.clear()
        history = list(trace.history)
        first = Observation(
            t_s=0.0,
            hour=float(trace.start_hour),
            rate_rps=float(trace.window[0]),
            utilisation=None,
            placement={},
            ready=0,
            starting=0,
            history=np.asarray(history),
            lead_s=self.pool.cold_start_s(_DEFAULT_COLD_START_S) + interval_s,
            hour_s=trace.hour_s,
            interval_s=interval_s,
            ready_placement={},
        )
        decision = policy.decide(first)
        self.pool.apply(decision.placement, self.flavours)
        self.pool.wait_ready(_BOOT_TIMEOUT_S)
        self.pool.counters = type(self.pool.counters)()  # the initial boot is not scaling
        self.events.clear()
        self.pool.utilisation()  # first CPU reading

        gen = LoadGenerator(
            [self._target(trace.schedule())],
            seed=seed,
            duration_s=trace.duration_s,
            timeout_s=10,
            max_connections=256,
        )
        gen.start()
        t0 = time.monotonic()
        timeline: list[dict[str, Any]] = []
        per_hour = np.zeros(len(trace.window) + 1)  # requests scheduled in each trace hour
        recent: deque[float] = deque()  # scheduled times (s from start) of the last interval
        interval_records: list[RequestRecord] = []
        cost = 0.0  # in currency: price per trace hour × trace hours
        last_tick = t0
        next_decision = t0 + interval_s
        hours_done = 0
        wall0 = gen.started_at or time.time()
        try:
            while gen.running():
                time.sleep(_TICK_S)
                now = time.monotonic()
                cost += self.pool.cost_per_hour(self.catalog) * (now - last_tick) / trace.hour_s
                last_tick = now
                self.pool.poll()
                for rec in gen.drain():
                    at = rec.scheduled_s - wall0
                    per_hour[min(max(int(at // trace.hour_s), 0), len(trace.window))] += 1
                    recent.append(at)
                    interval_records.append(rec)
                elapsed = now - t0
                while hours_done < len(trace.window) and elapsed >= (hours_done + 1) * trace.hour_s:
                    history.append(per_hour[hours_done] / trace.hour_s)
                    hours_done += 1
                if now < next_decision:
                    continue
                next_decision += interval_s
                while recent and recent[0] < elapsed - interval_s:
                    recent.popleft()  # (records complete a little out of order: counted below)
                obs = Observation(
                    t_s=elapsed,
                    hour=trace.start_hour + elapsed / trace.hour_s,
                    rate_rps=sum(a >= elapsed - interval_s for a in recent) / interval_s,
                    utilisation=self.pool.utilisation(),
                    placement=self.pool.placement(),
                    ready=len(self.pool.ready()),
                    starting=len(self.pool.starting()),
                    history=np.asarray(history),
                    lead_s=self.pool.cold_start_s(_DEFAULT_COLD_START_S) + interval_s,
                    hour_s=trace.hour_s,
                    interval_s=interval_s,
                    ready_placement=self.pool.placement(ready_only=True),
                )
                decision = policy.decide(obs)
                actions = self.pool.apply(
                    decision.placement,
                    self.flavours,
                    make_before_break=decision.make_before_break,
                )
                row = self._row(
                    obs, decision, problem, trace, interval_records, actions, cost, interval_s
                )
                interval_records = []
                timeline.append(row)
                if on_tick:
                    on_tick(row)
        finally:
            records = gen.stop()
        return ServeResult(
            policy.name,
            self._summary(policy.name, records, trace, cost, problem),
            timeline,
            records,
            [(t - t0, m) for t, kind, m in self.events if kind != "ready"],
        )

    def _row(
        self,
        obs: Observation,
        decision: Decision,
        problem: ServingProblem,
        trace: ReplayTrace,
        records: list[RequestRecord],
        actions: list[str],
        cost: float,
        interval_s: float,
    ) -> dict[str, Any]:
        # the trace's rate over the interval just observed (what obs.rate_rps measured)
        hour_index = min(
            int(max(obs.t_s - 0.5 * interval_s, 0.0) / trace.hour_s), len(trace.window) - 1
        )
        ready = self.pool.placement(ready_only=True)
        lat = [r.latency_ms for r in records if r.ok and math.isfinite(r.latency_ms)]
        failed = sum(1 for r in records if not r.ok)
        return {
            "t_s": round(obs.t_s, 3),
            "hour": round(obs.hour, 3),
            "trace_rps": float(trace.window[hour_index]),
            "observed_rps": obs.rate_rps,
            "forecast_rps": decision.forecast_rps,
            "planned_rps": decision.planned_rps,
            "capacity_rps": problem.capacity_rps(ready),
            "provisioned_rps": problem.capacity_rps(decision.placement),
            "cost_per_hour": self.pool.cost_per_hour(self.catalog),
            "cost_so_far": cost,
            "ready": obs.ready,
            "starting": obs.starting,
            "utilisation": obs.utilisation,
            "p95_ms": float(np.percentile(lat, 95)) if lat else None,
            "failed": failed,
            "actions": actions,
            "note": decision.note,
        }

    def _summary(
        self,
        policy: str,
        records: list[RequestRecord],
        trace: ReplayTrace,
        cost: float,
        problem: ServingProblem,
    ) -> dict[str, Any]:
        stats = latency_summary(records, deadline_ms=self.slo_ms, window_s=1.0)
        counters = self.pool.counters
        return {
            "policy": policy,
            "requests": int(stats.requests),
            "within_slo": 1.0 - stats.miss_rate if stats.requests else math.nan,
            "failed": stats.failed,
            "p95_ms": stats.p95_ms,
            "p99_ms": stats.p99_ms,
            "windows": stats.windows,
            "windows_violated": stats.slo_window_violations,
            "cost": cost,
            "currency": self.catalog.currency,
            "trace_hours": len(trace.window),
            "scaling_actions": counters.total(),
            "started": counters.started,
            "stopped": counters.stopped,
            "resized": counters.resized,
            "replaced": counters.replaced,
            "cold_start_s": [asdict(c) for c in self.pool.cold_starts],
            "slo_ms": self.slo_ms,
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pool.stop()
        self.frontend.stop()

    def __enter__(self) -> ServingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
