"""Benchmark: what does monitoring cost? CPU of the monitor thread per second of wall time.

The demo cluster boots with its LC apps under load (no training agents), then a monitor
with every sampler this machine supports (host, devices, processes, LC latency, plus
NVML/tegrastats where present) samples into SQLite at each interval for ``--seconds``.
Its own CPU time (``time.thread_time`` around every tick: sampling, the SQLite write)
over the wall time is the overhead, as a fraction of one core (goal: < 1 %). One scrape
of ``/metrics`` per interval is included, as Prometheus would do. Writes
bench/results/monitor_overhead.json and .md.

    .venv/bin/python bench/monitor_overhead.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from pathlib import Path

from rich.console import Console

from _common import machine, write_results  # bench/ is on sys.path when run as a script
from deepedge.demo import default_specs
from deepedge.session import EdgeSession

INTERVALS = (1.0, 0.25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per interval setting")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-monitor-overhead"))
    args = parser.parse_args()
    console = Console()
    cluster, _ = default_specs()
    rows = {}
    for interval in INTERVALS:
        session = EdgeSession(
            cluster,
            args.workdir / f"i{interval}",
            status=console.print,
            agents_enabled=False,
            monitor_interval_s=interval,
            metrics_port=0,
        )
        with session:
            assert session.monitor is not None and session.metrics is not None
            deadline = time.monotonic() + args.seconds
            scrapes = 0
            while time.monotonic() < deadline:
                urllib.request.urlopen(session.metrics.url, timeout=5).read()
                scrapes += 1
                time.sleep(interval)
            overhead = session.monitor.overhead()
            series = len(session.monitor.latest())
            samplers = session.monitor.samplers
            emulation = session.cluster.emulation
        rows[interval] = {
            "overhead_cores": overhead,
            "series": series,
            "samplers": samplers,
            "scrapes": scrapes,
            "unavailable": session.monitor.unavailable,
        }
        console.print(f"interval {interval} s: {100 * overhead:.2f}% of one core, {series} series")
    result = {
        "machine": machine(emulation),
        "devices": len(cluster.devices),
        "apps": len(cluster.apps),
        "seconds": args.seconds,
        "intervals": rows,
        "command": f"python bench/monitor_overhead.py --seconds {args.seconds:g}",
    }
    md = [
        "# monitor_overhead",
        "",
        f"Demo cluster: {len(cluster.devices)} devices ({emulation}), {len(cluster.apps)} LC "
        f"apps under load, {args.seconds:g} s per setting, /metrics scraped every interval. "
        "Overhead = the monitor thread's CPU time / wall time (fraction of one core).",
        "",
        "| interval | overhead (% of one core) | series | samplers |",
        "|---:|---:|---:|---|",
    ]
    for interval, r in rows.items():
        md.append(
            f"| {interval:g} s | {100 * r['overhead_cores']:.2f}% | {r['series']} "
            f"| {', '.join(r['samplers'])} |"
        )
    md += ["", f"Reproduce: `{result['command']}`"]
    write_results("monitor_overhead", result, md)
    console.print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
