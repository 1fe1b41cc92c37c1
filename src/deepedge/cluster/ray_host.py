"""The Ray actor that owns one device on its node: its fence and every process in it.

:class:`~deepedge.cluster.ray_backend.RayBackend` starts one :class:`DeviceHost` per
device, pinned to the device's Ray node by the node's custom resource, and asks it to do
on that node what :class:`~deepedge.cluster.local.LocalDevice` does on this machine: make
the device's cgroup (CPU quota, memory limit, pinned CPUs), start processes inside it
from their first instruction, report their exit codes, signal them, and sample the
fence's usage for the monitor. It is that same ``LocalDevice`` underneath, so a device
is fenced the same way whether the coordinator or a Ray node made it.

The host runs as a threaded actor so that a blocking ``wait`` does not hold up the
monitor's samples. Processes are started from one long-lived thread of its own: a
child's parent-death signal follows the *thread* that spawned it, and a device's
processes must die with the host (a lost node is a failed device, and nothing of it may
outlive it), not with whichever of Ray's threads served the call.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deepedge.cluster.api import DeviceUsage, EmulationMode
from deepedge.cluster.cgroups import PARENT, detect_cgroups, owner_tag
from deepedge.cluster.local import LocalDevice, _DutyCycleThrottler, cleanup_stale
from deepedge.errors import ClusterError
from deepedge.spec import DeviceSpec

__all__ = ["PYTHON", "DeviceHost"]

PYTHON = "{python}"
"""Stands for the node's own Python in an argv: the coordinator's interpreter path means
nothing on a board where deepedge is installed elsewhere."""

# What Ray sets in its worker processes that a device's processes must not inherit:
# OMP_NUM_THREADS=1 alone would make torch on a 4-core board use one thread.
_RAY_ENV = ("OMP_NUM_THREADS", "PYTHONBREAKPOINT", "SPT_NOENV")


def _device_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k not in _RAY_ENV}


class DeviceHost:
    """One device on the node this actor runs on (see the module's docstring)."""

    def __init__(
        self, device: dict[str, Any], *, period_us: int, cwd: str, force_fallback: bool
    ) -> None:
        if os.path.isdir(cwd):  # relative paths in argv mean what they mean to the coordinator
            os.chdir(cwd)
        spec = DeviceSpec.model_validate(device)
        driver, reason = (None, "fallback forced") if force_fallback else detect_cgroups()
        self._driver = driver
        self._fence_reason = reason
        self._device = LocalDevice(
            spec, driver=driver, group=f"{PARENT}/{owner_tag()}/{spec.name}", period_us=period_us
        )
        self._device.base_env = _device_env()
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="deepedge-spawner")
        self._throttler: _DutyCycleThrottler | None = None

    def describe(self) -> dict[str, Any]:
        """Where this device is: node, address, host CPUs, and how it can be fenced."""
        import ray

        if self._driver is None:
            mode = EmulationMode.DUTY_CYCLE
        else:
            mode = EmulationMode.CGROUP_V1 if self._driver.version == 1 else EmulationMode.CGROUP_V2
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "address": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(),
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "cpus": sorted(os.sched_getaffinity(0)),
            "mode": mode.value,
            "fence_reason": self._fence_reason,
            "partitions": self._device.partitions,
            "pid": os.getpid(),
        }

    def create(self, cpus: Sequence[int] | None) -> None:
        """Make the fence, pinned to ``cpus`` of this node (None: not pinned)."""
        self._device.cpus = tuple(cpus) if cpus else None
        if self._driver:
            cleanup_stale(self._driver)  # what hosts of lost nodes left on this machine
        self._device.create()
        if self._driver is None:
            self._throttler = _DutyCycleThrottler({self._device.name: self._device})
            self._throttler.start()

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        log_path: str | None,
        self_paced: bool,
        partition: str | None = None,
    ) -> int:
        """Start ``argv`` in the device; its pid. The log's folder must exist on this node."""
        argv = [sys.executable if a == PYTHON else a for a in argv]
        if log_path and not Path(log_path).parent.is_dir():
            raise ClusterError(
                f"device {self._device.name!r} (node {socket.gethostname()}) cannot write its "
                f"log: {Path(log_path).parent} does not exist there",
                hint="put the run directory on a filesystem every node mounts at the same "
                "path (e.g. NFS)",
            )
        proc = self._spawner.submit(
            self._device.spawn,
            argv,
            env=env,
            log_path=Path(log_path) if log_path else None,
            self_paced=self_paced,
            partition=partition,
        ).result()
        self._procs[proc.pid] = proc
        return proc.pid

    def poll(self, pid: int) -> int | None:
        return self._procs[pid].poll()

    def wait(self, pid: int, timeout_s: float) -> int | None:
        """The exit code once it exits within ``timeout_s``; None if it still runs."""
        try:
            return self._procs[pid].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, pid: int, sig: int, group: bool) -> None:
        """Send ``sig`` to the process (its whole group: it leads one), if it still runs."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def pids(self) -> set[int]:
        return self._device.pids()

    def usage(self) -> DeviceUsage:
        return self._device.usage()

    def set_cpu_limit(self, cores: float | None) -> None:
        self._device.set_cpu_limit(cores)

    def set_partition(self, name: str, cores: float | None, memory_mb: int | None) -> None:
        self._device.set_partition(name, cores=cores, memory_mb=memory_mb)

    def remove_partition(self, name: str) -> None:
        self._device.remove_partition(name)

    def partition_usage(self, name: str) -> DeviceUsage:
        return self._device.partition_usage(name)

    def stop(self) -> None:
        """Kill every process of the device and remove its fence."""
        if self._throttler:
            self._throttler.stop()
            self._throttler = None
        try:
            self._device.stop()
        finally:
            if self._driver:
                self._driver.remove_if_empty(f"{PARENT}/{owner_tag()}")
                self._driver.remove_if_empty(PARENT)
            for proc in self._procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=1)
