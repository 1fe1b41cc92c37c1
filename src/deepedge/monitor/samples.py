"""What the monitor measures: one value type and the catalogue of every metric it emits.

A :class:`Sample` is deliberately the lowest common denominator of the store (a row), the
Prometheus exporter (one sample of a family) and plain Python consumers (the planner
reading the latest LC latency). Labels are a sorted tuple, not a dict, so a sample is
hashable and two samples of the same series always compare equal on their key.

:data:`METRICS` is the single source of truth for names, types, units and help texts:
the exporter renders it, the tests check every emitted name is in it, and a new sampler
cannot invent a metric without documenting it here. Names follow the Prometheus
conventions: a ``deepedge_`` prefix, base units (seconds, bytes, ratio 0..1) in the name,
and ``_total`` on counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["METRICS", "Labels", "MetricInfo", "Sample"]

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    """One measured value of one series (``metric`` + ``labels``) at ``ts`` (``time.time()``).

    ``value`` may be NaN ("nothing measured", e.g. a latency quantile over an empty
    window) or ``inf`` (a failed request in the tail); consumers must not treat NaN as 0.
    """

    metric: str
    value: float
    ts: float
    labels: Labels = ()

    @classmethod
    def of(cls, metric: str, value: float, ts: float, **labels: object) -> Sample:
        """Build a sample with labels given as keywords (values are turned into strings)."""
        return cls(
            metric, float(value), float(ts), tuple(sorted((k, str(v)) for k, v in labels.items()))
        )

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def key(self) -> tuple[str, Labels]:
        """The series this sample belongs to."""
        return (self.metric, self.labels)


@dataclass(frozen=True)
class MetricInfo:
    """Name, Prometheus type, base unit and help text of one metric."""

    name: str
    kind: Literal["gauge", "counter"]
    unit: str
    help: str


def _m(name: str, kind: Literal["gauge", "counter"], unit: str, help: str) -> MetricInfo:
    if kind == "counter" and not name.endswith("_total"):
        raise ValueError(f"counter {name} must end in _total")
    return MetricInfo(name, kind, unit, help)


_ALL = [
    # the machine running the coordinator (all emulated devices share it)
    _m("deepedge_host_cpu_utilization_ratio", "gauge", "ratio", "Host CPU busy share, all cores."),
    _m("deepedge_host_cpu_count", "gauge", "", "Logical CPUs of the host."),
    _m(
        "deepedge_host_memory_used_bytes",
        "gauge",
        "bytes",
        "Host memory in use (not available).",
    ),
    _m("deepedge_host_memory_total_bytes", "gauge", "bytes", "Host physical memory."),
    _m("deepedge_host_network_sent_bytes_total", "counter", "bytes", "Bytes sent."),
    _m(
        "deepedge_host_network_received_bytes_total",
        "counter",
        "bytes",
        "Bytes received.",
    ),
    _m("deepedge_host_disk_read_bytes_total", "counter", "bytes", "Bytes read from all disks."),
    _m("deepedge_host_disk_written_bytes_total", "counter", "bytes", "Bytes written to all disks."),
    # emulated devices (cgroups), label device
    _m("deepedge_device_cpu_seconds_total", "counter", "seconds", "CPU time used by the device."),
    _m("deepedge_device_cpu_limit_cores", "gauge", "", "CPU capacity of the device in host cores."),
    _m(
        "deepedge_device_cpu_throttled_periods_total",
        "counter",
        "",
        "CFS periods in which the device hit its CPU quota.",
    ),
    _m(
        "deepedge_device_cpu_throttled_seconds_total",
        "counter",
        "seconds",
        "Time the device's processes were held back by its CPU quota.",
    ),
    _m("deepedge_device_memory_used_bytes", "gauge", "bytes", "Memory charged to the device."),
    _m("deepedge_device_memory_limit_bytes", "gauge", "bytes", "Memory capacity of the device."),
    _m("deepedge_device_processes", "gauge", "", "Processes running on the device."),
    # processes on devices, labels device, pid, name
    _m("deepedge_process_cpu_seconds_total", "counter", "seconds", "CPU time of one process."),
    _m("deepedge_process_resident_memory_bytes", "gauge", "bytes", "Resident memory of a process."),
    # NVML GPUs, label gpu
    _m("deepedge_gpu_utilization_ratio", "gauge", "ratio", "GPU busy share (NVML)."),
    _m("deepedge_gpu_memory_used_bytes", "gauge", "bytes", "GPU memory in use (NVML)."),
    _m("deepedge_gpu_memory_total_bytes", "gauge", "bytes", "GPU memory (NVML)."),
    # Jetson boards (tegrastats)
    _m("deepedge_jetson_ram_used_bytes", "gauge", "bytes", "Board RAM in use (tegrastats)."),
    _m("deepedge_jetson_ram_total_bytes", "gauge", "bytes", "Board RAM (tegrastats)."),
    _m("deepedge_jetson_gpu_utilization_ratio", "gauge", "ratio", "GR3D busy share (tegrastats)."),
    _m(
        "deepedge_jetson_cpu_utilization_ratio",
        "gauge",
        "ratio",
        "Busy share of one online CPU, label cpu (tegrastats).",
    ),
    _m(
        "deepedge_jetson_temperature_celsius",
        "gauge",
        "celsius",
        "Temperature of one sensor, label sensor (tegrastats).",
    ),
    _m(
        "deepedge_jetson_power_watts",
        "gauge",
        "watts",
        "Instantaneous power of one rail, label rail (tegrastats).",
    ),
    # a re-training run (written by the run controller's feed, not sampled)
    _m("deepedge_train_steps_done", "gauge", "", "Global steps the running plan has completed."),
    _m("deepedge_train_steps_total", "gauge", "", "Global steps the job takes in all."),
    _m(
        "deepedge_train_compute_seconds",
        "gauge",
        "seconds",
        "Compute time of a device's last training step, label device.",
    ),
    # a serving replay (deepedge serve), labels policy and series
    _m(
        "deepedge_serving_rate_rps",
        "gauge",
        "",
        "Request rate of one series (trace, observed, forecast, capacity) under a policy.",
    ),
    _m("deepedge_serving_cost_per_hour", "gauge", "", "Replicas' price per hour under a policy."),
    _m("deepedge_serving_p95_seconds", "gauge", "seconds", "Requests' p95 in the last interval."),
    _m("deepedge_serving_replicas", "gauge", "", "Replicas ready or starting, label state."),
    # latency-critical apps, label app
    _m("deepedge_app_requests_total", "counter", "", "Completed LC requests (ok or failed)."),
    _m(
        "deepedge_app_deadline_misses_total",
        "counter",
        "",
        "LC requests that failed or finished after the deadline.",
    ),
    _m("deepedge_app_failures_total", "counter", "", "LC requests that failed."),
    _m(
        "deepedge_app_latency_seconds",
        "gauge",
        "seconds",
        "LC latency quantile over the rolling window (inf: failures in the tail; "
        "NaN: no request in the window).",
    ),
    _m("deepedge_app_deadline_seconds", "gauge", "seconds", "LC latency deadline (SLO on p95)."),
    # the monitor itself
    _m("deepedge_monitor_cpu_seconds_total", "counter", "seconds", "CPU time spent sampling."),
    _m(
        "deepedge_monitor_tick_duration_seconds",
        "gauge",
        "seconds",
        "Wall time of the last sampling tick.",
    ),
    _m("deepedge_monitor_samplers", "gauge", "", "Samplers still running."),
]

METRICS: dict[str, MetricInfo] = {m.name: m for m in _ALL}
"""Every metric a sampler or the monitor emits, by name."""
