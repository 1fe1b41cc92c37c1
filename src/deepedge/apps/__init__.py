"""Latency-critical (LC) apps: the app servers, their load generator and latency stats.

The server runs inside a device's cgroup (launched by the cluster code from
:func:`server_command`, then :func:`wait_ready`); the :class:`LoadGenerator` runs on the
host and records every request, which :func:`latency_summary` turns into SLO numbers.

An app's ``kind`` (one of :data:`APP_KINDS`) decides which resource re-training can take
from it, so a plan that only watches CPU shares cannot protect them all:

* ``cnn_inference``: a small CNN per image; CPU-bound (quota, throttling, co-runners).
* ``kv_lookup``: a feature-store lookup of random keys in a large table; memory-bound
  (last-level cache evictions and memory bandwidth taken by training).
* ``log_ingest``: a sensor-log write-ahead log, ``fsync``-ed per request; disk-bound
  (storage latency, e.g. behind checkpoint writes).
* ``frame_relay``: a 48 KiB camera frame per request, checksummed; network-bound (the
  device's link, shared with gradient and model traffic).

All kinds speak the same wire protocol; only the payload size differs
(:func:`deepedge.apps.server.payload_bytes`, carried by :class:`LoadTarget`).

The load generator and stats are imported lazily on first use: importing this package
must stay cheap, and ``python -m deepedge.apps.server`` (run under a device's small
memory limit) must not drag numpy in or import its own module twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from deepedge.errors import ClusterError
from deepedge.lazy import lazy_exports

if TYPE_CHECKING:
    from deepedge.apps.loadgen import LoadGenerator, LoadTarget
    from deepedge.apps.stats import (
        AppLatencyStats,
        RequestRecord,
        latency_summary,
        load_records,
        summarize_apps,
    )
    from deepedge.spec import AppSpec

__all__ = [
    "APP_KINDS",
    "AppLatencyStats",
    "LoadGenerator",
    "LoadTarget",
    "RequestRecord",
    "latency_summary",
    "load_records",
    "server_command",
    "summarize_apps",
    "wait_ready",
]

APP_KINDS: tuple[str, ...] = ("cnn_inference", "kv_lookup", "log_ingest", "frame_relay")
"""The LC app kinds a server can run (``AppSpec.kind``); see the module doc."""

_LAZY = {
    "AppLatencyStats": "deepedge.apps.stats",
    "LoadGenerator": "deepedge.apps.loadgen",
    "LoadTarget": "deepedge.apps.loadgen",
    "RequestRecord": "deepedge.apps.stats",
    "latency_summary": "deepedge.apps.stats",
    "load_records": "deepedge.apps.stats",
    "summarize_apps": "deepedge.apps.stats",
}


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)


def server_command(
    app: AppSpec,
    ready_file: Path,
    *,
    python: str = sys.executable,
    host: str = "127.0.0.1",
    image_size: int = 32,
    threads: int = 1,
    seed: int = 0,
    parent_pid: int | None = None,
    data_dir: Path | None = None,
    table_mb: int | None = None,
) -> list[str]:
    """The command line that starts ``app``'s server, of kind ``app.kind``.

    The child must be able to import ``deepedge`` (installed, or ``PYTHONPATH`` set by
    the launcher). ``ready_file`` should be a fresh path per launch. With ``parent_pid``
    the server also exits when that process is gone, so a crashed launcher leaves no
    server behind. ``threads`` stays 1 by default: a device's quota is a fraction of a
    core, and more threads would only add contention (it only matters to
    ``cnn_inference``). ``data_dir`` is where a ``log_ingest`` app keeps its log (default:
    a temporary directory the server removes at exit); ``table_mb`` sizes a ``kv_lookup``
    app's table (default 64). Both are ignored by the other kinds.
    """
    cmd = [
        python,
        "-m",
        "deepedge.apps.server",
        "--name",
        app.name,
        "--kind",
        app.kind,
        "--host",
        host,
        "--port",
        "0",
        "--ready-file",
        str(ready_file),
        "--image-size",
        str(image_size),
        "--threads",
        str(threads),
        "--seed",
        str(seed),
    ]
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    if table_mb is not None:
        cmd += ["--table-mb", str(table_mb)]
    return cmd


def _app_name(proc: subprocess.Popen, ready_file: Path) -> str:
    args = proc.args if isinstance(proc.args, list | tuple) else str(proc.args).split()
    args = [str(a) for a in args]
    if "--name" in args[:-1]:
        return args[args.index("--name") + 1]
    return ready_file.stem


def _read_ready(ready_file: Path, proc: subprocess.Popen) -> int | None:
    """The port from ``ready_file`` if it was written by ``proc`` (or its descendant)."""
    try:
        info = json.loads(ready_file.read_text())
        port, pid = int(info["port"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not there yet (written atomically, so never half-written)
    if pid != proc.pid:
        # A wrapper (shell, cgexec) may sit between; otherwise it is a stale file.
        import psutil

        try:
            if pid not in {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}:
                return None
        except psutil.Error:
            return None
    return port


def wait_ready(ready_file: Path, proc: subprocess.Popen, timeout_s: float) -> int:
    """Wait until the server started as ``proc`` reports ready; return its port.

    Raises :class:`~deepedge.errors.ClusterError` if the process exits first or
    ``timeout_s`` passes (the process is left running: the caller owns it). Under a small
    CPU quota importing torch alone can take 10 s or more, so be generous.
    """
    ready_file = Path(ready_file)
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        port = _read_ready(ready_file, proc)
        if port is not None:
            return port
        rc = proc.poll()
        if rc is not None:
            name = _app_name(proc, ready_file)
            raise ClusterError(
                f"LC app {name!r} exited with code {rc} before writing {ready_file}"
                + (f": {_stderr_tail(proc)}" if proc.stderr is not None else ""),
                hint="run its command by hand to see why (is deepedge importable there? "
                "is the device's memory limit too small for torch?)",
            )
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"LC app {_app_name(proc, ready_file)!r} did not write {ready_file} "
                f"within {timeout_s:g}s",
                hint="a tiny CPU quota makes the torch import slow: raise the timeout",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def _stderr_tail(proc: subprocess.Popen) -> str:
    """Last bit of an exited process's piped stderr, on one line."""
    try:
        data = proc.stderr.read() if proc.stderr is not None else b""
    except (OSError, ValueError):
        return "(stderr unreadable)"
    text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    return text.strip()[-600:].replace("\n", " | ") or "(empty stderr)"
