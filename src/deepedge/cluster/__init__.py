"""Cluster backends: where emulated or real devices run their processes."""

from deepedge.cluster.api import ClusterBackend, DeviceHandle, DeviceUsage, EmulationMode
from deepedge.cluster.cgroups import detect_cgroups
from deepedge.cluster.local import LocalCluster, LocalDevice, cleanup_stale

__all__ = [
    "ClusterBackend",
    "DeviceHandle",
    "DeviceUsage",
    "EmulationMode",
    "LocalCluster",
    "LocalDevice",
    "cleanup_stale",
    "detect_cgroups",
]
