"""The dynamic-dispatch plan: its default micro batch, its placeholder shares, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deepedge.errors import PlanInfeasible, SpecError
from deepedge.plan import (
    default_micro_batch,
    dynamic_dispatch,
    equal_split,
    with_dispatch_prediction,
)
from deepedge.spec import ExcludedDevice, Plan


def test_dynamic_plan_keeps_every_device_with_equal_expected_shares():
    plan = dynamic_dispatch(["a", "b", "c"], 100)
    assert plan.policy == "dynamic" and plan.dynamic
    assert plan.devices == ["a", "b", "c"]
    assert plan.local_batches == equal_split(["a", "b", "c"], 100).local_batches
    assert sum(plan.local_batches.values()) == 100
    assert plan.micro_batch == 100 // 12  # about four chunks per device and step
    assert any("placeholder" in n for n in plan.notes)


def test_explicit_micro_batch_and_exclusions_are_kept():
    gone = ExcludedDevice(device="x", reason="memory")
    plan = dynamic_dispatch(["a", "b"], 64, micro_batch=5, excluded=[gone])
    assert plan.micro_batch == 5
    assert plan.excluded == [gone]


def test_default_micro_batch_is_at_least_one():
    assert default_micro_batch(3, 3) == 1
    assert default_micro_batch(256, 4) == 16


def test_static_plans_are_not_dynamic():
    assert not equal_split(["a", "b"], 8).dynamic


def test_errors_match_the_equal_split():
    with pytest.raises(PlanInfeasible):
        dynamic_dispatch([], 8)
    with pytest.raises(SpecError, match="smaller than the 3 devices"):
        dynamic_dispatch(["a", "b", "c"], 2)


def test_micro_batch_larger_than_the_global_batch_is_rejected():
    with pytest.raises(ValidationError, match="micro batch 9 is larger"):
        Plan(policy="dynamic", global_batch=8, local_batches={"a": 8}, micro_batch=9)
    with pytest.raises(ValidationError):
        Plan(policy="dynamic", global_batch=8, local_batches={"a": 8}, micro_batch=0)
    assert Plan(policy="dynamic", global_batch=8, local_batches={"a": 8}, micro_batch=8).dynamic


def test_dynamic_plan_round_trips_through_json():
    plan = dynamic_dispatch(["a", "b"], 32, micro_batch=3)
    assert Plan.model_validate_json(plan.model_dump_json()) == plan


class _Linear:
    """t(b) = a + s·b."""

    def __init__(self, a: float, s: float) -> None:
        self.a, self.s = a, s

    def predict(self, batch: float) -> float:
        return self.a + self.s * batch

    def batch_for(self, step_s: float) -> float:
        return max(0.0, (step_s - self.a) / self.s)


def test_dispatch_prediction_gives_the_faster_device_more_chunks():
    models = {"fast": _Linear(0.0, 0.001), "slow": _Linear(0.0, 0.003)}
    plan = with_dispatch_prediction(dynamic_dispatch(list(models), 64, micro_batch=4), models, 0.5)
    assert plan.local_batches == {"fast": 48, "slow": 16}  # 3:1, chunk by chunk
    assert plan.predicted_compute_s["fast"] == pytest.approx(0.048)
    assert plan.predicted_step_s == pytest.approx(0.048 + 0.5)
    assert plan.predicted_comm_s == 0.5 and plan.micro_batch == 4


def test_dispatch_prediction_keeps_a_device_that_would_claim_nothing():
    models = {"fast": _Linear(0.0, 0.001), "stuck": _Linear(10.0, 1.0)}
    plan = with_dispatch_prediction(dynamic_dispatch(list(models), 8, micro_batch=8), models)
    assert plan.local_batches == {"fast": 7, "stuck": 1}  # expected shares stay positive
    assert plan.predicted_step_s == pytest.approx(0.008)
    assert plan.predicted_compute_s["stuck"] == 0.0


def test_dispatch_prediction_needs_a_dynamic_plan():
    with pytest.raises(ValueError, match="not dynamic"):
        with_dispatch_prediction(equal_split(["a"], 8), {"a": _Linear(0.0, 1.0)})
