"""The split from profiled step-time models: optimal min-max, exclusions, lower bound."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepedge.errors import PlanInfeasible
from deepedge.plan import (
    balanced_step_s,
    lower_bound_from_models,
    profiled_split,
    step_sizes,
    with_prediction,
)
from deepedge.profile import AffineModel

models_st = st.lists(
    st.tuples(st.floats(0.0, 0.2), st.floats(0.001, 0.05)), min_size=1, max_size=3
).map(lambda ps: {f"d{i}": AffineModel(a, s, (1,), 0.0) for i, (a, s) in enumerate(ps)})


@settings(max_examples=60, deadline=None)
@given(models_st, st.integers(1, 12))
def test_profiled_split_is_optimal_for_the_slowest_device(models, batch):
    plan = profiled_split(models, batch)
    assert sum(plan.local_batches.values()) == batch
    best = min(
        max(models[n].predict(b) for n, b in zip(models, split, strict=True) if b > 0)
        for split in itertools.product(range(batch + 1), repeat=len(models))
        if sum(split) == batch
    )
    got = max(models[n].predict(b) for n, b in plan.local_batches.items())
    assert got == pytest.approx(best)
    # and nothing beats the fractional lower bound
    assert balanced_step_s(models, batch) <= got + 1e-9


def test_a_device_whose_fixed_cost_exceeds_the_step_is_left_out_with_the_numbers():
    models = {
        "fast": AffineModel(0.0, 0.001, (1,), 0.0),
        "laggard": AffineModel(0.5, 0.01, (1,), 0.0),
    }
    plan = profiled_split(models, 64, comm_s=0.01)
    assert plan.local_batches == {"fast": 64}
    (why,) = [e.reason for e in plan.excluded if e.device == "laggard"]
    assert "too slow to help" in why and "510 ms" in why
    assert plan.predicted_step_s == pytest.approx(0.064 + 0.01)
    with pytest.raises(PlanInfeasible):
        profiled_split({}, 8)


def test_with_prediction_uses_the_slowest_device_plus_allreduce():
    models = {"a": AffineModel(0.0, 0.01, (1,), 0.0), "b": AffineModel(0.0, 0.02, (1,), 0.0)}
    plan = profiled_split(models, 30)
    equal = with_prediction(plan.model_copy(update={"local_batches": {"a": 15, "b": 15}}), models)
    assert equal.predicted_step_s == pytest.approx(0.3)
    assert plan.predicted_step_s < equal.predicted_step_s


def test_lower_bound_sums_balanced_steps_including_the_partial_one():
    models = {"a": AffineModel(0.0, 0.01, (1,), 0.0), "b": AffineModel(0.0, 0.01, (1,), 0.0)}
    assert step_sizes(10, 4, epochs=2) == [4, 4, 2, 4, 4, 2]
    # two equal devices, no fixed cost: each step is half its batch at 10 ms/sample
    assert lower_bound_from_models(models, 10, 4, 2) == pytest.approx(2 * (0.02 + 0.02 + 0.01))
