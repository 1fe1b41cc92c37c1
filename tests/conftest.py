"""Shared fixtures: small emulated clusters and the cgroup capability check."""

from __future__ import annotations

import pytest

from deepedge.cluster import detect_cgroups
from deepedge.spec import ClusterSpec


def _cgroups_ok() -> bool:
    driver, _ = detect_cgroups()
    return driver is not None


needs_cgroups = pytest.mark.skipif(not _cgroups_ok(), reason="needs root and writable cgroups")


@pytest.fixture
def two_device_spec() -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "name": "t",
            "devices": [
                {"name": "fast", "kind": "orin-nano"},
                {"name": "slow", "kind": "jetson-nano"},
            ],
        }
    )
