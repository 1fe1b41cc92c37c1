"""Model-server replicas on the cluster's devices, scaled both ways while they serve.

Each replica is a ``python -m deepedge.serving.replica`` process in a *partition* of its
device: a child cgroup with the flavour's CPU quota and memory limit, inside the device's
own fence (:meth:`~deepedge.cluster.api.DeviceHandle.set_partition`). So

* **vertical scaling** rewrites a live replica's quota and memory limit: instant, no
  restart, no request lost;
* **horizontal scaling** starts replicas (a cold start: the interpreter, torch and the
  checkpoint, measured for every replica and kept in :attr:`ReplicaPool.cold_starts` for
  the agent's lead time) and stops them after draining their in-flight requests through
  the front end.

A replica boots with a boost, as Kubernetes' startup CPU boost does: its partition gets
what its device does not give other replicas (at least the flavour), and the flavour only
once it is ready, so a small flavour does not take half a minute to import torch. It is
charged for its flavour from the moment it is started.

A replica that dies without being told to is replaced on the same device with the same
flavour (elsewhere if the device is gone); the front end stops routing to it first, and
retries requests it failed on another replica, so a crash costs latency, not requests.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepedge.cluster.api import ClusterBackend, DeviceProcess, signal_group
from deepedge.cluster.workers import log_tail
from deepedge.errors import ClusterError, DeepEdgeError
from deepedge.serving.costs import CostCatalog, Flavour
from deepedge.serving.frontend import FrontendProcess, ReplicaAddress

__all__ = ["ColdStart", "Replica", "ReplicaPool"]

log = logging.getLogger(__name__)

Placement = Mapping[str, Mapping[str, int]]
"""Replicas per device and flavour: ``{device: {flavour name: count}}``."""

_DRAIN_S = 5.0  # a draining replica is stopped after this long even with requests in flight
_BOOT_S = 120.0  # a replica not ready after this long is killed and started again


@dataclass
class Replica:
    """One model-server process and where it stands."""

    name: str
    device: str
    flavour: Flavour
    proc: DeviceProcess
    ready_file: Path
    spawned_at: float
    port: int | None = None
    ready_at: float | None = None
    draining_since: float | None = None
    cpu_mark: tuple[float, float] | None = None  # (monotonic time, CPU seconds) last read

    @property
    def partition(self) -> str:
        return f"replica-{self.name}"

    @property
    def state(self) -> str:
        if self.draining_since is not None:
            return "draining"
        return "ready" if self.ready_at is not None else "starting"


@dataclass(frozen=True)
class ColdStart:
    """How long a replica took from spawn to serving (registered with the front end)."""

    device: str
    flavour: str
    seconds: float


@dataclass
class _Counters:
    started: int = 0
    stopped: int = 0
    resized: int = 0
    replaced: int = 0

    def total(self) -> int:
        return self.started + self.stopped + self.resized


class ReplicaPool:
    """The replicas of one served checkpoint on ``devices`` of a started cluster.

    ``capacity`` is the host cores each device gives to replicas: its whole quota by
    default (``reserve`` keeps cores per device for what else runs there, e.g. LC apps).
    Call :meth:`apply` with a target placement, and :meth:`poll` often (every 0.1-0.2 s):
    it registers replicas that became ready, finishes drains and replaces dead replicas.
    ``on_event(kind, message)`` hears every action.
    """

    def __init__(
        self,
        cluster: ClusterBackend,
        checkpoint: Path,
        frontend: FrontendProcess,
        workdir: Path,
        *,
        payload_bytes: int,
        devices: Sequence[str] | None = None,
        reserve: Mapping[str, float] | None = None,
        threads: int = 1,
        python: str = sys.executable,
        replica_args: Sequence[str] = (),
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.replica_args = list(replica_args)  # e.g. a MEANet edge's cloud and thresholds
        self.checkpoint = Path(checkpoint).resolve()
        self.frontend = frontend
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.payload_bytes = payload_bytes
        names = list(devices) if devices else list(cluster.devices)
        missing = [n for n in names if n not in cluster.devices]
        if missing:
            raise ClusterError(
                f"cannot serve on {', '.join(missing)}: no such device in the cluster",
                hint=f"devices are: {', '.join(cluster.devices)}",
            )
        reserve = reserve or {}
        self.capacity = {
            n: max(0.0, (cluster.devices[n].spec.cpu_cores or 1.0) - reserve.get(n, 0.0))
            for n in names
        }
        self.threads = threads
        self.python = python
        self.on_event = on_event
        self.replicas: dict[str, Replica] = {}
        self.cold_starts: list[ColdStart] = []
        self.counters = _Counters()
        self._ids = itertools.count(1)
        self._registered: frozenset[str] = frozenset()
        self.pending: tuple[dict, dict] | None = None
        """A target whose shrinking part waits for booting replicas (see :meth:`apply`)."""
        self.warnings = [
            f"device {n!r} cannot fence replicas apart (no cgroup v1): a replica's flavour "
            "is not enforced there, its device's limit is"
            for n in names
            if not cluster.devices[n].partitions
        ]

    # -- what is running ---------------------------------------------------------------
    def placement(self, *, ready_only: bool = False) -> dict[str, dict[str, int]]:
        """Replicas that are serving or starting (only serving with ``ready_only``; never
        draining), per device and flavour."""
        out: dict[str, dict[str, int]] = {}
        for r in self.replicas.values():
            if r.state == "ready" or (r.state == "starting" and not ready_only):
                per = out.setdefault(r.device, {})
                per[r.flavour.name] = per.get(r.flavour.name, 0) + 1
        return out

    def ready(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state == "ready"]

    def starting(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.state == "starting"]

    def cost_per_hour(self, catalog: CostCatalog) -> float:
        """What the replicas cost now: every started one, booting and draining included."""
        return sum(catalog.cost_per_hour(r.flavour) for r in self.replicas.values())

    def cold_start_s(self, default: float) -> float:
        """A typical cold start: the median of the last ten (``default`` before the first).

        Not the slowest: one boot on the smallest board can take three times the usual,
        and planning every decision that far ahead would provision hours early."""
        recent = sorted(c.seconds for c in self.cold_starts[-10:])
        return recent[len(recent) // 2] if recent else default

    def utilisation(self) -> float | None:
        """Mean CPU use of the ready replicas over their quota since the last call (what an
        HPA-style autoscaler reads); None before there are two readings."""
        shares = []
        now = time.monotonic()
        for r in self.ready():
            try:
                cpu = self.cluster.devices[r.device].partition_usage(r.partition).cpu_seconds
            except (DeepEdgeError, OSError, KeyError):
                continue
            if r.cpu_mark is not None and now > r.cpu_mark[0]:
                shares.append((cpu - r.cpu_mark[1]) / (now - r.cpu_mark[0]) / r.flavour.cores)
            r.cpu_mark = (now, cpu)
        return sum(shares) / len(shares) if shares else None

    # -- changing it --------------------------------------------------------------------
    def apply(
        self,
        target: Placement,
        flavours: Mapping[str, Flavour],
        *,
        make_before_break: bool = True,
    ) -> list[str]:
        """Move towards ``target``: per device the serving replicas take its largest
        flavours (resized in place where needed), booting ones the rest; what is missing
        starts, what is left over drains. Returns the actions taken, in words.

        Make before break: while replicas boot, nothing shrinks; the shrinking resizes and
        the drains wait in :attr:`pending` until every new replica serves (:meth:`poll`
        applies them), so a change of configuration never dips below either one. A
        target sized on the serving replicas alone does not need it
        (``make_before_break=False``).
        """
        unknown = {f for per in target.values() for f in per} - set(flavours)
        if unknown:
            raise ClusterError(f"placement names unknown flavours: {', '.join(sorted(unknown))}")
        plan = self._diff(target, flavours)
        booting = make_before_break and (
            bool(self.starting()) or any(kind == "start" for kind, *_ in plan)
        )
        actions: list[str] = []
        self.pending = None
        for kind, device, r, flavour in plan:
            shrinks = kind == "drain" or (kind == "resize" and flavour.cores < r.flavour.cores)
            if booting and shrinks:
                self.pending = (dict(target), dict(flavours))
            elif kind == "start":
                actions.append(self._start(device, flavour))
            elif kind == "resize":
                actions.append(self._resize(r, flavour))
            else:
                actions.append(self._drain(r))
        if actions:
            self._sync_frontend()
        return actions

    def _diff(
        self, target: Placement, flavours: Mapping[str, Flavour]
    ) -> list[tuple[str, str, Any, Any]]:
        """What :meth:`apply` would do: (kind, device, replica, flavour) per change."""
        plan: list[tuple[str, str, Any, Any]] = []
        for device in sorted(set(target) | {r.device for r in self.replicas.values()}):
            want = sorted(
                (flavours[f] for f, n in target.get(device, {}).items() for _ in range(n)),
                key=lambda f: -f.cores,
            )
            have = [
                r for r in self.replicas.values() if r.device == device and r.draining_since is None
            ]
            ready = [r for r in have if r.state == "ready"]
            starting = [r for r in have if r.state != "ready"]
            # a resize is instant and a boot is not: serving replicas take the largest
            plan += self._assign(device, ready, want[: len(ready)])
            plan += self._assign(device, starting, want[len(ready) :])
        return plan

    @staticmethod
    def _assign(
        device: str, group: list[Replica], want: list[Flavour]
    ) -> list[tuple[str, str, Any, Any]]:
        """Give ``group``'s replicas the flavours ``want``: keep those that have one, resize
        the others, start what is still missing, drain what is left over."""
        left = list(want)
        spare: list[Replica] = []
        for r in group:
            match = next((f for f in left if f.name == r.flavour.name), None)
            if match is None:
                spare.append(r)
            else:
                left.remove(match)
        plan: list[tuple[str, str, Any, Any]] = [
            ("resize", device, r, f) for r, f in zip(spare, left, strict=False)
        ]
        plan += [("start", device, None, f) for f in left[len(spare) :]]
        plan += [("drain", device, r, None) for r in spare[len(left) :]]
        return plan

    def _start(self, device: str, flavour: Flavour, *, scaling: bool = True) -> str:
        if device not in self.cluster.devices:
            raise ClusterError(f"cannot start a replica on {device!r}: the device is gone")
        name = f"r{next(self._ids)}"
        handle = self.cluster.devices[device]
        others = sum(
            r.flavour.cores
            for r in self.replicas.values()
            if r.device == device and r.draining_since is None
        )
        boost = max(flavour.cores, self.capacity.get(device, flavour.cores) - others)
        ready_file = self.workdir / f"{name}.ready.json"
        ready_file.unlink(missing_ok=True)
        replica_partition = f"replica-{name}"
        handle.set_partition(replica_partition, cores=boost, memory_mb=flavour.memory_mb)
        argv = [
            self.python,
            "-m",
            "deepedge.serving.replica",
            "--checkpoint",
            str(self.checkpoint),
            "--name",
            name,
            "--ready-file",
            str(ready_file),
            "--host",
            handle.address,
            "--threads",
            str(self.threads),
            *self.replica_args,
        ]
        try:
            proc = handle.spawn(
                argv, log_path=self.workdir / f"{name}.log", partition=replica_partition
            )
        except DeepEdgeError:
            handle.remove_partition(replica_partition)
            raise
        self.replicas[name] = Replica(name, device, flavour, proc, ready_file, time.monotonic())
        self.counters.started += scaling
        return self._say("start", f"start {name} ({flavour.name}) on {device}")

    def _resize(self, r: Replica, flavour: Flavour) -> str:
        old = r.flavour
        r.flavour = flavour
        r.cpu_mark = None
        if r.ready_at is not None:  # a booting replica keeps its boost until ready
            self.cluster.devices[r.device].set_partition(
                r.partition, cores=flavour.cores, memory_mb=flavour.memory_mb
            )
        self.counters.resized += 1
        return self._say("resize", f"resize {r.name} on {r.device}: {old.name} → {flavour.name}")

    def _drain(self, r: Replica) -> str:
        r.draining_since = time.monotonic()
        self.counters.stopped += 1
        return self._say("stop", f"drain and stop {r.name} ({r.flavour.name}) on {r.device}")

    def _say(self, kind: str, message: str) -> str:
        if self.on_event:
            self.on_event(kind, message)
        return message

    # -- keeping it going ---------------------------------------------------------------
    def poll(self) -> list[str]:
        """Register ready replicas, stop drained ones, replace dead ones; what happened."""
        events: list[str] = []
        now = time.monotonic()
        for r in list(self.replicas.values()):
            code = r.proc.poll()
            if r.draining_since is not None:
                if code is not None or self._drained(r, now):
                    self._remove(r)
                continue
            if code is not None:
                events.append(self._replace(r, f"exited with code {code}"))
            elif r.ready_at is None:
                if self._read_ready(r):
                    r.ready_at = now
                    seconds = now - r.spawned_at
                    self.cold_starts.append(ColdStart(r.device, r.flavour.name, seconds))
                    self.cluster.devices[r.device].set_partition(
                        r.partition, cores=r.flavour.cores, memory_mb=r.flavour.memory_mb
                    )
                    events.append(self._say("ready", f"{r.name} ready in {seconds:.1f} s"))
                elif now - r.spawned_at > _BOOT_S:
                    events.append(self._replace(r, f"not ready after {_BOOT_S:g} s"))
        if self.pending is not None and not self.starting():
            events += self.apply(*self.pending)
        if events or self._registered != frozenset(r.name for r in self.ready()):
            self._sync_frontend()
        return events

    def _read_ready(self, r: Replica) -> bool:
        try:
            info = json.loads(r.ready_file.read_text())
            if int(info["pid"]) != r.proc.pid:
                return False  # a stale file (never the case: unlinked before spawning)
            r.port = int(info["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def _drained(self, r: Replica, now: float) -> bool:
        if now - (r.draining_since or now) > _DRAIN_S:
            return True
        if r.ready_at is None:
            return True  # never served anything
        try:
            stats = self.frontend.stats().get(r.name)
        except DeepEdgeError:
            return False
        return stats is None or int(stats.get("outstanding", 0)) == 0

    def _replace(self, r: Replica, why: str) -> str:
        self.counters.replaced += 1
        self._remove(r)
        message = f"replica {r.name} ({r.flavour.name}) on {r.device} {why}; replacing it"
        log.warning(message)
        self._say("failure", message)
        device = r.device if r.device in self.cluster.devices else self._room_for(r.flavour)
        if device is None:
            return self._say("failure", f"no device has room for a {r.flavour.name} replica")
        self._start(device, r.flavour, scaling=False)  # a replacement is not a scaling action
        return message

    def _room_for(self, flavour: Flavour) -> str | None:
        used = {n: 0.0 for n in self.capacity}
        for r in self.replicas.values():
            if r.device in used:
                used[r.device] += r.flavour.cores
        fits = [n for n in used if n in self.cluster.devices and self.capacity[n] - used[n] >= 0]
        return max(fits, key=lambda n: self.capacity[n] - used[n], default=None)

    def _remove(self, r: Replica) -> None:
        self.replicas.pop(r.name, None)
        with contextlib.suppress(DeepEdgeError, OSError, ProcessLookupError):
            signal_group(r.proc, 9)
        handle = self.cluster.devices.get(r.device)
        if handle is not None:
            with contextlib.suppress(DeepEdgeError, OSError):
                handle.remove_partition(r.partition)
        with contextlib.suppress(Exception):
            r.proc.wait(timeout=2)
        r.ready_file.unlink(missing_ok=True)

    def _sync_frontend(self) -> None:
        ready = self.ready()
        self.frontend.set_replicas(
            self.payload_bytes,
            [
                ReplicaAddress(
                    r.name, self.cluster.devices[r.device].address, r.port, r.flavour.cores
                )
                for r in ready
                if r.port is not None
            ],
        )
        self._registered = frozenset(r.name for r in ready)

    def wait_ready(self, timeout_s: float) -> None:
        """Poll until no replica is starting; ClusterError (with a log tail) after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.starting():
            self.poll()
            if time.monotonic() > deadline:
                r = self.starting()[0]
                tail = log_tail(self.workdir / f"{r.name}.log", 3)
                raise ClusterError(
                    f"replica {r.name} on {r.device} not ready within {timeout_s:g} s: {tail}",
                    hint="check its log; a small device may need a longer boot timeout",
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every replica and remove its partition. Idempotent."""
        with contextlib.suppress(DeepEdgeError, OSError):
            self.frontend.set_replicas(self.payload_bytes, [])
        for r in list(self.replicas.values()):
            self._remove(r)
