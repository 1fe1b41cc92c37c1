"""The interference lab on a real emulated device: co-runners really slow an LC app down,
calibration stores solo usage, an unreachable stressor is reported and skipped, and too
few runs give the "run N more" error.

About 60 s on 2 cores: one device, two app kinds, short windows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepedge.interference import (
    CampaignSettings,
    InterferenceLab,
    InterferenceModel,
    NotEnoughPoints,
    Scenario,
    TrainLoad,
    calibrate,
    observations,
    run_scenarios,
)
from deepedge.profile import KnowledgeBase
from deepedge.spec import ClusterSpec, JobSpec
from tests.conftest import needs_cgroups

pytestmark = [needs_cgroups, pytest.mark.timeout(240)]

JOB = JobSpec.model_validate(
    {"model": {"arch": "small_cnn", "width": 8}, "dataset": {"image_size": 16}, "global_batch": 32}
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    spec = ClusterSpec.model_validate(
        {"name": "ilab", "cpu_period_us": 5000, "devices": [{"name": "mini", "kind": "x86-mini"}]}
    )
    with InterferenceLab(
        spec,
        JOB,
        tmp_path_factory.mktemp("lab"),
        app_kinds=("cnn_inference", "kv_lookup"),
        stressor_kinds=("cpu", "gpu"),
        settle_s=0.5,
        requests_per_run=150,
        window_s=(1.5, 3.0),
    ) as lab:
        yield lab


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_unreachable_stressor_is_reported_not_zero(lab: InterferenceLab) -> None:
    # without a CUDA device the gpu stressor is skipped with the reason
    assert "gpu" in lab.skipped["mini"]
    assert "CUDA" in lab.skipped["mini"]["gpu"]
    assert lab.available_stressors("mini") == ("cpu",)
    with pytest.raises(Exception, match="gpu is unavailable"):
        lab.run(Scenario("mini", "kv_lookup", 50.0, stressors={"gpu": 0.5}))


def test_co_runners_slow_the_app_down(lab: InterferenceLab) -> None:
    alone = lab.run(Scenario("mini", "cnn_inference", 40.0))
    loaded = lab.run(
        Scenario("mini", "cnn_inference", 40.0, stressors={"cpu": 0.6}, train=TrainLoad(16, 0.6))
    )
    assert alone.requests > 50 and alone.failed == 0
    assert loaded.p95_ms > 1.5 * alone.p95_ms
    assert loaded.train_samples_per_s and loaded.train_samples_per_s > 0
    assert loaded.usage["stressor:cpu"]["cpu_cores"] > 0.05
    assert loaded.usage["train"]["cpu_cores"] > 0.05
    assert "stressor:cpu" not in alone.usage  # idle residents are not part of a run


def test_calibration_stores_usage_and_few_runs_ask_for_more(
    lab: InterferenceLab, tmp_path: Path
) -> None:
    settings = CampaignSettings(
        app_loads=(0.1, 0.3), levels=(0.5, 1.0), batches=(8,), calibration_window_s=1.0
    )
    with KnowledgeBase(tmp_path / "kb.sqlite") as kb:
        book = calibrate(lab, kb, ["mini"], settings)["mini"]
        assert set(book.apps) == {"cnn_inference", "kv_lookup"}
        assert set(book.stressors) == set(lab.available_stressors("mini"))  # gpu with CUDA
        assert "cpu" in book.stressors
        full = book.stressor("cpu", 1.0)["cpu_cores"]
        assert 0.5 * lab.devices["mini"].cpu_cores < full <= 1.2 * lab.devices["mini"].cpu_cores
        assert book.cpu_per_request("kv_lookup") < book.cpu_per_request("cnn_inference")
        runs = run_scenarios(
            lab,
            kb,
            [Scenario("mini", "kv_lookup", 100.0, train=TrainLoad(8, 0.5))] * 2,
            campaign="t",
        )
        assert len(kb.interference_runs(campaign="t")) == 2
        obs = observations(kb.interference_runs(), {lab.device_key("mini"): book})
        assert len(obs) == len(runs)
        with pytest.raises(NotEnoughPoints, match="more"):
            InterferenceModel.fit(obs, {lab.device_key("mini"): book})
