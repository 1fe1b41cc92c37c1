"""Serving on an emulated cluster: replicas in device partitions, scaled both ways,
replaced when they die, and a policy replaying a trace end to end (real processes,
cgroups, HTTP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest

from deepedge.cluster import make_backend
from deepedge.serving import DEFAULT_CATALOG, Flavour, LatencyModel, RateTrace
from deepedge.serving.frontend import FrontendProcess, predict
from deepedge.serving.model import load_served_model
from deepedge.serving.policies import ServingProblem
from deepedge.serving.pool import ReplicaPool
from deepedge.serving.run import ReplayTrace, ServingSession
from deepedge.serving.service import make_policy
from deepedge.spec import ClusterSpec
from tests.conftest import needs_cgroups

pytestmark = [needs_cgroups, pytest.mark.root, pytest.mark.timeout(300)]

FLAVOURS = {"s": Flavour("s", 0.1, 512), "m": Flavour("m", 0.2, 768)}
SPEC = ClusterSpec.model_validate(
    {
        "name": "serve",
        "cpu_period_us": 5000,
        "devices": [{"name": "a", "kind": "x86-mini"}, {"name": "b", "kind": "x86-mini"}],
    }
)


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, tick=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if tick:
            tick()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    return tiny_checkpoint


@pytest.fixture(scope="module")
def cluster():
    with make_backend(SPEC) as c:
        c.start()
        yield c


def cpu_share(device, partition: str, seconds: float) -> float:
    before, t0 = device.partition_usage(partition).cpu_seconds, time.monotonic()
    time.sleep(seconds)
    return (device.partition_usage(partition).cpu_seconds - before) / (time.monotonic() - t0)


def test_a_partition_fences_its_processes_inside_the_device_and_resizes_live(cluster) -> None:
    device = cluster.devices["a"]
    assert device.partitions
    device.set_partition("hog", cores=0.1, memory_mb=256)
    proc = device.spawn([sys.executable, "-c", "while True: pass"], partition="hog")
    try:
        assert proc.pid in device.pids()  # the device counts its partitions' processes
        wait_for(lambda: device.partition_usage("hog").cpu_seconds > 0.05, 30, "the hog to run")
        assert cpu_share(device, "hog", 1.5) <= 0.1 * 1.3
        device.set_partition("hog", cores=0.3, memory_mb=256)  # vertical: no restart
        assert cpu_share(device, "hog", 1.5) > 0.15
        assert proc.poll() is None
    finally:
        device.remove_partition("hog")
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert proc.pid not in device.pids()


def test_the_pool_scales_both_ways_and_replaces_a_dead_replica(
    cluster, checkpoint, tmp_path
) -> None:
    served = load_served_model(checkpoint)
    image = bytes(range(256)) * (served.payload_bytes // 256)
    expected = served.predict(image)
    with FrontendProcess(log_path=tmp_path / "fe.log") as fe:
        pool = ReplicaPool(
            cluster, checkpoint, fe, tmp_path / "replicas", payload_bytes=served.payload_bytes
        )
        try:
            pool.apply({"a": {"s": 1}}, FLAVOURS)
            pool.wait_ready(120)
            assert predict(fe.url, image) == expected
            assert pool.cold_starts and pool.cold_starts[0].seconds > 0

            # horizontal: one more on b; make before break keeps a's replica meanwhile
            actions = pool.apply({"a": {"s": 1}, "b": {"m": 1}}, FLAVOURS)
            assert actions == ["start r2 (m) on b"]
            pool.wait_ready(120)
            assert set(fe.stats()) == {"r1", "r2"}

            # a replica dies: the front end stops routing to it, the pool starts another
            victim = pool.replicas["r2"]
            os.killpg(victim.proc.pid, signal.SIGKILL)
            wait_for(lambda: pool.counters.replaced == 1, 30, "the replacement", pool.poll)
            pool.wait_ready(120)
            assert pool.placement() == {"a": {"s": 1}, "b": {"m": 1}}
            assert "r2" not in fe.stats()
            assert predict(fe.url, image) == expected

            # vertical on a (s → m) and b's replica drained and stopped
            survivor = next(r for r in pool.replicas.values() if r.device == "b")
            actions = pool.apply({"a": {"m": 1}}, FLAVOURS)
            assert actions == ["resize r1 on a: s → m", f"drain and stop {survivor.name} (m) on b"]
            wait_for(lambda: survivor.name not in pool.replicas, 30, "the drain", pool.poll)
            assert not psutil.pid_exists(survivor.proc.pid) or (
                psutil.Process(survivor.proc.pid).status() == psutil.STATUS_ZOMBIE
            )
            assert pool.placement() == {"a": {"m": 1}}
            assert predict(fe.url, image) == expected
            assert pool.counters.started == 2 and pool.counters.resized == 1
        finally:
            pool.stop()
        assert not pool.replicas
        assert not cluster.devices["a"].pids() and not cluster.devices["b"].pids()


def test_each_policy_replays_a_trace_end_to_end(cluster, checkpoint, tmp_path) -> None:
    served = load_served_model(checkpoint)
    models = {
        "s": LatencyModel("s", mu_rps=40.0, base_ms=5.0, k=1.0),
        "m": LatencyModel("m", mu_rps=80.0, base_ms=4.0, k=1.0),
    }
    day = np.array([2.0] * 8 + [30.0] * 4 + [8.0] * 12)
    trace = RateTrace(np.tile(day, 28), 3600.0, "synthetic", "test")
    replay = ReplayTrace.from_trace(
        trace, hours=4, peak_rps=30.0, hour_s=1.0, start_hour=len(trace) - 17
    )
    with ServingSession(
        cluster,
        checkpoint,
        tmp_path,
        payload_bytes=served.payload_bytes,
        flavours=list(FLAVOURS.values()),
        catalog=DEFAULT_CATALOG,
        slo_ms=200.0,
    ) as session:
        problem = ServingProblem(
            models, FLAVOURS, DEFAULT_CATALOG, session.pool.capacity, slo_ms=200.0
        )
        for name in ("static-peak", "reactive", "barista"):
            result = session.replay(make_policy(name, problem, replay), replay, problem)
            s = result.summary
            expected = replay.window.sum() * replay.hour_s
            assert 0.5 * expected < s["requests"] < 1.5 * expected, s
            assert s["failed"] == 0
            assert s["cost"] > 0 and 0 <= s["within_slo"] <= 1
            assert len(result.timeline) >= 2
            rows = result.timeline
            assert all(r["capacity_rps"] > 0 for r in rows)
            if name == "barista":
                assert all(r["forecast_rps"] is not None for r in rows)
                # the morning peak is 7-11 h away at the start: planned ahead of it
                assert max(r["planned_rps"] for r in rows) >= 20.0
        assert session.pool.replicas  # the last policy's replicas until the session closes
    assert not session.pool.replicas


def test_serve_refuses_bad_input_before_booting_anything(tmp_path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text("devices:\n  - {name: a, kind: x86-mini}\n")
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(b"not a checkpoint")
    for args, says in (
        ([str(spec), str(tmp_path / "missing.ckpt")], "does not exist"),
        ([str(spec), str(bad)], "checkpoint"),
        ([str(spec), str(bad), "--policy", "hpa"], "unknown serving policy"),
    ):
        out = subprocess.run(
            [sys.executable, "-c", "from deepedge.cli import main; main()", "serve", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode != 0
        assert "Traceback" not in out.stderr
        assert says in out.stderr, out.stderr
