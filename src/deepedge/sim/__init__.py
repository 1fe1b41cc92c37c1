"""Simulated fleets: the real planner against device models, 1,000 to 100,000 devices.

A fleet is drawn from the device catalog (kinds weighted as given), each device with an
LC app at a random load and deadline slack and a link speed. Its step-time model is the
reference profile scaled by the kind's catalog CPU score; its LC limits come from
:func:`lc_p95_ms`, a stated queueing model of the app's p95 beside training at local
batch b and intensity c (the app's own queue, plus the wait behind the trainer's unbroken
stretch, which grows with b up to a cap and is met more often as c rises), whose three
constants were fitted to the lab's measured phases (``bench/sim_calibration.py``,
``bench/results/sim_calibration.json``). Devices with the same kind, load, p95, deadline
and memory share one computation of their limits, so building a 100,000-device problem
costs a few tens of thousands of limit searches. The planner then runs exactly as on a
cluster.
"""

from deepedge.sim.fleet import (
    LC_CONTENTION,
    LC_STRETCH_CAP,
    LC_STRETCH_PER_SAMPLE,
    REFERENCE_PROFILE,
    FleetSpec,
    SimDevice,
    build_problem,
    lc_p95_ms,
    queueing_bound,
    synthetic_fleet,
)
from deepedge.sim.instances import small_instance

__all__ = [
    "LC_CONTENTION",
    "LC_STRETCH_CAP",
    "LC_STRETCH_PER_SAMPLE",
    "REFERENCE_PROFILE",
    "FleetSpec",
    "SimDevice",
    "build_problem",
    "lc_p95_ms",
    "queueing_bound",
    "small_instance",
    "synthetic_fleet",
]
