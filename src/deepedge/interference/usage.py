"""Resource-usage vectors of residents, and composing them into co-location features.

FECBench's knowledge base of application combinations: each resident (a stressor at an
intensity, an LC app at a rate, the training job at a batch and intensity) is measured
*alone* on a device once, as a vector of what it consumes. A combination that was never
run together is then described by the sum of its residents' vectors, and the surrogate
model maps that description to latency. :class:`UsageBook` holds one device's solo
measurements and interpolates between measured settings; :func:`latency_features` and
:func:`throughput_features` turn a scenario into the model's inputs.

The training co-runner also gets features of its own, because a summed consumption vector
says almost nothing about how it hurts an LC app. Training runs at ``SCHED_IDLE`` inside
the device's CPU-quota cgroup, so a request mostly suffers by *waiting behind the trainer's
unbroken stretches* (an op that is not preempted, or the rest of a quota period the trainer
used up), whose length grows with the local batch, in units of the device's per-sample step
time, up to a cap, and which a request meets with probability about
``p = min(intensity, 1 − the normal-priority CPU load)`` (see
:func:`deepedge.sim.fleet.lc_p95_ms`, whose calibrated constants and waiting share are
used here as they are). Every feature is computed from
solo usage books only, so a prediction needs no live cluster.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepedge.api import Scenario, TrainLoad
from deepedge.apps import APP_KINDS
from deepedge.errors import DeepEdgeError
from deepedge.interference.kb import UsageRow
from deepedge.interference.stressors import Usage
from deepedge.sim.fleet import LC_STRETCH_CAP as STRETCH_CAP
from deepedge.sim.fleet import LC_STRETCH_PER_SAMPLE as STRETCH_PER_SAMPLE
from deepedge.sim.fleet import tail_wait_share, trainer_share

__all__ = [
    "LATENCY_FEATURES",
    "LATENCY_MONOTONE",
    "STRETCH_CAP",
    "STRETCH_PER_SAMPLE",
    "THROUGHPUT_FEATURES",
    "THROUGHPUT_MONOTONE",
    "TRAIN_FEATURES",
    "MissingUsage",
    "UsageBook",
    "latency_features",
    "throughput_features",
]

_VECTOR = tuple(f for f in Usage.FIELDS if f != "samples_per_s")
"""The consumption fields that compose by addition (throughput is an outcome, not a load)."""


class MissingUsage(DeepEdgeError):
    """A scenario names a resident whose solo usage was never measured on that device."""


def _curve(points: list[tuple[float, dict[str, float]]], x: float) -> dict[str, float]:
    """Linear interpolation of dict-valued ``points`` (sorted by x) at ``x``.

    Below the first point it interpolates towards the origin when the curve starts at a
    positive x (nothing running consumes nothing); above the last it extrapolates with the
    last segment's slope, clipped at zero, which is right for rate-proportional costs.
    """
    xs = [p[0] for p in points]
    keys = sorted(set().union(*(p[1] for p in points)))
    if len(points) == 1:
        x0, v0 = points[0]
        scale = x / x0 if x0 > 0 else 1.0
        return {k: v0.get(k, 0.0) * scale for k in keys}
    out = {}
    for k in keys:
        ys = [p[1].get(k, 0.0) for p in points]
        if x <= xs[0] and xs[0] > 0:
            out[k] = ys[0] * x / xs[0]
        elif x >= xs[-1]:
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if xs[-1] > xs[-2] else 0.0
            out[k] = max(0.0, ys[-1] + slope * (x - xs[-1]))
        else:
            out[k] = float(np.interp(x, xs, ys))
    return out


@dataclass
class UsageBook:
    """One device's solo measurements: stressor, app and training curves."""

    device: str  # canonical device key
    quota_cores: float
    stressors: dict[str, list[tuple[float, dict[str, float]]]] = field(default_factory=dict)
    apps: dict[str, list[tuple[float, dict[str, float]]]] = field(default_factory=dict)
    train: dict[tuple[int, float], dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, device: str, quota_cores: float, rows: Iterable[UsageRow]) -> UsageBook:
        """Build from knowledge-base rows; a later row for the same setting wins."""
        book = cls(device, quota_cores)
        stress: dict[str, dict[float, dict[str, float]]] = {}
        apps: dict[str, dict[float, dict[str, float]]] = {}
        for row in rows:
            if row.device != device:
                continue
            kind, _, name = row.resident.partition(":")
            if kind == "stressor":
                stress.setdefault(name, {})[float(row.setting["intensity"])] = row.usage
            elif kind == "app":
                apps.setdefault(name, {})[float(row.setting["rate_rps"])] = row.usage
            elif kind == "train":
                key = (int(row.setting["batch"]), float(row.setting["intensity"]))
                book.train[key] = row.usage
        book.stressors = {k: sorted(v.items()) for k, v in stress.items()}
        book.apps = {k: sorted(v.items()) for k, v in apps.items()}
        return book

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "quota_cores": self.quota_cores,
            "stressors": self.stressors,
            "apps": self.apps,
            "train": [[b, c, u] for (b, c), u in sorted(self.train.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UsageBook:
        return cls(
            device=data["device"],
            quota_cores=float(data["quota_cores"]),
            stressors={
                k: [(float(x), dict(u)) for x, u in v] for k, v in data["stressors"].items()
            },
            apps={k: [(float(x), dict(u)) for x, u in v] for k, v in data["apps"].items()},
            train={(int(b), float(c)): dict(u) for b, c, u in data["train"]},
        )

    def _missing(self, what: str) -> MissingUsage:
        return MissingUsage(
            f"no solo usage of {what} on this device kind in the knowledge base",
            hint="measure it with `deepedge interference profile` on a cluster with this device",
        )

    def stressor(self, kind: str, intensity: float) -> dict[str, float]:
        if intensity <= 0:
            return {}
        if kind not in self.stressors:
            raise self._missing(f"stressor {kind}")
        return _curve(self.stressors[kind], intensity)

    def app(self, kind: str, rate_rps: float) -> dict[str, float]:
        """The app's solo usage at ``rate_rps`` (with its solo p50/p95/p99 latency)."""
        if kind not in self.apps:
            raise self._missing(f"LC app {kind}")
        return _curve(self.apps[kind], rate_rps)

    def cpu_per_request(self, kind: str) -> float:
        """Core-seconds one request of ``kind`` costs (from its highest measured rate)."""
        if kind not in self.apps:
            raise self._missing(f"LC app {kind}")
        rate, usage = self.apps[kind][-1]
        return max(usage.get("cpu_cores", 0.0) / rate, 1e-5)

    def rate_for_load(self, kind: str, load: float) -> float:
        """The request rate at which ``kind`` alone uses ``load`` of the device's CPU."""
        return load * self.quota_cores / self.cpu_per_request(kind)

    def training(self, train: TrainLoad) -> dict[str, float]:
        """Training's solo usage at (batch, intensity): bilinear in (log batch, intensity)."""
        if not self.train:
            raise self._missing("the training job")
        batches = sorted({b for b, _ in self.train})
        levels = sorted({c for _, c in self.train})
        b = min(max(train.batch, batches[0]), batches[-1])
        c = train.intensity

        def at_batch(bb: int) -> dict[str, float]:
            pts = [(cc, self.train[(bb, cc)]) for cc in levels if (bb, cc) in self.train]
            return _curve(pts, c)

        if b in batches or len(batches) == 1:
            return at_batch(min(batches, key=lambda x: abs(x - b)))
        hi = next(x for x in batches if x > b)
        lo = max(x for x in batches if x < b)
        w = (math.log(b) - math.log(lo)) / (math.log(hi) - math.log(lo))
        u_lo, u_hi = at_batch(lo), at_batch(hi)
        return {k: (1 - w) * u_lo.get(k, 0.0) + w * u_hi.get(k, 0.0) for k in u_lo | u_hi}

    def per_sample_ms(self) -> float:
        """The device's per-sample training step time alone, in ms: at its largest
        measured batch (fixed per-step costs amortised) and highest measured intensity."""
        if not self.train:
            raise self._missing("the training job")
        batch = max(b for b, _ in self.train)
        level = max(c for b, c in self.train if b == batch)
        rate = float(self.train[(batch, level)].get("samples_per_s", 0.0))
        return 1e3 / max(rate, 1e-3)

    def compose(
        self,
        *,
        stressors: Mapping[str, float] = {},
        train: TrainLoad | None = None,
        apps: Mapping[str, float] = {},
    ) -> dict[str, float]:
        """The summed consumption vector of a set of co-runners."""
        total = dict.fromkeys(_VECTOR, 0.0)
        parts = [self.stressor(k, v) for k, v in stressors.items()]
        parts += [self.app(k, r) for k, r in apps.items()]
        if train is not None:
            parts.append(self.training(train))
        for part in parts:
            for k in _VECTOR:
                total[k] += float(part.get(k, 0.0))
        return total


_CO = tuple(f"co_{f}" for f in _VECTOR)
TRAIN_FEATURES: tuple[str, ...] = (
    "train_intensity",
    "log_train_batch",
    "log1p_train_step_ms",
    "train_stretch_ms",
    "train_share",
    "log_train_wait",
)
"""The training co-runner's own latency features (all zero without training):

* ``train_intensity``: its share c of the device's CPU;
* ``log_train_batch``: log of its local batch b;
* ``log1p_train_step_ms``: log(1 + its solo step time in ms at (b, c), b / samples/s);
* ``train_stretch_ms``: the unbroken stretch a request may wait behind,
  ``min(Q, φ·b) · t`` with t the device's per-sample step time;
* ``train_share``: how often a request meets it, ``p = min(c, 1 − u)`` with u the normal-
  priority CPU load (the app and its other co-runners) over the quota;
* ``log_train_wait``: the stretch's share of the p95, ``log(1 + r(p)·stretch / solo p95)``
  with ``r(p) = max(0, 1 − 0.05/p)`` (the simulator's queueing model as one feature).
"""
LATENCY_FEATURES: tuple[str, ...] = (
    *(f"app={k}" for k in APP_KINDS),
    "quota_cores",
    "rate_rps",
    "own_util",
    "log_solo_p95_ms",
    "log_solo_p99_ms",
    *_CO,
    "co_util",
    "total_util",
    *TRAIN_FEATURES,
    "cpu_throttle",
)
"""Inputs of the LC latency models, in order. ``cpu_throttle`` is the share of the
device's CPU demand (its residents' solo demand, training included) its quota cannot
serve, ``max(0, 1 − 1/total_util)``: how much of each period the cgroup spends throttled,
when the LC app cannot run either."""

LATENCY_MONOTONE: dict[str, int] = {
    name: 1
    for name in (
        "rate_rps",
        "own_util",
        "co_cpu_cores",
        "co_util",
        "total_util",
        *TRAIN_FEATURES,
        "cpu_throttle",
    )
}
"""Features the LC latency (and its slowdown over the app alone) never falls as they rise
(more load, a bigger or busier trainer); the one-hots and the rest are unconstrained."""

THROUGHPUT_FEATURES: tuple[str, ...] = (
    "quota_cores",
    "log_batch",
    "intensity",
    "log_solo_samples_per_s",
    "train_util",
    *_CO,
    "co_util",
    "total_util",
    "train_share",
)
"""Inputs of the training-throughput model, in order (``train_share``: the CPU share the
trainer can get, ``min(intensity, 1 − co_util)``, as it yields to every co-runner)."""

THROUGHPUT_MONOTONE: dict[str, int] = {
    "intensity": 1,
    "log_solo_samples_per_s": 1,
    "train_share": 1,
    "co_cpu_cores": -1,
    "co_util": -1,
}
"""Features training throughput never falls (+1) or never rises (-1) as they rise."""


def _train_features(
    book: UsageBook,
    train: TrainLoad | None,
    solo: Mapping[str, float],
    normal_util: float,
    solo_p95_ms: float,
) -> list[float]:
    """:data:`TRAIN_FEATURES` of ``train`` (whose solo usage is ``solo``) beside a
    normal-priority CPU load (over the quota) of ``normal_util``, for an app whose solo
    p95 is ``solo_p95_ms``."""
    if train is None:
        return [0.0] * len(TRAIN_FEATURES)
    c, b = train.intensity, train.batch
    rate = max(float(solo.get("samples_per_s", 0.0)), 1e-3)
    step_ms = 1e3 * b / rate
    stretch_ms = min(STRETCH_CAP, STRETCH_PER_SAMPLE * b) * book.per_sample_ms()
    p = trainer_share(c, normal_util)
    seen = tail_wait_share(p)
    return [
        c,
        math.log(b),
        math.log1p(step_ms),
        stretch_ms,
        p,
        math.log1p(seen * stretch_ms / max(solo_p95_ms, 1e-3)),
    ]


def latency_features(book: UsageBook, sc: Scenario) -> list[float]:
    """The latency model's inputs for the target app of ``sc``, from solo usage only."""
    if sc.app is None:
        raise ValueError("latency features need a scenario with a target LC app")
    own = book.app(sc.app, sc.rate_rps)
    normal = book.compose(stressors=sc.stressors, apps=sc.other_apps)
    trainer = book.training(sc.train) if sc.train is not None else {}
    co = {k: normal[k] + float(trainer.get(k, 0.0)) for k in _VECTOR}
    q = book.quota_cores
    own_util = own.get("cpu_cores", 0.0) / q
    co_util = co["cpu_cores"] / q
    total = own_util + co_util
    solo_p95 = max(own.get("p95_ms", 1e-3), 1e-3)
    return [
        *(1.0 if sc.app == k else 0.0 for k in APP_KINDS),
        q,
        sc.rate_rps,
        own_util,
        math.log(solo_p95),
        math.log(max(own.get("p99_ms", 1e-3), 1e-3)),
        *(co[f] for f in _VECTOR),
        co_util,
        total,
        *_train_features(book, sc.train, trainer, own_util + normal["cpu_cores"] / q, solo_p95),
        max(0.0, 1.0 - 1.0 / total) if total > 0 else 0.0,
    ]


def throughput_features(book: UsageBook, sc: Scenario) -> list[float]:
    """The throughput model's inputs for the training job of ``sc``."""
    if sc.train is None:
        raise ValueError("throughput features need a scenario with the training job")
    solo = book.training(sc.train)
    apps = dict(sc.other_apps)
    if sc.app is not None:
        apps[sc.app] = sc.rate_rps
    co = book.compose(stressors=sc.stressors, apps=apps)
    q = book.quota_cores
    train_util = solo.get("cpu_cores", 0.0) / q
    co_util = co["cpu_cores"] / q
    return [
        q,
        math.log(sc.train.batch),
        sc.train.intensity,
        math.log(max(solo.get("samples_per_s", 1e-3), 1e-3)),
        train_util,
        *(co[f] for f in _VECTOR),
        co_util,
        train_util + co_util,
        min(sc.train.intensity, max(0.0, 1.0 - co_util)),
    ]
