"""End to end on a real 2-device emulated cluster: profile, plan, uneven DDP, LC load, teardown.

One session is shared by the module's tests (booting devices costs seconds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from deepedge.cluster import detect_cgroups
from deepedge.cluster.cgroups import PARENT
from deepedge.control import Retraining
from deepedge.data import build_dataset
from deepedge.errors import TrainingError
from deepedge.interference import MIN_RUN_REQUESTS
from deepedge.models import build_model
from deepedge.profile import KnowledgeBase, ProfileSettings
from deepedge.session import EdgeSession
from deepedge.spec import ClusterSpec, JobSpec
from deepedge.train import load_checkpoint
from tests.conftest import assert_nothing_left, needs_cgroups

pytestmark = [needs_cgroups, pytest.mark.root, pytest.mark.timeout(300)]

CLUSTER = {
    "name": "it",
    "cpu_period_us": 5000,
    "devices": [{"name": "fast", "kind": "orin-nano"}, {"name": "slow", "kind": "jetson-nano"}],
    "apps": [{"name": "cam", "device": "slow", "rate_rps": 10, "deadline_ms": 200}],
}
# 32 px images, so that a step costs every device several 4 ms scheduler ticks of CPU: CFS
# enforces a quota only at tick granularity, and a 1-3 ms step ran at host speed (paying
# the overrun later, outside its timed compute). At 16 px the slow device's profiled
# throughput swung between 50 and 15,000 samples/s from run to run.
JOB = {
    "model": {"arch": "small_cnn", "width": 16},
    "dataset": {"kind": "synthetic", "train_size": 200, "test_size": 50, "image_size": 32},
    "epochs": 2,
    "global_batch": 48,
}


@pytest.fixture(scope="module")
def session(tmp_path_factory, backend):
    spec = ClusterSpec.model_validate({**CLUSTER, "backend": backend})
    s = EdgeSession(spec, tmp_path_factory.mktemp("session"))
    with s:
        yield s
        pids = {p for dev in s.cluster.devices.values() for p in dev.pids()}
    assert_nothing_left(s.cluster, pids)


FAST = ProfileSettings(steps=4, warmup=1)


@pytest.fixture(scope="module")
def retraining(session, tmp_path_factory):
    job = JobSpec.model_validate(JOB)
    train_set = build_dataset(job.dataset, "train", drifted=True)
    torch.manual_seed(0)
    model = build_model(
        job.model,
        in_channels=3,
        num_classes=train_set.num_classes,
        image_size=job.dataset.image_size,
    )
    kb = KnowledgeBase(tmp_path_factory.mktemp("kb") / "kb.sqlite")
    return Retraining(session, job, train_set, model.state_dict(), kb=kb, profile_settings=FAST)


def test_profiles_see_the_faster_device_and_are_reused(retraining):
    planning = retraining.plan(("proportional", "equal"))
    tp = planning.throughput
    assert tp["fast"] > 1.5 * tp["slow"], tp  # 0.277 vs 0.080 host cores
    prop = planning.plans["proportional"].local_batches
    assert prop["fast"] > prop.get("slow", 0) and sum(prop.values()) == 48
    if "slow" not in prop:  # its fixed cost per step can exceed the fast device's whole step
        assert "too slow" in planning.plans["proportional"].excluded[0].reason
    for prof in planning.profiles.values():
        assert not prof.reused and len(prof.timings) >= 2
        assert all(m > 50 for m in prof.memory_mb.values())  # a torch process's peak RSS
    assert planning.comm is not None and planning.comm.predict(2, planning.grad_bytes) > 0
    # the same job again: everything comes from the knowledge base, nothing is re-measured
    again = retraining.plan(("proportional",))
    assert all(p.reused for p in again.profiles.values()) and again.comm_reused
    assert again.plans["proportional"].local_batches == prop


def test_uneven_ddp_run_follows_the_plan_and_checkpoints(retraining, session):
    planning = retraining.plan(("proportional",))
    plan = planning.plans["proportional"]
    run = retraining.run(plan)
    steps_per_epoch = -(-200 // 48)
    for dev, recs in run.steps.items():
        assert len(recs) == 2 * steps_per_epoch
        assert recs[0].batch == plan.local_batches[dev]
        assert all(r.start <= r.local_done <= r.synced <= r.end for r in recs)
    # every rank saw the same global loss trajectory length and the samples add up
    assert sum(r.batch for recs in run.steps.values() for r in recs) == 2 * 200
    ckpts = sorted(run.checkpoint_dir.glob("*.ckpt"))
    assert len(ckpts) == 2
    state = load_checkpoint(ckpts[-1])
    assert state["epoch"] == 1 and state["local_batches"] == [
        plan.local_batches[d] for d in plan.devices
    ]
    phase = session.phases[-1]
    assert phase.label == "proportional"
    # the run's LC requests are readable live, and become a row of the knowledge base
    recs = session.lc_records(phase.start, phase.end)
    assert recs and all(r.app == "cam" and phase.start <= r.scheduled_s < phase.end for r in recs)
    learned = retraining.learn([(plan, phase.start, phase.end)])
    if len(recs) < MIN_RUN_REQUESTS:
        assert f"{len(recs)} requests in the run" in learned.skipped["proportional/cam"]
    else:
        assert [r.app for r in learned.rows] == ["cam"]
    assert not learned.refitted  # no interference model was ever fitted here


def test_lc_requests_are_recorded_during_the_session(session):
    # the load generator runs until stop(); peek at its liveness through the process table
    assert session._loadgen is not None and psutil.pid_exists(session._loadgen.pid)


def test_a_dead_worker_is_a_clear_error(retraining, session):
    plan = retraining.plan(("equal",)).plans["equal"]
    victim = session.agents.processes["slow"]

    def kill_soon(epoch: int, step: int) -> None:
        if step == 1:
            victim.send_signal(signal.SIGKILL)

    with pytest.raises(TrainingError, match="slow"):
        retraining.run(plan, on_step=kill_soon)


def _train_command(tmp_path: Path, epochs: int) -> tuple[list[str], dict[str, str], Path]:
    """``deepedge train`` of the 2-device cluster (no LC apps) as a subprocess: its argv,
    environment and output folder."""
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({**CLUSTER, "apps": []}))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**JOB, "epochs": epochs}))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    argv = [sys.executable, "-c", "from deepedge.cli import main; main()", "train"]
    return [*argv, str(cluster), str(job), "--out", str(out)], env, out


def test_ctrl_c_during_training_keeps_the_last_checkpoint(tmp_path):
    argv, env, out = _train_command(tmp_path, epochs=200)
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    pattern = "checkpoints/deep-edge-*/*.ckpt"  # one directory per run (the default policy)
    deadline = time.monotonic() + 180
    while not list(out.glob(pattern)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert load_checkpoint(sorted(out.glob(pattern))[-1])["epoch"] >= 0
    report = json.loads((out / "report.json").read_text())  # the controller's log survives
    assert report["state"] == "failed" and report["events"][-1]["data"]["error"] == (
        "KeyboardInterrupt"
    )
    driver, _ = detect_cgroups()
    assert not [d for d in driver.dirs(PARENT) if list(d.glob(f"{proc.pid}_*"))]


def test_a_killed_coordinator_resumes_from_its_last_checkpoint(tmp_path):
    argv, env, out = _train_command(tmp_path, epochs=4)
    argv += ["--policy", "equal"]
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not list(out.glob("checkpoints/equal-*/*.ckpt")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.2)
    first.kill()  # the coordinator itself: no survivor holds the run any more
    first.communicate(timeout=60)
    again = subprocess.run(
        [*argv, "--resume"], env=env, capture_output=True, text=True, timeout=240
    )
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["state"] == "done"
    assert any(e["kind"] == "resume" for e in report["events"])
    newest = max(out.glob("checkpoints/equal-*/*.ckpt"), key=lambda p: p.stat().st_mtime)
    assert load_checkpoint(newest)["epoch"] == 3
    nothing = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True)
    assert nothing.returncode != 0 and "the run finished" in nothing.stderr
