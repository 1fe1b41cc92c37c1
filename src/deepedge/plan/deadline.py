"""The Deep-Edge plan of a real cluster: profiles + interference model + memory → a plan.

:func:`cluster_problem` builds the :class:`PlanningProblem` of a cluster's devices from
their profiled step-time models, the fitted interference model (each LC app's p95 upper
bound beside training at batch b and intensity c) and the memory each batch size needs;
:func:`deadline_plan` solves it (heuristic, or the exact MILP) and explains the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from deepedge.api import LatencyBounds
from deepedge.errors import PlanInfeasible, SpecError
from deepedge.plan.exact import solve_exact
from deepedge.plan.explain import to_plan
from deepedge.plan.heuristic import solve_heuristic
from deepedge.plan.limits import INTENSITY_LEVELS, AppLimit, device_option
from deepedge.plan.problem import PlanningProblem
from deepedge.plan.proportional import available_memory_mb
from deepedge.spec import AppSpec, DeviceSpec, ExcludedDevice, Plan

__all__ = ["DEFAULT_MARGIN", "cluster_problem", "deadline_plan", "memory_batch"]

DEFAULT_MARGIN = 0.05
"""Deadline margin on top of the model's upper bound (its coverage is about 95 %)."""


def memory_batch(
    device: DeviceSpec,
    apps: Sequence[AppSpec],
    need_mb: Callable[[int], float],
    global_batch: int,
) -> tuple[int, str]:
    """Largest local batch whose training memory fits beside the apps, and why not more."""
    avail = available_memory_mb(device, apps)
    if need_mb(1) > avail:
        return 0, (
            f"memory: training needs {need_mb(1):.0f} MB at one sample but only {avail} MB is "
            f"free ({device.memory_mb} MB − {device.reserved_mb} MB reserved − "
            f"{sum(a.memory_mb for a in apps)} MB for LC apps)"
        )
    lo, hi = 1, global_batch
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need_mb(mid) <= avail else (lo, mid - 1)
    return lo, f"memory: {lo + 1} samples would need {need_mb(lo + 1):.0f} MB of {avail} MB free"


def cluster_problem(
    devices: Sequence[DeviceSpec],
    apps: Sequence[AppSpec],
    step_models: Mapping[str, tuple[float, float]],
    *,
    global_batch: int,
    comm_s: Callable[[int], float],
    need_mb: Callable[[int], float],
    interference: LatencyBounds | None,
    device_keys: Mapping[str, str],
    margin: float = DEFAULT_MARGIN,
    levels: tuple[float, ...] = INTENSITY_LEVELS,
) -> PlanningProblem:
    """The planning problem of the profiled devices (``step_models``: name -> (a, s)).

    Without an interference model devices with LC apps cannot be checked, which is an
    error (a plan that cannot promise the deadlines is not a Deep-Edge plan).
    """
    options = []
    for d in devices:
        if d.name not in step_models:
            continue
        mine = [a for a in apps if a.device == d.name]
        cap_mem, mem_note = memory_batch(d, mine, need_mb, global_batch)
        limits = {a.name: AppLimit(a.name, a.deadline_ms) for a in mine}
        bound = None
        share = 0.0
        if mine:
            if interference is None:
                raise PlanInfeasible(
                    f"device {d.name} runs LC apps but there is no interference model to "
                    "check their deadlines against",
                    hint="run `deepedge interference profile` and `deepedge interference fit`",
                )
            key = device_keys[d.name]
            book = interference.book(key)
            for a in mine:
                alone = book.app(a.kind, a.rate_rps).get("p95_ms", 0.0)
                if alone > a.deadline_ms:
                    raise SpecError(
                        f"app {a.name}'s deadline {a.deadline_ms:g} ms is below its p95 with "
                        f"nothing else running ({alone:.1f} ms at {a.rate_rps:g} req/s on "
                        f"{d.name}): no plan can meet it",
                        hint=f"raise the deadline above {alone:.0f} ms or lower the app's rate",
                    )
            share = sum(book.app(a.kind, a.rate_rps).get("cpu_cores", 0.0) for a in mine)
            share /= float(d.cpu_cores or 1.0)
            rates = {a.name: (a.kind, a.rate_rps) for a in mine}

            def bound(
                batches: Sequence[int], c: float, key: str = key, rates: dict = rates
            ) -> dict[str, np.ndarray]:
                return interference.p95_upper_beside_training(key, rates, batches, c)

        a, s = step_models[d.name]
        options.append(
            device_option(
                d.name,
                base_s=a,
                per_sample_s=max(s, 1e-9),
                global_batch=global_batch,
                memory_batch=cap_mem,
                memory_note=mem_note,
                apps=limits,
                bound=bound,
                app_cpu_share=min(share, 0.95),
                margin=margin,
                levels=levels,
            )
        )
    return PlanningProblem(tuple(options), global_batch, comm_s=comm_s)


def deadline_plan(
    problem: PlanningProblem,
    *,
    exact: bool = False,
    excluded: Sequence[ExcludedDevice] = (),
) -> Plan:
    """Solve ``problem`` and return the explained plan (policy ``deep-edge``)."""
    sol = solve_exact(problem) if exact else solve_heuristic(problem)
    return to_plan(problem, sol, policy="deep-edge", excluded=list(excluded))
