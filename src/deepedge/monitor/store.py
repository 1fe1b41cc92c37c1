"""An embedded time-series store in SQLite: recent raw points, older ones as rollups.

Why SQLite and not a TSDB: the coordinator runs on a laptop or an edge gateway with no
server to reach, and the profiler's knowledge base already lives in a SQLite file; the
monitor can share that file (its tables are prefixed ``ts_``), so one ``--db`` holds both
what was profiled and what was observed. Two processes may write the file at once, so
it is opened in WAL mode (readers never block the writer) with a long busy timeout, and
every write transaction starts with ``BEGIN IMMEDIATE`` so it waits for the lock up
front instead of failing when it upgrades from reading to writing.

Retention keeps the file bounded at roughly 100 series × 1 Hz: raw points are kept for
``raw_retention_s`` (an hour: enough to debug a training round at full resolution), then
downsampled into ``rollup_s`` buckets (count/min/max/mean) kept for
``rollup_retention_s`` (a week of trends). :meth:`TimeSeriesStore.compact` does this and
runs by itself about once a minute of writes.

NaN ("nothing measured") is stored as NULL, since SQLite has no NaN, and read back as
NaN; ``inf`` is a valid SQLite REAL and round-trips as is.

Exporting a stored file (``deepedge monitor --db F --export out.csv``) goes through
:func:`export_monitor_window`, which opens the file with
:meth:`TimeSeriesStore.open_readonly`: nothing is ever written to the input (no schema, no
WAL switch, no ``-wal``/``-shm`` files left next to it), a file that is not a time-series
store is refused with one line, an empty window is an error naming what the file does
hold, and the output appears atomically or not at all.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from deepedge.errors import MonitorError
from deepedge.monitor.samples import Labels, Sample
from deepedge.sqlite_readonly import readonly_uri

__all__ = ["StoredEvent", "TimeSeriesStore", "export_monitor_window"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ts_series (
    id INTEGER PRIMARY KEY,
    metric TEXT NOT NULL,
    labels_json TEXT NOT NULL,
    UNIQUE (metric, labels_json)
);
CREATE TABLE IF NOT EXISTS ts_samples (
    series_id INTEGER NOT NULL REFERENCES ts_series (id),
    ts REAL NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS ts_samples_series_ts ON ts_samples (series_id, ts);
CREATE INDEX IF NOT EXISTS ts_samples_ts ON ts_samples (ts);
CREATE TABLE IF NOT EXISTS ts_rollups (
    series_id INTEGER NOT NULL REFERENCES ts_series (id),
    bucket_ts REAL NOT NULL,
    count INTEGER NOT NULL,
    min REAL,
    max REAL,
    mean REAL,
    PRIMARY KEY (series_id, bucket_ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ts_rollups_bucket ON ts_rollups (bucket_ts);
CREATE TABLE IF NOT EXISTS ts_events (
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    state TEXT,
    message TEXT NOT NULL,
    data_json TEXT
);
CREATE INDEX IF NOT EXISTS ts_events_ts ON ts_events (ts);
"""

# Points of one bucket may be rolled up by two compactions (a late write with an old
# timestamp); merge them: counts add, mean is count-weighted (NULL = no non-NaN point).
_ROLLUP = """
INSERT INTO ts_rollups (series_id, bucket_ts, count, min, max, mean)
SELECT series_id, CAST(ts / :step AS INTEGER) * :step, COUNT(value), MIN(value), MAX(value),
       AVG(value)
FROM ts_samples WHERE ts < :cutoff GROUP BY 1, 2
ON CONFLICT (series_id, bucket_ts) DO UPDATE SET
    count = ts_rollups.count + excluded.count,
    min = COALESCE(MIN(ts_rollups.min, excluded.min), ts_rollups.min, excluded.min),
    max = COALESCE(MAX(ts_rollups.max, excluded.max), ts_rollups.max, excluded.max),
    mean = CASE
        WHEN excluded.count = 0 THEN ts_rollups.mean
        WHEN ts_rollups.count = 0 THEN excluded.mean
        ELSE (ts_rollups.mean * ts_rollups.count + excluded.mean * excluded.count)
             / (ts_rollups.count + excluded.count)
    END
"""

_BUSY_TIMEOUT_S = 30.0
_BAD_DB_HINT = "pass another --db path, or move the file aside"
_DB_HINT = "pass the --db file a `deepedge monitor` run wrote (by default OUT/monitor.sqlite)"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQLITE_HEADER_SIZE = 100
_COLUMNS = {
    "ts_series": ("id", "metric", "labels_json"),
    "ts_samples": ("series_id", "ts", "value"),
    "ts_rollups": ("series_id", "bucket_ts", "count", "min", "max", "mean"),
}
"""What the reading side needs; a file lacking any of it has another schema."""


def _labels_json(labels: Labels) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def _labels_from_json(text: str) -> Labels:
    return tuple(sorted(json.loads(text).items()))


def _to_db(value: float) -> float | None:
    return None if math.isnan(value) else value


def _from_db(value: float | None) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class StoredEvent:
    """One event of a run as the store keeps it (see :meth:`TimeSeriesStore.write_events`)."""

    ts: float
    kind: str
    state: str | None
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class TimeSeriesStore:
    """Samples in a SQLite file, safe to share between threads and with other processes."""

    def __init__(
        self,
        path: str | Path,
        *,
        raw_retention_s: float = 3600.0,
        rollup_s: float = 10.0,
        rollup_retention_s: float = 7 * 86400.0,
        compact_every_s: float | None = 60.0,
    ) -> None:
        if not (raw_retention_s > 0 and rollup_s > 0 and rollup_retention_s >= raw_retention_s):
            raise ValueError(
                "need raw_retention_s > 0, rollup_s > 0 and rollup_retention_s >= raw_retention_s"
            )
        self.path = Path(path)
        self.raw_retention_s = raw_retention_s
        self.rollup_s = rollup_s
        self.rollup_retention_s = rollup_retention_s
        self._compact_every_s = compact_every_s
        self._last_compact = time.monotonic()
        self._lock = threading.Lock()
        self._series: dict[tuple[str, Labels], int] = {}
        self.readonly = False
        self._db = self._open()

    @classmethod
    def open_readonly(cls, path: str | Path) -> TimeSeriesStore:
        """Open an existing store only to read it: nothing is written to ``path``.

        No schema is created, the journal mode is left as it is, and no ``-wal``/``-shm``
        files are created next to a file that has none (SQLite's ``immutable`` mode is
        used then, as all committed data is in the file itself; while a writer has the
        file open they exist already and are shared). The one exception: a ``-wal`` copied
        without its ``-shm`` gets a new ``-shm``, which SQLite needs to read the ``-wal``.
        :meth:`write` and :meth:`compact` raise. Raises :class:`MonitorError` (one line)
        if the file is missing, not SQLite, truncated, a foreign database, or of another
        time-series schema.
        """
        store = cls.__new__(cls)
        store.path = Path(path)
        store.raw_retention_s, store.rollup_s, store.rollup_retention_s = 3600.0, 10.0, 7 * 86400.0
        store._compact_every_s = None
        store._last_compact = time.monotonic()
        store._lock = threading.Lock()
        store._series = {}
        store.readonly = True
        store._db = _connect_readonly(store.path)
        return store

    def _refuse_write(self) -> None:
        if self.readonly:
            raise MonitorError(
                f"time-series store {self.path} was opened read-only",
                hint="open it with TimeSeriesStore(path) to write to it",
            )

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,  # explicit BEGIN IMMEDIATE / COMMIT below
                check_same_thread=False,
            )
        except sqlite3.Error as err:
            raise MonitorError(
                f"cannot open time-series store {self.path}: {err}",
                hint="check the directory exists and is writable, or pass another --db path",
            ) from None
        try:
            db.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            _enable_wal(db)
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable up to the last checkpoint
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            db.close()
            raise MonitorError(
                f"{self.path} is not a usable SQLite database ({err})", hint=_BAD_DB_HINT
            ) from None
        return db

    # ------------------------------------------------------------------ writing

    def _series_id(self, metric: str, labels: Labels) -> int:
        key = (metric, labels)
        sid = self._series.get(key)
        if sid is None:
            text = _labels_json(labels)
            self._db.execute(
                "INSERT OR IGNORE INTO ts_series (metric, labels_json) VALUES (?, ?)",
                (metric, text),
            )
            (sid,) = self._db.execute(
                "SELECT id FROM ts_series WHERE metric = ? AND labels_json = ?", (metric, text)
            ).fetchone()
            self._series[key] = sid
        return sid

    def write(self, samples: Iterable[Sample]) -> int:
        """Append ``samples`` in one transaction; returns how many were written."""
        self._refuse_write()
        samples = list(samples)
        if not samples:
            return 0
        with self._lock, self._transaction():
            rows = [(self._series_id(s.metric, s.labels), s.ts, _to_db(s.value)) for s in samples]
            self._db.executemany(
                "INSERT INTO ts_samples (series_id, ts, value) VALUES (?, ?, ?)", rows
            )
        due = self._compact_every_s is not None and (
            time.monotonic() - self._last_compact >= self._compact_every_s
        )
        if due:
            self.compact()
        return len(samples)

    def write_events(self, events: Iterable[StoredEvent]) -> int:
        """Append a run's events (what happened, not a measurement: a plan, a failure, a
        rebalance) in one transaction, so that a reader of this file sees them live."""
        self._refuse_write()
        rows = [
            (e.ts, e.kind, e.state, e.message, json.dumps(e.data, default=str) if e.data else None)
            for e in events
        ]
        if rows:
            with self._lock, self._transaction():
                self._db.executemany(
                    "INSERT INTO ts_events (ts, kind, state, message, data_json) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
        return len(rows)

    def events(
        self, *, start: float | None = None, kinds: Iterable[str] | None = None
    ) -> list[StoredEvent]:
        """Events at or after ``start`` (of ``kinds``), oldest first; none in a file from
        before events were stored."""
        lo = -math.inf if start is None else start
        with self._lock, self._reading():
            if not self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'ts_events'"
            ).fetchone():
                return []
            rows = self._db.execute(
                "SELECT ts, kind, state, message, data_json FROM ts_events "
                "WHERE ts >= ? ORDER BY ts, rowid",
                (lo,),
            ).fetchall()
        wanted = None if kinds is None else set(kinds)
        return [
            StoredEvent(ts, kind, state, message, json.loads(data) if data else {})
            for ts, kind, state, message, data in rows
            if wanted is None or kind in wanted
        ]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on error; SQLite errors → MonitorError.

        Callers hold ``self._lock``. After a rollback the series-id cache may name rows
        that were never committed, so it is dropped.
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._series.clear()
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise _store_error(self.path, err) from None

    # -------------------------------------------------------------- retention

    def compact(self, now: float | None = None) -> tuple[int, int]:
        """Roll raw points older than the raw retention into buckets; drop expired rollups.

        The cutoff is aligned down to a bucket boundary so a bucket is rolled up once,
        whole; a rollup is dropped once all of its bucket is older than the rollup
        retention. Returns (raw points rolled up, rollups dropped).
        """
        self._refuse_write()
        now = time.time() if now is None else now
        cutoff = math.floor((now - self.raw_retention_s) / self.rollup_s) * self.rollup_s
        with self._lock, self._transaction():
            self._db.execute(_ROLLUP, {"step": self.rollup_s, "cutoff": cutoff})
            moved = self._db.execute("DELETE FROM ts_samples WHERE ts < ?", (cutoff,)).rowcount
            dropped = self._db.execute(
                "DELETE FROM ts_rollups WHERE bucket_ts + ? <= ?",
                (self.rollup_s, now - self.rollup_retention_s),
            ).rowcount
        self._last_compact = time.monotonic()
        return moved, dropped

    # ------------------------------------------------------------------ reading

    def _matching_series(
        self, metric: str | None, labels: Mapping[str, str] | None
    ) -> dict[int, tuple[str, Labels]]:
        if metric is None:
            rows = self._db.execute("SELECT id, metric, labels_json FROM ts_series")
        else:
            rows = self._db.execute(
                "SELECT id, metric, labels_json FROM ts_series WHERE metric = ?", (metric,)
            )
        want = {(k, str(v)) for k, v in (labels or {}).items()}
        out = {}
        for sid, m, text in rows:
            lab = _labels_from_json(text)
            if want <= set(lab):
                out[sid] = (m, lab)
        return out

    def query(
        self,
        metric: str | None = None,
        *,
        start: float | None = None,
        end: float | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[Sample]:
        """Points with ``start <= ts <= end`` whose labels include ``labels``, by ts.

        Periods older than the raw retention come back as one point per rollup bucket
        (its mean, at the bucket's start time).
        """
        lo = -math.inf if start is None else start
        hi = math.inf if end is None else end
        with self._lock, self._reading():
            series = self._matching_series(metric, labels)
            if not series:
                return []
            ids = json.dumps(list(series))
            rows = self._db.execute(
                """
                SELECT series_id, ts, value FROM ts_samples
                WHERE series_id IN (SELECT value FROM json_each(:ids)) AND ts BETWEEN :lo AND :hi
                UNION ALL
                SELECT series_id, bucket_ts, mean FROM ts_rollups
                WHERE series_id IN (SELECT value FROM json_each(:ids))
                  AND bucket_ts BETWEEN :lo AND :hi
                ORDER BY 2, 1
                """,
                {"ids": ids, "lo": lo, "hi": hi},
            ).fetchall()
        return [Sample(series[sid][0], _from_db(v), ts, series[sid][1]) for sid, ts, v in rows]

    def rollups(
        self, metric: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> list[tuple[Sample, int, float, float]]:
        """Rollup buckets as (sample of the mean at the bucket start, count, min, max)."""
        with self._lock, self._reading():
            series = self._matching_series(metric, labels)
            if not series:
                return []
            rows = self._db.execute(
                """
                SELECT series_id, bucket_ts, count, min, max, mean FROM ts_rollups
                WHERE series_id IN (SELECT value FROM json_each(?)) ORDER BY bucket_ts, series_id
                """,
                (json.dumps(list(series)),),
            ).fetchall()
        out = []
        for sid, ts, n, lo, hi, mean in rows:
            metric_name, lab = series[sid]
            out.append(
                (Sample(metric_name, _from_db(mean), ts, lab), n, _from_db(lo), _from_db(hi))
            )
        return out

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """SQLite errors while reading (a damaged page, a lock) → one-line MonitorError."""
        try:
            yield
        except sqlite3.Error as err:
            raise _read_error(self.path, err) from None

    def last_ts(self) -> float | None:
        """The newest point's time, raw or rolled up (None when empty); both tables are
        indexed on time, so this is cheap enough to ask every second."""
        with self._lock, self._reading():
            row = self._db.execute(
                "SELECT MAX(x) FROM (SELECT MAX(ts) AS x FROM ts_samples "
                "UNION ALL SELECT MAX(bucket_ts) FROM ts_rollups)"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def holdings(self) -> dict[str, tuple[int, float, float]]:
        """``{metric: (points, first ts, last ts)}`` of everything stored, raw and rolled up.

        Points are counted as :meth:`query` returns them (one per rollup bucket).
        """
        with self._lock, self._reading():
            rows = self._db.execute(
                """
                SELECT s.metric, COUNT(*), MIN(x.ts), MAX(x.ts)
                FROM (SELECT series_id, ts FROM ts_samples
                      UNION ALL SELECT series_id, bucket_ts FROM ts_rollups) AS x
                JOIN ts_series AS s ON s.id = x.series_id
                GROUP BY s.metric ORDER BY s.metric
                """
            ).fetchall()
        return {m: (int(n), float(lo), float(hi)) for m, n, lo, hi in rows}

    def export(
        self,
        path: str | Path,
        *,
        start: float | None = None,
        end: float | None = None,
        metric: str | None = None,
        fmt: Literal["csv", "json"] = "csv",
    ) -> int:
        """Write the points :meth:`query` returns to ``path``; returns the rows written.

        CSV has columns ``ts,metric,labels,value`` with labels as a JSON object; JSON is a
        list of ``{"ts", "metric", "labels", "value"}`` objects. NaN and inf are written as
        Python writes them (``nan``/``inf`` in CSV, ``NaN``/``Infinity`` in JSON), as the
        rest of deepedge's reports do.

        The file is written to a temp file beside ``path`` and renamed over it, so
        ``path`` is either complete or as it was. A window without any point raises
        :class:`MonitorError` naming the time range and metrics the store does hold, and
        writes nothing.
        """
        if fmt not in ("csv", "json"):
            raise ValueError(f"fmt must be 'csv' or 'json', got {fmt!r}")
        dest = Path(path)
        _refuse_own_files(self.path, dest)
        samples = self.query(metric, start=start, end=end)
        if not samples:
            raise self._empty_window(start, end, metric)

        def write(fh: TextIO) -> None:
            if fmt == "csv":
                w = csv.writer(fh)
                w.writerow(["ts", "metric", "labels", "value"])
                w.writerows((s.ts, s.metric, _labels_json(s.labels), s.value) for s in samples)
            else:
                json.dump([_as_json(s) for s in samples], fh, indent=1)
                fh.write("\n")

        _write_atomically(dest, write, newline="" if fmt == "csv" else None)
        return len(samples)

    def _empty_window(
        self, start: float | None, end: float | None, metric: str | None
    ) -> MonitorError:
        held = self.holdings()
        if not held:
            return MonitorError(
                f"nothing to export: {self.path} holds no samples at all",
                hint=f"record some first with `deepedge monitor CLUSTER --db {self.path}`",
            )
        if metric is not None and metric not in held:
            return MonitorError(
                f"nothing to export: {self.path} holds no metric {metric!r}, "
                f"only {_metric_list(held)}",
                hint="pass one of those with --metric, or leave --metric out",
            )
        scope = {metric: held[metric]} if metric is not None else held
        count = sum(n for n, _, _ in scope.values())
        first = min(lo for _, lo, _ in scope.values())
        last = max(hi for _, _, hi in scope.values())
        scope_text = f" of metric {metric!r}" if metric is not None else ""
        of_what = "" if metric is not None else f" of {_metric_list(held)}"
        return MonitorError(
            f"nothing to export: {self.path} has no samples{scope_text} "
            f"{_window_text(start, end)}; it holds {count} from {_when(first)} "
            f"to {_when(last)}{of_what}",
            hint="pick a window inside that range with --since/--until "
            "(unix seconds, or negative for seconds ago)",
        )

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the file (idempotent). A writer first moves its write-ahead log into the
        file: the last connection to close does that by itself, but a reader that is still
        open (a dashboard watching) would otherwise leave every row in ``-wal`` beside a
        near-empty file, and a copy of the file alone would hold nothing."""
        with self._lock:
            if not self.readonly:
                with contextlib.suppress(sqlite3.Error):  # closed already, or busy: best effort
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()

    def __enter__(self) -> TimeSeriesStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_json(s: Sample) -> dict[str, object]:
    return {"ts": s.ts, "metric": s.metric, "labels": dict(s.labels), "value": s.value}


def _store_error(path: Path, err: sqlite3.Error) -> MonitorError:
    return MonitorError(
        f"time-series store {path} failed: {err}",
        hint="another process may hold the database locked; retry, or pass another --db path",
    )


def _enable_wal(db: sqlite3.Connection) -> None:
    """Switch to WAL, retrying while another process holds the lock.

    The switch fails at once with "database is locked" (the busy timeout does not apply)
    when another process, e.g. the profiler opening its knowledge base in the same file,
    is creating or switching the database at that moment.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _when(t: float) -> str:
    """A unix time as the user passes it to --since, with the UTC date for reading."""
    text = f"{t:.3f}".rstrip("0").rstrip(".")
    try:
        return f"{text} ({datetime.fromtimestamp(t, UTC):%Y-%m-%d %H:%M:%S} UTC)"
    except (OverflowError, OSError, ValueError):
        return text


def _window_text(start: float | None, end: float | None) -> str:
    if start is None:
        return "at all" if end is None else f"before {_when(end)}"
    if end is None:
        return f"after {_when(start)}"
    inverted = " (--since is after --until)" if start > end else ""
    return f"between {_when(start)} and {_when(end)}{inverted}"


def _metric_list(held: Mapping[str, object], most: int = 6) -> str:
    names = sorted(held)
    shown = ", ".join(names[:most]) + (
        f" and {len(names) - most} more" if len(names) > most else ""
    )
    return f"{len(names)} metric{'s' if len(names) != 1 else ''} ({shown})"


def _read_error(path: Path, err: sqlite3.Error) -> MonitorError:
    text = str(err)
    if "locked" in text or "busy" in text:
        return _store_error(path, err)
    if "malformed" in text or "not a database" in text:
        return MonitorError(
            f"time-series store {path} is damaged ({text})",
            hint="pass another --db; a copy taken while it was being written can miss its "
            "-wal file, so copy the -wal file with it",
        )
    return MonitorError(f"cannot read time-series store {path} ({text})", hint=_BAD_DB_HINT)


def _read_header(path: Path) -> bytes:
    """The first 100 bytes of ``path``; MonitorError unless they start a SQLite database."""
    if path.is_dir():
        raise MonitorError(f"time-series store {path} is a directory, not a file", hint=_DB_HINT)
    try:
        with path.open("rb") as fh:
            head = fh.read(_SQLITE_HEADER_SIZE)
    except FileNotFoundError:
        raise MonitorError(f"no time-series file at {path}", hint=_DB_HINT) from None
    except OSError as err:
        raise MonitorError(
            f"cannot read time-series store {path}: {err.strerror}",
            hint="check the file's permissions",
        ) from None
    if not head:
        raise MonitorError(
            f"{path} is empty (0 bytes), not a deepedge time-series store", hint=_DB_HINT
        )
    if not head.startswith(_SQLITE_MAGIC):
        raise MonitorError(
            f"{path} is not a SQLite database (it starts with {head[:8]!r})", hint=_DB_HINT
        )
    if len(head) < _SQLITE_HEADER_SIZE:
        raise MonitorError(
            f"time-series store {path} is truncated: {len(head)} bytes, shorter than the "
            f"{_SQLITE_HEADER_SIZE}-byte SQLite header",
            hint="copy it again from where it was recorded, or pass another --db",
        )
    return head


def _check_size(path: Path, head: bytes, has_wal: bool) -> None:
    """Refuse a file shorter than its header says (a copy or download cut short)."""
    (page_size,) = struct.unpack_from(">H", head, 16)
    page_size = 65536 if page_size == 1 else page_size
    (pages,) = struct.unpack_from(">I", head, 28)
    valid = pages > 0 and head[24:28] == head[92:96]  # SQLite's rule for the size field
    size = path.stat().st_size
    if valid and not has_wal and size < pages * page_size:
        raise MonitorError(
            f"time-series store {path} is truncated: its header promises "
            f"{pages * page_size} bytes, the file holds {size}",
            hint="copy it again from where it was recorded, or pass another --db",
        )


def _connect_readonly(path: Path) -> sqlite3.Connection:
    head = _read_header(path)
    has_wal = Path(f"{path}-wal").exists()
    _check_size(path, head, has_wal)
    try:
        db = sqlite3.connect(
            readonly_uri(path),
            uri=True,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as err:
        raise MonitorError(f"cannot open time-series store {path} ({err})", hint=_DB_HINT) from None
    try:
        db.execute("PRAGMA query_only = ON")
        _check_ts_schema(db, path)
    except sqlite3.Error as err:
        db.close()
        raise _read_error(path, err) from None
    except BaseException:
        db.close()
        raise
    return db


def _check_ts_schema(db: sqlite3.Connection, path: Path) -> None:
    tables = {
        name
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        )
    }
    if not any(t.startswith("ts_") for t in tables):
        if not tables:
            problem = "is an empty SQLite database, not a deepedge time-series store"
        elif any(t.startswith("kb_") for t in tables):
            problem = "is a deepedge knowledge base without monitor time series (no ts_ tables)"
        else:
            listed = ", ".join(sorted(tables)[:5])
            problem = f"is not a deepedge time-series store (it has tables {listed})"
        raise MonitorError(f"{path} {problem}", hint=_DB_HINT)
    other_schema = "it was written by another deepedge version; export it with that one"
    for table, needed in _COLUMNS.items():
        if table not in tables:
            raise MonitorError(
                f"time-series store {path} has another schema: table {table} is missing",
                hint=other_schema,
            )
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        missing = [c for c in needed if c not in have]
        if missing:
            raise MonitorError(
                f"time-series store {path} has another schema: table {table} lacks "
                f"column{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                hint=other_schema,
            )


def _refuse_own_files(source: Path, dest: Path) -> None:
    try:
        src, out = source.resolve(), dest.resolve()
    except OSError:
        return
    if out in {src, *(Path(f"{src}{suffix}") for suffix in ("-wal", "-shm", "-journal"))}:
        raise MonitorError(
            f"refusing to export {source} onto itself ({dest})",
            hint="choose another output path, e.g. window.csv",
        )


def _write_atomically(dest: Path, write: Callable[[TextIO], None], *, newline: str | None) -> None:
    """Write via a temp file beside ``dest``, then rename it over ``dest``.

    On any failure the temp file is removed and ``dest`` is left as it was, so an export
    is never half-written.
    """
    if dest.is_dir():
        raise MonitorError(
            f"cannot write {dest}: it is a directory", hint="give a file path, e.g. window.csv"
        )
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            with open(tmp, "x", newline=newline, encoding="utf-8") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    except OSError as err:
        raise MonitorError(
            f"cannot write {dest}: {err.strerror or err}",
            hint="choose a writable output path; nothing was written there",
        ) from None


def export_monitor_window(
    source: str | Path,
    dest: str | Path,
    *,
    start: float | None = None,
    end: float | None = None,
    metric: str | None = None,
    fmt: Literal["csv", "json"] | None = None,
) -> int:
    """Export the samples of ``source`` with ``start <= ts <= end`` to ``dest``.

    ``source`` is opened with :meth:`TimeSeriesStore.open_readonly` (never written to);
    ``fmt`` defaults to JSON for a ``.json`` ``dest`` and CSV otherwise. Returns the rows
    written; raises :class:`MonitorError` (one line, with a hint) when ``source`` is not a
    usable time-series store, when the window holds no sample (naming the range and
    metrics it does hold), or when ``dest`` cannot be written (``dest`` is then as it was).
    """
    dest = Path(dest)
    if fmt is None:
        fmt = "json" if dest.suffix.lower() == ".json" else "csv"
    with TimeSeriesStore.open_readonly(source) as store:
        return store.export(dest, start=start, end=end, metric=metric, fmt=fmt)
