"""Open-loop Poisson load generator for the LC app servers.

Open loop means each request is sent at a time drawn in advance from exponential gaps,
whether or not earlier requests have completed, and its latency is measured from that
*scheduled* time. A closed-loop client (send, wait, send) would slow down exactly when the
server does and hide the queueing delay re-training causes ("coordinated omission").

The generator runs in a child process (``python -m deepedge.apps.loadgen``) so it never
competes for the caller's GIL; the child keeps a pool of persistent connections per app,
opening more when all are busy, so a slow server cannot throttle the send schedule.
Every request becomes a :class:`RequestRecord` (failures too, never dropped). The child
takes rate changes on its stdin while it runs (:meth:`LoadGenerator.set_rate`: a load
spike), and stops when told to, when its stdin hits EOF, when its parent process changes
(the parent died), or on SIGTERM; it then writes all records to a compact ``.npz`` file that
:meth:`LoadGenerator.stop` loads.

A target speaks either the LC apps' binary protocol or HTTP/1.1 (``protocol="http"``: a
``POST`` of the raw payload to ``path`` over keep-alive connections, as to the serving
front end, :mod:`deepedge.serving.frontend`). Instead of one rate a target can replay a
piecewise-constant rate *schedule* (a request-rate trace): :func:`schedule_arrivals`
draws its arrivals as an exact non-homogeneous Poisson process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
import zipfile
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

import numpy as np

from deepedge.apps.server import HEADER, REPLY, request_bytes
from deepedge.apps.server import payload_bytes as kind_payload_bytes
from deepedge.apps.stats import RequestRecord, load_records, rows_to_records, save_records
from deepedge.errors import ClusterError

if TYPE_CHECKING:
    from deepedge.spec import AppSpec

__all__ = [
    "LoadGenerator",
    "LoadTarget",
    "RequestRecord",
    "image_payloads",
    "main",
    "schedule_arrivals",
]

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_TMP_PREFIX = "deepedge-loadgen-"
STREAM_S = 0.25
"""How often the child sends completed requests to the parent (the live stream that the
monitor and the run controller's SLO guard read)."""
_GAP_BATCH = 256  # exponential gaps drawn per numpy call: the schedule costs ~nothing

Schedule = tuple[tuple[float, float], ...]
"""A piecewise-constant rate: ``(start offset in s from the generator's start, rate rps)``
pairs, offsets strictly increasing from 0; each rate holds until the next offset."""


def _check_schedule(schedule: Sequence[Sequence[float]]) -> Schedule:
    """``schedule`` as a tuple of float pairs; ValueError unless it is a valid schedule."""
    try:
        steps = tuple((float(start), float(rate)) for start, rate in schedule)
    except (TypeError, ValueError):
        raise ValueError(
            f"schedule must be (start_s, rate_rps) pairs, got {schedule!r:.80}"
        ) from None
    if not steps or steps[0][0] != 0.0:
        raise ValueError("schedule must start at offset 0")
    for (a, _), (b, _) in itertools.pairwise(steps):
        if not b > a:
            raise ValueError(f"schedule offsets must increase strictly, got {a:g} then {b:g}")
    for start, rate in steps:
        if not (math.isfinite(start) and math.isfinite(rate) and rate >= 0):
            raise ValueError(f"schedule step ({start:g}, {rate:g}): need finite rate >= 0")
    return steps


def _unit_gaps(rng: np.random.Generator) -> Iterator[float]:
    while True:
        yield from rng.exponential(1.0, _GAP_BATCH).tolist()


def schedule_arrivals(
    schedule: Sequence[Sequence[float]], rng: np.random.Generator, *, end_s: float = math.inf
) -> Iterator[float]:
    """Arrival times (s from the start, increasing) of a Poisson process whose rate follows
    ``schedule``, up to ``end_s``.

    Exact, not thinned or rounded: within a step of rate ``λ`` the gaps are exponential
    with mean ``1/λ``; a gap that would cross into the next step is dropped and the process
    restarts at the boundary with the next step's rate, which memorylessness makes
    equivalent to the continuous process. A zero-rate step has no arrivals; the last step
    lasts until ``end_s`` (for ever by default), so a schedule ending in a zero-rate step
    ends its arrivals there. Deterministic for a given ``rng`` state.
    """
    steps = _check_schedule(schedule)
    gaps = _unit_gaps(rng)
    bounds = [start for start, _ in steps[1:]] + [math.inf]
    for (start, rate), bound in zip(steps, bounds, strict=True):
        if start >= end_s:
            return
        boundary = min(bound, end_s)
        if rate <= 0:
            continue
        t = start
        while (t := t + next(gaps) / rate) < boundary:
            yield t


@dataclass(frozen=True)
class LoadTarget:
    """One app to load: where its server listens, the mean request rate and the size of
    each request's payload.

    ``payload_bytes`` must be what the server expects (it closes the connection on any
    other length); left out, it is a ``cnn_inference`` image of ``image_size``, and it is
    always an ``int`` after construction. :meth:`from_app` sets it from the app's kind.

    ``protocol="http"`` sends each request as ``POST path`` with the payload as body over
    keep-alive HTTP/1.1 connections; a reply other than 200 is a failed request named
    ``HTTP<status>``, and the service time comes from the JSON reply's ``service_ms``.

    ``schedule`` (see :data:`Schedule`) replaces the constant ``rate_rps`` by a rate that
    changes over time (a replayed trace, :func:`schedule_arrivals`); ``rate_rps`` must
    still be positive (pass the schedule's peak, say) but no longer sets the pace, and
    :meth:`LoadGenerator.set_rate` refuses the target.

    ``images`` (an :class:`~deepedge.data.ArrayDataset` file, see :func:`image_payloads`)
    makes the requests carry its images in turn instead of one random payload: for a
    model whose cost depends on the input, such as MEANet's exits.
    """

    app: str
    host: str
    port: int
    rate_rps: float
    image_size: int = 32
    payload_bytes: int | None = None
    protocol: Literal["binary", "http"] = "binary"
    path: str = "/predict"
    schedule: Schedule | None = None
    images: str | None = None

    def __post_init__(self) -> None:
        if not (self.rate_rps > 0 and math.isfinite(self.rate_rps)):
            raise ValueError(f"rate_rps must be positive and finite, got {self.rate_rps}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.image_size < 4:
            raise ValueError(f"image_size must be >= 4, got {self.image_size}")
        if self.payload_bytes is None:
            object.__setattr__(self, "payload_bytes", request_bytes(self.image_size))
        elif not 0 < self.payload_bytes < 2**32:
            raise ValueError(f"payload_bytes must be in 1..2**32-1, got {self.payload_bytes}")
        if self.protocol not in ("binary", "http"):
            raise ValueError(f"protocol must be 'binary' or 'http', got {self.protocol!r}")
        if not (
            self.path.startswith("/")
            and self.path.isascii()
            and not any(map(str.isspace, self.path))
        ):
            raise ValueError(f"path must be an absolute URL path, got {self.path!r}")
        if self.schedule is not None:  # also turns the lists of a JSON round trip into tuples
            object.__setattr__(self, "schedule", _check_schedule(self.schedule))

    @classmethod
    def from_app(
        cls, app: AppSpec, port: int, *, host: str = "127.0.0.1", image_size: int = 32
    ) -> LoadTarget:
        """The target for an :class:`~deepedge.spec.AppSpec` whose server listens on ``port``
        (started with the same ``image_size``): the payload fits ``app.kind``."""
        return cls(
            app.name, host, port, app.rate_rps, image_size, kind_payload_bytes(app.kind, image_size)
        )


class LoadGenerator:
    """Drives ``targets`` with Poisson traffic from a child process; see the module doc.

    ``timeout_s`` bounds each request; ``max_connections`` caps the pool per app (beyond
    it requests wait for a free connection, still timed from their scheduled time);
    ``duration_s``, if given, makes the child stop sending on its own after that long.
    """

    def __init__(
        self,
        targets: list[LoadTarget],
        *,
        seed: int = 0,
        timeout_s: float = 10.0,
        max_connections: int = 32,
        duration_s: float | None = None,
        python: str = sys.executable,
        live_buffer: int = 100_000,
    ) -> None:
        if not targets:
            raise ValueError("LoadGenerator needs at least one target")
        if len({t.app for t in targets}) != len(targets):
            raise ValueError("target app names must be unique")
        if timeout_s <= 0 or max_connections < 1:
            raise ValueError("need timeout_s > 0 and max_connections >= 1")
        self.targets = list(targets)
        self.seed = seed
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.duration_s = duration_s
        self.python = python
        self.started_at: float | None = None
        """Wall-clock time the schedule starts from (set by :meth:`start`)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._records: list[RequestRecord] | None = None
        self._finalizer: weakref.finalize | None = None
        self._live: deque[RequestRecord] = deque(maxlen=live_buffer)
        self._live_lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The child's pid while started (for checks that it is gone after :meth:`stop`)."""
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        """Whether the child is still at work: started, not stopped, not exited. With
        ``duration_s`` (or schedules ending in a zero rate) it exits by itself once every
        request is sent and answered; :meth:`stop` then returns the records at once."""
        proc = self._proc
        return proc is not None and self._records is None and proc.poll() is None

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Launch the child and return once its schedule has started."""
        if self._proc is not None:
            raise ClusterError("load generator already started", hint="use a new LoadGenerator")
        self._dir = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX))
        config = {
            "targets": [asdict(t) for t in self.targets],
            "seed": self.seed,
            "timeout_s": self.timeout_s,
            "max_connections": self.max_connections,
            "duration_s": self.duration_s,
        }
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # so the child imports this deepedge
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        with open(self._dir / "stderr.txt", "wb") as err:
            self._proc = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "deepedge.apps.loadgen",
                    "--config",
                    json.dumps(config),
                    "--out",
                    str(self._dir / "records.npz"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        self._finalizer = weakref.finalize(self, _cleanup, self._proc, self._dir)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline() if ready else b""
        if not line:
            self._proc.kill()
            self._proc.wait()
            tail = self._stderr_tail()
            self._finalizer()
            raise ClusterError(
                f"load generator did not start within {timeout_s:g}s: {tail}",
                hint="is deepedge (and numpy) importable by the child python?",
            )
        self.started_at = float(json.loads(line)["t0"])
        threading.Thread(
            target=self._read_live, args=(self._proc.stdout,), daemon=True, name="loadgen-live"
        ).start()

    def _read_live(self, stdout: IO[bytes]) -> None:
        """Keep the child's live stream drained (a full pipe would block its event loop)."""
        names = [t.app for t in self.targets]
        with contextlib.suppress(OSError, ValueError):
            for line in stdout:
                msg = json.loads(line)
                recs = rows_to_records(names, msg["errors"], msg["rows"])
                with self._live_lock:
                    self._live.extend(recs)

    def set_rate(self, app: str, rate_rps: float) -> None:
        """Change ``app``'s mean request rate from its next request on (a load spike, or
        its end); the schedule stays Poisson and seeded."""
        if app not in {t.app for t in self.targets}:
            raise ClusterError(
                f"the load generator drives no app {app!r}",
                hint=f"use one of {sorted(t.app for t in self.targets)}",
            )
        if next(t for t in self.targets if t.app == app).schedule is not None:
            raise ValueError(f"app {app!r} follows a rate schedule; its rate cannot be set")
        if not (rate_rps > 0 and math.isfinite(rate_rps)):
            raise ValueError(f"rate_rps must be positive and finite, got {rate_rps}")
        proc = self._proc
        if proc is None or proc.stdin is None or self._records is not None:
            raise ClusterError("the load generator is not running", hint="call start() first")
        proc.stdin.write(json.dumps({"rate": {app: rate_rps}}).encode() + b"\n")
        proc.stdin.flush()

    def drain(self) -> list[RequestRecord]:
        """Requests completed since the last call, as they finish (every :data:`STREAM_S`).

        For live monitoring; the full, ordered record set still comes from :meth:`stop`.
        At most ``live_buffer`` undrained records are kept (the oldest are dropped).
        """
        with self._live_lock:
            out = list(self._live)
            self._live.clear()
        return out

    def stop(self, *, timeout_s: float | None = None) -> list[RequestRecord]:
        """Stop sending, wait for in-flight requests (up to the request timeout) and return
        every record, sorted by scheduled time. Calling it again returns the same list."""
        if self._records is not None:
            return self._records
        proc = self._proc
        if proc is None or self._dir is None:
            raise ClusterError("load generator was never started", hint="call start() first")
        wait_s = timeout_s if timeout_s is not None else self.timeout_s + 15.0
        with contextlib.suppress(OSError):  # already gone: EOF/parent checks did the job
            assert proc.stdin is not None
            proc.stdin.write(b"stop\n")
            proc.stdin.close()
        out = self._dir / "records.npz"
        try:
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                raise ClusterError(
                    f"load generator did not stop within {wait_s:g}s",
                    hint="records are lost; raise stop(timeout_s=...)",
                ) from None
            if not out.exists():
                raise ClusterError(
                    f"load generator exited with code {proc.returncode} "
                    f"without writing records: {self._stderr_tail()}"
                )
            self._records = load_records(out)
        finally:
            if self._finalizer is not None:
                self._finalizer()
        return self._records

    def _stderr_tail(self) -> str:
        assert self._dir is not None
        with contextlib.suppress(OSError):
            text = (self._dir / "stderr.txt").read_text(errors="replace").strip()
            return text[-800:].replace("\n", " | ") or "(empty stderr)"
        return "(no stderr)"

    def __enter__(self) -> LoadGenerator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._records is None:
            with contextlib.suppress(ClusterError):
                self.stop()


def _cleanup(proc: subprocess.Popen[bytes], directory: Path) -> None:
    """Kill the child if still running and remove its files (also runs at GC/exit)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------- child process side


class _Pool:
    """Persistent connections to one server; opens another when all are busy.

    The semaphore counts connections in use, and one is opened only when none is idle,
    so at most ``limit`` are ever open; beyond that a request waits for one.
    """

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.idle: list[_Conn] = []
        self.busy = asyncio.Semaphore(limit)

    async def acquire(self) -> _Conn:
        await self.busy.acquire()
        while self.idle:
            conn = self.idle.pop()
            if not conn[0].at_eof():
                return conn
            conn[1].close()  # the server closed it while idle (e.g. a keep-alive timeout)
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:
            self.busy.release()
            raise

    def release(self, conn: _Conn) -> None:
        self.idle.append(conn)
        self.busy.release()

    def discard(self, conn: _Conn) -> None:
        conn[1].close()
        self.busy.release()

    def close(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()


class _HttpStatus(Exception):
    """A complete HTTP reply other than 200: a failed request, on a reusable connection."""

    def __init__(self, status: int, reusable: bool) -> None:
        super().__init__(f"HTTP{status}")
        self.status = status
        self.reusable = reusable


def _http_request(target: LoadTarget, payload: bytes) -> bytes:
    """The whole HTTP/1.1 request for ``payload``: built once, sent as one write."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    head = (
        f"POST {target.path} HTTP/1.1\r\nHost: {host}:{target.port}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode("ascii") + payload


async def _http_exchange(conn: _Conn, message: bytes) -> tuple[float, bool]:
    """Send one request and read its reply: (service ms from the JSON body or NaN,
    whether the connection may be reused). Raises :class:`_HttpStatus` for a non-200."""
    reader, writer = conn
    writer.write(message)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head[:-4].split(b"\r\n")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP reply: {status_line[:60]!r}")
    status, length, reusable = int(parts[1]), None, parts[0] != b"HTTP/1.0"
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            reusable = value.strip().lower() != b"close"
    if length is None:  # no chunked replies expected: read to EOF, then the conn is done
        body, reusable = await reader.read(), False
    else:
        body = await reader.readexactly(length)
    if status != 200:
        raise _HttpStatus(status, reusable)
    try:
        service_ms = float(json.loads(body)["service_ms"])
    except (ValueError, KeyError, TypeError):
        service_ms = math.nan
    return service_ms, reusable


def image_payloads(path: str | Path, payload_bytes: int) -> list[bytes]:
    """Each image of an :class:`~deepedge.data.ArrayDataset` file as one request's bytes
    (``C×S×S`` uint8, the layout servers expect); read with numpy alone, so the load
    generator does not import torch. A file that cannot be read, or whose images are not
    ``payload_bytes`` each, is a ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile) as exc:
        # TypeError: a bare .npy array, which is not a data set file
        raise ValueError(f"cannot read images from {path}: {exc}") from None
    flat = images.reshape(len(images), -1)
    if images.dtype != np.uint8 or flat.shape[1] != payload_bytes or len(flat) == 0:
        raise ValueError(
            f"{path} holds {len(flat)} {images.dtype} images of {flat.shape[1]} bytes; "
            f"requests need uint8 images of {payload_bytes} bytes"
        )
    return [row.tobytes() for row in flat]


class _Run:
    """The child's state: schedules, in-flight requests and the records collected so far."""

    def __init__(self, cfg: dict) -> None:
        self.targets = [LoadTarget(**t) for t in cfg["targets"]]
        self.seed = int(cfg["seed"])
        self.timeout_s = float(cfg["timeout_s"])
        self.duration_s = cfg.get("duration_s")
        self.pools = [_Pool(t.host, t.port, int(cfg["max_connections"])) for t in self.targets]
        self.rates = [t.rate_rps for t in self.targets]  # changed by the parent while running
        rng = np.random.default_rng([self.seed, 1 << 20])
        self.messages: list[list[bytes]] = []
        for t in self.targets:
            assert t.payload_bytes is not None
            payloads = (
                image_payloads(t.images, t.payload_bytes)
                if t.images
                else [rng.integers(0, 256, t.payload_bytes, np.uint8).tobytes()]
            )
            http = t.protocol == "http"
            self.messages.append(
                [_http_request(t, p) if http else HEADER.pack(len(p)) + p for p in payloads]
            )
        self.sent = [0] * len(self.targets)  # requests sent per target: the next image
        # Stops by itself: every target's sending ends (a duration, or a schedule ending at 0).
        self.finite = bool(self.duration_s) or all(
            t.schedule is not None and t.schedule[-1][1] == 0 for t in self.targets
        )
        self.inflight: set[asyncio.Task[None]] = set()
        # Flat rows of (app, scheduled, sent, done, service_ms, error index or -1): 48 bytes
        # a request, so hours of load stay small.
        self.rows = array("d")
        self.streamed = 0  # rows already sent to the parent's live stream
        self.errors: dict[str, int] = {}
        self.t0_wall = time.time()
        self.t0_mono = time.monotonic()

    def wall(self, mono: float) -> float:
        # One clock pair for the whole run: immune to wall-clock steps mid-run.
        return self.t0_wall + (mono - self.t0_mono)

    def launch(self, i: int, scheduled: float) -> None:
        task = asyncio.create_task(self.request(i, scheduled))
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)

    async def schedule(self, i: int) -> None:
        rng = np.random.default_rng([self.seed, i])
        steps = self.targets[i].schedule
        if steps is not None:
            end_s = self.duration_s if self.duration_s else math.inf
            for offset in schedule_arrivals(steps, rng, end_s=end_s):
                t = self.t0_mono + offset
                delay = t - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.launch(i, t)
            return
        end = self.t0_mono + self.duration_s if self.duration_s else math.inf
        t = self.t0_mono
        while True:
            for gap in rng.exponential(1.0, 256).tolist():
                t += gap / self.rates[i]
                if t >= end:
                    return
                delay = t - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.launch(i, t)

    async def request(self, i: int, scheduled: float) -> None:
        pool, sent, svc, err, conn = self.pools[i], math.nan, math.nan, None, None
        http = self.targets[i].protocol == "http"
        message = self.messages[i][self.sent[i] % len(self.messages[i])]
        self.sent[i] += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = await pool.acquire()
                sent = time.monotonic()
                if http:
                    svc, reusable = await _http_exchange(conn, message)
                else:
                    conn[1].write(message)
                    await conn[1].drain()
                    reply = await conn[0].readexactly(REPLY.size)
                    svc, reusable = REPLY.unpack(reply)[1] / 1000.0, True
            if reusable:
                pool.release(conn)
                conn = None
        except _HttpStatus as e:  # answered, but not served: a failure named by its status
            err = str(e)
            if e.reusable and conn is not None:
                pool.release(conn)
                conn = None
        except asyncio.CancelledError:
            err = "stopped before reply"
            raise
        except Exception as e:  # refused, reset, closed, TimeoutError...: a failed request
            err = type(e).__name__
        finally:
            if conn is not None:
                pool.discard(conn)
            code = -1 if err is None else self.errors.setdefault(err, len(self.errors))
            self.rows.extend(
                (i, self.wall(scheduled), self.wall(sent), self.wall(time.monotonic()), svc, code)
            )

    def stream(self) -> None:
        """Send the rows completed since the last call to the parent (one JSON line)."""
        if len(self.rows) == self.streamed:
            return
        new = self.rows[self.streamed :].tolist()
        self.streamed = len(self.rows)
        errors = sorted(self.errors, key=self.errors.__getitem__)
        with contextlib.suppress(OSError):  # the parent stopped reading: records still saved
            print(json.dumps({"rows": new, "errors": errors}), flush=True)

    async def run(self, out: Path) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        parent, orphaned = os.getppid(), threading.Event()

        def read_stdin() -> None:
            """JSON lines change rates; any other line means stop; EOF without a stop
            line: the parent died."""
            # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader can
            # abort interpreter shutdown when the parent vanished without closing the pipe.
            buffered, stopped = b"", False
            with contextlib.suppress(OSError):
                while not stopped and (chunk := os.read(0, 4096)):
                    buffered += chunk
                    *lines, buffered = buffered.split(b"\n")
                    for line in lines:
                        if not line.startswith(b"{"):
                            stopped = True
                            break
                        change = json.loads(line).get("rate", {})
                        names = [t.app for t in self.targets]
                        for app, rate in change.items():
                            self.rates[names.index(app)] = float(rate)
            if not stopped:
                orphaned.set()
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=read_stdin, daemon=True).start()
        schedulers = [asyncio.create_task(self.schedule(i)) for i in range(len(self.targets))]
        print(json.dumps({"t0": self.t0_wall, "pid": os.getpid()}), flush=True)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=STREAM_S)
                if os.getppid() != parent:  # re-parented: the parent died without EOF
                    orphaned.set()
                    break
                self.stream()
                if self.finite and all(s.done() for s in schedulers) and not self.inflight:
                    break
        finally:
            for s in schedulers:
                s.cancel()
            if self.inflight:
                _, pending = await asyncio.wait(set(self.inflight), timeout=self.timeout_s + 1)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            for pool in self.pools:
                pool.close()
            if not orphaned.is_set():
                save_records(out, [t.app for t in self.targets], list(self.errors), self.rows)
            elif out.parent.name.startswith(_TMP_PREFIX):  # nobody will read it: clean up
                shutil.rmtree(out.parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Child entry point (internal): ``--config JSON --out PATH``.

    stdin must be a pipe from the parent: a JSON line ``{"rate": {app: rps}}`` changes
    rates, any other line means "stop and save"; EOF without one means the parent died, so
    the child exits without saving.
    """
    p = argparse.ArgumentParser(prog="python -m deepedge.apps.loadgen")
    p.add_argument("--config", required=True, help="JSON: targets, seed, timeout_s, ...")
    p.add_argument("--out", required=True, help="where to write the records (.npz)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    asyncio.run(_Run(json.loads(args.config)).run(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
