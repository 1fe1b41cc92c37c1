"""The live view turns counters into rates and colours each app's p95 against its deadline."""

from __future__ import annotations

from rich.console import Console

from deepedge.monitor import Sample
from deepedge.monitor.live import LiveView
from deepedge.spec import ClusterSpec

SPEC = ClusterSpec.model_validate(
    {
        "devices": [{"name": "d1", "kind": "orin-nano"}],
        "apps": [
            {"name": "ok", "device": "d1", "rate_rps": 5, "deadline_ms": 100},
            {"name": "late", "device": "d1", "rate_rps": 5, "deadline_ms": 10},
        ],
    }
)


def _snapshot(t: float, cpu: float) -> list[Sample]:
    return [
        Sample.of("deepedge_device_cpu_seconds_total", cpu, t, device="d1"),
        Sample.of("deepedge_device_cpu_limit_cores", 0.25, t, device="d1"),
        Sample.of("deepedge_device_cpu_throttled_seconds_total", cpu / 10, t, device="d1"),
        Sample.of("deepedge_device_memory_used_bytes", 300 * 2**20, t, device="d1"),
        Sample.of("deepedge_app_latency_seconds", 0.02, t, app="ok", quantile="0.95"),
        Sample.of("deepedge_app_latency_seconds", 0.05, t, app="late", quantile="0.95"),
        Sample.of("deepedge_app_requests_total", 40, t, app="ok"),
    ]


def _text(group) -> str:
    console = Console(width=200, record=True, color_system="truecolor")
    console.print(group)
    return console.export_text(styles=True)


def test_rates_between_snapshots_and_deadline_colours():
    view = LiveView(SPEC)
    first = _text(view.render(_snapshot(100.0, 10.0), 100.0, 0.004))
    assert "– / 0.250" in first  # no rate before a second snapshot
    second = _text(view.render(_snapshot(102.0, 10.5), 102.0, 0.004))
    assert "0.250 / 0.250" in second  # 0.5 CPU-s over 2 s
    assert "300" in second and "0.40% of one core" in second
    late_line = next(line for line in second.splitlines() if line.lstrip("│ ").startswith("late"))
    ok_line = next(line for line in second.splitlines() if line.lstrip("│ ").startswith("ok"))
    assert "\x1b[31m" in late_line and "\x1b[31m" not in ok_line  # red: p95 over deadline
    assert "\x1b[32m" in ok_line
