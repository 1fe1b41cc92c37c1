"""Benchmark: the dashboard's time to first render and its server's CPU (issue 18).

1. **A one-hour session database.** The recorded session in
   ``tests/data/dashboard-session`` (5 boards, 5 LC apps, a run controller's feed) is
   stretched to an hour: every series it holds is written at 1 Hz for 3,600 s, its values
   cycled from the recording, with the run's events; the store's own compaction runs as
   it would in a live session.
2. **Time to first render**, per page, in Debian's headless Chromium: from navigation to
   the page's numbers and charts drawn (the first poll done). Median of 5 loads in a fresh
   tab each. The server's own time per HTML page and per JSON poll is timed beside it.
3. **Server CPU while 3 tabs watch a live session**: a writer process appends a
   monitor's worth of samples (every series once a second) and a training step's feed,
   as a running session does; the dashboard runs as its own process (``deepedge
   dashboard``); 3 tabs (cluster, LC apps, training) poll it for 60 s. Its CPU time over
   that minute against the same minute with no tab open, side by side.

Targets: < 1 s to first render; < 2 % of one core with 3 tabs.

    .venv/bin/python bench/dashboard.py [--watch-s 60]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

from _common import machine, write_results
from deepedge.dashboard import PAGES
from deepedge.dashboard.browser import launch_chromium
from deepedge.monitor import Sample, TimeSeriesStore

ROOT = Path(__file__).resolve().parent.parent
SESSION = ROOT / "tests" / "data" / "dashboard-session"
WATCHED = ("cluster", "apps", "training")


def recorded_series() -> tuple[dict[tuple[str, tuple], list[float]], list[Any]]:
    """Every series of the recorded session (its values in order) and its events."""
    store = TimeSeriesStore.open_readonly(SESSION / "monitor.sqlite")
    series: dict[tuple[str, tuple], list[float]] = defaultdict(list)
    for s in store.query():
        series[(s.metric, s.labels)].append(s.value)
    events = store.events()
    store.close()
    return dict(series), events


def one_hour_db(path: Path, hours: float = 1.0) -> int:
    """A store holding an hour of every recorded series at 1 Hz, ending now."""
    series, events = recorded_series()
    end = time.time()
    start = end - 3600 * hours
    n = 0
    with TimeSeriesStore(path, compact_every_s=None) as store:
        for t0 in range(int(start), int(end), 60):  # a minute per transaction
            batch = [
                Sample(metric, values[t % len(values)], float(t), labels)
                for (metric, labels), values in series.items()
                for t in range(t0, min(t0 + 60, int(end)))
            ]
            n += store.write(batch)
        shift = end - max(e.ts for e in events) - 1
        store.write_events(
            type(e)(e.ts + shift, e.kind, e.state, e.message, e.data) for e in events
        )
        store.compact(now=end)
    return n


def serve(db: Path, out: Path) -> tuple[subprocess.Popen, str]:
    """``deepedge dashboard`` over ``db`` as its own process, and its URL once it answers."""
    deepedge = Path(sys.executable).parent / "deepedge"
    proc = subprocess.Popen(
        [str(deepedge), "dashboard", "--db", str(db), "--port", "0", "--run", str(SESSION),
         "--kb", str(SESSION / "kb.sqlite")],
        stdout=out.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = out.read_text()
        if "dashboard at " in text:
            return proc, text.split("dashboard at ")[1].split()[0].rstrip("/")
        if proc.poll() is not None:
            raise RuntimeError(f"dashboard exited: {text}")
        time.sleep(0.1)
    raise RuntimeError("dashboard did not start")


def first_render(browser, url: str, loads: int = 5) -> dict[str, Any]:
    """Per page, the median over ``loads`` fresh tabs of: the page loaded (its numbers, in
    its server-rendered tables, in the DOM), its first poll done, and (pages with charts)
    every chart drawn; seconds from navigation."""
    out = {}
    for name in PAGES:
        paint, polled, charts = [], [], []
        for _ in range(loads):
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            t0 = time.perf_counter()
            page.goto(f"{url}/{name}")
            if name in ("cluster", "apps", "training", "events"):
                page.wait_for_function("document.body.dataset.polled !== undefined")
                polled.append(time.perf_counter() - t0)
            if name in ("cluster", "apps", "training"):
                page.wait_for_function(
                    "[...document.querySelectorAll('.chart')].every("
                    "d => d.classList.contains('js-plotly-plot'))"
                )
                charts.append(time.perf_counter() - t0)
            if name == "kb":  # its plots: drawn by the server on the first view, then kept
                page.wait_for_function(
                    "[...document.querySelectorAll('#kb-plots img')].every("
                    "i => i.complete && i.naturalWidth > 0)",
                    timeout=120_000,
                )
                charts.append(time.perf_counter() - t0)
            # DOMContentLoaded: the HTML with its tables parsed and the page's script run
            loaded = page.evaluate(
                "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
            )
            paint.append(loaded / 1e3)
            page.close()
        out[name] = {
            "first_paint_s": statistics.median(paint),
            "first_poll_s": statistics.median(polled) if polled else None,
            "charts_s": statistics.median(charts) if charts else None,
            "first_view_charts_s": charts[0] if charts else None,
        }
    return out


def server_times(url: str, repeats: int = 10) -> dict[str, dict[str, float]]:
    def timed(path: str) -> float:
        t0 = time.perf_counter()
        with urllib.request.urlopen(url + path, timeout=30) as r:
            r.read()
        return time.perf_counter() - t0

    return {
        name: {
            "html_ms": 1e3 * statistics.median(timed(f"/{name}") for _ in range(repeats)),
            "json_ms": 1e3 * statistics.median(timed(f"/api/{name}") for _ in range(repeats)),
            "json_kb": len(urllib.request.urlopen(url + f"/api/{name}").read()) / 1024,
        }
        for name in PAGES
    }


WRITER = """
import sys, time, json
from deepedge.monitor import Sample, TimeSeriesStore
series = json.load(open(sys.argv[2]))
store = TimeSeriesStore(sys.argv[1])
i = 0
while True:
    now = time.time()
    store.write([Sample(m, v[i % len(v)], now, tuple(map(tuple, lab))) for m, lab, v in series])
    i += 1
    time.sleep(max(0.0, 1.0 - (time.time() - now)))
"""


def cpu_while(proc: psutil.Process, seconds: float) -> float:
    """Share of one core ``proc`` used over ``seconds``."""
    t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - t0)


def watch(browser, workdir: Path, seconds: float) -> dict[str, float]:
    live = workdir / "live.sqlite"
    shutil.copy(workdir / "hour.sqlite", live)
    series, _ = recorded_series()
    spec = workdir / "series.json"
    spec.write_text(json.dumps([[m, list(labels), v] for (m, labels), v in series.items()]))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(live), str(spec)])
    server, url = serve(live, workdir / "live-dashboard.out")
    try:
        time.sleep(3)  # the writer's -wal exists, the server has settled
        proc = psutil.Process(server.pid)
        idle = cpu_while(proc, seconds)
        tabs = [browser.new_page() for _ in WATCHED]
        for tab, name in zip(tabs, WATCHED, strict=True):
            tab.goto(f"{url}/{name}")
        polled = [tab.evaluate("document.body.dataset.polled") for tab in tabs]
        watched = cpu_while(proc, seconds)
        moved = [tab.evaluate("document.body.dataset.polled") for tab in tabs]
        assert all(a != b for a, b in zip(polled, moved, strict=True)), "tabs stopped polling"
        for tab in tabs:
            tab.close()
    finally:
        server.terminate()
        writer.terminate()
        server.wait(timeout=30)
        writer.wait(timeout=30)
    return {"idle_core_share": idle, "three_tabs_core_share": watched, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--watch-s", type=float, default=60.0)
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench-dashboard"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    db = args.workdir / "hour.sqlite"
    t0 = time.monotonic()
    samples = one_hour_db(db)
    print(f"one-hour store: {samples} samples, {db.stat().st_size / 2**20:.1f} MiB "
          f"({time.monotonic() - t0:.0f} s)")  # fmt: skip
    with sync_playwright() as p:
        browser = launch_chromium(p)
        server, url = serve(db, args.workdir / "dashboard.out")
        try:
            render = first_render(browser, url)
            per_request = server_times(url)
        finally:
            server.terminate()
            server.wait(timeout=30)
        cpu = watch(browser, args.workdir, args.watch_s)
        browser.close()
    md = [
        "# Dashboard: time to first render and server CPU (issue 18)",
        "",
        f"A one-hour session store ({samples} samples, {db.stat().st_size / 2**20:.1f} MiB: "
        "the recorded demo session's series at 1 Hz for an hour, with its events). Headless "
        "Chromium, a fresh tab per load, median of 5 loads; times from navigation. The "
        "numbers are in the server-rendered HTML; the chart library (4.8 MB) loads after "
        "them.",
        "",
        "| page | numbers shown: page loaded (s) | first poll done (s) | charts drawn (s) | "
        "server: HTML (ms) | server: full JSON (ms) | full JSON (KiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def sec(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}"

    for name in PAGES:
        r, s = render[name], per_request[name]
        md.append(
            f"| {name} | {sec(r['first_paint_s'])} | {sec(r['first_poll_s'])} | "
            f"{sec(r['charts_s'])} | {s['html_ms']:.1f} | {s['json_ms']:.1f} | "
            f"{s['json_kb']:.0f} |"
        )
    kb = render["kb"]
    md += [
        "",
        f"Knowledge base page (the recorded session's knowledge base): its plots were drawn "
        f"by the server on the first view, all in by {sec(kb['first_view_charts_s'])} s; "
        f"later views (the plots kept) {sec(kb['charts_s'])} s (median, the column above).",
        "",
        f"Server CPU over {cpu['seconds']:.0f} s of a live session (a writer appending every "
        f"series each second): {100 * cpu['idle_core_share']:.2f} % of one core with no tab, "
        f"{100 * cpu['three_tabs_core_share']:.2f} % with 3 tabs ({', '.join(WATCHED)}) "
        "polling each second.",
        "",
        "Targets: < 1 s to first render (slowest page loaded "
        f"{max(r['first_paint_s'] for r in render.values()):.2f} s, first poll "
        f"{max(r['first_poll_s'] or 0 for r in render.values()):.2f} s, charts "
        f"{max(r['charts_s'] or 0 for r in render.values()):.2f} s); < 2 % of one core with "
        f"3 tabs ({100 * cpu['three_tabs_core_share']:.2f} %).",
    ]
    write_results(
        "dashboard",
        {
            **machine("no emulation: the dashboard against a stored session"),
            "samples": samples,
            "first_render_s": render,
            "server_per_request": per_request,
            "cpu": cpu,
        },
        md,
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
