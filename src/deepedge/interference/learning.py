"""Learning from training runs: every run measures LC latency under a known plan.

A static plan puts training at (local batch b, intensity c) beside each device's LC apps,
and the run measures what those apps' tails really were, over hundreds of requests and at
exactly the operating points plans choose. Each (device, app) of a run becomes one
interference row (campaign ``run:<cluster>``), estimated with the lab's estimator
(:func:`~deepedge.apps.latency_summary` over the run), and the model is refitted on the
lab's rows and the runs' rows together. The next plan's predictions and bounds then rest
on measurements where the planner operates, instead of on the lab's design alone.

A run differs from a lab run in one way: its trainer also waits for the all-reduce and the
slowest device, so it asks for less CPU than the lab's back-to-back steps at the same b
and c. Its rows therefore pull predictions down where runs wait, which is what the next
run at that point will see.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from deepedge.api import Scenario, TrainLoad
from deepedge.apps import AppLatencyStats, RequestRecord, latency_summary
from deepedge.interference.lab import device_key
from deepedge.interference.model import (
    InterferenceModel,
    LatencyPrediction,
    NoInterferenceModel,
    app_scenarios,
)
from deepedge.interference.planning import refit
from deepedge.interference.surrogate import StaleModel
from deepedge.profile.kb import KnowledgeBase
from deepedge.spec import ClusterSpec, JobSpec, Plan

__all__ = ["MIN_RUN_REQUESTS", "RUN_CAMPAIGN", "LearnedRun", "RunLatency", "learn_from_runs"]

RUN_CAMPAIGN = "run"
"""Campaign name prefix of rows learned from training runs."""
MIN_RUN_REQUESTS = 200
"""Fewer requests than this give a p95 from a handful of tail samples: noise, not a row."""


@dataclass(frozen=True)
class RunLatency:
    """One LC app over one run: the scenario the plan put it in, what the model predicted
    before the run (None without a model for it), and what the run measured."""

    policy: str
    device: str
    app: str
    scenario: Scenario
    measured: AppLatencyStats
    predicted: LatencyPrediction | None

    @property
    def bound_ratio(self) -> float | None:
        """The model's p95 upper bound over the measured p95 (1.0: as tight as can be)."""
        if self.predicted is None or not self.measured.p95_ms > 0:
            return None
        return self.predicted.p95_upper_ms / self.measured.p95_ms


@dataclass(frozen=True)
class LearnedRun:
    """What :func:`learn_from_runs` stored, and whether it refitted the model."""

    rows: list[RunLatency]
    skipped: dict[str, str]  # "policy/app" -> why no row was stored
    refitted: bool

    def describe(self) -> str:
        """One line for the console: what was learned, and what was not and why."""
        if not self.rows:
            why = "; ".join(f"{k}: {v}" for k, v in list(self.skipped.items())[:3])
            return "learned nothing from the runs" + (f" ({why})" if why else "")
        ratios = [r.bound_ratio for r in self.rows if r.bound_ratio is not None]
        text = f"learned {len(self.rows)} LC latency rows from the runs"
        if ratios:
            text += f" (p95 bound / measured before: median {statistics.median(ratios):.2f})"
        return text + ("; interference model refitted" if self.refitted else "")

    def summary(self) -> dict[str, object]:
        """For reports: each row's prediction before the run against its measurement."""
        return {
            "refitted": self.refitted,
            "skipped": self.skipped,
            "rows": [
                {
                    "policy": r.policy,
                    "device": r.device,
                    "app": r.app,
                    "scenario": r.scenario.to_dict(),
                    "requests": r.measured.requests,
                    "measured_p95_ms": r.measured.p95_ms,
                    "predicted_p95_ms": r.predicted.p95_ms if r.predicted else None,
                    "p95_upper_ms": r.predicted.p95_upper_ms if r.predicted else None,
                }
                for r in self.rows
            ],
        }


LOAD_CHANGE = 0.3
"""An app whose request rate over a run was off its spec's by more than this share (beyond
Poisson noise) is learnt at the rate it had: what the run saw was that load's latency."""


def run_latencies(
    spec: ClusterSpec,
    plan: Plan,
    records: Sequence[RequestRecord],
    start_s: float,
    end_s: float,
    *,
    min_requests: int = MIN_RUN_REQUESTS,
) -> tuple[list[tuple[str, str, Scenario, AppLatencyStats]], dict[str, str]]:
    """Each LC app's scenario under ``plan`` and its latency over ``[start_s, end_s)``.

    An app is placed at the request rate the run measured when it was off its spec's by
    more than :data:`LOAD_CHANGE` (a load spike), else at its spec's rate.
    Returns ``(rows, skipped)``: rows are (device, app, scenario, stats); an app is skipped
    when the plan has no fixed operating point (dynamic dispatch), when too few of its
    requests fall in the run, or when failures reach its p95.
    """
    rows, skipped = [], {}
    for device in spec.devices:
        apps = {a.name: (a.kind, a.rate_rps) for a in spec.apps if a.device == device.name}
        if not apps:
            continue
        if plan.micro_batch is not None:
            skipped.update(dict.fromkeys(apps, "dynamic dispatch has no fixed local batch"))
            continue
        batch = plan.local_batches.get(device.name, 0)
        train = TrainLoad(batch, plan.intensities.get(device.name, 1.0)) if batch else None
        summaries = {
            name: latency_summary(records, deadline_ms=1e9, start_s=start_s, end_s=end_s, app=name)
            for name in apps
        }
        for name, (kind, rate) in apps.items():
            expected, n = rate * (end_s - start_s), summaries[name].requests
            # a load spike (beyond 3 sigma of Poisson noise too): learn at the rate it had
            off = abs(n - expected)
            if expected > 0 and off > LOAD_CHANGE * expected and off > 3 * math.sqrt(expected):
                apps[name] = (kind, n / (end_s - start_s))
        for name, sc in app_scenarios(apps, train).items():
            stats = summaries[name]
            if stats.requests < min_requests:
                skipped[name] = f"{stats.requests} requests in the run (< {min_requests})"
            elif not math.isfinite(stats.p95_ms):
                skipped[name] = f"{stats.failed} failed requests reach the p95"
            else:
                rows.append((device.name, name, replace(sc, device=device.name), stats))
    return rows, skipped


def learn_from_runs(
    kb: KnowledgeBase,
    spec: ClusterSpec,
    job: JobSpec,
    runs: Sequence[tuple[Plan, float, float]],
    records: Sequence[RequestRecord],
    *,
    emulation: str,
    min_requests: int = MIN_RUN_REQUESTS,
) -> LearnedRun:
    """Store each LC app's latency over each run (plan, start, end) as an interference
    row, then refit the stored model once on every row (lab and runs) for ``job``.

    ``spec`` is the cluster as resolved by its backend (catalog capacities filled in) and
    ``emulation`` the backend's :attr:`~deepedge.cluster.ClusterBackend.emulation`, so rows
    land on the same device keys as the lab's. Predictions are those of the model stored
    before these runs. The model is refitted only when one is stored and a row was added:
    without a lab fit there are no usage books to compose features from.
    """
    keys = {d.name: device_key(d, spec, emulation) for d in spec.devices}
    try:
        model: InterferenceModel | None = InterferenceModel.load(kb)
    except (NoInterferenceModel, StaleModel):
        model = None
    rows: list[RunLatency] = []
    skipped: dict[str, str] = {}
    for plan, start_s, end_s in runs:
        measured, missed = run_latencies(
            spec, plan, records, start_s, end_s, min_requests=min_requests
        )
        skipped.update({f"{plan.policy}/{app}": why for app, why in missed.items()})
        for device, app, sc, stats in measured:
            predicted = None
            if model is not None and keys[device] in model.books:
                predicted = model.predict_latency(keys[device], sc)
            rows.append(RunLatency(plan.policy, device, app, sc, stats, predicted))
            kb.add_interference(
                keys[device],
                f"{RUN_CAMPAIGN}:{spec.name}",
                sc.to_dict(),
                {
                    "policy": plan.policy,
                    "window_s": end_s - start_s,
                    "requests": stats.requests,
                    "failed": stats.failed,
                    "p50_ms": stats.p50_ms,
                    "p95_ms": stats.p95_ms,
                    "p99_ms": stats.p99_ms,
                    # a DDP step's wait is not the lab's back-to-back training
                    "train_samples_per_s": None,
                },
            )
    refitted = bool(rows) and model is not None and refit(kb, job) is not None
    return LearnedRun(rows, skipped, refitted)
