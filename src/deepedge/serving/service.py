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

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepedge.apps.loadgen import image_payloads
from deepedge.cluster import make_backend
from deepedge.cluster.api import ClusterBackend
from deepedge.errors import DataError, MonitorError, SpecError
from deepedge.monitor.store import TimeSeriesStore
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
from deepedge.serving.run import ReplayTrace, ServeResult, ServingSession, tick_samples
from deepedge.spec import ClusterSpec

if TYPE_CHECKING:
    from deepedge.serving.model import ServedModel

LIVE_DB = "serving.sqlite"
"""Where ``serve`` writes each decision interval as it happens (in ``out``)."""

__all__ = ["LIVE_DB", "CloudOffload", "ServeOptions", "ServeReport", "make_policy", "serve"]


@dataclass(frozen=True)
class CloudOffload:
    """Serve a MEANet edge checkpoint with its cloud exit: the cloud model
    (``meanet-cloud.ckpt`` beside the edge's) runs on ``device``, whose link is the WAN,
    behind a relay adding ``rtt_ms``; edge replicas exit by these normalised-entropy
    thresholds (:class:`deepedge.meanet.ExitRule`)."""

    device: str
    rtt_ms: float = 40.0
    main_threshold: float = 0.3
    cloud_threshold: float = 0.6

    def __post_init__(self) -> None:
        for name in ("main_threshold", "cloud_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SpecError(
                    f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}",
                    hint="thresholds are normalised entropies: 0 certain, 1 uniform",
                )
        if not 0.0 <= self.rtt_ms <= 10_000:
            raise SpecError(f"--wan-rtt-ms must be in [0, 10000], got {self.rtt_ms}")

    @property
    def key(self) -> str:
        """What of it the latency model depends on (for the knowledge base's key)."""
        return f"cloud {self.main_threshold:g}/{self.cloud_threshold:g} rtt {self.rtt_ms:g}"

    def replica_args(self, address: str) -> list[str]:
        return [
            "--cloud",
            address,
            f"--main-threshold={self.main_threshold}",
            f"--cloud-threshold={self.cloud_threshold}",
        ]


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
    images: Path | None = None  # requests carry these images (ArrayDataset file) in turn
    cloud: CloudOffload | None = None  # a MEANet edge checkpoint's cloud exit

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
    images = options.images or _meanet_test_set(served, checkpoint)
    if images is not None:  # a bad image file fails before any boot too
        try:
            image_payloads(images, served.payload_bytes)
        except ValueError as exc:
            raise DataError(str(exc), hint="give a data set file of the model's images") from None
    devices, cloud_checkpoint = _cloud_placement(cluster_spec, served, checkpoint, options)
    if options.cloud is not None:  # the latency model holds for these exits and this WAN
        signature += f"|{options.cloud.key}"
    out.mkdir(parents=True, exist_ok=True)
    cluster = make_backend(cluster_spec, force_fallback=options.force_fallback)
    with cluster, contextlib.ExitStack() as stack:
        status(f"booting {len(cluster_spec.devices)} devices ({cluster.network})")
        if cluster_spec.apps:
            status(
                f"the spec's {len(cluster_spec.apps)} LC apps are not started: replicas may "
                "use each device's whole CPU (use --devices to keep some boards out)"
            )
        cluster.start()
        for w in cluster.warnings:
            status(f"[yellow]warning[/]: {w}")
        replica_args: list[str] = []
        if options.cloud is not None and cloud_checkpoint is not None:  # both, or neither
            replica_args = options.cloud.replica_args(
                stack.enter_context(_cloud(cluster, options.cloud, cloud_checkpoint, out, status))
            )
        with ServingSession(
            cluster,
            checkpoint,
            out / "session",
            payload_bytes=served.payload_bytes,
            flavours=options.flavours,
            catalog=options.catalog,
            slo_ms=options.slo_ms,
            devices=devices,
            replica_args=replica_args,
            images=images,
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
            # each interval's row, live, for the dashboard (deepedge serve --dashboard);
            # this serve's alone: an earlier one's would mix with it under the same policy
            for stale in (LIVE_DB, f"{LIVE_DB}-wal", f"{LIVE_DB}-shm"):
                (out / stale).unlink(missing_ok=True)
            live: list[TimeSeriesStore] = [stack.enter_context(TimeSeriesStore(out / LIVE_DB))]

            def tick(name: str, row: dict[str, Any]) -> None:
                if live:  # emptied once a write failed (a full disk): the replay goes on
                    try:
                        live[0].write(tick_samples(name, row, time.time()))
                    except MonitorError as err:
                        status(f"[yellow]warning[/]: no live serving data: {err.one_line()}")
                        live.clear()
                if on_tick is not None:
                    on_tick(name, row)

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
                    on_tick=lambda row, n=name: tick(n, row),
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


def _meanet_test_set(served: ServedModel, checkpoint: Path) -> Path | None:
    """The test images ``deepedge meanet train`` saved beside a MEANet checkpoint: which
    exit a request takes depends on its image, so one random image would not do."""
    from deepedge.meanet.pipeline import TEST_FILE
    from deepedge.models.meanet import MEANet

    test = checkpoint.parent / TEST_FILE
    return test if isinstance(served.model, MEANet) and test.is_file() else None


def _cloud_placement(
    spec: ClusterSpec, served: ServedModel, checkpoint: Path, options: ServeOptions
) -> tuple[Sequence[str] | None, Path | None]:
    """The devices replicas may use, and the cloud model's checkpoint, checked before boot:
    the cloud device hosts the cloud model only."""
    from deepedge.models.meanet import MEANet
    from deepedge.serving.model import load_served_model

    if options.cloud is None:
        return options.devices, None
    device = options.cloud.device
    if not isinstance(served.model, MEANet):
        raise SpecError(
            f"a cloud exit needs a MEANet edge checkpoint; {checkpoint} holds "
            f"{type(served.model).__name__}",
            hint="serve the meanet-edge.ckpt that deepedge meanet train wrote",
        )
    cloud_checkpoint = checkpoint.parent / "meanet-cloud.ckpt"
    load_served_model(cloud_checkpoint)  # missing or bad: one line, before any boot
    names = [d.name for d in spec.devices]
    if device not in names:
        raise SpecError(
            f"the cloud device {device!r} is not in cluster {spec.name!r}",
            hint=f"add it (a cloud-sized device whose link_mbps is the WAN) or pick one of "
            f"{', '.join(names)}",
        )
    devices = [d for d in (options.devices or names) if d != device]
    if not devices or (options.devices and device in options.devices):
        raise SpecError(
            f"device {device!r} runs the cloud model; edge replicas need other devices",
            hint="leave the cloud device out of --devices",
        )
    return devices, cloud_checkpoint


@contextlib.contextmanager
def _cloud(
    cluster: ClusterBackend,
    cloud: CloudOffload,
    checkpoint: Path,
    out: Path,
    status: Callable[[str], None],
) -> Iterator[str]:
    from deepedge.meanet.deploy import Wan, cloud_behind_wan

    handle = cluster.devices[cloud.device]
    wan = Wan(handle.spec.link_mbps or 1000.0, cloud.rtt_ms)
    shaped = cluster.spec.network == "netns"
    status(
        f"cloud model on {cloud.device}: {wan.rtt_ms:g} ms round trip"
        + (f", {wan.mbps:g} Mbit/s link" if shaped else "; bandwidth not shaped (loopback)")
    )
    with cloud_behind_wan(cluster, cloud.device, checkpoint, wan, out / "cloud") as address:
        yield address


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
