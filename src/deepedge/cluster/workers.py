"""Worker processes in devices: starting them, reaching them, stopping them.

A worker (a training agent, a stressor) is a long-lived process spawned into its device
(:meth:`DeviceHandle.spawn <deepedge.cluster.api.DeviceHandle.spawn>`) that connects back
to the coordinator over an authenticated ``multiprocessing.connection`` socket and sends a
hello as its first message; after that the coordinator drives it with messages (dicts).
The worker learns where to connect from ``--address HOST:PORT`` on its command line and
the key from an environment variable (hex), named per kind of worker.

This module is the coordinator's side of that start-up, written once:

* :class:`WorkerListener`: a fresh key and a listener that accepts the workers'
  connections in a background thread; :meth:`~WorkerListener.spawn` starts a worker in its
  device with the address and key; :meth:`~WorkerListener.await_hellos` waits for every
  hello with a deadline while watching the processes, so a worker that dies early is an
  error naming the tail of its log, never a hang.
* :class:`Worker`: one started worker: its process, log and connection.
* :func:`stop_workers`: say goodbye, give them a grace period, then kill what is left.

What the errors say stays with the caller (``died``, ``timed_out``): a training agent and
a stressor fail in their own words. Imports no torch.
"""

from __future__ import annotations

import contextlib
import queue
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path
from typing import Any

from deepedge.cluster.api import DeviceHandle, DeviceProcess, signal_group
from deepedge.errors import ClusterError

__all__ = [
    "STEADY_MALLOC_ENV",
    "DiedError",
    "TimedOutError",
    "Worker",
    "WorkerListener",
    "log_lines",
    "log_tail",
    "stop_workers",
]

# glibc returns freed heap tops to the kernel once they exceed a threshold that adapts to
# the sizes seen so far; a step's activations (megabytes, freed every step) then fault
# their pages in again on the next step, in kernel time charged to the device's small CPU
# quota. Measured on the demo cluster: the first profiling run at small batches was
# 20-50 % slower than the same run repeated after a larger one. Fixed thresholds keep
# the heap, so every step costs what a long training run's steps cost. For the
# environment of workers that train (agents, the train stressor).
STEADY_MALLOC_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),  # glibc's maximum on 64-bit
}

_POLL_S = 0.2  # how often waiting for workers looks at their processes and the deadline
_KILL_WAIT_S = 5.0  # how long to wait for a killed worker's exit status


def log_lines(path: Path | None, lines: int = 5) -> list[str]:
    """The last ``lines`` lines of a process's log (``["(no log)"]`` without one)."""
    if path is None:
        return ["(no log)"]
    try:
        return path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ["(no log)"]


def log_tail(path: Path | None, lines: int = 5) -> str:
    """The last ``lines`` lines of a worker's log, joined into one line for an error."""
    return " | ".join(log_lines(path, lines))


@dataclass(eq=False)
class Worker:
    """One worker process in a device, and its connection once it has said hello."""

    name: str
    proc: DeviceProcess
    log_path: Path | None = None
    conn: Connection | None = None
    hello: dict[str, Any] | None = None  # its first message

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit_code(self, wait_s: float = 0.0) -> int | None:
        """The exit code (-N: killed by signal N), or None while it runs, after waiting up
        to ``wait_s`` for it to exit (a worker's connection closes before it exits)."""
        if wait_s <= 0:
            return self.proc.poll()
        try:
            return self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return None

    def tail(self, lines: int = 5) -> str:
        return log_tail(self.log_path, lines)

    def hang_up(self, message: Mapping[str, Any] | None = None) -> None:
        """Send ``message`` (e.g. a shutdown request), if any, and close the connection.

        Idempotent; a worker that is already gone is not an error."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if message is not None:
            with contextlib.suppress(OSError):
                conn.send(dict(message))
        with contextlib.suppress(OSError):
            conn.close()

    def kill(self) -> None:
        """SIGKILL its process group (it was spawned as a session leader) and reap it."""
        for sig in (signal.SIGCONT, signal.SIGKILL):  # CONT: a duty cycle may have stopped it
            signal_group(self.proc, sig)
        with contextlib.suppress(OSError):
            self.proc.kill()  # in case a device did not make it a group leader
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=_KILL_WAIT_S)


DiedError = Callable[[Worker, int | None, str], BaseException]
"""Builds the error for a worker that died while starting, from the worker, its exit code
(None: it closed its connection but has not exited) and when: ``"before connecting"``,
``"before saying hello"``, or ``""`` when its connection broke while its hello was read."""

TimedOutError = Callable[[list[Worker]], BaseException]
"""Builds the error for workers (still running) that did not say hello by the deadline."""


class WorkerListener:
    """One start-up of ``count`` workers: a fresh key and a listener on ``host`` (the
    coordinator's address as the devices see it) that accepts ``count`` connections in a
    background thread. ``key_env`` is the environment variable the workers read the key
    from; ``what`` names them in errors ("agent", "cpu stressor").

    Close it (or use it as a context manager) once the workers have said hello.
    """

    def __init__(self, host: str, count: int, *, key_env: str, what: str = "worker") -> None:
        self.what = what
        self._key = secrets.token_bytes(16)
        self._key_env = key_env
        self._listener = Listener((host, 0), authkey=self._key)
        self._accepted: queue.Queue[Connection | BaseException] = queue.Queue()
        self._failure: BaseException | None = None  # why accepting stopped early
        bound_host, port = self._listener.address
        self.address = f"{bound_host}:{port}"
        """Where the workers connect, as ``HOST:PORT`` (their ``--address``)."""
        threading.Thread(
            target=self._accept, args=(count,), daemon=True, name="deepedge-accept"
        ).start()

    def _accept(self, count: int) -> None:
        for _ in range(count):
            try:
                self._accepted.put(self._listener.accept())
            except BaseException as err:  # closed listener or failed handshake
                self._accepted.put(err)
                return

    def spawn(
        self,
        name: str,
        device: DeviceHandle,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        self_paced: bool = False,
    ) -> Worker:
        """Start ``argv`` in ``device`` as the worker ``name``, told to connect here.

        ``--address HOST:PORT`` is appended to ``argv`` and the key is added to ``env``;
        the worker's output goes to ``log_path``. Raises what the device raises when it
        cannot start the process (:class:`ClusterError`).
        """
        proc = device.spawn(
            [*argv, "--address", self.address],
            env={self._key_env: self._key.hex(), **(env or {})},
            log_path=log_path,
            self_paced=self_paced,
        )
        return Worker(name, proc, log_path)

    def await_hellos(
        self,
        workers: Sequence[Worker],
        *,
        deadline: float,
        died: DiedError,
        timed_out: TimedOutError,
        identify: Callable[[dict[str, Any]], str] | None = None,
    ) -> None:
        """Wait until every worker has connected and said hello (``conn``, ``hello`` set).

        Until ``deadline`` (``time.monotonic()``); raises ``died(...)`` for a worker that
        dies first, ``timed_out(...)`` past the deadline and :class:`ClusterError` when a
        connection fails its handshake (a wrong key). With more than one worker,
        ``identify`` names the worker a hello comes from; a single worker's connection is
        its own from the start.
        """
        if identify is None and len(workers) > 1:
            raise ValueError("identify is needed to tell more than one worker's hellos apart")
        unknown: list[Connection] = []  # accepted, hello not read yet (identify mode)
        exited: list[Worker] = []  # seen exited without a hello at the end of the last round
        try:
            while waiting := [w for w in workers if w.hello is None]:
                # an exited worker's connection and hello can trail its exit (the accept
                # thread, a shaped link): it is dead only after one more round without them
                if exited:
                    w = exited[0]
                    connected = w.conn is not None or unknown  # unknown: may be its own
                    raise died(
                        w,
                        w.exit_code(),
                        "before saying hello" if connected else "before connecting",
                    )
                if self._failure is not None:
                    raise ClusterError(f"{self.what} handshake failed: {self._failure}")
                if time.monotonic() > deadline:
                    raise timed_out(waiting)
                conns = [w.conn for w in waiting if w.conn is not None] + unknown
                for conn in self._take_accepted(block=not conns):
                    if identify is None:
                        waiting[0].conn = conn
                    else:
                        unknown.append(conn)
                conns = [w.conn for w in waiting if w.conn is not None] + unknown
                for conn in wait(conns, timeout=_POLL_S) if conns else []:
                    self._read_hello(conn, waiting, unknown, died, identify)
                exited = [w for w in waiting if w.hello is None and w.exit_code() is not None]
        finally:
            for conn in unknown:
                conn.close()

    def _read_hello(
        self,
        conn: Connection,
        waiting: list[Worker],
        unknown: list[Connection],
        died: DiedError,
        identify: Callable[[dict[str, Any]], str] | None,
    ) -> None:
        owner = next((w for w in waiting if w.conn is conn), None)
        try:
            hello = conn.recv()
        except (EOFError, OSError):
            if owner is not None:  # closed: the exit code follows shortly, if it exited
                raise died(owner, owner.exit_code(wait_s=1.0), "") from None
            unknown.remove(conn)  # whose it was shows when its process exits
            conn.close()
            return
        if owner is None:
            assert identify is not None
            unknown.remove(conn)
            name = identify(hello)
            owner = next((w for w in waiting if w.name == name), None)
            if owner is None:
                conn.close()
                raise ClusterError(f"{self.what} handshake failed: unexpected hello {hello!r}")
            owner.conn = conn
        owner.hello = hello

    def _take_accepted(self, *, block: bool) -> list[Connection]:
        """The connections accepted since the last call, waiting a moment for one when
        ``block``; a failed accept (the last thing the thread does) goes to ``_failure``."""
        conns: list[Connection] = []
        with contextlib.suppress(queue.Empty):
            item = self._accepted.get(timeout=_POLL_S) if block else self._accepted.get_nowait()
            while True:
                if isinstance(item, BaseException):
                    self._failure = item
                else:
                    conns.append(item)
                item = self._accepted.get_nowait()
        return conns

    def close(self) -> None:
        """Stop listening (the workers already connected keep their connections)."""
        self._listener.close()

    def __enter__(self) -> WorkerListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_workers(
    workers: Iterable[Worker], message: Mapping[str, Any] | None = None, *, grace_s: float
) -> None:
    """Send each worker ``message`` (its shutdown request) and hang up, give them all
    ``grace_s`` together to exit, then kill those still running (their process groups)."""
    workers = list(workers)
    for w in workers:
        w.hang_up(message)
    deadline = time.monotonic() + grace_s
    for w in workers:
        try:
            w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.kill()
