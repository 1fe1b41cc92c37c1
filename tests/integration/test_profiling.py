"""Profiling on a real emulated cluster: monitor samples, and a device dying mid-profile."""

from __future__ import annotations

import signal
import urllib.request

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from deepedge.control import Retraining
from deepedge.data import build_dataset
from deepedge.models import build_model
from deepedge.monitor import TimeSeriesStore
from deepedge.profile import KnowledgeBase, ProfileSettings
from deepedge.session import EdgeSession
from deepedge.spec import ClusterSpec, JobSpec
from tests.conftest import needs_cgroups

pytestmark = [needs_cgroups, pytest.mark.root, pytest.mark.timeout(300)]

CLUSTER = {
    "name": "prof",
    "cpu_period_us": 5000,
    "devices": [
        {"name": "fast", "kind": "orin-nano"},
        {"name": "mid", "kind": "xavier-nx"},
        {"name": "slow", "kind": "jetson-nano"},
    ],
    "apps": [{"name": "cam", "device": "slow", "rate_rps": 10, "deadline_ms": 200}],
}
JOB = {
    "model": {"arch": "small_cnn", "width": 16},
    "dataset": {"kind": "synthetic", "train_size": 200, "test_size": 50, "image_size": 16},
    "epochs": 1,
    "global_batch": 48,
}


def test_a_device_dying_while_profiling_keeps_its_points_and_the_others_go_on(tmp_path):
    spec = ClusterSpec.model_validate(CLUSTER)
    job = JobSpec.model_validate(JOB)
    train_set = build_dataset(job.dataset, "train", drifted=True)
    torch.manual_seed(0)
    model = build_model(job.model, in_channels=3, num_classes=train_set.num_classes, image_size=16)
    with (
        KnowledgeBase(tmp_path / "kb.sqlite") as kb,
        EdgeSession(spec, tmp_path / "s", metrics_port=0, monitor_interval_s=0.5) as session,
    ):
        retrain = Retraining(
            session,
            job,
            train_set,
            model.state_dict(),
            kb=kb,
            profile_settings=ProfileSettings(steps=3, warmup=1),
        )
        runs_seen = []

        def kill_after_first_run(points) -> None:
            runs_seen.append(dict(points))
            if len(runs_seen) == 1:
                session.agents.processes["slow"].send_signal(signal.SIGKILL)

        planning = retrain.plan(("proportional",), on_run=kill_after_first_run)

        # the monitor saw devices and the LC app, and serves them in Prometheus format
        assert session.metrics is not None
        text = urllib.request.urlopen(session.metrics.url, timeout=10).read().decode()
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"deepedge_device_cpu_seconds", "deepedge_app_requests"} <= names
        assert session.monitor is not None and session.monitor.overhead() < 0.2

    assert set(planning.profiles) == {"fast", "mid"}  # profiled to the end without 'slow'
    (why,) = [e.reason for e in planning.excluded if e.device == "slow"]
    assert "failed while profiling" in why
    assert all(len(p.timings) >= 2 for p in planning.profiles.values())
    assert len(runs_seen) == 3 and "slow" not in runs_seen[-1]
    with KnowledgeBase(tmp_path / "kb.sqlite") as kb:
        (slow,) = [p for p in kb.profiles() if p.device_name == "slow"]
        assert slow.partial_reason and "after 1 of 3" in slow.partial_reason
        assert "exit code -9" in slow.partial_reason
        assert len(slow.points) == 1  # the run it finished is kept
    with TimeSeriesStore(tmp_path / "s" / "monitor.sqlite") as store:
        cpu = store.query("deepedge_device_cpu_seconds_total", labels={"device": "fast"})
        assert len(cpu) >= 4 and cpu[-1].value > cpu[0].value
