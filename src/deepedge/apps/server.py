"""A latency-critical inference server: the LC app that shares an edge device with training.

It is a real process (run inside the device's cgroup) serving a small CNN over TCP, so
that the CPU contention re-training causes shows up as real queueing and throttling
delay, not as a model of it. Requests are served one at a time in arrival order by one
model instance, as on a real edge device: queueing is part of the latency.

Run it as::

    python -m deepedge.apps.server --name cam --port 0 --ready-file /tmp/cam.json

When the model is warm and the socket bound it writes ``{"port": N, "pid": PID, ...}``
to the ready file atomically, which :func:`deepedge.apps.wait_ready` waits for.

Wire protocol (persistent TCP connections, any number of them): the client sends a
4-byte big-endian length followed by that many ``uint8`` pixel bytes (a 3×S×S CHW
image); the server replies with :data:`REPLY` = (predicted class ``int32``, server-side
service time in µs ``uint32``). A request of the wrong length closes that connection; the
server keeps serving the others.

torch is imported inside :func:`main` so that importing this module (e.g. for the
protocol constants) stays cheap and the SIGTERM handler is in place before the slow
torch import, which can take many seconds under a small CPU quota.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import struct
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["HEADER", "NUM_CLASSES", "REPLY", "WIDTH", "build_model", "main", "request_bytes"]

HEADER = struct.Struct(">I")
"""Request header: payload length in bytes (big-endian uint32)."""
REPLY = struct.Struct(">iI")
"""Reply: predicted class (int32) and server-side service time in µs (uint32)."""
NUM_CLASSES = 10
WIDTH = 32
"""Channel width of the first stage; 32 gives ~1.3 ms of CPU per 32×32 image on one core."""


def request_bytes(image_size: int) -> int:
    """Payload size of one request for ``image_size``: a 3×S×S uint8 image."""
    return 3 * image_size * image_size


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


class _Server:
    """Holds the model and serves connections; inference runs synchronously in the loop.

    Running inference on the event-loop thread (rather than a worker thread) serialises
    requests with no extra thread competing for a tiny CPU quota; the reads of other
    connections wait in kernel buffers meanwhile, which is exactly the queueing a
    single-model edge server has.
    """

    def __init__(self, model: torch.nn.Module, image_size: int) -> None:
        self.model = model
        self.image_size = image_size
        self.nbytes = request_bytes(image_size)
        self.writers: set[asyncio.StreamWriter] = set()

    def infer(self, payload: bytes) -> tuple[int, int]:
        import torch

        t0 = time.perf_counter()
        x = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        x = x.view(1, 3, self.image_size, self.image_size).float().div_(255.0)
        with torch.inference_mode():
            cls = int(self.model(x).argmax(dim=1).item())
        service_us = int((time.perf_counter() - t0) * 1e6)
        return cls, min(service_us, 2**32 - 1)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                try:
                    (length,) = HEADER.unpack(await reader.readexactly(HEADER.size))
                except asyncio.IncompleteReadError:
                    return  # client closed between requests: normal
                if length != self.nbytes:
                    return  # malformed: drop this connection only
                payload = await reader.readexactly(length)
                writer.write(REPLY.pack(*self.infer(payload)))
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


async def _serve(args: argparse.Namespace, model: torch.nn.Module) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = _Server(model, args.image_size)
    server = await asyncio.start_server(app.handle, args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    _write_ready(
        Path(args.ready_file),
        {"port": port, "pid": os.getpid(), "app": args.name, "image_size": args.image_size},
    )
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
        description="Serve a small CNN to LC-app load over TCP.",
    )
    p.add_argument("--name", required=True, help="app name (for the ready file and messages)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free ephemeral port")
    p.add_argument("--ready-file", required=True, help="where to write {port, pid} once ready")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=20, help="inferences before reporting ready")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this pid is gone")
    args = p.parse_args(argv)
    if args.image_size < 4 or args.threads < 1 or not 0 <= args.port < 65536:
        p.error("need --image-size >= 4, --threads >= 1 and 0 <= --port < 65536")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 on SIGTERM/SIGINT)."""
    # Until the event loop takes over, a SIGTERM (e.g. a launcher giving up during the slow
    # torch import) must still exit 0 without a traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    args = _parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only settable before first parallel work
        torch.set_num_interop_threads(1)
    model = build_model(args.image_size, seed=args.seed)
    app = _Server(model, args.image_size)
    blank = bytes(app.nbytes)
    for _ in range(max(args.warmup, 1)):
        app.infer(blank)
    asyncio.run(_serve(args, model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
