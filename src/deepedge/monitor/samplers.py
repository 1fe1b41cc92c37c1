"""Samplers: each turns one source (psutil, cgroups, NVML, tegrastats, LC records) into samples.

A sampler is called from the monitor's single thread once per interval and must be cheap:
it reads counters and lets consumers compute rates (Prometheus ``rate()``, the store's
rollups), rather than sleeping to measure a rate itself. Cumulative values are therefore
emitted as counters wherever the source has them.

A source that cannot be used on this machine (no GPU, not a Jetson) raises
:class:`SamplerUnavailable` from the constructor or from :meth:`Sampler.sample`; the
monitor reports it once and keeps the others running. Everything else a sampler meets
while running — a process that exits between listing and reading, a device torn down
mid-tick — is normal churn and is skipped silently.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import psutil

from deepedge.apps.stats import RequestRecord, latency_summary
from deepedge.cluster.api import DeviceHandle
from deepedge.errors import DeepEdgeError
from deepedge.monitor.samples import Sample
from deepedge.spec import AppSpec

__all__ = [
    "DeviceSampler",
    "HostSampler",
    "LcLatencySampler",
    "NvmlSampler",
    "ProcessSampler",
    "Sampler",
    "SamplerUnavailable",
    "TegrastatsSampler",
    "parse_tegrastats",
    "process_role",
]

log = logging.getLogger(__name__)

_MB = 2**20
_MIN_CPU_DELTA_S = 0.1  # CPU seconds, all cores together


class SamplerUnavailable(Exception):
    """The sampler's source cannot be used here; the message says why (shown to the user)."""


@runtime_checkable
class Sampler(Protocol):
    name: str

    def sample(self, now: float) -> list[Sample]:
        """Read the source once; every returned sample carries ``ts=now``."""
        ...


# --------------------------------------------------------------------------- host


def _cpu_total(t: Any) -> float:
    """All CPU time in ``t``; Linux already counts guest time inside user/nice."""
    return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


class HostSampler:
    """The machine itself: every emulated device shares its CPUs, memory, disks and NICs.

    CPU utilisation is computed from the delta of ``psutil.cpu_times()`` between calls
    rather than with ``psutil.cpu_percent()``, whose hidden module-level state would be
    reset by any other caller in the process.
    """

    name = "host"

    def __init__(self) -> None:
        self._last_cpu = psutil.cpu_times()
        self._last_ratio = math.nan

    def _cpu_ratio(self) -> float:
        """Busy share since the previous reading; NaN until enough CPU time has passed.

        /proc/stat counts in 10 ms ticks, so deltas of a few ticks (a tick right after
        the constructor) would read as 0 % or 100 %; such readings are not taken.
        """
        cur = psutil.cpu_times()
        total = _cpu_total(cur) - _cpu_total(self._last_cpu)
        if total < _MIN_CPU_DELTA_S:
            return self._last_ratio
        idle = (cur.idle + getattr(cur, "iowait", 0.0)) - (
            self._last_cpu.idle + getattr(self._last_cpu, "iowait", 0.0)
        )
        self._last_cpu = cur
        self._last_ratio = min(1.0, max(0.0, 1.0 - idle / total))
        return self._last_ratio

    def sample(self, now: float) -> list[Sample]:
        vm = psutil.virtual_memory()
        out = [
            Sample.of("deepedge_host_cpu_utilization_ratio", self._cpu_ratio(), now),
            Sample.of("deepedge_host_cpu_count", psutil.cpu_count() or 0, now),
            Sample.of("deepedge_host_memory_used_bytes", vm.total - vm.available, now),
            Sample.of("deepedge_host_memory_total_bytes", vm.total, now),
        ]
        net = psutil.net_io_counters()
        if net is not None:  # None where /proc/net/dev is unreadable
            out.append(Sample.of("deepedge_host_network_sent_bytes_total", net.bytes_sent, now))
            out.append(Sample.of("deepedge_host_network_received_bytes_total", net.bytes_recv, now))
        disk = psutil.disk_io_counters()
        if disk is not None:  # None in many containers
            out.append(Sample.of("deepedge_host_disk_read_bytes_total", disk.read_bytes, now))
            out.append(Sample.of("deepedge_host_disk_written_bytes_total", disk.write_bytes, now))
        return out


# ------------------------------------------------------------------------ devices


class DeviceSampler:
    """Per-device CPU, memory and throttling, from each device's fence (its cgroup).

    Throttling is the signal that matters most here: an LC app missing deadlines on a
    device whose quota is exhausted is starved by training, not slow by itself.
    """

    name = "devices"

    def __init__(self, devices: Mapping[str, DeviceHandle]) -> None:
        self._devices = devices

    def sample(self, now: float) -> list[Sample]:
        out: list[Sample] = []
        for name, dev in self._devices.items():
            try:
                out.extend(self._device(name, dev, now))
            except (OSError, DeepEdgeError) as err:  # torn down mid-tick: skip this round
                log.debug("device %s not sampled: %s", name, err)
        return out

    @staticmethod
    def _device(name: str, dev: DeviceHandle, now: float) -> list[Sample]:
        usage = dev.usage()
        out = [
            Sample.of("deepedge_device_cpu_seconds_total", usage.cpu_seconds, now, device=name),
            Sample.of("deepedge_device_processes", len(dev.pids()), now, device=name),
        ]
        optional = {
            "deepedge_device_memory_used_bytes": usage.memory_bytes,
            "deepedge_device_cpu_throttled_periods_total": usage.throttled_periods,
            "deepedge_device_cpu_throttled_seconds_total": getattr(usage, "throttled_s", None),
            "deepedge_device_cpu_limit_cores": getattr(dev, "cpu_limit", None)
            or dev.spec.cpu_cores,
            "deepedge_device_memory_limit_bytes": dev.spec.memory_mb * _MB
            if dev.spec.memory_mb
            else None,
        }
        out += [Sample.of(m, v, now, device=name) for m, v in optional.items() if v is not None]
        return out


# ---------------------------------------------------------------------- processes

_ROLES = {
    "deepedge.train.agent": "agent",
    "deepedge.apps.server": "app",
    "deepedge.apps.loadgen": "loadgen",
}


def process_role(cmdline: Sequence[str], fallback: str) -> str:
    """A short, stable name for a device process: what it *is*, not which python runs it.

    Every process on a device is ``python`` to the kernel; the module it runs says
    whether it is a training agent or an LC app server, which is what a dashboard needs.
    """
    for arg in cmdline:
        if arg in _ROLES:
            return _ROLES[arg]
    with contextlib.suppress(ValueError, IndexError):
        module = cmdline[list(cmdline).index("-m") + 1]
        return module.rsplit(".", 1)[-1]
    return fallback


class ProcessSampler:
    """CPU time and resident memory of every process on every device, labelled by role.

    ``psutil.Process`` objects are kept between calls (keyed by pid and checked by
    psutil against pid reuse) so a process's name is resolved once, not every tick.
    """

    name = "processes"

    def __init__(self, devices: Mapping[str, DeviceHandle]) -> None:
        self._devices = devices
        self._procs: dict[int, tuple[psutil.Process, str]] = {}

    def _process(self, pid: int) -> tuple[psutil.Process, str]:
        cached = self._procs.get(pid)
        if cached is not None and cached[0].is_running():
            return cached
        proc = psutil.Process(pid)
        with proc.oneshot():
            role = process_role(proc.cmdline(), proc.name())
        self._procs[pid] = (proc, role)
        return proc, role

    def sample(self, now: float) -> list[Sample]:
        out: list[Sample] = []
        seen: set[int] = set()
        for device, dev in self._devices.items():
            if not getattr(dev, "on_this_host", True):  # its pids are another machine's
                continue
            try:
                pids = dev.pids()
            except (OSError, DeepEdgeError):
                continue
            for pid in sorted(pids):
                seen.add(pid)
                with contextlib.suppress(psutil.Error):  # exited since listed: skip
                    out.extend(self._one(pid, device, now))
        for gone in self._procs.keys() - seen:
            del self._procs[gone]
        return out

    def _one(self, pid: int, device: str, now: float) -> list[Sample]:
        proc, role = self._process(pid)
        with proc.oneshot():
            t = proc.cpu_times()
            rss = proc.memory_info().rss
        labels = {"device": device, "pid": pid, "name": role}
        return [
            Sample.of("deepedge_process_cpu_seconds_total", t.user + t.system, now, **labels),
            Sample.of("deepedge_process_resident_memory_bytes", rss, now, **labels),
        ]


# --------------------------------------------------------------------------- NVML


class NvmlSampler:
    """NVIDIA GPUs through NVML (desktop/server GPUs; Jetsons have no NVML: see tegrastats)."""

    name = "nvml"

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as err:
            raise SamplerUnavailable(f"NVML unavailable: {err}") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as err:
            raise SamplerUnavailable(f"NVML unavailable: {err}") from None
        if not self._handles:
            self.close()
            raise SamplerUnavailable("NVML unavailable: no GPU found")

    def sample(self, now: float) -> list[Sample]:
        nv = self._nvml
        out: list[Sample] = []
        try:
            for i, h in enumerate(self._handles):
                util = nv.nvmlDeviceGetUtilizationRates(h)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                out += [
                    Sample.of("deepedge_gpu_utilization_ratio", util.gpu / 100.0, now, gpu=i),
                    Sample.of("deepedge_gpu_memory_used_bytes", mem.used, now, gpu=i),
                    Sample.of("deepedge_gpu_memory_total_bytes", mem.total, now, gpu=i),
                ]
        except nv.NVMLError as err:
            raise SamplerUnavailable(f"NVML failed: {err}") from None
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


# --------------------------------------------------------------------- tegrastats

_UNITS = {"kB": 2**10, "KB": 2**10, "MB": 2**20, "GB": 2**30}
_RAM = re.compile(r"\bRAM (\d+)/(\d+)([kKMG]B)")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)([kKMG]B)")
_CPUS = re.compile(r"\bCPU \[([^\]]*)\]")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+(?:\.\d+)?)%")
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_POWER = re.compile(r"\b((?:VDD|POM)_[A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?")
_OFF_SENSOR_C = -256.0  # what tegrastats prints for a powered-down sensor (CV0@-256C)


def parse_tegrastats(line: str) -> dict[str, float]:
    """Parse one tegrastats line into base units; fields the line lacks are left out.

    Keys: ``ram_used_bytes``, ``ram_total_bytes``, ``swap_used_bytes``,
    ``gpu_utilization_ratio``, ``cpu<i>_utilization_ratio`` (offline cores are left
    out), ``temperature_<sensor>_celsius`` (lower-case sensor; powered-down sensors
    reading -256C are left out) and ``power_<rail>_watts`` (the instantaneous value).
    Handles the Nano/TX2 format (``GR3D_FREQ 35%@921``) and the Xavier/Orin one
    (``GR3D_FREQ 35%`` or ``35%@[305,0]``, ``VDD_IN 4816mW/4816mW``).
    """
    out: dict[str, float] = {}
    if m := _RAM.search(line):
        unit = _UNITS[m.group(3)]
        out["ram_used_bytes"] = float(int(m.group(1)) * unit)
        out["ram_total_bytes"] = float(int(m.group(2)) * unit)
    if m := _SWAP.search(line):
        out["swap_used_bytes"] = float(int(m.group(1)) * _UNITS[m.group(3)])
    if m := _CPUS.search(line):
        for i, field in enumerate(m.group(1).split(",")):
            pct = field.strip().split("%", 1)
            if len(pct) == 2 and pct[0].isdigit():
                out[f"cpu{i}_utilization_ratio"] = int(pct[0]) / 100.0
    if m := _GR3D.search(line):
        out["gpu_utilization_ratio"] = float(m.group(1)) / 100.0
    for sensor, celsius in _TEMP.findall(line):
        if float(celsius) > _OFF_SENSOR_C:
            out[f"temperature_{sensor.lower()}_celsius"] = float(celsius)
    for rail, current, _avg in _POWER.findall(line):
        out[f"power_{rail.lower()}_watts"] = int(current) / 1000.0
    return out


def _tegrastats_samples(fields: Mapping[str, float], now: float) -> list[Sample]:
    out: list[Sample] = []
    simple = {
        "ram_used_bytes": "deepedge_jetson_ram_used_bytes",
        "ram_total_bytes": "deepedge_jetson_ram_total_bytes",
        "gpu_utilization_ratio": "deepedge_jetson_gpu_utilization_ratio",
    }
    for key, value in fields.items():
        if key in simple:
            out.append(Sample.of(simple[key], value, now))
        elif m := re.fullmatch(r"cpu(\d+)_utilization_ratio", key):
            out.append(Sample.of("deepedge_jetson_cpu_utilization_ratio", value, now, cpu=m[1]))
        elif m := re.fullmatch(r"temperature_(.+)_celsius", key):
            out.append(Sample.of("deepedge_jetson_temperature_celsius", value, now, sensor=m[1]))
        elif m := re.fullmatch(r"power_(.+)_watts", key):
            out.append(Sample.of("deepedge_jetson_power_watts", value, now, rail=m[1]))
    return out


class TegrastatsSampler:
    """Jetson boards (no NVML there): runs ``tegrastats`` and parses its latest line.

    tegrastats only streams, so a reader thread keeps the latest line and ``sample``
    never blocks on the pipe. A line older than three intervals is not reported: a
    stalled tegrastats must not look like a board frozen at its last reading.
    """

    name = "tegrastats"

    def __init__(self, command: str = "tegrastats", interval_ms: int = 1000) -> None:
        path = shutil.which(command)
        if path is None:
            raise SamplerUnavailable(f"{command} not found on PATH (not a Jetson board)")
        self._interval_s = interval_ms / 1000.0
        self._lock = threading.Lock()
        self._latest: tuple[float, dict[str, float]] | None = None
        try:
            self._proc = subprocess.Popen(
                [path, "--interval", str(interval_ms)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        except OSError as err:
            raise SamplerUnavailable(f"cannot run {command}: {err}") from None
        self._reader = threading.Thread(target=self._read, name="deepedge-tegrastats", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            fields = parse_tegrastats(line)
            if fields:
                with self._lock:
                    self._latest = (time.monotonic(), fields)

    def sample(self, now: float) -> list[Sample]:
        with self._lock:
            latest = self._latest
        code = self._proc.poll()
        if code is not None and latest is None:
            raise SamplerUnavailable(f"tegrastats exited with code {code} without output")
        if latest is None or time.monotonic() - latest[0] > 3 * self._interval_s + 1.0:
            if code is not None:
                raise SamplerUnavailable(f"tegrastats exited with code {code}")
            return []
        return _tegrastats_samples(latest[1], now)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=2)
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=2)


# ---------------------------------------------------------------------- LC latency

_QUANTILES = (("0.5", "p50_ms"), ("0.95", "p95_ms"), ("0.99", "p99_ms"))


class LcLatencySampler:
    """Latency SLO view of the LC apps: the signal the retraining controller reacts to.

    Each call drains the requests completed since the last call. Counters (requests,
    deadline misses, failures) are cumulative over every drained request; latency
    quantiles are over the requests *completed* in the last ``window_s`` seconds, so
    they react within one window to training stealing CPU. As everywhere in deepedge
    (see :mod:`deepedge.apps.stats`), a failed request counts as an infinite latency and
    as a miss. A quantile over an empty window is NaN — nothing measured, which is not
    0 s — and ``inf`` once failures reach that tail. Records of apps not in ``apps``
    (no deadline known) are ignored.
    """

    name = "lc_latency"

    def __init__(
        self,
        drain: Callable[[], Sequence[RequestRecord]],
        apps: Sequence[AppSpec],
        window_s: float = 5.0,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self._drain = drain
        self._apps = {a.name: a for a in apps}
        self._window_s = window_s
        self._window: deque[RequestRecord] = deque()
        self._counts = {a: [0, 0, 0] for a in self._apps}  # requests, misses, failures

    def _ingest(self, records: Sequence[RequestRecord]) -> None:
        for r in sorted(records, key=lambda r: r.done_s):
            app = self._apps.get(r.app)
            if app is None:
                continue
            missed = not r.ok or not r.latency_ms <= app.deadline_ms  # NaN latency is a miss
            counts = self._counts[r.app]
            counts[0] += 1
            counts[1] += missed
            counts[2] += not r.ok
            self._window.append(r)

    def sample(self, now: float) -> list[Sample]:
        self._ingest(self._drain())
        horizon = now - self._window_s
        # drained batches arrive in done order, but keep the filter exact regardless
        self._window = deque(r for r in self._window if r.done_s >= horizon)
        out: list[Sample] = []
        for name, app in self._apps.items():
            requests, misses, failures = self._counts[name]
            stats = latency_summary(self._window, deadline_ms=app.deadline_ms, app=name)
            out += [
                Sample.of("deepedge_app_requests_total", requests, now, app=name),
                Sample.of("deepedge_app_deadline_misses_total", misses, now, app=name),
                Sample.of("deepedge_app_failures_total", failures, now, app=name),
                Sample.of("deepedge_app_deadline_seconds", app.deadline_ms / 1000.0, now, app=name),
            ]
            out += [
                Sample.of(
                    "deepedge_app_latency_seconds",
                    getattr(stats, attr) / 1000.0,
                    now,
                    app=name,
                    quantile=q,
                )
                for q, attr in _QUANTILES
            ]
        return out
