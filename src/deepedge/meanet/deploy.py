"""The cloud half of MEANet on the emulated cluster: a cloud device behind a WAN.

The cloud is one more emulated device, :func:`cloud_device`, on a cluster with
``network: netns``: its link is ``tbf``-shaped to the WAN's bandwidth in both directions,
and :func:`cloud_behind_wan` starts the cloud model's replica there and a
:class:`~deepedge.cluster.wan.DelayRelay` in front of it on the coordinator's address,
which adds the WAN's round-trip time (``netem`` is not available to add it in the kernel).
An edge device reaches the cloud at the address it yields, so an offloaded image crosses
the edge's link, the relay's delay and the WAN link, and the reply comes back the same way.

The WAN's numbers are stated assumptions (:class:`Wan`), not measurements of a real site:
an uplink of 20 Mbit/s and a 40 ms round trip to a regional cloud.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deepedge.apps import wait_ready
from deepedge.catalog import HOST_CORES_PER_SCORE
from deepedge.cluster.api import ClusterBackend, signal_group
from deepedge.cluster.wan import DelayRelay
from deepedge.spec import DeviceSpec

__all__ = ["Wan", "cloud_behind_wan", "cloud_device"]

# A compute-optimised 4-vCPU instance (e.g. AWS c6i.xlarge: Xeon Ice Lake at 3.5 GHz,
# 8 GiB), with the catalog's capacity score: cores × GHz × per-clock factor, ≈ 3.0 for
# Sunny Cove against the Cortex-A57 reference (estimated, like the catalog's factors).
_CLOUD_SCORE = 4 * 3.5 * 3.0


@dataclass(frozen=True)
class Wan:
    """The edge site's link to the cloud (stated assumptions, see the module doc)."""

    mbps: float = 20.0
    rtt_ms: float = 40.0


def cloud_device(name: str = "cloud-1", wan: Wan = Wan()) -> DeviceSpec:
    """A cloud instance as an emulated device whose link is the WAN to it."""
    return DeviceSpec(
        name=name,
        kind="cloud-vm",
        cpu_cores=round(_CLOUD_SCORE * HOST_CORES_PER_SCORE, 3),
        memory_mb=8192,
        reserved_mb=1024,
        link_mbps=wan.mbps,
    )


@contextmanager
def cloud_behind_wan(
    cluster: ClusterBackend, device: str, checkpoint: Path, wan: Wan, workdir: Path
) -> Iterator[str]:
    """Serve ``checkpoint`` (the cloud model) on ``device`` of a running ``cluster`` and
    yield ``HOST:PORT``, where edge devices reach it across the WAN."""
    handle = cluster.devices[device]
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"{device}-cloud.ready.json"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "deepedge.serving.replica", "--checkpoint", str(checkpoint)]
    argv += ["--name", f"{device}-cloud", "--ready-file", str(ready), "--host", handle.address]
    proc = handle.spawn(argv, log_path=workdir / f"{device}-cloud.log")
    try:
        port = wait_ready(ready, proc, timeout_s=300)
        host = cluster.coordinator_address
        with DelayRelay(handle.address, port, wan.rtt_ms / 1e3, listen_host=host) as relay:
            yield f"{host}:{relay.port}"
    finally:
        signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=30)
