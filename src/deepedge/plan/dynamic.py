"""EDDL-style dynamic dispatch: devices claim micro-batches of each step as they finish.

No split is decided ahead of time. Each global step of B samples is cut into chunks of
``micro_batch`` samples; every device repeatedly claims the next unclaimed chunk from a
counter in the coordinator's store until none is left, then all of them all-reduce. A
faster device simply comes back for more, so the step balances itself without a profile
(see :func:`deepedge.train.ddp.run_dynamic_epochs`). This is the baseline a profiled
static split has to beat: it adapts to load it never measured, but pays one store round
trip per chunk and can leave a slow device holding the last chunk.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from deepedge.plan.profiled import StepModel
from deepedge.plan.proportional import _check_batch
from deepedge.plan.shares import split_batch
from deepedge.spec import ExcludedDevice, Plan

__all__ = [
    "CHUNKS_PER_DEVICE",
    "default_micro_batch",
    "dynamic_dispatch",
    "with_dispatch_prediction",
]

CHUNKS_PER_DEVICE = 4
"""Chunks each device gets per step, on average, with the default micro batch."""


def default_micro_batch(global_batch: int, devices: int) -> int:
    """A micro batch giving each device about :data:`CHUNKS_PER_DEVICE` chunks per step.

    EDDL's granularity trade-off: chunks that are too small make the per-chunk overhead
    (a store round trip, a forward/backward on a tiny batch that uses the hardware poorly)
    dominate; chunks that are too large leave little to rebalance, and a slow device
    that claims the last chunk stalls everyone's step for a whole chunk's time.
    """
    return max(1, global_batch // (CHUNKS_PER_DEVICE * max(1, devices)))


def dynamic_dispatch(
    devices: Sequence[str],
    global_batch: int,
    *,
    micro_batch: int | None = None,
    excluded: Sequence[ExcludedDevice] = (),
) -> Plan:
    """A dynamic plan: every device in ``devices`` claims ``micro_batch`` chunks at run time.

    The plan's ``local_batches`` is an equal split, a placeholder for displays and
    predictions only: who processes what is decided while training.
    """
    names = list(devices)
    _check_batch(global_batch, len(names))
    micro = (
        micro_batch if micro_batch is not None else default_micro_batch(global_batch, len(names))
    )
    expected = dict(
        zip(names, split_batch(global_batch, [1.0] * len(names), min_each=1), strict=True)
    )
    chunks = -(-global_batch // micro)
    return Plan(
        policy="dynamic",
        global_batch=global_batch,
        local_batches=expected,
        excluded=list(excluded),
        micro_batch=micro,
        notes=[
            f"dynamic dispatch: {chunks} chunks of up to {micro} samples per step, claimed "
            f"by {len(names)} devices as they finish",
            "local batches are an equal-split placeholder; the real shares are decided at run time",
        ],
    )


def with_dispatch_prediction(
    plan: Plan, models: Mapping[str, StepModel], comm_s: float = 0.0
) -> Plan:
    """``plan`` (dynamic) with the shares and step time its dispatch is expected to reach.

    Simulates the claiming: chunk after chunk goes to the device that is free first
    (ties to plan order), each chunk costing that device its profiled step time at the
    chunk's size. Charging the whole fixed part of a step to every chunk is deliberately
    pessimistic: a small chunk's forward and backward pay most of the per-layer overhead
    again, which is the cost of dispatching finely. The expected ``local_batches``
    replace the equal-split placeholder (floored at one sample, as plans require), and
    the step is the last device's finish plus the all-reduce.
    """
    if plan.micro_batch is None:
        raise ValueError(f"plan {plan.policy!r} is not dynamic (no micro_batch)")
    names, m, total = plan.devices, plan.micro_batch, plan.global_batch
    busy = dict.fromkeys(names, 0.0)
    samples = dict.fromkeys(names, 0)
    free = [(0.0, rank, name) for rank, name in enumerate(names)]
    for lo in range(0, total, m):
        at, rank, name = heapq.heappop(free)
        chunk = min(m, total - lo)
        busy[name] = at + models[name].predict(chunk)
        samples[name] += chunk
        heapq.heappush(free, (busy[name], rank, name))
    expected = split_batch(total, [samples[n] for n in names], min_each=1)
    return plan.model_copy(
        update={
            "local_batches": dict(zip(names, expected, strict=True)),
            "predicted_compute_s": busy,
            "predicted_comm_s": comm_s,
            "predicted_step_s": max(busy.values()) + comm_s,
        }
    )
