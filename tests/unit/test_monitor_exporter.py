"""The Prometheus endpoint: served text parses back to the samples it was given."""

from __future__ import annotations

import math
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deepedge.errors import MonitorError
from deepedge.monitor import METRICS, Sample, serve_metrics
from deepedge.monitor.exporter import SampleCollector

SNAPSHOT = [
    Sample.of("deepedge_device_cpu_seconds_total", 12.5, 1.0, device="fast"),
    Sample.of("deepedge_device_cpu_seconds_total", 3.0, 1.0, device="slow"),
    Sample.of("deepedge_app_latency_seconds", 0.042, 1.0, app="cam", quantile="0.95"),
    Sample.of("deepedge_app_latency_seconds", math.inf, 1.0, app="cam", quantile="0.99"),
    Sample.of("deepedge_app_latency_seconds", math.nan, 1.0, app="asr", quantile="0.95"),
    Sample.of("deepedge_host_memory_used_bytes", 2.0**30, 1.0),
]


def _scrape(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_served_metrics_parse_back_with_types_labels_and_values():
    server = serve_metrics(lambda: SNAPSHOT, port=0)
    try:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        families = _scrape(server.url)
    finally:
        server.close()

    # the parser names a counter family without _total; its samples keep the suffix
    cpu = families["deepedge_device_cpu_seconds"]
    assert cpu.type == "counter"
    assert cpu.documentation == METRICS["deepedge_device_cpu_seconds_total"].help
    assert {(s.name, s.labels["device"], s.value) for s in cpu.samples} == {
        ("deepedge_device_cpu_seconds_total", "fast", 12.5),
        ("deepedge_device_cpu_seconds_total", "slow", 3.0),
    }

    lat = families["deepedge_app_latency_seconds"]
    assert lat.type == "gauge"
    by_labels = {(s.labels["app"], s.labels["quantile"]): s.value for s in lat.samples}
    assert by_labels[("cam", "0.95")] == 0.042
    assert by_labels[("cam", "0.99")] == math.inf
    assert math.isnan(by_labels[("asr", "0.95")])

    mem = families["deepedge_host_memory_used_bytes"]
    assert mem.type == "gauge"
    assert [(s.labels, s.value) for s in mem.samples] == [({}, 2.0**30)]


def test_every_registered_metric_renders():
    """A metric whose name/unit prometheus_client rejects would break every scrape."""
    snapshot = [
        Sample.of(name, 1.0, 0.0, device="d") if i % 2 else Sample.of(name, 1.0, 0.0)
        for i, name in enumerate(METRICS)
    ]
    families = list(SampleCollector(lambda: snapshot).collect())
    assert len(families) == len(METRICS)
    for fam in families:
        assert fam.type == METRICS[fam.samples[0].name].kind


def test_close_frees_the_port_and_a_busy_port_is_a_monitor_error():
    server = serve_metrics(lambda: [], port=0)
    port = server.port
    with pytest.raises(MonitorError) as info:
        serve_metrics(lambda: [], port=port)
    assert "in use" in str(info.value)
    assert info.value.hint
    server.close()
    server.close()  # idempotent

    with socket.socket() as probe:  # the port can be bound again
        probe.bind(("127.0.0.1", port))
    again = serve_metrics(lambda: SNAPSHOT, port=port)
    try:
        assert "deepedge_host_memory_used_bytes" in _scrape(again.url)
    finally:
        again.close()
