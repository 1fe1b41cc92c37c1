"""Planner v0 and its baselines: split the global batch by measured throughput.

The proportional split gives device i a share b_i ∝ v_i (its probed samples/s), so every
device needs about the same time per step; the equal split (plain DDP) is the baseline it
must beat. Devices whose memory cannot hold the job are excluded first, with the numbers
that decided it. The Deep-Edge scheduler (LC deadlines, intensities, exact solver) replaces
this module's ``proportional_split`` without changing its inputs or the ``Plan`` it returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from deepedge.errors import PlanInfeasible, SpecError
from deepedge.plan.shares import split_batch
from deepedge.spec import AppSpec, DeviceSpec, ExcludedDevice, Plan

__all__ = [
    "available_memory_mb",
    "equal_split",
    "fastest_single",
    "lower_bound_s",
    "memory_exclusions",
    "proportional_split",
]


def available_memory_mb(device: DeviceSpec, apps: Sequence[AppSpec]) -> int:
    """RAM training may use: the board's memory less the OS reserve and its LC apps."""
    return (device.memory_mb or 0) - (device.reserved_mb or 0) - sum(a.memory_mb for a in apps)


def memory_exclusions(
    devices: Sequence[DeviceSpec], apps: Sequence[AppSpec], required_mb: Mapping[str, float]
) -> list[ExcludedDevice]:
    """Devices that cannot hold a training worker needing ``required_mb[device]``."""
    out = []
    for d in devices:
        on_device = [a for a in apps if a.device == d.name]
        avail = available_memory_mb(d, on_device)
        need = required_mb[d.name]
        if need > avail:
            out.append(
                ExcludedDevice(
                    device=d.name,
                    reason=(
                        f"memory: training needs {need:.0f} MB but only {avail} MB is free "
                        f"({d.memory_mb} MB − {d.reserved_mb} MB reserved − "
                        f"{sum(a.memory_mb for a in on_device)} MB for LC apps)"
                    ),
                )
            )
    return out


def _check_batch(global_batch: int, n: int) -> None:
    if n == 0:
        raise PlanInfeasible("no device is left to train on", hint="see the excluded devices")
    if global_batch < n:
        raise SpecError(
            f"global batch {global_batch} is smaller than the {n} devices to split it over",
            hint=f"raise job.global_batch to at least {n}",
        )


def _plan(
    policy: str,
    global_batch: int,
    names: Sequence[str],
    weights: Sequence[float],
    excluded: Sequence[ExcludedDevice],
    throughput: Mapping[str, float] | None,
    notes: Sequence[str] = (),
) -> Plan:
    _check_batch(global_batch, len(names))
    shares = split_batch(global_batch, weights, min_each=1)
    local = dict(zip(names, shares, strict=True))
    predicted = max(b / throughput[n] for n, b in local.items()) if throughput else None
    return Plan(
        policy=policy,
        global_batch=global_batch,
        local_batches=local,
        excluded=list(excluded),
        predicted_step_s=predicted,
        notes=list(notes),
    )


def equal_split(
    names: Sequence[str],
    global_batch: int,
    *,
    excluded: Sequence[ExcludedDevice] = (),
    throughput: Mapping[str, float] | None = None,
) -> Plan:
    """Plain DDP: every usable device takes the same share."""
    return _plan("equal", global_batch, names, [1.0] * len(names), excluded, throughput)


def proportional_split(
    throughput: Mapping[str, float], global_batch: int, *, excluded: Sequence[ExcludedDevice] = ()
) -> Plan:
    """Shares proportional to measured samples/s, so devices finish a step together."""
    bad = {n: v for n, v in throughput.items() if not (v > 0 and math.isfinite(v))}
    if bad:
        raise SpecError(f"throughput must be positive and finite, got {bad}")
    names = list(throughput)
    total = sum(throughput.values())
    notes = [
        f"{n}: {v:.1f} samples/s → {100 * v / total:.1f}% of each batch"
        for n, v in throughput.items()
    ]
    return _plan(
        "proportional",
        global_batch,
        names,
        [throughput[n] for n in names],
        excluded,
        throughput,
        notes,
    )


def fastest_single(
    throughput: Mapping[str, float], global_batch: int, *, excluded: Sequence[ExcludedDevice] = ()
) -> Plan:
    """The whole batch on the fastest device: no communication, no parallelism."""
    if not throughput:
        raise PlanInfeasible("no device is left to train on", hint="see the excluded devices")
    best = max(throughput, key=lambda n: throughput[n])
    others = [
        ExcludedDevice(device=n, reason=f"policy: only the fastest device ({best}) trains")
        for n in throughput
        if n != best
    ]
    return _plan("fastest-single", global_batch, [best], [1.0], [*excluded, *others], throughput)


def lower_bound_s(total_samples: int, throughput: Mapping[str, float]) -> float:
    """T_min = total work / Σ device throughput: no split or schedule can beat it."""
    return total_samples / sum(throughput.values())
