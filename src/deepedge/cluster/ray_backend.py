"""The Ray backend: each edge device is a node of a Ray cluster.

A board joins with ``ray start --address HEAD --num-cpus 0 --resources
'{"deepedge/device/NAME": 1, "deepedge/kind/KIND": 1}'`` (``deepedge cluster up SPEC``
prints the line for every device). It advertises no CPUs, so Ray never schedules
anyone's tasks onto a board that runs latency-critical apps; deepedge finds the device's
node by its resource and places one :class:`~deepedge.cluster.ray_host.DeviceHost` actor
there, which fences the device (a cgroup with its quota, as the local backend does) and
starts, signals and reaps every process of the device: training agents, LC servers,
stressors.

What Ray does here: membership (which devices are present), placement (each host on its
node), node loss (the host dies with its node, and with it every process of the device:
they carry a parent-death signal, so a lost node is a failed device that the run
controller handles as any crash), and the processes' lifecycle on machines the
coordinator cannot reach directly. What stays as it was: the processes talk to the
coordinator over the same authenticated connections as on the local backend, and the
agents all-reduce over gloo between the nodes' addresses.

Assumption, checked: the run directory (logs, LC readiness files) is at the same path on
every node, as on one machine or over NFS; a node that cannot see it fails the start with
an error that says so.

Without ``address`` in the spec, the backend starts an emulated Ray cluster on this
machine (:class:`EmulatedRayCluster`, a node per device on 127.0.0.1) and stops it with
the job: the same code path as real boards, with real interference.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from deepedge.catalog import resolve_device
from deepedge.cluster.api import DeviceUsage, EmulationMode
from deepedge.cluster.cgroups import detect_cgroups
from deepedge.cluster.local import _DeviceMap, check_removable, cleanup_stale, spec_with_device
from deepedge.cluster.placement import place_on_cpus
from deepedge.cluster.ray_host import PYTHON, DeviceHost
from deepedge.errors import ClusterError, DeepEdgeError
from deepedge.spec import ClusterSpec, DeviceSpec

__all__ = [
    "COORDINATOR_RESOURCE",
    "EmulatedRayCluster",
    "RayBackend",
    "RayDevice",
    "RemoteProcess",
    "connect",
    "device_resource",
    "node_resources",
    "present_devices",
    "ray_start_lines",
]

log = logging.getLogger(__name__)

COORDINATOR_RESOURCE = "deepedge/coordinator"
LOOPBACK = "127.0.0.1"
LOST = -int(signal.SIGKILL)
"""Exit code of a process whose node was lost: its host died and the kernel killed it."""

_CALL_S = 10.0  # a control call to a host (signal, usage, limits)
_POLL_S = 3.0  # a poll: past this the node is too busy to say, and the process runs on
_POLL_EVERY_S = 0.5  # the node is asked whether a process still runs at most this often
_SPAWN_S = 60.0  # starting a process on a loaded board
_BOOT_S = 120.0  # a host actor's worker process starting (imports ray and deepedge)
_HOST_CONCURRENCY = 16  # a blocking wait per worker, the monitor, the controller


def device_resource(name: str) -> str:
    """The custom resource that marks a device's node (one unit per node)."""
    return f"deepedge/device/{name}"


def node_resources(device: DeviceSpec) -> dict[str, float]:
    """The resources a device's node advertises: its name and its kind."""
    return {device_resource(device.name): 1.0, f"deepedge/kind/{device.kind}": 1.0}


def ray_start_lines(spec: ClusterSpec, head: str | None = None) -> list[tuple[str, str]]:
    """``(where, command)`` for the head and for each device of a ``backend: ray`` spec."""
    port = 6379
    if head is None:
        head = spec.address if spec.address and spec.address != "auto" else f"HEAD_IP:{port}"
    with contextlib.suppress(ValueError):
        port = int(head.rsplit(":", 1)[1])
    lines = [
        (
            "the coordinator (head)",
            f"ray start --head --port {port} --num-cpus 0 "
            f"--resources '{json.dumps({COORDINATOR_RESOURCE: 1})}'",
        )
    ]
    for d in spec.devices:
        resources = {k: int(v) for k, v in node_resources(d).items()}
        lines.append(
            (
                f"device {d.name} ({d.kind})",
                f"ray start --address {head} --num-cpus 0 --resources '{json.dumps(resources)}'",
            )
        )
    return lines


def present_devices() -> dict[str, dict[str, Any]]:
    """The devices whose node is alive in the connected Ray cluster: name -> node info."""
    import ray

    prefix = device_resource("")
    found: dict[str, dict[str, Any]] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for resource in node.get("Resources", {}):
            if resource.startswith(prefix):
                found[resource[len(prefix) :]] = node
    return found


def _check_reachable(address: str) -> None:
    """Fail at once on a head that does not answer: Ray itself retries for minutes."""
    if address == "auto":
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as err:
        raise ClusterError(
            f"cannot reach the Ray head at {address}: {err}",
            hint="start it with `ray start --head` (see `deepedge cluster up SPEC`) "
            "and check the address in the cluster spec",
        ) from None


def connect(address: str) -> None:
    """Connect this process to the Ray cluster at ``address`` as a quiet driver."""
    import ray

    _check_reachable(address)
    try:
        ray.init(
            address=address,
            namespace="deepedge",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {err}",
            hint="start its head with `ray start --head` (see `deepedge cluster up SPEC`)",
        ) from None


class RemoteProcess:
    """A process in a device on a Ray node: the part of :class:`subprocess.Popen` that
    deepedge uses (poll, wait, signals), answered by the device's host actor.

    ``pid`` is the pid on the node. Once the node is lost every call answers as a process
    killed by SIGKILL (``LOST``), which is what happened to it.
    """

    stdin = stdout = stderr = None

    def __init__(self, host: Any, pid: int, args: Sequence[str]) -> None:
        self._host = host
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self._polled = -math.inf  # when the node was last asked

    def _call(self, method: str, *args: Any, timeout_s: float) -> Any:
        import ray

        try:
            return ray.get(getattr(self._host, method).remote(*args), timeout=timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError):
            self.returncode = LOST
            return LOST

    def poll(self) -> int | None:
        """The exit code, or None while it runs. Asks the node at most every
        :data:`_POLL_EVERY_S`: the pool polls every worker on every event it receives, and
        a worker's death shows first as its closed connection (then :meth:`wait`)."""
        import ray

        now = time.monotonic()
        if self.returncode is None and now - self._polled >= _POLL_EVERY_S:
            self._polled = now
            with contextlib.suppress(ray.exceptions.GetTimeoutError):
                code = self._call("poll", self.pid, timeout_s=_POLL_S)
                self.returncode = code if self.returncode is None else self.returncode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import ray

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = 10.0 if deadline is None else min(10.0, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            with contextlib.suppress(ray.exceptions.GetTimeoutError):
                code = self._call("wait", self.pid, left, timeout_s=left + _CALL_S)
                if code is not None and self.returncode is None:
                    self.returncode = code
        return self.returncode

    def _signal(self, sig: int, group: bool) -> None:
        import ray

        if self.returncode is None:
            with contextlib.suppress(ray.exceptions.GetTimeoutError):
                self._call("signal", self.pid, int(sig), group, timeout_s=_CALL_S)

    def send_signal(self, sig: int) -> None:
        self._signal(sig, group=False)

    def killpg(self, sig: int) -> None:
        """Signal the process's group on its node (see :func:`.signal_group`)."""
        self._signal(sig, group=True)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class RayDevice:
    """A device on a Ray node, reached through its host actor (a :class:`DeviceHandle`)."""

    def __init__(self, spec: DeviceSpec, host: Any, info: Mapping[str, Any], *, local: bool):
        self._spec = spec
        self._host = host
        self.info = dict(info)
        self.node_id: str = info["node_id"]
        self.on_this_host = local
        """Whether the node runs on the coordinator's machine (an emulated node): only
        then do its pids mean something here."""
        self.cpus: tuple[int, ...] | None = None
        self._cpu_limit: float | None = spec.cpu_cores

    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def address(self) -> str:
        return str(self.info["address"])

    @property
    def pace_cores(self) -> float | None:
        fenced = self.info["mode"] != EmulationMode.DUTY_CYCLE.value
        return None if fenced else self._spec.cpu_cores

    @property
    def interface(self) -> str | None:
        return None

    @property
    def cpu_limit(self) -> float | None:
        return self._cpu_limit

    def _call(self, method: str, *args: Any, timeout_s: float = _CALL_S) -> Any:
        import ray

        try:
            return ray.get(getattr(self._host, method).remote(*args), timeout=timeout_s)
        except ray.exceptions.RayTaskError as err:  # raised in the host, traceback and all
            cause = getattr(err, "cause", None)
            if isinstance(cause, DeepEdgeError):
                raise ClusterError(str(cause.args[0]), hint=cause.hint) from None
            raise ClusterError(
                f"device {self.name!r}: {method} failed on its node: {err}"
            ) from None
        except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError):
            raise ClusterError(
                f"device {self.name!r} is lost: its Ray node is gone",
                hint="check the board and its `ray start`; the run goes on without it",
            ) from None
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(
                f"device {self.name!r}: its node did not answer {method} within {timeout_s:g} s",
                hint="the board may be overloaded or its network down",
            ) from None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        self_paced: bool = False,
        partition: str | None = None,
    ) -> RemoteProcess:
        """Start ``argv`` inside the device on its node (this machine's Python stands for
        the node's)."""
        argv = [PYTHON if a == sys.executable else a for a in argv]
        path = str(log_path.resolve()) if log_path else None
        pid = self._call(
            "spawn", argv, dict(env or {}), path, self_paced, partition, timeout_s=_SPAWN_S
        )
        return RemoteProcess(self._host, pid, argv)

    @property
    def partitions(self) -> bool:
        return bool(self.info.get("partitions"))

    def set_partition(self, name: str, *, cores: float | None, memory_mb: int | None) -> None:
        self._call("set_partition", name, cores, memory_mb)

    def remove_partition(self, name: str) -> None:
        self._call("remove_partition", name)

    def partition_usage(self, name: str) -> DeviceUsage:
        return self._call("partition_usage", name)

    def pids(self) -> set[int]:
        return set(self._call("pids"))

    def usage(self) -> DeviceUsage:
        return self._call("usage")

    def set_cpu_limit(self, cores: float | None) -> None:
        self._call("set_cpu_limit", cores)
        self._cpu_limit = cores


class EmulatedRayCluster:
    """A Ray cluster on this machine with one node per device, all on 127.0.0.1.

    Built on Ray's own ``ray.cluster_utils.Cluster`` (a raylet per node): a node can be
    killed (:meth:`kill_node`) as a board can lose power, and devices can join. Each
    device's processes run in its cgroup through its host actor, so heterogeneity and
    interference stay as real as on the local backend.
    """

    def __init__(self) -> None:
        self._cluster: Any = None
        self._nodes: dict[str, Any] = {}

    @property
    def address(self) -> str:
        return str(self._cluster.address)

    def start(self, devices: Sequence[DeviceSpec]) -> None:
        # Ray turns a loopback head address into this machine's LAN address when it
        # connects a driver, unless it believes multi-node clusters are off; its raylets
        # and workers are told the same through the environment they inherit.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        import ray._private.ray_constants as ray_constants
        from ray.cluster_utils import Cluster

        ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            self._cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    "num_cpus": 0,
                    "node_ip_address": LOOPBACK,
                    "include_dashboard": False,
                    "resources": {COORDINATOR_RESOURCE: 1},
                },
            )
            _at_idle_priority(_process_tree(self._cluster.head_node))
            for d in devices:
                self.add_node(d)
        except BaseException:
            self.shutdown()
            raise

    def add_node(self, device: DeviceSpec) -> None:
        node = self._cluster.add_node(
            num_cpus=0, resources=node_resources(device), node_ip_address=LOOPBACK
        )
        self._nodes[device.name] = node
        _at_idle_priority(_process_tree(node))

    def kill_node(self, name: str) -> None:
        """Kill a device's node at once, as a board losing power: its raylet and every
        process under it (Ray's workers, the device's host and everything it started).

        Ray alone kills the raylet, and its workers exit only once they notice, which on a
        loaded machine can take longer than a short run: the "lost" device would go on.
        """
        node = self._nodes.pop(name)
        tree = _process_tree(node)
        self._cluster.remove_node(node, allow_graceful=False)
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def shutdown(self) -> None:
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.shutdown()
            self._cluster = None
        self._nodes.clear()


def _process_tree(node: Any) -> list[psutil.Process]:
    """Every process of an emulated Ray node: its daemons and what they started."""
    tree: list[psutil.Process] = []
    for infos in node.all_processes.values():
        for info in infos:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(info.process.pid)
                tree += [root, *root.children(recursive=True)]
    return tree


def _at_idle_priority(procs: Sequence[psutil.Process]) -> None:
    """Put every thread of an emulated node's Ray daemons in the idle CPU class.

    On a board, its raylet and agents cost about a percent of its cores. Here every
    device's node (and the head) runs on the same few host cores, unfenced, and at normal
    priority their daemons preempt the trainers (``SCHED_IDLE``) of every device: the demo
    job took 1.29x as long on Ray as on the local backend (bench/ray_backend.py, 3 runs
    each, before this). At idle priority they
    share the host's spare time with the trainers and never delay an LC app. Workers the
    raylet starts later (the device hosts) inherit the class; the device's own processes
    are put back to normal priority when they start (``LocalDevice.spawn``).
    """
    for proc in procs:
        with contextlib.suppress(OSError, psutil.Error):
            for thread in proc.threads():
                os.sched_setscheduler(thread.id, os.SCHED_IDLE, os.sched_param(0))


class RayBackend:
    """A :class:`~deepedge.cluster.api.ClusterBackend` whose devices are Ray nodes."""

    def __init__(self, spec: ClusterSpec, *, force_fallback: bool = False) -> None:
        self.spec = spec.model_copy(update={"devices": [resolve_device(d) for d in spec.devices]})
        self._force_fallback = force_fallback
        self._devices: _DeviceMap[RayDevice] = _DeviceMap({})
        self._hosts: dict[str, Any] = {}
        self.emulated: EmulatedRayCluster | None = None
        """The Ray cluster this backend started on this machine (no ``address``)."""
        driver, reason = (None, "fallback forced") if force_fallback else detect_cgroups()
        if driver is None:
            self.mode = EmulationMode.DUTY_CYCLE
        else:
            self.mode = EmulationMode.CGROUP_V1 if driver.version == 1 else EmulationMode.CGROUP_V2
        self._fence_reason = reason
        self._connected = False  # ray.init was ours to undo
        self._coordinator = LOOPBACK
        self._lock = threading.Lock()
        self._started = False

    # ------------------------------------------------------------------ what it is

    @property
    def devices(self) -> Mapping[str, RayDevice]:
        return self._devices

    @property
    def coordinator_address(self) -> str:
        return self._coordinator

    @property
    def remote(self) -> bool:
        """Whether any device runs on another machine than the coordinator."""
        return any(not d.on_this_host for d in self._devices.values())

    @property
    def network(self) -> str:
        if self.remote:
            return "Ray nodes over their network"
        return "Ray nodes on loopback (emulated)" if self.emulated else "Ray nodes on this machine"

    @property
    def emulation(self) -> str:
        """How devices are fenced, as far as it sets their speed (part of profile keys).

        Nodes on this machine are fenced exactly as the local backend fences devices, so
        they share its profiles; real boards are keyed apart."""
        fence = f"{self.mode.value}+pinned" if self.spec.pin_cpus else self.mode.value
        return f"ray-nodes+{fence}" if self.remote else fence

    @property
    def warnings(self) -> list[str]:
        out = []
        if self.mode is EmulationMode.DUTY_CYCLE:
            out.append(
                f"no writable cgroups on some device node ({self._fence_reason}); its devices "
                "are duty-cycled: CPU speed is approximate and memory limits are NOT enforced"
            )
        if self.spec.network == "netns":
            out.append(
                "network: netns is not available with backend: ray; devices talk over their "
                "nodes' addresses and links are NOT shaped"
            )
        return out

    # ------------------------------------------------------------------ start / stop

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            if self.spec.address is None:
                self.emulated = EmulatedRayCluster()
                self.emulated.start(self.spec.devices)
                address = self.emulated.address
            else:
                address = self.spec.address
            self._connect(address)
            present = present_devices()
            missing = [d.name for d in self.spec.devices if d.name not in present]
            if missing:
                raise ClusterError(
                    f"no Ray node for device(s) {', '.join(missing)} in the cluster at {address}",
                    hint="start each board with the line `deepedge cluster up SPEC` prints; "
                    "`deepedge cluster status SPEC` shows which are present",
                )
            self._boot(self.spec.devices, fixed={})
            for warning in self.warnings:
                log.warning(warning)
        except BaseException:
            self.stop()
            raise

    def _connect(self, address: str) -> None:
        import ray

        if not ray.is_initialized():  # else the caller's own connection (a test, a notebook)
            connect(address)
            self._connected = True
        if not self.emulated:  # where this driver is on the Ray network
            self._coordinator = ray.util.get_node_ip_address()

    def _boot(
        self, devices: Sequence[DeviceSpec], fixed: Mapping[str, Sequence[int]]
    ) -> list[RayDevice]:
        """Start the devices' hosts on their nodes, fence them and add them to the map."""
        import ray

        host_cls = ray.remote(DeviceHost)
        cwd = os.getcwd()
        hosts = {}
        for d in devices:
            hosts[d.name] = host_cls.options(
                resources={device_resource(d.name): 0.001},
                num_cpus=0,
                max_concurrency=_HOST_CONCURRENCY,
                max_restarts=0,
            ).remote(
                d.model_dump(),
                period_us=self.spec.cpu_period_us,
                cwd=cwd,
                force_fallback=self._force_fallback,
            )
            self._hosts[d.name] = hosts[d.name]
        try:
            infos = ray.get([h.describe.remote() for h in hosts.values()], timeout=_BOOT_S)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(
                f"the hosts of {', '.join(hosts)} did not start on their nodes in {_BOOT_S:g} s",
                hint="check that deepedge is installed on each board (same version)",
            ) from None
        except ray.exceptions.RayActorError as err:
            raise ClusterError(
                f"a device host failed to start: {err}",
                hint="check that deepedge is installed on each board (same version)",
            ) from None
        here = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        by_name = dict(zip(hosts, infos, strict=True))
        placement = self._placement(devices, by_name, fixed)
        booted = []
        for d in devices:
            info = by_name[d.name]
            device = RayDevice(d, hosts[d.name], info, local=info["boot_id"] == here)
            device.cpus = placement.get(d.name)
            device._call("create", device.cpus, timeout_s=_BOOT_S)
            if info["mode"] == EmulationMode.DUTY_CYCLE.value:
                self.mode = EmulationMode.DUTY_CYCLE
                self._fence_reason = info["fence_reason"]
            self._devices._add(device)
            booted.append(device)
        return booted

    def _placement(
        self,
        devices: Sequence[DeviceSpec],
        infos: Mapping[str, Mapping[str, Any]],
        fixed: Mapping[str, Sequence[int]],
    ) -> dict[str, tuple[int, ...]]:
        """Host CPUs per device, placed among the devices that share its machine."""
        if not self.spec.pin_cpus:
            return {}
        machine = {n: i["boot_id"] for n, i in infos.items()}
        machine |= {n: d.info["boot_id"] for n, d in self._devices.items()}
        cores = {d.name: d.cpu_cores for d in self.spec.devices} | {
            d.name: d.cpu_cores for d in devices
        }
        out: dict[str, tuple[int, ...]] = {}
        for boot_id in {machine[d.name] for d in devices}:
            names = [n for n, b in machine.items() if b == boot_id and n in cores]
            cpus = next(i["cpus"] for n, i in infos.items() if i["boot_id"] == boot_id)
            pinned = {n: tuple(fixed[n]) for n in names if n in fixed}
            placed = place_on_cpus({n: cores[n] for n in names}, cpus, fixed=pinned)
            out |= {n: tuple(placed[n]) for n in names if n in infos and placed.get(n)}
        return out

    def add_device(self, spec: DeviceSpec) -> RayDevice:
        """Boot a device that joins: its node must be in the Ray cluster (an emulated
        cluster gets one), then it is fenced like the others (see ``ClusterBackend``)."""
        import ray

        with self._lock:
            if not self._started:
                raise ClusterError(
                    f"cannot add device {spec.name!r}: cluster {self.spec.name!r} is not running",
                    hint="start() the cluster first; the devices of its spec boot with it",
                )
            device_spec, new_spec = spec_with_device(self.spec, spec)
            if self.emulated:
                self.emulated.add_node(device_spec)
            elif spec.name not in present_devices():
                line = ray_start_lines(
                    new_spec.model_copy(update={"devices": [device_spec]}),
                    head=ray.get_runtime_context().gcs_address,
                )[-1][1]
                raise ClusterError(
                    f"device {spec.name!r} has no Ray node yet",
                    hint=f"on the board run: {line}",
                )
            fixed = {n: d.cpus for n, d in self._devices.items() if d.cpus}
            try:
                device = self._boot([device_spec], fixed)[0]
            except BaseException:
                self._drop(spec.name)
                raise
            self.spec = new_spec
            return device

    def remove_device(self, name: str) -> None:
        """Stop a device's processes and host (its node stays in Ray); undoes a failed join."""
        with self._lock:
            check_removable(self.spec, self._devices, name)
            self.spec = self.spec.model_copy(
                update={"devices": [d for d in self.spec.devices if d.name != name]}
            )
            self._drop(name)

    def _drop(self, name: str) -> None:
        """Stop a device's host (killing its processes) and forget it."""
        import ray

        self._devices._remove(name)
        host = self._hosts.pop(name, None)
        if host is None:
            return
        with contextlib.suppress(Exception):  # a lost node has nothing left to stop
            ray.get(host.stop.remote(), timeout=30)
        with contextlib.suppress(Exception):
            ray.kill(host)

    def stop(self) -> None:
        """Kill every device process, remove every fence, and leave Ray as found. Idempotent."""
        import ray

        stopping = [h.stop.remote() for h in self._hosts.values()]
        with contextlib.suppress(Exception):  # a lost node has nothing left to stop
            ray.get(stopping, timeout=30)
        for name in list(self._hosts):
            self._drop(name)
        if self._connected:
            with contextlib.suppress(Exception):
                ray.shutdown()
            self._connected = False
        if self.emulated:
            self.emulated.shutdown()
            self.emulated = None
            cleanup_stale()  # the fences of nodes that were killed: their hosts could not
        self._started = False

    def __enter__(self) -> RayBackend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
