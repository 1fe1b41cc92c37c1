"""Cluster backends: where emulated or real devices run their processes."""

from deepedge.cluster.api import (
    BackendFactory,
    ClusterBackend,
    DeviceHandle,
    DeviceUsage,
    EmulationMode,
)
from deepedge.cluster.cgroups import detect_cgroups
from deepedge.cluster.local import LocalCluster, LocalDevice, cleanup_stale
from deepedge.cluster.specwatch import SpecWatch
from deepedge.spec import ClusterSpec

__all__ = [
    "BackendFactory",
    "ClusterBackend",
    "DeviceHandle",
    "DeviceUsage",
    "EmulationMode",
    "LocalCluster",
    "LocalDevice",
    "SpecWatch",
    "cleanup_stale",
    "detect_cgroups",
    "make_backend",
]


def make_backend(spec: ClusterSpec, *, force_fallback: bool = False) -> ClusterBackend:
    """The backend ``spec`` runs on, built but not started (a :class:`BackendFactory`).

    ``backend: local`` (the default) emulates the devices on this machine; ``backend: ray``
    finds each device as a node of a Ray cluster (imported only then). Callers take a
    factory rather than naming a backend.
    """
    if spec.backend == "ray":
        from deepedge.cluster.ray_backend import RayBackend

        return RayBackend(spec, force_fallback=force_fallback)
    return LocalCluster(spec, force_fallback=force_fallback)
