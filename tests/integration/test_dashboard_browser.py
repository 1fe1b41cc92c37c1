"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright.

Against the recorded session every page renders, its cells show the numbers the server
computed from the database (after the page's own polling has refilled them), and its
charts are drawn; with JavaScript off the tables are still there; and a page over a
session that is writing shows a new sample without being reloaded.

CI installs Chromium (``.ci/run``) and sets ``DEEPEDGE_REQUIRE_BROWSER=1``, so a missing
browser fails there instead of skipping. ``DEEPEDGE_SCREENSHOTS=DIR`` saves a PNG of each
page (the README's come from that).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepedge.dashboard import PAGES, DashboardServer, Sources
from deepedge.dashboard.browser import CHROMIUM, launch_chromium
from deepedge.monitor.samples import Sample
from deepedge.monitor.store import TimeSeriesStore

SESSION = Path(__file__).parent.parent / "data" / "dashboard-session"


def _browser_or_skip():
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed"
    if missing is None and not Path(CHROMIUM).is_file():
        missing = f"no Chromium at {CHROMIUM} (apt install chromium)"
    if missing:
        if os.environ.get("DEEPEDGE_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardServer]:
    folder = tmp_path_factory.mktemp("session")
    for name in ("monitor.sqlite", "kb.sqlite"):
        shutil.copy(SESSION / name, folder / name)
    sources = Sources(db=folder / "monitor.sqlite", kb=folder / "kb.sqlite", runs=[SESSION])
    with DashboardServer(sources, port=0) as server:
        yield server


def api(server: DashboardServer, page: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/{page}", timeout=10) as r:
        return json.load(r)


def test_every_page_renders_its_numbers_and_charts(browser, recorded) -> None:
    shots = os.environ.get("DEEPEDGE_SCREENSHOTS")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        for name in PAGES:
            page.goto(f"http://127.0.0.1:{recorded.port}/{name}")
            if name in ("cluster", "apps", "training", "events"):
                # the page's own poll has run: its cells were refilled from the JSON
                page.wait_for_function("document.body.dataset.polled !== undefined")
            if name in ("cluster", "apps", "training"):
                page.wait_for_selector(".chart .main-svg")  # plotly drew
            if name == "kb":  # the plots drawn of the recorded knowledge base arrived
                page.wait_for_function(
                    "[...document.querySelectorAll('#kb-plots img')]"
                    ".every((img) => img.complete && img.naturalWidth > 0)"
                )
                shown = page.locator("#kb-plots img").count()
                assert shown == len(api(recorded, "kb")["plots"]) >= 3
            if shots:
                Path(shots).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(shots) / f"dashboard-{name}.png"), full_page=True)
        assert not errors, errors

        page.goto(f"http://127.0.0.1:{recorded.port}/apps")
        page.wait_for_function("document.body.dataset.polled !== undefined")
        data = api(recorded, "apps")
        rows = page.locator("#apps tbody tr")
        assert rows.count() == len(data["apps"]) == 5
        for i, app in enumerate(data["apps"]):
            cells = rows.nth(i).locator("td").all_inner_texts()
            assert cells[0] == app["app"]
            assert cells[1] == f"{app['deadline_ms']:.0f}"
            assert cells[3] == f"{app['latest_ms']['p95']:.1f}"
        page.wait_for_function(  # plotly (loaded after the numbers) drew each app's chart
            "document.querySelectorAll('.app-chart.js-plotly-plot').length === 5"
        )

        page.goto(f"http://127.0.0.1:{recorded.port}/training")
        page.wait_for_function("document.body.dataset.polled !== undefined")
        page.wait_for_selector("#chart-gantt.js-plotly-plot")  # the plan's Gantt is drawn
        data = api(recorded, "training")
        cells = page.locator("#progress tbody td").all_inner_texts()
        assert cells[:4] == [
            data["state"],
            data["policy"],
            f"{data['steps_done']:.0f}",
            f"{data['steps_total']:.0f}",
        ]

        page.goto(f"http://127.0.0.1:{recorded.port}/events")
        page.wait_for_function("document.body.dataset.polled !== undefined")
        events = api(recorded, "events")["events"]
        rows = page.locator("#events tbody tr")
        assert rows.count() == len(events)
        assert rows.first.locator("td").nth(3).inner_text() == events[0]["message"]

        page.goto(f"http://127.0.0.1:{recorded.port}/cluster")
        page.wait_for_function("document.body.dataset.polled !== undefined")
        data = api(recorded, "cluster")
        for i, device in enumerate(data["devices"]):
            cells = page.locator("#devices tbody tr").nth(i).locator("td").all_inner_texts()
            assert cells[0] == device["device"]
            assert cells[1] == f"{device['cpu_used_cores']:.3f}"
    finally:
        page.close()


def test_pages_read_without_javascript(browser, recorded) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{recorded.port}/apps")
        first = page.locator("#apps tbody tr").first.locator("td").all_inner_texts()
        app = api(recorded, "apps")["apps"][0]
        assert first[:2] == [app["app"], f"{app['deadline_ms']:.0f}"]
        page.goto(f"http://127.0.0.1:{recorded.port}/runs")
        assert "deep-edge" in page.locator("#runs").inner_text()
    finally:
        context.close()


def test_a_live_page_shows_a_new_sample_without_a_reload(browser, tmp_path: Path) -> None:
    db = tmp_path / "monitor.sqlite"
    start = time.time() - 5
    with TimeSeriesStore(db) as store, DashboardServer(Sources(db=db), port=0) as server:
        store.write([Sample.of("deepedge_device_cpu_seconds_total", 0.0, start, device="d")])
        store.write([Sample.of("deepedge_device_cpu_seconds_total", 0.1, start + 1, device="d")])
        page = browser.new_page()
        try:
            page.goto(f"http://127.0.0.1:{server.port}/cluster")
            cell = page.locator("#devices tbody tr td").nth(1)
            assert cell.inner_text() == "0.100"
            store.write(
                [Sample.of("deepedge_device_cpu_seconds_total", 0.4, start + 2, device="d")]
            )
            page.wait_for_function(  # its own poll (each second) brings it; no reload
                "document.querySelector('#devices tbody tr td:nth-child(2)').textContent"
                " === '0.300'",
                timeout=10_000,
            )
            # the poll asked only for the new point and the chart grew by it: 2 rates now
            page.wait_for_function(
                "document.getElementById('chart-cluster').data?.[0]?.x.length === 2",
                timeout=10_000,
            )
        finally:
            page.close()


def test_the_control_form_adds_a_device_only_with_allow_control(browser, tmp_path) -> None:
    import deepedge
    from deepedge.spec import ClusterSpec, load_spec

    spec = tmp_path / "cluster.yaml"
    shutil.copy(Path(deepedge.__file__).parent / "examples" / "small-cluster.yaml", spec)
    page = browser.new_page()
    try:
        with DashboardServer(Sources(), port=0, spec=spec) as server:  # read-only
            page.goto(f"http://127.0.0.1:{server.port}/cluster")
            assert page.locator("#add-device").count() == 0
        with DashboardServer(Sources(), port=0, spec=spec, allow_control=True) as server:
            page.goto(f"http://127.0.0.1:{server.port}/cluster")
            page.fill("#add-device input[name=name]", "joiner-2")
            page.select_option("#add-device select[name=kind]", "jetson-nano")
            page.click("#add-device button")
            page.wait_for_function(
                "document.getElementById('control-result').textContent.startsWith('added')"
            )
        added = load_spec(ClusterSpec, spec).devices[-1]
        assert (added.name, added.kind) == ("joiner-2", "jetson-nano")
    finally:
        page.close()
