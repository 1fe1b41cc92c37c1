"""Small random planning problems for checking the heuristic against the exact MILP.

They are drawn to hit what breaks a device-ranking heuristic: caps of 1–3 samples (the LC
limit of a fast device), levels missing, devices that cannot train, and an all-reduce
that is sometimes larger than a whole step.
"""

from __future__ import annotations

import numpy as np

from deepedge.plan.problem import DeviceOption, IntensityLevel, PlanningProblem

__all__ = ["small_instance"]


def small_instance(seed: int) -> PlanningProblem:
    """1–7 devices, up to 4 levels each with caps that are often tiny (1–3 samples, the LC
    limit of a fast device), a non-decreasing all-reduce that is sometimes large."""
    rng = np.random.default_rng(seed)
    B = int(rng.integers(1, 48))
    devices = []
    for i in range(int(rng.integers(1, 8))):
        levels = []
        for c in (0.25, 0.5, 0.75, 1.0):
            if rng.random() < 0.2:
                continue
            cap = int(rng.choice([0, 1, 2, 3, int(rng.integers(0, B + 1)), B]))
            slowdown = max(1.0, 0.8 / c) * float(rng.uniform(1.0, 1.2))
            levels.append(IntensityLevel(c, slowdown, cap))
        a, s = float(rng.uniform(0, 0.05)), float(rng.uniform(0.0005, 0.03))
        devices.append(DeviceOption(f"d{i}", a, s, tuple(levels or [IntensityLevel(1.0, 1.0, B)])))
    alpha = float(rng.choice([0.0, rng.uniform(0, 0.06)]))
    beta = float(rng.uniform(0, 0.01))
    return PlanningProblem(tuple(devices), B, comm_s=lambda k: 0.0 if k <= 1 else alpha + beta * k)
