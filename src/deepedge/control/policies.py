"""Scheduling policies behind one small protocol, in a registry.

A policy turns what profiling measured (:class:`PlanInputs`) into a :class:`Plan`. The
controller, the CLI, the demo and the benchmarks name policies by string and look them up
here, so a new policy (or a user's own) is one :func:`register_policy` call away from every
one of them, instead of another branch in each.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from deepedge.errors import UsageError
from deepedge.plan import (
    StepModel,
    dynamic_dispatch,
    equal_split,
    fastest_single,
    profiled_split,
    with_dispatch_prediction,
    with_prediction,
)
from deepedge.plan.deadline import deadline_plan
from deepedge.plan.problem import PlanningProblem
from deepedge.spec import ExcludedDevice, Plan

__all__ = [
    "BASELINES",
    "DEADLINE_POLICY",
    "PlanInputs",
    "Policy",
    "get_policy",
    "policy_names",
    "register_policy",
]

DEADLINE_POLICY = "deep-edge"
"""The LC-deadline-aware planner (needs a fitted interference model in the knowledge base)."""
BASELINES = ("proportional", "equal", "fastest-single", "dynamic")
"""Interference-blind split by profiled speed, plain DDP, one device, and EDDL-style
dynamic dispatch (devices claim micro-batches of every step as they finish)."""


@dataclass(frozen=True)
class PlanInputs:
    """What every policy plans from: the profiled devices and the job's batch."""

    models: Mapping[str, StepModel]
    """Each usable device's profiled step time at a local batch (under its LC load)."""
    samples_per_s: Mapping[str, float]
    """Each usable device's profiled throughput at the whole global batch."""
    global_batch: int
    excluded: Sequence[ExcludedDevice]
    """Devices left out before planning (memory, failed profiling), with why."""
    allreduce_s: float
    """Predicted all-reduce per step over every usable device."""
    deadline_problem: PlanningProblem | None = None
    """The Deep-Edge problem (LC limits from the interference model), when a policy that
    needs it is planned."""
    exact: bool = False
    """Solve the Deep-Edge problem with the exact MILP instead of the heuristic."""


class Policy(Protocol):
    name: str
    description: str
    needs_interference: bool
    """True when :meth:`plan` reads ``inputs.deadline_problem`` (so the controller must
    have a fitted interference model covering the cluster's LC apps before it plans)."""

    def plan(self, inputs: PlanInputs) -> Plan: ...


@dataclass(frozen=True)
class _Builtin:
    name: str
    description: str
    build: Callable[[PlanInputs], Plan]
    needs_interference: bool = False

    def plan(self, inputs: PlanInputs) -> Plan:
        return self.build(inputs)


def _deep_edge(i: PlanInputs) -> Plan:
    if i.deadline_problem is None:
        raise UsageError(
            "the deep-edge policy needs the interference model's LC limits",
            hint="plan it through the run controller, which builds them",
        )
    return deadline_plan(i.deadline_problem, exact=i.exact, excluded=i.excluded)


_REGISTRY: dict[str, Policy] = {}


def register_policy(policy: Policy, *, replace: bool = False) -> Policy:
    """Make ``policy`` available by its name everywhere policies are named."""
    if policy.name in _REGISTRY and not replace:
        raise UsageError(
            f"a policy named {policy.name!r} is already registered",
            hint="pick another name, or pass replace=True",
        )
    _REGISTRY[policy.name] = policy
    return policy


def get_policy(name: str) -> Policy:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown policy {name!r}", hint=f"use one of {policy_names()}") from None


def policy_names() -> list[str]:
    return list(_REGISTRY)


for _policy in (
    _Builtin(
        DEADLINE_POLICY,
        "fastest split that keeps every LC app under its deadline (interference model)",
        _deep_edge,
        needs_interference=True,
    ),
    _Builtin(
        "proportional",
        "split by profiled speed, blind to interference",
        lambda i: profiled_split(
            i.models, i.global_batch, excluded=i.excluded, comm_s=i.allreduce_s
        ),
    ),
    _Builtin(
        "equal",
        "the same share on every device (plain DDP)",
        lambda i: with_prediction(
            equal_split(list(i.models), i.global_batch, excluded=i.excluded),
            i.models,
            i.allreduce_s,
        ),
    ),
    _Builtin(
        "fastest-single",
        "the whole batch on the fastest device",
        lambda i: with_prediction(
            fastest_single(i.samples_per_s, i.global_batch, excluded=i.excluded), i.models
        ),
    ),
    _Builtin(
        "dynamic",
        "EDDL-style: devices claim micro-batches of each step as they finish",
        lambda i: with_dispatch_prediction(
            dynamic_dispatch(list(i.models), i.global_batch, excluded=i.excluded),
            i.models,
            i.allreduce_s,
        ),
    ),
):
    register_policy(_policy)
