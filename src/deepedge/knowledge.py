"""The knowledge base's file: one SQLite database of measurements, shared by every job.

Profiling a device costs minutes of its time while its latency-critical apps run, and an
interference campaign costs more, so what was measured is kept in one SQLite file and
reused until it stops being true. This module is what every store in that file shares:
opening it (refusing, before anything is written, a file that is not a knowledge base or
was written by a newer deepedge), creating the schema and upgrading files of an older one,
the transactions, and moving a file aside. The stores sit with the packages they serve:
throughput profiles and all-reduce times in :mod:`deepedge.profile.kb`, solo usage,
co-location runs and fitted models in :mod:`deepedge.interference.kb`; the
:class:`~deepedge.profile.kb.KnowledgeBase` callers open is all of them over one
connection. The schema stays one for the whole file (:data:`SCHEMA_VERSION` counts every
store's tables), so an old file is upgraded in one step whichever store opens it.

The file is shared: the monitor writes its time series (tables ``ts_*``) into the same
database while a profiler writes profiles (tables ``kb_*``). SQLite handles that safely
when every connection uses WAL mode, a generous busy timeout and short write
transactions that take the write lock up front (``BEGIN IMMEDIATE``): a deferred
transaction that reads and then writes can fail with "database is locked" without ever
waiting, which the busy timeout cannot fix.

Nothing here or in the stores imports torch, so reading the knowledge base (``deepedge
profile``) does not pay for it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from deepedge.errors import KnowledgeBaseError

__all__ = [
    "SCHEMA_VERSION",
    "KnowledgeBaseCore",
    "SoftwareVersions",
    "canonical_json",
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


def canonical_json(value: object) -> str:
    """One spelling per value, so equal keys compare equal as strings in SQL."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _reset_hint(path: Path) -> str:
    return f"move it aside with `deepedge profile reset --kb {path}` (nothing is deleted)"


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
        return canonical_json(asdict(self))

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


def _create_schema(conn: sqlite3.Connection) -> None:
    _run_script(conn, _SCHEMA_V1)
    _run_script(conn, _SCHEMA_V2)
    conn.execute(
        "INSERT OR IGNORE INTO kb_meta (key, value) VALUES ('created_by', ?), ('created_at', ?)",
        (f"deepedge {_deepedge_version()}", datetime.now(UTC).isoformat(timespec="seconds")),
    )
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


# ---------------------------------------------------------------------------------------
# the file


class KnowledgeBaseCore:
    """One open knowledge-base file: its connection, its schema checked, short transactions.

    One connection per instance, usable from several threads (calls are serialised by a
    lock). The stores (:class:`~deepedge.profile.kb.ProfileStore`,
    :class:`~deepedge.interference.kb.InterferenceStore`) subclass this and add their
    tables' methods, each of them a complete, short transaction made with :meth:`_write`
    or :meth:`_read`.
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

    # --- admin

    def close(self) -> None:
        """Close the connection (the last one to close checkpoints the WAL into the file)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
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
