"""The knowledge base's plots, drawn on demand for the dashboard's Knowledge base page.

The interference model's plots are the ones ``deepedge interference fit --plots`` writes
(the p95 surrogate's out-of-fold predictions against what was measured, and each device
kind's sensitivity curves), drawn here from the stored model and runs; the step-time
profiles get one plot of median step time against the local batch. The file is read
through a read-only connection. Each plot is drawn once per version of the file (the size
and modification time of it and of its ``-wal``) and kept in memory, and drawing is
serialised: matplotlib's pyplot is not thread-safe and the app answers on a thread pool.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import statistics
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deepedge.errors import DataError, DeepEdgeError
from deepedge.sqlite_readonly import readonly_uri

__all__ = ["KnowledgePlots", "read_kb", "step_medians"]

Draw = Callable[[Path], Path]


@dataclass
class _Version:
    """What one version of the file can be drawn as, and what was drawn of it."""

    signature: tuple[int, ...]
    plots: dict[str, tuple[str, Draw]] = field(default_factory=dict)  # name -> caption, draw
    notes: list[str] = field(default_factory=list)  # why a plot is missing
    drawn: dict[str, bytes] = field(default_factory=dict)


class KnowledgePlots:
    """The plots of the knowledge base at ``path`` (read-only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._version: _Version | None = None

    def listing(self) -> dict[str, object]:
        """``{"plots": [{"name", "caption"}...], "notes": [...]}`` for the page."""
        with self._lock:
            version = self._current()
        return {
            "plots": [{"name": n, "caption": c} for n, (c, _) in version.plots.items()],
            "notes": list(version.notes),
        }

    def png(self, name: str) -> bytes | None:
        """Plot ``name`` as PNG bytes; None when the file has no such plot."""
        with self._lock:
            version = self._current()
            if name not in version.plots:
                return None
            if name not in version.drawn:
                draw = version.plots[name][1]
                with tempfile.TemporaryDirectory(prefix="deepedge-kb-plot-") as tmp:
                    version.drawn[name] = draw(Path(tmp) / "plot.png").read_bytes()
            return version.drawn[name]

    def _signature(self) -> tuple[int, ...]:
        parts: list[int] = []
        for f in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                st = f.stat()
            except FileNotFoundError:
                parts += [0, 0]
            else:
                parts += [st.st_mtime_ns, st.st_size]
        return tuple(parts)

    def _current(self) -> _Version:
        signature = self._signature()
        if self._version is None or self._version.signature != signature:
            self._version = self._read(signature)
        return self._version

    def _read(self, signature: tuple[int, ...]) -> _Version:
        version = _Version(signature)
        if not self.path.is_file():
            return version
        with read_kb(self.path) as (db, tables):
            curves = _step_curves(db) if "kb_points" in tables else {}
            if curves:
                version.plots["step-times"] = (
                    "step-time profiles: median step time against the local batch",
                    lambda p: _plot_steps(curves, p),
                )
            if "kb_models" in tables:
                _interference(db, version)
        return version


@contextlib.contextmanager
def read_kb(path: Path) -> Iterator[tuple[sqlite3.Connection, set[str]]]:
    """A read-only connection to the knowledge base at ``path`` and its table names; a
    SQLite error while reading it is one line (:class:`~deepedge.errors.DataError`)."""
    try:
        db = sqlite3.connect(readonly_uri(path.resolve()), uri=True)
        try:
            yield db, {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise DataError(
            f"{path} is not a readable knowledge base ({exc})",
            hint="pass the file deepedge writes with --kb (default ~/.deepedge/kb.sqlite)",
        ) from None


def step_medians(db: sqlite3.Connection) -> dict[int, list[tuple[int, float]]]:
    """Each fresh profile's median step time (s) at each batch it was measured at."""
    rows = db.execute(
        """SELECT x.profile_id, x.batch, x.step_times_s
           FROM kb_points AS x JOIN kb_profiles AS p ON x.profile_id = p.id
           WHERE p.stale_reason IS NULL ORDER BY x.profile_id, x.batch"""
    ).fetchall()
    times: dict[int, dict[int, list[float]]] = {}
    for pid, batch, measured in rows:
        times.setdefault(pid, {}).setdefault(int(batch), []).extend(json.loads(measured))
    return {
        pid: [(b, statistics.median(ts)) for b, ts in sorted(by_batch.items()) if ts]
        for pid, by_batch in times.items()
    }


def _step_curves(db: sqlite3.Connection) -> dict[str, list[tuple[int, float]]]:
    """:func:`step_medians`, labelled for a legend by profile, device and LC load."""
    medians = step_medians(db)
    labels = db.execute("SELECT id, device_name, device_kind, load FROM kb_profiles").fetchall()
    curves: dict[str, list[tuple[int, float]]] = {}
    for pid, name, kind, load in labels:
        if medians.get(pid):
            apps = ", ".join(f"{app} {rate:g}/s" for app, rate in json.loads(load))
            curves[f"#{pid} {name or kind} ({apps or 'no LC load'})"] = medians[pid]
    return curves


def _interference(db: sqlite3.Connection, version: _Version) -> None:
    """Add the stored interference model's plots to ``version`` (or say why not)."""
    from deepedge.interference.kb import read_interference_runs
    from deepedge.interference.model import (
        MODEL_NAME,
        InterferenceModel,
        latency_rows,
        observations,
    )
    from deepedge.interference.plots import oof_scatter, plot_sensitivity

    row = db.execute("SELECT blob FROM kb_models WHERE name = ?", (MODEL_NAME,)).fetchone()
    if row is None:
        return
    try:
        model = InterferenceModel.from_blob(bytes(row[0]))
    except DeepEdgeError as err:
        version.notes.append(f"interference model not drawn: {err.one_line()}")
        return
    obs = observations(read_interference_runs(db), model.books)
    if len(latency_rows(obs)) == len(model.p95.oof_pred):
        version.plots["interference-oof"] = (
            f"interference model: p95 predicted out-of-fold against measured "
            f"({len(model.p95.oof_pred)} runs)",
            lambda p: oof_scatter(model, obs, p),
        )
    else:
        version.notes.append(
            "the co-location runs changed since the interference model was fitted: "
            "refit it (`deepedge interference fit`) to see its out-of-fold predictions"
        )
    kinds: dict[str, int] = {}
    for key in model.books:
        kind = str(json.loads(key).get("kind", "device"))
        kinds[kind] = kinds.get(kind, 0) + 1
        name = f"sensitivity-{kind}" + (f"-{kinds[kind]}" if kinds[kind] > 1 else "")
        version.plots[name] = (
            f"interference model on {kind}: predicted p95 as one co-runner grows",
            lambda p, key=key: plot_sensitivity(model, key, p),
        )


def _plot_steps(curves: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    from deepedge.interference.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        batches, seconds = zip(*points, strict=True)
        ax.plot(batches, seconds, marker="o", ms=3, label=label)
    ax.set(xlabel="local batch (samples)", ylabel="median step time (s)")
    ax.set_title("step-time profiles")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
