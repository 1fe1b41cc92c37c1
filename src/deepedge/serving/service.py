"""``deepedge serve`` end to end: boot, measure or recall the latency model, replay, report.

:func:`serve` is what the CLI and ``bench/serving.py`` run. It validates the checkpoint
before booting anything, boots the cluster's devices (LC apps are not started: they
belong to a training session), starts the front end, and gets the latency model per
flavour from the knowledge base, keyed by the model's signature, the emulation and the
flavours, or measures and stores it. Then each policy replays the same trace, with the
same seed, one after the other on the same devices, and the report, the timelines and
the plots go to ``out``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepedge.cluster import make_backend
from deepedge.errors import SpecError
from deepedge.serving.costs import CostCatalog, Flavour
from deepedge.serving.forecast import SeasonalAutoReg
from deepedge.serving.kb import load_latency_models, save_latency_models
from deepedge.serving.latency import LatencyModel, latency_error, latency_png
from deepedge.serving.policies import (
    POLICIES,
    Barista,
    Policy,
    Reactive,
    ServingProblem,
    StaticPeak,
)
from deepedge.serving.run import ReplayTrace, ServeResult, ServingSession
from deepedge.spec import ClusterSpec

__all__ = ["ServeOptions", "ServeReport", "make_policy", "serve"]


@dataclass
class ServeOptions:
    """What to serve against: the SLO, flavours, prices, policies and the replay."""

    slo_ms: float
    flavours: Sequence[Flavour]
    catalog: CostCatalog
    policies: Sequence[str] = POLICIES
    interval_s: float = 1.0
    devices: Sequence[str] | None = None
    kb_path: Path | None = None
    refresh: bool = False  # measure the latency model again even if the KB has it
    profile_step_s: float = 4.0
    seed: int = 0
    force_fallback: bool = False

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown or not self.policies:
            raise SpecError(
                f"unknown serving policy {', '.join(unknown) or '(none)'}",
                hint=f"choose from {', '.join(POLICIES)}",
            )
        if not self.interval_s > 0:
            raise SpecError(f"the decision interval must be positive, got {self.interval_s}")


@dataclass
class ServeReport:
    results: dict[str, ServeResult]
    problem: ServingProblem
    latency: dict[str, Any]
    trace: ReplayTrace
    files: dict[str, str] = field(default_factory=dict)

    def summary_rows(self) -> list[dict[str, Any]]:
        return [r.summary for r in self.results.values()]


def make_policy(name: str, problem: ServingProblem, trace: ReplayTrace) -> Policy:
    """A fresh agent; ``reactive`` scales the flavour that gives the most SLO capacity when
    the devices are filled with it (a pod size that can reach the peak), ``static-peak``
    provisions for the replayed window's peak."""
    if name == "barista":
        return Barista(problem, SeasonalAutoReg)
    if name == "static-peak":
        return StaticPeak(problem, float(trace.window.max()))
    if name == "reactive":

        def most(f: str) -> float:  # SLO capacity with every device filled with f
            placed = problem.place(f, problem.max_replicas)
            return problem.capacity_rps(placed)

        return Reactive(problem, max(problem.flavours, key=most), cooldown_s=trace.hour_s)
    raise SpecError(f"unknown serving policy {name!r}", hint=f"choose from {', '.join(POLICIES)}")


def _kb_key(signature: str, emulation: str, flavours: Sequence[Flavour]) -> str:
    spec = ",".join(f"{f.name}={f.cores:g}:{f.memory_mb}" for f in flavours)
    return f"serving|{signature}|{emulation}|{spec}"


def serve(
    cluster_spec: ClusterSpec,
    checkpoint: Path,
    trace: ReplayTrace,
    options: ServeOptions,
    out: Path,
    *,
    status: Callable[[str], None] = lambda _m: None,
    on_tick: Callable[[str, dict[str, Any]], None] | None = None,
) -> ServeReport:
    """Serve ``checkpoint`` on the cluster under each policy in turn; see the module doc."""
    from deepedge.models import model_signature
    from deepedge.serving.model import load_served_model

    served = load_served_model(checkpoint)  # a bad checkpoint fails before any boot
    signature = model_signature(served.model, served.input_shape)
    out.mkdir(parents=True, exist_ok=True)
    cluster = make_backend(cluster_spec, force_fallback=options.force_fallback)
    with cluster:
        status(f"booting {len(cluster_spec.devices)} devices ({cluster.network})")
        if cluster_spec.apps:
            status(
                f"the spec's {len(cluster_spec.apps)} LC apps are not started: replicas may "
                "use each device's whole CPU (use --devices to keep some boards out)"
            )
        cluster.start()
        for w in cluster.warnings:
            status(f"[yellow]warning[/]: {w}")
        with ServingSession(
            cluster,
            checkpoint,
            out / "session",
            payload_bytes=served.payload_bytes,
            flavours=options.flavours,
            catalog=options.catalog,
            slo_ms=options.slo_ms,
            devices=options.devices,
            status=status,
        ) as session:
            for w in session.pool.warnings:
                status(f"[yellow]warning[/]: {w}")
            models, latency = _latency_models(
                session, signature, cluster.emulation, options, out, status
            )
            problem = ServingProblem(
                models,
                {f.name: f for f in options.flavours},
                options.catalog,
                session.pool.capacity,
                options.slo_ms,
            )
            results: dict[str, ServeResult] = {}
            for name in options.policies:
                status(
                    f"replaying {len(trace.window)} h of {trace.name} ({trace.duration_s:.0f} s)"
                    f" under {name}"
                )
                policy = make_policy(name, problem, trace)
                results[name] = session.replay(
                    policy,
                    trace,
                    problem,
                    interval_s=options.interval_s,
                    seed=options.seed,
                    on_tick=(lambda row, n=name: on_tick(n, row)) if on_tick else None,
                )
                s = results[name].summary
                status(
                    f"    {name}: {s['within_slo']:.2%} within {options.slo_ms:g} ms, "
                    f"{s['windows_violated']} of {s['windows']} 1 s windows violated, cost "
                    f"{s['cost']:.4f} {s['currency']}, {s['scaling_actions']} scaling actions"
                )
    report = ServeReport(results, problem, latency, trace)
    _write(report, out)
    return report


def _latency_models(
    session: ServingSession,
    signature: str,
    emulation: str,
    options: ServeOptions,
    out: Path,
    status: Callable[[str], None],
) -> tuple[dict[str, LatencyModel], dict[str, Any]]:
    from deepedge.knowledge import default_kb_path

    kb = options.kb_path or default_kb_path()
    key = _kb_key(signature, emulation, options.flavours)
    stored = None if options.refresh else load_latency_models(kb, key)
    if stored is not None:
        status(f"latency model of {len(stored)} flavours from the knowledge base ({kb})")
        return stored, {"source": "knowledge base", "key": key}
    status("measuring p95 against arrival rate per flavour and replica count")
    t0 = time.monotonic()
    measured = session.measure_latency(step_s=options.profile_step_s, seed=options.seed)
    points = measured.points
    models = measured.fit()
    save_latency_models(kb, key, models, points)
    err = latency_error(models, points)
    png = latency_png(models, points, out / "serving_latency.png")
    status(f"    fitted in {time.monotonic() - t0:.0f} s; {err}; plot {png}")
    return models, {
        "source": "measured",
        "key": key,
        "seconds": time.monotonic() - t0,
        "points": [p.__dict__ for p in points],
        "capacity_rps": measured.capacity_rps,
        "models": {f: m.to_dict() for f, m in models.items()},
        "error": str(err),
        "plot": str(png),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _write(report: ServeReport, out: Path) -> None:
    from deepedge.serving.plots import serving_png

    data = {
        "slo_ms": report.problem.slo_ms,
        "trace": {
            "name": report.trace.name,
            "start_hour": report.trace.start_hour,
            "hours": len(report.trace.window),
            "hour_s": report.trace.hour_s,
            "peak_rps": float(report.trace.window.max()),
        },
        "flavours": {
            f.name: {"cores": f.cores, "memory_mb": f.memory_mb}
            for f in report.problem.flavours.values()
        },
        "catalog": report.problem.catalog.__dict__,
        "latency": report.latency,
        "summary": report.summary_rows(),
        "timelines": {p: r.timeline for p, r in report.results.items()},
        "actions": {p: r.actions for p, r in report.results.items()},
    }
    path = out / "serve_report.json"
    path.write_text(json.dumps(_jsonable(data), indent=1))
    report.files["report"] = str(path)
    report.files["plot"] = str(serving_png(report.results, report.trace, out / "serving.png"))
