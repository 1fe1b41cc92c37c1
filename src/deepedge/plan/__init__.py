"""Planning: which devices train and each one's share of every global batch."""

from deepedge.plan.dynamic import default_micro_batch, dynamic_dispatch, with_dispatch_prediction
from deepedge.plan.profiled import (
    StepModel,
    balanced_step_s,
    lower_bound_from_models,
    profiled_split,
    step_sizes,
    with_prediction,
)
from deepedge.plan.proportional import (
    available_memory_mb,
    equal_split,
    fastest_single,
    lower_bound_s,
    memory_exclusions,
    proportional_split,
)

__all__ = [
    "StepModel",
    "available_memory_mb",
    "balanced_step_s",
    "default_micro_batch",
    "dynamic_dispatch",
    "equal_split",
    "fastest_single",
    "lower_bound_from_models",
    "lower_bound_s",
    "memory_exclusions",
    "profiled_split",
    "proportional_split",
    "step_sizes",
    "with_dispatch_prediction",
    "with_prediction",
]
