"""What the dashboard shows, read from the files a session writes, never written to.

* the monitor's time-series store (``monitor.sqlite``, :mod:`deepedge.monitor.store`),
  opened with :meth:`~deepedge.monitor.store.TimeSeriesStore.open_readonly`: devices' CPU
  and memory against their limits and their throttling, and each LC app's latency
  quantiles against its deadline;
* the knowledge base (read through a ``mode=ro`` SQLite URI): profiles and interference
  models;
* ``report.json`` of finished runs: accuracy and makespans by policy;
* the events and progress a running controller writes into the same store
  (:mod:`deepedge.control.feed`): the plan it follows, steps done, compute per step.

Every view is a plain dict of numbers, so the HTML page, the JSON the page polls and the
tests read the same values. A rate (CPU cores in use, throttled share) is the change of a
counter between its two newest samples over the time between them.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepedge.dashboard.kbplots import KnowledgePlots, read_kb, step_medians
from deepedge.monitor.samples import Sample
from deepedge.monitor.store import TimeSeriesStore

__all__ = ["Sources"]

QUANTILES = ("0.5", "0.95", "0.99")
OVERLAP_S = 5.0
"""How far before ``since`` an incremental poll's series start (see :func:`_after`)."""
MARGIN_S = 30.0
"""How far before ``since`` an incremental poll reads: rates need the sample before the
new ones, and the ETA the last 30 s of steps."""


def _finite(x: float) -> float | None:
    """JSON has no NaN or inf: nothing measured (NaN) and failures (inf) become null."""
    return x if math.isfinite(x) else None


def _by(samples: list[Sample], label: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.label_dict.get(label, "")].append(s)
    return out


def _rates(samples: list[Sample]) -> list[tuple[float, float]]:
    """(time, per-second change) between consecutive samples of one counter."""
    return [
        (b.ts, (b.value - a.value) / (b.ts - a.ts))
        for a, b in itertools.pairwise(samples)
        if b.ts > a.ts and math.isfinite(a.value) and math.isfinite(b.value)
    ]


@dataclass
class Sources:
    """The files one dashboard reads. ``db``: a monitor store; ``kb``: a knowledge base;
    ``runs``: run folders (each with a ``report.json``). Any may be absent."""

    db: Path | None = None
    kb: Path | None = None
    runs: list[Path] = field(default_factory=list)
    window_s: float = 600.0  # how much history the charts show
    _store: TimeSeriesStore | None = field(default=None, init=False, repr=False)
    _wal_at_open: bool = field(default=False, init=False, repr=False)
    _opening: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _kb_plots: KnowledgePlots | None = field(default=None, init=False, repr=False)

    def store(self) -> TimeSeriesStore | None:
        """The monitor store, opened read-only on first use (a session creates it after
        it starts). A file opened while no writer had it open is read as immutable; once
        a writer appears (its ``-wal`` file), it is opened again to see the new rows."""
        if self.db is None:
            return None
        with self._opening:
            wal = Path(f"{self.db}-wal").exists()
            if self._store is not None and wal and not self._wal_at_open:
                # not closed here: a request on another thread may still be reading it
                self._store = None
            if self._store is None and self.db.is_file():
                self._store = TimeSeriesStore.open_readonly(self.db)
                self._wal_at_open = wal
            return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _recent(self, metric: str, since: float | None) -> list[Sample]:
        """The chart window's samples; after ``since`` (a page polling for what is new):
        those, and :data:`MARGIN_S` before them, which rates and the ETA still need."""
        store = self.store()
        if store is None:
            return []
        if since is not None:
            return store.query(metric, start=since - MARGIN_S)
        end = time.time()
        samples = store.query(metric, start=end - self.window_s, end=end)
        if samples:
            return samples
        # a recorded session: show its last window instead of an empty "now"
        last = store.last_ts()
        return [] if last is None else store.query(metric, start=last - self.window_s, end=last)

    def _grouped(self, metric: str, label: str, since: float | None) -> dict[str, list[Sample]]:
        """:meth:`_recent` samples of ``metric`` by the value of ``label``."""
        return _by(self._recent(metric, since), label)

    # ------------------------------------------------------------------ cluster
    def cluster(self, since: float | None = None) -> dict[str, Any]:
        """Per device: CPU cores in use and its limit, memory and its limit (MB), share of
        the last interval spent throttled; and the CPU series for the chart (its points
        after ``since`` only, when given)."""
        updated = self._updated()  # before the reads: a row written meanwhile comes next time
        cpu = self._grouped("deepedge_device_cpu_seconds_total", "device", since)
        limit = self._grouped("deepedge_device_cpu_limit_cores", "device", since)
        mem = self._grouped("deepedge_device_memory_used_bytes", "device", since)
        mem_limit = self._grouped("deepedge_device_memory_limit_bytes", "device", since)
        throttled = self._grouped("deepedge_device_cpu_throttled_seconds_total", "device", since)
        devices = []
        for name in sorted(set(cpu) | set(limit)):
            used = _rates(cpu.get(name, []))
            thr = _rates(throttled.get(name, []))
            shown = _after(used, since)
            devices.append(
                {
                    "device": name,
                    "cpu_used_cores": _finite(used[-1][1]) if used else None,
                    "cpu_limit_cores": _last(limit.get(name)),
                    "memory_used_mb": _mb(_last(mem.get(name))),
                    "memory_limit_mb": _mb(_last(mem_limit.get(name))),
                    "throttled_share": _finite(thr[-1][1]) if thr else None,
                    "cpu_series": {
                        "t": [t for t, _ in shown],
                        "cores": [_finite(v) for _, v in shown],
                    },
                }
            )
        return {"devices": devices, "updated": updated}

    # ------------------------------------------------------------------ LC apps
    def apps(self, since: float | None = None) -> dict[str, Any]:
        """Per LC app: its deadline, p50/p95/p99 series (ms) and the times its p95 was over
        the deadline (violated windows), with the latest values; after ``since`` (when
        given) the series and violations are the new ones only."""
        updated = self._updated()  # before the reads: a row written meanwhile comes next time
        latency = self._grouped("deepedge_app_latency_seconds", "app", since)
        deadline = self._grouped("deepedge_app_deadline_seconds", "app", since)
        requests = self._grouped("deepedge_app_requests_total", "app", since)
        misses = self._grouped("deepedge_app_deadline_misses_total", "app", since)
        apps = []
        for name in sorted(set(latency) | set(deadline)):
            by_q = _by(latency.get(name, []), "quantile")
            shown = {q: _after(by_q.get(q, []), since) for q in QUANTILES}
            dl = _last(deadline.get(name))
            dl_ms = None if dl is None else 1e3 * dl
            series = {
                _quantile_key(q): {
                    "t": [s.ts for s in shown[q]],
                    "ms": [_finite(1e3 * s.value) for s in shown[q]],
                }
                for q in QUANTILES
            }
            latest = {_quantile_key(q): _last(by_q.get(q)) for q in QUANTILES}
            p95 = shown["0.95"]
            violated = [s.ts for s in p95 if dl is not None and s.value > dl]
            apps.append(
                {
                    "app": name,
                    "deadline_ms": dl_ms,
                    "latest_ms": {k: None if v is None else 1e3 * v for k, v in latest.items()},
                    "series": series,
                    "violated_t": violated,
                    "violated_windows": len(violated),
                    "requests": _last(requests.get(name)),
                    "deadline_misses": _last(misses.get(name)),
                }
            )
        return {"apps": apps, "updated": updated}

    # ------------------------------------------------------------------ training
    def training(self, since: float | None = None) -> dict[str, Any]:
        """The running (or last) plan and its progress: the run's state, steps done of
        the total, the ETA at the recent step rate (while it runs), each device's share,
        predicted and last compute time per step, and the compute series."""
        from deepedge.control.feed import LIVE_PLAN

        updated = self._updated()  # before the reads: a row written meanwhile comes next time
        store = self.store()
        done = self._recent("deepedge_train_steps_done", since)
        total = _last(self._recent("deepedge_train_steps_total", since))
        compute = self._grouped("deepedge_train_compute_seconds", "device", since)
        events = [] if store is None else store.events()
        plans = [e for e in events if e.kind == LIVE_PLAN]
        plan = plans[-1].data if plans else None
        state = events[-1].state if events else None  # train, adapt ... done or failed
        if total is None and plan is not None:
            total = plan.get("steps_total")
        steps = _last(done)
        eta = None
        recent = [s for s in done if s.ts >= done[-1].ts - MARGIN_S] if done else []
        running = state not in ("done", "failed")
        if running and len(recent) >= 2 and steps is not None and total is not None:
            rate = (recent[-1].value - recent[0].value) / (recent[-1].ts - recent[0].ts or 1)
            eta = (total - steps) / rate if rate > 0 else None
        devices = []
        predicted = (plan or {}).get("compute_s") or {}
        batches = (plan or {}).get("local_batches") or {}
        slowest = max(predicted.values(), default=0.0)
        for name in sorted(set(batches) | set(compute)):
            series = compute.get(name, [])
            shown = _after(series, since)
            devices.append(
                {
                    "device": name,
                    "local_batch": batches.get(name),
                    "predicted_compute_s": predicted.get(name),
                    "wait_s": slowest - predicted[name] if name in predicted else None,
                    "last_compute_s": _last(series),
                    "series": {
                        "t": [x.ts for x in shown],
                        "s": [_finite(x.value) for x in shown],
                    },
                }
            )
        global_batch = sum(batches.values()) if batches else None
        return {
            "state": state,
            "policy": (plan or {}).get("policy"),
            "steps_done": steps,
            "samples_done": steps * global_batch if steps is not None and global_batch else None,
            "steps_total": total,
            "progress": steps / total if steps is not None and total else None,
            "eta_s": eta,
            "comm_s": (plan or {}).get("comm_s"),
            "predicted_step_s": (plan or {}).get("step_s"),
            "devices": devices,
            "updated": updated,
        }

    # ------------------------------------------------------------------ serving
    def serving(self, since: float | None = None) -> dict[str, Any]:
        """Per serving policy replayed (``deepedge serve``): the trace's, observed,
        forecast and ready-capacity rates over time, and the latest cost per hour, p95
        and replicas."""
        updated = self._updated()  # before the reads: a row written meanwhile comes next time
        rates = self._grouped("deepedge_serving_rate_rps", "policy", since)
        cost = self._grouped("deepedge_serving_cost_per_hour", "policy", since)
        p95 = self._grouped("deepedge_serving_p95_seconds", "policy", since)
        replicas = self._grouped("deepedge_serving_replicas", "policy", since)
        policies = []
        for name in sorted(set(rates) | set(cost)):
            by_series = _by(rates.get(name, []), "series")
            by_state = _by(replicas.get(name, []), "state")
            last_p95 = _last(p95.get(name))
            policies.append(
                {
                    "policy": name,
                    "latest_rps": {k: _last(v) for k, v in by_series.items()},
                    "cost_per_hour": _last(cost.get(name)),
                    "p95_ms": None if last_p95 is None else 1e3 * last_p95,
                    "ready": _last(by_state.get("ready")),
                    "starting": _last(by_state.get("starting")),
                    "series": {
                        k: {"t": [x.ts for x in pts], "rps": [_finite(x.value) for x in pts]}
                        for k, v in sorted(by_series.items())
                        for pts in [_after(v, since)]
                    },
                }
            )
        return {"policies": policies, "updated": updated}

    def events(self, limit: int = 500) -> dict[str, Any]:
        """The run's events, newest first (the last ``limit``)."""
        updated = self._updated()  # before the reads: a row written meanwhile comes next time
        store = self.store()
        events = [] if store is None else store.events()[-limit:]
        return {
            "events": [
                {"t": e.ts, "state": e.state, "kind": e.kind, "message": e.message}
                for e in reversed(events)
            ],
            "updated": updated,
        }

    def _updated(self) -> float | None:
        store = self.store()
        return None if store is None else store.last_ts()

    # ------------------------------------------------------------------ knowledge base
    def knowledge(self) -> dict[str, Any]:
        """The knowledge base's step-time profiles, stored models (interference) and the
        plots drawn of them (:meth:`kb_plot`)."""
        if self.kb is None or not self.kb.is_file():
            path = str(self.kb) if self.kb else None
            return {"profiles": [], "models": [], "plots": [], "notes": [], "path": path}
        with read_kb(self.kb) as (db, tables):
            profiles = db.execute(
                """SELECT p.id, p.device_name, p.device_kind, p.load, p.stale_reason,
                          COUNT(x.id)
                   FROM kb_profiles AS p LEFT JOIN kb_points AS x ON x.profile_id = p.id
                   GROUP BY p.id ORDER BY p.id"""
            ).fetchall()
            medians = step_medians(db)
            models = (
                db.execute("SELECT name, meta FROM kb_models ORDER BY name").fetchall()
                if "kb_models" in tables  # a knowledge base from before interference
                else []
            )
        return {
            "path": str(self.kb),
            "profiles": [
                {
                    "id": i,
                    "device": d,
                    "kind": k,
                    "load": load,
                    "stale": stale,
                    "points": n,
                    "median_step_s": {str(b): t for b, t in medians.get(i, [])},
                }
                for i, d, k, load, stale, n in profiles
            ],
            "models": [{"name": n, "meta": _json_or_text(m)} for n, m in models],
            **self._plots_of_kb().listing(),
        }

    def kb_plot(self, name: str) -> bytes | None:
        """The knowledge base's plot ``name`` (PNG), one :meth:`knowledge` lists."""
        if self.kb is None or not self.kb.is_file():
            return None
        return self._plots_of_kb().png(name)

    def _plots_of_kb(self) -> KnowledgePlots:
        assert self.kb is not None
        if self._kb_plots is None:
            self._kb_plots = KnowledgePlots(self.kb)
        return self._kb_plots

    # ------------------------------------------------------------------ past runs
    def run_plot(self, index: int, name: str) -> Path | None:
        """The plot ``name`` of run ``index``'s report, if the report lists it and it lies
        inside the run's folder (nothing else on disk is ever served)."""
        if not 0 <= index < len(self.runs):
            return None
        folder = _folder(self.runs[index]).resolve()
        listed = _plots(_report(self.runs[index]))
        if name not in listed:
            return None
        path = Path(listed[name])
        for candidate in (path, folder / path.name):  # as written, or moved with its folder
            resolved = candidate.resolve()
            if resolved.is_file() and resolved.is_relative_to(folder):
                return resolved
        return None

    def past_runs(self) -> list[dict[str, Any]]:
        """Each run folder's report: accuracy before and after, makespan by policy."""
        out: list[dict[str, Any]] = []
        for run in self.runs:
            report = _report(run)
            if report is None:
                path = run / "report.json" if run.is_dir() else run
                out.append({"run": str(run), "error": f"no readable report at {path}"})
                continue
            job = report.get("job")
            makespans = report.get("makespan_s")
            out.append(
                {
                    "run": str(run),
                    "index": len(out),
                    "job": job.get("name") if isinstance(job, dict) else None,
                    "accuracy_before": _number(report.get("accuracy_before")),
                    "accuracy_after": _number(report.get("accuracy_after")),
                    "makespan_s": {
                        str(k): v
                        for k, v in (makespans.items() if isinstance(makespans, dict) else [])
                        if _number(v) is not None
                    },
                    "lower_bound_s": _number(report.get("lower_bound_s")),
                    "plots": _plots(report),
                }
            )
        return out


def _folder(run: Path) -> Path:
    return run if run.is_dir() else run.parent


def _report(run: Path) -> dict[str, Any] | None:
    """A run's report.json (``run`` is its folder or the file), None when unreadable."""
    try:
        report = json.loads((run / "report.json" if run.is_dir() else run).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _plots(report: dict[str, Any] | None) -> dict[str, str]:
    """The plots a report lists by name (a run without LC apps lists some as null)."""
    plots = (report or {}).get("plots")
    if not isinstance(plots, dict):
        return {}
    return {str(k): v for k, v in plots.items() if isinstance(v, str)}


def _number(value: Any) -> float | None:
    """A report's number as :func:`_finite` gives it; anything that is not one, None."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return _finite(value) if ok else None


def _after(points: list[Any], since: float | None) -> list[Any]:
    """The points (samples, or (t, value) pairs) a poll after ``since`` gets (all without
    it): :data:`OVERLAP_S` before it too, as a sample may be written late with an older
    time (the run feed batches its steps); the page keeps only what it lacks."""
    if since is None:
        return points
    return [p for p in points if (p.ts if isinstance(p, Sample) else p[0]) > since - OVERLAP_S]


def _quantile_key(q: str) -> str:
    """``"0.95"`` → ``"p95"``."""
    return f"p{round(float(q) * 100)}"


def _last(samples: list[Sample] | None) -> float | None:
    return _finite(samples[-1].value) if samples else None


def _mb(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
