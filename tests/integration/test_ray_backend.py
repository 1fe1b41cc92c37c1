"""The Ray backend's own promises on an emulated Ray cluster (a raylet per device on
127.0.0.1): a device's processes run in its cgroup on its node and report their exit codes;
a killed node is a failed device whose processes die with it; what cannot work says so in
one line. (The end-to-end suites run on both backends: test_session, test_controller,
test_elastic.)"""

from __future__ import annotations

import signal
import sys
import time

import psutil
import pytest

from deepedge.cluster.cgroups import detect_cgroups
from deepedge.cluster.ray_backend import LOST, EmulatedRayCluster, RayBackend
from deepedge.errors import ClusterError
from deepedge.interference import InterferenceLab, Scenario, TrainLoad
from deepedge.spec import ClusterSpec, JobSpec
from tests.conftest import assert_nothing_left, needs_cgroups

pytestmark = [needs_cgroups, pytest.mark.root, pytest.mark.timeout(240)]

SPEC = {
    "name": "rt",
    "backend": "ray",
    "devices": [{"name": "fast", "kind": "orin-nano"}, {"name": "slow", "kind": "jetson-nano"}],
}
SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_processes_run_fenced_on_their_node_and_die_with_it(tmp_path):
    backend = RayBackend(ClusterSpec.model_validate(SPEC))
    with backend:
        fast, slow = backend.devices["fast"], backend.devices["slow"]
        assert fast.on_this_host and fast.address == "127.0.0.1"
        assert fast.node_id != slow.node_id  # a node per device
        log = tmp_path / "hello.log"
        hello = fast.spawn([sys.executable, "-c", "print('hi'); raise SystemExit(3)"], log_path=log)
        assert hello.wait(timeout=60) == 3 and log.read_text().strip() == "hi"
        sleeper = slow.spawn(SLEEPER)
        _wait_for(lambda: sleeper.pid in slow.pids())
        driver, _ = detect_cgroups()
        assert driver is not None
        group = next(g for g in driver.children("deepedge") if sleeper.pid in _pids(driver, g))
        assert slow.usage().cpu_seconds >= 0 and group  # the node's host fenced it
        with pytest.raises(ClusterError, match="does not exist there") as err:
            fast.spawn(SLEEPER, log_path=tmp_path / "no-such-dir" / "x.log")
        assert "\n" not in err.value.one_line()
        assert backend.emulated is not None
        backend.emulated.kill_node("slow")
        assert sleeper.wait(timeout=60) == LOST
        _wait_for(lambda: not psutil.pid_exists(sleeper.pid) or _zombie(sleeper.pid))
        with pytest.raises(ClusterError, match="'slow' is lost"):
            slow.pids()
        survivor = fast.spawn(SLEEPER)
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(timeout=60) == -signal.SIGTERM
        pids = {sleeper.pid, survivor.pid}
    assert_nothing_left(backend, pids)


def test_a_device_without_a_node_is_named_in_one_line():
    spec = ClusterSpec.model_validate(SPEC)
    ray_cluster = EmulatedRayCluster()
    ray_cluster.start(spec.devices[:1])  # no node for "slow"
    try:
        backend = RayBackend(spec.model_copy(update={"address": ray_cluster.address}))
        with pytest.raises(ClusterError, match="no Ray node for device") as err:
            backend.start()
        assert "slow" in str(err.value) and "fast" not in str(err.value)
        assert "deepedge cluster up" in (err.value.hint or "")
        assert not backend.devices  # the host started for "fast" was stopped again
    finally:
        ray_cluster.shutdown()


def test_the_interference_lab_measures_on_ray_nodes(tmp_path):
    """The lab's LC app, stressor and training co-runner run in a Ray node's device, and
    interfere there as they do on the local backend (test_interference_lab)."""
    spec = ClusterSpec.model_validate(
        {
            "name": "ilab",
            "backend": "ray",
            "cpu_period_us": 5000,
            "devices": [{"name": "mini", "kind": "x86-mini"}],
        }
    )
    job = JobSpec.model_validate(
        {"model": {"arch": "small_cnn", "width": 8}, "dataset": {"image_size": 16}}
    )
    with InterferenceLab(
        spec,
        job.model_copy(update={"global_batch": 32}),
        tmp_path,
        app_kinds=("cnn_inference",),
        stressor_kinds=("cpu",),
        settle_s=0.5,
        requests_per_run=150,
        window_s=(1.5, 3.0),
    ) as lab:
        alone = lab.run(Scenario("mini", "cnn_inference", 40.0))
        loaded = lab.run(
            Scenario(
                "mini", "cnn_inference", 40.0, stressors={"cpu": 0.6}, train=TrainLoad(16, 0.6)
            )
        )
    assert alone.requests > 50 and alone.failed == 0
    assert loaded.p95_ms > 1.5 * alone.p95_ms
    assert loaded.usage["stressor:cpu"]["cpu_cores"] > 0.05
    assert loaded.train_samples_per_s and loaded.train_samples_per_s > 0


def _pids(driver, group: str) -> set[int]:
    try:
        return driver.pids(f"deepedge/{group}/slow")
    except (OSError, ClusterError):
        return set()


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
