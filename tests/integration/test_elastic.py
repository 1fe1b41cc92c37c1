"""Elastic training on a real 3-device emulated cluster: a worker is killed or stopped
mid-run, the survivors go on without a restart, and every sample of every epoch is used
exactly once (checked on the logged sample ids), never twice, never lost."""

from __future__ import annotations

import collections
import signal

import pytest

from deepedge.control import RunController, RunOptions, RunState
from deepedge.interference.stressors import StressorProcess
from deepedge.profile import ProfileSettings
from deepedge.spec import ClusterSpec, DeviceSpec, JobSpec
from deepedge.train import load_checkpoint
from tests.conftest import needs_cgroups

pytestmark = [needs_cgroups, pytest.mark.root, pytest.mark.timeout(400)]

CLUSTER = {
    "name": "elastic",
    "cpu_period_us": 5000,
    "devices": [
        {"name": "fast", "kind": "orin-nano"},
        {"name": "mid", "kind": "xavier-nx"},
        {"name": "slow", "kind": "odroid-xu4"},
    ],
}
JOB = {
    "model": {"arch": "small_cnn", "width": 16},
    "dataset": {"kind": "synthetic", "train_size": 240, "test_size": 40, "image_size": 32},
    "epochs": 2,
    "global_batch": 48,
}
STEPS_PER_EPOCH = 5


def _options(tmp_path, policy: str, **extra) -> RunOptions:
    """One policy, a knowledge base of the test's own, short profiles."""
    return RunOptions(
        out=tmp_path / "run",
        policies=(policy,),
        kb=tmp_path / "kb.sqlite",
        profile_settings=ProfileSettings(steps=4, warmup=1),
        **extra,
    )


def _run_with(tmp_path, sig: signal.Signals | None, at_step: int = 3, backend: str = "local"):
    """An equal-split run in which ``mid``'s agent gets ``sig`` at ``at_step`` (None: its
    Ray node is killed instead)."""
    options = _options(tmp_path, "equal")
    spec = ClusterSpec.model_validate({**CLUSTER, "backend": backend})
    ctl = RunController(spec, JobSpec.model_validate(JOB), options)
    with ctl:
        plan = ctl.plan().plans["equal"]
        assert set(plan.devices) == {"fast", "mid", "slow"}
        assert ctl.session is not None
        victim = ctl.session.agents.processes["mid"]
        cluster = ctl.session.cluster

        def strike(epoch: int, step: int) -> None:
            if epoch * STEPS_PER_EPOCH + step == at_step and victim.poll() is None:
                if sig is None:
                    cluster.emulated.kill_node("mid")
                else:
                    victim.send_signal(sig)

        done = ctl.train(plan, on_step=strike, log_samples=True)
    return ctl, done


def _assert_every_sample_once(samples: list[dict], epochs: int = 2) -> None:
    per_epoch: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for entry in samples:
        per_epoch[entry["epoch"]].update(entry["ids"])
    assert sorted(per_epoch) == list(range(epochs))
    for epoch, counts in per_epoch.items():
        assert sorted(counts) == list(range(JOB["dataset"]["train_size"])), epoch
        assert set(counts.values()) == {1}, f"epoch {epoch}: samples used twice"


@pytest.mark.parametrize(
    ("sig", "backend"),
    [(signal.SIGKILL, "local"), (signal.SIGSTOP, "local"), (None, "ray")],
    ids=["crash", "hang", "ray-node-lost"],
)
def test_a_lost_worker_is_survived_without_losing_or_doubling_a_sample(
    tmp_path, sig, backend
) -> None:
    ctl, done = _run_with(tmp_path, sig, backend=backend)
    assert ctl.state is RunState.DONE
    (recovery,) = done.run.recoveries
    assert set(recovery.failure.lost) == {"mid"}
    assert set(recovery.plan.devices) == {"fast", "slow"}
    assert sum(recovery.plan.local_batches.values()) == JOB["global_batch"]
    assert recovery.generation == 1
    assert set(done.run.steps) == {"fast", "slow"}  # the survivors' records
    last = max(r.epoch * STEPS_PER_EPOCH + r.step for r in done.run.steps["fast"])
    assert last == 2 * STEPS_PER_EPOCH - 1  # the run went to its end
    _assert_every_sample_once(done.run.samples)
    kinds = [e.kind for e in ctl.events]
    assert kinds.index("failure") < kinds.index("replan") < kinds.index("run")
    assert ctl.lost.keys() == {"mid"}
    assert load_checkpoint(sorted(done.run.checkpoint_dir.glob("*.ckpt"))[-1])["epoch"] == 1


def test_a_device_slowed_by_a_cpu_hog_gets_a_smaller_share_at_a_step_boundary(tmp_path) -> None:
    options = _options(tmp_path, "proportional")
    job = JobSpec.model_validate({**JOB, "epochs": 3})
    ctl = RunController(ClusterSpec.model_validate(CLUSTER), job, options)
    with ctl:
        plan = ctl.plan().plans["proportional"]
        assert ctl.session is not None
        device = ctl.session.cluster.devices["mid"]
        hog = StressorProcess(
            "cpu", device, host=ctl.session.cluster.coordinator_address, workdir=tmp_path
        )
        hog.start_unthrottled(timeout_s=60)
        try:

            def strike(epoch: int, step: int) -> None:
                if epoch * STEPS_PER_EPOCH + step == 1:
                    hog.set(0.4)  # 40 % of the device's CPU, at a normal priority

            done = ctl.train(plan, on_step=strike, log_samples=True)
        finally:
            hog.close()
    # noise on a loaded 2-core host may rebalance another device too; the hog must show
    slowed = [e.data for e in ctl.events.of_kind("rebalance") if "mid" in e.data["drift"]]
    assert slowed, [e.message for e in ctl.events]
    assert slowed[0]["drift"]["mid"] > 1.25
    assert slowed[0]["local_batches"].get("mid", 0) < plan.local_batches["mid"]
    assert sum(slowed[0]["local_batches"].values()) == JOB["global_batch"]
    assert not done.run.recoveries and ctl.state is RunState.DONE
    _assert_every_sample_once(done.run.samples, epochs=3)


def test_an_lc_app_past_its_deadline_throttles_then_unloads_its_device(tmp_path) -> None:
    # a deadline no request can meet: the guard must cut "mid" step by step, then take it
    # out of the plan, while the run goes on and uses every sample once
    cluster = {
        **CLUSTER,
        "apps": [{"name": "cam", "device": "mid", "rate_rps": 20, "deadline_ms": 1}],
    }
    options = _options(tmp_path, "equal", rebalance=False)
    # long enough for three guard actions (each waits its hold and a p95 window) even when
    # steps run fast: with 4 epochs a quick run once ended after the second cut
    job = JobSpec.model_validate({**JOB, "epochs": 8})
    ctl = RunController(ClusterSpec.model_validate(cluster), job, options)
    with ctl:
        plan = ctl.plan().plans["equal"]
        assert ctl.session is not None
        session = ctl.session

        def spike(epoch: int, step: int) -> None:
            if epoch * STEPS_PER_EPOCH + step == 1:
                session.set_lc_rate("cam", 60)

        done = ctl.train(plan, on_step=spike, log_samples=True)
    actions = [e.data["action"] for e in ctl.events.of_kind("slo-guard") if "action" in e.data]
    assert actions[:3] == ["cut", "cut", "off"], [e.message for e in ctl.events]
    assert {e.data["device"] for e in ctl.events.of_kind("slo-guard") if "device" in e.data} == {
        "mid"
    }
    intensities = [p.intensities.get("mid", 1.0) for p, _, _ in done.segments]
    assert intensities[:3] == [1.0, 0.5, 0.25]
    final = done.segments[-1][0]
    assert "mid" not in final.local_batches
    assert sum(final.local_batches.values()) == JOB["global_batch"]
    assert not done.run.recoveries and ctl.state is RunState.DONE
    _assert_every_sample_once(done.run.samples, epochs=8)


def test_a_device_that_joins_mid_run_is_taken_in_at_a_step_boundary(tmp_path) -> None:
    # one slow board trains alone; a faster one joins: it is booted and profiled on the
    # side, then the plan takes it in (the new member starts from a survivor's state)
    cluster = {**CLUSTER, "devices": [CLUSTER["devices"][2]]}
    options = _options(tmp_path, "equal")
    job = JobSpec.model_validate({**JOB, "epochs": 12})
    ctl = RunController(ClusterSpec.model_validate(cluster), job, options)
    with ctl:
        plan = ctl.plan().plans["equal"]
        assert plan.devices == ["slow"]

        def join(epoch: int, step: int) -> None:
            if epoch == 0 and step == 0:
                ctl.join(DeviceSpec(name="fast", kind="orin-nano"))

        done = ctl.train(plan, on_step=join, log_samples=True)
    weighed = [e.data for e in ctl.events.of_kind("join") if "pays" in e.data]
    assert weighed and weighed[0]["devices"] == ["fast"], [e.message for e in ctl.events]
    assert weighed[0]["pays"], weighed[0]
    assert set(done.segments[-1][0].devices) == {"slow", "fast"}
    assert done.run.steps["fast"], "the joiner trained no step"
    assert not done.run.recoveries and ctl.state is RunState.DONE
    _assert_every_sample_once(done.run.samples, epochs=12)
