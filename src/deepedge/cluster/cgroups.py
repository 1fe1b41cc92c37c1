"""cgroup v1 and v2 drivers: the resource fences of emulated devices.

Each emulated device is one cgroup (under the cpu and memory hierarchies on v1, one
directory on v2) holding every process of that device, so training and the device's LC
apps compete for the same quota-limited CPU and memory, as on a real board.

Where the cpuset controller is available, a device's group also pins it to its own host
CPUs (``cpus`` in :meth:`CgroupDriver.create`): a device whose processes wander across
host CPUs sees its LC latency swing with where the scheduler put them, which is noise no
model can learn from.

Groups live under ``<root>/deepedge/<owner-pid>_<owner-start-time>/<device>``. The owner
part lets a later run find groups whose owner died (SIGKILL, power loss) and reap them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import psutil

from deepedge.errors import ClusterError

__all__ = [
    "CgroupDriver",
    "CgroupV1Driver",
    "CgroupV2Driver",
    "detect_cgroups",
    "owner_alive",
    "owner_tag",
]

log = logging.getLogger(__name__)

PARENT = "deepedge"
_NO_CGROUP_HINT = "run as root, or set DEEPEDGE_NO_CGROUPS=1 for the (weaker) fallback emulation"


def owner_tag(pid: int | None = None) -> str:
    """Name of this process's session directory: pid plus start time (survives pid reuse)."""
    proc = psutil.Process(pid or os.getpid())
    return f"{proc.pid}_{int(proc.create_time() * 100)}"


def owner_alive(tag: str) -> bool:
    """Whether the process named by an :func:`owner_tag` still runs (same pid, same start)."""
    try:
        pid_s, start_s = tag.split("_", 1)
        proc = psutil.Process(int(pid_s))
        return int(proc.create_time() * 100) == int(start_s)
    except (ValueError, psutil.Error):
        return False


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as err:
        raise ClusterError(
            f"cannot write {value!r} to {path}: {err.strerror}",
            hint=_NO_CGROUP_HINT,
        ) from None


class CgroupDriver(ABC):
    """Creates, fills, measures and removes device groups on one cgroup version."""

    version: int
    pins_cpus: bool = False  # whether ``create(cpus=...)`` fences devices to host CPUs

    @abstractmethod
    def dirs(self, group: str) -> list[Path]:
        """Every directory that makes up ``group`` (one per hierarchy)."""

    @abstractmethod
    def set_limits(
        self, group: str, *, cpu_cores: float | None, period_us: int, memory_bytes: int | None
    ) -> None:
        """CPU quota in cores over ``period_us`` and memory limit; None lifts a limit."""

    @abstractmethod
    def cpu_usage_ns(self, group: str) -> int: ...

    @abstractmethod
    def cpu_throttled(self, group: str) -> tuple[int, int]:
        """(number of throttled periods, total throttled time in ns)."""

    @abstractmethod
    def memory_usage_bytes(self, group: str) -> int: ...

    def _set_cpus(self, group: str, cpus: str | None) -> None:  # noqa: B027 - optional hook
        """Pin the group to host CPUs (a kernel CPU list such as ``"0,1"``; None: the parent's)."""

    @abstractmethod
    def _prepare_parent(self, group: str) -> None:
        """Make every ancestor of ``group`` able to hold it with the controllers it uses."""

    # -- shared mechanics ------------------------------------------------------------
    def create(
        self,
        group: str,
        *,
        cpu_cores: float | None,
        period_us: int,
        memory_bytes: int | None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        """Make the group with its limits; ``cpus`` pins it where :attr:`pins_cpus`."""
        self._prepare_parent(group)
        for d in self.dirs(group):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ClusterError(
                    f"cannot create cgroup {d}: {err.strerror}",
                    hint=_NO_CGROUP_HINT,
                ) from None
        self.set_limits(group, cpu_cores=cpu_cores, period_us=period_us, memory_bytes=memory_bytes)
        if self.pins_cpus:
            self._set_cpus(group, ",".join(str(c) for c in sorted(cpus)) if cpus else None)

    def procs_files(self, group: str) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs(group)]

    def pids(self, group: str) -> set[int]:
        """Every process in ``group`` and in the groups nested in it (a device's partitions)."""
        out: set[int] = set()
        for f in self.procs_files(group):
            with contextlib.suppress(OSError):
                out.update(int(x) for x in f.read_text().split())
        for child in self.children(group):
            out |= self.pids(f"{group}/{child}")
        return out

    def kill_all(self, group: str, *, timeout_s: float = 5.0) -> None:
        """SIGKILL every process in the group and wait until the group is empty."""
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids(group)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise ClusterError(f"processes {sorted(pids)} in cgroup {group} would not die")
            time.sleep(0.02)

    def remove(self, group: str) -> None:
        """Kill the group's processes, then remove its directories (deepest first)."""
        if any(d.exists() for d in self.dirs(group)):
            for child in self.children(group):
                self.remove(f"{group}/{child}")
            self.kill_all(group)
        for d in self.dirs(group):
            for attempt in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as err:
                    if err.errno != errno.EBUSY or attempt == 49:
                        raise ClusterError(
                            f"cannot remove cgroup {d}: {err.strerror}",
                            hint="`deepedge cluster cleanup` retries; check for stuck processes",
                        ) from None
                    time.sleep(0.02)

    def children(self, group: str) -> list[str]:
        names: set[str] = set()
        for d in self.dirs(group):
            if d.is_dir():
                names.update(c.name for c in d.iterdir() if c.is_dir())
        return sorted(names)

    def reap_stale(self) -> list[str]:
        """Remove session groups whose owner process is gone. Returns their names."""
        reaped = []
        for tag in self.children(PARENT):
            if not owner_alive(tag):
                log.warning("removing stale device cgroups of dead session %s", tag)
                self.remove(f"{PARENT}/{tag}")
                reaped.append(tag)
        self.remove_if_empty(PARENT)
        return reaped

    def remove_if_empty(self, group: str) -> None:
        """Remove a grouping directory once no session or process uses it."""
        with contextlib.suppress(ClusterError, OSError):
            if not self.children(group) and not self.pids(group):
                self.remove(group)


class CgroupV1Driver(CgroupDriver):
    version = 1

    def __init__(
        self,
        cpu_root: Path,
        memory_root: Path,
        cpuacct_root: Path | None = None,
        cpuset_root: Path | None = None,
    ) -> None:
        self.cpu_root = cpu_root
        self.memory_root = memory_root
        # CPU time is accounted by cpuacct, which may be mounted apart from cpu.
        self.cpuacct_root = cpuacct_root if cpuacct_root not in (None, cpu_root) else None
        self.cpuset_root = cpuset_root if cpuset_root not in (cpu_root, memory_root) else None
        self.pins_cpus = self.cpuset_root is not None

    def dirs(self, group: str) -> list[Path]:
        extra = [r / group for r in (self.cpuacct_root, self.cpuset_root) if r]
        return [self.cpu_root / group, self.memory_root / group, *extra]

    def _prepare_parent(self, group: str) -> None:
        # A new v1 cpuset starts with no CPUs and no memory nodes, and a group without
        # them can hold no process: every ancestor inherits its own parent's.
        if not self.cpuset_root:
            return
        current = self.cpuset_root
        for part in group.split("/")[:-1]:
            parent, current = current, current / part
            current.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not (current / name).read_text().strip():
                    _write(current / name, (parent / name).read_text().strip())

    def _set_cpus(self, group: str, cpus: str | None) -> None:
        d = self.cpuset_root / group  # type: ignore[operator] - pins_cpus implies a root
        _write(d / "cpuset.mems", (d.parent / "cpuset.mems").read_text().strip())
        _write(d / "cpuset.cpus", cpus or (d.parent / "cpuset.cpus").read_text().strip())

    def set_limits(
        self, group: str, *, cpu_cores: float | None, period_us: int, memory_bytes: int | None
    ) -> None:
        cpu = self.cpu_root / group
        _write(cpu / "cpu.cfs_period_us", str(period_us))
        quota = -1 if cpu_cores is None else max(1000, round(cpu_cores * period_us))
        _write(cpu / "cpu.cfs_quota_us", str(quota))
        mem = self.memory_root / group
        _write(mem / "memory.limit_in_bytes", str(memory_bytes if memory_bytes else -1))

    def cpu_usage_ns(self, group: str) -> int:
        acct = (self.cpuacct_root or self.cpu_root) / group / "cpuacct.usage"
        if not acct.exists():
            raise ClusterError(
                f"no CPU accounting for cgroup {group}: {acct} is missing",
                hint="mount the cpuacct controller",
            )
        return int(acct.read_text())

    def cpu_throttled(self, group: str) -> tuple[int, int]:
        stat = self._stat(self.cpu_root / group / "cpu.stat")
        return stat.get("nr_throttled", 0), stat.get("throttled_time", 0)

    def memory_usage_bytes(self, group: str) -> int:
        return int((self.memory_root / group / "memory.usage_in_bytes").read_text())

    @staticmethod
    def _stat(path: Path) -> dict[str, int]:
        out = {}
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                out[key] = int(value)
        return out


class CgroupV2Driver(CgroupDriver):
    version = 2

    def __init__(self, root: Path, *, cpuset: bool = False) -> None:
        self.root = root
        self.pins_cpus = cpuset

    def dirs(self, group: str) -> list[Path]:
        return [self.root / group]

    def _prepare_parent(self, group: str) -> None:
        # v2: a controller is usable in a child only if every ancestor enables it.
        parts = group.split("/")[:-1]
        controllers = ("cpu", "memory", "cpuset") if self.pins_cpus else ("cpu", "memory")
        current = self.root
        for part in ["", *parts]:
            current = current / part if part else current
            if part:
                current.mkdir(exist_ok=True)
            control = current / "cgroup.subtree_control"
            enabled = control.read_text().split() if control.exists() else []
            for ctrl in controllers:
                if ctrl not in enabled:
                    _write(control, f"+{ctrl}")

    def _set_cpus(self, group: str, cpus: str | None) -> None:
        if cpus:  # an empty v2 cpuset.cpus already means the parent's CPUs
            _write(self.root / group / "cpuset.cpus", cpus)

    def set_limits(
        self, group: str, *, cpu_cores: float | None, period_us: int, memory_bytes: int | None
    ) -> None:
        d = self.root / group
        quota = "max" if cpu_cores is None else str(max(1000, round(cpu_cores * period_us)))
        _write(d / "cpu.max", f"{quota} {period_us}")
        _write(d / "memory.max", str(memory_bytes) if memory_bytes else "max")

    def _stat(self, group: str) -> dict[str, int]:
        return CgroupV1Driver._stat(self.root / group / "cpu.stat")

    def cpu_usage_ns(self, group: str) -> int:
        return self._stat(group).get("usage_usec", 0) * 1000

    def cpu_throttled(self, group: str) -> tuple[int, int]:
        stat = self._stat(group)
        return stat.get("nr_throttled", 0), stat.get("throttled_usec", 0) * 1000

    def memory_usage_bytes(self, group: str) -> int:
        return int((self.root / group / "memory.current").read_text())


def _mounts() -> list[tuple[str, str, set[str]]]:
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                out.append((parts[2], parts[1], set(parts[3].split(","))))
    return out


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path / "cgroup.procs", os.W_OK)


def detect_cgroups() -> tuple[CgroupDriver | None, str]:
    """Find writable cpu+memory cgroups: v1 if both controllers are v1-mounted, else v2.

    Returns ``(driver, reason)``; ``driver`` is None with the reason when neither is usable.
    """
    if os.environ.get("DEEPEDGE_NO_CGROUPS"):
        return None, "DEEPEDGE_NO_CGROUPS is set"
    mounts = _mounts()
    cpu = next((Path(m) for t, m, o in mounts if t == "cgroup" and "cpu" in o), None)
    mem = next((Path(m) for t, m, o in mounts if t == "cgroup" and "memory" in o), None)
    acct = next((Path(m) for t, m, o in mounts if t == "cgroup" and "cpuacct" in o), None)
    cpuset = next((Path(m) for t, m, o in mounts if t == "cgroup" and "cpuset" in o), None)
    if cpu and mem:
        if _writable(cpu) and _writable(mem) and (acct is None or _writable(acct)):
            pinning = cpuset if cpuset and _writable(cpuset) else None
            return CgroupV1Driver(cpu, mem, acct, pinning), f"cgroup v1 at {cpu} and {mem}"
        return None, f"cgroup v1 at {cpu} and {mem} is not writable (not root?)"
    for t, m, _ in mounts:
        if t != "cgroup2":
            continue
        root = Path(m)
        controllers = (
            (root / "cgroup.controllers").read_text().split()
            if (root / "cgroup.controllers").exists()
            else []
        )
        if {"cpu", "memory"} <= set(controllers):
            if _writable(root):
                return CgroupV2Driver(root, cpuset="cpuset" in controllers), f"cgroup v2 at {root}"
            return None, f"cgroup v2 at {root} is not writable (not root?)"
    return None, "no cgroup hierarchy with the cpu and memory controllers is mounted"
