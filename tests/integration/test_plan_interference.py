"""ensure_model on real emulated devices: profiles each device's own apps beside training,
side by side, fits and stores a model tagged with its job, and reuses it the next time.

About 60 s on 2 cores: two devices, short windows, the fewest runs a fit accepts.
"""

from __future__ import annotations

import json

import pytest

from deepedge.cluster import LocalCluster
from deepedge.interference import (
    PLAN_CAMPAIGN,
    CampaignSettings,
    TrainLoad,
    device_key,
    ensure_model,
    missing_devices,
    train_resident,
)
from deepedge.profile import KnowledgeBase
from deepedge.spec import ClusterSpec, JobSpec
from tests.conftest import needs_cgroups

pytestmark = [needs_cgroups, pytest.mark.timeout(300)]

JOB = JobSpec.model_validate(
    {"model": {"arch": "small_cnn", "width": 8}, "dataset": {"image_size": 16}, "global_batch": 32}
)
CLUSTER = ClusterSpec.model_validate(
    {
        "name": "pi",
        "cpu_period_us": 5000,
        "devices": [{"name": "big", "kind": "x86-mini"}, {"name": "small", "kind": "orin-nano"}],
        "apps": [
            {"name": "cam-big", "device": "big", "rate_rps": 20, "deadline_ms": 200},
            {"name": "cam-small", "device": "small", "rate_rps": 10, "deadline_ms": 200},
        ],
    }
)


def test_profiles_the_plans_operating_points_then_reuses_the_model(tmp_path):
    settings = CampaignSettings(
        app_loads=(0.1, 0.3), levels=(0.5, 1.0), batches=(8,), calibration_window_s=1.0
    )
    said: list[str] = []
    with KnowledgeBase(tmp_path / "kb.sqlite") as kb:
        model = ensure_model(
            CLUSTER,
            JOB,
            kb,
            tmp_path / "lab",
            settings=settings,
            window_s=(1.0, 2.0),
            runs_per_device=2,  # raised to the fewest runs a first fit accepts
            status=said.append,
        )
        assert model is not None and model.resident == train_resident(JOB)
        runs = kb.interference_runs(campaign=f"{PLAN_CAMPAIGN}:pi")
        assert len(runs) >= 20  # a first fit needs 20 points
        scenarios = [r.scenario for r in runs]
        # every run is a device's own app at its spec rate, beside training
        rates = {s["device"]: s["rate_rps"] for s in scenarios}
        assert {json.loads(r.device)["kind"] for r in runs} == {"x86-mini", "orin-nano"}
        assert sorted(rates.values()) == [10.0, 20.0]
        assert all(s["app"] == "cnn_inference" and s["train"] for s in scenarios)
        assert any("round 1/" in m for m in said)

        local = LocalCluster(CLUSTER)
        keys = {d.name: device_key(d, local.spec, local.emulation) for d in local.spec.devices}
        assert missing_devices(model, local.spec, keys, JOB) == []
        # the model answers the planner's question on both devices
        for name, rate in (("big", 20.0), ("small", 10.0)):
            pred = model.apps_beside_training(
                keys[name], {f"cam-{name}": ("cnn_inference", rate)}, TrainLoad(16, 0.5)
            )[f"cam-{name}"]
            assert 0 < pred.p95_ms <= pred.p95_upper_ms

        said.clear()
        again = ensure_model(CLUSTER, JOB, kb, tmp_path / "lab2", status=said.append)
        assert again is not None and any("reusing" in m for m in said)
        assert len(kb.interference_runs(campaign=f"{PLAN_CAMPAIGN}:pi")) == len(runs)
        # another job's training is another co-runner: the model does not answer for it
        wider = JOB.model_copy(update={"model": JOB.model.model_copy(update={"width": 16})})
        assert missing_devices(model, local.spec, keys, wider) == ["big", "small"]
        no_apps = CLUSTER.model_copy(update={"apps": []})
        assert ensure_model(no_apps, JOB, kb, tmp_path / "lab3") is None
