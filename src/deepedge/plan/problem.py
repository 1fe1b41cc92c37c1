"""The Deep-Edge planning problem: devices, their speeds, intensities and LC limits.

Each device i can train at one of a few *intensities* c (its share of the device's CPU
the trainer may take). At intensity c its step compute at local batch b is

    t_i(b, c) = (a_i + s_i·b) · f_i(c)

(the profiled affine step time, stretched by ``f_i(c) ≥ 1`` when the trainer is held to
less CPU than it would get), and it may take at most ``cap_i(c)`` samples per step: the
largest b at which every LC app on the device keeps its predicted p95 upper bound under
its deadline minus the margin, and at which training plus apps fit the device's memory.
A level with ``cap = 0`` is not allowed, and says why (:attr:`IntensityLevel.binding`).

The plan picks x_i (used or not), c_i and b_i with Σ b_i = B to minimise

    max_i t_i(b_i, c_i) + C(k),   k = Σ x_i

where C(k) is the all-reduce over k devices. Because B is fixed the split changes only
speed, never SGD's arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from deepedge.errors import PlanInfeasible, SpecError

__all__ = [
    "DeviceOption",
    "IntensityLevel",
    "PlanningProblem",
    "Solution",
]


@dataclass(frozen=True)
class IntensityLevel:
    """One allowed training intensity on a device and what it permits."""

    intensity: float  # share of the device's CPU the trainer may take, in (0, 1]
    slowdown: float  # f ≥ 1: step-time factor relative to the profiled step
    cap: int  # most samples per step at this intensity (0: not allowed)
    binding: str = ""  # what limits the cap, for the plan's explanations

    def __post_init__(self) -> None:
        if not 0 < self.intensity <= 1 or self.slowdown < 1 or self.cap < 0:
            raise SpecError(
                f"intensity level needs 0 < intensity <= 1, slowdown >= 1 and cap >= 0, got "
                f"{self.intensity}, {self.slowdown}, {self.cap}"
            )


@dataclass(frozen=True)
class DeviceOption:
    """A device as the planner sees it: profiled step time and its intensity levels."""

    name: str
    base_s: float  # a_i: per-step time that does not grow with the batch (s)
    per_sample_s: float  # s_i: seconds per sample at full intensity
    levels: tuple[IntensityLevel, ...]
    excluded_reason: str | None = None  # set when no level allows a single sample

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.per_sample_s <= 0:
            raise SpecError(
                f"device {self.name}: need base_s >= 0 and per_sample_s > 0, "
                f"got {self.base_s}, {self.per_sample_s}"
            )

    @property
    def usable(self) -> bool:
        return any(level.cap > 0 for level in self.levels)

    def step_s(self, batch: int) -> tuple[float, IntensityLevel | None]:
        """Fastest step time at ``batch`` over the levels that allow it (inf if none)."""
        best: tuple[float, IntensityLevel | None] = (float("inf"), None)
        for level in self.levels:
            if batch <= level.cap:
                t = (self.base_s + self.per_sample_s * batch) * level.slowdown
                if t < best[0]:
                    best = (t, level)
        return best

    def max_batch_within(self, step_s: float) -> int:
        """Largest batch whose step fits ``step_s`` at some allowed level (0 if none)."""
        best = 0
        for level in self.levels:
            room = step_s / level.slowdown - self.base_s
            if room >= self.per_sample_s:
                best = max(best, min(level.cap, int(room / self.per_sample_s + 1e-9)))
        return best


@dataclass(frozen=True)
class PlanningProblem:
    """Devices, global batch and the all-reduce cost C(k) (seconds per step)."""

    devices: tuple[DeviceOption, ...]
    global_batch: int
    comm_s: Callable[[int], float] = field(default=lambda k: 0.0)
    steps: int = 1  # steps of the whole job, for makespans

    def __post_init__(self) -> None:
        if self.global_batch < 1:
            raise SpecError(f"global batch must be >= 1, got {self.global_batch}")
        names = [d.name for d in self.devices]
        if len(set(names)) != len(names):
            raise SpecError("device names in a planning problem must be unique")

    def usable(self) -> list[DeviceOption]:
        """Devices that can take at least one sample at some intensity; raises if none."""
        usable = [d for d in self.devices if d.usable]
        if not usable:
            raise PlanInfeasible(
                "no device can train without an LC app missing its deadline or running out "
                "of memory: " + "; ".join(f"{d.name}: {_why_not(d)}" for d in self.devices),
                hint="relax the deadlines or rates named above, or add devices",
            )
        if sum(max(level.cap for level in d.levels) for d in usable) < self.global_batch:
            total = sum(max(level.cap for level in d.levels) for d in usable)
            raise PlanInfeasible(
                f"the devices can take at most {total} samples per step within their LC and "
                f"memory limits, fewer than the global batch {self.global_batch}",
                hint=f"lower the global batch to {total} or less, or add devices",
            )
        return usable

    def with_caps(self, caps: Mapping[str, float], *, why: str) -> PlanningProblem:
        """The same problem without the intensity levels above each device's cap (``why``
        names who capped it, for a device left with no level)."""
        devices = []
        for d in self.devices:
            cap = caps.get(d.name)
            if cap is None:
                devices.append(d)
                continue
            levels = tuple(lv for lv in d.levels if lv.intensity <= cap + 1e-9)
            reason = d.excluded_reason
            if reason is None and not any(lv.cap > 0 for lv in levels):
                reason = f"{why}: intensity capped at {cap:.2f}, below every allowed level"
            devices.append(replace(d, levels=levels, excluded_reason=reason))
        return replace(self, devices=tuple(devices))

    def arrays(self, devices: Sequence[DeviceOption]) -> dict[str, np.ndarray]:
        """Vectorised form (n devices × L levels; missing levels have cap 0)."""
        width = max(len(d.levels) for d in devices)
        cap = np.zeros((len(devices), width))
        slow = np.ones((len(devices), width))
        for i, d in enumerate(devices):
            for j, level in enumerate(d.levels):
                cap[i, j] = level.cap
                slow[i, j] = level.slowdown
        return {
            "a": np.array([d.base_s for d in devices]),
            "s": np.array([d.per_sample_s for d in devices]),
            "cap": cap,
            "slow": slow,
        }


def _why_not(d: DeviceOption) -> str:
    if d.excluded_reason:
        return d.excluded_reason
    bindings = [level.binding for level in d.levels if level.binding]
    return bindings[0] if bindings else "no intensity level allows a sample"


@dataclass(frozen=True)
class Solution:
    """A solved split: batches, intensities and the predicted step."""

    solver: str
    local_batches: dict[str, int]
    intensities: dict[str, float]
    compute_s: float  # slowest device's predicted compute
    comm_s: float
    solve_s: float  # wall time the solver took
    optimal: bool = False  # proven optimal (exact solver only)

    @property
    def step_s(self) -> float:
        return self.compute_s + self.comm_s

    def check(self, problem: PlanningProblem) -> None:
        """Raise if the solution breaks a constraint (used by tests and the exact solver)."""
        by_name = {d.name: d for d in problem.devices}
        if sum(self.local_batches.values()) != problem.global_batch:
            raise AssertionError(f"batches sum to {sum(self.local_batches.values())}")
        for name, b in self.local_batches.items():
            level = next(
                (lv for lv in by_name[name].levels if lv.intensity == self.intensities[name]),
                None,
            )
            if level is None or not 1 <= b <= level.cap:
                raise AssertionError(f"{name}: batch {b} not allowed at its intensity")


def evaluate_split(
    problem: PlanningProblem, batches: Mapping[str, int], solver: str, solve_s: float
) -> Solution:
    """The step time of a given split, each device at its fastest allowed level."""
    by_name = {d.name: d for d in problem.devices}
    used = {n: b for n, b in batches.items() if b > 0}
    times, levels = {}, {}
    for name, b in used.items():
        t, level = by_name[name].step_s(b)
        if level is None:
            raise PlanInfeasible(f"device {name} cannot take {b} samples within its limits")
        times[name], levels[name] = t, level.intensity
    return Solution(
        solver,
        used,
        levels,
        max(times.values()),
        problem.comm_s(len(used)),
        solve_s,
    )
