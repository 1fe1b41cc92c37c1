"""The interference lab: controlled co-location runs on real emulated devices.

FECBench's measurement loop: put an LC app on a device at a known request rate, run
chosen co-runners beside it (resource stressors at calibrated intensities, and the real
training job at a batch size and intensity), drive the app with open-loop traffic and
measure its tail latency, the training job's throughput and what every resident
consumed. Every resident is a long-lived process inside the device's cgroup (and
namespace): servers of each LC app kind, one stressor worker per resource and the
training worker. Between runs only their knobs change, so a run costs its measurement
window, not process start-ups (importing torch under a 0.1-core quota takes seconds).

Intensity is the share of the device's CPU capacity a co-runner demands (its duty
cycle is ``intensity × quota`` of a core), so 0.5 means "half the device" on every
device kind; ``memcap`` intensity is the share of its memory budget instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from deepedge.api import RESOURCE_STRESSORS, Scenario
from deepedge.apps import (
    APP_KINDS,
    LoadGenerator,
    LoadTarget,
    latency_summary,
    server_command,
    wait_ready,
)
from deepedge.apps.server import payload_bytes
from deepedge.catalog import resolve_device
from deepedge.cluster import BackendFactory, make_backend
from deepedge.errors import ClusterError, SpecError
from deepedge.interference.stressors import (
    Counters,
    StressorProcess,
    StressorUnavailable,
    Usage,
    usage_between,
)
from deepedge.profile.throughput import device_hardware
from deepedge.spec import AppSpec, ClusterSpec, DeviceSpec, JobSpec

__all__ = ["InterferenceLab", "RunResult", "device_key"]

_MEMCAP_LIMIT_MB = 1024  # the host has 24 GiB for every device together


def device_key(device: DeviceSpec, cluster: ClusterSpec, emulation: str) -> str:
    """Canonical JSON of what fixes how a device reacts to load (its interference identity)."""
    return json.dumps(
        {
            "kind": device.kind,
            "link_mbps": device.link_mbps if cluster.network == "netns" else None,
            **device_hardware(device, cluster, emulation),
        },
        sort_keys=True,
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class RunResult:
    """What one run measured: the target app's latency, training throughput, usage."""

    scenario: Scenario
    window_s: float
    requests: int
    failed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    train_samples_per_s: float | None
    usage: dict[str, dict[str, float]]  # resident -> Usage fields measured in the window
    errors: dict[str, str] = field(default_factory=dict)  # resident -> its last error

    def to_dict(self) -> dict[str, Any]:
        return {
            "errors": self.errors,
            "window_s": self.window_s,
            "requests": self.requests,
            "failed": self.failed,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "train_samples_per_s": self.train_samples_per_s,
            "usage": self.usage,
        }


def _app_resident(kind: str) -> str:
    return f"app:{kind}"


def _stressor_resident(kind: str) -> str:
    return f"stressor:{kind}"


@dataclass
class _AppServer:
    spec: AppSpec
    port: int
    host: str
    proc: Any  # subprocess.Popen

    @property
    def payload(self) -> int:
        return payload_bytes(self.spec.kind)

    def counters(self) -> tuple[float, float, float, float]:
        """(wall, cpu seconds, rss MB, bytes written) of the server right now."""
        p = psutil.Process(self.proc.pid)
        with p.oneshot():
            cpu = p.cpu_times()
            rss = p.memory_info().rss / 2**20
            try:
                written = float(p.io_counters().write_bytes)
            except (psutil.AccessDenied, AttributeError):
                written = 0.0
        return time.monotonic(), cpu.user + cpu.system, rss, written


class InterferenceLab:
    """Boots devices with every LC app kind, stressor and the training worker; runs scenarios.

    Use as a context manager. ``devices`` picks which of the cluster's devices to use
    (default all); the cluster's own LC apps are not started: the lab runs its suite.
    A stressor that cannot run on a device (no GPU, no disk space, …) is reported through
    ``status`` and listed in :attr:`skipped`, never silently treated as zero load.
    """

    def __init__(
        self,
        cluster: ClusterSpec,
        job: JobSpec,
        workdir: Path,
        *,
        devices: list[str] | None = None,
        app_kinds: tuple[str, ...] = APP_KINDS,
        stressor_kinds: tuple[str, ...] = RESOURCE_STRESSORS,
        status: Callable[[str], None] = lambda msg: None,
        settle_s: float = 1.0,
        requests_per_run: int = 800,
        window_s: tuple[float, float] = (4.0, 12.0),
        force_fallback: bool = False,
        seed: int = 0,
        backend: BackendFactory = make_backend,
    ) -> None:
        names = [d.name for d in cluster.devices]
        chosen = devices or names
        missing = [n for n in chosen if n not in names]
        if missing:
            raise SpecError(
                f"device {missing[0]!r} is not in cluster {cluster.name!r}",
                hint=f"pick from {names}",
            )
        unknown = [k for k in stressor_kinds if k not in RESOURCE_STRESSORS]
        if unknown:
            raise SpecError(
                f"unknown stressor {unknown[0]!r}", hint=f"use one of {list(RESOURCE_STRESSORS)}"
            )
        self.spec = cluster.model_copy(
            update={
                "apps": [],
                "devices": [resolve_device(d) for d in cluster.devices if d.name in chosen],
            }
        )
        self.job = job
        self.workdir = Path(workdir)
        self.app_kinds = tuple(app_kinds)
        self.stressor_kinds = tuple(stressor_kinds)
        self.status = status
        self.settle_s = settle_s
        self.requests_per_run = requests_per_run
        self.window_range = window_s
        self.seed = seed
        self.cluster = backend(self.spec, force_fallback=force_fallback)
        self.skipped: dict[str, dict[str, str]] = {}  # device -> stressor kind -> why
        self._apps: dict[str, dict[str, _AppServer]] = {}
        self._stressors: dict[str, dict[str, StressorProcess]] = {}
        self._trainers: dict[str, StressorProcess] = {}
        self._runs = 0

    # --- lifecycle

    @property
    def devices(self) -> dict[str, DeviceSpec]:
        return {d.name: d for d in self.spec.devices}

    def device_key(self, device: str) -> str:
        return device_key(self.devices[device], self.spec, self.cluster.emulation)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        self.cluster.start()
        try:
            for handle in self.cluster.devices.values():
                handle.set_cpu_limit(None)  # boot at full speed; the quota returns below
            devices = self.cluster.devices
            self.status(f"booting interference lab on {', '.join(devices)} (side by side)")
            # Every resident of every device is spawned first, then each is waited for:
            # their start-up (interpreters importing torch) is the wait, and one device
            # after another took 5 × as long on the demo cluster.
            spawned = {n: self._spawn_apps(n, handle, logs) for n, handle in devices.items()}
            for name, handle in devices.items():
                self._launch_stressors(name, handle)
            for name, servers in spawned.items():
                self._apps[name] = {
                    kind: _AppServer(app, wait_ready(ready, proc, timeout_s=120), address, proc)
                    for kind, (app, proc, ready, address) in servers.items()
                }
            for name in devices:
                self._await_stressors(name)
            for handle in self.cluster.devices.values():
                handle.set_cpu_limit(handle.spec.cpu_cores)
        except BaseException:
            self.close()
            raise

    def _spawn_apps(
        self, name: str, handle: Any, logs: Path
    ) -> dict[str, tuple[AppSpec, Any, Path, str]]:
        """Start ``name``'s LC app servers; returns without waiting for them."""
        servers: dict[str, tuple[AppSpec, Any, Path, str]] = {}
        for kind in self.app_kinds:
            # named per device: one load generator serves the devices run side by side
            app = AppSpec(
                name=f"{name}-{kind.replace('_', '-')}",
                device=name,
                kind=kind,
                rate_rps=1,
                deadline_ms=1e6,
            )
            ready = logs / f"{app.name}.ready"
            ready.unlink(missing_ok=True)
            proc = handle.spawn(
                server_command(app, ready, host=handle.address, parent_pid=os.getpid()),
                log_path=logs / f"{app.name}.log",
            )
            servers[kind] = (app, proc, ready, handle.address)
        return servers

    def _launch_stressors(self, name: str, handle: Any) -> None:
        """Spawn ``name``'s stressors and its training co-runner (see :meth:`_await_stressors`)."""
        workers: dict[str, StressorProcess] = {}
        for kind in self.stressor_kinds:
            options: dict[str, Any] = {}
            if kind == "memcap":
                options["max_mb"] = self.memcap_mb(name)
            workers[kind] = StressorProcess(
                kind,
                handle,
                host=self.cluster.coordinator_address,
                workdir=self.workdir / f"stress-{name}-{kind}",
                options=options,
            )
        self._stressors[name] = workers  # registered at once: close() stops what started
        self._trainers[name] = StressorProcess(
            "train",
            handle,
            host=self.cluster.coordinator_address,
            workdir=self.workdir / f"train-{name}",
            options={"job": self.job.model_dump(mode="json")},
        )
        for worker in [*workers.values(), self._trainers[name]]:
            worker.launch()

    def _await_stressors(self, name: str) -> None:
        """Wait for ``name``'s stressors' hellos; a kind that cannot run there is skipped."""
        workers = self._stressors[name]
        for kind, worker in list(workers.items()):
            try:
                worker.await_started()
            except StressorUnavailable as err:
                self.skipped.setdefault(name, {})[kind] = err.reason
                self.status(f"stressor {kind} on {name} skipped: {err.reason}")
                del workers[kind]
        self._trainers[name].await_started()

    def close(self) -> None:
        """Stop every resident and the devices. Idempotent."""
        for handle in self.cluster.devices.values():
            # a torch process exits in a second unthrottled, in many under a small quota
            with contextlib.suppress(Exception):
                handle.set_cpu_limit(None)
        for workers in self._stressors.values():
            for w in workers.values():
                with contextlib.suppress(Exception):
                    w.close()
        for t in self._trainers.values():
            with contextlib.suppress(Exception):
                t.close()
        self._stressors.clear()
        self._trainers.clear()
        self._apps.clear()
        self.cluster.stop()

    def __enter__(self) -> InterferenceLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def run_count(self) -> int:
        """Runs measured so far (calibration included)."""
        return self._runs

    # --- knobs

    def available_stressors(self, device: str) -> tuple[str, ...]:
        return tuple(self._stressors.get(device, {}))

    def skip(self, device: str, kind: str, reason: str) -> None:
        """Take a stressor out of use on ``device`` (it could not reach its intensity)."""
        worker = self._stressors.get(device, {}).pop(kind, None)
        if worker is not None:
            worker.close()
        self.skipped.setdefault(device, {})[kind] = reason

    def memcap_mb(self, device: str) -> float:
        """The memory budget a ``memcap`` intensity of 1 holds on ``device``."""
        spec = self.devices[device]
        headroom = (spec.memory_mb or 0) - (spec.reserved_mb or 0) - 1200  # apps + training
        return float(max(64, min(_MEMCAP_LIMIT_MB, headroom)))

    def duty(self, device: str, intensity: float) -> float:
        """The worker's duty cycle for ``intensity`` (a share of the device's CPU)."""
        return min(1.0, intensity * float(self.devices[device].cpu_cores or 1.0))

    def _apply(self, sc: Scenario) -> None:
        skipped = self.skipped.get(sc.device, {})
        bad = [k for k, v in sc.stressors.items() if v > 0 and k in skipped]
        if bad:
            raise ClusterError(
                f"stressor {bad[0]} is unavailable on {sc.device}: {skipped[bad[0]]}",
                hint="leave it out of the scenario",
            )
        for kind, worker in self._stressors[sc.device].items():
            level = float(sc.stressors.get(kind, 0.0))
            worker.set(level if kind == "memcap" else self.duty(sc.device, level))
        trainer = self._trainers[sc.device]
        if sc.train is None:
            trainer.set(0.0)
        else:
            trainer.set(self.duty(sc.device, sc.train.intensity), batch=sc.train.batch)

    def _idle(self, device: str) -> None:
        for worker in self._stressors[device].values():
            worker.set(0.0)
        self._trainers[device].set(0.0)

    # --- runs

    def window_for(self, sc: Scenario) -> float:
        """Long enough for about ``requests_per_run`` requests, within the window range."""
        lo, hi = self.window_range
        rate = sc.rate_rps + sum(sc.other_apps.values())
        if rate <= 0:
            return lo
        return float(min(hi, max(lo, self.requests_per_run / rate)))

    def run(self, sc: Scenario, *, window_s: float | None = None) -> RunResult:
        """Apply ``sc``, let it settle, measure for the window, then idle the device."""
        return self.run_many([sc], window_s=window_s)[0]

    def run_many(
        self, scenarios: Sequence[Scenario], *, window_s: float | None = None
    ) -> list[RunResult]:
        """Run scenarios on distinct devices at the same time, over one shared window.

        On an emulated cluster the devices share the host, so measuring them together is
        how a training run finds them (every device busy at once) and takes one window
        instead of one per device. The window is the longest any scenario asks for, and
        one load generator drives every device's apps, so no generator's start-up (a
        second of host CPU) lands inside another device's measurement.
        """
        devices = [sc.device for sc in scenarios]
        for name in devices:
            if name not in self._stressors:
                raise SpecError(f"device {name!r} is not in this lab", hint=f"{list(self._apps)}")
        if len(set(devices)) < len(devices):
            raise SpecError("run_many needs scenarios on distinct devices", hint=f"{devices}")
        window = window_s if window_s is not None else max(map(self.window_for, scenarios))
        loadgen = None
        try:
            for sc in scenarios:
                self._apply(sc)
            time.sleep(self.settle_s)
            loadgen = self._loadgen(scenarios, window)
            self._runs += 1
            before = [self._read(sc.device) for sc in scenarios]
            time.sleep(window)
            after = [self._read(sc.device) for sc in scenarios]
            records = loadgen.stop() if loadgen is not None else []
        finally:
            if loadgen is not None:  # on the error path: no load generator outlives the run
                with contextlib.suppress(ClusterError):
                    loadgen.stop()
            for sc in scenarios:
                self._idle(sc.device)
        return [
            self._result(sc, window, b, a, records, loadgen)
            for sc, b, a in zip(scenarios, before, after, strict=True)
        ]

    @staticmethod
    def _apps_of(sc: Scenario) -> dict[str, float]:
        return {k: r for k, r in [(sc.app, sc.rate_rps), *sc.other_apps.items()] if k}

    def _loadgen(self, scenarios: Sequence[Scenario], window: float) -> LoadGenerator | None:
        targets = [
            LoadTarget.from_app(
                server.spec.model_copy(update={"rate_rps": rate}), server.port, host=server.host
            )
            for sc in scenarios
            for kind, rate in self._apps_of(sc).items()
            for server in [self._apps[sc.device][kind]]
        ]
        if not targets:
            return None
        loadgen = LoadGenerator(
            targets,
            seed=self.seed + self._runs,
            duration_s=window,
            timeout_s=max(10.0, window),
        )
        loadgen.start()
        return loadgen

    def _result(
        self,
        sc: Scenario,
        window: float,
        before: dict[str, Any],
        after: dict[str, Any],
        records: list[Any],
        loadgen: LoadGenerator | None,
    ) -> RunResult:
        apps = self._apps_of(sc)
        usage = {r: self._usage(r, before[r], after[r]) for r in before}
        for kind, rate in apps.items():  # requests cross the device's link (or loopback)
            usage[_app_resident(kind)]["net_mbps"] = (
                rate * self._apps[sc.device][kind].payload / 1e6
            )
        errors = {
            r: str(after[r].last_error)
            for r in before
            if isinstance(after[r], Counters) and after[r].errors > before[r].errors
        }
        active = {
            r: u
            for r, u in usage.items()
            if (r == "train" and sc.train is not None)
            or (r.startswith("stressor:") and sc.stressors.get(r.split(":", 1)[1], 0) > 0)
            or (r.startswith("app:") and r.split(":", 1)[1] in apps)
        }
        target = self._apps[sc.device][sc.app].spec.name if sc.app else None
        stats = (
            latency_summary(records, deadline_ms=1e9, app=target, start_s=loadgen.started_at)
            if target and loadgen is not None
            else None
        )
        train_rate = active["train"]["samples_per_s"] if "train" in active else None
        nan = math.nan
        return RunResult(
            scenario=sc,
            window_s=window,
            requests=stats.requests if stats else 0,
            failed=stats.failed if stats else 0,
            p50_ms=stats.p50_ms if stats else nan,
            p95_ms=stats.p95_ms if stats else nan,
            p99_ms=stats.p99_ms if stats else nan,
            train_samples_per_s=train_rate,
            usage=active,
            errors={r: e for r, e in errors.items() if r in active},
        )

    def _read(self, device: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            _stressor_resident(k): w.read() for k, w in self._stressors[device].items()
        }
        out["train"] = self._trainers[device].read()
        for kind, server in self._apps[device].items():
            out[_app_resident(kind)] = server.counters()
        return out

    def _usage(self, resident: str, before: Any, after: Any) -> dict[str, float]:
        if isinstance(before, Counters):
            kind = "train" if resident == "train" else resident.split(":", 1)[1]
            return usage_between(kind, before, after).to_dict()
        (w0, c0, _, b0), (w1, c1, rss, b1) = before, after
        dt = max(w1 - w0, 1e-9)
        return Usage(
            cpu_cores=(c1 - c0) / dt,
            rss_mb=rss,
            membw_mbps=0.0,
            llc_mbps=0.0,
            disk_mbps=(b1 - b0) / dt / 1e6,
            net_mbps=0.0,
            gpu_util=0.0,
        ).to_dict()
