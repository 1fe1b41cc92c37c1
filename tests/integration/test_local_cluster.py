"""The local backend with real cgroups and real processes: fences, limits, clean teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from deepedge.cluster import EmulationMode, LocalCluster, cleanup_stale, detect_cgroups
from tests.conftest import needs_cgroups

pytestmark = pytest.mark.root

BUSY = [sys.executable, "-c", "while True: pass"]
SLEEP_WITH_CHILD = [
    sys.executable,
    "-c",
    "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)",
]


def _wait_for(cond, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _alive(pids) -> list[int]:
    """The pids still running; one may exit between any two checks, so ask once each."""
    alive = []
    for p in pids:
        try:
            if psutil.Process(p).status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@needs_cgroups
def test_devices_are_cgroups_with_the_catalog_limits(two_device_spec):
    with LocalCluster(two_device_spec) as cluster:
        assert cluster.mode in (EmulationMode.CGROUP_V1, EmulationMode.CGROUP_V2)
        driver = cluster.driver
        fast = cluster.devices["fast"]
        proc = fast.spawn(SLEEP_WITH_CHILD)
        _wait_for(lambda: len(fast.pids()) == 2)  # the child's child is fenced too
        assert proc.pid in fast.pids()
        group = fast._group
        if driver.version == 1:
            quota = int((driver.cpu_root / group / "cpu.cfs_quota_us").read_text())
            limit = int((driver.memory_root / group / "memory.limit_in_bytes").read_text())
        else:
            quota = int((driver.root / group / "cpu.max").read_text().split()[0])
            limit = int((driver.root / group / "memory.max").read_text())
        assert quota == round(fast.spec.cpu_cores * fast._period_for(fast.spec.cpu_cores))
        assert limit == fast.spec.memory_mb * 2**20
        pids = fast.pids()
        dirs = driver.dirs(group)
    assert not _alive(pids)
    assert not any(d.exists() for d in dirs)


@needs_cgroups
def test_devices_are_pinned_to_their_own_host_cpus(two_device_spec):
    with LocalCluster(two_device_spec) as cluster:
        assert cluster.emulation.endswith("+pinned")
        for device in cluster.devices.values():
            proc = device.spawn(SLEEP_WITH_CHILD)
            _wait_for(lambda d=device: len(d.pids()) == 2)
            assert os.sched_getaffinity(proc.pid) == set(device.cpus)
    unpinned = two_device_spec.model_copy(update={"pin_cpus": False})
    with LocalCluster(unpinned) as cluster:
        device = cluster.devices["fast"]
        assert device.cpus is None and not cluster.emulation.endswith("+pinned")
        proc = device.spawn(SLEEP_WITH_CHILD)
        assert os.sched_getaffinity(proc.pid) == os.sched_getaffinity(0)


@needs_cgroups
def test_cpu_quota_limits_a_busy_process(two_device_spec):
    with LocalCluster(two_device_spec) as cluster:
        slow = cluster.devices["slow"]
        slow.spawn(BUSY)
        cores = slow.spec.cpu_cores
        t0 = time.monotonic()
        before = slow.usage().cpu_seconds
        time.sleep(1.0)  # the measurement window: at least 1 s, more on a loaded host
        used = slow.usage().cpu_seconds - before
        elapsed = time.monotonic() - t0  # brackets both readings: the window's upper bound
        assert 0.5 * cores < used < 1.3 * cores * elapsed + 0.02, (
            f"{used:.3f} s of CPU in {elapsed:.2f} s under a {cores} quota"
        )
        assert slow.usage().throttled_periods > 0


def _coordinator_script(tmp_path: Path) -> Path:
    script = tmp_path / "coord.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, signal, sys, time
        from deepedge.cluster import LocalCluster
        # Ctrl-C must raise even when the runner ignores SIGINT (a background job does)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from deepedge.spec import ClusterSpec
        spec = ClusterSpec.model_validate({{"devices": [{{"name": "a", "kind": "rpi4"}},
                                                         {{"name": "b", "kind": "jetson-nano"}}]}})
        cluster = LocalCluster(spec)
        try:
            cluster.start()
            for d in cluster.devices.values():
                d.spawn({SLEEP_WITH_CHILD!r})
            # each device holds its child and grandchild once both have started
            deadline = time.monotonic() + 60
            while (any(len(d.pids()) < 2 for d in cluster.devices.values())
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            info = {{"pids": sorted(p for d in cluster.devices.values() for p in d.pids()),
                     "session": cluster._session.rsplit("/", 1)[-1],
                     "dirs": [str(x) for d in cluster.devices.values()
                              for x in cluster.driver.dirs(d._group)]}}
            info_path = __import__("pathlib").Path({str(tmp_path / "info.json")!r})
            partial = info_path.with_suffix(".part")  # the test must never read half a file
            partial.write_text(json.dumps(info))
            partial.replace(info_path)
            time.sleep(300)
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
    """)
    )
    return script


def _start_coordinator(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen([sys.executable, str(_coordinator_script(tmp_path))], env=env)
    info_file = tmp_path / "info.json"
    _wait_for(lambda: info_file.exists() or proc.poll() is not None, 120)
    assert proc.poll() is None, "coordinator died during start"
    return proc, json.loads(info_file.read_text())


@needs_cgroups
def test_ctrl_c_tears_everything_down(tmp_path):
    proc, info = _start_coordinator(tmp_path)
    assert len(info["pids"]) == 4
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert not _alive(info["pids"])
    assert not any(Path(d).exists() for d in info["dirs"])


@needs_cgroups
def test_crashed_coordinator_leaves_nothing_running_and_groups_are_reaped(tmp_path):
    proc, info = _start_coordinator(tmp_path)
    assert len(info["pids"]) == 4
    proc.kill()  # no finally, no atexit: only PDEATHSIG and the reaper can clean up
    proc.wait(timeout=10)
    # Direct children die with the coordinator (PDEATHSIG); grandchildren are re-parented
    # and stay fenced in the orphaned groups until the reaper kills them.
    _wait_for(lambda: len(_alive(info["pids"])) <= len(info["pids"]) // 2)
    # a cluster starting on this host meanwhile (another test run) reaps stale groups too
    left = any(Path(d).exists() for d in info["dirs"])
    reaped = cleanup_stale()
    assert info["session"] in reaped or not left, "the dead session's groups should be found"
    assert not _alive(info["pids"])
    assert not any(Path(d).exists() for d in info["dirs"])


def test_fallback_says_so_and_still_throttles(two_device_spec):
    with LocalCluster(two_device_spec, force_fallback=True) as cluster:
        assert cluster.mode is EmulationMode.DUTY_CYCLE
        assert "NOT enforced" in cluster.fallback_warning
        slow = cluster.devices["slow"]
        t0 = time.monotonic()
        proc = slow.spawn(BUSY)
        time.sleep(1.5)  # the measurement window: at least 1.5 s, more on a loaded host
        cpu = psutil.Process(proc.pid).cpu_times()
        elapsed = time.monotonic() - t0
        busy = cpu.user + cpu.system
        assert busy < 0.4 * elapsed, (
            f"duty cycle let a 0.14-core device burn {busy:.2f} s of CPU in {elapsed:.2f} s"
        )
    assert not _alive([proc.pid])


def test_detect_reports_a_reason():
    driver, reason = detect_cgroups()
    assert reason
    assert driver is None or driver.version in (1, 2)
