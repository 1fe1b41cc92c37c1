"""Planning: which devices train and each one's share of every global batch."""

from deepedge.plan.proportional import (
    available_memory_mb,
    equal_split,
    fastest_single,
    lower_bound_s,
    memory_exclusions,
    proportional_split,
)

__all__ = [
    "available_memory_mb",
    "equal_split",
    "fastest_single",
    "lower_bound_s",
    "memory_exclusions",
    "proportional_split",
]
