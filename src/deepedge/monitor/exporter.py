"""Prometheus endpoint over the monitor's latest samples.

The exporter does not keep prometheus_client metric objects in step with the samplers;
a custom collector renders whatever the snapshot holds at scrape time, so the sampling
thread never touches Prometheus state and a scrape never triggers a measurement. It
uses its own :class:`~prometheus_client.CollectorRegistry`, not the process-global one,
so several clusters (or tests) in one process do not collide.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from deepedge.errors import MonitorError
from deepedge.monitor.samples import METRICS, Sample

__all__ = ["MetricsServer", "SampleCollector", "serve_metrics"]

Snapshot = Callable[[], list[Sample]]


class SampleCollector:
    """A prometheus_client collector turning the latest samples into metric families.

    Type, help and unit come from :data:`~deepedge.monitor.samples.METRICS`; a metric
    missing there is exported as a gauge rather than dropped. Counters are built with
    :class:`CounterMetricFamily`, which takes the name without ``_total`` (it strips the
    suffix itself and adds it back to the sample), so the exposed sample name is exactly
    the registry name. Sample timestamps are not exported: Prometheus stamps scrapes.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        by_metric: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for s in self._snapshot():
            by_metric.setdefault(s.metric, {})[s.labels] = s.value  # last one wins
        for metric in sorted(by_metric):
            yield _family(metric, by_metric[metric])


def _family(metric: str, series: dict[tuple[tuple[str, str], ...], float]) -> Metric:
    names = sorted({k for labels in series for k, _ in labels})
    info = METRICS.get(metric)
    doc = info.help if info else "(not in deepedge.monitor.METRICS)"
    unit = info.unit if info else ""
    family: CounterMetricFamily | GaugeMetricFamily
    if info is not None and info.kind == "counter":
        family = CounterMetricFamily(metric, doc, labels=names, unit=unit)
    else:
        family = GaugeMetricFamily(metric, doc, labels=names, unit=unit)
    for labels, value in sorted(series.items()):
        d = dict(labels)
        family.add_metric([d.get(n, "") for n in names], value)
    return family


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it and frees the port."""

    url: str
    port: int
    _server: object
    _thread: threading.Thread

    def close(self) -> None:
        server = self._server
        if server is None:
            return
        self._server = None
        server.shutdown()  # type: ignore[attr-defined]
        server.server_close()  # type: ignore[attr-defined]
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(snapshot: Snapshot, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Serve ``snapshot()`` as Prometheus text on ``http://host:port/metrics``.

    ``port=0`` takes any free port (read it from the result's ``port``/``url``). The
    default host is loopback: the endpoint has no authentication, so exposing it on
    other interfaces must be asked for.
    """
    registry = CollectorRegistry()
    registry.register(SampleCollector(snapshot))  # type: ignore[arg-type]
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise MonitorError(
                f"cannot serve metrics on {host}:{port}: the port is already in use",
                hint="pick another --metrics-port, or 0 for any free port",
            ) from None
        raise MonitorError(
            f"cannot serve metrics on {host}:{port}: {err.strerror or err}",
            hint="check the --metrics-host address belongs to this machine",
        ) from None
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    return MetricsServer(
        url=f"http://{shown}:{bound}/metrics", port=bound, _server=server, _thread=thread
    )
