"""From profiles and the interference model to the planner's per-device options.

For every device and intensity level this finds the largest local batch at which

* every LC app on the device keeps its *upper bound* of predicted p95 latency under its
  deadline minus a margin (the bound covers the model's error; the margin covers what the
  bound's coverage leaves), and
* training plus the apps fit the device's memory,

and records which of those bound it, so a plan can say why a device was throttled or
left out and what change would let it train.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deepedge.plan.problem import DeviceOption, IntensityLevel

__all__ = ["INTENSITY_LEVELS", "AppLimit", "LatencyBound", "device_option"]

INTENSITY_LEVELS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
"""The training intensities the planner may choose from (shares of the device's CPU)."""


@dataclass(frozen=True)
class AppLimit:
    """An LC app on the device and its deadline on p95 latency."""

    name: str
    deadline_ms: float


LatencyBound = Callable[[int, float], Mapping[str, float]]
"""(batch, intensity) -> each app's predicted p95 upper bound in ms (batch 0: no training)."""


def _largest(ok: Callable[[int], bool], hi: int) -> int:
    """Largest b in [0, hi] with ok(b), assuming ok is monotone (true then false)."""
    if hi < 1 or not ok(1):
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def device_option(
    name: str,
    *,
    base_s: float,
    per_sample_s: float,
    global_batch: int,
    memory_batch: int,
    memory_note: str,
    apps: Mapping[str, AppLimit],
    bound: LatencyBound | None,
    app_cpu_share: float = 0.0,
    margin: float = 0.05,
    levels: tuple[float, ...] = INTENSITY_LEVELS,
) -> DeviceOption:
    """The planner's view of one device.

    ``memory_batch`` is the most samples that fit its memory (``memory_note`` says why);
    ``app_cpu_share`` the share of its CPU its apps use, so at intensity c training gets
    ``min(c, 1 − share)`` and is slowed by ``(1 − share) / c`` when c is below that (the
    profile was taken with the trainer unthrottled beside the apps).
    """
    free = max(1e-3, 1.0 - app_cpu_share)
    hi = min(global_batch, memory_batch)
    out = []
    for c in levels if apps else (1.0,):
        slowdown = max(1.0, free / c)
        if not apps or bound is None:
            note = "" if hi >= global_batch else memory_note
            out.append(IntensityLevel(c, slowdown, max(hi, 0), note))
            continue
        violations: dict[int, str] = {}

        def ok(b: int, c: float = c, violations: dict[int, str] = violations) -> bool:
            bounds = bound(b, c)
            worst = [
                f"{a}: p95 bound {bounds[a]:.0f} ms > {lim.deadline_ms * (1 - margin):.0f} ms "
                f"(deadline {lim.deadline_ms:g} ms − {margin:.0%})"
                for a, lim in apps.items()
                if bounds[a] > lim.deadline_ms * (1 - margin)
            ]
            if worst:
                violations[b] = "; ".join(worst)
            return not worst

        cap = _largest(ok, hi)
        if cap == 0 and hi >= 1:
            note = f"at intensity {c:g} even one sample breaks a deadline: {violations[1]}"
        elif cap < hi:
            note = (
                f"at intensity {c:g}, {cap + 1} samples would break a deadline: "
                + violations[min(violations)]
            )
        elif hi < global_batch:
            note = memory_note
        else:
            note = ""
        out.append(IntensityLevel(c, slowdown, cap, note))
    excluded = None
    if hi < 1:
        excluded = memory_note
    elif all(level.cap == 0 for level in out):
        lowest = out[0]
        excluded = f"deadline: {lowest.binding}" + _smallest_change(bound, apps, margin, levels[0])
    return DeviceOption(name, base_s, per_sample_s, tuple(out), excluded)


def _smallest_change(
    bound: LatencyBound | None, apps: Mapping[str, AppLimit], margin: float, lowest: float
) -> str:
    """What deadline would let the device train one sample at the lowest intensity."""
    if bound is None:
        return ""
    bounds = bound(1, lowest)
    needs = [
        f"{a}'s deadline ≥ {bounds[a] / (1 - margin):.0f} ms"
        for a, lim in apps.items()
        if bounds[a] > lim.deadline_ms * (1 - margin)
    ]
    return f" (it could train with {', '.join(needs)})" if needs else ""
