"""Exporting a stored monitor file: read-only, one-line errors, atomic output."""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import sqlite3
from pathlib import Path

import pytest

from deepedge.errors import MonitorError
from deepedge.monitor import Sample, TimeSeriesStore, export_monitor_window
from deepedge.monitor import store as store_mod
from deepedge.profile import KnowledgeBase
from tests.conftest import assert_one_line, file_snapshot

CPU = "deepedge_device_cpu_seconds_total"
MEM = "deepedge_host_memory_used_bytes"
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def _record(path: Path, n: int = 20) -> Path:
    """A monitor file as a finished `deepedge monitor` run leaves it (WAL mode, closed)."""
    with TimeSeriesStore(path, compact_every_s=None) as store:
        store.write([Sample.of(CPU, float(i), T0 + i, device="d") for i in range(n)])
        store.write([Sample.of(MEM, 1e9, T0 + i) for i in range(0, n, 5)])
    return path


def _no_temps(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------- success


def test_export_leaves_the_input_untouched_and_writes_csv(tmp_path: Path) -> None:
    db = _record(tmp_path / "monitor.sqlite")
    assert db.read_bytes()[18] == 2  # WAL mode, as the monitor writes it
    before = file_snapshot(db)
    out = tmp_path / "window.csv"
    n = export_monitor_window(db, out, start=T0 + 5, end=T0 + 9, metric=CPU)
    assert n == 5
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["ts"]) for r in rows] == [T0 + i for i in range(5, 10)]
    assert {r["metric"] for r in rows} == {CPU}
    assert json.loads(rows[0]["labels"]) == {"device": "d"}
    assert file_snapshot(db) == before  # same bytes, same mtime, no -wal/-shm created
    assert _no_temps(tmp_path)


def test_export_json_is_chosen_by_suffix(tmp_path: Path) -> None:
    db = _record(tmp_path / "monitor.sqlite")
    out = tmp_path / "all.json"
    assert export_monitor_window(db, out) == 24
    data = json.loads(out.read_text())
    assert data[0] == {"ts": T0, "metric": CPU, "labels": {"device": "d"}, "value": 0.0}
    assert export_monitor_window(db, tmp_path / "all.txt", fmt="json") == 24
    assert json.loads((tmp_path / "all.txt").read_text()) == data


def test_export_while_a_monitor_is_still_writing(tmp_path: Path) -> None:
    """A live writer's -wal is read (its latest points are exported) and left alone."""
    db = tmp_path / "monitor.sqlite"
    with TimeSeriesStore(db, compact_every_s=None) as live:
        live.write([Sample.of(CPU, 1.0, T0, device="d")])
        live.write([Sample.of(CPU, 2.0, T0 + 1, device="d")])
        assert Path(f"{db}-wal").exists()
        assert export_monitor_window(db, tmp_path / "w.csv") == 2
        live.write([Sample.of(CPU, 3.0, T0 + 2, device="d")])  # the writer is unaffected
        assert len(live.query(CPU)) == 3


def test_a_read_only_store_refuses_writes(tmp_path: Path) -> None:
    db = _record(tmp_path / "monitor.sqlite")
    before = file_snapshot(db)
    with TimeSeriesStore.open_readonly(db) as store:
        assert store.readonly and len(store.query(CPU)) == 20
        assert store.holdings() == {CPU: (20, T0, T0 + 19), MEM: (4, T0, T0 + 15)}
        for attempt in (lambda: store.write([Sample.of(CPU, 1.0, T0)]), store.compact):
            with pytest.raises(MonitorError, match="read-only"):
                attempt()
    assert file_snapshot(db) == before


def test_a_rollback_journal_file_is_read_in_place(tmp_path: Path) -> None:
    """A store copied into DELETE journal mode (e.g. by `sqlite3 .backup`) reads the same."""
    db = _record(tmp_path / "monitor.sqlite")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    before = file_snapshot(db)
    assert export_monitor_window(db, tmp_path / "w.csv", metric=MEM) == 4
    assert file_snapshot(db) == before


# --------------------------------------------------------------- files that are not ours


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.close()


def _empty_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")  # writes the header page: SQLite, no tables
    conn.close()


def _knowledge_base(path: Path) -> None:
    KnowledgeBase(path).close()


def _other_schema_column(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE ts_series (id INTEGER PRIMARY KEY, metric TEXT, labels TEXT)")
        conn.execute("CREATE TABLE ts_samples (series_id INTEGER, ts REAL, value REAL)")
        conn.execute("CREATE TABLE ts_rollups (series_id INTEGER, bucket_ts REAL, count INT)")
    conn.close()


def _other_schema_table(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE ts_points (ts REAL, value REAL)")
    conn.close()


def _truncated(fraction: float):
    def make(path: Path) -> None:
        _record(path, n=3000)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return make


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.touch(), r"is empty \(0 bytes\)"),
        (lambda p: p.write_bytes(b"\x00\xffgarbage" * 500), "not a SQLite database"),
        (lambda p: p.write_text("name: lab\ndevices: []\n"), "not a SQLite database"),
        (_empty_database, "empty SQLite database"),
        (_foreign, r"not a deepedge time-series store \(it has tables customers\)"),
        (_knowledge_base, "knowledge base without monitor time series"),
        (_other_schema_column, "another schema: table ts_series lacks column labels_json"),
        (_other_schema_table, "another schema: table ts_series is missing"),
        (_truncated(0.0005), "truncated"),  # inside the 100-byte header
        (_truncated(0.5), "truncated"),
        (_truncated(0.97), "truncated"),
    ],
    ids=[
        "empty-file",
        "garbage",
        "yaml",
        "empty-sqlite",
        "foreign-sqlite",
        "knowledge-base",
        "other-schema-column",
        "other-schema-table",
        "truncated-header",
        "truncated-half",
        "truncated-tail",
    ],
)
def test_a_file_that_is_not_a_store_is_one_line_and_untouched(
    tmp_path: Path, make, message: str
) -> None:
    db = tmp_path / "input.sqlite"
    make(db)
    before = file_snapshot(db)
    out = tmp_path / "out.csv"
    with pytest.raises(MonitorError, match=message) as info:
        export_monitor_window(db, out)
    assert_one_line(info.value, db)
    assert file_snapshot(db) == before  # no tables, no WAL switch, no side files
    assert not out.exists() and _no_temps(tmp_path)


def test_a_foreign_database_keeps_its_journal_mode_and_tables(tmp_path: Path) -> None:
    db = tmp_path / "app.sqlite"
    _foreign(db)
    with pytest.raises(MonitorError):
        TimeSeriesStore.open_readonly(db)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert names == {"customers"}


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_a_missing_file_or_a_directory_is_one_line(tmp_path: Path, where: str) -> None:
    db = tmp_path / "monitor.sqlite"
    if where == "directory":
        db.mkdir()
    with pytest.raises(MonitorError, match=r"no time-series file|is a directory") as info:
        export_monitor_window(db, tmp_path / "out.csv")
    assert_one_line(info.value, db)
    assert where == "directory" or not db.exists()


@pytest.mark.parametrize("where", [4096, 3 * 4096, -4096, -3 * 4096])
def test_a_damaged_page_is_one_line(tmp_path: Path, where: int) -> None:
    db = _record(tmp_path / "monitor.sqlite", n=3000)
    data = bytearray(db.read_bytes())
    start = where if where >= 0 else len(data) + where
    data[start : start + 4096] = b"\xa5" * 4096
    db.write_bytes(bytes(data))
    try:
        export_monitor_window(db, tmp_path / "out.csv")
    except MonitorError as err:  # never a bare sqlite3.DatabaseError
        assert_one_line(err, db)


# ------------------------------------------------------------------------- 0 samples


def test_an_empty_window_names_what_the_file_holds(tmp_path: Path) -> None:
    db = _record(tmp_path / "monitor.sqlite")
    before = file_snapshot(db)
    out = tmp_path / "out.csv"
    with pytest.raises(MonitorError, match="nothing to export") as info:
        export_monitor_window(db, out, start=T0 + 1000, end=T0 + 2000)
    line = assert_one_line(info.value, db)
    assert "1700001000 (2023-11-14 22:30:00 UTC)" in line  # the window asked for
    assert "1700000000 (2023-11-14 22:13:20 UTC) to 1700000019" in line  # what it holds
    assert CPU in line and MEM in line and "24" in line
    assert "--since" in line and "--until" in line
    assert not out.exists() and _no_temps(tmp_path)
    assert file_snapshot(db) == before


def test_an_empty_window_of_one_metric_gives_that_metrics_range(tmp_path: Path) -> None:
    db = _record(tmp_path / "monitor.sqlite")
    with pytest.raises(MonitorError) as info:
        export_monitor_window(db, tmp_path / "o.csv", start=T0 + 16, metric=MEM)
    line = assert_one_line(info.value, db)
    assert f"of metric {MEM!r} after 1700000016" in line and "holds 4 from 1700000000" in line
    assert "to 1700000015" in line


def test_an_unknown_metric_lists_the_metrics_held(tmp_path: Path) -> None:
    db = _record(tmp_path / "monitor.sqlite")
    with pytest.raises(MonitorError, match="no metric 'cpu'") as info:
        export_monitor_window(db, tmp_path / "o.csv", metric="cpu")
    line = assert_one_line(info.value, db)
    assert f"2 metrics ({CPU}, {MEM})" in line and "--metric" in line


def test_a_store_without_samples(tmp_path: Path) -> None:
    db = tmp_path / "monitor.sqlite"
    TimeSeriesStore(db).close()
    with pytest.raises(MonitorError, match="holds no samples at all") as info:
        export_monitor_window(db, tmp_path / "o.csv")
    assert "deepedge monitor" in assert_one_line(info.value, db)


def test_an_inverted_window_says_so(tmp_path: Path) -> None:
    db = _record(tmp_path / "monitor.sqlite")
    with pytest.raises(MonitorError, match="--since is after --until"):
        export_monitor_window(db, tmp_path / "o.csv", start=T0 + 10, end=T0 + 5)


def test_an_empty_window_leaves_an_existing_export_as_it_was(tmp_path: Path) -> None:
    db = _record(tmp_path / "monitor.sqlite")
    out = tmp_path / "out.csv"
    out.write_text("previous export\n")
    with pytest.raises(MonitorError):
        export_monitor_window(db, out, start=T0 + 1e6)
    assert out.read_text() == "previous export\n"


# ---------------------------------------------------------------------- atomic output


@pytest.mark.parametrize("fails", ["fsync", "replace"])
def test_a_failed_write_leaves_no_half_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    db = _record(tmp_path / "monitor.sqlite")
    out = tmp_path / "out.csv"
    out.write_text("previous export\n")

    def enospc(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_mod.os, fails, enospc)
    with pytest.raises(MonitorError, match=os.strerror(errno.ENOSPC)) as info:
        export_monitor_window(db, out)
    assert_one_line(info.value, out)
    monkeypatch.undo()
    assert out.read_text() == "previous export\n"
    assert _no_temps(tmp_path)


def test_an_error_while_serialising_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = _record(tmp_path / "monitor.sqlite")

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(store_mod.json, "dump", broken)
    with pytest.raises(RuntimeError):
        export_monitor_window(db, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists() and _no_temps(tmp_path)


@pytest.mark.parametrize("target", ["self", "wal", "directory", "missing-dir"])
def test_unwritable_or_dangerous_outputs(tmp_path: Path, target: str) -> None:
    db = _record(tmp_path / "monitor.sqlite")
    before = file_snapshot(db)
    out = {
        "self": db,
        "wal": Path(f"{db}-wal"),
        "directory": tmp_path,
        "missing-dir": tmp_path / "nope" / "out.csv",
    }[target]
    with pytest.raises(MonitorError, match=r"onto itself|is a directory|cannot write") as info:
        export_monitor_window(db, out)
    assert_one_line(info.value, out if target != "wal" else db)
    assert file_snapshot(db) == before


def test_the_writable_store_export_is_atomic_and_refuses_an_empty_window(tmp_path: Path) -> None:
    with TimeSeriesStore(tmp_path / "ts.db", compact_every_s=None) as store:
        store.write([Sample.of(CPU, math.inf, T0, device="a")])
        with pytest.raises(MonitorError, match="nothing to export"):
            store.export(tmp_path / "o.csv", start=T0 + 1)
        assert store.export(tmp_path / "o.csv") == 1
    assert _no_temps(tmp_path)
