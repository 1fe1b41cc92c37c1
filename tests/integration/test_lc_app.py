"""The LC inference server and load generator as real processes on 127.0.0.1.

Kept short (about 10 s in all on 2 cores): one shared server for the load tests, plus
two short-lived ones for the shutdown tests.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import deepedge
from deepedge.apps import (
    LoadGenerator,
    LoadTarget,
    RequestRecord,
    latency_summary,
    server_command,
    wait_ready,
)
from deepedge.errors import ClusterError
from deepedge.spec import AppSpec
from tests.conftest import lc_request

pytestmark = pytest.mark.timeout(60)

SRC = str(Path(deepedge.__file__).resolve().parents[1])
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p),
}
APP = AppSpec(name="cam", device="d0", rate_rps=30, deadline_ms=200)


def start_server(ready: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(server_command(APP, ready), env=ENV, stderr=subprocess.PIPE)
    try:
        return proc, wait_ready(ready, proc, timeout_s=45)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_server(tmp_path_factory.mktemp("srv") / "ready.json")
    yield port
    proc.terminate()
    try:
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


def drain_until(
    gen: LoadGenerator, done: Callable[[list[RequestRecord]], bool], timeout_s: float = 30.0
) -> list[RequestRecord]:
    """Drain the live stream until ``done(everything drained so far)`` holds.

    The generator's own clock says when its schedule has got somewhere; a fixed sleep in
    this process does not, since a loaded host can hold the child back for a while.
    """
    live: list[RequestRecord] = []
    deadline = time.monotonic() + timeout_s
    while not done(live):
        assert time.monotonic() < deadline, f"live stream stalled at {len(live)} records"
        time.sleep(0.05)
        live += gen.drain()
    return live


def test_open_loop_load_is_served_and_recorded(server: int) -> None:
    gen = LoadGenerator([LoadTarget.from_app(APP, server)], seed=3)
    gen.start()
    pid, t0 = gen.pid, gen.started_at
    assert t0 is not None and pid is not None
    # a reply to a request scheduled after the 2 s window: every earlier one was sent
    live = drain_until(gen, lambda recs: any(r.scheduled_s >= t0 + 2.0 for r in recs))
    records = gen.stop()
    assert not running(pid), "generator process outlived stop()"
    # the live stream delivered completed requests while running, each also in the final set
    assert len(live) >= 20 and set(live) <= set(records), (len(live), len(records))

    assert records and all(r.ok and r.error is None for r in records), records[:3]
    assert all(r.app == "cam" for r in records)
    assert all(r.latency_ms > 0 and r.service_ms > 0 for r in records)
    assert all(r.scheduled_s - 0.05 <= r.sent_s <= r.done_s for r in records)
    assert [r.scheduled_s for r in records] == sorted(r.scheduled_s for r in records)
    # Poisson count over exactly 2 s of schedule: mean 60, sd ~7.7; allow 4 sd.
    n = sum(t0 <= r.scheduled_s < t0 + 2.0 for r in records)
    assert abs(n - 2.0 * APP.rate_rps) <= 4 * math.sqrt(2.0 * APP.rate_rps), n
    stats = latency_summary(records, deadline_ms=APP.deadline_ms)
    assert stats.requests == len(records) and stats.failed == 0 and stats.p95_ms > 0
    assert gen.stop() is records  # idempotent


def test_rate_changes_while_running(server: int) -> None:
    gen = LoadGenerator([LoadTarget.from_app(APP, server)], seed=4)
    gen.start()
    try:
        t0 = gen.started_at
        assert t0 is not None
        drain_until(gen, lambda recs: any(r.scheduled_s >= t0 + 1.0 for r in recs))
        changed = time.time()
        gen.set_rate("cam", 3 * APP.rate_rps)
        drain_until(gen, lambda recs: any(r.scheduled_s >= changed + 2.5 for r in recs))
        with pytest.raises(ClusterError, match="no app 'nope'"):
            gen.set_rate("nope", 1.0)
    finally:
        records = gen.stop()
    # Poisson counts over 2 s from 0.5 s after the change (a gap drawn at the old rate may
    # still be running): mean 180 at the new rate against 60 at the old one
    n = sum(changed + 0.5 <= r.scheduled_s < changed + 2.5 for r in records)
    assert abs(n - 2.0 * 3 * APP.rate_rps) <= 4 * math.sqrt(2.0 * 3 * APP.rate_rps), n


def test_malformed_request_closes_only_that_connection(server: int) -> None:
    for header in (struct.pack(">I", 10), struct.pack(">I", 2**31)):
        with socket.create_connection(("127.0.0.1", server), timeout=5) as bad:
            bad.sendall(header + bytes(10))
            assert bad.recv(8) == b""  # closed by the server
    with socket.create_connection(("127.0.0.1", server), timeout=5) as good:
        for _ in range(3):
            cls, service_us = lc_request(good, bytes(3 * 32 * 32))
            assert 0 <= cls < 10 and service_us > 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_cleanly_with_a_client_connected(tmp_path: Path, sig: int) -> None:
    proc, port = start_server(tmp_path / "ready.json")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            lc_request(sock, bytes(3 * 32 * 32))
            proc.send_signal(sig)
            assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_generator_records_failures_for_a_closed_port() -> None:
    # bound but not listening: connections are refused, and nobody else can take the port
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        gen = LoadGenerator([LoadTarget("ghost", "127.0.0.1", port, rate_rps=40)], seed=1)
        gen.start()
        drain_until(gen, lambda recs: len(recs) >= 5)
        records = gen.stop()
    assert records and all(not r.ok for r in records)
    assert {r.error for r in records} == {"ConnectionRefusedError"}
    assert all(math.isnan(r.sent_s) for r in records)
    assert latency_summary(records, deadline_ms=100).miss_rate == 1.0


def test_generator_stops_when_its_parent_dies() -> None:
    script = textwrap.dedent("""
        import os
        from deepedge.apps import LoadGenerator, LoadTarget
        gen = LoadGenerator([LoadTarget("x", "127.0.0.1", 9, rate_rps=5)])
        gen.start()
        print(gen.pid, flush=True)
        os._exit(0)  # no cleanup: as if killed
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], env=ENV, capture_output=True, timeout=30, check=True
    )
    pid = int(out.stdout)
    deadline = time.monotonic() + 30
    while running(pid):
        assert time.monotonic() < deadline, "orphaned load generator is still running"
        time.sleep(0.1)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may be slow in a container)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_wait_ready_reports_an_early_exit(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit(3)", "--name", "cam"], stderr=subprocess.PIPE
    )
    with pytest.raises(ClusterError, match=r"'cam' exited with code 3") as err:
        wait_ready(tmp_path / "ready.json", proc, timeout_s=30)
    assert err.value.hint


def test_wait_ready_times_out_and_ignores_stale_files(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    ready.write_text('{"port": 1234, "pid": 1}')  # left over from an earlier run
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(ClusterError, match="did not write"):
            wait_ready(ready, proc, timeout_s=0.5)
    finally:
        proc.kill()
        proc.wait()
