"""The plan-targeted interference design and the check of what a stored model covers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deepedge.cluster import LocalCluster
from deepedge.interference import (
    UsageBook,
    device_key,
    missing_devices,
    plan_scenarios,
    train_resident,
)
from deepedge.spec import ClusterSpec, JobSpec


@pytest.fixture
def spec() -> ClusterSpec:
    return LocalCluster(
        ClusterSpec.model_validate(
            {
                "name": "c",
                "devices": [
                    {"name": "a", "kind": "orin-nano"},
                    {"name": "b", "kind": "rpi4"},
                    {"name": "quiet", "kind": "rpi4"},
                ],
                "apps": [
                    {"name": "cam", "device": "a", "rate_rps": 20, "deadline_ms": 60},
                    {
                        "name": "kv",
                        "device": "a",
                        "kind": "kv_lookup",
                        "rate_rps": 50,
                        "deadline_ms": 20,
                    },
                    {"name": "cam-b1", "device": "b", "rate_rps": 5, "deadline_ms": 90},
                    {"name": "cam-b2", "device": "b", "rate_rps": 7, "deadline_ms": 90},
                ],
            }
        )
    ).spec


@pytest.fixture
def job() -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": "j",
            "model": {"arch": "small_cnn", "width": 8},
            "global_batch": 64,
            "dataset": {"kind": "synthetic", "train_size": 64, "image_size": 16},
        }
    )


def test_rounds_run_each_device_at_its_own_apps_and_rates(spec):
    rounds = plan_scenarios(spec, ["a", "b"], global_batch=64, runs_per_device=6)
    assert len(rounds) == 6
    for scenarios in rounds:
        assert [sc.device for sc in scenarios] == ["a", "b"]  # one per device: side by side
        a, b = scenarios
        # the device's apps: one the target, the rest co-runners at their spec rates
        assert {a.app, *a.other_apps} == {"cnn_inference", "kv_lookup"}
        assert {a.app: a.rate_rps, **a.other_apps} == {"cnn_inference": 20, "kv_lookup": 50}
        # two apps of one kind add up: the model knows one app per kind
        assert (b.app, b.rate_rps, dict(b.other_apps)) == ("cnn_inference", 12, {})
    batches = sorted(sc.train.batch for r in rounds for sc in r if sc.device == "a")
    intensities = sorted(sc.train.intensity for r in rounds for sc in r if sc.device == "a")
    assert batches[0] >= 4 and batches[-1] <= 64 and len(set(batches)) >= 4  # spread in b
    assert 0.1 <= intensities[0] < 0.3 and 0.8 < intensities[-1] <= 1.0  # and in c
    targets = [r[0].app for r in rounds]
    assert targets.count("kv_lookup") == 3  # each app kind is the target in turn


def _model(spec, books, resident):
    return SimpleNamespace(books=books, resident=resident)


def test_missing_devices_names_what_the_model_cannot_answer(spec, job):
    keys = {d.name: device_key(d, spec, "cgroup") for d in spec.devices}
    full = UsageBook.from_dict(
        {
            "device": keys["a"],
            "quota_cores": 0.28,
            "stressors": {},
            "apps": {"cnn_inference": [[1.0, {}]], "kv_lookup": [[1.0, {}]]},
            "train": [[8, 1.0, {}]],
        }
    )
    no_train = UsageBook.from_dict(
        {
            "device": keys["b"],
            "quota_cores": 0.11,
            "stressors": {},
            "apps": {"cnn_inference": [[1.0, {}]]},
            "train": [],
        }
    )
    resident = train_resident(job)
    model = _model(spec, {keys["a"]: full, keys["b"]: no_train}, resident)
    # b's book lacks training rows; "quiet" runs no LC app, so it needs nothing
    assert missing_devices(model, spec, keys, job) == ["b"]
    only_cnn = UsageBook.from_dict({**full.to_dict(), "apps": {"cnn_inference": [[1.0, {}]]}})
    model = _model(spec, {keys["a"]: only_cnn}, resident)
    assert missing_devices(model, spec, keys, job) == ["a", "b"]  # kv_lookup unknown; b absent
    other_job = _model(spec, {keys["a"]: full, keys["b"]: full}, "train:other/sgd")
    assert missing_devices(other_job, spec, keys, job) == ["a", "b"]
