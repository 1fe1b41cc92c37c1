"""The latency-critical (LC) app servers that share an edge device with training.

Each is a real process (run inside the device's cgroup) serving requests over TCP, so the
contention re-training causes shows up as real queueing and throttling delay, not as a
model of it. Requests are served one at a time in arrival order on the event-loop thread,
as on a real single-instance edge service: queueing is part of the latency.

``--kind`` picks what a request costs, so that each app feels a different resource
squeezed (see :data:`deepedge.apps.APP_KINDS`):

* ``cnn_inference``: a small CNN on a 3×S×S image (CPU-bound; torch).
* ``kv_lookup``: gathers :data:`KV_KEYS` random values from a ``--table-mb`` table and sums
  them (memory-bound: almost every access misses the cache).
* ``log_ingest``: appends the payload to a write-ahead log in ``--data-dir`` and makes it
  durable with ``os.fsync`` before replying (disk-bound).
* ``frame_relay``: takes a large frame (:func:`payload_bytes`, 48 KiB at S=32) and
  checksums it (network-bound: moving the bytes dominates).

Run it as::

    python -m deepedge.apps.server --kind cnn_inference --name cam --ready-file /tmp/cam.json

When the app is warm and the socket bound it writes ``{"port": N, "pid": PID, ...}`` to
the ready file atomically, which :func:`deepedge.apps.wait_ready` waits for.

Wire protocol, the same for every kind (persistent TCP connections, any number of them):
the client sends a 4-byte big-endian length followed by exactly
:func:`payload_bytes` ``(kind, S)`` bytes; the server replies with :data:`REPLY` = (class
``int32``, server-side service time in µs ``uint32``). The class is the CNN's prediction,
a value derived from the lookup or checksum, or for ``log_ingest`` 0 once the record is
durable and -1 if writing it failed. A request of the wrong length closes that
connection; the server keeps serving the others.

Only ``cnn_inference`` imports torch (and only ``kv_lookup`` numpy), inside its handler,
so that importing this module (e.g. for the protocol constants) stays cheap, the other
kinds start fast in little memory, and the SIGTERM handler is in place before the slow
torch import, which can take many seconds under a small CPU quota.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from deepedge.apps import APP_KINDS

if TYPE_CHECKING:
    import torch

__all__ = [
    "FRAME_SCALE",
    "HEADER",
    "KV_KEYS",
    "LOG_ROTATE_BYTES",
    "NUM_CLASSES",
    "REPLY",
    "WIDTH",
    "build_model",
    "main",
    "payload_bytes",
    "request_bytes",
    "service_us_since",
]

HEADER = struct.Struct(">I")
"""Request header: payload length in bytes (big-endian uint32)."""
REPLY = struct.Struct(">iI")
"""Reply: class (int32) and server-side service time in µs (uint32)."""
NUM_CLASSES = 10
WIDTH = 32
"""Channel width of the first stage; 32 gives ~1.3 ms of CPU per 32×32 image on one core."""
KV_KEYS = 98_304
"""Values a ``kv_lookup`` request gathers: ~0.7 ms on one core with a 64 MB table, of which
~0.6 ms is waiting on cache misses (the same gather from a 1 MB, in-cache table: ~90 µs)."""
FRAME_SCALE = 4
"""A ``frame_relay`` frame is a 3×(4S)×(4S) image: 48 KiB at S=32, 16× an inference crop."""
LOG_ROTATE_BYTES = 64 * 2**20
"""``log_ingest`` restarts its log file before it would grow past this, so it never fills
the disk however long the load runs."""


def request_bytes(image_size: int) -> int:
    """Payload size of one ``cnn_inference`` request for ``image_size``: a 3×S×S uint8 image."""
    return 3 * image_size * image_size


def payload_bytes(kind: str, image_size: int = 32) -> int:
    """Payload size of one request to a ``kind`` server run with ``--image-size image_size``.

    3×S×S for all kinds but ``frame_relay``, whose frames are ``FRAME_SCALE**2`` = 16 times
    larger (48 KiB at S=32), so that moving them over the link dominates its latency.
    """
    if kind not in APP_KINDS:
        raise ValueError(f"unknown LC app kind {kind!r}; known: {', '.join(APP_KINDS)}")
    if kind == "frame_relay":
        return request_bytes(FRAME_SCALE * image_size)
    return request_bytes(image_size)


def build_model(image_size: int = 32, *, seed: int = 0, width: int = WIDTH) -> torch.nn.Module:
    """The served CNN: five 3×3 conv-BN-ReLU layers in three stages, then a linear head.

    Weights are random (seeded): the app exists to load the device realistically, not to
    be accurate. Global average pooling makes it work for any ``image_size`` ≥ 4.
    """
    import torch
    from torch import nn

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]

    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    torch.manual_seed(seed)
    w = width
    return nn.Sequential(
        *block(3, w),
        *block(w, w),
        nn.MaxPool2d(2),
        *block(w, 2 * w),
        *block(2 * w, 2 * w),
        nn.MaxPool2d(2),
        *block(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, NUM_CLASSES),
    ).eval()


# ---------------------------------------------------------------- one handler per kind


def service_us_since(t0: float) -> int:
    """Microseconds since ``perf_counter()`` was ``t0``, as :data:`REPLY` carries them
    (at least 1, at most its uint32's maximum)."""
    return min(max(int((time.perf_counter() - t0) * 1e6), 1), 2**32 - 1)


class _Handler:
    """What one request of a kind costs: :meth:`process` does the work, :meth:`handle`
    times it. The constructor does the slow set-up (imports, allocation) before the
    server reports ready; :meth:`close` undoes what must not outlive the process."""

    kind: ClassVar[str]

    def __init__(self, args: argparse.Namespace) -> None:
        self.nbytes = payload_bytes(self.kind, args.image_size)

    def process(self, payload: bytes) -> int:
        """Serve one request; return its reply class."""
        raise NotImplementedError

    def handle(self, payload: bytes) -> tuple[int, int]:
        """Serve one request; return (class, service time in µs, at least 1)."""
        t0 = time.perf_counter()
        return self.process(payload), service_us_since(t0)

    async def serve(self, payload: bytes) -> tuple[int, int]:
        """What the server awaits per request: :meth:`handle`, on the event-loop thread. A
        handler that waits on another server (MEANet's edge asking the cloud) overrides
        it, so other connections' requests are served meanwhile."""
        return self.handle(payload)

    def warm_up(self, n: int) -> None:
        """Serve ``n`` (at least 1) blank requests, so the first real one is not slow."""
        blank = bytes(self.nbytes)
        for _ in range(max(n, 1)):
            self.handle(blank)

    def close(self) -> None:
        """Release what the handler holds; safe to call more than once."""

    def info(self) -> dict[str, Any]:
        """Kind-specific facts for the ready file."""
        return {}


class _CnnInference(_Handler):
    """CPU-bound: one forward pass of :func:`build_model` per image, on ``--threads``."""

    kind = "cnn_inference"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        import torch

        torch.set_num_threads(args.threads)
        with contextlib.suppress(RuntimeError):  # only settable before first parallel work
            torch.set_num_interop_threads(1)
        self.image_size = args.image_size
        self.model = build_model(args.image_size, seed=args.seed)

    def process(self, payload: bytes) -> int:
        import torch

        x = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        x = x.view(1, 3, self.image_size, self.image_size).float().div_(255.0)
        with torch.inference_mode():
            return int(self.model(x).argmax(dim=1).item())


class _KvLookup(_Handler):
    """Memory-bound: a feature-store lookup of :data:`KV_KEYS` random keys, summed.

    The table (``--table-mb`` of float32, seeded) is far larger than a device's cache, and
    each key lands in a different cache line, so nearly all the time is DRAM latency: the
    app slows down when a co-runner evicts its cache lines or saturates memory bandwidth,
    not merely when it loses CPU time. The client sends the same payload every time, so
    the keys cannot come from it; they are a random window of a pool drawn at start-up,
    which keeps random-number generation out of the measured work.
    """

    kind = "kv_lookup"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        import numpy as np

        rng = np.random.default_rng([args.seed, 0x6B76])
        n = args.table_mb * 2**20 // 4
        self.table = rng.random(n, dtype=np.float32)  # writing it also faults every page in
        self.keys = rng.integers(0, n, max(4 * KV_KEYS, 2**20), dtype=np.intp)
        self.values = np.empty(KV_KEYS, dtype=np.float32)
        self.window = random.Random(args.seed)

    def info(self) -> dict[str, Any]:
        return {"table_mb": self.table.nbytes / 2**20, "keys": KV_KEYS}

    def process(self, payload: bytes) -> int:
        start = self.window.randrange(len(self.keys) - KV_KEYS + 1)
        # mode='wrap': the keys are in range, and 'raise' would buffer the output (a copy)
        self.table.take(self.keys[start : start + KV_KEYS], out=self.values, mode="wrap")
        return int(self.values.sum()) % NUM_CLASSES


class _LogIngest(_Handler):
    """Disk-bound: a write-ahead log that makes each record durable before acking it.

    Each payload is appended as one length-prefixed record and ``os.fsync``-ed, so the
    latency follows the device's storage (and whoever else writes to it, e.g. training
    checkpoints). The log is load, not data: it starts empty and is truncated before it
    would exceed :data:`LOG_ROTATE_BYTES`. A failed write (e.g. ENOSPC) is cut back off the
    log and answered with class -1; the app keeps serving, as a real ingest service would.
    Without ``--data-dir`` the log lives in a fresh temporary directory removed at exit.
    """

    kind = "log_ingest"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.owned = args.data_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="deepedge-log-") if self.owned else args.data_dir)
        self.fd = -1
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.path = self.dir / f"{args.name}.log"
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
            self.fd = os.open(self.path, flags, 0o644)
        except BaseException:
            self.close()
            raise
        self.size = 0  # bytes of whole, durable records in the file

    def process(self, payload: bytes) -> int:
        record = memoryview(HEADER.pack(len(payload)) + payload)
        try:
            if self.size + len(record) > LOG_ROTATE_BYTES:
                os.ftruncate(self.fd, 0)
                self.size = 0
            while record:
                record = record[os.write(self.fd, record) :]
            os.fsync(self.fd)
        except OSError:
            with contextlib.suppress(OSError):  # drop the partial record, if any
                os.ftruncate(self.fd, self.size)
            return -1
        self.size += HEADER.size + len(payload)
        return 0

    def info(self) -> dict[str, Any]:
        return {"log": str(self.path)}

    def warm_up(self, n: int) -> None:
        super().warm_up(n)
        with contextlib.suppress(OSError):  # start serving with an empty log
            os.ftruncate(self.fd, 0)
            os.fsync(self.fd)
        self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.owned:
            shutil.rmtree(self.dir, ignore_errors=True)


class _FrameRelay(_Handler):
    """Network-bound: takes a large frame and acks it with its CRC-32.

    The checksum costs a few µs of CPU, so nearly all the latency is moving the frame over
    the device's link (which training's gradient traffic shares) and queueing behind it.
    """

    kind = "frame_relay"

    def process(self, payload: bytes) -> int:
        return zlib.crc32(payload) & 0x7FFF_FFFF


_HANDLERS: dict[str, type[_Handler]] = {
    h.kind: h for h in (_CnnInference, _KvLookup, _LogIngest, _FrameRelay)
}
assert tuple(_HANDLERS) == APP_KINDS


# ---------------------------------------------------------------- serving


class _Server:
    """Serves connections with one handler; requests run synchronously in the loop.

    Running the work on the event-loop thread (rather than a worker thread) serialises
    requests with no extra thread competing for a tiny CPU quota; the reads of other
    connections wait in kernel buffers meanwhile, which is exactly the queueing a
    single-instance edge service has.
    """

    def __init__(self, handler: _Handler) -> None:
        self.handler = handler
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                try:
                    (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                except asyncio.IncompleteReadError:
                    return  # client closed between requests: normal
                if length != self.handler.nbytes:
                    return  # malformed: drop this connection only
                payload = await reader.readexactly(length)
                writer.write(REPLY.pack(*await self.handler.serve(payload)))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # reset or closed mid-request: the client's problem, keep serving others
        finally:
            self.writers.discard(writer)
            writer.close()


def _write_ready(path: Path, info: dict[str, Any]) -> None:
    """Write ``info`` to ``path`` atomically so a poller never sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


async def _serve(
    args: argparse.Namespace, handler: _Handler, ready: dict[str, Any] | None = None
) -> None:
    """Serve ``handler`` on ``args.host:args.port`` until SIGTERM/SIGINT or the parent dies.

    The ready file gets ``port`` and ``pid`` plus ``ready``; left out, the LC app's facts
    (name, kind, image size, payload size, :meth:`_Handler.info`). Other servers of the
    same wire protocol (``deepedge.serving.replica``) pass their own.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = _Server(handler)
    server = await asyncio.start_server(app.handle, args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    if ready is None:
        ready = {
            "app": args.name,
            "kind": args.kind,
            "image_size": args.image_size,
            "payload_bytes": handler.nbytes,
            **handler.info(),
        }
    _write_ready(Path(args.ready_file), {"port": port, "pid": os.getpid(), **ready})
    watcher = asyncio.create_task(_watch_parent(args.parent_pid, stop)) if args.parent_pid else None
    await stop.wait()
    server.close()
    for w in list(app.writers):
        w.close()
    if watcher is not None:
        watcher.cancel()
    # Let handlers see their closed transports so asyncio.run has nothing to complain about.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), timeout=1.0)


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    """Stop when ``pid`` is gone, so a crashed launcher leaves no orphan server behind."""
    while not stop.is_set():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stop.set()
            return
        except PermissionError:
            pass  # alive, owned by someone else
        await asyncio.sleep(0.5)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m deepedge.apps.server",
        description="Serve one kind of LC-app load over TCP.",
    )
    p.add_argument("--name", required=True, help="app name (for the ready file and messages)")
    p.add_argument("--kind", choices=APP_KINDS, default="cnn_inference", help="what to serve")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free ephemeral port")
    p.add_argument("--ready-file", required=True, help="where to write {port, pid} once ready")
    p.add_argument("--image-size", type=int, default=32, help="sets the payload size")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (cnn only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=20, help="requests served before ready")
    p.add_argument("--table-mb", type=int, default=64, help="kv_lookup table size in MB")
    p.add_argument(
        "--data-dir", default=None, help="log_ingest's log directory (default: a temp dir)"
    )
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this pid is gone")
    args = p.parse_args(argv)
    if args.image_size < 4 or args.threads < 1 or not 0 <= args.port < 65536:
        p.error("need --image-size >= 4, --threads >= 1 and 0 <= --port < 65536")
    if args.table_mb < 1:
        p.error("need --table-mb >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 on SIGTERM/SIGINT)."""
    # Until the event loop takes over, a SIGTERM (e.g. a launcher giving up during the slow
    # torch import) must still exit 0 without a traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    args = _parse(argv)
    handler = _HANDLERS[args.kind](args)
    try:
        handler.warm_up(args.warmup)
        asyncio.run(_serve(args, handler))
    finally:
        handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
