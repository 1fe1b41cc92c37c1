"""Types shared across layers, with no heavy imports (no torch, cgroups or sockets).

The planner, the interference model, the simulator and the lab all speak of the same
things: the training job as a co-runner (:class:`TrainLoad`), one co-location on a device
(:class:`Scenario`), and what a planner needs from an interference model
(:class:`LatencyBounds`). They live here, below every package that uses them, so that
``import deepedge.plan`` stays a pure import: it must not start loading torch or the
interference lab just to name a batch size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from deepedge.apps import APP_KINDS
from deepedge.errors import SpecError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "RESOURCE_STRESSORS",
    "STRESSOR_KINDS",
    "AppUsage",
    "LatencyBounds",
    "Scenario",
    "TrainLoad",
]

STRESSOR_KINDS: tuple[str, ...] = ("cpu", "membw", "llc", "memcap", "disk", "net", "gpu", "train")
"""Co-runner kinds of the interference lab (``train`` is the real training job); the
stressor worker, which imports nothing from deepedge, keeps its own copy (a test checks)."""
RESOURCE_STRESSORS: tuple[str, ...] = tuple(k for k in STRESSOR_KINDS if k != "train")
"""Stressor kinds that load one resource (``train`` is the real job, handled apart)."""


@dataclass(frozen=True)
class TrainLoad:
    """The training job as a co-runner: its local batch and CPU intensity."""

    batch: int
    intensity: float = 1.0

    def __post_init__(self) -> None:
        if self.batch < 1 or not 0 < self.intensity <= 1:
            raise SpecError(
                f"training load needs batch >= 1 and 0 < intensity <= 1, "
                f"got batch {self.batch}, intensity {self.intensity}"
            )


@dataclass(frozen=True)
class Scenario:
    """One co-location: a target LC app (or none) and its co-runners on one device."""

    device: str
    app: str | None = None
    rate_rps: float = 0.0
    stressors: Mapping[str, float] = field(default_factory=dict)
    train: TrainLoad | None = None
    other_apps: Mapping[str, float] = field(default_factory=dict)  # kind -> rate

    def __post_init__(self) -> None:
        for kind, level in self.stressors.items():
            if kind not in RESOURCE_STRESSORS:
                raise SpecError(
                    f"unknown stressor {kind!r}", hint=f"use one of {list(RESOURCE_STRESSORS)}"
                )
            if not 0 <= level <= 1:
                raise SpecError(f"stressor {kind} intensity must be in [0, 1], got {level}")
        for kind in [self.app, *self.other_apps]:
            if kind is not None and kind not in APP_KINDS:
                raise SpecError(f"unknown LC app kind {kind!r}", hint=f"use one of {APP_KINDS}")
        if self.app is not None and not self.rate_rps > 0:
            raise SpecError(f"LC app {self.app} needs a positive rate, got {self.rate_rps}")
        if self.app in self.other_apps:
            raise SpecError(f"app kind {self.app} is both the target and a co-runner")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "app": self.app,
            "rate_rps": self.rate_rps,
            "stressors": {k: float(v) for k, v in sorted(self.stressors.items()) if v > 0},
            "train": None
            if self.train is None
            else {"batch": self.train.batch, "intensity": self.train.intensity},
            "other_apps": {k: float(v) for k, v in sorted(self.other_apps.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        train = data.get("train")
        return cls(
            device=str(data["device"]),
            app=data.get("app"),
            rate_rps=float(data.get("rate_rps", 0.0)),
            stressors=dict(data.get("stressors") or {}),
            train=None if not train else TrainLoad(int(train["batch"]), float(train["intensity"])),
            other_apps=dict(data.get("other_apps") or {}),
        )


class AppUsage(Protocol):
    """What a device's LC apps do alone: ``app(kind, rate)`` gives their measured
    ``p95_ms`` and ``cpu_cores`` (among others) at that rate."""

    def app(self, kind: str, rate_rps: float) -> Mapping[str, float]: ...


class LatencyBounds(Protocol):
    """What the Deep-Edge planner asks of an interference model (implemented by
    :class:`deepedge.interference.InterferenceModel`)."""

    def book(self, device_key: str) -> AppUsage:
        """The device's solo measurements (apps alone: their p95 and CPU use)."""
        ...

    def p95_upper_beside_training(
        self,
        device_key: str,
        apps: Mapping[str, tuple[str, float]],
        batches: Sequence[int],
        intensity: float,
    ) -> dict[str, np.ndarray]:
        """Each app's p95 upper bound (ms) beside training at each of ``batches``."""
        ...
