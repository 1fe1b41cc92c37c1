"""The local emulated cluster: each device is a cgroup on this machine.

Processes enter their device's cgroup in the child *before* ``exec`` (``preexec_fn``), so not
one instruction runs outside the fence, and they get ``PR_SET_PDEATHSIG`` so they die with
the coordinator even after a SIGKILL. Cgroups left behind by a coordinator that was killed
are reaped the next time a cluster starts (or by ``deepedge cluster cleanup``).

Without writable cgroups the backend says so once and falls back to duty-cycle throttling
(SIGSTOP/SIGCONT) of each device's LC processes, while training workers pace themselves
(SIGSTOP inside a collective would stall every rank): CPU speed is emulated coarsely and
memory limits are not enforced.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import signal
import subprocess
import threading
from collections.abc import ItemsView, Iterator, KeysView, Mapping, Sequence, ValuesView
from pathlib import Path
from typing import TypeVar

import psutil

from deepedge.catalog import resolve_device
from deepedge.cluster.api import DeviceHandle, DeviceUsage, EmulationMode
from deepedge.cluster.cgroups import PARENT, CgroupDriver, detect_cgroups, owner_tag
from deepedge.cluster.netns import CLONE_NEWNET, DeviceLink, NetworkFabric, netns_available
from deepedge.cluster.placement import place_on_cpus
from deepedge.errors import ClusterError, SpecError
from deepedge.spec import ClusterSpec, DeviceSpec, parse_spec
from deepedge.validation import require_usable

__all__ = ["LocalCluster", "LocalDevice", "cleanup_stale"]

_Device = TypeVar("_Device", bound=DeviceHandle)

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class LocalDevice:
    """A device fenced by a cgroup, or by duty-cycle throttling in the fallback."""

    def __init__(
        self,
        spec: DeviceSpec,
        *,
        driver: CgroupDriver | None,
        group: str,
        period_us: int,
        link: DeviceLink | None = None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self._spec = spec
        self.cpus = tuple(cpus) if cpus else None  # host CPUs this device is pinned to
        self.link = link
        self._driver = driver
        self._group = group
        self._period_us = period_us
        self._procs: list[subprocess.Popen[bytes]] = []
        self._self_paced: set[int] = set()
        self._cpu_limit: float | None = spec.cpu_cores
        self.base_env: Mapping[str, str] | None = None  # what processes inherit (None: ours)

    @property
    def spec(self) -> DeviceSpec:
        return self._spec

    @property
    def name(self) -> str:
        return self._spec.name

    @property
    def address(self) -> str:
        return self.link.address if self.link else "127.0.0.1"

    @property
    def pace_cores(self) -> float | None:
        """CPU share a cooperating process must hold itself to, when no cgroup fences it.

        In the duty-cycle fallback, SIGSTOP would freeze a training worker in the middle of
        a collective and stall every other rank; workers pace themselves instead.
        """
        return None if self._driver else self._spec.cpu_cores

    @property
    def interface(self) -> str | None:
        """The device's only network interface when it has its own namespace."""
        return "eth0" if self.link else None

    @property
    def cpu_limit(self) -> float | None:
        return self._cpu_limit

    def _period_for(self, cores: float | None) -> int:
        """The CFS period, lengthened where needed so the quota is at least the kernel's 1 ms.

        Short periods keep throttling stalls (and so LC latency spikes and all-reduce hops)
        short; a quota below 1 ms would be silently rounded up, giving a slow device more CPU
        than its board has.
        """
        if not cores:
            return self._period_us
        return max(self._period_us, math.ceil(1000 / cores))

    def _memory_bytes(self) -> int | None:
        return self._spec.memory_mb * 2**20 if self._spec.memory_mb else None

    def create(self) -> None:
        if self._driver:
            self._driver.create(
                self._group,
                cpu_cores=self._cpu_limit,
                period_us=self._period_for(self._cpu_limit),
                memory_bytes=self._memory_bytes(),
                cpus=self.cpus,
            )

    def set_cpu_limit(self, cores: float | None) -> None:
        self._cpu_limit = cores
        if self._driver:
            self._driver.set_limits(
                self._group,
                cpu_cores=cores,
                period_us=self._period_for(cores),
                memory_bytes=self._memory_bytes(),
            )

    @property
    def partitions(self) -> bool:
        """Whether processes can be fenced apart inside the device (:meth:`set_partition`).

        Only cgroup v1 nests them: v2 forbids processes in a group whose children have
        controllers ("no internal processes"), and the device's own processes (LC apps,
        training workers) sit in its group. Elsewhere a partition is the whole device.
        """
        return self._driver is not None and self._driver.version == 1

    def _partition_group(self, name: str) -> str:
        return f"{self._group}/{name}"

    def set_partition(self, name: str, *, cores: float | None, memory_mb: int | None) -> None:
        """Create, or change the limits of, the partition ``name``: a share of the device
        (a child cgroup) with its own CPU quota and memory limit, still inside the
        device's. Takes effect at once for the processes already in it (vertical scaling).
        A no-op where :attr:`partitions` is False."""
        if not self.partitions:
            return
        assert self._driver is not None
        group = self._partition_group(name)
        memory = memory_mb * 2**20 if memory_mb else None
        if any(d.is_dir() for d in self._driver.dirs(group)):
            self._driver.set_limits(
                group, cpu_cores=cores, period_us=self._period_for(cores), memory_bytes=memory
            )
        else:
            self._driver.create(
                group, cpu_cores=cores, period_us=self._period_for(cores), memory_bytes=memory
            )

    def remove_partition(self, name: str) -> None:
        """Kill the partition's processes and remove it (nothing if it does not exist)."""
        if self.partitions:
            assert self._driver is not None
            self._driver.remove(self._partition_group(name))

    def partition_usage(self, name: str) -> DeviceUsage:
        """CPU, memory and throttling of one partition (of the device without partitions)."""
        if not self.partitions:
            return self.usage()
        return self._group_usage(self._partition_group(name))

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        self_paced: bool = False,
        partition: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this device (inside its ``partition``, made beforehand by
        :meth:`set_partition`, where the device has them); ``self_paced`` exempts it from
        duty cycles."""
        group = self._partition_group(partition) if partition and self.partitions else self._group
        procs_files = [str(f) for f in self._driver.procs_files(group)] if self._driver else []

        netns_fd: int | None = None
        # Without a cpuset fence, pinning falls to the process's own CPU affinity.
        affinity = (
            self.cpus if self.cpus and not (self._driver and self._driver.pins_cpus) else None
        )

        def enter_device() -> None:  # runs in the child between fork and exec
            _die_with_parent()
            if os.sched_getscheduler(0) != os.SCHED_OTHER:  # a spawner at idle priority
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            pid = str(os.getpid())
            for f in procs_files:
                with open(f, "w") as fh:
                    fh.write(pid)
            if affinity:
                os.sched_setaffinity(0, affinity)
            if netns_fd is not None and _libc.setns(netns_fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the device's network namespace")

        with contextlib.ExitStack() as stack:
            try:
                if self.link:
                    netns_fd = os.open(self.link.netns_path, os.O_RDONLY)
                    stack.callback(os.close, netns_fd)
                out = stack.enter_context(open(log_path, "ab")) if log_path else subprocess.DEVNULL
                proc = subprocess.Popen(
                    list(argv),
                    env={**(self.base_env or os.environ), **(env or {})},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=enter_device,
                    start_new_session=True,
                )
            except (OSError, subprocess.SubprocessError) as err:
                raise ClusterError(
                    f"cannot start {argv[0]} on device {self.name!r}: {err}"
                ) from None
        self._procs.append(proc)
        if self_paced:
            self._self_paced.add(proc.pid)
        return proc

    def pids(self) -> set[int]:
        if self._driver:
            return self._driver.pids(self._group)
        pids: set[int] = set()
        for p in self._procs:
            if p.poll() is None:
                pids.add(p.pid)
                with contextlib.suppress(psutil.Error):
                    pids.update(c.pid for c in psutil.Process(p.pid).children(recursive=True))
        return pids

    def duty_cycled_pids(self) -> set[int]:
        """The processes the fallback's duty cycle may stop: all but the self-paced ones."""
        return self.pids() - self._self_paced

    def _group_usage(self, group: str) -> DeviceUsage:
        assert self._driver is not None
        periods, throttled_ns = self._driver.cpu_throttled(group)
        return DeviceUsage(
            cpu_seconds=self._driver.cpu_usage_ns(group) / 1e9,
            memory_bytes=self._driver.memory_usage_bytes(group),
            throttled_periods=periods,
            throttled_s=throttled_ns / 1e9,
        )

    def usage(self) -> DeviceUsage:
        if self._driver:
            return self._group_usage(self._group)
        cpu, rss = 0.0, 0
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                t = proc.cpu_times()
                cpu += t.user + t.system
                rss += proc.memory_info().rss
        return DeviceUsage(cpu_seconds=cpu, memory_bytes=rss, throttled_periods=None)

    def stop(self) -> None:
        for p in self._procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGCONT)
                os.killpg(p.pid, signal.SIGKILL)
        if self._driver:
            self._driver.remove(self._group)
        for p in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        self._procs.clear()


class _DutyCycleThrottler(threading.Thread):
    """Fallback CPU fence: lets each device's processes run ``cores × period`` per period."""

    def __init__(self, devices: Mapping[str, LocalDevice], period_s: float = 0.1) -> None:
        super().__init__(name="deepedge-duty-cycle", daemon=True)
        self._devices = devices  # live: a device that joins is cycled from the next period
        self._period_s = period_s
        self._stop_event = threading.Event()

    def _signal(self, device: LocalDevice, sig: signal.Signals) -> None:
        for pid in device.duty_cycled_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def run(self) -> None:
        while not self._stop_event.is_set():
            devices = list(self._devices.values())  # one period sees one set of devices
            duties = {d.name: min(1.0, d.cpu_limit or 1.0) for d in devices}
            for d in devices:
                self._signal(d, signal.SIGCONT)
            elapsed = 0.0
            for d in sorted(devices, key=lambda d: duties[d.name]):
                wait = duties[d.name] * self._period_s - elapsed
                if wait > 0 and self._stop_event.wait(wait):
                    break
                elapsed += max(wait, 0.0)
                if duties[d.name] < 1.0:
                    self._signal(d, signal.SIGSTOP)
            self._stop_event.wait(max(self._period_s - elapsed, 0.0))
        for d in list(self._devices.values()):
            self._signal(d, signal.SIGCONT)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=2)


class _DeviceMap(Mapping[str, _Device]):
    """The cluster's devices: a mapping that may change while other threads iterate it.

    The monitor's samplers and the duty-cycle throttler walk the devices in their own
    threads, and a device may join (or a failed join be undone) meanwhile. Every change
    swaps in a new dict, so an iteration under way walks the dict it started on (never
    "dictionary changed size during iteration", never a name that is gone by the time it
    is looked up) and the next one sees the change. Holders of this object (the session's
    monitor) see joined devices; holders of a copy do not.
    """

    def __init__(self, devices: Mapping[str, _Device]) -> None:
        self._d: dict[str, _Device] = dict(devices)

    def __getitem__(self, name: str) -> _Device:
        return self._d[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, name: object) -> bool:
        return name in self._d

    def keys(self) -> KeysView[str]:
        return self._d.keys()

    def values(self) -> ValuesView[_Device]:
        return self._d.values()

    def items(self) -> ItemsView[str, _Device]:
        return self._d.items()

    def _add(self, device: _Device) -> None:
        self._d = {**self._d, device.spec.name: device}

    def _remove(self, name: str) -> _Device | None:
        device = self._d.get(name)
        self._d = {n: d for n, d in self._d.items() if n != name}
        return device


class LocalCluster:
    """Emulated heterogeneous cluster on this machine. Use as a context manager.

    ``stop()`` (also on Ctrl-C or an exception inside the ``with``) kills every process of
    every device and removes every cgroup.
    """

    def __init__(self, spec: ClusterSpec, *, force_fallback: bool = False) -> None:
        self.spec = spec.model_copy(update={"devices": [resolve_device(d) for d in spec.devices]})
        driver, reason = (None, "fallback forced") if force_fallback else detect_cgroups()
        self.driver = driver
        self.fence_reason = reason
        if driver is None:
            self.mode = EmulationMode.DUTY_CYCLE
        else:
            self.mode = EmulationMode.CGROUP_V1 if driver.version == 1 else EmulationMode.CGROUP_V2
        owner = owner_tag()
        self._session = f"{PARENT}/{owner}"
        self.fabric: NetworkFabric | None = None
        self.network_warning: str | None = None
        if spec.network == "netns":
            ok, why = netns_available()
            if ok:
                self.fabric = NetworkFabric(owner, self.spec.devices)
            else:
                self.network_warning = (
                    f"network: netns was asked for but {why}; devices share loopback "
                    "and links are NOT shaped"
                )
        placement = (
            place_on_cpus(
                {d.name: d.cpu_cores for d in self.spec.devices}, sorted(os.sched_getaffinity(0))
            )
            if spec.pin_cpus
            else {}
        )
        self._devices: _DeviceMap[LocalDevice] = _DeviceMap(
            {
                d.name: LocalDevice(
                    d,
                    driver=driver,
                    group=f"{self._session}/{d.name}",
                    period_us=spec.cpu_period_us,
                    link=self.fabric.links[d.name] if self.fabric else None,
                    cpus=placement.get(d.name),
                )
                for d in self.spec.devices
            }
        )
        self._lock = threading.Lock()  # one join or leave at a time
        self._throttler: _DutyCycleThrottler | None = None
        self._started = False

    @property
    def devices(self) -> Mapping[str, LocalDevice]:
        return self._devices

    @property
    def coordinator_address(self) -> str:
        """Where device processes reach the coordinator (rendezvous, agent control)."""
        return self.fabric.gateway if self.fabric else "127.0.0.1"

    @property
    def network(self) -> str:
        return "netns + tbf links" if self.fabric else "loopback"

    @property
    def emulation(self) -> str:
        """How devices are emulated, as far as it sets their speed (part of profile keys)."""
        return f"{self.mode.value}+pinned" if self.spec.pin_cpus else self.mode.value

    @property
    def warnings(self) -> list[str]:
        """Every way this emulation is weaker than asked for, to be shown to the user."""
        return [w for w in (self.fallback_warning, self.network_warning) if w]

    @property
    def fallback_warning(self) -> str | None:
        if self.mode is not EmulationMode.DUTY_CYCLE:
            return None
        return (
            f"no writable cgroups ({self.fence_reason}); emulating devices with "
            "SIGSTOP/SIGCONT duty cycles (LC apps) and self-pacing (training workers): CPU "
            "speed is approximate and memory limits are NOT enforced"
        )

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for warning in self.warnings:
            log.warning(warning)
        if self.driver or self.fabric:
            cleanup_stale(self.driver)
        try:
            if self.fabric:
                self.fabric.up()
            for d in self._devices.values():
                d.create()
        except BaseException:
            self.stop()
            raise
        if self.driver is None:
            self._throttler = _DutyCycleThrottler(self._devices)
            self._throttler.start()

    def add_device(self, spec: DeviceSpec) -> LocalDevice:
        """Boot one more device into the running cluster, fenced like those of the spec.

        It gets its cgroup with its limits, host CPUs placed around the devices already
        pinned (they keep theirs), its own shaped link when the cluster has a network
        fabric, and the duty cycle in the fallback; catalog defaults are filled in, and
        :attr:`spec` becomes the spec with the device appended, so a job that goes on
        with the new device plans with its real capacity. A name already taken, an unknown
        kind without capacities, or memory its reserve leaves nothing of is a
        :class:`SpecError` and boots nothing; a device that fails to boot is removed again
        (:class:`ClusterError`). :meth:`stop` removes it like the others.
        """
        with self._lock:
            if not self._started:
                raise ClusterError(
                    f"cannot add device {spec.name!r}: cluster {self.spec.name!r} is not running",
                    hint="start() the cluster first; the devices of its spec boot with it",
                )
            device_spec, new_spec = spec_with_device(self.spec, spec)
            cpus = self._place(device_spec)
            link = self.fabric.add_link(device_spec) if self.fabric else None
            device = LocalDevice(
                device_spec,
                driver=self.driver,
                group=f"{self._session}/{device_spec.name}",
                period_us=self.spec.cpu_period_us,
                link=link,
                cpus=cpus,
            )
            try:
                device.create()
            except BaseException:
                with contextlib.suppress(ClusterError):
                    device.stop()
                if self.fabric:
                    self.fabric.remove_link(device_spec.name)
                raise
            self.spec = new_spec
            self._devices._add(device)  # the throttler and samplers see it from now on
            log.info("device %s (%s) joined cluster %s", device.name, spec.kind, self.spec.name)
            return device

    def _place(self, device: DeviceSpec) -> tuple[int, ...] | None:
        """Host CPUs for a joining device, around those the running devices are pinned to."""
        if not self.spec.pin_cpus:
            return None
        demands = {d.name: d.cpu_cores for d in self.spec.devices}
        demands[device.name] = device.cpu_cores
        fixed = {n: d.cpus for n, d in self._devices.items() if d.cpus}
        return place_on_cpus(demands, sorted(os.sched_getaffinity(0)), fixed=fixed)[device.name]

    def remove_device(self, name: str) -> None:
        """Kill a device's processes, remove its fence and link, drop it from :attr:`spec`.

        For a device whose join failed half-way; refused for a device the spec's LC apps
        run on, and for the cluster's last device (a spec has at least one).
        """
        with self._lock:
            check_removable(self.spec, self._devices, name)
            device = self._devices._remove(name)
            self.spec = self.spec.model_copy(
                update={"devices": [d for d in self.spec.devices if d.name != name]}
            )
            try:
                if device is not None:
                    device.stop()
            finally:
                if self.fabric:
                    self.fabric.remove_link(name)

    def stop(self) -> None:
        if self._throttler:
            self._throttler.stop()
            self._throttler = None
        errors = []
        for d in self._devices.values():
            try:
                d.stop()
            except ClusterError as err:
                errors.append(err)
        if self.driver:
            self.driver.remove_if_empty(self._session)
            self.driver.remove_if_empty(PARENT)
        if self.fabric:
            self.fabric.down()
        self._started = False
        if errors:
            raise errors[0]

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spec_with_device(spec: ClusterSpec, device: DeviceSpec) -> tuple[DeviceSpec, ClusterSpec]:
    """A joining device with its catalog defaults, and the cluster spec with it appended,
    checked as a whole: a taken name, an unknown kind without capacities or memory its
    reserve leaves nothing of is a :class:`SpecError` (for every backend's ``add_device``)."""
    if any(d.name == device.name for d in spec.devices):
        raise SpecError(
            f"cluster {spec.name!r} already has a device named {device.name!r}",
            hint="give the new device another name",
        )
    device_spec = resolve_device(device)
    source = f"cluster {spec.name!r} with device {device.name!r}"
    data = spec.model_dump()
    data["devices"] = [*data["devices"], device_spec.model_dump()]
    new_spec = parse_spec(ClusterSpec, data, source=source)
    require_usable(new_spec, source=source)
    return device_spec, new_spec


def check_removable(spec: ClusterSpec, devices: Mapping[str, object], name: str) -> None:
    """Refuse (``ClusterError``) to remove an unknown device, one the spec's LC apps run
    on, or the cluster's last device (for every backend's ``remove_device``)."""
    if name not in devices:
        raise ClusterError(
            f"cluster {spec.name!r} has no device {name!r}",
            hint=f"its devices: {', '.join(devices)}",
        )
    apps = [a.name for a in spec.apps if a.device == name]
    if apps:
        raise ClusterError(
            f"cannot remove device {name!r}: LC apps {apps} run on it",
            hint="stop the session instead",
        )
    if len(devices) == 1:
        raise ClusterError(
            f"cannot remove {name!r}, the last device of cluster {spec.name!r}",
            hint="stop the cluster instead",
        )


def cleanup_stale(driver: CgroupDriver | None = None) -> list[str]:
    """Reap device cgroups and network fabrics of coordinators that died without cleaning up."""
    if driver is None:
        driver, _ = detect_cgroups()
    reaped = driver.reap_stale() if driver else []
    if netns_available()[0]:
        reaped += [f"net:{short}" for short in NetworkFabric.reap_stale()]
    return reaped
