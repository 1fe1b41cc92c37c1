"""`deepedge interference fit|predict` on a knowledge base filled with synthetic runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepedge.cli import app
from deepedge.cluster import LocalCluster
from deepedge.interference import Scenario, TrainLoad, device_key, train_resident
from deepedge.profile import KnowledgeBase
from deepedge.spec import ClusterSpec, JobSpec, load_spec

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def demo_cluster() -> tuple[ClusterSpec, str]:
    """The demo cluster's spec (catalog defaults filled) and its emulation mode here."""
    local = LocalCluster(load_spec(ClusterSpec, EXAMPLES / "demo-cluster.yaml"))
    return local.spec, local.emulation


def fill(kb_path: Path) -> None:
    """Solo usage of the CNN app, a cpu stressor and the demo job on orin-1, and 40 runs."""
    spec, mode = demo_cluster()
    dev = next(d for d in spec.devices if d.name == "orin-1")
    key = device_key(dev, spec, mode)
    job = load_spec(JobSpec, EXAMPLES / "demo-job.yaml")
    q = float(dev.cpu_cores or 1)
    rng = np.random.default_rng(0)
    with KnowledgeBase(kb_path) as kb:
        for rate in (5.0, 20.0, 40.0):
            cpu = rate * 0.0015
            usage = {"cpu_cores": cpu, "p95_ms": 10 / (1 - cpu / q), "p99_ms": 14 / (1 - cpu / q)}
            kb.add_usage(key, "app:cnn_inference", {"rate_rps": rate}, usage)
        for level in (0.25, 0.5, 1.0):
            kb.add_usage(key, "stressor:cpu", {"intensity": level}, {"cpu_cores": level * q})
            for b in (8, 32, 64):
                usage = {"cpu_cores": level * q, "samples_per_s": 30 * level * b / (b + 8)}
                kb.add_usage(key, train_resident(job), {"batch": b, "intensity": level}, usage)
        for _ in range(40):
            rate = float(rng.uniform(5, 40))
            train = TrainLoad(int(rng.choice([8, 32, 64])), float(rng.uniform(0.1, 0.8)))
            sc = Scenario(
                "orin-1", "cnn_inference", rate, {"cpu": float(rng.uniform(0, 0.5))}, train
            )
            util = min(0.95, rate * 0.0015 / q + train.intensity + sc.stressors["cpu"])
            p95 = 10 / (1 - util) * float(rng.lognormal(0, 0.03))
            result = {"p95_ms": p95, "p99_ms": 1.4 * p95, "train_samples_per_s": 20 * (1 - util)}
            kb.add_interference(key, "synthetic", sc.to_dict(), result)


def test_fit_then_predict(tmp_path: Path) -> None:
    kb = tmp_path / "kb.sqlite"
    fill(kb)
    fit = runner.invoke(
        app,
        [
            "interference",
            "fit",
            str(EXAMPLES / "demo-job.yaml"),
            "--kb",
            str(kb),
            "--plots",
            str(tmp_path / "plots"),
        ],
    )
    assert fit.exit_code == 0, fit.output
    assert "p95" in fit.output and "throughput" in fit.output
    assert (tmp_path / "plots" / "predicted_vs_measured.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "sensitivity_orin-nano.png").stat().st_size > 1000

    args = ["interference", "predict", str(EXAMPLES / "demo-cluster.yaml"), "--kb", str(kb)]
    out = runner.invoke(app, [*args, "--device", "orin-1", "--batch", "32"])
    assert out.exit_code == 0, out.output
    assert "cam-orin" in out.output and ("safe" in out.output or "may miss" in out.output)
    # a device kind never profiled: a clear error, not a guess
    other = runner.invoke(app, [*args, "--device", "nano-1", "--batch", "8"])
    assert other.exit_code != 0
    assert "no profile of device kind 'jetson-nano'" in str(other.exception)


def test_deep_edge_problem_from_the_model_and_contradictory_deadlines(tmp_path: Path) -> None:
    from deepedge.errors import SpecError
    from deepedge.interference import InterferenceModel, load_books, observations
    from deepedge.plan.deadline import cluster_problem, deadline_plan

    kb = tmp_path / "kb.sqlite"
    fill(kb)
    spec, mode = demo_cluster()
    job = load_spec(JobSpec, EXAMPLES / "demo-job.yaml")
    with KnowledgeBase(kb) as base:
        books = load_books(base, job)
        model = InterferenceModel.fit(observations(base.interference_runs(), books), books)
    orin = next(d for d in spec.devices if d.name == "orin-1")
    keys = {"orin-1": device_key(orin, spec, mode)}

    def problem(apps):
        return cluster_problem(
            [orin],
            apps,
            {"orin-1": (0.02, 0.004)},
            global_batch=32,
            comm_s=lambda k: 0.0,
            need_mb=lambda b: 400.0 + b,
            interference=model,
            device_keys=keys,
        )

    cam = next(a for a in spec.apps if a.name == "cam-orin")
    plan = deadline_plan(problem([cam.model_copy(update={"deadline_ms": 1000.0})]))
    assert plan.local_batches == {"orin-1": 32} and plan.intensities["orin-1"] == 1.0
    # a tight deadline throttles the device or leaves it out, never silently breaks it
    tight = problem([cam.model_copy(update={"deadline_ms": 20.0})])
    levels = {lv.intensity: lv.cap for lv in tight.devices[0].levels}
    assert levels[1.0] == 0 < levels[0.25]  # only a throttled trainer keeps cam under 19 ms
    throttled = deadline_plan(tight)
    assert throttled.intensities["orin-1"] < 1.0
    assert any("throttled" in n and "cam-orin" in n for n in throttled.notes)
    with pytest.raises(SpecError, match="below its p95 with nothing else running"):
        problem([cam.model_copy(update={"deadline_ms": 1.0})])
