"""Split the global batch using profiled step-time models instead of one probed speed.

With a fixed part per step (``t_i(b) = a_i + s_i·b``) a share proportional to one
measured throughput is only right at the batch size it was measured at. Here the split
minimises the slowest device's predicted step directly: one sample at a time goes to the
device whose step would still end soonest. For non-decreasing ``t_i`` that greedy order
is optimal for the min-max objective; a device that would not get a single sample is left
out, with the numbers that decided it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from typing import Protocol

from deepedge.errors import PlanInfeasible
from deepedge.spec import ExcludedDevice, Plan

__all__ = [
    "StepModel",
    "balanced_step_s",
    "lower_bound_from_models",
    "profiled_split",
    "step_sizes",
    "with_prediction",
]


class StepModel(Protocol):
    def predict(self, batch: float) -> float: ...

    def batch_for(self, step_s: float) -> float: ...


def profiled_split(
    models: Mapping[str, StepModel],
    global_batch: int,
    *,
    excluded: Sequence[ExcludedDevice] = (),
    comm_s: float = 0.0,
    policy: str = "proportional",
) -> Plan:
    """Local batches minimising ``max_i t_i(b_i)`` with ``Σ b_i = global_batch``."""
    if not models:
        raise PlanInfeasible("no device is left to train on", hint="see the excluded devices")
    batches = dict.fromkeys(models, 0)
    heap = [(m.predict(1), name) for name, m in models.items()]
    heapq.heapify(heap)
    for _ in range(global_batch):
        _, name = heapq.heappop(heap)
        batches[name] += 1
        heapq.heappush(heap, (models[name].predict(batches[name] + 1), name))
    used = {n: b for n, b in batches.items() if b > 0}
    step = max(models[n].predict(b) for n, b in used.items())
    left_out = [
        ExcludedDevice(
            device=n,
            reason=(
                f"too slow to help: one sample would take {models[n].predict(1) * 1e3:.0f} ms, "
                f"longer than the others' whole step ({step * 1e3:.0f} ms)"
            ),
        )
        for n, b in batches.items()
        if b == 0
    ]
    notes = [
        f"{n}: {b} samples/step, predicted {models[n].predict(b) * 1e3:.0f} ms "
        f"({b / models[n].predict(b):.1f} samples/s)"
        for n, b in used.items()
    ]
    if comm_s:
        notes.append(f"all-reduce over {len(used)} devices: predicted {comm_s * 1e3:.0f} ms/step")
    return Plan(
        policy=policy,
        global_batch=global_batch,
        local_batches=used,
        excluded=[*excluded, *left_out],
        predicted_step_s=step + comm_s,
        notes=notes,
    )


def with_prediction(plan: Plan, models: Mapping[str, StepModel], comm_s: float = 0.0) -> Plan:
    """``plan`` with its predicted step time from the profiles (slowest device + all-reduce)."""
    step = max(models[n].predict(b) for n, b in plan.local_batches.items())
    return plan.model_copy(update={"predicted_step_s": step + comm_s})


def balanced_step_s(models: Mapping[str, StepModel], batch: int) -> float:
    """The step time if ``batch`` could be split in fractions with no communication.

    No integer split and no all-reduce can make a step shorter, so this times the number
    of steps is the lower bound T_min the reports compare against.
    """
    if not models:
        raise PlanInfeasible("no device is left to train on", hint="see the excluded devices")
    lo, hi = 0.0, min(m.predict(batch) for m in models.values())
    for _ in range(100):
        mid = (lo + hi) / 2
        if sum(min(batch, m.batch_for(mid)) for m in models.values()) >= batch:
            hi = mid
        else:
            lo = mid
    return hi


def step_sizes(samples: int, global_batch: int, epochs: int = 1) -> list[int]:
    """Global batch of every step: full steps, then the epoch's remainder."""
    full, rest = divmod(samples, global_batch)
    return ([global_batch] * full + ([rest] if rest else [])) * epochs


def lower_bound_from_models(
    models: Mapping[str, StepModel], samples: int, global_batch: int, epochs: int
) -> float:
    """T_min: the sum over the job's steps of :func:`balanced_step_s`."""
    sizes = step_sizes(samples, global_batch, epochs)
    cache = {b: balanced_step_s(models, b) for b in set(sizes)}
    return math.fsum(cache[b] for b in sizes)
