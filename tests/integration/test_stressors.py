"""Resource stressors as real worker processes in an emulated x86-mini device (0.419 cores).

Each kind is started (with the device's quota lifted, as callers do), then measured over
~0.6 s windows at a few intensities: its consumption must move the way the knob says.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import torch

from deepedge.cluster import LocalCluster
from deepedge.errors import ClusterError
from deepedge.interference.stressors import (
    StressorFailed,
    StressorProcess,
    StressorUnavailable,
    Usage,
)
from deepedge.spec import ClusterSpec, JobSpec
from tests.conftest import needs_cgroups

pytestmark = [needs_cgroups, pytest.mark.root, pytest.mark.timeout(120)]

WINDOW_S = 0.6
TINY_JOB = JobSpec.model_validate(
    {"model": {"arch": "small_cnn", "width": 8}, "dataset": {"image_size": 16}}
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    spec = ClusterSpec.model_validate(
        {
            "name": "stress",
            "devices": [
                {"name": "mini", "kind": "x86-mini"},
                # the same board with 300 MB, for the memory-limit check
                {"name": "small", "kind": "x86-mini", "memory_mb": 300, "reserved_mb": 0},
            ],
        }
    )
    with LocalCluster(spec) as c:
        yield c


@pytest.fixture
def device(cluster: LocalCluster):
    return cluster.devices["mini"]


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie until it is reaped counts)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextlib.contextmanager
def running(
    cluster: LocalCluster, kind: str, workdir: Path, on: str = "mini", **options
) -> Iterator[StressorProcess]:
    """A started stressor; the quota is lifted while it starts, as callers do."""
    device = cluster.devices[on]
    s = StressorProcess(
        kind, device, host=cluster.coordinator_address, workdir=workdir, options=options
    )
    s.start_unthrottled(timeout_s=60)
    try:
        yield s
    finally:
        s.close()


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``cond`` until it holds: a loaded host may take long to get there."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"not in {timeout_s:.0f} s: {what}"
        time.sleep(0.05)


def usage_at(s: StressorProcess, intensity: float, **params) -> Usage:
    s.set(intensity, **params)
    time.sleep(0.1)  # let the new setting take hold
    return s.measure(WINDOW_S)


def test_cpu_consumption_follows_intensity_up_to_the_quota(cluster, device, tmp_path):
    quota = device.spec.cpu_cores
    with running(cluster, "cpu", tmp_path) as s:
        assert s.pid in device.pids()  # fenced in the device from its first instruction
        idle = usage_at(s, 0.0)
        low = usage_at(s, 0.2)
        half = usage_at(s, 0.5)
        full = usage_at(s, 1.0)
        ops_before = s.read().ops
        wait_for(lambda: s.read().ops > ops_before, "the worker counts its work")
        pid = s.pid
    assert idle.cpu_cores < 0.03
    assert 0.6 * quota < full.cpu_cores < 1.3 * quota + 0.05, full
    # duty 0.5 is above this device's 0.42-core quota: close to the full quota, never more
    assert 0.5 * full.cpu_cores < half.cpu_cores < 1.15 * full.cpu_cores
    # duty 0.2 is below it: about 0.2 cores, clearly less than at 1
    assert 0.08 < low.cpu_cores < 0.8 * full.cpu_cores
    assert gone(pid)


def test_membw_copies_more_at_higher_intensity(cluster, tmp_path):
    with running(cluster, "membw", tmp_path) as s:
        idle = usage_at(s, 0.0)
        full = usage_at(s, 1.0)
    assert idle.membw_mbps == 0.0
    assert full.membw_mbps > 100.0  # MB/s; several GB/s on an unloaded host
    assert full.rss_mb > 100.0  # two arrays of 2 x LLC each, resident
    assert full.cpu_cores > 0.2


def test_llc_reads_rise_with_intensity(cluster, tmp_path):
    with running(cluster, "llc", tmp_path) as s:
        idle = usage_at(s, 0.0)
        full = usage_at(s, 1.0)
        counters = s.read()
    assert idle.llc_mbps == 0.0
    assert full.llc_mbps > 10.0
    assert counters.ops > 0 and counters.bytes == 64 * counters.ops


def test_memcap_holds_intensity_times_max_mb(cluster, tmp_path):
    with running(cluster, "memcap", tmp_path, max_mb=64) as s:
        base = usage_at(s, 0.0).rss_mb
        half = usage_at(s, 0.5).rss_mb
        full = usage_at(s, 1.0).rss_mb
        released = usage_at(s, 0.0)
    assert 24 < half - base < 44, (base, half)
    assert 54 < full - base < 80, (base, full)
    assert released.rss_mb - base < 8  # given back to the kernel, not kept in a heap
    assert released.cpu_cores < 0.03


def test_memcap_refuses_to_grow_past_the_device_memory_limit(cluster, tmp_path):
    with running(cluster, "memcap", tmp_path, on="small", max_mb=400) as s:
        s.set(0.5)  # 200 MB fit in 300; ops count touched pages once they are all mapped
        wait_for(lambda: s.read().ops > 0, "the worker maps its 200 MB")
        held = s.measure(WINDOW_S).rss_mb
        s.set(1.0)  # 400 MB do not: an error, not the OOM killer
        wait_for(lambda: s.read().errors > 0, "the worker reports the memory limit")
        c = s.read()
        with pytest.raises(StressorFailed, match="memory limit"):
            s.measure(0.2)
    assert held > 190
    assert c.errors == 1 and "memory limit" in c.last_error
    assert c.intensity == 0.0 and c.rss_mb < 64


def test_disk_writes_and_cleans_up(cluster, tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    with running(cluster, "disk", tmp_path, dir=str(folder)) as s:
        idle = usage_at(s, 0.0)
        full = usage_at(s, 1.0)
        assert list(folder.glob("deepedge-stressor-*.dat"))
    assert idle.disk_mbps == 0.0
    assert full.disk_mbps > 1.0
    assert not list(folder.glob("deepedge-stressor-*.dat"))  # deleted at exit


def test_disk_in_a_missing_directory_is_unavailable(cluster, tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with (
        pytest.raises(StressorUnavailable, match="does not exist") as info,
        running(cluster, "disk", tmp_path, dir=str(missing)),
    ):
        pass
    assert info.value.kind == "disk" and info.value.device == "mini"
    assert str(missing) in info.value.message


@pytest.fixture
def tiny_fs(tmp_path) -> Iterator[Path]:
    """A 4 MB tmpfs: the disk stressor fills it within its first slices."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_that_fills_up_reports_the_error_and_goes_idle(cluster, tmp_path, tiny_fs):
    with running(cluster, "disk", tmp_path, dir=str(tiny_fs)) as s:
        s.set(1.0)
        wait_for(lambda: s.read().errors > 0, "the worker reports the full disk")
        c = s.read()
        assert c.errors >= 1
        assert "No space left" in c.last_error
        assert c.intensity == 0.0  # idle now, not silently "loading" nothing
        assert shutil.disk_usage(tiny_fs).used < 2**20  # the file's space was given back
        s.set(1.0)
        with pytest.raises(StressorFailed, match="cannot hold intensity 1"):
            s.measure(0.3)


def test_net_traffic_through_the_coordinator_peer(cluster, tmp_path):
    with running(cluster, "net", tmp_path) as s:
        idle = usage_at(s, 0.0)
        full = usage_at(s, 1.0)
    assert idle.net_mbps == 0.0
    assert full.net_mbps > 5.0


def test_train_co_runner_runs_the_job_model(cluster, device, tmp_path):
    job = TINY_JOB.model_dump(mode="json")
    with running(cluster, "train", tmp_path, job=job, batch=16) as s:
        idle = usage_at(s, 0.0)
        full = usage_at(s, 1.0)
        small = usage_at(s, 1.0, batch=4)
        counters = s.read()
        with pytest.raises(ValueError, match="batch"):
            s.set(0.5, batch=0)
        assert s.startup_s is not None
    assert idle.samples_per_s == 0.0 and idle.cpu_cores < 0.03
    assert full.samples_per_s > 0 and small.samples_per_s > 0
    assert full.cpu_cores > 0.5 * device.spec.cpu_cores
    assert counters.steps > 0 and counters.ops >= 4 * counters.steps


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_without_cuda_is_unavailable(cluster, tmp_path):
    with (
        pytest.raises(StressorUnavailable, match="CUDA") as info,
        running(cluster, "gpu", tmp_path),
    ):
        pass
    assert info.value.kind == "gpu"


@pytest.mark.skipif(shutil.which("stress-ng") is not None, reason="stress-ng is installed")
def test_stress_ng_backend_without_stress_ng_is_unavailable(cluster, tmp_path):
    with (
        pytest.raises(StressorUnavailable, match=r"stress-ng not installed \(apt install") as info,
        running(cluster, "cpu", tmp_path, backend="stress-ng"),
    ):
        pass
    assert info.value.hint


@pytest.mark.skipif(shutil.which("stress-ng") is None, reason="stress-ng is not installed")
def test_stress_ng_backend_follows_intensity(cluster, tmp_path):
    with running(cluster, "cpu", tmp_path, backend="stress-ng") as s:
        idle = usage_at(s, 0.0)
        full = usage_at(s, 1.0)
    assert idle.cpu_cores < 0.05
    assert full.cpu_cores > 0.2


def test_stress_ng_backend_duty_cycles_its_child(cluster, device, tmp_path, monkeypatch):
    """A stand-in stress-ng (a busy loop) on PATH: the worker must start it with the kind's
    arguments, stop and continue it at the duty cycle, and count its CPU time."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "stress-ng"
    args_file = tmp_path / "args.txt"
    fake.write_text(
        f'#!/bin/sh\necho "$@" > {args_file}\nexec {sys.executable} -c "while True: pass"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with running(cluster, "cpu", tmp_path, backend="stress-ng") as s:
        idle = usage_at(s, 0.0)
        low = usage_at(s, 0.2)
        full = usage_at(s, 1.0)
        assert len(device.pids()) == 2  # the worker and its stress-ng, both in the device
    assert args_file.read_text().split()[:4] == ["--cpu", "1", "--cpu-load", "100"]
    assert idle.cpu_cores < 0.03
    assert 0.6 * device.spec.cpu_cores < full.cpu_cores < 1.3 * device.spec.cpu_cores + 0.05
    assert 0.05 < low.cpu_cores < 0.8 * full.cpu_cores
    assert not list(device.pids())  # stress-ng went with its worker


def test_a_killed_worker_is_reported_with_its_exit_code(cluster, tmp_path):
    with running(cluster, "cpu", tmp_path) as s:
        pid = s.pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: gone(pid), "the killed worker exits")
        with pytest.raises(ClusterError, match=r"exited with code -9"):
            s.read()
        s.close()
        s.close()  # idempotent
        with pytest.raises(ClusterError, match="not running"):
            s.set(0.5)


def test_launched_workers_start_side_by_side_and_one_never_awaited_is_stopped(cluster, tmp_path):
    device = cluster.devices["mini"]
    make = [
        StressorProcess("cpu", device, host=cluster.coordinator_address, workdir=tmp_path / str(i))
        for i in range(3)
    ]
    device.set_cpu_limit(None)
    try:
        for s in make:
            s.launch(timeout_s=60)  # returns at once: the three start together
        assert all(s.pid is not None and not gone(s.pid) for s in make)
        with pytest.raises(ClusterError, match="not launched"):
            StressorProcess(
                "cpu", device, host=cluster.coordinator_address, workdir=tmp_path / "x"
            ).await_started()
        first, second, never = make
        first.await_started()
        second.await_started()
        assert first.startup_s is not None and second.startup_s is not None
        assert first.read().intensity == 0.0  # each answers on its own connection
        second.set(0.5)
        assert second.read().intensity == 0.5
        pid = never.pid
        never.close()  # launched, never awaited: stopped, its listener closed
        wait_for(lambda: gone(pid), "the worker closed before its hello was awaited")
    finally:
        device.set_cpu_limit(device.spec.cpu_cores)
        for s in make:
            s.close()
    assert not list(device.pids())
