"""FECBench-style resource stressors: long-lived workers in a device with an intensity knob.

Each :class:`StressorProcess` is one worker process inside a device's fence (cgroup, and
network namespace where the cluster has them), started once and then driven: ``set`` its
intensity in [0, 1], ``read`` its cumulative :class:`Counters`, and turn two readings into
the resource :class:`Usage` it caused (:func:`usage_between`, or :meth:`StressorProcess.measure`).
The knob is continuous, but what it costs is measured, never assumed: under a CPU quota
below one core a duty cycle of 0.5 does not use half of what 1.0 uses.

Kinds (:data:`STRESSOR_KINDS`):

* ``cpu``: a busy loop.
* ``membw``: streaming copies between two arrays far larger than the last-level cache.
* ``llc``: random cache-line reads over a working set about the LLC's size.
* ``memcap``: holds ``intensity × max_mb`` MB resident (option ``max_mb``, default 256).
* ``disk``: 1 MB writes, each fsynced, to a file in option ``dir`` (default: ``workdir``).
* ``net``: TCP traffic both ways between the worker and a peer thread of this process
  bound to the coordinator address, i.e. through the device's link.
* ``gpu``: a CUDA matmul loop; unavailable without a CUDA device.
* ``train``: the real training job (option ``job``, a JobSpec as a dict; ``batch`` per
  ``set``), pacing itself per step.

All but ``memcap`` are duty cycles: active for ``intensity × period_s`` (option, default
0.02 s; 0.5 s for ``net``, whose link queue would smooth a shorter cycle away) of every
period, idle (blocked) otherwise; ``train`` sleeps after each step. Time the worker spends
throttled by the device's CPU quota does not count as active, so consumption rises
monotonically with intensity and saturates at the quota (cpu on a 0.42-core device: about
``min(intensity, 0.42)`` cores). The
``stress-ng`` backend (option ``backend="stress-ng"``, kinds cpu/membw/llc/disk) runs
stress-ng under the same duty cycle with SIGSTOP/SIGCONT.

Workers start slowly under a tiny CPU quota (importing numpy or torch can take many
seconds at 0.1 cores): lift the device's quota while they start
(:meth:`~StressorProcess.start_unthrottled`, or ``device.set_cpu_limit(None)`` around
several starts, then back). A kind that cannot run on a device raises
:class:`StressorUnavailable` at :meth:`~StressorProcess.start`; a worker that hits a
persistent error later (no space left, an allocation or CUDA failure) goes idle and says so
in its counters (``errors``, ``last_error``), and :meth:`~StressorProcess.measure` raises
:class:`StressorFailed`, so an idle worker is never mistaken for load.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from deepedge.cluster.workers import STEADY_MALLOC_ENV, Worker, WorkerListener, stop_workers
from deepedge.errors import ClusterError
from deepedge.interference.stressor_worker import KINDS, NO_STRESS_NG, STRESS_NG_KINDS

__all__ = [
    "STRESSOR_KINDS",
    "STRESS_NG_KINDS",
    "Counters",
    "StressorFailed",
    "StressorProcess",
    "StressorUnavailable",
    "Usage",
    "usage_between",
]

STRESSOR_KINDS: tuple[str, ...] = KINDS

# The worker runs as a script (``python -P .../stressor_worker.py``), the same code as
# ``python -m deepedge.interference.stressor_worker`` without importing the package's
# ``__init__``, which pulls in torch and scipy for the models: that cost seconds of start-up
# and ~300 MB of RSS in every worker, torch even in a cpu stressor.
_WORKER = Path(__file__).resolve().with_name("stressor_worker.py")


class StressorUnavailable(ClusterError):
    """This stressor kind cannot run on this device (no CUDA, no disk space, no stress-ng)."""

    def __init__(self, kind: str, device: str, reason: str, *, hint: str | None = None) -> None:
        self.message = f"{kind} stressor cannot run on device {device!r}: {reason}"
        super().__init__(self.message, hint=hint)
        self.kind = kind
        self.device = device
        self.reason = reason


class StressorFailed(ClusterError):
    """A running stressor hit a persistent error and went idle: the intensity was not held."""

    def __init__(self, kind: str, device: str, intensity: float, error: str | None) -> None:
        self.message = (
            f"{kind} stressor on device {device!r} cannot hold intensity {intensity:g}: {error}"
        )
        super().__init__(self.message, hint="lower the intensity or free the resource")
        self.kind = kind
        self.device = device
        self.intensity = intensity
        self.error = error


@dataclass(frozen=True)
class Counters:
    """A worker's cumulative counters at one instant (see :func:`usage_between`).

    ``wall_s`` is the monotonic clock, ``cpu_s`` the worker's process CPU time (all
    threads; with stress-ng, its processes too), ``rss_mb`` its resident memory (MiB).
    ``bytes``: membw bytes copied, llc bytes read (64 per access), disk bytes written and
    fsynced, net bytes sent + received. ``ops``: cpu loop iterations, llc accesses, gpu
    matmuls, train samples, memcap pages touched. ``steps``: train steps. ``active_s``:
    time spent in active slices. ``intensity`` is the worker's current setting (0 after an
    error made it go idle).
    """

    wall_s: float
    cpu_s: float
    rss_mb: float
    bytes: int
    ops: int
    steps: int
    errors: int
    last_error: str | None
    active_s: float = 0.0
    intensity: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counters:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Usage:
    """A resource-usage vector over a window, per second.

    ``cpu_cores``: CPU seconds per second; ``rss_mb``: resident memory at the window's end
    (MiB); ``membw_mbps``, ``llc_mbps``, ``disk_mbps``, ``net_mbps``: megabytes (10^6
    bytes) per second, so ``8 × net_mbps`` compares with a link's ``link_mbps`` (Mbit/s);
    ``gpu_util``: share of time the GPU was kept busy; ``samples_per_s``: training
    throughput. Vectors add (co-runners' usages sum, memory included).
    """

    FIELDS: ClassVar[tuple[str, ...]] = (
        "cpu_cores",
        "rss_mb",
        "membw_mbps",
        "llc_mbps",
        "disk_mbps",
        "net_mbps",
        "gpu_util",
        "samples_per_s",
    )

    cpu_cores: float
    rss_mb: float
    membw_mbps: float
    llc_mbps: float
    disk_mbps: float
    net_mbps: float
    gpu_util: float
    samples_per_s: float = 0.0

    @classmethod
    def zero(cls) -> Usage:
        return cls(*(0.0 for _ in cls.FIELDS))

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(float(getattr(self, name)) for name in self.FIELDS)

    def to_dict(self) -> dict[str, float]:
        return dict(zip(self.FIELDS, self.as_tuple(), strict=True))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        unknown = set(data) - set(cls.FIELDS)
        if unknown:
            raise ValueError(f"unknown usage field(s) {sorted(unknown)}; known: {cls.FIELDS}")
        missing = [n for n in cls.FIELDS[:-1] if n not in data]
        if missing:
            raise ValueError(f"usage is missing field(s) {missing}")
        return cls(**{k: float(v) for k, v in data.items()})

    def __add__(self, other: object) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=True)))

    def __radd__(self, other: object) -> Usage:  # sum(usages) starts from 0
        if other == 0:
            return self
        return NotImplemented


_BYTES_FIELD = {"membw": "membw_mbps", "llc": "llc_mbps", "disk": "disk_mbps", "net": "net_mbps"}


def usage_between(kind: str, before: Counters, after: Counters) -> Usage:
    """What a ``kind`` worker consumed per second between two readings of its counters."""
    if kind not in STRESSOR_KINDS:
        raise ValueError(f"unknown stressor kind {kind!r}; known: {STRESSOR_KINDS}")
    dt = after.wall_s - before.wall_s
    if not dt > 0:
        raise ValueError(f"'after' must be read after 'before' (wall time went {dt:+.3f} s)")
    values = dict.fromkeys(Usage.FIELDS, 0.0)
    values["cpu_cores"] = max(0.0, after.cpu_s - before.cpu_s) / dt
    values["rss_mb"] = after.rss_mb
    if kind in _BYTES_FIELD:
        values[_BYTES_FIELD[kind]] = max(0, after.bytes - before.bytes) / dt / 1e6
    if kind == "gpu":
        values["gpu_util"] = min(1.0, max(0.0, after.active_s - before.active_s) / dt)
    if kind == "train":
        values["samples_per_s"] = max(0, after.ops - before.ops) / dt
    return Usage(**values)


def _number(value: Any, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(out):
        raise ValueError(f"{name} must be a number, got NaN")
    return out


class _TrafficPeer:
    """The host end of the ``net`` stressor, outside the device: accepts the worker's
    connection on the coordinator address, discards what it sends (its uplink) and sends
    as fast as it reads (its downlink; TCP flow control idles this while the worker does)."""

    BUF = 64 << 10
    SOCKBUF = 128 << 10

    def __init__(self, host: str) -> None:
        self._server = socket.create_server((host, 0))
        self._server.settimeout(0.2)
        self.address: tuple[str, int] = self._server.getsockname()[:2]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self.sent = 0
        self.received = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True, name="stress-net")]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                conn.setsockopt(socket.SOL_SOCKET, opt, self.SOCKBUF)
            self._conns.append(conn)
            for target in (self._sink, self._source):
                t = threading.Thread(target=target, args=(conn,), daemon=True, name="stress-net")
                t.start()
                self._threads.append(t)

    def _sink(self, conn: socket.socket) -> None:
        buf = bytearray(self.BUF)
        while True:
            try:
                n = conn.recv_into(buf)
            except OSError:
                return
            if n == 0:
                return
            self.received += n

    def _source(self, conn: socket.socket) -> None:
        data = bytes(self.BUF)
        while True:
            try:
                conn.sendall(data)
            except OSError:
                return
            self.sent += len(data)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked in send/recv
            with contextlib.suppress(OSError):
                conn.close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=2)


class StressorProcess:
    """One stressor worker in ``device``, controlled over an authenticated socket.

    ``host`` is the coordinator's address as the device sees it
    (``LocalCluster.coordinator_address``): the control channel (and the ``net`` peer) bind
    there, so it works across network namespaces. ``workdir`` holds the worker's log and is
    the ``disk`` stressor's default directory. ``options`` are the kind's options (see the
    module docstring), plus ``period_s`` and ``backend``.
    """

    def __init__(
        self,
        kind: str,
        device: Any,
        *,
        host: str,
        workdir: Path,
        options: Mapping[str, Any] | None = None,
        python: str = sys.executable,
    ) -> None:
        if kind not in STRESSOR_KINDS:
            raise ValueError(f"unknown stressor kind {kind!r}; known: {STRESSOR_KINDS}")
        self.options = dict(options or {})
        backend = self.options.get("backend", "python")
        if backend not in ("python", "stress-ng"):
            raise ValueError(f"unknown backend {backend!r}: use 'python' or 'stress-ng'")
        if backend == "stress-ng" and kind not in STRESS_NG_KINDS:
            raise ValueError(f"the stress-ng backend supports {list(STRESS_NG_KINDS)}, not {kind}")
        if not _number(self.options.get("period_s", 0.02), "period_s") > 0:
            raise ValueError(f"period_s must be > 0, got {self.options['period_s']!r}")
        self.kind = kind
        self.device = device
        self.device_name: str = getattr(device, "name", None) or device.spec.name
        self.host = host
        self.workdir = Path(workdir)
        self.python = python
        self.log_path: Path | None = None
        self.startup_s: float | None = None
        """Seconds from spawning the worker to its hello (imports and set-up included)."""
        self._worker: Worker | None = None
        self._peer: _TrafficPeer | None = None
        self._lock = threading.Lock()
        self._intensity = 0.0
        self._closed = False
        self._launched: tuple[WorkerListener, float, float] | None = None

    # --- life cycle

    @property
    def pid(self) -> int | None:
        return self._worker.pid if self._worker is not None else None

    @property
    def intensity(self) -> float:
        """The intensity last set (the worker may have gone idle since: see ``read``)."""
        return self._intensity

    def start_unthrottled(self, timeout_s: float = 120.0) -> None:
        """:meth:`start` with the device's CPU quota lifted until the worker said hello
        (its imports would take many seconds under a small quota), then restored."""
        self.device.set_cpu_limit(None)
        try:
            self.start(timeout_s)
        finally:
            self.device.set_cpu_limit(self.device.spec.cpu_cores)

    def start(self, timeout_s: float = 120.0) -> None:
        """Spawn the worker in the device and wait for its hello.

        Raises :class:`StressorUnavailable` when the kind cannot run there, and
        :class:`ClusterError` (with the log's tail) when the worker dies or times out.
        """
        self.launch(timeout_s)
        self.await_started()

    def launch(self, timeout_s: float = 120.0) -> None:
        """Spawn the worker and return at once; :meth:`await_started` waits for its
        hello, by ``timeout_s`` from now. Several workers launched one after the other
        start side by side. Launch from a thread that outlives the worker (not a pool's):
        the device's parent-death signal kills it when the thread that spawned it ends."""
        if self._worker is not None or self._closed:
            raise ClusterError(
                f"{self.kind} stressor on {self.device_name!r} was already started",
                hint="use a new StressorProcess",
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        options = dict(self.options)
        if self.kind == "disk":
            options.setdefault("dir", str(self.workdir))
        listener = WorkerListener(
            self.host, 1, key_env="DEEPEDGE_STRESSOR_KEY", what=f"{self.kind} stressor"
        )
        src = str(Path(__file__).resolve().parents[2])  # so the child imports this deepedge
        env = {
            "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
        }
        if self.kind == "train":
            env.update(STEADY_MALLOC_ENV)
        self.log_path = self.workdir / f"stressor-{self.kind}-{self.device_name}.log"
        started = time.monotonic()
        try:
            if self.kind == "net":
                self._peer = _TrafficPeer(self.host)
                options["peer"] = "{}:{}".format(*self._peer.address)
            argv = [
                self.python,
                "-P",  # not the package's directory on sys.path: run as a plain script
                str(_WORKER),
                "--kind",
                self.kind,
                "--options",
                json.dumps(options),
            ]
            self._worker = listener.spawn(
                self.device_name, self.device, argv, env=env, log_path=self.log_path
            )
        except BaseException:
            listener.close()
            self.close()
            raise
        self._launched = (listener, started, timeout_s)

    def await_started(self) -> None:
        """Wait for the hello of the worker :meth:`launch` spawned; raises as :meth:`start`."""
        if self._launched is None or self._worker is None:
            raise ClusterError(
                f"{self.kind} stressor on {self.device_name!r} was not launched",
                hint="call launch() first",
            )
        (listener, started, timeout_s), self._launched = self._launched, None
        worker = self._worker
        try:
            listener.await_hellos(
                [worker],
                deadline=started + timeout_s,
                died=self._died,
                timed_out=lambda waiting: self._timed_out(waiting[0], timeout_s),
            )
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()
        hello = worker.hello or {}
        if hello.get("event") == "unavailable":
            self.close()
            reason = str(hello.get("reason"))
            hint = "or use backend='python'" if reason == NO_STRESS_NG else None
            raise StressorUnavailable(self.kind, self.device_name, reason, hint=hint)
        if hello.get("event") != "hello":
            self.close()
            raise ClusterError(f"{self.kind} stressor sent {hello!r} instead of hello")
        self.startup_s = time.monotonic() - started

    def _timed_out(self, worker: Worker, timeout_s: float) -> ClusterError:
        return ClusterError(
            f"{self.kind} stressor on {self.device_name!r} did not start in {timeout_s:.0f} s:"
            f" {worker.tail(2)}",
            hint=f"see {worker.log_path}; lift the device's CPU quota while stressors start",
        )

    def _died(self, worker: Worker, code: int | None, when: str = "") -> ClusterError:
        """The error for ``worker``'s exit (``code``), or its lost connection (None)."""
        state = f"exited with code {code}" if code is not None else "closed its connection"
        when = f" {when}" if when else ""
        return ClusterError(
            f"{self.kind} stressor on device {self.device_name!r} {state}{when}: {worker.tail(3)}",
            hint=f"full log: {worker.log_path}; a negative code is the signal that killed it",
        )

    def close(self, grace_s: float = 5.0) -> None:
        """Stop the worker (killing it after ``grace_s``), reap it, stop the net peer.

        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        if self._launched is not None:  # launched, never awaited
            self._launched[0].close()
            self._launched = None
        worker = self._worker
        if worker is not None:
            with self._lock:  # not while a request is using the connection
                worker.hang_up({"op": "stop"})
            stop_workers([worker], grace_s=grace_s)
            if self.kind == "disk" and self.options.get("backend", "python") == "python":
                # the worker deletes its file on exit; this covers one that was killed
                folder = Path(self.options.get("dir") or self.workdir)
                with contextlib.suppress(OSError):
                    (folder / f"deepedge-stressor-{worker.pid}.dat").unlink(missing_ok=True)
        if self._peer is not None:
            self._peer.close()
            self._peer = None

    def __enter__(self) -> StressorProcess:
        if self._worker is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- control

    def _request(self, msg: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        with self._lock:
            worker = self._worker
            conn = worker.conn if worker is not None else None
            if worker is None or conn is None:
                raise ClusterError(
                    f"{self.kind} stressor on {self.device_name!r} is not running",
                    hint="start() it first" if not self._closed else "it was closed",
                )
            try:
                conn.send(msg)
                deadline = time.monotonic() + timeout_s
                while not conn.poll(0.1):
                    if (code := worker.exit_code()) is not None:
                        raise self._died(worker, code)
                    if time.monotonic() > deadline:
                        # a late reply would answer the next request: drop the channel
                        worker.hang_up()
                        raise ClusterError(
                            f"{self.kind} stressor on {self.device_name!r} did not answer "
                            f"{msg['op']!r} in {timeout_s:.0f} s",
                            hint=f"see {self.log_path}",
                        )
                reply = conn.recv()
            except (EOFError, OSError):  # the exit code follows shortly, if it exited
                raise self._died(worker, worker.exit_code(wait_s=1.0)) from None
        if reply.get("event") == "error":
            raise ValueError(f"{self.kind} stressor rejected {msg['op']!r}: {reply['error']}")
        return reply

    def set(self, intensity: float, **params: Any) -> None:
        """Set the intensity in [0, 1] (and kind parameters, e.g. ``batch`` for train,
        ``period_s`` for any duty cycle)."""
        value = _number(intensity, "intensity")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"intensity must be in [0, 1], got {intensity!r}")
        self._request({"op": "set", "intensity": value, **params})
        self._intensity = value

    def read(self) -> Counters:
        reply = self._request({"op": "read"})
        return Counters.from_dict(reply)

    def measure(self, window_s: float, *, check_errors: bool = True) -> Usage:
        """Usage over the next ``window_s`` seconds at the current setting.

        With ``check_errors``, a worker that hit an error in the window, or went idle since
        its last ``set``, raises :class:`StressorFailed` instead of reporting idle as load.
        """
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be > 0, got {window_s}")
        before = self.read()
        time.sleep(window_s)
        after = self.read()
        if check_errors and (
            after.errors > before.errors or (self._intensity > 0 and after.intensity == 0.0)
        ):
            raise StressorFailed(self.kind, self.device_name, self._intensity, after.last_error)
        return usage_between(self.kind, before, after)

    def __repr__(self) -> str:
        return f"StressorProcess({self.kind!r}, device={self.device_name!r}, pid={self.pid})"
