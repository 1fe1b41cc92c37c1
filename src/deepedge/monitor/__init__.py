"""Monitoring of the emulated edge cluster: samplers, a time-series store, a Prometheus endpoint.

The retraining controller needs to see, while training runs, whether LC apps still meet
their deadlines and which devices are starved of CPU; this package measures that
(:mod:`~deepedge.monitor.samplers`), keeps it (:class:`TimeSeriesStore`, in the same
SQLite file as the profiler's knowledge base if wished) and serves it to Prometheus /
Grafana (:func:`serve_metrics`). Typical use::

    samplers, off = default_samplers(cluster.devices, lc_drain=gen.drain, apps=spec.apps)
    with TimeSeriesStore(db) as store, Monitor(samplers, store=store, unavailable=off) as mon:
        server = serve_metrics(mon.latest)
        ...
        server.close()

and, later, ``export_monitor_window(db, "window.csv", start=..., end=...)`` to export a
stored file without writing to it.
"""

from __future__ import annotations

from deepedge.monitor.exporter import MetricsServer, SampleCollector, serve_metrics
from deepedge.monitor.monitor import Monitor, build_samplers, default_samplers
from deepedge.monitor.samplers import (
    DeviceSampler,
    HostSampler,
    LcLatencySampler,
    NvmlSampler,
    ProcessSampler,
    Sampler,
    SamplerUnavailable,
    TegrastatsSampler,
    parse_tegrastats,
    process_role,
)
from deepedge.monitor.samples import METRICS, MetricInfo, Sample
from deepedge.monitor.store import StoredEvent, TimeSeriesStore, export_monitor_window

__all__ = [
    "METRICS",
    "DeviceSampler",
    "HostSampler",
    "LcLatencySampler",
    "MetricInfo",
    "MetricsServer",
    "Monitor",
    "NvmlSampler",
    "ProcessSampler",
    "Sample",
    "SampleCollector",
    "Sampler",
    "SamplerUnavailable",
    "StoredEvent",
    "TegrastatsSampler",
    "TimeSeriesStore",
    "build_samplers",
    "default_samplers",
    "export_monitor_window",
    "parse_tegrastats",
    "process_role",
    "serve_metrics",
]
