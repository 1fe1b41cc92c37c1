"""The serving front end: one HTTP endpoint that routes each request to a model replica.

Replicas (:mod:`deepedge.serving.replica`) run inside emulated edge devices, each with its
own CPU share; the front end runs on the host as its own process::

    DEEPEDGE_FRONTEND_TOKEN=... python -m deepedge.serving.frontend --ready-file fe.json

It is a raw ASGI 3 app (no framework: every request pays for the path it takes) served by
uvicorn on uvloop with the httptools parser, one worker, no access log. Endpoints:

* ``POST /predict``: the body is one image, ``C×S×S`` uint8 bytes. The reply is
  ``{"class": k, "replica": name, "service_ms": x}``; 400 for a body of the wrong length,
  503 while no replica is registered, 502 when the connection to a replica fails and the
  one retry on another replica fails too, 504 past the per-request timeout.
* ``PUT /admin/replicas`` ``{"payload_bytes": N, "replicas": [{"name", "host", "port",
  "weight"}, ...]}`` replaces the routing set atomically. A replica left out gets no new
  requests but finishes those it has (it *drains*), then is forgotten.
* ``GET /admin/replicas``: ``{"payload_bytes": N, "replicas": [{"name", "host", "port",
  "weight", "outstanding", "served", "failed", "draining"}, ...]}``, draining ones too.
* ``GET /healthz``: ``ok``, without a token.

Admin calls need ``Authorization: Bearer <token>``, the token coming from the environment
variable :data:`TOKEN_ENV` (never the command line, which other users can read in ``ps``).

Routing is *shortest expected delay*: the replica with the least ``(outstanding + 1) /
weight`` wins, weight being its capacity (e.g. requests/ms it can serve); among equals the
scan starts one further each time, so ties go round-robin. It is join-shortest-queue
weighted by capacity, counting the new request too, so that an idle slow replica does not
tie with an idle fast one. Each replica has a pool of persistent TCP connections speaking
the LC apps' binary protocol (:data:`~deepedge.apps.server.HEADER`, image,
:data:`~deepedge.apps.server.REPLY`), one request per connection at a time. A connection
that fails (refused, reset, closed before the reply) sets the replica aside for
:data:`EJECT_S` (doubling up to :data:`EJECT_MAX_S` while it keeps failing) and the request
is retried once on another replica, so a dying replica loses no request while others are up.

:class:`FrontendProcess` starts and drives the process from Python with the standard
library only; :func:`predict` sends one image.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import http.client
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepedge.apps.server import HEADER, REPLY, _watch_parent, _write_ready
from deepedge.errors import ClusterError

if TYPE_CHECKING:
    import uvicorn

__all__ = [
    "EJECT_MAX_S",
    "EJECT_S",
    "TOKEN_ENV",
    "FrontendApp",
    "FrontendProcess",
    "ReplicaAddress",
    "main",
    "predict",
]

TOKEN_ENV = "DEEPEDGE_FRONTEND_TOKEN"
"""Environment variable holding the admin token of a front-end process."""
REQUEST_TIMEOUT_S = 10.0
"""Default bound on one ``/predict`` request, both attempts included (then 504)."""
MAX_CONNECTIONS = 64
"""Default cap on connections per replica: a replica serves one request at a time anyway,
so more would only queue in its socket buffers instead of here, where they are counted."""
EJECT_S = 0.25
"""How long a replica is set aside after its connection failed (it may be restarting)."""
EJECT_MAX_S = 8.0
"""The longest it is set aside while it keeps failing."""
_ADMIN_BODY_MAX = 1 << 20
_JSON = b"application/json"

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ReplicaAddress:
    """Where a replica listens and its routing weight (its capacity: > 0, relative)."""

    name: str
    host: str
    port: int
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"replica name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"replica {self.name}: host must be a non-empty string")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"replica {self.name}: port must be an int, got {self.port!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"replica {self.name}: port must be in 1..65535, got {self.port}")
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"replica {self.name}: weight must be a number, got {weight!r}")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"replica {self.name}: weight must be positive, got {weight}")


# ---------------------------------------------------------------- routing (in the process)


class _ReplicaFailed(Exception):
    """The connection to a replica failed before its reply: the request may be retried."""


class _Replica:
    """One replica's counters and connection pool, as the router sees it."""

    def __init__(self, address: ReplicaAddress, max_connections: int) -> None:
        self.address = address
        self.name = address.name
        self.weight = float(address.weight)
        self.outstanding = 0
        self.served = 0
        self.failed = 0
        self.draining = False
        self.down_until = 0.0  # monotonic time before which it is only a last resort
        self.backoff = 0.0
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def call(self, message: bytes) -> tuple[int, int]:
        """Send one framed request, return (class, service µs). Raises OSError or
        IncompleteReadError when the connection fails; on any failure (also a timeout's
        cancellation) the connection is closed, since a late reply would desync it."""
        async with self.slots:
            conn = None
            while self.idle and conn is None:
                conn = self.idle.pop()
                if conn[0].at_eof():  # the replica closed it while idle
                    conn[1].close()
                    conn = None
            if conn is None:
                conn = await asyncio.open_connection(self.address.host, self.address.port)
            ok = False
            try:
                # No drain(): one request per connection, so the transport's buffer holds
                # at most this message and the reply read below is the flow control.
                conn[1].write(message)
                reply = await conn[0].readexactly(REPLY.size)
                ok = True
            finally:
                if ok and not self.draining:
                    self.idle.append(conn)
                else:
                    conn[1].close()
        cls, service_us = REPLY.unpack(reply)
        return cls, service_us

    def mark_failed(self) -> None:
        """Set the replica aside for a while and drop its idle connections, which are most
        likely dead too (it crashed or restarted)."""
        self.failed += 1
        self.backoff = min(EJECT_MAX_S, self.backoff * 2) if self.backoff else EJECT_S
        self.down_until = time.monotonic() + self.backoff
        self.close_idle()

    def mark_ok(self) -> None:
        self.served += 1
        if self.backoff:
            self.backoff = 0.0
            self.down_until = 0.0

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop()[1].close()

    def stats(self) -> dict[str, Any]:
        return {
            **asdict(self.address),
            "weight": self.weight,
            "outstanding": self.outstanding,
            "served": self.served,
            "failed": self.failed,
            "draining": self.draining,
        }


class _Router:
    """The routing set, the draining replicas and the choice between them."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self.active: list[_Replica] = []
        self.draining: list[_Replica] = []
        self.payload_bytes: int | None = None
        self._next = 0  # where the next scan starts: round-robin among ties

    def pick(self, exclude: _Replica | None = None) -> _Replica | None:
        """The replica with the least ``(outstanding + 1) / weight``, ties round-robin;
        set-aside replicas only when no other is left. ``None`` if none but ``exclude``."""
        replicas = self.active
        n = len(replicas)
        if n == 0:
            return None
        start = self._next % n
        self._next = start + 1
        now = time.monotonic()
        best: _Replica | None = None
        best_score = math.inf
        fallback: _Replica | None = None
        fallback_score = math.inf
        for k in range(n):
            r = replicas[(start + k) % n]
            if r is exclude:
                continue
            score = (r.outstanding + 1) / r.weight
            if r.down_until > now:
                if score < fallback_score:
                    fallback, fallback_score = r, score
            elif score < best_score:
                best, best_score = r, score
        return best if best is not None else fallback

    def replace(self, payload_bytes: int, addresses: list[ReplicaAddress]) -> None:
        """Make ``addresses`` the routing set in one step (no await: no request sees half
        of it). A replica kept at the same address keeps its counters and connections; one
        left out (or moved) drains; a draining one listed again is routed to again."""
        current = {r.name: r for r in self.active}
        returning = {(r.name, r.address.host, r.address.port): r for r in self.draining}
        active: list[_Replica] = []
        for addr in addresses:
            old = current.get(addr.name)
            if old is not None and (old.address.host, old.address.port) == (addr.host, addr.port):
                del current[addr.name]
                kept = old
            else:
                back = returning.pop((addr.name, addr.host, addr.port), None)
                kept = back if back is not None else _Replica(addr, self.max_connections)
                kept.draining = False
            kept.weight = float(addr.weight)
            kept.address = addr
            active.append(kept)
        leaving = list(current.values())
        for r in leaving:
            r.draining = True
            r.close_idle()
        self.draining = [r for r in self.draining if r not in active] + leaving
        self.active = active
        self.payload_bytes = payload_bytes
        self.reap()

    def reap(self) -> None:
        """Forget draining replicas with nothing left in flight."""
        if any(r.outstanding == 0 for r in self.draining):
            for r in self.draining:
                if r.outstanding == 0:
                    r.close_idle()
            self.draining = [r for r in self.draining if r.outstanding > 0]

    def stats(self) -> dict[str, Any]:
        return {
            "payload_bytes": self.payload_bytes,
            "replicas": [r.stats() for r in (*self.active, *self.draining)],
        }


class FrontendApp:
    """The ASGI 3 application; see the module doc for its endpoints.

    ``timeout_s`` bounds each ``/predict`` request (both attempts); ``max_connections``
    caps each replica's connection pool.
    """

    def __init__(
        self,
        token: str,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if not token:
            raise ValueError("the front end needs a non-empty admin token")
        if not (timeout_s > 0 and math.isfinite(timeout_s)) or max_connections < 1:
            raise ValueError("need timeout_s > 0 and max_connections >= 1")
        self._auth = b"Bearer " + token.encode()
        self.timeout_s = timeout_s
        self.router = _Router(max_connections)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return  # run with lifespan="off"; nothing else is spoken here
        path, method = scope["path"], scope["method"]
        if path == "/predict":
            if method != "POST":
                await _respond(send, 405, _error("use POST /predict"))
                return
            await self._predict(receive, send)
        elif path == "/healthz":
            await _respond(send, 200, b"ok", b"text/plain")
        elif path == "/admin/replicas":
            if not self._authorized(scope):
                await _respond(send, 401, _error("missing or wrong bearer token"))
            elif method == "GET":
                await _respond(send, 200, json.dumps(self.router.stats()).encode())
            elif method == "PUT":
                await self._put_replicas(receive, send)
            else:
                await _respond(send, 405, _error("use GET or PUT /admin/replicas"))
        else:
            await _respond(send, 404, _error(f"no endpoint {path}"))

    def _authorized(self, scope: _Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._auth)
        return False

    async def _predict(self, receive: _Receive, send: _Send) -> None:
        router = self.router
        expected = router.payload_bytes
        if not router.active or expected is None:
            await _respond(send, 503, _error("no replica registered"))
            return
        body = await _read_body(receive, expected)
        if body is None or len(body) != expected:
            got = f"more than {expected}" if body is None else str(len(body))
            # The rest of an over-long body is unread: close rather than parse it as a request.
            await _respond(
                send,
                400,
                _error(f"body must be one image of {expected} bytes, got {got}"),
                close=body is None,
            )
            return
        status, reply = await self._route(HEADER.pack(expected) + body)
        await _respond(send, status, reply)

    async def _route(self, message: bytes) -> tuple[int, bytes]:
        """Serve one framed request: the chosen replica, or once more on another one when
        its connection fails. Returns (HTTP status, JSON body)."""
        first = self.router.pick()
        if first is None:
            return 503, _error("no replica registered")
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    return 200, await self._attempt(first, message)
                except _ReplicaFailed as exc:
                    failure = exc
                # A prediction has no side effect, so sending it again is safe even if the
                # first replica computed it before its connection broke.
                second = self.router.pick(exclude=first) or first
                try:
                    return 200, await self._attempt(second, message)
                except _ReplicaFailed as exc:
                    return 502, _error(f"replica connections failed ({failure}; {exc})")
        except TimeoutError:
            return 504, _error(f"no reply within {self.timeout_s:g}s")

    async def _attempt(self, replica: _Replica, message: bytes) -> bytes:
        replica.outstanding += 1
        try:
            cls, service_us = await replica.call(message)
        except (OSError, asyncio.IncompleteReadError) as exc:
            replica.mark_failed()
            raise _ReplicaFailed(f"{replica.name}: {type(exc).__name__}") from exc
        except asyncio.CancelledError:  # the request timed out (or the server is stopping)
            replica.failed += 1
            raise
        finally:
            replica.outstanding -= 1
            if replica.draining and replica.outstanding == 0:
                self.router.reap()
        replica.mark_ok()
        return b'{"class": %d, "replica": %s, "service_ms": %.3f}' % (
            cls,
            json.dumps(replica.name).encode(),
            service_us / 1000.0,
        )

    async def _put_replicas(self, receive: _Receive, send: _Send) -> None:
        body = await _read_body(receive, _ADMIN_BODY_MAX)
        if body is None:
            await _respond(send, 413, _error("body too large"), close=True)
            return
        try:
            payload_bytes, addresses = _parse_replicas(body)
        except ValueError as exc:
            await _respond(send, 400, _error(str(exc)))
            return
        self.router.replace(payload_bytes, addresses)
        await _respond(send, 200, json.dumps(self.router.stats()).encode())


def _parse_replicas(body: bytes) -> tuple[int, list[ReplicaAddress]]:
    """The routing set a ``PUT /admin/replicas`` body asks for; ValueError if malformed."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("replicas"), list):
        raise ValueError('body must be {"payload_bytes": N, "replicas": [...]}')
    n = data.get("payload_bytes")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n < 2**32:
        raise ValueError(f"payload_bytes must be an int in 1..2**32-1, got {n!r}")
    addresses = []
    for item in data["replicas"]:
        if not isinstance(item, dict):
            raise ValueError(f"each replica must be an object, got {item!r}")
        unknown = set(item) - {"name", "host", "port", "weight"}
        if unknown:
            raise ValueError(f"unknown replica fields {sorted(unknown)}")
        try:
            addresses.append(ReplicaAddress(**item))
        except TypeError as exc:
            raise ValueError(f"replica {item!r}: {exc}") from None
    names = [a.name for a in addresses]
    if len(set(names)) != len(names):
        raise ValueError(f"replica names must be unique, got {names}")
    return n, addresses


async def _read_body(receive: _Receive, limit: int) -> bytes | None:
    """The request body, or ``None`` once it exceeds ``limit`` bytes (or the client left)."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body if len(body) <= limit else None
    chunks, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(text: str) -> bytes:
    return json.dumps({"error": text}).encode()


async def _respond(
    send: _Send, status: int, body: bytes, content_type: bytes = _JSON, *, close: bool = False
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- the process


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket, so the ready file can report the port the kernel picked for 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _server(
    config: uvicorn.Config, on_ready: Callable[[], None], parent_pid: int | None
) -> uvicorn.Server:
    """uvicorn's server, writing the ready file once it serves and stopping on SIGTERM,
    SIGINT or the parent's death. Built here so importing this module (for the client)
    does not import uvicorn."""
    import uvicorn

    class _Uvicorn(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises a captured SIGTERM after shutdown, which would end the
            # process by the signal (exit -15); a supervised process should exit 0.
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.started:
                return
            on_ready()
            if parent_pid:
                stop = asyncio.Event()
                self._watchers = (
                    asyncio.create_task(_watch_parent(parent_pid, stop)),
                    asyncio.create_task(self._exit_when(stop)),
                )

        async def _exit_when(self, stop: asyncio.Event) -> None:
            await stop.wait()
            self.should_exit = True

    return _Uvicorn(config)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m deepedge.serving.frontend",
        description=f"Route HTTP predictions to model replicas (admin token in ${TOKEN_ENV}).",
    )
    p.add_argument("--ready-file", required=True, help="where to write {port, pid} once serving")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free ephemeral port")
    p.add_argument("--timeout-s", type=float, default=REQUEST_TIMEOUT_S, help="per request")
    p.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, help="per replica")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this pid is gone")
    args = p.parse_args(argv)
    if not 0 <= args.port < 65536 or not args.timeout_s > 0 or args.max_connections < 1:
        p.error("need 0 <= --port < 65536, --timeout-s > 0 and --max-connections >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 on SIGTERM/SIGINT, 2 without a token)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    args = _parse(argv)
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        print(f"front end: set ${TOKEN_ENV} to the admin token", file=sys.stderr, flush=True)
        return 2
    import uvicorn

    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        reason = exc.strerror or exc
        print(f"front end: cannot listen on {args.host}:{args.port}: {reason}", file=sys.stderr)
        return 1
    app = FrontendApp(token, timeout_s=args.timeout_s, max_connections=args.max_connections)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
        timeout_keep_alive=120,  # clients keep connections across idle gaps of a trace
        timeout_graceful_shutdown=3,
        workers=1,
    )
    ready = {"port": sock.getsockname()[1], "pid": os.getpid(), "host": args.host}
    server = _server(config, lambda: _write_ready(Path(args.ready_file), ready), args.parent_pid)
    server.run(sockets=[sock])
    return 0


# ---------------------------------------------------------------- the client (stdlib only)


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def predict(url: str, image_bytes: bytes, *, timeout_s: float = REQUEST_TIMEOUT_S) -> int:
    """The class the front end at ``url`` (``http://host:port``) returns for one image.

    Raises :class:`~deepedge.errors.ClusterError` with the status and reason on a
    non-200 reply or when the front end cannot be reached.
    """
    request = urllib.request.Request(
        url.rstrip("/") + "/predict",
        data=bytes(image_bytes),
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return int(json.loads(reply.read())["class"])
    except urllib.error.HTTPError as exc:
        raise ClusterError(
            f"front end {url} answered {exc.code}: {_reason(exc.read())}",
            hint="400: wrong image size; 503: no replica registered; 502/504: replicas failing",
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClusterError(
            f"cannot reach the front end at {url}: {reason}", hint="is it running?"
        ) from None


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace") or "(no body)"


class FrontendProcess:
    """Starts ``python -m deepedge.serving.frontend`` with a fresh random admin token and
    drives it over HTTP (standard library only).

    Its output goes to ``log_path`` (default: a temporary file removed by :meth:`stop`).
    The process is told our pid, so it exits if we die without stopping it.
    """

    def __init__(
        self,
        python: str = sys.executable,
        log_path: str | Path | None = None,
        host: str = "127.0.0.1",
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.python = python
        self.log_path = Path(log_path) if log_path is not None else None
        self.host = host
        self.request_timeout_s = request_timeout_s
        self._token = ""
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise ClusterError("the front end is not started", hint="call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{_host_for_url(self.host)}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _log(self) -> Path:
        assert self._dir is not None
        return self.log_path if self.log_path is not None else self._dir / "frontend.log"

    def start(self, timeout_s: float = 30.0) -> FrontendProcess:
        """Launch the process and return once it serves; raise a one-line ClusterError
        (with the tail of its log) if it exits or stays silent for ``timeout_s``."""
        if self._proc is not None:
            raise ClusterError("front end already started", hint="use a new FrontendProcess")
        self._dir = Path(tempfile.mkdtemp(prefix="deepedge-frontend-"))
        ready = self._dir / "ready.json"
        self._token = secrets.token_urlsafe(32)
        env = dict(os.environ)
        env[TOKEN_ENV] = self._token
        src = str(Path(__file__).resolve().parents[2])  # so the child imports this deepedge
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        cmd = [
            self.python,
            "-m",
            "deepedge.serving.frontend",
            "--ready-file",
            str(ready),
            "--host",
            self.host,
            "--timeout-s",
            str(self.request_timeout_s),
            "--parent-pid",
            str(os.getpid()),
        ]
        with open(self._log(), "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self._finalizer = weakref.finalize(self, _cleanup, self._proc, self._dir)
        deadline = time.monotonic() + timeout_s
        delay = 0.01
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError):
                self._port = int(json.loads(ready.read_text())["port"])
                return self
            rc = self._proc.poll()
            if rc is not None or time.monotonic() >= deadline:
                why = f"exited with code {rc}" if rc is not None else f"not up in {timeout_s:g}s"
                from deepedge.cluster.workers import log_tail  # client side only, on failure

                tail = log_tail(self._log(), 5)
                self.stop()
                raise ClusterError(
                    f"serving front end {why}: {tail}",
                    hint="are uvicorn, uvloop and httptools installed for that python?",
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.request_timeout_s)
        headers = {"Authorization": f"Bearer {self._token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            reply = conn.getresponse()
            raw = reply.read()
        except OSError as exc:
            raise ClusterError(
                f"front end {self.url} did not answer {method} {path}: {exc}",
                hint="is it still running? see its log",
            ) from None
        finally:
            conn.close()
        if reply.status != 200:
            raise ClusterError(
                f"front end refused {method} {path} ({reply.status}): {_reason(raw)}"
            )
        return json.loads(raw)

    def set_replicas(self, payload_bytes: int, replicas: Iterable[ReplicaAddress]) -> None:
        """Route to exactly ``replicas`` from now on (the others drain)."""
        self._call(
            "PUT",
            "/admin/replicas",
            {"payload_bytes": payload_bytes, "replicas": [asdict(r) for r in replicas]},
        )

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per replica name: host, port, weight, outstanding, served, failed, draining.

        A name both routed to and draining (its replica moved to a new port) shows the
        routed one."""
        out: dict[str, dict[str, Any]] = {}
        for r in self._call("GET", "/admin/replicas")["replicas"]:
            if r["name"] not in out or not r["draining"]:
                out[r["name"]] = r
        return out

    def wait_drained(self, names: Iterable[str], timeout_s: float = 30.0) -> None:
        """Wait until none of ``names`` is draining (their in-flight requests finished),
        so their processes can be stopped without failing a request."""
        wanted = set(names)
        deadline = time.monotonic() + timeout_s
        delay = 0.01
        while True:
            replicas = self._call("GET", "/admin/replicas")["replicas"]
            busy = sorted({r["name"] for r in replicas if r["draining"] and r["name"] in wanted})
            if not busy:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"replicas {', '.join(busy)} still have requests in flight after "
                    f"{timeout_s:g}s",
                    hint="a replica that stopped answering drains only at the request timeout",
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; removes the temporary files."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> FrontendProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cleanup(proc: subprocess.Popen[bytes], directory: Path) -> None:
    """Kill the process if still running and remove its files (also at GC/exit)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
