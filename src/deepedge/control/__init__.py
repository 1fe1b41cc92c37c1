"""Run control: one controller owns a re-training run from boot to done or failed.

States and the event log (:mod:`~deepedge.control.events`), policies in a registry
(:mod:`~deepedge.control.policies`), the mechanism that profiles, plans, trains and learns
on a session (:mod:`~deepedge.control.retraining`), the straggler watch and the SLO guard it adapts
with (:mod:`~deepedge.control.stragglers`, :mod:`~deepedge.control.slo_guard`), and the
controller that drives it (:mod:`~deepedge.control.controller`).
"""

from deepedge.control.controller import PolicyRun, RunController, RunOptions
from deepedge.control.events import Event, EventLog, RunState
from deepedge.control.policies import (
    BASELINES,
    DEADLINE_POLICY,
    PlanInputs,
    Policy,
    get_policy,
    policy_names,
    register_policy,
)
from deepedge.control.retraining import Planning, Profiling, Retraining
from deepedge.control.slo_guard import GuardAction, GuardSettings, SloGuard
from deepedge.control.stragglers import StragglerWatch

__all__ = [
    "BASELINES",
    "DEADLINE_POLICY",
    "Event",
    "EventLog",
    "GuardAction",
    "GuardSettings",
    "PlanInputs",
    "Planning",
    "Policy",
    "PolicyRun",
    "Profiling",
    "Retraining",
    "RunController",
    "RunOptions",
    "RunState",
    "SloGuard",
    "StragglerWatch",
    "get_policy",
    "policy_names",
    "register_policy",
]
