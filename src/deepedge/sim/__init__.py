"""Simulated fleets: the real planner against device models, 1,000 to 100,000 devices.

A fleet is drawn from the device catalog (kinds weighted as given), each device with an
LC app at a random load and deadline slack and a link speed. Its step-time model is the
reference profile scaled by the kind's catalog CPU score (or measured profiles where the
knowledge base has them); its LC limits come from a latency bound: the fitted
interference model where one is given, otherwise the queueing approximation
:func:`queueing_bound` (stated, not measured). Devices with the same kind, load and
deadline share one computation of their limits, so building a 100,000-device problem
costs a few thousand bound evaluations. The planner then runs exactly as on a cluster.
"""

from deepedge.sim.fleet import (
    REFERENCE_PROFILE,
    FleetSpec,
    SimDevice,
    build_problem,
    queueing_bound,
    synthetic_fleet,
)

__all__ = [
    "REFERENCE_PROFILE",
    "FleetSpec",
    "SimDevice",
    "build_problem",
    "queueing_bound",
    "synthetic_fleet",
]
