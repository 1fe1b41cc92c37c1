"""The run controller's states and its event log.

A re-training run moves through explicit states, as torch elastic's agent (``WorkerState``)
and Ray Train's controller do: it boots the cluster, profiles the devices, plans, trains,
adapts (re-plans when something changes) and ends done or failed. Every state change and
every decision the controller takes is an :class:`Event`, so a user can read afterwards
why the run did what it did: the log goes into ``report.json`` and onto the step-timeline
plot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Event", "EventLog", "RunState"]


class RunState(StrEnum):
    BOOT = "boot"  # the interference model (if needed), the cluster, LC apps and agents
    PROFILE = "profile"  # each device's step time under its live LC load, the all-reduce
    PLAN = "plan"  # which devices train, their shares and intensities, per policy
    TRAIN = "train"  # a plan runs
    ADAPT = "adapt"  # something changed: learn from it and plan again
    DONE = "done"
    FAILED = "failed"


TERMINAL = (RunState.DONE, RunState.FAILED)


@dataclass(frozen=True)
class Event:
    """One thing the controller did or saw, at wall-clock time ``t`` (``time.time()``)."""

    t: float
    state: RunState
    kind: str  # "state", "plan", "run", "learn", "exclude", "error", ...
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "state": self.state.value,
            "kind": self.kind,
            "message": self.message,
            **({"data": self.data} if self.data else {}),
        }


@dataclass
class EventLog:
    """Append-only log of a run's events; ``listeners`` see each one as it happens."""

    events: list[Event] = field(default_factory=list)
    listeners: list[Callable[[Event], None]] = field(default_factory=list)

    def add(self, state: RunState, kind: str, message: str, **data: Any) -> Event:
        event = Event(time.time(), state, kind, message, data)
        self.events.append(event)
        for listener in self.listeners:
            listener(event)
        return event

    def of_kind(self, *kinds: str) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    def to_list(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.events]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)
