"""The interference store: what residents consume alone, co-location runs, fitted models.

Interference profiling (FECBench method) keeps three kinds of rows in the knowledge base
(schema 2): each resident's solo resource usage (``kb_usage``), co-location runs and what
they measured (``kb_interference``) and the fitted surrogate models (``kb_models``). Only
this package writes and reads them, so their methods sit here, as a store over the shared
file (:mod:`deepedge.knowledge`); :class:`~deepedge.profile.kb.KnowledgeBase` includes it.

This module imports nothing but the core, and the package's ``__init__`` loads its other
modules on first use, so the knowledge base can include this store without loading the
interference lab, its stressors or torch.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepedge.knowledge import KnowledgeBaseCore, SoftwareVersions, canonical_json

__all__ = ["InterferenceRow", "InterferenceStore", "UsageRow", "read_interference_runs"]


@dataclass(frozen=True)
class UsageRow:
    """What one resident consumed alone on a device (see :meth:`InterferenceStore.add_usage`)."""

    device: str  # canonical JSON device key
    resident: str  # e.g. "stressor:cpu", "app:kv_lookup", "train:<model sig>/<optimizer>"
    setting: dict[str, Any]
    usage: dict[str, float]
    measured_at: float


@dataclass(frozen=True)
class InterferenceRow:
    """One co-location run (see :meth:`InterferenceStore.add_interference`)."""

    device: str
    campaign: str
    scenario: dict[str, Any]
    result: dict[str, Any]
    measured_at: float


def read_interference_runs(
    conn: sqlite3.Connection, *, campaign: str | None = None, device: str | None = None
) -> list[InterferenceRow]:
    """:meth:`InterferenceStore.interference_runs` on a connection of the caller's (the
    dashboard reads the file read-only)."""
    where, args = ["stale_reason IS NULL"], []
    for column, value in (("campaign", campaign), ("device", device)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    rows = conn.execute(
        "SELECT device, campaign, scenario, result, measured_at FROM kb_interference "
        f"WHERE {' AND '.join(where)} ORDER BY id",
        args,
    ).fetchall()
    return [
        InterferenceRow(d, c, json.loads(sc), json.loads(r), float(at)) for d, c, sc, r, at in rows
    ]


class InterferenceStore(KnowledgeBaseCore):
    """Solo usage rows, co-location runs and fitted models (the schema-2 tables)."""

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
                    canonical_json(dict(setting)),
                    canonical_json(dict(usage)),
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
                    canonical_json(dict(scenario)),
                    canonical_json(dict(result)),
                    sw.as_json(),
                    time.time(),
                ),
            )

    def interference_runs(
        self, *, campaign: str | None = None, device: str | None = None
    ) -> list[InterferenceRow]:
        """Fresh co-location runs, oldest first, optionally of one campaign or device key."""
        with self._read() as conn:
            return read_interference_runs(conn, campaign=campaign, device=device)

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
                    canonical_json(dict(meta)),
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
