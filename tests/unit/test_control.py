"""The run controller's parts that need no cluster: the policy registry and the event log."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from deepedge.control import (
    BASELINES,
    DEADLINE_POLICY,
    EventLog,
    PlanInputs,
    RunController,
    RunOptions,
    RunState,
    get_policy,
    policy_names,
    register_policy,
)
from deepedge.control import policies as registry
from deepedge.errors import UsageError
from deepedge.profile import AffineModel
from deepedge.spec import ClusterSpec, JobSpec, Plan

MODELS = {  # t(b) = a + s·b: "fast" is 4x faster per sample than "slow"
    "fast": AffineModel(0.01, 0.001, (8, 32), 0.0),
    "slow": AffineModel(0.01, 0.004, (8, 32), 0.0),
}
INPUTS = PlanInputs(
    MODELS,
    {n: 40 / m.predict(40) for n, m in MODELS.items()},
    global_batch=40,
    excluded=[],
    allreduce_s=0.005,
)


def test_every_builtin_policy_is_registered_and_splits_the_whole_batch() -> None:
    assert set(policy_names()) >= {DEADLINE_POLICY, *BASELINES}
    for name in BASELINES:
        plan = get_policy(name).plan(INPUTS)
        assert plan.policy == name
        if plan.micro_batch is None:
            assert sum(plan.local_batches.values()) == 40
    assert get_policy("proportional").plan(INPUTS).local_batches["fast"] == 32
    assert get_policy("fastest-single").plan(INPUTS).local_batches == {"fast": 40}


def test_only_the_deadline_policy_needs_the_interference_model() -> None:
    assert get_policy(DEADLINE_POLICY).needs_interference
    assert not any(get_policy(p).needs_interference for p in BASELINES)
    with pytest.raises(UsageError, match="interference"):
        get_policy(DEADLINE_POLICY).plan(INPUTS)  # no deadline problem was built


def test_an_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown policy 'fastest'") as info:
        get_policy("fastest")
    assert "proportional" in (info.value.hint or "")


@dataclass(frozen=True)
class _Slowest:
    """A user's policy: everything on the slowest device (what not to do)."""

    name: str = "slowest-single"
    description: str = "the whole batch on the slowest device"
    needs_interference: bool = False

    def plan(self, inputs: PlanInputs) -> Plan:
        slowest = min(inputs.samples_per_s, key=inputs.samples_per_s.__getitem__)
        return Plan(
            policy=self.name,
            global_batch=inputs.global_batch,
            local_batches={slowest: inputs.global_batch},
        )


def test_a_registered_policy_is_planned_by_name(monkeypatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_policy(_Slowest())
    assert get_policy("slowest-single").plan(INPUTS).local_batches == {"slow": 40}
    with pytest.raises(UsageError, match="already registered"):
        register_policy(_Slowest())
    register_policy(_Slowest(description="again"), replace=True)
    assert get_policy("slowest-single").description == "again"


def test_the_event_log_keeps_order_and_tells_listeners() -> None:
    seen = []
    log = EventLog(listeners=[seen.append])
    log.add(RunState.BOOT, "state", "booting")
    log.add(RunState.TRAIN, "run", "trained", wall_s=1.5)
    assert [e.kind for e in log] == ["state", "run"] and seen == list(log)
    assert log.of_kind("run")[0].data == {"wall_s": 1.5}
    rows = log.to_list()
    assert rows[0]["state"] == "boot" and "data" not in rows[0]
    assert rows[1]["data"] == {"wall_s": 1.5} and rows[0]["t"] <= rows[1]["t"]


def test_an_unknown_policy_fails_before_anything_boots(tmp_path) -> None:
    booted = []

    def backend(spec, *, force_fallback=False):  # pragma: no cover - must not be called
        booted.append(spec)
        raise AssertionError("booted a cluster for an invalid run")

    cluster = ClusterSpec.model_validate({"name": "c", "devices": [{"name": "d", "kind": "rpi4"}]})
    job = JobSpec.model_validate(
        {"dataset": {"kind": "synthetic", "train_size": 32, "test_size": 8}, "global_batch": 8}
    )
    with pytest.raises(UsageError, match="unknown policy"):
        RunController(cluster, job, RunOptions(out=tmp_path, policies=("nope",)), backend=backend)
    assert not booted
