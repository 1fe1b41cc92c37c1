"""Benchmark: every scheduling policy, end to end, on emulated clusters under live LC load.

Three scenarios: mild heterogeneity (four mid-range boards, 1.7x apart) and strong
heterogeneity (the demo's five boards, 3.5x apart), both with loose deadlines (300 ms), and
tight deadlines: the demo cluster with three apps' deadlines set from the fitted model so
that their device may train at half intensity but not at full (the model's p95 bound at
its proportional share and intensity 0.5, over 0.95, plus 2 %); the planner must throttle.
In each, the same re-training job runs once per policy from the same weights: the
Deep-Edge plan, the throughput-proportional split blind to interference, the equal split
(plain DDP), the fastest single device and EDDL-style dynamic dispatch. Per policy:
makespan against T_min (unconstrained, and within the LC limits) and against the equal
split of the same session, every LC app's missed requests and violated SLO windows while
that policy trained, and the accuracy on the drifted test set.

    .venv/bin/python bench/schedule_emulated.py [--quick] [--scenarios mild,strong,tight]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from _common import machine, write_results
from deepedge.apps import summarize_apps
from deepedge.cluster import LocalCluster
from deepedge.data import build_dataset
from deepedge.demo import _quick, default_specs
from deepedge.interference import InterferenceModel, TrainLoad, device_key, ensure_model
from deepedge.profile import KnowledgeBase
from deepedge.retrain import DEADLINE_POLICY, Retraining
from deepedge.session import EdgeSession
from deepedge.spec import ClusterSpec, JobSpec
from deepedge.train import evaluate, job_model, train_local

POLICIES = (DEADLINE_POLICY, "proportional", "equal", "fastest-single", "dynamic")
IDLE_S = 4.0
LOOSE_DEADLINE_MS = 300.0
TIGHT_APPS = ("cam-orin", "cam-xavier", "cam-nano")


def mild_cluster() -> ClusterSpec:
    """Four mid-range boards with one camera classifier each (deadlines set by ``loose``)."""
    return ClusterSpec.model_validate(
        {
            "name": "mild-edge",
            "cpu_period_us": 5000,
            "devices": [
                {"name": "xavier-1", "kind": "xavier-nx"},
                {"name": "tx2-1", "kind": "jetson-tx2"},
                {"name": "rpi-1", "kind": "rpi4"},
                {"name": "odroid-1", "kind": "odroid-xu4"},
            ],
            "apps": [
                {
                    "name": "cam-xavier",
                    "device": "xavier-1",
                    "rate_rps": 15,
                    "deadline_ms": LOOSE_DEADLINE_MS,
                },
                {
                    "name": "cam-tx2",
                    "device": "tx2-1",
                    "rate_rps": 15,
                    "deadline_ms": LOOSE_DEADLINE_MS,
                },
                {
                    "name": "cam-rpi",
                    "device": "rpi-1",
                    "rate_rps": 10,
                    "deadline_ms": LOOSE_DEADLINE_MS,
                },
                {
                    "name": "cam-odroid",
                    "device": "odroid-1",
                    "rate_rps": 10,
                    "deadline_ms": LOOSE_DEADLINE_MS,
                },
            ],
        }
    )


def loose(cluster: ClusterSpec, name: str) -> ClusterSpec:
    """``cluster`` with every LC deadline at :data:`LOOSE_DEADLINE_MS`."""
    apps = [a.model_copy(update={"deadline_ms": LOOSE_DEADLINE_MS}) for a in cluster.apps]
    return cluster.model_copy(update={"name": name, "apps": apps})


def tight(cluster: ClusterSpec, model: InterferenceModel, global_batch: int) -> ClusterSpec:
    """``cluster`` with :data:`TIGHT_APPS`' deadlines just above what intensity 0.5 needs."""
    local = LocalCluster(cluster)
    spec = local.spec
    cores = {d.name: float(d.cpu_cores or 1.0) for d in spec.devices}
    apps = []
    for a in cluster.apps:
        if a.name in TIGHT_APPS:
            d = next(d for d in spec.devices if d.name == a.device)
            share = max(1, round(global_batch * cores[d.name] / sum(cores.values())))
            bound = model.apps_beside_training(
                device_key(d, spec, local.mode.value),
                {a.name: (a.kind, a.rate_rps)},
                TrainLoad(share, 0.5),
            )[a.name].p95_upper_ms
            a = a.model_copy(update={"deadline_ms": round(bound / 0.95 * 1.02, 1)})
        apps.append(a)
    return cluster.model_copy(update={"name": "tight-edge", "apps": apps})


def run_scenario(
    name: str,
    cluster: ClusterSpec,
    job: JobSpec,
    base_state: dict,
    kb: KnowledgeBase,
    workdir: Path,
    console: Console,
) -> dict[str, Any]:
    train_set = build_dataset(job.dataset, "train", drifted=True)
    test = build_dataset(job.dataset, "test", drifted=True)
    model = job_model(job, train_set)
    runs = {}
    with EdgeSession(cluster, workdir / name, status=console.print) as session:
        retrain = Retraining(session, job, train_set, base_state, kb=kb)
        idle = time.time()
        time.sleep(IDLE_S)
        session.mark("idle", idle)
        planning = retrain.plan(POLICIES)
        for policy in POLICIES:
            plan = planning.plans[policy]
            console.print(f"  {name}/{policy}: {plan.describe()}")
            runs[policy] = retrain.run(plan)
            console.print(f"    {runs[policy].wall_s:.1f} s")
        records, phases = session.records, session.phases
    deadlines = {a.name: a.deadline_ms for a in cluster.apps}
    lb, lb_lc = planning.lower_bound_s, planning.feasible_lower_bound_s
    equal = runs["equal"].wall_s
    rows = {}
    for policy, run in runs.items():
        phase = next(p for p in phases if p.label == policy)
        stats = summarize_apps(records, deadlines, start_s=phase.start, end_s=phase.end)
        model.load_state_dict(run.final_state()["model"])
        plan = planning.plans[policy]
        rows[policy] = {
            "makespan_s": run.wall_s,
            "ratio_to_lower_bound": run.wall_s / lb,
            "ratio_to_feasible_lower_bound": run.wall_s / lb_lc if lb_lc else None,
            "ratio_to_equal": run.wall_s / equal,
            "median_step_s": statistics.median(run.step_durations_s()),
            "predicted_step_s": plan.predicted_step_s,
            "split": plan.describe(),
            "local_batches": plan.local_batches,
            "intensities": plan.intensities,
            "excluded": [e.device for e in plan.excluded],
            "slo_window_violations": sum(s.slo_window_violations for s in stats.values()),
            "slo_windows": sum(s.windows for s in stats.values()),
            "miss_rate": statistics.fmean(
                [s.miss_rate for s in stats.values() if not math.isnan(s.miss_rate)] or [0.0]
            ),
            "apps": {a: s.to_dict() for a, s in stats.items()},
            "accuracy": evaluate(model, *test.to_tensors()),
        }
    idle_phase = next(p for p in phases if p.label == "idle")
    alone = summarize_apps(records, deadlines, start_s=idle_phase.start, end_s=idle_phase.end)
    return {
        "devices": {d.name: d.kind for d in cluster.devices},
        "apps": {
            a.name: {
                "device": a.device,
                "rate_rps": a.rate_rps,
                "deadline_ms": a.deadline_ms,
                "idle_p95_ms": alone[a.name].p95_ms if a.name in alone else None,
            }
            for a in cluster.apps
        },
        "lower_bound_s": lb,
        "feasible_lower_bound_s": lb_lc,
        "deep_edge_notes": planning.plans[DEADLINE_POLICY].notes,
        "policies": rows,
    }


def markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "# schedule_emulated",
        "",
        f"Job: {result['job_summary']}. Emulation: {result['machine']['emulation']}. "
        "One run per policy per scenario, from the same weights, in one session per scenario. "
        "T_min: every step ideally balanced over all profiled devices at full speed, no "
        "all-reduce; T_min(LC): the same within each device's LC and memory limits.",
        "",
    ]
    for name, sc in result["scenarios"].items():
        deadlines = ", ".join(
            f"{a} {v['deadline_ms']:g} ms (idle p95 {v['idle_p95_ms']:.0f})"
            for a, v in sc["apps"].items()
            if v["idle_p95_ms"] is not None
        )
        lines += [
            f"## {name}: T_min {sc['lower_bound_s']:.1f} s, "
            f"T_min(LC) {sc['feasible_lower_bound_s']:.1f} s",
            "",
            f"Deadlines: {deadlines}.",
            "",
            "| policy | split (@ intensity) | makespan (s) | / T_min | / T_min(LC) "
            "| / equal | SLO windows violated | requests missed | accuracy |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for policy, r in sc["policies"].items():
            split = r["split"]
            lines.append(
                f"| {policy} | {split} | {r['makespan_s']:.1f} | "
                f"{r['ratio_to_lower_bound']:.2f} | {r['ratio_to_feasible_lower_bound']:.2f} | "
                f"{r['ratio_to_equal']:.2f} | {r['slo_window_violations']}/{r['slo_windows']} | "
                f"{100 * r['miss_rate']:.1f} % | {r['accuracy']:.3f} |"
            )
        lines.append("")
    lines += [f"Reproduce: `{result['command']}`", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the demo's --quick job")
    parser.add_argument("--scenarios", default="mild,strong,tight")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-schedule"))
    args = parser.parse_args()
    console = Console()
    demo_cluster, job = default_specs()
    if args.quick:
        job = _quick(job)
    wanted = [s.strip() for s in args.scenarios.split(",")]
    source = build_dataset(job.dataset, "train", drifted=False)
    model = job_model(job, source)
    train_local(model, *source.to_tensors(), job, epochs=3, batch=32)
    base_state = {k: v.clone() for k, v in model.state_dict().items()}

    scenarios: dict[str, dict[str, Any]] = {}
    t0 = time.time()
    args.workdir.mkdir(parents=True, exist_ok=True)
    with KnowledgeBase(args.workdir / "kb.sqlite") as kb:
        clusters = {
            "mild": loose(mild_cluster(), "mild-edge"),
            "strong": loose(demo_cluster, "strong-edge"),
            "tight": demo_cluster,
        }
        for name in wanted:
            lab = args.workdir / "interference"
            model = ensure_model(clusters[name], job, kb, lab, status=console.print)
            if name == "tight":
                assert model is not None
                clusters[name] = tight(clusters[name], model, job.global_batch)
            console.print(f"[bold]{name}[/]")
            scenarios[name] = run_scenario(
                name, clusters[name], job, base_state, kb, args.workdir, console
            )
    emulation = LocalCluster(demo_cluster).mode.value
    result = {
        "machine": machine(emulation),
        "job": job.model_dump(mode="json"),
        "job_summary": f"{job.model.arch} w{job.model.width}, {job.dataset.train_size} samples × "
        f"{job.epochs} epochs, global batch {job.global_batch}",
        "wall_s": time.time() - t0,
        "scenarios": scenarios,
        "command": "python bench/schedule_emulated.py"
        + (" --quick" if args.quick else "")
        + (f" --scenarios {args.scenarios}" if args.scenarios != "mild,strong,tight" else ""),
    }
    lines = markdown(result)
    write_results("schedule_emulated", result, lines)
    console.print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
