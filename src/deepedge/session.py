"""An edge session: the emulated cluster up, its LC apps serving under load, agents ready.

Start-up order matters for honest numbers. Devices boot with their CPU limit lifted (the
torch import of a dozen processes would otherwise take minutes under small quotas, and
boot time is not what deepedge measures); the limits are applied before the load generator
starts, so every latency and training number is taken on fenced devices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deepedge.apps import LoadGenerator, LoadTarget, RequestRecord, server_command, wait_ready
from deepedge.cluster import BackendFactory, ClusterBackend, make_backend
from deepedge.errors import ClusterError, DeepEdgeError
from deepedge.monitor import (
    MetricsServer,
    Monitor,
    TimeSeriesStore,
    default_samplers,
    serve_metrics,
)
from deepedge.spec import AppSpec, ClusterSpec, DeviceSpec
from deepedge.train.pool import AgentPool

__all__ = ["EdgeSession", "Phase", "lc_target"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """A labelled wall-clock interval (e.g. one training run) for slicing LC latencies."""

    label: str
    start: float
    end: float


def lc_target(app: AppSpec, port: int, host: str) -> LoadTarget:
    """The load generator's target for ``app``: Poisson at its rate, or replaying its
    ``rate_trace`` (a schedule of hourly rates from the generator's start)."""
    target = LoadTarget.from_app(app, port, host=host)
    if app.rate_trace is None:
        return target
    from deepedge.serving.lc_rates import replay_schedule

    return dataclasses.replace(target, schedule=replay_schedule(app.rate_trace))


@dataclass
class EdgeSession:
    """Context manager: ``with EdgeSession(spec, workdir) as s: s.agents.train(...)``.

    While it runs, a :class:`~deepedge.monitor.Monitor` samples every device, process and
    LC app into ``workdir/monitor.sqlite`` (``monitor_interval_s=None`` turns it off),
    and ``metrics_port`` (0 = any free port) serves them on ``/metrics``. With
    ``agents_enabled=False`` no training agents start (monitoring only).
    """

    spec: ClusterSpec
    workdir: Path
    force_fallback: bool = False
    seed: int = 0
    status: Callable[[str], None] = lambda msg: None
    agents_enabled: bool = True
    monitor_interval_s: float | None = 1.0
    metrics_port: int | None = None
    monitor_db: Path | None = None  # default: workdir/monitor.sqlite
    backend: BackendFactory = make_backend
    cluster: ClusterBackend = field(init=False)
    agents: AgentPool = field(init=False)
    phases: list[Phase] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    live_records: list[RequestRecord] = field(default_factory=list)
    """Records as the monitor drains them while the session runs (``records`` is complete
    only once the session stops)."""
    monitor: Monitor | None = None
    metrics: MetricsServer | None = None
    _loadgen: LoadGenerator | None = None
    _store: TimeSeriesStore | None = None
    _live_done_s: float = 0.0  # when the newest drained request finished
    _monitored: int = 0  # live_records the monitor has been given
    _live_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.cluster = self.backend(self.spec, force_fallback=self.force_fallback)
        self.spec = self.cluster.spec  # with catalog defaults filled in
        self.agents = AgentPool(
            self.cluster.devices, self.workdir / "logs", host=self.cluster.coordinator_address
        )

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        self.cluster.start()
        # a backend may know its devices and its address only once started (Ray nodes)
        self.agents = AgentPool(
            self.cluster.devices, self.workdir / "logs", host=self.cluster.coordinator_address
        )
        try:
            for dev in self.cluster.devices.values():
                dev.set_cpu_limit(None)
            self.status(
                f"booting {len(self.spec.devices)} devices "
                f"({self.cluster.emulation}, {self.cluster.network})"
            )
            servers = {}
            for app in self.spec.apps:
                ready = logs / f"app-{app.name}.ready"
                ready.unlink(missing_ok=True)
                device = self.cluster.devices[app.device]
                proc = device.spawn(
                    server_command(
                        app, ready, host=device.address, seed=self.seed, parent_pid=os.getpid()
                    ),
                    log_path=logs / f"app-{app.name}.log",
                )
                servers[app.name] = (proc, ready)
            if self.agents_enabled:
                self.agents.start()
            ports = {
                name: wait_ready(ready, proc, timeout_s=120)
                for name, (proc, ready) in servers.items()
            }
            for dev in self.cluster.devices.values():
                dev.set_cpu_limit(dev.spec.cpu_cores)
            if self.spec.apps:
                self._loadgen = LoadGenerator(
                    [
                        lc_target(a, ports[a.name], self.cluster.devices[a.device].address)
                        for a in self.spec.apps
                    ],
                    seed=self.seed,
                )
                self._loadgen.start()
            self._start_monitor()
        except BaseException:
            self.stop()
            raise

    def add_device(self, device: DeviceSpec) -> None:
        """Boot a device that joins the running session, and its training agent.

        As in :meth:`start`, it boots with its CPU limit lifted (its agent's torch import
        would take minutes under a small quota) and is fenced before this returns, so
        whatever is measured on it is measured under its limit. It runs no LC app. Once
        this returns, ``agents`` can profile it and a plan may give it a share, and
        :attr:`spec` is the cluster's spec with it; the monitor samples it from its next
        tick. On failure nothing of it is left running and a one-line
        :class:`ClusterError` names it and says what to do.
        """
        name = device.name
        try:
            dev = self.cluster.add_device(device)
        except DeepEdgeError as err:
            raise ClusterError(
                f"device {name!r} could not join the session: {err}",
                hint=err.hint or "fix the device's entry in the cluster spec",
            ) from None
        try:
            dev.set_cpu_limit(None)
            self.status(
                f"device {name} joins: booting it ({dev.spec.kind}, "
                f"{dev.spec.cpu_cores or 0:g} host cores, {self.cluster.emulation})"
            )
            if self.agents_enabled:
                self.agents.add(name, dev)
            dev.set_cpu_limit(dev.spec.cpu_cores)
        except BaseException as err:
            try:
                self.cluster.remove_device(name)
            except DeepEdgeError as left:
                raise ClusterError(
                    f"device {name!r} could not join the session ({err}), and removing it "
                    f"failed: {left}",
                    hint="run `deepedge cluster cleanup` once the session has stopped",
                ) from None
            if not isinstance(err, DeepEdgeError):
                raise  # Ctrl-C, or a bug: as it is, with nothing left behind
            raise ClusterError(
                f"device {name!r} could not join the session and was removed: {err}",
                hint=err.hint or f"see {self.workdir / 'logs'}",
            ) from None
        self.spec = self.cluster.spec
        self.status(f"device {name} joined the session")

    @property
    def store(self) -> TimeSeriesStore | None:
        """The monitor's time-series store while the session runs (None without a monitor)."""
        return self._store

    def _start_monitor(self) -> None:
        if self.monitor_interval_s is None:
            return
        samplers, off = default_samplers(
            self.cluster.devices,
            lc_drain=self._drain if self._loadgen else None,
            apps=self.spec.apps,
        )
        if self.monitor_db is None:
            self.monitor_db = self.workdir / "monitor.sqlite"
        self._store = TimeSeriesStore(self.monitor_db)
        self.monitor = Monitor(
            samplers,
            store=self._store,
            interval_s=self.monitor_interval_s,
            unavailable=off,
            on_unavailable=lambda name, why: self.status(f"monitor: {name} off ({why})"),
        ).start()
        if self.metrics_port is not None:
            self.metrics = serve_metrics(self.monitor.latest, port=self.metrics_port)
            self.status(f"metrics on {self.metrics.url}")

    def poll_lc(self) -> int:
        """Take the LC requests completed since the last poll into ``live_records`` now
        (the monitor polls every interval; the SLO guard cannot wait that long). Returns
        how many ``live_records`` holds."""
        if self._loadgen is None:
            return len(self.live_records)
        with self._live_lock:
            records = self._loadgen.drain()
            self.live_records.extend(records)
            if records:
                self._live_done_s = max(self._live_done_s, max(r.done_s for r in records))
            return len(self.live_records)

    def _drain(self) -> list[RequestRecord]:
        """The monitor's LC sampler: the records it has not seen yet."""
        end = self.poll_lc()
        records = self.live_records[self._monitored : end]
        self._monitored = end
        return records

    def lc_elapsed_s(self) -> float:
        """Seconds since the LC load started (0 before): how far into their traces the
        replays of traced apps are, which is where a forecast of their rates starts."""
        started = self._loadgen.started_at if self._loadgen is not None else None
        return max(0.0, time.time() - started) if started is not None else 0.0

    def set_lc_rate(self, app: str, rate_rps: float) -> None:
        """Change an LC app's request rate while the session runs (a load spike)."""
        if self._loadgen is None:
            raise ClusterError(
                "this session drives no LC load", hint="add LC apps to the cluster spec"
            )
        self._loadgen.set_rate(app, rate_rps)

    def lc_records(self, start_s: float, end_s: float) -> list[RequestRecord]:
        """Every LC request scheduled in ``[start_s, end_s)``, while the session runs.

        Requests are drained in the order they finish, and each finishes (or fails) within
        the load generator's timeout; so once one that finished a timeout after ``end_s``
        has been drained, every request of the slice is in, the slow ones included.
        """
        if self._loadgen is None:
            return [r for r in self.records if start_s <= r.scheduled_s < end_s]
        complete_at = end_s + self._loadgen.timeout_s
        deadline = time.monotonic() + 2 * self._loadgen.timeout_s + 10.0
        while self.poll_lc() == 0 or self._live_done_s < complete_at:
            if time.monotonic() > deadline:
                raise ClusterError(
                    "the load generator stopped reporting LC requests",
                    hint="see its errors in the session's output",
                )
            time.sleep(0.05)
        return [r for r in list(self.live_records) if start_s <= r.scheduled_s < end_s]

    def mark(self, label: str, start: float, end: float | None = None) -> Phase:
        phase = Phase(label, start, end if end is not None else time.time())
        self.phases.append(phase)
        return phase

    def stop(self) -> None:
        """Stop the load (keeping every record), the agents and the devices. Idempotent."""
        errors: list[BaseException] = []
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.monitor is not None:
            self.monitor.stop()  # keeps the object: its overhead() stays readable
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._loadgen is not None:
            try:
                self.records.extend(self._loadgen.stop())
            except Exception as err:
                errors.append(err)
            self._loadgen = None
        self.agents.close()
        try:
            self.cluster.stop()
        except ClusterError as err:
            errors.append(err)
        if errors:
            raise errors[0]

    def __enter__(self) -> EdgeSession:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
