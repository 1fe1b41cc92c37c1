"""Profiling: training throughput per device, all-reduce cost, and the knowledge base.

The planner asks "how long does a step of this model take on this device at batch b,
under its LC load?" and "what does an all-reduce over k devices cost?"; this package
measures the answers on the live cluster, fits small models for batch sizes never run,
and keeps them in a SQLite knowledge base so later jobs reuse them.
"""

from deepedge.knowledge import SCHEMA_VERSION, SoftwareVersions, default_kb_path
from deepedge.profile.comm import CommModel, fabric_key, measure_comm, message_sizes
from deepedge.profile.kb import CommPoint, KnowledgeBase, Profile, ProfileKey, ProfilePoint
from deepedge.profile.stats import AffineModel, TimingSummary, median_ci
from deepedge.profile.throughput import (
    DeviceProfile,
    ProfileSettings,
    default_batches,
    describe_key,
    expected_step_s,
    host_fingerprint,
    measure_profiles,
    profile_key,
)

__all__ = [
    "SCHEMA_VERSION",
    "AffineModel",
    "CommModel",
    "CommPoint",
    "DeviceProfile",
    "KnowledgeBase",
    "Profile",
    "ProfileKey",
    "ProfilePoint",
    "ProfileSettings",
    "SoftwareVersions",
    "TimingSummary",
    "default_batches",
    "default_kb_path",
    "describe_key",
    "expected_step_s",
    "fabric_key",
    "host_fingerprint",
    "measure_comm",
    "measure_profiles",
    "median_ci",
    "message_sizes",
    "profile_key",
]
