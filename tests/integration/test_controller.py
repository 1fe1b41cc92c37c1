"""The run controller on a real 2-device emulated cluster: its states, events and ending."""

from __future__ import annotations

import signal

import pytest

from deepedge.cluster import make_backend
from deepedge.control import RunController, RunOptions, RunState
from deepedge.control.feed import LIVE_PLAN
from deepedge.errors import TrainingError
from deepedge.monitor import TimeSeriesStore
from deepedge.profile import ProfileSettings
from deepedge.spec import ClusterSpec, JobSpec
from tests.conftest import assert_nothing_left, needs_cgroups
from tests.integration.test_session import CLUSTER, JOB

pytestmark = [needs_cgroups, pytest.mark.root, pytest.mark.timeout(300)]

FAST = ProfileSettings(steps=4, warmup=1)


def _controller(tmp_path, built: list, backend: str = "local") -> RunController:
    def build(spec, *, force_fallback=False):
        cluster = make_backend(spec, force_fallback=force_fallback)
        built.append(cluster)
        return cluster

    options = RunOptions(
        out=tmp_path / "run",
        policies=("proportional", "equal"),
        kb=tmp_path / "kb.sqlite",
        profile_settings=FAST,
    )
    return RunController(
        ClusterSpec.model_validate({**CLUSTER, "backend": backend}),
        JobSpec.model_validate(JOB),
        options,
        backend=build,
    )


def test_a_run_goes_through_its_states_and_logs_its_decisions(tmp_path, backend) -> None:
    built: list = []
    ctl = _controller(tmp_path, built, backend)
    with ctl:
        planning = ctl.plan()
        done = ctl.train(planning.plans["proportional"])
        replanned = ctl.plan(("equal",))  # from the held profiles: nothing is measured again
        ctl.learn([done])
        pids = {p for dev in built[0].devices.values() for p in dev.pids()}
    assert len(built) == 1 and ctl.session is not None and ctl.session.cluster is built[0]
    states = [e.state for e in ctl.events.of_kind("state")]
    assert states == [
        RunState.BOOT,
        RunState.PROFILE,
        RunState.PLAN,
        RunState.TRAIN,
        RunState.PLAN,
        RunState.ADAPT,
        RunState.DONE,
    ]
    assert ctl.state is RunState.DONE
    plans = [e.data["policy"] for e in ctl.events.of_kind("plan")]
    assert plans == ["proportional", "equal", "equal"]
    assert replanned.profiling_s == planning.profiling_s  # the same profiling
    (run,) = ctl.events.of_kind("run")
    assert run.data["wall_s"] == pytest.approx(done.run.wall_s)
    assert done.phase.label == "proportional"
    report = ctl.report()
    assert report["state"] == "done" and len(report["events"]) == len(ctl.events)
    assert_nothing_left(built[0], pids)

    # what a dashboard reading the session's store saw: every event, the run's end
    # (logged after the session closed the store) included, the plan followed, the steps
    store = TimeSeriesStore.open_readonly(tmp_path / "run" / "monitor.sqlite")
    stored = store.events()
    logged = [(e.kind, e.message) for e in ctl.events]
    assert logged[-1] == ("state", "done")
    assert [(e.kind, e.message) for e in stored if e.kind != LIVE_PLAN] == logged
    live, *rebalanced = [e for e in stored if e.kind == LIVE_PLAN]  # a straggler may rebalance
    assert {e.data["policy"] for e in [live, *rebalanced]} == {"proportional"}
    batches = planning.plans["proportional"].local_batches
    assert live.data["local_batches"] == batches and set(live.data["compute_s"]) == set(batches)
    assert {len(r) for r in done.run.steps.values()} == {live.data["steps_total"]}
    assert store.query("deepedge_train_steps_done")[-1].value == live.data["steps_total"]
    computed = store.query("deepedge_train_compute_seconds")
    assert {s.label_dict["device"] for s in computed} == set(batches)


def test_a_run_that_loses_every_worker_fails_and_leaves_nothing(tmp_path) -> None:
    built: list = []
    ctl = _controller(tmp_path, built)
    with pytest.raises(TrainingError, match="every worker of the run was lost"), ctl:
        plan = ctl.plan().plans["equal"]
        assert ctl.session is not None
        victims = list(ctl.session.agents.processes.values())

        def kill_soon(epoch: int, step: int) -> None:
            if step == 1:
                for victim in victims:
                    victim.send_signal(signal.SIGKILL)

        ctl.train(plan, on_step=kill_soon)
    assert ctl.state is RunState.FAILED
    last = ctl.events.events[-1]
    assert last.kind == "state" and "lost" in last.message
    assert last.data["error"] == "TrainingError"
    for dev in built[0].devices.values():
        assert not dev.pids()
