"""The dashboard over a recorded session, served by its real server on loopback.

``tests/data/dashboard-session`` is a recording of a ``deepedge demo --quick`` run on an
empty knowledge base (2026-12-01; 5 boards, 5 LC apps; interference profiling, then
144 s of session: profiling, three policies trained one after the other, learning): its
monitor store with the run controller's events and progress up to "done", its
knowledge base, report.json and plots.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import pytest

import deepedge
from deepedge.dashboard import DashboardServer, Sources, check_bind
from deepedge.dashboard.sources import OVERLAP_S
from deepedge.monitor.samples import Sample
from deepedge.monitor.store import TimeSeriesStore
from tests.cli import run_cli

SESSION = Path(__file__).parent.parent / "data" / "dashboard-session"
TOKEN = "a-token-of-24-characters"


def fetch(url: str, *, method: str = "GET", headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[DashboardServer]:
    db = tmp_path / "monitor.sqlite"
    shutil.copy(SESSION / "monitor.sqlite", db)  # the copy proves nothing writes to it
    sources = Sources(db=db, kb=tmp_path / "no-kb.sqlite", runs=[SESSION])
    with DashboardServer(sources, port=0) as server:
        yield server
    assert db.read_bytes() == (SESSION / "monitor.sqlite").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monitor.sqlite"]


def cells(html: str, table: str) -> list[list[str]]:
    """The text of each body row's cells of table ``id=table``."""
    body = re.search(rf'<table id="{table}">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert body, f"no table {table}"
    rows = re.findall(r"<tr>(.*?)</tr>", body.group(1), re.S)
    return [
        [unescape(c.strip()) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows
    ]


def test_every_page_shows_the_recorded_numbers(recorded: DashboardServer) -> None:
    base = f"http://127.0.0.1:{recorded.port}"
    store = TimeSeriesStore.open_readonly(SESSION / "monitor.sqlite")
    last = max(hi for _, _, hi in store.holdings().values())

    def latest(metric: str, **labels: str) -> float:
        return store.query(metric, labels=labels, start=last - 600, end=last)[-1].value

    status, html = fetch(base + "/cluster")
    assert status == 200
    devices = {row[0]: row for row in cells(html, "devices")}
    assert set(devices) == {"orin-1", "xavier-1", "rpi-1", "odroid-1", "nano-1"}
    for name, row in devices.items():
        cpu = store.query("deepedge_device_cpu_seconds_total", labels={"device": name}, end=last)[
            -2:
        ]
        rate = (cpu[1].value - cpu[0].value) / (cpu[1].ts - cpu[0].ts)
        assert row[1] == f"{rate:.3f}"
        assert row[2] == f"{latest('deepedge_device_cpu_limit_cores', device=name):.3f}"
        mem = latest("deepedge_device_memory_limit_bytes", device=name) / 2**20
        assert row[4] == f"{mem:.0f}"

    status, html = fetch(base + "/apps")
    assert status == 200
    apps = {row[0]: row for row in cells(html, "apps")}
    assert len(apps) == 5
    for name, row in apps.items():
        assert row[1] == f"{1e3 * latest('deepedge_app_deadline_seconds', app=name):.0f}"
        p95 = latest("deepedge_app_latency_seconds", app=name, quantile="0.95")
        assert row[3] == f"{1e3 * p95:.1f}"
        assert row[6] == f"{latest('deepedge_app_requests_total', app=name):.0f}"

    report = json.loads((SESSION / "report.json").read_text())
    status, html = fetch(base + "/runs")
    assert status == 200
    (run,) = cells(html, "runs")
    assert run[3] == f"{report['accuracy_after']:.3f}"
    for policy, seconds in report["makespan_s"].items():
        assert f"{policy} {seconds:.1f}" in run[4]

    status, html = fetch(base + "/training")
    assert status == 200
    (progress,) = cells(html, "progress")
    (live_plan, *_) = store.events(kinds=["live-plan"])[::-1]
    assert progress[0] == store.events()[-1].state  # the run's state as last logged
    assert progress[1] == live_plan.data["policy"] == "equal"  # the last plan followed
    assert progress[2] == f"{latest('deepedge_train_steps_done'):.0f}" == progress[3]
    trained = {row[0]: row for row in cells(html, "train-devices")}
    assert {d: int(r[1]) for d, r in trained.items()} == live_plan.data["local_batches"]

    status, html = fetch(base + "/events")
    assert status == 200
    shown = cells(html, "events")
    stored = store.events()
    assert len(shown) == len(stored) > 10
    assert [row[3] for row in shown] == [e.message for e in reversed(stored)]  # newest first

    status, html = fetch(base + "/kb")
    assert status == 200 and "no profiles" in html
    # the page's script and its chart library are served from the packages, no CDN
    assert "cdn" not in html.lower()
    assert fetch(base + "/static/dashboard.js")[0] == 200
    status, js = fetch(base + "/static/vendor/plotly.min.js")
    assert status == 200 and "plotly" in js[:2000].lower()


def test_the_json_a_live_page_polls_follows_a_session_that_is_writing(tmp_path: Path) -> None:
    db = tmp_path / "monitor.sqlite"
    with TimeSeriesStore(db) as store, DashboardServer(Sources(db=db), port=0) as server:
        now = time.time() - 10  # samples of the last seconds, as a monitor writes them
        for i in range(3):
            store.write(
                [Sample.of("deepedge_device_cpu_seconds_total", 0.5 * i, now + i, device="d")]
            )
        store.write([Sample.of("deepedge_device_cpu_limit_cores", 0.25, now, device="d")])
        url = f"http://127.0.0.1:{server.port}/api/cluster"
        (device,) = json.loads(fetch(url)[1])["devices"]
        assert device["cpu_used_cores"] == pytest.approx(0.5)
        store.write([Sample.of("deepedge_device_cpu_seconds_total", 1.25, now + 3, device="d")])
        (device,) = json.loads(fetch(url)[1])["devices"]
        assert device["cpu_used_cores"] == pytest.approx(0.25)  # the newest interval's rate
        assert device["cpu_limit_cores"] == 0.25
        # a page that has polled asks only for what is new: the newest point, and values
        # (the rate) still computed from the sample before it
        seen = json.loads(fetch(url)[1])
        store.write([Sample.of("deepedge_device_cpu_seconds_total", 2.0, now + 4, device="d")])
        (new,) = json.loads(fetch(f"{url}?since={seen['updated']}")[1])["devices"]
        # the newest point, and the few seconds before (a late row) for the page to dedup
        assert new["cpu_series"]["t"][-1] == now + 4
        assert min(new["cpu_series"]["t"]) > seen["updated"] - OVERLAP_S
        assert new["cpu_used_cores"] == pytest.approx(0.75)
        assert len(seen["devices"][0]["cpu_series"]["t"]) == 3


def test_a_token_guards_every_page_and_the_dashboard_is_read_only(tmp_path: Path) -> None:
    # off loopback a token is required: generated when none is given
    assert check_bind("127.0.0.1", None) is None
    generated = check_bind("0.0.0.0", None)
    assert generated and len(generated) >= 16 and check_bind("0.0.0.0", None) != generated
    assert check_bind("0.0.0.0", TOKEN) == TOKEN

    sources = Sources(db=None, runs=[SESSION])
    with DashboardServer(sources, port=0, token=TOKEN) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert fetch(base + "/healthz") == (200, "ok")
        for path in ("/", "/cluster", "/runs", "/api/runs", "/static/dashboard.js"):
            assert fetch(base + path)[0] == 401, path
        assert fetch(base + "/runs", headers={"Authorization": "Bearer wrong-token-1234"})[0] == 401
        assert fetch(base + "/runs", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        # ?token= once; the browser keeps it in an HttpOnly cookie
        request = urllib.request.Request(base + f"/runs?token={TOKEN}")
        with urllib.request.urlopen(request, timeout=10) as response:
            cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert fetch(base + "/api/runs", headers={"Cookie": cookie.split(";")[0]})[0] == 200
        # nothing can be changed without --allow-control
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for method in ("POST", "PUT", "DELETE"):
            status, body = fetch(base + "/api/runs", method=method, headers=auth)
            assert status == 403 and "--allow-control" in body
    with DashboardServer(sources, port=0, allow_control=True) as server:
        status, _ = fetch(f"http://127.0.0.1:{server.port}/api/runs", method="POST")
        assert status != 403  # allowed through (no action lives at this path)
        # a loopback dashboard answers only to loopback names: a page whose own name was
        # made to resolve to 127.0.0.1 (DNS rebinding) gets nothing
        base = f"http://127.0.0.1:{server.port}"
        assert fetch(base + "/api/runs", headers={"Host": "evil.example:80"})[0] == 403
        assert fetch(base + "/api/runs", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    for args, says in (
        (["--db", str(tmp_path / "missing.sqlite")], "does not exist"),
        (["--port", "70000"], "--port"),
        (["--host", "0.0.0.0", "--token", "short"], "16 characters"),
        (["--db", str(SESSION / "report.json")], "report.json"),  # not a monitor store
    ):
        result = run_cli("dashboard", *args)
        lines = result.err.strip().splitlines()
        assert result.code != 0 and len(lines) == 1 and says in lines[0], result.err


def test_with_allow_control_the_page_adds_a_device_to_the_watched_spec(tmp_path: Path) -> None:
    from deepedge.spec import ClusterSpec, load_spec

    spec = tmp_path / "cluster.yaml"
    shutil.copy(Path(deepedge.__file__).parent / "examples" / "small-cluster.yaml", spec)
    before = [d.name for d in load_spec(ClusterSpec, spec).devices]
    with DashboardServer(Sources(), port=0, allow_control=True, spec=spec) as server:
        url = f"http://127.0.0.1:{server.port}/api/control/devices"
        as_json = {"Content-Type": "application/json"}
        as_form = {"Content-Type": "application/x-www-form-urlencoded"}
        from_elsewhere = {**as_json, "Origin": "http://evil.example"}

        def post(body: bytes, headers: dict) -> tuple[int, dict]:
            request = urllib.request.Request(url, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, json.load(response)
            except urllib.error.HTTPError as err:
                return err.code, json.load(err)

        status, answer = post(b'{"name": "joiner-1", "kind": "rpi4"}', as_json)
        assert status == 200 and answer["added"] == "joiner-1"
        after = [d.name for d in load_spec(ClusterSpec, spec).devices]
        assert after == [*before, "joiner-1"] and answer["devices"] == len(after)
        # refused, and the spec left as it was: a taken name, a form post (what another
        # site's page could send), another origin, a body that is not an object
        for body, headers, code, says in (
            (b'{"name": "joiner-1", "kind": "rpi4"}', as_json, 400, "already has"),
            (b"name=x&kind=rpi4", as_form, 415, "JSON"),
            (b'{"name": "x", "kind": "rpi4"}', from_elsewhere, 403, "cross-origin"),
            (b"[1, 2]", as_json, 400, "JSON object"),
            (b'{"name": "y", "kind": "no-such-board"}', as_json, 400, "unknown device kind"),
        ):  # fmt: skip
            status, answer = post(body, headers)
            assert (status, says in answer["error"]) == (code, True), answer
        assert [d.name for d in load_spec(ClusterSpec, spec).devices] == after
    with DashboardServer(Sources(), port=0, allow_control=True) as server:  # no --spec
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/api/control/devices",
            data=b'{"name": "z", "kind": "rpi4"}',
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 409


def test_a_past_run_serves_the_plots_its_report_lists_and_nothing_else(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "timeline.png").write_bytes(b"PNG, not really")
    (tmp_path / "secret.txt").write_text("not for the dashboard")
    plots = {
        "timeline": str(run / "timeline.png"),
        "outside": str(tmp_path / "secret.txt"),
        "lc_latency": None,  # what a demo without LC apps writes
    }
    (run / "report.json").write_text(json.dumps({"plots": plots, "job": "not a dict"}))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "report.json").write_text("[1, 2]")  # JSON, but not a report
    with DashboardServer(Sources(runs=[run, SESSION, odd]), port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert fetch(base + "/runs/0/plots/timeline") == (200, "PNG, not really")
        for path in ("/runs/0/plots/outside", "/runs/0/plots/nope", "/runs/9/plots/timeline"):
            assert fetch(base + path)[0] == 404, path
        # the recorded demo's plots moved with its folder: found beside its report
        with urllib.request.urlopen(base + "/runs/1/plots/step_timeline", timeout=10) as r:
            assert r.read() == (SESSION / "step_timeline.png").read_bytes()
        status, html = fetch(base + "/runs")
        assert status == 200 and '<img src="/runs/1/plots/lc_latency"' in html
        assert "/runs/0/plots/lc_latency" not in html and "no readable report" in html


def test_the_knowledge_base_page_shows_its_profiles_and_draws_its_plots(tmp_path: Path) -> None:
    from deepedge.interference import InterferenceModel, load_books, observations, train_resident
    from deepedge.profile.kb import KnowledgeBase, ProfileKey
    from deepedge.spec import JobSpec, load_spec
    from tests.unit.test_cli_interference import EXAMPLES, fill

    kb = tmp_path / "kb.sqlite"
    fill(kb)  # 40 co-location runs of an app, a stressor and the demo job on orin-1
    job = load_spec(JobSpec, EXAMPLES / "demo-job.yaml")
    with KnowledgeBase(kb) as base:
        key = ProfileKey.build("jetson-nano", {"cores": 4}, "sig", [["cnn_inference", 20.0]])
        pid = base.open_profile(key, device_name="nano-1")
        base.add_point(pid, 32, [0.30, 0.31], None)
        base.add_point(pid, 8, [0.10, 0.12, 0.11], None)
        base.add_point(pid, 32, [0.29], None)  # one median over both points at 32
        books = load_books(base, job)
        obs = observations(base.interference_runs(), books)
        InterferenceModel.fit(obs, books, resident=train_resident(job)).save(base)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    with DashboardServer(Sources(kb=kb), port=0) as server:
        base_url = f"http://127.0.0.1:{server.port}"
        status, html = fetch(base_url + "/kb")
        assert status == 200
        (profile,) = cells(html, "profiles")
        assert profile[1] == "nano-1" and profile[4] == "3" and profile[5] == "8: 0.110, 32: 0.300"
        (model,) = cells(html, "models")
        assert model[0] == "interference"
        names = re.findall(r'<img src="/kb/plots/([^"]+)\.png"', html)
        assert names == ["step-times", "interference-oof", "sensitivity-orin-nano"]
        for name in names:
            with urllib.request.urlopen(f"{base_url}/kb/plots/{name}.png", timeout=30) as r:
                png = r.read()
                assert r.headers["content-type"] == "image/png"
            assert png.startswith(b"\x89PNG") and len(png) > 5000, name
        assert fetch(base_url + "/kb/plots/nope.png")[0] == 404
        # read-only: the file is as it was and nothing was made beside it
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files

        # a run recorded after the fit: the model's out-of-fold predictions no longer
        # line up with the stored runs, and the page says so instead of drawing them
        with KnowledgeBase(kb) as base:
            run = base.interference_runs()[0]
            base.add_interference(run.device, "later", run.scenario, run.result)
        status, html = fetch(base_url + "/kb")
        names = re.findall(r'<img src="/kb/plots/([^"]+)\.png"', html)
        assert names == ["step-times", "sensitivity-orin-nano"]
        assert "refit it" in html
        assert fetch(base_url + "/kb/plots/interference-oof.png")[0] == 404
