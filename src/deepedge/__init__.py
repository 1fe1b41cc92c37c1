"""deepedge: re-train models on heterogeneous edge clusters without breaking LC apps.

The public surface of each area lives in its package (``deepedge.spec``,
``deepedge.cluster``, ``deepedge.apps``, ``deepedge.data``, ``deepedge.models``,
``deepedge.plan``, ``deepedge.train``); the most used names are re-exported here.
Importing ``deepedge`` does not import torch: ``Job``, ``fit`` and ``FitResult`` (bring
your own model, :mod:`deepedge.byo`) load on first use.
"""

from deepedge.errors import (
    CheckpointError,
    ClusterError,
    DataError,
    DeepEdgeError,
    PlanInfeasible,
    SpecError,
    TrainingError,
)
from deepedge.lazy import lazy_exports
from deepedge.spec import AppSpec, ClusterSpec, DeviceSpec, JobSpec, Plan, load_spec

__version__ = "0.1.0"

__all__ = [
    "AppSpec",
    "CheckpointError",
    "ClusterError",
    "ClusterSpec",
    "DataError",
    "DeepEdgeError",
    "DeviceSpec",
    "FitResult",
    "Job",
    "JobSpec",
    "Plan",
    "PlanInfeasible",
    "SpecError",
    "TrainingError",
    "__version__",
    "fit",
    "load_spec",
]

__getattr__, __dir__ = lazy_exports(
    globals(), {name: "deepedge.byo" for name in ("FitResult", "Job", "fit")}
)
