"""One resource stressor, run inside a device: the child of :class:`StressorProcess`.

Run as ``python -m deepedge.interference.stressor_worker --address HOST:PORT --kind KIND
--options JSON`` with the control channel's key in ``DEEPEDGE_STRESSOR_KEY`` (hex). The
worker connects to the parent, prepares its kind's resources (arrays, file, socket, model)
and says ``hello``, or ``unavailable`` with the reason when it cannot run here (no CUDA
device, no such directory, stress-ng missing, ...). It then loads its resource at the
intensity the parent sets, starting idle, until told to stop or the connection closes.

The main thread does the work; one thread serves the parent's commands (``set``, ``read``,
``stop``). Intensity is a duty cycle: each period (``period_s``, 0.02 s; 0.5 s for
``net``) the worker is active for ``intensity × period_s`` and then sleeps; a slice that
ran long (a slow fsync) is followed by a proportionally longer sleep, so the active share
of wall time is the intensity. Time throttled by the device's CPU quota does not count as
active: the slice runs on until it has been active for its share. ``memcap`` holds
``intensity × max_mb`` MB instead; ``train`` sleeps after each step for the share of the
step's time that makes it compute ``intensity`` of the time.

A persistent error while active (no space left, an allocation or CUDA failure, a lost
connection) never crashes the worker: it counts the error, keeps the message as
``last_error`` and goes idle until the next ``set``, so the parent sees that the asked-for
intensity was not reached instead of mistaking an idle worker for load.

Only what the kind needs is imported: numpy for ``membw``/``llc``, torch for
``gpu``/``train``, nothing heavy for the others.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import mmap
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "STRESS_NG_KINDS", "main"]

KINDS = ("cpu", "membw", "llc", "memcap", "disk", "net", "gpu", "train")
STRESS_NG_KINDS = ("cpu", "membw", "llc", "disk")
NO_STRESS_NG = "stress-ng not installed (apt install stress-ng)"

# Duty-cycle period per kind, 0.02 s unless named. A link's queue (50 ms in the emulated
# links' tbf) and the socket buffers would smooth a 20 ms duty cycle away on the wire.
DEFAULT_PERIOD_S = {"net": 0.5}

MB = 1 << 20
PAGE = mmap.PAGESIZE
DISK_BLOCK = MB
DISK_ROTATE = 64 * MB
TOUCH_EVERY_S = 0.5
_LLC_FALLBACK = 32 * MB
_LINE = 64  # bytes per cache line: one random access of the llc stressor reads one line
_MAX_SLICE_S = 1.0  # wall-time cap of one active slice stretched by throttling
_SLICE_SLACK_S = 1e-4  # an active slice this close to its share is done
_COUNT_EVERY_S = 0.05  # a slice's work reaches the counters at least this often


class Unavailable(Exception):
    """This kind cannot run on this device; the message says why."""


def _log(msg: str) -> None:
    print(f"[stressor {os.getpid()}] {msg}", flush=True)


def llc_bytes() -> int:
    """Size of the last-level cache (index3 of cpu0), or 32 MB when sysfs does not say."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        units = {"K": 1 << 10, "M": MB, "G": 1 << 30}
        return int(text[:-1]) * units[text[-1].upper()] if text[-1].isalpha() else int(text)
    except (OSError, ValueError, KeyError, IndexError):
        return _LLC_FALLBACK


def _memory_headroom_bytes() -> int | None:
    """Bytes this process's memory cgroup can still grow by, or None without a limit.

    Inactive page cache (e.g. a disk stressor's written file) counts as free: the kernel
    reclaims it before it would kill anything.
    """
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if "memory" in controllers.split(","):  # cgroup v1
            base = Path("/sys/fs/cgroup/memory") / rel
            limit_file, usage_file = base / "memory.limit_in_bytes", base / "memory.usage_in_bytes"
            cache_key = "total_inactive_file"
        elif controllers == "":  # cgroup v2 unified
            base = Path("/sys/fs/cgroup") / rel
            limit_file, usage_file = base / "memory.max", base / "memory.current"
            cache_key = "inactive_file"
        else:
            continue
        try:
            limit_text = limit_file.read_text().strip()
            usage = int(usage_file.read_text())
        except (OSError, ValueError):
            continue
        if limit_text == "max" or int(limit_text) >= 1 << 60:
            return None
        cache = 0
        with contextlib.suppress(OSError, ValueError):
            for stat in (base / "memory.stat").read_text().splitlines():
                key, _, value = stat.partition(" ")
                if key == cache_key:
                    cache = int(value)
        return int(limit_text) - usage + cache
    return None


def _rss_bytes(pid: int | str = "self") -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _run_delay_s() -> float:
    """Seconds this thread has been runnable but not running: waiting for a CPU, or
    throttled by the device's CPU quota (schedstat's run_delay; 0 where not available)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _active_since(start: float, waited: float) -> float:
    """Wall time since ``start`` that this thread was active (running, or blocked in its
    own I/O), not throttled by the quota or waiting for a CPU (``waited``: run delay then).

    Duty cycles are on active time: counting a throttled stretch as active would make the
    worker sleep it off too, and a duty above the quota would then use *less* CPU than a
    duty at the quota (measured: 0.31 cores at duty 0.5 vs 0.41 at 0.4 on a 0.42-core
    device).
    """
    wall = time.monotonic() - start
    return min(wall, max(0.0, wall - (_run_delay_s() - waited)))


def _idle_until(state: State, when: float) -> None:
    """Sleep until ``when`` (monotonic), waking early on a new command."""
    left = when - time.monotonic()
    if left > 0:
        state.changed.wait(left)


class State:
    """What the control thread and the working main thread share, behind one lock."""

    def __init__(self, period_s: float) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Event()  # set on every command that changes the work
        self.stop = threading.Event()
        self.intensity = 0.0
        self.period_s = period_s
        self.params: dict[str, Any] = {}
        self.bytes = 0
        self.ops = 0
        self.steps = 0
        self.active_s = 0.0
        self.errors = 0
        self.last_error: str | None = None

    def add(self, *, nbytes: int = 0, ops: int = 0, steps: int = 0, active_s: float = 0.0) -> None:
        with self.lock:
            self.bytes += nbytes
            self.ops += ops
            self.steps += steps
            self.active_s += active_s

    def fail(self, message: str) -> None:
        """A persistent error while active: count it, keep it, go idle until the next set."""
        with self.lock:
            self.errors += 1
            self.last_error = message
            self.intensity = 0.0
        _log(f"error, going idle: {message}")

    def current(self) -> tuple[float, float, dict[str, Any]]:
        with self.lock:
            return self.intensity, self.period_s, dict(self.params)

    def counters(self, stressor: Stressor) -> dict[str, Any]:
        with self.lock:
            out = {
                "bytes": self.bytes,
                "ops": self.ops,
                "steps": self.steps,
                "active_s": self.active_s,
                "errors": self.errors,
                "last_error": self.last_error,
                "intensity": self.intensity,
            }
        extra = stressor.extra_counters()
        out["bytes"] += extra.get("bytes", 0)
        out.update(
            wall_s=time.monotonic(),
            cpu_s=stressor.cpu_s(),
            rss_mb=stressor.rss_bytes() / MB,
        )
        return out


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        where = f" on {err.filename}" if err.filename else ""
        return f"{err.strerror}{where} (errno {err.errno})"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


class Stressor:
    """Duty-cycled work: :meth:`work` runs until a deadline; subclasses add resources."""

    params: frozenset[str] = frozenset()  # kind-specific parameters ``set`` accepts

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def check_params(self, params: dict[str, Any]) -> None:
        unknown = set(params) - self.params
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} for this stressor")

    def cpu_s(self) -> float:
        return time.process_time()  # every thread of this process

    def rss_bytes(self) -> int:
        return _rss_bytes()

    def extra_counters(self) -> dict[str, int]:
        return {}

    def work(self, deadline: float) -> tuple[int, int]:
        """Load the resource until ``deadline`` (monotonic); returns (bytes, ops) done."""
        raise NotImplementedError

    def pause(self) -> None:
        """Called when going idle (stress-ng: stop the child)."""

    def resume(self) -> None:
        """Called when an active slice starts (stress-ng: continue the child)."""

    def after_error(self) -> None:
        """Release what a failed slice may hold (e.g. the disk file's space)."""

    def close(self) -> None:
        """Release every resource; the process exits next."""

    def run(self, state: State) -> None:
        while not state.stop.is_set():
            state.changed.clear()
            intensity, period, _ = state.current()
            if intensity <= 0:
                self.pause()
                state.changed.wait()
                continue
            start, waited = time.monotonic(), _run_delay_s()
            try:
                self.resume()
                active = self._active_slice(state, start, waited, min(1.0, intensity) * period)
                if intensity < 1:
                    self.pause()
            except Exception as err:  # persistent trouble: report it, never crash
                traceback.print_exc()
                with contextlib.suppress(Exception):
                    self.pause()
                    self.after_error()
                state.fail(_message(err))  # after cleaning up: the parent may look now
                continue
            if intensity < 1:
                _idle_until(state, start + max(period, active / intensity))

    def _active_slice(self, state: State, start: float, waited: float, want_s: float) -> float:
        """Work until this thread has been *active* for ``want_s`` since ``start``; returns
        the active time.

        A wall-clock slice would lose every throttled stretch inside it: on a 0.42-core
        device whose quota runs out every 5 ms, a duty of 0.42 got 0.2 cores. The slice is
        extended by the time spent throttled or waiting for a CPU, up to ``_MAX_SLICE_S``
        of wall time so a new command is never kept waiting long. Work is counted every
        ``_COUNT_EVERY_S``, so a reader sees it while a long slice (``net``'s) still runs.
        """
        deadline, counted = start + want_s, 0.0
        while True:
            b, o = self.work(min(deadline, time.monotonic() + _COUNT_EVERY_S))
            active = _active_since(start, waited)
            state.add(nbytes=b, ops=o, active_s=active - counted)
            counted = active
            now = time.monotonic()
            if state.changed.is_set() or now - start >= _MAX_SLICE_S:
                return active
            if now < deadline:
                continue
            short = want_s - active
            if short <= _SLICE_SLACK_S:
                return active
            deadline = min(now + short, start + _MAX_SLICE_S)


class CpuStressor(Stressor):
    """A busy loop; ``ops`` counts its iterations."""

    def work(self, deadline: float) -> tuple[int, int]:
        ops, x = 0, 0
        clock = time.monotonic
        while clock() < deadline:
            for i in range(1000):
                x += i
            ops += 1000
        return 0, ops


class MembwStressor(Stressor):
    """Streaming copies between two arrays of ``size_mb`` each (default 2 × LLC, so one
    copy pass streams 4 × LLC through the cache); 1 MB chunks keep slices on time.
    ``bytes`` counts the bytes copied (each one read once and written once)."""

    CHUNK = MB

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        import numpy as np

        size = int(float(options.get("size_mb") or 2 * llc_bytes() / MB) * MB)
        size = max(self.CHUNK, size // self.CHUNK * self.CHUNK)
        self._np = np
        self._a = np.ones(size, dtype=np.uint8)
        self._b = np.full(size, 2, dtype=np.uint8)
        self._pos = 0
        self._size = size

    def work(self, deadline: float) -> tuple[int, int]:
        np, chunk, done = self._np, self.CHUNK, 0
        clock = time.monotonic
        while clock() < deadline:
            lo = self._pos
            np.copyto(self._b[lo : lo + chunk], self._a[lo : lo + chunk])
            done += chunk
            self._pos = lo + chunk
            if self._pos >= self._size:  # next pass in the other direction
                self._pos = 0
                self._a, self._b = self._b, self._a
        return done, 0


class LlcStressor(Stressor):
    """Random reads of whole cache lines over a working set about the LLC's size
    (``size_mb`` to change it), through a precomputed random index array. ``ops`` counts
    the accesses, ``bytes`` the bytes they read (64 per access)."""

    CHUNK = 8192
    INDICES = 1 << 18

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        import numpy as np

        size = int(float(options.get("size_mb") or llc_bytes() / MB) * MB)
        lines = max(1024, size // _LINE)
        self._np = np
        self._data = np.ones((lines, _LINE // 8), dtype=np.float64)
        rng = np.random.default_rng(int(options.get("seed", 0)))
        self._idx = rng.integers(0, lines, size=self.INDICES, dtype=np.intp)
        self._out = np.empty((self.CHUNK, _LINE // 8), dtype=np.float64)
        self._pos = 0

    def work(self, deadline: float) -> tuple[int, int]:
        np, chunk, ops = self._np, self.CHUNK, 0
        clock = time.monotonic
        while clock() < deadline:
            lo = self._pos
            np.take(self._data, self._idx[lo : lo + chunk], axis=0, out=self._out)
            ops += chunk
            self._pos = (lo + chunk) % self.INDICES
        return ops * _LINE, ops


class MemcapStressor(Stressor):
    """Holds ``intensity × max_mb`` MB in 1 MB anonymous mappings, touching every page
    every half second so they stay resident. Growing past the device's memory limit is
    refused (an error, then idle) rather than left to the OOM killer."""

    MARGIN = 32 * MB

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.max_mb = float(options.get("max_mb", 256))
        if self.max_mb <= 0:
            raise Unavailable(f"max_mb must be > 0, got {self.max_mb}")
        self._held: list[mmap.mmap] = []
        self._ones = b"\x01" * (MB // PAGE)

    def _touch(self, block: mmap.mmap) -> None:
        block[::PAGE] = self._ones

    def _resize(self, target: int) -> None:
        while len(self._held) > target:
            self._held.pop().close()
        grow = target - len(self._held)
        if grow <= 0:
            return
        headroom = _memory_headroom_bytes()
        if headroom is not None and grow * MB > headroom - self.MARGIN:
            raise MemoryError(
                f"cannot hold {target} MB: only {max(0, headroom) / MB:.0f} MB left under the "
                "device's memory limit"
            )
        for _ in range(grow):
            block = mmap.mmap(-1, MB)
            self._touch(block)
            self._held.append(block)

    def run(self, state: State) -> None:
        while not state.stop.is_set():
            state.changed.clear()
            intensity, _, _ = state.current()
            target = round(min(1.0, intensity) * self.max_mb)
            try:
                self._resize(target)
                for block in self._held:
                    self._touch(block)
            except Exception as err:
                self.close()
                state.fail(_message(err))
                continue
            state.add(ops=len(self._held) * (MB // PAGE))
            state.changed.wait(TOUCH_EVERY_S if self._held else None)  # nothing held: block

    def close(self) -> None:
        while self._held:
            self._held.pop().close()


class DiskStressor(Stressor):
    """Writes 1 MB blocks to a file in ``dir``, each fsynced, truncating at 64 MB; the file
    is deleted at exit. ``bytes`` counts bytes written and fsynced."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.dir = _disk_dir(options)
        self.path = self.dir / f"deepedge-stressor-{os.getpid()}.dat"
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as err:
            raise Unavailable(f"cannot write to {self.dir}: {err.strerror}") from None
        self._block = os.urandom(DISK_BLOCK)  # incompressible
        self._pos = 0

    def work(self, deadline: float) -> tuple[int, int]:
        done = 0
        while True:
            if self._pos >= DISK_ROTATE:
                os.ftruncate(self._fd, 0)
                os.lseek(self._fd, 0, os.SEEK_SET)
                self._pos = 0
            view, written = memoryview(self._block), 0
            while written < DISK_BLOCK:
                written += os.write(self._fd, view[written:])
            os.fsync(self._fd)
            self._pos += DISK_BLOCK
            done += DISK_BLOCK
            if time.monotonic() >= deadline:
                return done, 0

    def after_error(self) -> None:  # give the space back (ENOSPC)
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._pos = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            self.path.unlink()


def _disk_dir(options: dict[str, Any]) -> Path:
    raw = options.get("dir")
    if not raw:
        raise Unavailable("no directory given for the disk stressor (option 'dir')")
    path = Path(raw)
    if not path.is_dir():
        raise Unavailable(f"disk directory {path} does not exist or is not a directory")
    try:
        st = os.statvfs(path)
    except OSError as err:
        raise Unavailable(f"cannot stat {path}: {err.strerror}") from None
    free = st.f_bavail * st.f_frsize
    if free < 2 * DISK_BLOCK:
        raise Unavailable(f"no space left on {path}: {free / MB:.1f} MB free")
    return path


class NetStressor(Stressor):
    """TCP traffic through the device's link to the parent's peer (option ``peer``,
    ``host:port``): sends to it (uplink) and receives from it (downlink) while active;
    ``direction`` = ``both`` (default), ``up`` or ``down``. ``bytes`` = sent + received."""

    BUF = 64 << 10
    SOCKBUF = 128 << 10

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        peer = options.get("peer")
        if not peer:
            raise Unavailable("no peer address given for the net stressor (option 'peer')")
        host, port = str(peer).rsplit(":", 1)
        self.direction = options.get("direction", "both")
        if self.direction not in ("both", "up", "down"):
            raise Unavailable(f"direction must be both, up or down, got {self.direction!r}")
        try:
            sock = socket.create_connection((host, int(port)), timeout=30)
        except OSError as err:
            raise Unavailable(f"cannot reach the traffic peer at {peer}: {_message(err)}") from None
        # small buffers: bytes counted as received have crossed the link recently
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, self.SOCKBUF)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._sock = sock
        self._out = bytes(self.BUF)
        self._in = bytearray(self.BUF)

    def work(self, deadline: float) -> tuple[int, int]:
        sock, done = self._sock, 0
        readers = [sock] if self.direction in ("both", "down") else []
        writers = [sock] if self.direction in ("both", "up") else []
        while (left := deadline - time.monotonic()) > 0:
            readable, writable, _ = select.select(readers, writers, [], left)
            if readable:
                try:
                    n = sock.recv_into(self._in)
                except BlockingIOError:
                    n = -1
                if n == 0:
                    raise ConnectionError("the traffic peer closed the connection")
                done += max(n, 0)
            if writable:
                with contextlib.suppress(BlockingIOError):
                    done += sock.send(self._out)
        return done, 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class GpuStressor(Stressor):
    """A CUDA matmul loop (``size`` × ``size`` float32, default 2048), synchronised after
    each product so slices end on time. ``ops`` counts the products; the GPU's utilisation
    is the active share of wall time (``active_s``)."""

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        import torch

        if not torch.cuda.is_available():
            raise Unavailable("no CUDA device (torch.cuda.is_available() is False)")
        self._torch = torch
        n = int(options.get("size", 2048))
        self._dev = torch.device(options.get("cuda_device", "cuda"))
        try:
            self._a = torch.randn(n, n, device=self._dev)
            self._b = torch.randn(n, n, device=self._dev)
            self._c = torch.empty(n, n, device=self._dev)
            torch.matmul(self._a, self._b, out=self._c)
            torch.cuda.synchronize(self._dev)
        except RuntimeError as err:
            raise Unavailable(f"CUDA error: {err}") from None

    def work(self, deadline: float) -> tuple[int, int]:
        torch, ops = self._torch, 0
        while time.monotonic() < deadline:
            torch.matmul(self._a, self._b, out=self._c)
            torch.cuda.synchronize(self._dev)
            ops += 1
        return 0, ops

    def after_error(self) -> None:
        self._torch.cuda.empty_cache()


class TrainStressor(Stressor):
    """The real training job as a co-runner: the job's model and optimiser, one thread,
    random inputs of ``batch`` samples (option, or per ``set``; default the job's global
    batch), forward/backward/step in a loop. After a step that took ``t`` seconds it sleeps
    ``t (1 - c) / c`` so it computes a share ``c`` of the time. ``steps`` counts steps and
    ``ops`` samples."""

    params = frozenset({"batch"})

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        import torch
        import torch.nn.functional as F

        from deepedge.models import build_model
        from deepedge.spec import JobSpec
        from deepedge.train.ddp import build_optimizer
        from deepedge.train.priority import yield_cpu_to_lc_apps

        yield_cpu_to_lc_apps()  # as the real training agents do

        if "job" not in options:
            raise Unavailable("no job given for the train stressor (option 'job')")
        job = JobSpec.model_validate(options["job"])
        torch.set_num_threads(1)
        self._torch, self._F = torch, F
        self._dev = torch.device(options.get("torch_device", "cpu"))
        if self._dev.type == "cuda" and not torch.cuda.is_available():
            raise Unavailable("no CUDA device (torch.cuda.is_available() is False)")
        self._channels = 1 if job.dataset.kind == "digits" else 3  # as deepedge.data builds
        self._size = job.dataset.image_size
        self._classes = job.dataset.num_classes
        self._job = job
        self._loss = None
        if job.custom is not None:  # a user's model, loss and optimiser (deepedge.fit)
            from deepedge.byo.hooks import build_custom_model, job_loss, job_optimizer

            self._model = build_custom_model(job).to(self._dev)
            self._opt = job_optimizer(job, self._model.parameters())
            self._loss = job_loss(job)
        else:
            torch.manual_seed(job.seed)  # as deepedge.train.local.job_model
            self._model = build_model(
                job.model,
                in_channels=self._channels,
                num_classes=self._classes,
                image_size=self._size,
            ).to(self._dev)
            self._opt = build_optimizer(self._model.parameters(), job.optimizer)
        self._model.train()
        self.batch = 0
        self._set_batch(int(options.get("batch") or job.global_batch))
        self._step()  # pays torch's lazy imports now, while the quota is lifted

    def check_params(self, params: dict[str, Any]) -> None:
        super().check_params(params)
        if "batch" in params and (not isinstance(params["batch"], int) or params["batch"] < 1):
            raise ValueError(f"batch must be a positive integer, got {params['batch']!r}")

    def _set_batch(self, batch: int) -> None:
        torch = self._torch
        gen = torch.Generator().manual_seed(batch)
        if self._job.custom is not None:
            from deepedge.byo.hooks import synthetic_batch

            self._x, self._y = synthetic_batch(self._job.custom, batch, seed=batch)
        else:
            self._x = torch.randn(batch, self._channels, self._size, self._size, generator=gen)
            self._y = torch.randint(0, self._classes, (batch,), generator=gen)
        self._x, self._y = self._x.to(self._dev), self._y.to(self._dev)
        self.batch = batch

    def _step(self) -> None:
        self._opt.zero_grad(set_to_none=True)
        out = self._model(self._x)
        loss_fn = self._F.cross_entropy if self._loss is None else self._loss
        loss = loss_fn(out, self._y)
        loss.backward()
        self._opt.step()
        if self._dev.type == "cuda":
            self._torch.cuda.synchronize(self._dev)

    def run(self, state: State) -> None:
        while not state.stop.is_set():
            state.changed.clear()
            intensity, _, params = state.current()
            try:
                if params.get("batch", self.batch) != self.batch:
                    self._set_batch(int(params["batch"]))
                if intensity <= 0:
                    state.changed.wait()
                    continue
                start, waited = time.monotonic(), _run_delay_s()
                self._step()
                took = _active_since(start, waited)
            except Exception as err:  # e.g. out of memory at a huge batch
                traceback.print_exc()
                state.fail(_message(err))
                continue
            state.add(ops=self.batch, steps=1, active_s=took)
            if intensity < 1:
                _idle_until(state, start + took / intensity)


_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class StressNgStressor(Stressor):
    """stress-ng as this worker's child, duty-cycled with SIGSTOP/SIGCONT of its process
    group at the same period. CPU time and RSS include the child's processes (psutil);
    ``bytes`` is what the disk stressor's processes wrote (``io_counters``); stress-ng's
    own work counters are not read, so ``ops`` stays 0."""

    def __init__(self, kind: str, options: dict[str, Any]) -> None:
        super().__init__(options)
        exe = shutil.which("stress-ng")
        if exe is None:
            raise Unavailable(NO_STRESS_NG)
        import psutil

        self._psutil = psutil
        args = {
            "cpu": ["--cpu", "1", "--cpu-load", "100"],
            "membw": ["--stream", "1"],
            "llc": ["--cache", "1"],
            "disk": [
                "--hdd",
                "1",
                "--hdd-bytes",
                "64M",
                "--hdd-write-size",
                "1M",
                "--hdd-opts",
                "wr-seq,fsync",
            ],
        }[kind]
        if kind == "disk":
            args += ["--temp-path", str(_disk_dir(options))]
        self.kind = kind
        self._proc = subprocess.Popen(
            [exe, *args, "--timeout", "0"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._running = True
        self._dead: dict[int, tuple[float, int, int]] = {}  # exited children's last totals
        self._seen: dict[int, tuple[float, int, int]] = {}
        time.sleep(0.2)
        self.pause()
        if self._proc.poll() is not None:
            raise Unavailable(f"stress-ng exited at start with code {self._proc.returncode}")

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def pause(self) -> None:
        if self._running:
            self._signal(signal.SIGSTOP)
            self._running = False

    def resume(self) -> None:
        if not self._running:
            self._signal(signal.SIGCONT)
            self._running = True

    def _children(self) -> dict[int, tuple[float, int, int]]:
        """Per child process: (cpu seconds, rss bytes, bytes written), remembered when gone."""
        out: dict[int, tuple[float, int, int]] = {}
        try:
            root = self._psutil.Process(self._proc.pid)
            procs = [root, *root.children(recursive=True)]
        except self._psutil.Error:
            procs = []
        for p in procs:
            with contextlib.suppress(self._psutil.Error):
                t = p.cpu_times()
                written = 0
                with contextlib.suppress(self._psutil.Error, AttributeError):
                    written = p.io_counters().write_bytes
                out[p.pid] = (t.user + t.system, p.memory_info().rss, written)
        for pid, last in self._seen.items():
            if pid not in out:
                self._dead[pid] = last
        self._seen = out
        return out

    def cpu_s(self) -> float:
        live = self._children()
        return time.process_time() + sum(v[0] for v in (*live.values(), *self._dead.values()))

    def rss_bytes(self) -> int:
        return _rss_bytes() + sum(v[1] for v in self._children().values())

    def extra_counters(self) -> dict[str, int]:
        if self.kind != "disk":
            return {}
        live = self._children()
        return {"bytes": sum(v[2] for v in (*live.values(), *self._dead.values()))}

    def work(self, deadline: float) -> tuple[int, int]:
        while (left := deadline - time.monotonic()) > 0:
            if self._proc.poll() is not None:
                raise RuntimeError(f"stress-ng exited with code {self._proc.returncode}")
            time.sleep(min(left, 0.05))
        return 0, 0

    def close(self) -> None:
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self._proc.wait()


def make_stressor(kind: str, options: dict[str, Any]) -> Stressor:
    backend = options.get("backend", "python")
    if backend == "stress-ng":
        if kind not in STRESS_NG_KINDS:
            raise Unavailable(f"the stress-ng backend supports {list(STRESS_NG_KINDS)} only")
        return StressNgStressor(kind, options)
    if backend != "python":
        raise Unavailable(f"unknown backend {backend!r} (python or stress-ng)")
    classes: dict[str, type[Stressor]] = {
        "cpu": CpuStressor,
        "membw": MembwStressor,
        "llc": LlcStressor,
        "memcap": MemcapStressor,
        "disk": DiskStressor,
        "net": NetStressor,
        "gpu": GpuStressor,
        "train": TrainStressor,
    }
    if kind not in classes:
        raise Unavailable(f"unknown stressor kind {kind!r}")
    return classes[kind](options)


def _serve(conn: Connection, state: State, stressor: Stressor) -> None:
    """The control thread: answers the parent; a closed connection stops the worker."""
    try:
        while True:
            msg = conn.recv()
            op = msg.get("op")
            try:
                if op == "set":
                    intensity = float(msg["intensity"])
                    if not 0.0 <= intensity <= 1.0:
                        raise ValueError(f"intensity must be in [0, 1], got {intensity}")
                    params = {k: v for k, v in msg.items() if k not in ("op", "intensity")}
                    period = params.pop("period_s", None)
                    if period is not None and not float(period) > 0:
                        raise ValueError(f"period_s must be > 0, got {period}")
                    stressor.check_params(params)
                    with state.lock:
                        state.intensity = intensity
                        state.params.update(params)
                        if period is not None:
                            state.period_s = float(period)
                    state.changed.set()
                    conn.send({"event": "ack"})
                elif op == "read":
                    conn.send({"event": "counters", **state.counters(stressor)})
                elif op == "stop":
                    conn.send({"event": "ack"})
                    return
                else:
                    raise ValueError(f"unknown op {op!r}")
            except (ValueError, KeyError, TypeError) as err:
                conn.send({"event": "error", "error": f"{type(err).__name__}: {err}"})
    except (EOFError, OSError):  # the parent went away (or closed right after 'stop')
        return
    finally:
        state.stop.set()
        state.changed.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--kind", required=True)
    parser.add_argument("--options", default="{}")
    args = parser.parse_args(argv)
    options = json.loads(args.options)
    host, port = args.address.rsplit(":", 1)
    key = bytes.fromhex(os.environ["DEEPEDGE_STRESSOR_KEY"])
    started = time.monotonic()
    with Client((host, int(port)), authkey=key) as conn:
        try:
            stressor = make_stressor(args.kind, options)
        except Unavailable as err:
            _log(f"unavailable: {err}")
            conn.send({"event": "unavailable", "reason": str(err)})
            return 0
        except Exception as err:  # setting up failed: the kind cannot run here
            traceback.print_exc()
            conn.send({"event": "unavailable", "reason": _message(err)})
            return 0
        state = State(float(options.get("period_s") or DEFAULT_PERIOD_S.get(args.kind, 0.02)))
        try:
            setup_s = time.monotonic() - started
            _log(f"{args.kind} ready in {setup_s:.2f} s")
            conn.send({"event": "hello", "kind": args.kind, "pid": os.getpid(), "setup_s": setup_s})
            control = threading.Thread(
                target=_serve, args=(conn, state, stressor), daemon=True, name="control"
            )
            control.start()
            stressor.run(state)
        finally:
            stressor.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
