"""The live terminal view of ``deepedge monitor``: devices and LC apps at a glance.

Counters (CPU seconds, throttled periods) become rates between two snapshots, so the view
shows what each device uses *now* against its limit, and every app's rolling p95 against
its deadline in green or red.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

from deepedge.monitor.samples import Sample
from deepedge.spec import ClusterSpec

__all__ = ["LiveView"]


def _by(samples: Sequence[Sample], metric: str, label: str) -> dict[str, float]:
    return {s.label_dict[label]: s.value for s in samples if s.metric == metric}


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}{unit}"


class LiveView:
    """Turns successive ``Monitor.latest()`` snapshots into rich tables."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self._prev: tuple[float, dict[str, float], dict[str, float]] | None = None

    def render(self, samples: Sequence[Sample], now: float, overhead: float) -> Group:
        cpu = _by(samples, "deepedge_device_cpu_seconds_total", "device")
        throttled = _by(samples, "deepedge_device_cpu_throttled_seconds_total", "device")
        limit = _by(samples, "deepedge_device_cpu_limit_cores", "device")
        mem = _by(samples, "deepedge_device_memory_used_bytes", "device")
        used: dict[str, float] = {}
        throttled_frac: dict[str, float] = {}
        if self._prev is not None:
            t0, cpu0, thr0 = self._prev
            dt = max(now - t0, 1e-6)
            used = {d: (v - cpu0.get(d, v)) / dt for d, v in cpu.items()}
            throttled_frac = {d: (v - thr0.get(d, v)) / dt for d, v in throttled.items()}
        self._prev = (now, cpu, throttled)

        devices = Table(title="devices", expand=False)
        for col in ("device", "kind", "CPU used / limit (cores)", "throttled", "memory MB"):
            devices.add_column(col, justify="left" if col in ("device", "kind") else "right")
        for d in self.spec.devices:
            devices.add_row(
                d.name,
                d.kind,
                f"{_fmt(used.get(d.name), digits=3)} / {_fmt(limit.get(d.name), digits=3)}",
                _fmt(100 * throttled_frac[d.name], "%") if d.name in throttled_frac else "–",
                _fmt(mem[d.name] / 2**20) if d.name in mem else "–",
            )

        apps = Table(title="LC apps (rolling window)", expand=False)
        for col in ("app", "device", "p50 ms", "p95 ms", "deadline ms", "misses", "requests"):
            apps.add_column(col, justify="left" if col in ("app", "device") else "right")
        p50, p95 = {}, {}
        for s in samples:
            if s.metric == "deepedge_app_latency_seconds":
                q = s.label_dict.get("quantile")
                target = p50 if q == "0.5" else p95 if q == "0.95" else None
                if target is not None:
                    target[s.label_dict["app"]] = s.value * 1e3
        requests = _by(samples, "deepedge_app_requests_total", "app")
        misses = _by(samples, "deepedge_app_deadline_misses_total", "app")
        for a in self.spec.apps:
            late = p95.get(a.name, math.nan) > a.deadline_ms
            colour = "red" if late else "green"
            apps.add_row(
                a.name,
                a.device,
                _fmt(p50.get(a.name)),
                f"[{colour}]{_fmt(p95.get(a.name))}[/]",
                f"{a.deadline_ms:g}",
                _fmt(misses.get(a.name)),
                _fmt(requests.get(a.name)),
            )
        footer = Text(f"monitor overhead: {100 * overhead:.2f}% of one core\n")
        return Group(devices, apps, footer)
