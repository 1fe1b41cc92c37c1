"""A running controller's events and training progress, written where a watcher reads them.

The run's session already keeps a monitor store (``monitor.sqlite``) that its monitor
writes each second; :class:`RunFeed` adds what only the controller knows, as it
happens: every :class:`~deepedge.control.events.Event`, the plan being followed (what
each device is to compute per step, and the all-reduce), the global steps done, and each
device's compute time per step. The dashboard (another thread, or another process)
reads the same file read-only, so it shows the run live, and nothing about the run
depends on anyone watching.

Step samples are batched (one transaction a second at most: a step every few hundred
milliseconds on every device must not cost the controller a commit each); events are
written at once. Once the session's store is closed (the session has stopped), step
samples are dropped, and an event (the run's end: done or failed) is appended by opening
the file for that one write, so a watcher sees how the run ended.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from deepedge.control.events import Event
from deepedge.errors import MonitorError
from deepedge.monitor.samples import Sample
from deepedge.monitor.store import StoredEvent, TimeSeriesStore
from deepedge.spec import Plan

__all__ = ["LIVE_PLAN", "RunFeed"]

log = logging.getLogger(__name__)

LIVE_PLAN = "live-plan"
"""The event kind of the plan being followed (what the dashboard's Gantt chart draws)."""


class RunFeed:
    """Writes one run's events and progress into ``store``; ``steps_total`` is the job's
    global step count."""

    FLUSH_S = 1.0

    def __init__(self, store: TimeSeriesStore, *, steps_total: int) -> None:
        self.store = store
        self.steps_total = steps_total
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._flushed = 0.0
        self._closed = False
        self._broken = False  # a write failed: nothing more is tried

    def event(self, event: Event) -> None:
        """An :class:`~deepedge.control.events.EventLog` listener."""
        stored = StoredEvent(event.t, event.kind, event.state.value, event.message, event.data)
        with self._lock:
            if not self._closed:
                self._guarded(lambda: self.store.write_events([stored]))
            elif not self._broken and self.store.path.is_file():
                self._guarded(lambda: self._append_after_close(stored))

    def _append_after_close(self, event: StoredEvent) -> None:
        store = TimeSeriesStore(self.store.path, compact_every_s=None)
        try:
            store.write_events([event])
        finally:
            store.close()

    def plan(self, plan: Plan, compute_s: dict[str, float], comm_s: float | None) -> None:
        """The plan now followed: each device's share and predicted compute per step."""
        data: dict[str, Any] = {
            "policy": plan.policy,
            "local_batches": dict(plan.local_batches),
            "compute_s": compute_s,
            "comm_s": comm_s,
            "step_s": plan.predicted_step_s,
            "steps_total": self.steps_total,
        }
        live = StoredEvent(time.time(), LIVE_PLAN, "train", f"following {plan.policy}", data)
        with self._lock:
            if not self._closed:
                self._guarded(lambda: self.store.write_events([live]))

    def step(self, device: str, compute_s: float | None, steps_done: int | None) -> None:
        """A device finished a step (``steps_done``: global steps, from rank 0's view)."""
        now = time.time()
        with self._lock:
            if compute_s is not None:
                self._samples.append(
                    Sample.of("deepedge_train_compute_seconds", compute_s, now, device=device)
                )
            if steps_done is not None:
                self._samples += [
                    Sample.of("deepedge_train_steps_done", steps_done, now),
                    Sample.of("deepedge_train_steps_total", self.steps_total, now),
                ]
            due = now - self._flushed >= self.FLUSH_S
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            samples, self._samples = self._samples, []
            self._flushed = time.time()
            if samples and not self._closed:
                self._guarded(lambda: self.store.write(samples))

    def close(self) -> None:
        """Write what is buffered; later step samples and plans are dropped, later events
        appended on their own (the session is about to close the store)."""
        self.flush()
        with self._lock:
            self._closed = True

    def _guarded(self, write: Any) -> None:
        try:
            write()
        except MonitorError as err:
            # the store is gone (closed, full disk): watchers stop seeing the run live;
            # the run itself and its report (which keeps every event) go on
            if not self._broken:
                log.warning("live feed stopped: %s", err.one_line())
            self._closed = self._broken = True
