"""The profile store: measured step and all-reduce times, kept across jobs.

A throughput profile is only valid for a :class:`ProfileKey` (device kind, the hardware
that fixes its speed, the model and the LC load on the device) *and* the software that ran
it; when any of that changes, old profiles are marked *stale* (with a reason a person can
read) instead of being deleted, so ``deepedge profile`` can still show what was measured
and why it no longer counts. All-reduce times (:class:`CommPoint`) go stale the same way.

Each :meth:`ProfileStore.add_point` commits on its own, so a device or profiler that dies
halfway loses only the measurement in progress; :meth:`ProfileStore.mark_partial` records
why a profile is incomplete.

This module also composes :class:`KnowledgeBase`, the object every caller opens: this
store and the interference store (:mod:`deepedge.interference.kb`) over the shared file
(:mod:`deepedge.knowledge`). It stays here, where callers have always imported it from.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepedge.errors import KnowledgeBaseError
from deepedge.interference.kb import InterferenceStore
from deepedge.knowledge import KnowledgeBaseCore, SoftwareVersions, canonical_json

__all__ = [
    "CommPoint",
    "KnowledgeBase",
    "Profile",
    "ProfileKey",
    "ProfilePoint",
    "ProfileStore",
]

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
        return cls(
            device_kind, canonical_json(dict(hardware)), model_signature, canonical_json(list(load))
        )


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


def _mark_stale(conn: sqlite3.Connection, reasons: Sequence[tuple[int, str]]) -> int:
    """Mark each (profile id, reason) stale now; returns how many."""
    now = time.time()
    conn.executemany(
        "UPDATE kb_profiles SET stale_reason = ?, updated_at = ? WHERE id = ?",
        [(reason, now, pid) for pid, reason in reasons],
    )
    return len(reasons)


# ---------------------------------------------------------------------------------------
# the store


_PROFILE_COLUMNS = (
    "id, device_kind, hardware, model_signature, load, software, created_at, updated_at, "
    "stale_reason, partial_reason, cost_s, device_name"
)


class ProfileStore(KnowledgeBaseCore):
    """Throughput profiles (``kb_profiles``, ``kb_points``) and all-reduce times (``kb_comm``)."""

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


class KnowledgeBase(ProfileStore, InterferenceStore):
    """The knowledge base: every store over one SQLite file, safe for several processes.

    Throughput profiles and all-reduce times (:class:`ProfileStore`); solo usage,
    co-location runs and fitted models (:class:`~deepedge.interference.kb.InterferenceStore`).
    One connection per instance, usable from several threads (calls are serialised by a
    lock). Every method is a complete, short transaction, so nothing is half-written if
    the process dies between calls.
    """


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
    return "(none)" if value is None else canonical_json(value)


def _no_profile(path: Path, profile_id: int) -> KnowledgeBaseError:
    return KnowledgeBaseError(
        f"knowledge base {path} has no profile {profile_id}",
        hint="it may have been moved aside by `deepedge profile reset`; "
        "measure again with `deepedge profile run`",
    )
