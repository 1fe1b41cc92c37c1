"""A device joining a running emulated cluster (issue 14 item 5): fenced like the booted
ones (cgroup limits, pinned CPUs, its own shaped link, the fallback's duty cycle), its
training agent answering while another device trains, and nothing of it left behind."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from deepedge.cluster import LocalCluster
from deepedge.cluster.netns import NETNS_DIR, netns_available
from deepedge.data import build_dataset
from deepedge.errors import ClusterError, SpecError, TrainingError
from deepedge.session import EdgeSession
from deepedge.spec import ClusterSpec, DeviceSpec, JobSpec
from tests.conftest import needs_cgroups

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

BUSY = [sys.executable, "-c", "while True: pass"]
JOB = {
    "model": {"arch": "small_cnn", "width": 8},
    "dataset": {"kind": "synthetic", "train_size": 96, "test_size": 16, "image_size": 16},
    "epochs": 1,
    "global_batch": 16,
}


def _spec(**extra) -> ClusterSpec:
    return ClusterSpec.model_validate(
        {"name": "join", "cpu_period_us": 5000, "devices": [{"name": "a", "kind": "orin-nano"}]}
        | extra
    )


def _quota_cores(cluster: LocalCluster, name: str) -> float:
    dev, driver = cluster.devices[name], cluster.driver
    if driver.version == 1:
        quota = int((driver.cpu_root / dev._group / "cpu.cfs_quota_us").read_text())
        period = int((driver.cpu_root / dev._group / "cpu.cfs_period_us").read_text())
    else:
        quota_s, period_s = (driver.root / dev._group / "cpu.max").read_text().split()
        quota, period = int(quota_s), int(period_s)
    return quota / period


def _gone(cluster: LocalCluster, groups: dict[str, str], pids: set[int]) -> None:
    """No process of ``pids`` runs and no directory of ``groups`` exists any more."""
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not any(d.exists() for g in groups.values() for d in cluster.driver.dirs(g))


@needs_cgroups
def test_a_joining_device_is_fenced_like_the_others_and_removed_at_stop():
    cluster = LocalCluster(_spec())
    with pytest.raises(ClusterError, match="not running"):
        cluster.add_device(DeviceSpec(name="b", kind="jetson-nano"))
    with cluster:
        b = cluster.add_device(DeviceSpec(name="b", kind="jetson-nano", memory_mb=2048))
        assert list(cluster.devices) == ["a", "b"] and cluster.devices["b"] is b
        assert [d.name for d in cluster.spec.devices] == ["a", "b"]
        assert cluster.spec.devices[-1] == b.spec and b.spec.cpu_cores == 0.08  # catalog
        assert _quota_cores(cluster, "b") == pytest.approx(b.spec.cpu_cores, rel=0.02)
        limit = cluster.driver.dirs(b._group)[1 if cluster.driver.version == 1 else 0]
        name = "memory.limit_in_bytes" if cluster.driver.version == 1 else "memory.max"
        assert int((limit / name).read_text()) == 2048 * 2**20
        assert b.cpus and set(b.cpus) <= set(psutil.Process().cpu_affinity())
        if cluster.driver.pins_cpus:  # fenced to them by its cpuset
            root = cluster.driver.cpuset_root if cluster.driver.version == 1 else limit.parent
            cpuset = (root / b._group / "cpuset.cpus").read_text().strip()
            assert cpuset == ",".join(map(str, b.cpus)) or len(b.cpus) > 1, cpuset
        proc = b.spawn(BUSY)
        assert proc.pid in b.pids()
        for bad, error, match in [
            (DeviceSpec(name="b", kind="rpi4"), SpecError, "already has a device named 'b'"),
            (DeviceSpec(name="c", kind="toaster"), SpecError, "unknown kind 'toaster'"),
            (DeviceSpec(name="c", kind="rpi4", memory_mb=100), SpecError, "leaves nothing"),
        ]:
            with pytest.raises(error, match=match) as e:
                cluster.add_device(bad)
            assert e.value.hint and "\n" not in e.value.one_line()
        assert list(cluster.devices) == ["a", "b"]  # nothing booted for the bad ones
        c = cluster.add_device(DeviceSpec(name="c", kind="rpi4"))
        c_group = c._group
        cluster.remove_device("c")  # a join undone
        assert "c" not in cluster.devices and len(cluster.spec.devices) == 2
        assert not any(d.exists() for d in cluster.driver.dirs(c_group))
        groups = {n: d._group for n, d in cluster.devices.items()}
        pids = b.pids()
    _gone(cluster, groups, pids)


def test_a_joining_device_is_duty_cycled_in_the_fallback():
    with LocalCluster(_spec(), force_fallback=True) as cluster:
        b = cluster.add_device(DeviceSpec(name="b", kind="jetson-nano"))
        t0 = time.monotonic()
        proc = b.spawn(BUSY)
        time.sleep(1.5)  # the measurement window: at least 1.5 s, more on a loaded host
        cpu = psutil.Process(proc.pid).cpu_times()
        busy, elapsed = cpu.user + cpu.system, time.monotonic() - t0
        assert busy < 0.4 * elapsed, f"a 0.08-core device burnt {busy:.2f} s in {elapsed:.2f} s"
    assert not psutil.pid_exists(proc.pid) or psutil.Process(proc.pid).status() == "zombie"


@needs_cgroups
@pytest.mark.skipif(not netns_available()[0], reason=netns_available()[1])
def test_a_joining_device_gets_its_own_shaped_link():
    with LocalCluster(_spec(network="netns")) as cluster:
        a = cluster.devices["a"]
        b = cluster.add_device(DeviceSpec(name="b", kind="jetson-nano", link_mbps=20))
        assert b.link is not None and b.address not in (a.address, "127.0.0.1")
        qdisc = subprocess.run(
            ["tc", "-n", b.link.netns, "qdisc", "show", "dev", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "tbf" in qdisc and "20Mbit" in qdisc, qdisc
        server_host = cluster.coordinator_address
        with socket.create_server((server_host, 0)) as server:
            server.settimeout(60)
            port = server.getsockname()[1]
            hello = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])))"
            b.spawn([sys.executable, "-c", hello + ".sendall(b'hi')", server_host, str(port)])
            conn, (peer, _) = server.accept()  # it reaches the coordinator over its link
            with conn:
                assert peer == b.address and conn.recv(2) == b"hi"
        netns = b.link.netns
    assert not (NETNS_DIR / netns).exists()


@needs_cgroups
def test_a_device_joins_a_running_session_and_its_agent_answers(tmp_path):
    session = EdgeSession(_spec(), tmp_path / "session", monitor_interval_s=0.2)
    job = JobSpec.model_validate(JOB)
    data = build_dataset(job.dataset, "train", drifted=False).save(tmp_path / "train.npz")
    with session:
        runs: list[tuple[float, float]] = []  # the job on a: (start, end) of each run
        errors: list[Exception] = []
        enough = threading.Event()

        def train_a() -> None:  # the job that runs while the device joins, and after
            while not enough.is_set():
                started = time.monotonic()
                try:
                    result = session.agents.profile(job, data, {"a": 16}, steps=10, warmup=1)
                    assert set(result.points) == {"a"}, result.failures
                except Exception as err:
                    errors.append(err)
                    return
                runs.append((started, time.monotonic()))

        runner = threading.Thread(target=train_a)
        runner.start()
        while not runs and not errors:  # it runs
            time.sleep(0.05)
        joined = time.monotonic()
        session.add_device(DeviceSpec(name="b", kind="jetson-nano"))
        joined = (joined, time.monotonic())
        b = session.cluster.devices["b"]
        assert [d.name for d in session.spec.devices] == ["a", "b"]
        assert b.cpu_limit == b.spec.cpu_cores  # fenced again after its agent booted
        assert _quota_cores(session.cluster, "b") == pytest.approx(b.spec.cpu_cores, rel=0.02)
        assert session.agents.runtime_mb["b"] > 50  # a torch process
        side = session.agents.profile(job, data, {"b": 8}, steps=2, warmup=1)  # on the side
        assert not side.failures and len(side.points["b"].step_times) == 2
        enough.set()
        runner.join(timeout=240)
        assert not runner.is_alive() and not errors, errors
        assert sum(1 for s, e in runs if s < joined[1] and e > joined[0]) >= 1  # overlapped
        deadline = time.monotonic() + 10  # the monitor samples the new device too
        while not any(dict(s.labels).get("device") == "b" for s in session.monitor.latest()):
            assert time.monotonic() < deadline, "the monitor never sampled device b"
            time.sleep(0.1)

        # a join that fails half-way leaves nothing behind and says so in one line
        def refuse(name, device, timeout_s=180.0):
            raise TrainingError(f"worker on device {name!r} died (exit code 1): no torch")

        session.agents.add = refuse
        with pytest.raises(ClusterError, match=r"^device 'c' could not join") as e:
            session.add_device(DeviceSpec(name="c", kind="rpi4"))
        assert "no torch" in e.value.one_line() and "\n" not in e.value.one_line()
        assert list(session.cluster.devices) == ["a", "b"] and len(session.spec.devices) == 2
        with pytest.raises(ClusterError, match=r"^device 'b' could not join.*already has"):
            session.add_device(DeviceSpec(name="b", kind="rpi4"))
        groups = {n: d._group for n, d in session.cluster.devices.items()}
        groups["c"] = groups["b"].rsplit("/", 1)[0] + "/c"
        pids = {p for d in session.cluster.devices.values() for p in d.pids()}
        assert pids
    _gone(session.cluster, groups, pids)
    assert not any(d.exists() for d in session.cluster.driver.dirs(session.cluster._session))
