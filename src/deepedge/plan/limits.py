"""From profiles and the interference model to the planner's per-device options.

For every device and intensity level this finds the largest local batch at which

* every LC app on the device keeps its *upper bound* of predicted p95 latency under its
  deadline minus a margin (the bound covers the model's error; the margin covers what the
  bound's coverage leaves), and
* training plus the apps fit the device's memory,

and records which of those bound it, so a plan can say why a device was throttled or
left out and what change would let it train.

A plan may give a device any batch up to its cap, so the cap is the end of the longest run
of batches 1, 2, ... that all keep the deadlines. A fitted bound need not rise with the
batch (a random forest's does not), so a bisection could step over a violation or stop
before feasible batches: unless the bound is declared monotone in the batch, every batch
up to :data:`SCAN_LIMIT` is checked, in one call per intensity.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from deepedge.errors import SpecError
from deepedge.plan.problem import DeviceOption, IntensityLevel

__all__ = ["INTENSITY_LEVELS", "SCAN_LIMIT", "AppLimit", "LatencyBound", "device_option"]

SCAN_LIMIT = 4096
"""Most batch sizes checked one by one for a bound not known to rise with the batch; the
cap of such a bound stops here (a larger cap would be a guess)."""

INTENSITY_LEVELS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
"""The training intensities the planner may choose from (shares of the device's CPU)."""


@dataclass(frozen=True)
class AppLimit:
    """An LC app on the device and its deadline on p95 latency."""

    name: str
    deadline_ms: float


LatencyBound = Callable[[Sequence[int], float], Mapping[str, Sequence[float]]]
"""(batches, intensity) -> each app's predicted p95 upper bound in ms at each batch (batch 0:
no training)."""


def _largest(ok: Callable[[int], bool], hi: int) -> int:
    """Largest b in [0, hi] with ok(b), for ok true then false (a monotone bound)."""
    if hi < 1 or not ok(1):
        return 0
    if ok(hi):  # the usual case where a bound flattens out: one call instead of log(hi)
        return hi
    lo, hi = 1, hi - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _deadline_cap(
    bound: LatencyBound,
    apps: Mapping[str, AppLimit],
    c: float,
    hi: int,
    margin: float,
    monotone: bool,
) -> tuple[int, str]:
    """The cap at intensity ``c`` within ``hi`` and, when the deadline binds, why."""
    limits = {a: lim.deadline_ms * (1 - margin) for a, lim in apps.items()}

    def why(b: int, bounds: Mapping[str, float]) -> str:
        return "; ".join(
            f"{a}: p95 bound {bounds[a]:.0f} ms > {limits[a]:.0f} ms "
            f"(deadline {apps[a].deadline_ms:g} ms − {margin:.0%})"
            for a in apps
            if not bounds[a] <= limits[a]
        )

    def at(b: int) -> dict[str, float]:
        return {a: float(v[0]) for a, v in bound([b], c).items()}

    if hi < 1:
        return 0, ""
    if monotone:
        cap = _largest(lambda b: not why(b, at(b)), hi)
    else:
        batches = np.arange(1, min(hi, SCAN_LIMIT) + 1)
        ok = np.ones(len(batches), dtype=bool)
        for a, values in bound(batches.tolist(), c).items():
            ok &= np.asarray(values, dtype=float) <= limits[a]  # NaN is not ok
        cap = len(batches) if ok.all() else int(np.argmin(ok))
        if cap == SCAN_LIMIT < hi:
            return cap, f"at intensity {c:g} the bound was checked up to {SCAN_LIMIT} samples"
    if cap == 0:
        return 0, f"at intensity {c:g} even one sample breaks a deadline: {why(1, at(1))}"
    if cap < hi:
        return cap, (
            f"at intensity {c:g}, {cap + 1} samples would break a deadline: "
            + why(cap + 1, at(cap + 1))
        )
    return cap, ""


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
    bound_monotone: bool = False,
    app_cpu_share: float = 0.0,
    margin: float = 0.05,
    levels: tuple[float, ...] = INTENSITY_LEVELS,
) -> DeviceOption:
    """The planner's view of one device.

    ``memory_batch`` is the most samples that fit its memory (``memory_note`` says why);
    ``app_cpu_share`` the share of its CPU its apps use, so at intensity c training gets
    ``min(c, 1 − share)`` and is slowed by ``(1 − share) / c`` when c is below that (the
    profile was taken with the trainer unthrottled beside the apps). A device with apps
    needs a ``bound``; ``bound_monotone`` says it never falls as the batch grows, which
    lets the cap search bisect instead of checking every batch.
    """
    if apps and bound is None:
        raise SpecError(
            f"device {name} runs LC apps ({', '.join(apps)}) but no latency bound was given "
            "to check their deadlines",
            hint="fit an interference model (`deepedge interference fit`)",
        )
    free = max(1e-3, 1.0 - app_cpu_share)
    hi = min(global_batch, memory_batch)
    out = []
    for c in levels if apps else (1.0,):
        slowdown = max(1.0, free / c)
        note = ""
        cap = max(hi, 0)
        if apps and bound is not None:
            cap, note = _deadline_cap(bound, apps, c, hi, margin, bound_monotone)
        if not note and hi < global_batch:
            note = memory_note
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
    bounds = {a: float(v[0]) for a, v in bound([1], lowest).items()}
    needs = [
        f"{a}'s deadline ≥ {bounds[a] / (1 - margin):.0f} ms"
        for a, lim in apps.items()
        if bounds[a] > lim.deadline_ms * (1 - margin)
    ]
    return f" (it could train with {', '.join(needs)})" if needs else ""
