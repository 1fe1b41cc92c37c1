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
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

from deepedge.errors import MonitorError
from deepedge.monitor.samples import Labels, Sample

__all__ = ["TimeSeriesStore"]

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


def _labels_json(labels: Labels) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def _labels_from_json(text: str) -> Labels:
    return tuple(sorted(json.loads(text).items()))


def _to_db(value: float) -> float | None:
    return None if math.isnan(value) else value


def _from_db(value: float | None) -> float:
    return math.nan if value is None else float(value)


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
        self._db = self._open()

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
        with self._lock:
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
        with self._lock:
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
        """
        if fmt not in ("csv", "json"):
            raise ValueError(f"fmt must be 'csv' or 'json', got {fmt!r}")
        samples = self.query(metric, start=start, end=end)
        try:
            with open(path, "w", newline="" if fmt == "csv" else None) as fh:
                if fmt == "csv":
                    w = csv.writer(fh)
                    w.writerow(["ts", "metric", "labels", "value"])
                    w.writerows((s.ts, s.metric, _labels_json(s.labels), s.value) for s in samples)
                else:
                    json.dump([_as_json(s) for s in samples], fh, indent=1)
                    fh.write("\n")
        except OSError as err:
            raise MonitorError(
                f"cannot write {path}: {err.strerror}", hint="choose a writable output path"
            ) from None
        return len(samples)

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
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
