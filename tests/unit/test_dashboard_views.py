"""The dashboard's training and events views, from what a run's feed writes to a store."""

from __future__ import annotations

import time

import pytest

from deepedge.control.events import EventLog, RunState
from deepedge.control.feed import RunFeed
from deepedge.dashboard import Sources
from deepedge.monitor import Sample, TimeSeriesStore
from deepedge.spec import Plan


def test_training_progress_eta_and_plan_come_from_the_feed(tmp_path) -> None:
    db = tmp_path / "monitor.sqlite"
    plan = Plan(
        policy="deep-edge",
        global_batch=96,
        local_batches={"fast": 64, "slow": 32},
        predicted_step_s=0.5,
        predicted_comm_s=0.05,
    )
    with TimeSeriesStore(db, compact_every_s=None) as store:
        feed = RunFeed(store, steps_total=100)
        log = EventLog()
        log.listeners.append(feed.event)
        log.add(RunState.TRAIN, "state", "training with deep-edge", policy="deep-edge")
        feed.plan(plan, {"fast": 0.40, "slow": 0.45}, plan.predicted_comm_s)
        t0 = time.time() - 20
        # 10 steps done in 10 s: 1 step/s, 90 to go
        store.write([Sample.of("deepedge_train_steps_done", i, t0 + i) for i in range(11)])
        feed.step("slow", 0.47, None)
        feed.flush()

        sources = Sources(db=db)
        view = sources.training()  # while the run goes on
        assert view["state"] == "train" and view["policy"] == "deep-edge"
        assert view["steps_total"] == 100
        assert view["steps_done"] == 10 and view["progress"] == pytest.approx(0.10)
        assert view["eta_s"] == pytest.approx(90.0)
        devices = {d["device"]: d for d in view["devices"]}
        assert devices["fast"]["local_batch"] == 64 and devices["slow"]["local_batch"] == 32
        assert devices["fast"]["wait_s"] == pytest.approx(0.05) and devices["slow"]["wait_s"] == 0
        assert devices["slow"]["last_compute_s"] == pytest.approx(0.47)
        assert view["comm_s"] == pytest.approx(0.05)

        feed.close()
        feed.step("fast", 0.41, 11)  # after close: dropped, no error
    # the session closed its store; the run's end is still appended
    log.add(RunState.DONE, "state", "done")
    view = sources.training()
    assert view["state"] == "done" and view["eta_s"] is None and view["steps_done"] == 10

    events = sources.events()["events"]
    assert [e["kind"] for e in events] == ["state", "live-plan", "state"]  # newest first
    assert [events[0]["message"], events[2]["message"]] == ["done", "training with deep-edge"]
    sources.close()


def test_a_store_from_before_events_has_none(tmp_path) -> None:
    db = tmp_path / "monitor.sqlite"
    with TimeSeriesStore(db) as store:
        store._db.execute("DROP TABLE ts_events")  # as written before events were stored
    assert Sources(db=db).events()["events"] == []
    assert Sources(db=db).training()["policy"] is None


def test_serving_follows_each_policys_ticks_and_polls_only_what_is_new(tmp_path) -> None:
    from deepedge.serving.run import tick_samples

    db = tmp_path / "serving.sqlite"
    t0 = time.time() - 30

    def row(i: int) -> dict:
        return {
            "trace_rps": 10.0 + i,
            "observed_rps": 9.0 + i,
            "forecast_rps": 11.0 + i,
            "capacity_rps": 20.0,
            "cost_per_hour": 0.01 * (i + 1),
            "p95_ms": None if i == 0 else 40.0 + i,
            "ready": 2,
            "starting": i % 2,
        }

    with TimeSeriesStore(db) as store:
        for i in range(5):
            store.write(tick_samples("barista", row(i), t0 + i))
        store.write(tick_samples("reactive", row(0), t0 + 1))
    sources = Sources(db=db)
    view = sources.serving()
    barista, reactive = view["policies"]
    assert (barista["policy"], reactive["policy"]) == ("barista", "reactive")
    assert barista["latest_rps"] == {
        "trace": 14.0,
        "observed": 13.0,
        "forecast": 15.0,
        "capacity": 20.0,
    }
    assert barista["p95_ms"] == pytest.approx(44.0) and reactive["p95_ms"] is None
    assert (barista["ready"], barista["starting"], barista["cost_per_hour"]) == (2, 0, 0.05)
    assert barista["series"]["trace"]["rps"] == [10.0, 11.0, 12.0, 13.0, 14.0]
    newer = sources.serving(since=t0 + 8)["policies"][0]["series"]["trace"]
    assert newer == {"t": [t0 + 4], "rps": [14.0]}  # with OVERLAP_S (5 s) before since
    sources.close()


def test_a_poll_with_nothing_new_keeps_the_latest_values(tmp_path) -> None:
    db = tmp_path / "monitor.sqlite"
    t = time.time() - 20
    with TimeSeriesStore(db) as store:
        for q, v in (("0.5", 0.002), ("0.95", 0.009), ("0.99", 0.02)):
            store.write([Sample.of("deepedge_app_latency_seconds", v, t, app="cam", quantile=q)])
    sources = Sources(db=db)
    (app,) = sources.apps(since=t + 10)["apps"]  # nothing after t + 10 - OVERLAP_S
    assert app["series"]["p95"]["t"] == []
    assert app["latest_ms"] == pytest.approx({"p50": 2.0, "p95": 9.0, "p99": 20.0})
    sources.close()
