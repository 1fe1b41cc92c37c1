"""Planner v0: proportional and baseline splits, memory exclusion, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepedge.errors import PlanInfeasible, SpecError
from deepedge.plan import (
    equal_split,
    fastest_single,
    lower_bound_s,
    memory_exclusions,
    proportional_split,
)
from deepedge.spec import AppSpec, DeviceSpec


@given(
    st.dictionaries(
        st.text("abcdefgh", min_size=1, max_size=4), st.floats(0.5, 500), min_size=1, max_size=8
    ),
    st.integers(8, 1024),
)
def test_proportional_split_sums_and_balances(throughput, batch):
    if batch < len(throughput):
        return
    plan = proportional_split(throughput, batch)
    assert sum(plan.local_batches.values()) == batch
    total = sum(throughput.values())
    quotas = {n: batch * v / total for n, v in throughput.items()}
    assert min(plan.local_batches.values()) >= 1  # every planned device takes part
    if min(quotas.values()) >= 1:  # no floor needed: largest remainder is within 1
        for n, b in plan.local_batches.items():
            assert abs(b - quotas[n]) < 1


def test_proportional_beats_equal_on_predicted_step_time():
    tp = {"fast": 300.0, "mid": 100.0, "slow": 30.0}
    prop = proportional_split(tp, 256)
    eq = equal_split(list(tp), 256, throughput=tp)
    assert prop.predicted_step_s < eq.predicted_step_s
    assert prop.predicted_step_s == pytest.approx(256 / sum(tp.values()), rel=0.05)


def test_fastest_single_takes_everything_and_explains_the_rest():
    plan = fastest_single({"a": 1.0, "b": 3.0}, 64)
    assert plan.local_batches == {"b": 64}
    assert [e.device for e in plan.excluded] == ["a"]


def test_batch_smaller_than_devices_is_a_clear_error():
    with pytest.raises(SpecError, match="smaller than the 3 devices"):
        equal_split(["a", "b", "c"], 2)


def test_no_devices_is_infeasible():
    with pytest.raises(PlanInfeasible):
        equal_split([], 8)


def test_memory_exclusion_gives_the_numbers():
    small = DeviceSpec(name="pi", kind="rpi4-1gb", memory_mb=1024, reserved_mb=700)
    big = DeviceSpec(name="orin", kind="orin-nano", memory_mb=8192, reserved_mb=1500)
    app = AppSpec(name="cam", device="pi", rate_rps=5, deadline_ms=100, memory_mb=300)
    out = memory_exclusions([small, big], [app], {"pi": 400.0, "orin": 400.0})
    assert [e.device for e in out] == ["pi"]
    assert "400 MB" in out[0].reason and "24 MB" in out[0].reason


def test_lower_bound():
    assert lower_bound_s(1000, {"a": 100.0, "b": 150.0}) == pytest.approx(4.0)
