"""The cluster backend interface: what the trainer and the demo need from "devices".

Backends (cgroups of this machine, nodes of a Ray cluster) differ in how a device is
fenced and reached, not in what the control loop asks of them: start processes on a
device, list and measure them, stop everything leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from deepedge.spec import ClusterSpec, DeviceSpec

__all__ = [
    "BackendFactory",
    "ClusterBackend",
    "DeviceHandle",
    "DeviceProcess",
    "DeviceUsage",
    "EmulationMode",
    "signal_group",
]


class EmulationMode(StrEnum):
    CGROUP_V1 = "cgroup-v1"
    CGROUP_V2 = "cgroup-v2"
    DUTY_CYCLE = "duty-cycle-fallback"


@dataclass(frozen=True)
class DeviceUsage:
    cpu_seconds: float
    memory_bytes: int | None
    throttled_periods: int | None
    throttled_s: float | None = None


class DeviceProcess(Protocol):
    """A process started in a device: as much of :class:`subprocess.Popen` as deepedge
    uses, so a process on another machine (a Ray node) can stand in for a local one."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def signal_group(proc: DeviceProcess, sig: int) -> None:
    """Send ``sig`` to a device process's whole group (it was started as a group leader).

    A process on another machine has a pid that means nothing here; it brings its own
    ``killpg``."""
    remote = getattr(proc, "killpg", None)
    if remote is not None:
        remote(sig)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class DeviceHandle(Protocol):
    """One device: a fence around processes with the device's CPU and memory capacity."""

    @property
    def spec(self) -> DeviceSpec: ...

    @property
    def address(self) -> str:
        """Address at which the device's servers are reachable (its netns address, or loopback)."""
        ...

    @property
    def pace_cores(self) -> float | None:
        """CPU share a worker must pace itself to where the backend cannot fence it."""
        ...

    @property
    def interface(self) -> str | None:
        """The network interface device processes must use, if not the default route."""
        ...

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        self_paced: bool = False,
        partition: str | None = None,
    ) -> DeviceProcess:
        """Start a process that belongs to this device from its first instruction (to the
        device's ``partition``, if given and made)."""
        ...

    def pids(self) -> set[int]: ...

    def usage(self) -> DeviceUsage: ...

    def set_cpu_limit(self, cores: float | None) -> None:
        """Change the CPU capacity (None = unlimited, used only while devices boot)."""
        ...

    @property
    def partitions(self) -> bool:
        """Whether :meth:`set_partition` fences processes apart inside the device."""
        ...

    def set_partition(self, name: str, *, cores: float | None, memory_mb: int | None) -> None:
        """Create or resize a share of the device with its own CPU and memory limits
        (a model-server replica's flavour); processes join it with ``spawn(partition=)``."""
        ...

    def remove_partition(self, name: str) -> None: ...

    def partition_usage(self, name: str) -> DeviceUsage: ...


class ClusterBackend(Protocol):
    mode: EmulationMode
    spec: ClusterSpec
    """The cluster spec with every device's catalog defaults filled in."""

    @property
    def emulation(self) -> str:
        """Everything about the emulation that sets device speed, for profile keys."""
        ...

    @property
    def devices(self) -> Mapping[str, DeviceHandle]: ...

    @property
    def coordinator_address(self) -> str:
        """Where device processes reach the coordinator (rendezvous, agent control)."""
        ...

    @property
    def network(self) -> str:
        """How devices are linked, in words (for the user)."""
        ...

    @property
    def warnings(self) -> list[str]:
        """Every way this backend is weaker than the spec asked for, to show the user."""
        ...

    def start(self) -> None: ...

    def add_device(self, spec: DeviceSpec) -> DeviceHandle:
        """Boot one more device into the started cluster, fenced as the spec's devices are.

        A device can join while a job runs (``deepedge cluster add``, a reloaded spec);
        the caller profiles it on the side and brings it into training at a step boundary.
        Fills in the catalog defaults, appends the device to :attr:`spec` and
        :attr:`devices` (which may be iterated by other threads meanwhile), and boots it
        with its limits applied. A taken name or an unknown kind raises
        :class:`~deepedge.errors.SpecError` and boots nothing; a failed boot leaves
        nothing behind. :meth:`stop` removes it like every other device.
        """
        ...

    def remove_device(self, name: str) -> None:
        """Kill one device's processes, remove its fence, drop it from :attr:`spec`.

        Undoes a join that failed half-way; refused (``ClusterError``) for a device the
        spec's LC apps run on and for the last device.
        """
        ...

    def stop(self) -> None:
        """Kill every process of every device and remove every fence. Idempotent."""
        ...


class BackendFactory(Protocol):
    """Builds (without starting) the backend of a cluster spec: how the controller, the
    session and the interference lab get their devices, so none of them names a backend."""

    def __call__(self, spec: ClusterSpec, *, force_fallback: bool = False) -> ClusterBackend: ...
