"""The non-CNN LC app kinds (kv_lookup, log_ingest, frame_relay) as real processes.

Each kind's server is started on 127.0.0.1 exactly as a session starts it
(:func:`server_command`, :func:`wait_ready`) and driven by the real load generator, so the
payload size of :meth:`LoadTarget.from_app` and the server's check of it are tested
together. None imports torch, so the whole file takes about 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import signal
import socket
import statistics
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import psutil
import pytest

import deepedge
from deepedge.apps import (
    APP_KINDS,
    LoadGenerator,
    LoadTarget,
    RequestRecord,
    server_command,
    wait_ready,
)
from deepedge.apps import server as srv
from deepedge.spec import AppSpec
from tests.conftest import lc_request

pytestmark = pytest.mark.timeout(90)

SRC = str(Path(deepedge.__file__).resolve().parents[1])
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p),
}
RATE = 40.0
LOAD_S = 2.0


def app(kind: str) -> AppSpec:
    return AppSpec(
        name=kind.replace("_", "-"), device="d0", kind=kind, rate_rps=RATE, deadline_ms=200
    )


def start_server(kind: str, ready: Path, **kw: object) -> tuple[subprocess.Popen[bytes], int]:
    cmd = server_command(app(kind), ready, **kw)  # type: ignore[arg-type]
    proc = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE)
    try:
        return proc, wait_ready(ready, proc, timeout_s=45)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM must exit 0 without a traceback, as for the CNN server."""
    proc.terminate()
    try:
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited (a zombie until stop() reaps it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def drive(kind: str, port: int) -> list[RequestRecord]:
    gen = LoadGenerator([LoadTarget.from_app(app(kind), port)], seed=5, duration_s=LOAD_S)
    gen.start()
    # With duration_s the child ends by itself once its whole schedule is answered; a
    # stop() after sleeping LOAD_S here would cut short a child the host held back.
    pid = gen.pid
    assert pid is not None
    deadline = time.monotonic() + 60
    while not exited(pid):
        assert time.monotonic() < deadline, "the load generator did not finish its schedule"
        time.sleep(0.05)
    records = gen.stop()
    assert len(records) >= RATE * LOAD_S / 2, len(records)
    assert all(r.ok and r.error is None for r in records), records[:3]
    assert all(math.isfinite(r.latency_ms) and r.latency_ms > 0 for r in records)
    assert all(r.service_ms > 0 for r in records)
    svc = [r.service_ms for r in records]
    lat = [r.latency_ms for r in records]
    print(  # shown with -s: the per-kind cost, for sizing experiments
        f"\n{kind}: {len(records)} requests, service median {statistics.median(svc):.3f} ms "
        f"(max {max(svc):.3f}), latency median {statistics.median(lat):.3f} ms"
    )
    return records


@pytest.fixture(scope="module")
def frame_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_server("frame_relay", tmp_path_factory.mktemp("frame") / "ready.json")
    yield port
    stop_server(proc)


def test_kinds_are_the_spec_kinds_and_size_their_payloads() -> None:
    assert get_args(AppSpec.model_fields["kind"].annotation) == APP_KINDS
    assert AppSpec(name="a", device="d", rate_rps=1, deadline_ms=1).kind == "cnn_inference"
    sizes = {k: srv.payload_bytes(k) for k in APP_KINDS}
    assert sizes == {
        "cnn_inference": 3072,
        "kv_lookup": 3072,
        "log_ingest": 3072,
        "frame_relay": 48 * 1024,
    }
    assert srv.payload_bytes("kv_lookup", 16) == srv.request_bytes(16) == 768
    with pytest.raises(ValueError, match="unknown LC app kind"):
        srv.payload_bytes("video")
    # existing callers keep the image payload; from_app follows the kind
    assert LoadTarget("x", "h", 1, 1.0).payload_bytes == 3072
    assert LoadTarget("x", "h", 1, 1.0, image_size=16).payload_bytes == 768
    assert LoadTarget.from_app(app("frame_relay"), 1).payload_bytes == 48 * 1024
    assert LoadTarget.from_app(app("kv_lookup"), 1, image_size=8).payload_bytes == 192
    with pytest.raises(ValueError, match="payload_bytes"):
        LoadTarget("x", "h", 1, 1.0, payload_bytes=0)
    cmd = server_command(app("log_ingest"), Path("r.json"), data_dir=Path("d"), table_mb=8)
    assert cmd[cmd.index("--kind") + 1] == "log_ingest"
    assert cmd[cmd.index("--data-dir") + 1] == "d" and cmd[cmd.index("--table-mb") + 1] == "8"


def test_kv_lookup_serves_load(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    proc, port = start_server("kv_lookup", ready)
    try:
        info = json.loads(ready.read_text())
        assert info["kind"] == "kv_lookup" and info["table_mb"] == 64
        records = drive("kv_lookup", port)
        # a lookup is a few hundred µs of cache misses: far from free, far below 10 ms
        assert 0.05 < statistics.median(r.service_ms for r in records) < 10
    finally:
        stop_server(proc)


def test_log_ingest_makes_every_request_durable_in_its_data_dir(tmp_path: Path) -> None:
    ready, data = tmp_path / "ready.json", tmp_path / "wal"
    proc, port = start_server("log_ingest", ready, data_dir=data)
    try:
        log = Path(json.loads(ready.read_text())["log"])
        assert log.parent == data and log.stat().st_size == 0  # warm-up leaves it empty
        records = drive("log_ingest", port)
        record_bytes = 4 + srv.payload_bytes("log_ingest")  # length prefix + payload
        assert log.stat().st_size == len(records) * record_bytes
    finally:
        stop_server(proc)
    assert log.exists(), "a given --data-dir is the caller's: the log stays"


def test_log_ingest_removes_its_default_temp_dir_at_exit(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    proc, port = start_server("log_ingest", ready)
    log = Path(json.loads(ready.read_text())["log"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            assert lc_request(sock, bytes(3072))[0] == 0
        assert log.stat().st_size == 4 + 3072
    finally:
        stop_server(proc)
    assert not log.parent.exists()


def test_log_ingest_rotates_and_survives_write_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: filling 64 MB or a disk for real would take too long."""
    args = argparse.Namespace(name="w", image_size=8, data_dir=str(tmp_path))
    handler = srv._LogIngest(args)
    try:
        size = 4 + 192
        monkeypatch.setattr(srv, "LOG_ROTATE_BYTES", 5 * size)
        for i in range(7):
            assert handler.handle(bytes(192))[0] == 0
            assert handler.path.stat().st_size == size * (i % 5 + 1)  # restarted at the 6th

        real_write = os.write

        def half_then_full(fd: int, data: bytes) -> int:
            if fd == handler.fd and len(data) == size:
                real_write(fd, bytes(data)[:50])  # a partial record, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "write", half_then_full)
        cls, service_us = handler.handle(bytes(192))
        assert cls == -1 and service_us > 0
        assert handler.path.stat().st_size == 2 * size  # the partial record was cut off
        monkeypatch.setattr(os, "write", real_write)
        assert handler.handle(bytes(192))[0] == 0
        assert handler.path.stat().st_size == 3 * size
    finally:
        handler.close()
    assert tmp_path.exists()  # not ours to remove


def test_frame_relay_serves_load(frame_server: int) -> None:
    records = drive("frame_relay", frame_server)
    # the CRC of 48 KiB is µs of CPU: the server-side time is a small part of the latency
    assert statistics.median(r.service_ms for r in records) < 2


def test_wrong_length_closes_only_that_connection(frame_server: int) -> None:
    good = srv.payload_bytes("frame_relay")
    for length in (srv.payload_bytes("cnn_inference"), good + 1, 2**31):
        with socket.create_connection(("127.0.0.1", frame_server), timeout=5) as bad:
            bad.sendall(struct.pack(">I", length))  # header only: a clean FIN, never an RST
            assert bad.recv(8) == b""  # closed by the server
    frame = os.urandom(good)
    with socket.create_connection(("127.0.0.1", frame_server), timeout=5) as sock:
        for _ in range(3):
            cls, service_us = lc_request(sock, frame)
            assert cls == srv.zlib.crc32(frame) & 0x7FFF_FFFF and service_us > 0


@pytest.mark.parametrize("kind", ["kv_lookup", "frame_relay"])
def test_sigint_before_any_request_exits_cleanly(tmp_path: Path, kind: str) -> None:
    proc, _ = start_server(kind, tmp_path / "ready.json")
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
