"""Straggler detection: a device whose steps run slower than its plan, beyond its noise.

Every synchronous step waits for the slowest device, so one device that slows down (an
external CPU hog, a thermal throttle, an LC app's load rising) slows the whole job until
the split changes. The plan predicted each device's compute per step from its profile;
the profile also measured how much that compute varies from step to step. A device is a
straggler when its measured compute exceeds the plan by more than that noise (its
``quantile`` of relative spread) *and* by at least ``min_factor``, for ``patience``
consecutive steps: one slow step is noise, and a small drift is not worth a rebalance.

The detector is pure bookkeeping (fed step by step, it answers which devices are slow and
by how much), so the controller can test a rebalance decision without a cluster.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["StragglerWatch"]


@dataclass
class StragglerWatch:
    """Watches each device's step compute against its plan.

    ``expected_s``: each device's planned compute per step; ``spread``: each device's
    measured step times over their median (the profile's step-to-step noise; a device
    without one gets ``default_noise``).
    """

    expected_s: Mapping[str, float]
    spread: Mapping[str, Sequence[float]] = field(default_factory=dict)
    patience: int = 2
    quantile: float = 0.95
    min_factor: float = 1.5
    default_noise: float = 0.15
    _recent: dict[str, deque[float]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        self._recent = {n: deque(maxlen=self.patience) for n in self.expected_s}

    def threshold(self, device: str) -> float:
        """Measured/planned above which a step counts as slow for ``device``."""
        noise = self.spread.get(device)
        if noise is not None and len(noise):
            top = float(np.quantile(np.asarray(noise, dtype=float), self.quantile))
        else:
            top = 1.0 + self.default_noise
        return max(top, self.min_factor)

    def observe(self, device: str, compute_s: float) -> None:
        """One step's measured compute (forward, backward, update; no waiting) of ``device``."""
        if device in self._recent and self.expected_s[device] > 0:
            self._recent[device].append(compute_s / self.expected_s[device])

    def off_plan(self) -> dict[str, float]:
        """Devices slower *or faster* than planned beyond their noise in each of their last
        ``patience`` steps (a straggler, or one that recovered from a slowdown the plan
        still assumes), with the median measured/planned of those steps."""
        out = {}
        for n, r in self._recent.items():
            if len(r) < self.patience:
                continue
            top = self.threshold(n)
            if min(r) > top or max(r) < 1 / top:
                out[n] = statistics.median(r)
        return out

    def slow(self) -> dict[str, float]:
        """Devices slow in each of their last ``patience`` steps, with how much slower than
        planned they are (the median of those steps' measured/planned)."""
        return {
            n: statistics.median(r)
            for n, r in self._recent.items()
            if len(r) == self.patience and min(r) > self.threshold(n)
        }
