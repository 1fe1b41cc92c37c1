"""The profile knowledge base: measured step and all-reduce times, kept across jobs.

Profiling a device costs minutes of its time while its latency-critical apps run, so what
was measured is kept in one SQLite file and reused until it stops being true. A profile
is only valid for a :class:`ProfileKey` (device kind, the hardware that fixes its speed,
the model and the LC load on the device) *and* the software that ran it; when any of that
changes, old profiles are marked *stale* (with a reason a person can read) instead of
being deleted, so ``deepedge profile`` can still show what was measured and why it no
longer counts.

The file is shared: the monitor writes its time series (tables ``ts_*``) into the same
database while a profiler writes profiles (tables ``kb_*``). SQLite handles that safely
when every connection uses WAL mode, a generous busy timeout and short write
transactions that take the write lock up front (``BEGIN IMMEDIATE``): a deferred
transaction that reads and then writes can fail with "database is locked" without ever
waiting, which the busy timeout cannot fix.

Each :meth:`KnowledgeBase.add_point` commits on its own, so a device or profiler that
dies halfway loses only the measurement in progress; :meth:`KnowledgeBase.mark_partial`
records why a profile is incomplete.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepedge.errors import KnowledgeBaseError

__all__ = [
    "SCHEMA_VERSION",
    "CommPoint",
    "InterferenceRow",
    "KnowledgeBase",
    "Profile",
    "ProfileKey",
    "ProfilePoint",
    "SoftwareVersions",
    "UsageRow",
    "default_kb_path",
]

SCHEMA_VERSION: int = 2
"""Stored as ``PRAGMA user_version``; bump it (and add a migration) when the tables change."""

_BUSY_TIMEOUT_S = 30.0
_SQLITE_MAGIC = b"SQLite format 3\x00"
_KB_TABLES = (
    "kb_meta",
    "kb_profiles",
    "kb_points",
    "kb_comm",
    "kb_usage",
    "kb_interference",
    "kb_models",
)


def default_kb_path() -> Path:
    """``$DEEPEDGE_KB``, else the XDG data directory, so every job on a machine shares one.

    Read from the environment on every call, not once at import, so a test or a caller
    that sets ``$DEEPEDGE_KB`` (or ``$XDG_DATA_HOME``) later is obeyed in this process too.
    """
    explicit = os.environ.get("DEEPEDGE_KB")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "deepedge" / "kb.sqlite"


def _canonical(value: object) -> str:
    """One spelling per value, so equal keys compare equal as strings in SQL."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _reset_hint(path: Path) -> str:
    return f"move it aside with `deepedge profile reset --kb {path}` (nothing is deleted)"


# ---------------------------------------------------------------------------------------
# value types


@dataclass(frozen=True)
class ProfileKey:
    """What a throughput profile is valid for.

    ``hardware`` and ``load`` are canonical JSON so that a key is a plain, hashable value
    and two equal configurations always match in the database, whatever their dict order.
    """

    device_kind: str
    hardware: str  # canonical JSON (sorted keys) of what fixes the device's speed
    model_signature: str  # 16-hex model hash
    load: str  # canonical JSON of the LC load on the device, e.g. [["cnn_inference",20.0]]

    @classmethod
    def build(
        cls,
        device_kind: str,
        hardware: Mapping[str, object],
        model_signature: str,
        load: Sequence[object],
    ) -> ProfileKey:
        """Canonicalise ``hardware`` and ``load`` to JSON (sorted keys, no spaces)."""
        return cls(device_kind, _canonical(dict(hardware)), model_signature, _canonical(list(load)))


@dataclass(frozen=True)
class SoftwareVersions:
    """The software a measurement was taken with; a change makes it stale.

    A new torch can change kernel speed, a new deepedge the training step itself, a new
    Python the interpreter overhead that dominates small batches.
    """

    torch: str
    deepedge: str
    python: str

    @classmethod
    def current(cls) -> SoftwareVersions:
        """The versions of this process, without importing torch if it is not loaded yet."""
        torch_mod = sys.modules.get("torch")
        torch_version = getattr(torch_mod, "__version__", None)
        if torch_version is None:
            try:
                torch_version = importlib.metadata.version("torch")
            except importlib.metadata.PackageNotFoundError:
                torch_version = "none"
        return cls(str(torch_version), _deepedge_version(), platform.python_version())

    def as_json(self) -> str:
        return _canonical(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SoftwareVersions:
        data = json.loads(text)
        return cls(str(data["torch"]), str(data["deepedge"]), str(data["python"]))

    def changes_from(self, old: SoftwareVersions) -> str:
        """What differs from ``old``, e.g. ``'torch 2.12.0 → 2.13.0'``."""
        parts = [
            f"{name} {before} → {after}"
            for name, before, after in (
                ("torch", old.torch, self.torch),
                ("deepedge", old.deepedge, self.deepedge),
                ("python", old.python, self.python),
            )
            if before != after
        ]
        return ", ".join(parts) or "no change"


def _deepedge_version() -> str:
    try:
        from deepedge import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - only in a broken install
        return importlib.metadata.version("deepedge")


@dataclass(frozen=True)
class ProfilePoint:
    """Step times measured at one batch size (several steps, so the caller can summarise)."""

    batch: int
    step_times_s: tuple[float, ...]
    peak_memory_mb: float | None
    measured_at: float  # time.time()


@dataclass(frozen=True)
class Profile:
    """A device kind's measured step times for one model, load and software."""

    id: int
    key: ProfileKey
    software: SoftwareVersions
    created_at: float
    updated_at: float
    stale_reason: str | None  # None = fresh
    partial_reason: str | None  # e.g. "device 'nano-1' died after 2 of 4 batch sizes"
    cost_s: float  # total seconds spent profiling it
    points: tuple[ProfilePoint, ...]  # sorted by batch; repeats kept, the latest last
    device_name: str | None  # the device it was last measured on (informational)

    @property
    def fresh(self) -> bool:
        return self.stale_reason is None


@dataclass(frozen=True)
class CommPoint:
    """All-reduce times of ``nbytes`` among ``workers`` on one network fabric."""

    fabric: str  # canonical JSON key of the network + participants
    workers: int
    nbytes: int
    times_s: tuple[float, ...]
    measured_at: float


@dataclass(frozen=True)
class UsageRow:
    """What one resident consumed alone on a device (see :meth:`KnowledgeBase.add_usage`)."""

    device: str  # canonical JSON device key
    resident: str  # e.g. "stressor:cpu", "app:kv_lookup", "train:<model sig>/<optimizer>"
    setting: dict[str, Any]
    usage: dict[str, float]
    measured_at: float


@dataclass(frozen=True)
class InterferenceRow:
    """One co-location run (see :meth:`KnowledgeBase.add_interference`)."""

    device: str
    campaign: str
    scenario: dict[str, Any]
    result: dict[str, Any]
    measured_at: float


# ---------------------------------------------------------------------------------------
# schema

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS kb_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kb_profiles (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    device_kind     TEXT NOT NULL,
    hardware        TEXT NOT NULL,
    model_signature TEXT NOT NULL,
    load            TEXT NOT NULL,
    software        TEXT NOT NULL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    stale_reason    TEXT,
    partial_reason  TEXT,
    cost_s          REAL NOT NULL DEFAULT 0,
    device_name     TEXT
);
CREATE INDEX IF NOT EXISTS kb_profiles_key
    ON kb_profiles (device_kind, model_signature, hardware, load);
CREATE UNIQUE INDEX IF NOT EXISTS kb_profiles_one_fresh
    ON kb_profiles (device_kind, hardware, model_signature, load, software)
    WHERE stale_reason IS NULL;
CREATE TABLE IF NOT EXISTS kb_points (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    profile_id     INTEGER NOT NULL REFERENCES kb_profiles (id) ON DELETE CASCADE,
    batch          INTEGER NOT NULL CHECK (batch > 0),
    step_times_s   TEXT NOT NULL,
    peak_memory_mb REAL,
    measured_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS kb_points_profile ON kb_points (profile_id, batch);
CREATE TABLE IF NOT EXISTS kb_comm (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    fabric       TEXT NOT NULL,
    workers      INTEGER NOT NULL CHECK (workers > 0),
    nbytes       INTEGER NOT NULL CHECK (nbytes >= 0),
    times_s      TEXT NOT NULL,
    software     TEXT NOT NULL,
    measured_at  REAL NOT NULL,
    stale_reason TEXT
);
CREATE INDEX IF NOT EXISTS kb_comm_fabric ON kb_comm (fabric, workers, nbytes);
"""

# Schema 2: interference profiling (FECBench method). ``kb_usage`` holds what each resident
# (a stressor at an intensity, an LC app at a rate, the training job at a batch and
# intensity) consumes running alone on a device, so combinations never run together can be
# composed; ``kb_interference`` holds co-location runs and what they measured;
# ``kb_models`` the fitted surrogate models.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS kb_usage (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    device       TEXT NOT NULL,
    resident     TEXT NOT NULL,
    setting      TEXT NOT NULL,
    usage        TEXT NOT NULL,
    software     TEXT NOT NULL,
    measured_at  REAL NOT NULL,
    stale_reason TEXT
);
CREATE INDEX IF NOT EXISTS kb_usage_device ON kb_usage (device, resident);
CREATE TABLE IF NOT EXISTS kb_interference (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    device       TEXT NOT NULL,
    campaign     TEXT NOT NULL,
    scenario     TEXT NOT NULL,
    result       TEXT NOT NULL,
    software     TEXT NOT NULL,
    measured_at  REAL NOT NULL,
    stale_reason TEXT
);
CREATE INDEX IF NOT EXISTS kb_interference_campaign ON kb_interference (campaign, device);
CREATE TABLE IF NOT EXISTS kb_models (
    name      TEXT PRIMARY KEY,
    blob      BLOB NOT NULL,
    meta      TEXT NOT NULL,
    software  TEXT NOT NULL,
    fitted_at REAL NOT NULL
);
"""


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript would COMMIT the open transaction; run the statements one by one.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: lambda conn: _run_script(conn, _SCHEMA_V2),
}
"""``_MIGRATIONS[n]`` upgrades a schema-``n`` file to ``n + 1`` inside the open transaction.

A file of an older schema without a migration path is refused with the reset hint rather
than guessed at.
"""


def _mark_stale(conn: sqlite3.Connection, reasons: Sequence[tuple[int, str]]) -> int:
    """Mark each (profile id, reason) stale now; returns how many."""
    now = time.time()
    conn.executemany(
        "UPDATE kb_profiles SET stale_reason = ?, updated_at = ? WHERE id = ?",
        [(reason, now, pid) for pid, reason in reasons],
    )
    return len(reasons)


def _create_schema(conn: sqlite3.Connection) -> None:
    _run_script(conn, _SCHEMA_V1)
    _run_script(conn, _SCHEMA_V2)
    conn.execute(
        "INSERT OR IGNORE INTO kb_meta (key, value) VALUES ('created_by', ?), ('created_at', ?)",
        (f"deepedge {_deepedge_version()}", datetime.now(UTC).isoformat(timespec="seconds")),
    )
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


# ---------------------------------------------------------------------------------------
# the store


_PROFILE_COLUMNS = (
    "id, device_kind, hardware, model_signature, load, software, created_at, updated_at, "
    "stale_reason, partial_reason, cost_s, device_name"
)


class KnowledgeBase:
    """Profiles and all-reduce measurements in one SQLite file, safe for several processes.

    One connection per instance, usable from several threads (calls are serialised by a
    lock). Every method is a complete, short transaction, so nothing is half-written if
    the process dies between calls.
    """

    def __init__(self, path: Path | str | None = None, *, create: bool = True) -> None:
        """Open (with ``create``: create if need be) the knowledge base at ``path``.

        ``path=None`` means :func:`default_kb_path` as of this call. With
        ``create=False`` (read-only commands) nothing is written into a file that does not
        already hold a knowledge base: a missing, empty or monitor-only file is refused.
        A non-SQLite or foreign SQLite file is refused either way, before anything is
        written to it.
        """
        self.path = Path(path if path is not None else default_kb_path()).expanduser()
        self._lock = threading.RLock()
        if not self.path.exists():
            if not create:
                raise KnowledgeBaseError(
                    f"knowledge base {self.path} does not exist",
                    hint="measure the cluster first with `deepedge profile run`",
                )
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise KnowledgeBaseError(
                    f"cannot create the directory of knowledge base {self.path}: {err.strerror}",
                    hint="pick a writable path with --kb or $DEEPEDGE_KB",
                ) from None
        self._check_header()
        # create=False: mode=rw, so a file removed since the check above is not recreated.
        target = self.path if create else f"{self.path.absolute().as_uri()}?mode=rw"
        try:
            self._conn = sqlite3.connect(
                target,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
                uri=not create,
            )
        except sqlite3.Error as err:
            raise KnowledgeBaseError(
                f"cannot open knowledge base {self.path} ({err})",
                hint="pick a writable path with --kb or $DEEPEDGE_KB",
            ) from None
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            self._refuse_before_writing(create)
            self._configure()
            self._check_schema(create)
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise self._wrap(err) from None
        except BaseException:
            self._conn.close()
            raise

    # --- opening

    def _check_header(self) -> None:
        """Refuse a non-SQLite file before SQLite touches it, so it is never modified.

        A missing or empty file is fine: SQLite creates the database in it (another
        process may be doing so right now, so existence is not checked separately).
        """
        if self.path.is_dir():
            raise KnowledgeBaseError(
                f"knowledge base {self.path} is a directory, not a file",
                hint="pick a file path with --kb or $DEEPEDGE_KB",
            )
        try:
            with self.path.open("rb") as fh:
                head = fh.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except OSError as err:
            raise KnowledgeBaseError(
                f"cannot read knowledge base {self.path}: {err.strerror}",
                hint="check the file's permissions",
            ) from None
        if not _SQLITE_MAGIC.startswith(head):  # a prefix: being written this instant
            raise KnowledgeBaseError(
                f"knowledge base {self.path} is not a SQLite database "
                f"(it starts with {head[:8]!r})",
                hint=_reset_hint(self.path),
            )

    def _refuse_before_writing(self, create: bool) -> None:
        """Refuse, with reads only, a file this instance must not write to.

        Switching to WAL rewrites the file's header and creating the schema adds tables,
        so a foreign database, a newer schema, or (without ``create``) a file that holds
        no knowledge base yet is refused here, before either happens.
        """
        refusal = self._refusal(*self._schema_state(), create=create)
        if refusal is not None:
            raise refusal

    def _refusal(
        self, version: int, tables: set[str], *, create: bool
    ) -> KnowledgeBaseError | None:
        """Why this file must not be opened (``None``: it may be)."""
        others = sorted(t for t in tables if not t.startswith("ts_"))
        if version == 0:
            if others:  # our schema always sets user_version, so these are someone else's
                return self._foreign(f"it has tables {', '.join(others[:5])}")
            if not create:
                what = "holds only monitor time series" if tables else "is empty"
                return KnowledgeBaseError(
                    f"knowledge base {self.path} holds no profiles yet (the file {what})",
                    hint=f"measure the cluster first with `deepedge profile run --kb {self.path}`",
                )
            return None
        if not any(t.startswith("kb_") for t in tables):
            listed = f"tables {', '.join(others[:5])}" if others else "no tables of ours"
            return self._foreign(f"it has user_version {version} and {listed}")
        if version > SCHEMA_VERSION:
            return KnowledgeBaseError(
                f"knowledge base {self.path} has schema {version}, written by a newer "
                f"deepedge (this one reads schema {SCHEMA_VERSION})",
                hint=f"upgrade deepedge, or {_reset_hint(self.path)}",
            )
        return None

    def _foreign(self, what: str) -> KnowledgeBaseError:
        return KnowledgeBaseError(
            f"{self.path} is not a deepedge knowledge base ({what})",
            hint=f"use another path with --kb, or {_reset_hint(self.path)}",
        )

    def _configure(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA foreign_keys = ON")
        # Switching to WAL needs a moment of exclusive access; another process that is
        # switching at the same time can make it fail once without the busy handler.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if str(mode).lower() != "wal":
            raise KnowledgeBaseError(
                f"knowledge base {self.path} cannot use WAL journal mode (got {mode!r})",
                hint="put it on a local file system with --kb or $DEEPEDGE_KB",
            )
        conn.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL, much faster

    def _schema_state(self) -> tuple[int, set[str]]:
        """(user_version, table names), read in one statement: one snapshot, so a process
        creating the schema this instant is never seen half-way (tables but no version)."""
        rows = self._conn.execute(
            "SELECT (SELECT user_version FROM pragma_user_version), name FROM sqlite_master "
            "WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "UNION ALL SELECT (SELECT user_version FROM pragma_user_version), NULL"
        ).fetchall()
        return int(rows[0][0]), {name for _, name in rows if name is not None}

    def _check_schema(self, create: bool) -> None:
        """Accept our schema, create it in an empty or monitor-only file, refuse the rest."""
        version, tables = self._schema_state()
        if version == SCHEMA_VERSION and set(_KB_TABLES) <= tables:
            return  # the common case needs no write lock
        with self._write() as conn:  # re-check under the lock: another process may be creating
            version, tables = self._schema_state()
            refusal = self._refusal(version, tables, create=create)
            if refusal is not None:
                raise refusal
            if version == 0:
                _create_schema(conn)
                return
            while version < SCHEMA_VERSION:
                migrate = _MIGRATIONS.get(version)
                if migrate is None:
                    raise KnowledgeBaseError(
                        f"knowledge base {self.path} has the old schema {version} "
                        f"and cannot be upgraded to {SCHEMA_VERSION}",
                        hint=_reset_hint(self.path),
                    )
                migrate(conn)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            missing = [t for t in _KB_TABLES if t not in self._schema_state()[1]]
            if missing:
                raise KnowledgeBaseError(
                    f"knowledge base {self.path} is damaged: table {missing[0]} is missing",
                    hint=_reset_hint(self.path),
                )

    # --- transactions

    def _wrap(self, err: sqlite3.Error) -> KnowledgeBaseError:
        text = str(err)
        if "locked" in text or "busy" in text:
            return KnowledgeBaseError(
                f"knowledge base {self.path} stayed locked for over {_BUSY_TIMEOUT_S:.0f} s",
                hint="another deepedge process holds it; retry when it has finished",
            )
        if "malformed" in text or "not a database" in text:
            return KnowledgeBaseError(
                f"knowledge base {self.path} is damaged or truncated ({text})",
                hint=_reset_hint(self.path),
            )
        return KnowledgeBaseError(
            f"knowledge base {self.path} cannot be used ({text})", hint=_reset_hint(self.path)
        )

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction that takes the write lock first (waits up to the timeout)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise self._wrap(err) from None
            try:
                yield self._conn
            except sqlite3.Error as err:  # e.g. a damaged page met halfway: one line, not a trace
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise self._wrap(err) from None
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as err:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise self._wrap(err) from None

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot across several SELECTs."""
        with self._lock:
            try:
                self._conn.execute("BEGIN")
                yield self._conn
            except sqlite3.Error as err:
                raise self._wrap(err) from None
            finally:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("COMMIT")

    # --- throughput profiles

    def profile_for(
        self, key: ProfileKey, software: SoftwareVersions | None = None
    ) -> Profile | None:
        """The fresh profile for key under these versions (default current).

        Profiles with the same key but other software versions are marked stale here
        (the reason names what changed, e.g. 'torch 2.12.0 → 2.13.0') and not returned,
        so a caller never plans with times measured on other software.
        """
        sw = software or SoftwareVersions.current()
        with self._read() as conn:
            others = conn.execute(
                "SELECT 1 FROM kb_profiles WHERE stale_reason IS NULL AND device_kind = ? "
                "AND hardware = ? AND model_signature = ? AND load = ? AND software != ? LIMIT 1",
                (*_key_tuple(key), sw.as_json()),
            ).fetchone()
        if others:
            with self._write() as conn:
                self._stale_other_software(conn, key, sw)
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_PROFILE_COLUMNS} FROM kb_profiles WHERE stale_reason IS NULL "
                "AND device_kind = ? AND hardware = ? AND model_signature = ? AND load = ? "
                "AND software = ? ORDER BY id DESC LIMIT 1",
                (*_key_tuple(key), sw.as_json()),
            ).fetchone()
            return None if row is None else self._load_profiles(conn, [row])[0]

    def open_profile(
        self,
        key: ProfileKey,
        *,
        device_name: str | None = None,
        software: SoftwareVersions | None = None,
    ) -> int:
        """Id of the fresh profile for key (creating it if none), so new points add to it.

        Several profilers may open the same key at once; the lookup and insert run in one
        write transaction, so they all get the same profile.
        """
        sw = software or SoftwareVersions.current()
        now = time.time()
        with self._write() as conn:
            self._stale_other_software(conn, key, sw)
            row = conn.execute(
                "SELECT id FROM kb_profiles WHERE stale_reason IS NULL AND device_kind = ? "
                "AND hardware = ? AND model_signature = ? AND load = ? AND software = ? "
                "ORDER BY id DESC LIMIT 1",
                (*_key_tuple(key), sw.as_json()),
            ).fetchone()
            if row is not None:
                profile_id = int(row[0])
                if device_name is not None:
                    conn.execute(
                        "UPDATE kb_profiles SET device_name = ? WHERE id = ?",
                        (device_name, profile_id),
                    )
                return profile_id
            cursor = conn.execute(
                "INSERT INTO kb_profiles (device_kind, hardware, model_signature, load, software,"
                " created_at, updated_at, device_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*_key_tuple(key), sw.as_json(), now, now, device_name),
            )
            assert cursor.lastrowid is not None
            return int(cursor.lastrowid)

    def _stale_other_software(
        self, conn: sqlite3.Connection, key: ProfileKey, sw: SoftwareVersions
    ) -> int:
        rows = conn.execute(
            "SELECT id, software FROM kb_profiles WHERE stale_reason IS NULL AND device_kind = ? "
            "AND hardware = ? AND model_signature = ? AND load = ? AND software != ?",
            (*_key_tuple(key), sw.as_json()),
        ).fetchall()
        return _mark_stale(
            conn,
            [
                (pid, f"software changed: {sw.changes_from(SoftwareVersions.from_json(old))}")
                for pid, old in rows
            ],
        )

    def add_point(
        self,
        profile_id: int,
        batch: int,
        step_times_s: Sequence[float],
        peak_memory_mb: float | None,
        *,
        cost_s: float = 0.0,
    ) -> None:
        """Record step times at one batch size and commit at once (a later crash loses nothing).

        ``cost_s`` (the seconds this measurement took) is added to the profile's cost, so
        the planner can weigh re-profiling against its price.
        """
        if batch <= 0:
            raise ValueError(f"batch must be positive, got {batch}")
        times = [float(t) for t in step_times_s]
        if not all(math.isfinite(t) and t >= 0 for t in times):
            raise ValueError(f"step times must be finite and non-negative, got {times}")
        if peak_memory_mb is not None and not math.isfinite(peak_memory_mb):
            raise ValueError(f"peak memory must be finite, got {peak_memory_mb}")
        if not (math.isfinite(cost_s) and cost_s >= 0):
            raise ValueError(f"cost_s must be finite and non-negative, got {cost_s}")
        now = time.time()
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE kb_profiles SET cost_s = cost_s + ?, updated_at = ? WHERE id = ?",
                (float(cost_s), now, profile_id),
            ).rowcount
            if updated == 0:
                raise _no_profile(self.path, profile_id)
            conn.execute(
                "INSERT INTO kb_points (profile_id, batch, step_times_s, peak_memory_mb,"
                " measured_at) VALUES (?, ?, ?, ?, ?)",
                (
                    profile_id,
                    int(batch),
                    json.dumps(times),
                    None if peak_memory_mb is None else float(peak_memory_mb),
                    now,
                ),
            )

    def mark_partial(self, profile_id: int, reason: str | None) -> None:
        """Say why a profile is incomplete (``None`` clears it once it has been completed)."""
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE kb_profiles SET partial_reason = ?, updated_at = ? WHERE id = ?",
                (reason, time.time(), profile_id),
            ).rowcount
            if updated == 0:
                raise _no_profile(self.path, profile_id)

    def get(self, profile_id: int) -> Profile:
        """The profile with this id, fresh or stale."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_PROFILE_COLUMNS} FROM kb_profiles WHERE id = ?", (profile_id,)
            ).fetchone()
            if row is None:
                raise _no_profile(self.path, profile_id)
            return self._load_profiles(conn, [row])[0]

    def profiles(
        self,
        *,
        include_stale: bool = False,
        device_kind: str | None = None,
        model_signature: str | None = None,
    ) -> list[Profile]:
        """Profiles matching the filters, oldest first (fresh only unless asked)."""
        where, args = _profile_filter(
            fresh_only=not include_stale, device_kind=device_kind, model_signature=model_signature
        )
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_PROFILE_COLUMNS} FROM kb_profiles WHERE {where} ORDER BY id", args
            ).fetchall()
            return self._load_profiles(conn, rows)

    def invalidate(
        self,
        *,
        profile_id: int | None = None,
        device_kind: str | None = None,
        model_signature: str | None = None,
        reason: str = "invalidated by user",
    ) -> int:
        """Mark matching fresh profiles stale; returns how many. With no filter: all of them.

        Stale profiles are kept (not deleted) so one can still see what was measured.
        """
        where, args = _profile_filter(
            fresh_only=True,
            profile_id=profile_id,
            device_kind=device_kind,
            model_signature=model_signature,
        )
        with self._write() as conn:
            return conn.execute(
                f"UPDATE kb_profiles SET stale_reason = ?, updated_at = ? WHERE {where}",
                (reason, time.time(), *args),
            ).rowcount

    def mark_stale_hardware(self, device_kind: str, hardware: str) -> int:
        """Mark stale the fresh profiles of device_kind whose hardware JSON differs.

        The caller says "this kind now has this hardware" (e.g. the catalog entry or the
        cluster spec changed its cores); profiles measured on other hardware no longer
        describe it. Returns how many were marked.
        """
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id, hardware FROM kb_profiles WHERE stale_reason IS NULL "
                "AND device_kind = ? AND hardware != ?",
                (device_kind, hardware),
            ).fetchall()
            return _mark_stale(
                conn,
                [
                    (pid, f"hardware of {device_kind!r} changed: {_describe_change(old, hardware)}")
                    for pid, old in rows
                ],
            )

    def _load_profiles(self, conn: sqlite3.Connection, rows: Sequence[Any]) -> list[Profile]:
        if not rows:
            return []
        ids = [int(r[0]) for r in rows]
        points: dict[int, list[ProfilePoint]] = {i: [] for i in ids}
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for pid, batch, times, mem, at in conn.execute(
                "SELECT profile_id, batch, step_times_s, peak_memory_mb, measured_at "
                f"FROM kb_points WHERE profile_id IN ({marks}) ORDER BY profile_id, batch, id",
                chunk,
            ):
                points[int(pid)].append(
                    ProfilePoint(
                        int(batch),
                        tuple(float(t) for t in json.loads(times)),
                        None if mem is None else float(mem),
                        float(at),
                    )
                )
        return [
            Profile(
                id=int(r[0]),
                key=ProfileKey(r[1], r[2], r[3], r[4]),
                software=SoftwareVersions.from_json(r[5]),
                created_at=float(r[6]),
                updated_at=float(r[7]),
                stale_reason=r[8],
                partial_reason=r[9],
                cost_s=float(r[10]),
                points=tuple(points[int(r[0])]),
                device_name=r[11],
            )
            for r in rows
        ]

    # --- communication (all-reduce) profiles

    def add_comm_point(
        self,
        fabric: str,
        workers: int,
        nbytes: int,
        times_s: Sequence[float],
        *,
        software: SoftwareVersions | None = None,
    ) -> None:
        """Record all-reduce times of ``nbytes`` among ``workers`` on ``fabric``; commits."""
        if workers <= 0 or nbytes < 0:
            raise ValueError(f"need workers > 0 and nbytes >= 0, got {workers}, {nbytes}")
        times = [float(t) for t in times_s]
        if not all(math.isfinite(t) and t >= 0 for t in times):
            raise ValueError(f"all-reduce times must be finite and non-negative, got {times}")
        sw = software or SoftwareVersions.current()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO kb_comm (fabric, workers, nbytes, times_s, software, measured_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (fabric, int(workers), int(nbytes), json.dumps(times), sw.as_json(), time.time()),
            )

    def comm_points(self, fabric: str, software: SoftwareVersions | None = None) -> list[CommPoint]:
        """Fresh all-reduce points of ``fabric`` under these versions, by workers and size.

        Points of the fabric taken with other software are marked stale here, as for
        throughput profiles.
        """
        sw = software or SoftwareVersions.current()
        with self._read() as conn:
            others = conn.execute(
                "SELECT DISTINCT software FROM kb_comm WHERE stale_reason IS NULL "
                "AND fabric = ? AND software != ?",
                (fabric, sw.as_json()),
            ).fetchall()
        if others:
            with self._write() as conn:
                for (old,) in others:
                    reason = f"software changed: {sw.changes_from(SoftwareVersions.from_json(old))}"
                    conn.execute(
                        "UPDATE kb_comm SET stale_reason = ? WHERE stale_reason IS NULL "
                        "AND fabric = ? AND software = ?",
                        (reason, fabric, old),
                    )
        with self._read() as conn:
            rows = conn.execute(
                "SELECT fabric, workers, nbytes, times_s, measured_at FROM kb_comm "
                "WHERE stale_reason IS NULL AND fabric = ? AND software = ? "
                "ORDER BY workers, nbytes, id",
                (fabric, sw.as_json()),
            ).fetchall()
        return [
            CommPoint(f, int(w), int(n), tuple(float(t) for t in json.loads(ts)), float(at))
            for f, w, n, ts, at in rows
        ]

    def invalidate_comm(self, fabric: str | None = None) -> int:
        """Mark fresh all-reduce points stale (of one fabric, or all); returns how many."""
        where, args = "stale_reason IS NULL", ()
        if fabric is not None:
            where, args = where + " AND fabric = ?", (fabric,)
        with self._write() as conn:
            return conn.execute(
                f"UPDATE kb_comm SET stale_reason = 'invalidated by user' WHERE {where}", args
            ).rowcount

    # --- interference profiling (schema 2)

    def add_usage(
        self,
        device: str,
        resident: str,
        setting: Mapping[str, object],
        usage: Mapping[str, float],
        *,
        software: SoftwareVersions | None = None,
    ) -> None:
        """Record what ``resident`` consumed running alone on ``device`` at ``setting``."""
        sw = software or SoftwareVersions.current()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO kb_usage (device, resident, setting, usage, software, measured_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    device,
                    resident,
                    _canonical(dict(setting)),
                    _canonical(dict(usage)),
                    sw.as_json(),
                    time.time(),
                ),
            )

    def usages(self, device: str | None = None) -> list[UsageRow]:
        """Fresh solo-usage rows (of one device key, or all), oldest first."""
        where, args = "stale_reason IS NULL", ()
        if device is not None:
            where, args = where + " AND device = ?", (device,)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT device, resident, setting, usage, measured_at FROM kb_usage "
                f"WHERE {where} ORDER BY id",
                args,
            ).fetchall()
        return [
            UsageRow(d, r, json.loads(st), json.loads(u), float(at)) for d, r, st, u, at in rows
        ]

    def add_interference(
        self,
        device: str,
        campaign: str,
        scenario: Mapping[str, object],
        result: Mapping[str, object],
        *,
        software: SoftwareVersions | None = None,
    ) -> None:
        """Record one co-location run (its scenario and what it measured); commits."""
        sw = software or SoftwareVersions.current()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO kb_interference (device, campaign, scenario, result, software, "
                "measured_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    device,
                    campaign,
                    _canonical(dict(scenario)),
                    _canonical(dict(result)),
                    sw.as_json(),
                    time.time(),
                ),
            )

    def interference_runs(
        self, *, campaign: str | None = None, device: str | None = None
    ) -> list[InterferenceRow]:
        """Fresh co-location runs, oldest first, optionally of one campaign or device key."""
        where, args = ["stale_reason IS NULL"], []
        for column, value in (("campaign", campaign), ("device", device)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT device, campaign, scenario, result, measured_at FROM kb_interference "
                f"WHERE {' AND '.join(where)} ORDER BY id",
                args,
            ).fetchall()
        return [
            InterferenceRow(d, c, json.loads(sc), json.loads(r), float(at))
            for d, c, sc, r, at in rows
        ]

    def invalidate_interference(
        self, device: str | None = None, *, campaign_prefix: str | None = None
    ) -> int:
        """Mark usage rows and co-location runs stale (of one device key, or all); with
        ``campaign_prefix``, only the co-location runs of campaigns named so."""
        where, args = "stale_reason IS NULL", ()
        if device is not None:
            where, args = where + " AND device = ?", (device,)
        tables = ("kb_usage", "kb_interference")
        if campaign_prefix is not None:
            escaped = campaign_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where, args = where + " AND campaign LIKE ? ESCAPE '\\'", (*args, escaped + "%")
            tables = ("kb_interference",)
        with self._write() as conn:
            n = 0
            for table in tables:
                n += conn.execute(
                    f"UPDATE {table} SET stale_reason = 'invalidated by user' WHERE {where}", args
                ).rowcount
            return n

    def save_model(self, name: str, blob: bytes, meta: Mapping[str, object]) -> None:
        """Store (replace) a fitted model under ``name``."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO kb_models (name, blob, meta, software, fitted_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    name,
                    sqlite3.Binary(blob),
                    _canonical(dict(meta)),
                    SoftwareVersions.current().as_json(),
                    time.time(),
                ),
            )

    def load_model(self, name: str) -> tuple[bytes, dict[str, Any]] | None:
        """The stored model ``name`` and its metadata, or None."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT blob, meta FROM kb_models WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else (bytes(row[0]), json.loads(row[1]))

    # --- admin

    def close(self) -> None:
        """Close the connection (the last one to close checkpoints the WAL into the file)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KnowledgeBase({str(self.path)!r})"

    @staticmethod
    def reset(path: Path | str) -> Path | None:
        """Move an existing file aside to ``<name>.bak-<UTC timestamp>``; never delete anything.

        Its ``-wal`` and ``-shm`` files move with it under the backup's name, so SQLite
        still finds committed-but-uncheckpointed data when the backup is opened. Returns
        the backup path, or ``None`` when there was no file. Works on corrupt files and
        files of any schema, which is exactly when it is needed.
        """
        src = Path(path).expanduser()
        if not src.exists():
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        backup = src.with_name(f"{src.name}.bak-{stamp}")
        n = 1
        while any(Path(f"{backup}{s}").exists() for s in ("", "-wal", "-shm")):
            backup = src.with_name(f"{src.name}.bak-{stamp}-{n}")
            n += 1
        try:
            src.rename(backup)
            for suffix in ("-wal", "-shm"):
                side = Path(f"{src}{suffix}")
                if side.exists():
                    side.rename(Path(f"{backup}{suffix}"))
        except OSError as err:
            raise KnowledgeBaseError(
                f"cannot move knowledge base {src} aside: {err.strerror}",
                hint="check the directory's permissions",
            ) from None
        return backup


# ---------------------------------------------------------------------------------------
# helpers


def _key_tuple(key: ProfileKey) -> tuple[str, str, str, str]:
    return (key.device_kind, key.hardware, key.model_signature, key.load)


def _profile_filter(
    *,
    fresh_only: bool,
    profile_id: int | None = None,
    device_kind: str | None = None,
    model_signature: str | None = None,
) -> tuple[str, tuple[object, ...]]:
    clauses: list[str] = ["stale_reason IS NULL"] if fresh_only else []
    args: list[object] = []
    for column, value in (
        ("id", profile_id),
        ("device_kind", device_kind),
        ("model_signature", model_signature),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    return " AND ".join(clauses) or "1", tuple(args)


def _describe_change(old: str, new: str) -> str:
    """The fields that differ between two hardware JSON objects, e.g. 'cpu_cores 2 → 1'."""
    try:
        before, after = json.loads(old), json.loads(new)
    except ValueError:
        return f"{old} → {new}"
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return f"{old} → {new}"
    parts = [
        f"{k} {_short(before.get(k))} → {_short(after.get(k))}"
        for k in sorted(before.keys() | after.keys())
        if before.get(k) != after.get(k)
    ]
    return ", ".join(parts) or f"{old} → {new}"


def _short(value: object) -> str:
    return "(none)" if value is None else _canonical(value)


def _no_profile(path: Path, profile_id: int) -> KnowledgeBaseError:
    return KnowledgeBaseError(
        f"knowledge base {path} has no profile {profile_id}",
        hint="it may have been moved aside by `deepedge profile reset`; "
        "measure again with `deepedge profile run`",
    )
