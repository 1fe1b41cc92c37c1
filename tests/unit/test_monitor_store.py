"""The SQLite time-series store: round trips, retention, export, bad files, concurrency."""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import threading

import pytest

from deepedge.errors import MonitorError
from deepedge.monitor import Sample, TimeSeriesStore


def _cpu(device: str, ts: float, value: float) -> Sample:
    return Sample.of("deepedge_device_cpu_seconds_total", value, ts, device=device)


@pytest.fixture
def store(tmp_path):
    with TimeSeriesStore(tmp_path / "ts.db", compact_every_s=None) as s:
        yield s


def test_round_trip_with_label_filter_and_time_window(store):
    store.write([_cpu(d, 100.0 + i, i * 10.0) for i in range(10) for d in ("a", "b")])
    store.write([Sample.of("deepedge_host_memory_used_bytes", 5.0, 103.0)])

    got = store.query(
        "deepedge_device_cpu_seconds_total", start=102, end=105, labels={"device": "a"}
    )
    assert [(s.ts, s.value) for s in got] == [
        (102.0, 20.0),
        (103.0, 30.0),
        (104.0, 40.0),
        (105.0, 50.0),
    ]
    assert {s.labels for s in got} == {(("device", "a"),)}

    everything_at_103 = store.query(start=103, end=103)
    assert sorted(s.metric for s in everything_at_103) == [
        "deepedge_device_cpu_seconds_total",
        "deepedge_device_cpu_seconds_total",
        "deepedge_host_memory_used_bytes",
    ]
    assert store.query("no_such_metric") == []
    assert store.query(labels={"device": "c"}) == []


def test_nan_and_inf_round_trip(store):
    store.write(
        [
            Sample.of("deepedge_app_latency_seconds", math.nan, 1.0, app="x", quantile="0.95"),
            Sample.of("deepedge_app_latency_seconds", math.inf, 2.0, app="x", quantile="0.95"),
            Sample.of("deepedge_app_latency_seconds", -math.inf, 3.0, app="x", quantile="0.95"),
            Sample.of("deepedge_app_latency_seconds", 0.25, 4.0, app="x", quantile="0.95"),
        ]
    )
    values = [s.value for s in store.query("deepedge_app_latency_seconds")]
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf, 0.25]


def test_compact_rolls_up_old_points_and_drops_expired_rollups(tmp_path):
    with TimeSeriesStore(
        tmp_path / "ts.db",
        raw_retention_s=100.0,
        rollup_s=10.0,
        rollup_retention_s=1000.0,
        compact_every_s=None,
    ) as store:
        store.write([_cpu("a", float(t), float(t)) for t in range(30)])  # 0..29, old
        store.write([_cpu("a", float(t), float(t)) for t in range(195, 200)])  # recent
        store.write([_cpu("a", 12.0, math.nan)])  # a NaN: not counted in the bucket

        moved, dropped = store.compact(now=200.0)  # cutoff 100
        assert (moved, dropped) == (31, 0)
        buckets = [(p.ts, n, lo, hi, p.value) for p, n, lo, hi in store.rollups()]
        assert buckets == [
            (0.0, 10, 0.0, 9.0, 4.5),
            (10.0, 10, 10.0, 19.0, 14.5),
            (20.0, 10, 20.0, 29.0, 24.5),
        ]
        # query: one mean per old bucket, raw points for the recent period, by ts
        assert [(s.ts, s.value) for s in store.query()] == [
            (0.0, 4.5),
            (10.0, 14.5),
            (20.0, 24.5),
            *((float(t), float(t)) for t in range(195, 200)),
        ]

        store.write([_cpu("a", 5.0, 100.0)])  # late point for an already rolled bucket
        store.compact(now=200.0)
        (first, n, lo, hi), *_ = store.rollups()
        assert (n, lo, hi) == (11, 0.0, 100.0)
        assert first.value == pytest.approx((45.0 + 100.0) / 11)

        moved, dropped = store.compact(now=1025.0)  # cutoff 920; rollups before 25 expire
        assert (moved, dropped) == (5, 2)
        assert [(p.ts, n, p.value) for p, n, _, _ in store.rollups()] == [
            (20.0, 10, 24.5),
            (190.0, 5, 197.0),
        ]
        assert store.query(start=100) == [
            Sample("deepedge_device_cpu_seconds_total", 197.0, 190.0, (("device", "a"),))
        ]
        assert store.last_ts() == 190.0  # only a rollup left: its bucket's start


def test_last_ts_is_the_newest_point_raw_or_rolled_up(store):
    assert store.last_ts() is None
    store.write([_cpu("a", 5.0, 1.0), _cpu("b", 7.5, 2.0), _cpu("a", 6.0, 3.0)])
    assert store.last_ts() == 7.5


def test_export_csv_and_json(store, tmp_path):
    store.write([_cpu("a", 1.0, 0.5), _cpu("b", 2.0, math.inf), _cpu("a", 3.0, 7.0)])

    n = store.export(tmp_path / "out.csv", start=1.5, fmt="csv")
    assert n == 2
    with open(tmp_path / "out.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["ts"] for r in rows] == ["2.0", "3.0"]
    assert json.loads(rows[0]["labels"]) == {"device": "b"}
    assert float(rows[0]["value"]) == math.inf
    assert rows[1]["metric"] == "deepedge_device_cpu_seconds_total"

    assert store.export(tmp_path / "out.json", fmt="json") == 3
    data = json.loads((tmp_path / "out.json").read_text())
    assert data[0] == {
        "ts": 1.0,
        "metric": "deepedge_device_cpu_seconds_total",
        "labels": {"device": "a"},
        "value": 0.5,
    }
    assert data[1]["value"] == math.inf

    with pytest.raises(ValueError):
        store.export(tmp_path / "out.xml", fmt="xml")  # type: ignore[arg-type]


def test_a_file_that_is_not_sqlite_is_a_monitor_error(tmp_path):
    bad = tmp_path / "notes.db"
    bad.write_bytes(b"these are my notes, not a database\n" * 200)
    with pytest.raises(MonitorError) as info:
        TimeSeriesStore(bad)
    assert str(bad) in str(info.value)
    assert "--db" in info.value.hint


def test_shares_the_file_with_other_tables_and_uses_wal(tmp_path):
    path = tmp_path / "kb.db"
    other = sqlite3.connect(path)
    other.execute("CREATE TABLE profiles (device TEXT, ms REAL)")
    other.execute("INSERT INTO profiles VALUES ('nano', 12.5)")
    other.commit()
    with TimeSeriesStore(path) as store:
        store.write([_cpu("a", 1.0, 1.0)])
    assert other.execute("SELECT * FROM profiles").fetchall() == [("nano", 12.5)]
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    tables = {r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"ts_series", "ts_samples", "ts_rollups"} <= tables
    other.close()


def test_concurrent_writers_threads_and_a_second_connection(tmp_path):
    path = tmp_path / "ts.db"
    with TimeSeriesStore(path) as store, TimeSeriesStore(path) as other_process:
        errors: list[BaseException] = []

        def writer(target: TimeSeriesStore, device: str) -> None:
            try:
                for i in range(50):
                    target.write([_cpu(device, i + j / 10, float(i)) for j in range(10)])
            except BaseException as err:  # surfaced below
                errors.append(err)

        threads = [
            threading.Thread(target=writer, args=(store, "t1")),
            threading.Thread(target=writer, args=(store, "t2")),
            threading.Thread(target=writer, args=(other_process, "p2")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for device in ("t1", "t2", "p2"):
            assert len(store.query(labels={"device": device})) == 500


def test_a_writer_closing_under_an_open_reader_leaves_every_row_in_the_file(tmp_path):
    path = tmp_path / "ts.db"
    writer = TimeSeriesStore(path, compact_every_s=None)
    writer.write([_cpu("a", float(t), float(t)) for t in range(500)])
    reader = TimeSeriesStore.open_readonly(path)  # a dashboard watching the run
    assert len(reader.query()) == 500
    writer.close()
    reader.close()
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())  # the file alone, without its -wal
    assert len(TimeSeriesStore.open_readonly(copy).query()) == 500
