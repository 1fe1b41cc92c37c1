"""The coordinator's side of elastic training: noticing a lost worker, and where to go on.

A worker is lost when its process exits (``kill -9``, a crash), when it stops (``SIGSTOP``:
its process state says so) or when it falls silent (no heartbeat for
:data:`SILENT_S`: hung, or cut off). A stopped or silent worker is fenced (killed), so its
sockets close and the survivors' collectives fail fast instead of waiting out a timeout.

The survivors then report how many global steps each completed. The run goes on from the
most (:func:`resume_point`): a survivor that finished a step's all-reduce holds that
step's complete gradient (the lost worker had contributed to it), so the survivors behind
it take its state, and no sample is used twice or lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import psutil

from deepedge.spec import Plan

__all__ = [
    "SILENT_S",
    "STOPPED_S",
    "Failure",
    "Liveness",
    "Recovery",
    "resume_point",
]

STOPPED_S = 1.0
"""Silence after which a worker whose process is stopped counts as lost."""
SILENT_S = 3.0
"""Silence after which any worker counts as lost (hung, or unreachable). Longer than
:data:`STOPPED_S`: a worker starved of CPU under a tiny quota may be late, not dead."""


@dataclass(frozen=True)
class Failure:
    """Workers lost during a run, and where the survivors stood."""

    lost: dict[str, str]  # device -> how it was lost
    survivors: tuple[str, ...]
    completed_steps: int  # global steps the run goes on from (the most any survivor completed)
    detected_at: float  # time.time() when the coordinator noticed the first loss
    lost_at: float  # time.time() of the lost worker's last sign of life

    @property
    def detection_s(self) -> float:
        """From the lost worker's last sign of life to the coordinator noticing."""
        return max(0.0, self.detected_at - self.lost_at)


@dataclass(frozen=True)
class Recovery:
    """What the coordinator did about a :class:`Failure`."""

    failure: Failure
    plan: Plan  # the plan over the survivors the run went on with
    generation: int  # the process group's rendezvous generation from then on
    resumed_at: float  # time.time() when the survivors were told to go on

    def to_dict(self) -> dict[str, object]:
        f = self.failure
        return {
            "lost": f.lost,
            "survivors": list(f.survivors),
            "completed_steps": f.completed_steps,
            "detected_at": f.detected_at,
            "detection_s": f.detection_s,
            "resumed_at": self.resumed_at,
            "generation": self.generation,
            "local_batches": dict(self.plan.local_batches),
        }


def resume_point(completed: Mapping[str, int]) -> tuple[int, str]:
    """The step the survivors go on from (the most any completed) and a survivor that
    completed exactly that many, whose state the others take."""
    if not completed:
        raise ValueError("no survivor reported its progress")
    steps = max(completed.values())
    return steps, min(n for n, c in completed.items() if c == steps)


@dataclass
class Liveness:
    """When each worker was last heard from; who is lost."""

    last_seen: dict[str, float] = field(default_factory=dict)  # device -> time.monotonic()

    def start(self, names: Iterable[str]) -> None:
        now = time.monotonic()
        self.last_seen = dict.fromkeys(names, now)

    def heard(self, name: str) -> None:
        if name in self.last_seen:
            self.last_seen[name] = time.monotonic()

    def excuse(self, stall_s: float) -> None:
        """The coordinator itself did not listen for ``stall_s`` (a slow callback): that
        is not the workers' silence, so it does not count towards it."""
        for name in self.last_seen:
            self.last_seen[name] += stall_s

    def silence_s(self, name: str) -> float:
        return time.monotonic() - self.last_seen[name]

    def lost(self, pids: Mapping[str, int | None]) -> dict[str, str]:
        """Workers to fence now: stopped for :data:`STOPPED_S`, or silent for
        :data:`SILENT_S`, with why."""
        out = {}
        quiet_s = {n: self.silence_s(n) for n in self.last_seen}
        # every worker silent at once is more likely the host (or this process) stalled
        # than all of them hung: give a shared silence three times as long
        silent_s = SILENT_S * (3 if len(quiet_s) > 1 and min(quiet_s.values()) >= SILENT_S else 1)
        for name, quiet in quiet_s.items():
            if quiet < STOPPED_S:
                continue
            if _stopped(pids.get(name)):
                out[name] = f"stopped (no heartbeat for {quiet:.1f} s)"
            elif quiet >= silent_s:
                out[name] = f"silent for {quiet:.1f} s (hung or unreachable)"
        return out


def _stopped(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False
