"""The monitor on a real cgroup cluster: device CPU counters follow the quota, pids are seen."""

from __future__ import annotations

import sys
import time

import pytest

from deepedge.cluster import LocalCluster
from deepedge.monitor import DeviceSampler, Monitor, ProcessSampler, TimeSeriesStore
from tests.conftest import needs_cgroups

pytestmark = pytest.mark.root

BUSY = [sys.executable, "-c", "while True: pass"]
CPU = "deepedge_device_cpu_seconds_total"


def _points(store: TimeSeriesStore, device: str) -> int:
    return len(store.query(CPU, labels={"device": device}))


def _growth(store: TimeSeriesStore, device: str) -> tuple[float, float]:
    """(counter increase, seconds between first and last stored point) of a device."""
    points = store.query(CPU, labels={"device": device})
    assert len(points) >= 5, f"only {len(points)} points for {device}"
    return points[-1].value - points[0].value, points[-1].ts - points[0].ts


@needs_cgroups
def test_monitor_sees_a_busy_device_at_its_quota(two_device_spec, tmp_path):
    with LocalCluster(two_device_spec) as cluster, TimeSeriesStore(tmp_path / "ts.db") as store:
        slow = cluster.devices["slow"]
        busy = slow.spawn(BUSY)
        samplers = [DeviceSampler(cluster.devices), ProcessSampler(cluster.devices)]
        with Monitor(samplers, store=store, interval_s=0.2) as monitor:
            # 8 rounds span at least 1.4 s; a loaded host may take longer to run them
            deadline = time.monotonic() + 60
            while min(_points(store, d) for d in ("slow", "fast")) < 8:
                assert time.monotonic() < deadline, "the monitor stopped sampling"
                time.sleep(0.05)
        latest = monitor.latest()

        used, elapsed = _growth(store, "slow")
        idle_used, _ = _growth(store, "fast")
        quota = slow.spec.cpu_cores * elapsed
        assert elapsed > 1.0
        assert 0.5 * quota < used < 1.3 * quota + 0.05, f"{used:.3f} s over {elapsed:.2f} s"
        assert used > idle_used + 0.25 * quota

        procs = [
            s
            for s in latest
            if s.metric == "deepedge_process_cpu_seconds_total"
            and s.label_dict["pid"] == str(busy.pid)
        ]
        assert len(procs) == 1
        assert procs[0].label_dict["device"] == "slow"
        assert procs[0].value > 0.3 * quota
        throttled = store.query(
            "deepedge_device_cpu_throttled_seconds_total", labels={"device": "slow"}
        )
        assert throttled[-1].value > throttled[0].value  # the quota held it back
        assert monitor.unavailable == {}
        assert 0 <= monitor.overhead() < 0.5
