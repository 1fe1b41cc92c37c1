"""The serving front end with real replica processes on 127.0.0.1 (no cgroups needed).

Two replicas of a tiny checkpoint and one front end are shared by the module; tests that
need a replica to hang, fail or die use a stub replica (a thread speaking the protocol)
or a replica of their own. Routing is set explicitly by each test.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest

import deepedge
from deepedge.apps.loadgen import LoadGenerator, LoadTarget, schedule_arrivals
from deepedge.apps.server import HEADER, REPLY
from deepedge.errors import ClusterError
from deepedge.serving.frontend import (
    FrontendProcess,
    ReplicaAddress,
    _Router,
    predict,
)
from deepedge.serving.model import ServedModel, load_served_model

pytestmark = pytest.mark.timeout(120)

SRC = str(Path(deepedge.__file__).resolve().parents[1])
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p),
}
NBYTES = 3 * 16 * 16


def wait_for(check: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Replica:
    """A ``python -m deepedge.serving.replica`` process."""

    def __init__(self, checkpoint: Path, name: str, workdir: Path) -> None:
        self.name = name
        self.ready = workdir / f"{name}.json"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deepedge.serving.replica",
                "--checkpoint",
                str(checkpoint),
                "--name",
                name,
                "--ready-file",
                str(self.ready),
                "--warmup",
                "2",
                "--parent-pid",
                str(os.getpid()),
            ],
            env=ENV,
            stderr=subprocess.PIPE,
        )
        self.info: dict = {}

    def wait_ready(self, timeout_s: float = 60.0) -> Replica:
        def ready() -> bool:
            assert self.proc.poll() is None, self.proc.stderr.read().decode()  # type: ignore[union-attr]
            try:
                self.info = json.loads(self.ready.read_text())
            except (OSError, ValueError):
                return False
            return True

        wait_for(ready, timeout_s, f"replica {self.name}")
        return self

    @property
    def address(self) -> ReplicaAddress:
        return ReplicaAddress(self.name, "127.0.0.1", self.info["port"], 1.0)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class StubReplica:
    """Speaks the replica protocol from threads: each request is counted, then answered
    with class ``cls`` once ``gate`` is set, or (``close=True``) dropped unanswered."""

    def __init__(self, name: str, *, cls: int = 7, close: bool = False) -> None:
        self.name, self.cls, self.close_conns = name, cls, close
        self.gate = threading.Event()
        self.received = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def address(self, weight: float = 1.0) -> ReplicaAddress:
        return ReplicaAddress(self.name, "127.0.0.1", self.port, weight)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f, contextlib.suppress(OSError):
            while head := f.read(HEADER.size):
                f.read(HEADER.unpack(head)[0])
                self.received += 1
                if self.close_conns:
                    return
                self.gate.wait()
                conn.sendall(REPLY.pack(self.cls, 1500))  # the front end may have given up

    def stop(self) -> None:
        self.gate.set()
        self.sock.close()


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def served(checkpoint: Path) -> ServedModel:
    return load_served_model(checkpoint)


@pytest.fixture(scope="module")
def replicas(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    workdir = tmp_path_factory.mktemp("replicas")
    started = [Replica(checkpoint, name, workdir) for name in ("r1", "r2")]
    try:
        for r in started:
            r.wait_ready()
        yield started
        for r in started:  # SIGTERM: a clean exit, promptly
            r.proc.terminate()
        for r in started:
            assert r.proc.wait(timeout=15) == 0
    finally:
        for r in started:
            r.close()


@pytest.fixture(scope="module")
def frontend() -> Iterator[FrontendProcess]:
    with FrontendProcess() as fe:
        yield fe


def image(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, NBYTES, np.uint8).tobytes()


def call(
    fe: FrontendProcess, method: str, path: str, body: bytes | None = None, token: str | None = None
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection(fe.host, fe.port, timeout=15)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.read(), dict(reply.getheaders())
    finally:
        conn.close()


def test_replica_ready_file_and_protocol(replicas: list[Replica], served: ServedModel) -> None:
    info = replicas[0].info
    assert info["name"] == "r1" and info["pid"] == replicas[0].proc.pid
    assert (info["payload_bytes"], info["input_shape"], info["num_classes"]) == (
        NBYTES,
        [3, 16, 16],
        8,
    )
    with socket.create_connection(("127.0.0.1", info["port"]), timeout=10) as sock:
        sock.sendall(HEADER.pack(NBYTES) + image(1))
        cls, service_us = REPLY.unpack(sock.makefile("rb").read(REPLY.size))
    assert cls == served.predict(image(1)) and service_us > 0


def test_predictions_match_the_model(
    frontend: FrontendProcess, replicas: list[Replica], served: ServedModel
) -> None:
    frontend.set_replicas(NBYTES, [r.address for r in replicas])
    for seed in range(12):
        assert predict(frontend.url, image(seed)) == served.predict(image(seed))
    status, body, headers = call(frontend, "POST", "/predict", image(99))
    reply = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert reply["class"] == served.predict(image(99))
    assert reply["replica"] in {"r1", "r2"} and reply["service_ms"] > 0


def test_admin_needs_the_token(frontend: FrontendProcess) -> None:
    for token in (None, "wrong"):
        assert call(frontend, "GET", "/admin/replicas", token=token)[0] == 401
        put = json.dumps({"payload_bytes": NBYTES, "replicas": []}).encode()
        assert call(frontend, "PUT", "/admin/replicas", put, token=token)[0] == 401
    assert call(frontend, "GET", "/healthz")[:2] == (200, b"ok")
    status, body, _ = call(frontend, "PUT", "/admin/replicas", b"{", token=frontend._token)
    assert status == 400 and b"JSON" in body


def test_wrong_length_and_no_replica(frontend: FrontendProcess, replicas: list[Replica]) -> None:
    frontend.set_replicas(NBYTES, [r.address for r in replicas])
    assert call(frontend, "POST", "/predict", image(0)[:-1])[0] == 400
    assert call(frontend, "POST", "/predict", image(0) + b"x")[0] == 400
    with pytest.raises(ClusterError, match="400"):
        predict(frontend.url, b"tiny")
    frontend.set_replicas(NBYTES, [])
    assert call(frontend, "POST", "/predict", image(0))[0] == 503
    # The load generator names such failures by status.
    target = LoadTarget(
        "fe", "127.0.0.1", frontend.port, 50.0, payload_bytes=NBYTES, protocol="http"
    )
    gen = LoadGenerator([target], seed=1, duration_s=0.3)
    gen.start()
    wait_for(lambda: not gen.running(), what="the load generator to finish")
    records = gen.stop()
    assert records and {r.error for r in records} == {"HTTP503"}


def test_jsq_spreads_requests(frontend: FrontendProcess, replicas: list[Replica]) -> None:
    frontend.set_replicas(NBYTES, [r.address for r in replicas])
    before = frontend.stats()
    for seed in range(10):  # one at a time: every replica ties, so round-robin
        predict(frontend.url, image(seed))
    after = frontend.stats()
    assert [after[n]["served"] - before[n]["served"] for n in ("r1", "r2")] == [5, 5]
    with ThreadPoolExecutor(8) as pool:  # concurrent: both queues are used
        list(pool.map(lambda s: predict(frontend.url, image(s)), range(64)))
    final = frontend.stats()
    assert all(final[n]["served"] - after[n]["served"] > 0 for n in ("r1", "r2"))
    assert sum(final[n]["served"] - after[n]["served"] for n in ("r1", "r2")) == 64
    assert all(final[n]["outstanding"] == 0 and not final[n]["draining"] for n in ("r1", "r2"))


def test_router_weighs_queues_by_capacity() -> None:
    router = _Router(max_connections=4)
    router.replace(8, [ReplicaAddress("big", "h", 1, 3.0), ReplicaAddress("small", "h", 2, 1.0)])
    big, small = router.active
    assert router.pick() is big  # idle: the faster one
    big.outstanding = 3  # (3+1)/3 > (0+1)/1
    assert router.pick() is small
    big.outstanding, small.outstanding = 2, 0  # 1.0 == 1.0: a tie, taken in turns
    assert {router.pick().name for _ in range(2)} == {"big", "small"}
    assert router.pick(exclude=big) is small
    small.down_until = time.monotonic() + 60  # set aside after a failure: last resort only
    assert router.pick() is big and router.pick(exclude=big) is small
    small.outstanding = 1
    router.replace(8, [ReplicaAddress("big", "h", 1, 3.0)])
    assert [r.name for r in router.draining] == ["small"] and router.active == [big]
    small.served = 9
    router.replace(8, [ReplicaAddress("big", "h", 1, 3.0), ReplicaAddress("small", "h", 2, 2.0)])
    assert router.active == [big, small] and not small.draining  # back, counters kept
    assert router.draining == [] and small.weight == 2.0 and small.served == 9
    router.replace(8, [ReplicaAddress("big", "h", 1, 3.0), ReplicaAddress("small", "h", 3, 1.0)])
    assert router.draining == [small] and router.active[1] is not small  # moved: a new one
    small.outstanding = 0
    router.reap()
    assert router.draining == [] and [r["port"] for r in router.stats()["replicas"]] == [1, 3]


def test_frontend_start_failure_is_one_line() -> None:
    fe = FrontendProcess(host="256.0.0.1")  # not an address: the process cannot listen
    with pytest.raises(ClusterError, match="exited with code 1") as exc:
        fe.start(timeout_s=30)
    assert "cannot listen on 256.0.0.1" in exc.value.one_line()
    assert "\n" not in exc.value.one_line()


def test_removing_a_replica_drains_it(
    frontend: FrontendProcess, replicas: list[Replica], served: ServedModel
) -> None:
    stub = StubReplica("slow", cls=5)
    try:
        frontend.set_replicas(NBYTES, [replicas[0].address, stub.address(weight=100.0)])
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(predict, frontend.url, image(s)) for s in range(2)]
            wait_for(lambda: stub.received == 2, what="requests at the stub")
            frontend.set_replicas(NBYTES, [replicas[0].address])
            stats = frontend.stats()
            assert stats["slow"]["draining"] and stats["slow"]["outstanding"] == 2
            assert predict(frontend.url, image(3)) == served.predict(image(3))
            assert stub.received == 2  # no new requests for a draining replica
            with pytest.raises(ClusterError, match="in flight"):
                frontend.wait_drained(["slow"], timeout_s=0.2)
            stub.gate.set()
            assert [f.result(timeout=15) for f in held] == [5, 5]  # in-flight ones finish
        frontend.wait_drained(["slow"], timeout_s=15)
        assert "slow" not in frontend.stats()
    finally:
        stub.stop()


def test_failed_connections_are_retried_then_502(
    frontend: FrontendProcess, replicas: list[Replica]
) -> None:
    dropper, dropper2 = StubReplica("drop", close=True), StubReplica("drop2", close=True)
    try:
        frontend.set_replicas(NBYTES, [dropper.address(weight=100.0), replicas[1].address])
        status, body, _ = call(frontend, "POST", "/predict", image(4))
        assert status == 200 and json.loads(body)["replica"] == "r2"
        assert dropper.received == 1 and frontend.stats()["drop"]["failed"] == 1
        frontend.set_replicas(NBYTES, [dropper.address(), dropper2.address()])
        status, body, _ = call(frontend, "POST", "/predict", image(4))
        assert status == 502 and dropper2.received == 1
    finally:
        dropper.stop()
        dropper2.stop()


def test_a_silent_replica_times_out_504() -> None:
    stub = StubReplica("mute")
    try:
        with FrontendProcess(request_timeout_s=0.3) as fe:
            fe.set_replicas(NBYTES, [stub.address()])
            status, body, _ = call(fe, "POST", "/predict", image(0))
            assert status == 504 and b"0.3s" in body
            assert fe.stats()["mute"]["outstanding"] == 0
    finally:
        stub.stop()


def test_killing_a_replica_loses_no_request(
    frontend: FrontendProcess,
    replicas: list[Replica],
    checkpoint: Path,
    tmp_path: Path,
) -> None:
    victim = Replica(checkpoint, "victim", tmp_path).wait_ready()
    try:
        frontend.set_replicas(NBYTES, [replicas[0].address, victim.address])
        schedule = ((0.0, 100.0),)
        target = LoadTarget(
            "serve",
            "127.0.0.1",
            frontend.port,
            100.0,
            payload_bytes=NBYTES,
            protocol="http",
            schedule=schedule,
        )
        gen = LoadGenerator([target], seed=11, duration_s=3.0)
        gen.start()
        wait_for(lambda: frontend.stats()["victim"]["served"] >= 20, what="load on the victim")
        victim.proc.send_signal(signal.SIGKILL)
        wait_for(lambda: not gen.running(), timeout_s=30, what="the load to end")
        records = gen.stop()
    finally:
        victim.close()
    assert len(records) > 150
    failed = [r for r in records if not r.ok]
    assert not failed, failed[:3]
    stats = frontend.stats()
    assert stats["victim"]["served"] >= 20 and stats["r1"]["served"] > stats["victim"]["served"]
    # Open loop: each request is timed from its scheduled send time, which is exactly the
    # seeded schedule's, whether or not earlier replies were late.
    assert gen.started_at is not None
    offsets = list(schedule_arrivals(schedule, np.random.default_rng([11, 0]), end_s=3.0))
    scheduled = [r.scheduled_s - gen.started_at for r in records]
    assert np.allclose(scheduled, offsets, atol=1e-6)
    for r in records:
        assert r.sent_s >= r.scheduled_s - 1e-3
        assert r.latency_ms == pytest.approx((r.done_s - r.scheduled_s) * 1e3)
        assert 0 < r.service_ms < r.latency_ms


def importing_torch(pid: int) -> bool:
    return any("libtorch" in m.path for m in psutil.Process(pid).memory_maps())


def test_bad_checkpoint_and_sigterm(tmp_path: Path, checkpoint: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    broken = Replica(bad, "broken", tmp_path)
    early = Replica(checkpoint, "early", tmp_path)
    try:
        # SIGTERM while torch is being imported (its library mapped, the replica not ready):
        # exits 0 all the same.
        wait_for(lambda: importing_torch(early.proc.pid), what="the torch import")
        early.proc.terminate()
        assert early.proc.wait(timeout=30) == 0
        assert broken.proc.wait(timeout=60) == 1  # CheckpointError's exit code
        err = broken.proc.stderr.read().decode().strip()  # type: ignore[union-attr]
        assert "not a deepedge checkpoint" in err and "\n" not in err and "Traceback" not in err
    finally:
        broken.close()
        early.close()


def test_frontend_exits_cleanly_and_with_its_parent(tmp_path: Path) -> None:
    fe = FrontendProcess().start()
    proc = fe._proc
    assert proc is not None
    proc.terminate()
    assert proc.wait(timeout=15) == 0
    fe.stop()
    code = (
        "import os, sys; from deepedge.serving.frontend import FrontendProcess; "
        "fe = FrontendProcess().start(); print(fe.pid, flush=True); os._exit(0)"
    )
    child = subprocess.run(
        [sys.executable, "-c", code],
        env={**ENV, "TMPDIR": str(tmp_path)},  # what the dead parent leaves stays here
        capture_output=True,
        timeout=60,
        check=True,
    )
    orphan = int(child.stdout.split()[0])

    def gone() -> bool:
        try:
            return psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, timeout_s=15, what="the orphaned front end to exit")
