"""Benchmark: do the throughput profiles predict per-device step time in real DDP runs?

On the demo's emulated cluster (LC apps under load), every device is profiled once at
batch sizes around its expected share (×½, ×1, ×1½), then real multi-device DDP runs
train with splits that put each device at profiled batch sizes, between them and outside
them: the profiled split at B = 64…384, the equal split, and the profiled split reversed
(slow devices get the fast ones' shares). The B = 128 split runs twice: the difference
between its two runs is the measurement noise floor no predictor can beat on this host.
For every device and run the measured per-step compute (forward + backward + optimiser
step, without the wait for the all-reduce) is compared with the profile's prediction;
the whole step is compared with the expected maximum over the devices (from each
profile's step-time spread) plus the all-reduce model. Writes
bench/results/profile_accuracy.json and .md.

    .venv/bin/python bench/profile_accuracy.py [--steps N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from _common import machine, write_results  # bench/ is on sys.path when run as a script
from deepedge.control import Retraining
from deepedge.data import build_dataset
from deepedge.demo import default_specs
from deepedge.plan import equal_split, profiled_split
from deepedge.profile import KnowledgeBase, ProfileSettings, expected_step_s
from deepedge.session import EdgeSession
from deepedge.spec import JobSpec, Plan
from deepedge.train import TrainRun, job_model

BATCHES = (64, 128, 256, 384)


def _job(job: JobSpec, global_batch: int, steps: int) -> JobSpec:
    ds = job.dataset.model_copy(update={"train_size": steps * global_batch})
    return job.model_copy(update={"global_batch": global_batch, "epochs": 1, "dataset": ds})


def _compute_s(run: TrainRun, device: str) -> float:
    """Median per-step compute of one rank, skipping the run's first step (warm-up)."""
    recs = run.steps[device][1:]
    return statistics.median(r.compute_s for r in recs)


def _where(batch: int, profiled: list[int]) -> str:
    if batch in profiled:
        return "profiled"
    return "between" if min(profiled) < batch < max(profiled) else "outside"


def _ape(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="DDP steps per evaluation run")
    parser.add_argument(
        "--profile-steps", type=int, default=ProfileSettings().steps, help="timed steps per profile"
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-profile-accuracy"))
    args = parser.parse_args()
    console = Console()
    cluster, base_job = default_specs()
    kb_path = args.workdir / "kb.sqlite"
    KnowledgeBase.reset(kb_path)  # measure from scratch (the old file is kept as a backup)

    rows: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    with (
        KnowledgeBase(kb_path) as kb,
        EdgeSession(cluster, args.workdir, status=console.print) as session,
    ):
        job = _job(base_job, 128, args.steps)
        train_set = build_dataset(job.dataset, "train", drifted=True)
        state = job_model(job, train_set).state_dict()
        first = Retraining(
            session,
            job,
            train_set,
            state,
            kb=kb,
            profile_settings=ProfileSettings(steps=args.profile_steps),
        )
        planning = first.plan(("proportional",))
        profiles = planning.profiles
        models = {n: p.model for n, p in profiles.items()}
        cost = {n: p.profile.cost_s for n, p in profiles.items()}
        console.print(f"profiled in {planning.profiling_s:.1f} s; per device {cost}")

        configs: list[tuple[str, int, Plan]] = []
        for b in BATCHES:
            configs.append((f"profiled B={b}", b, profiled_split(models, b)))
        configs.append(("repeat B=128", 128, profiled_split(models, 128)))
        eq = equal_split(list(models), 128)
        configs.append(("equal B=128", 128, eq))
        prop = profiled_split(models, 128).local_batches
        by_speed = sorted(prop, key=prop.__getitem__)
        reversed_shares = dict(zip(by_speed, sorted(prop.values(), reverse=True), strict=True))
        configs.append(
            (
                "reversed B=128",
                128,
                Plan(policy="reversed", global_batch=128, local_batches=reversed_shares),
            )
        )
        for label, b, plan in configs:
            job_b = _job(base_job, b, args.steps)
            data_b = build_dataset(job_b.dataset, "train", drifted=True)
            retrain = Retraining(session, job_b, data_b, state, kb=kb)
            run = retrain.run(plan.model_copy(update={"policy": label.split()[0]}))
            k = len(plan.local_batches)
            for dev, batch in plan.local_batches.items():
                measured = _compute_s(run, dev)
                predicted = profiles[dev].step_s(batch)
                rows.append(
                    {
                        "run": label,
                        "device": dev,
                        "batch": batch,
                        "where": _where(batch, sorted(profiles[dev].timings)),
                        "predicted_s": predicted,
                        "measured_s": measured,
                        "ape": _ape(predicted, measured),
                    }
                )
            step_pred = expected_step_s(profiles, plan.local_batches, planning.comm_s(k))
            step_meas = statistics.median(run.step_durations_s()[1:])
            steps.append(
                {
                    "run": label,
                    "predicted_s": step_pred,
                    "measured_s": step_meas,
                    "ape": _ape(step_pred, step_meas),
                }
            )
            console.print(
                f"  {label}: step {step_meas:.3f} s measured, {step_pred:.3f} s predicted"
            )
        emulation = session.cluster.emulation

    first = {r["device"]: r["measured_s"] for r in rows if r["run"] == "profiled B=128"}
    again = {r["device"]: r["measured_s"] for r in rows if r["run"] == "repeat B=128"}
    noise = [_ape(again[d], first[d]) for d in first]
    rows = [r for r in rows if r["run"] != "repeat B=128"]  # scored only as the noise floor
    apes = [r["ape"] for r in rows]
    by_where = {
        w: [r["ape"] for r in rows if r["where"] == w] for w in ("profiled", "between", "outside")
    }
    summary = {
        "per_device_step": {
            "median_ape": statistics.median(apes),
            "worst_ape": max(apes),
            "n": len(apes),
            "by_where": {
                w: {"median_ape": statistics.median(v), "worst_ape": max(v), "n": len(v)}
                for w, v in by_where.items()
                if v
            },
        },
        "global_step": {
            "median_ape": statistics.median(s["ape"] for s in steps),
            "worst_ape": max(s["ape"] for s in steps),
            "n": len(steps),
        },
        "noise_floor": {
            "what": "same plan run twice: per-device |run2 - run1| / run1",
            "median_ape": statistics.median(noise),
            "worst_ape": max(noise),
            "per_device": dict(zip(first, noise, strict=True)),
        },
        "profiling_wall_s": planning.profiling_s,
        "profiling_cost_s_per_device": cost,
    }
    result = {
        "machine": machine(emulation),
        "job": base_job.model_dump(mode="json"),
        "steps_per_run": args.steps,
        "profiles": {n: p.summary() for n, p in profiles.items()},
        "comm_model": planning.comm.to_dict() if planning.comm else None,
        "summary": summary,
        "per_device": rows,
        "global_steps": steps,
        "profile_steps": args.profile_steps,
        "command": "python bench/profile_accuracy.py "
        f"--steps {args.steps} --profile-steps {args.profile_steps}",
    }
    pd = summary["per_device_step"]
    md = [
        "# profile_accuracy",
        "",
        f"Demo cluster ({len(profiles)} devices, {emulation}, LC apps under load), "
        f"{base_job.model.arch} w{base_job.model.width}, {args.profile_steps} timed steps per "
        f"profiled batch size, {args.steps} DDP steps per evaluation run (first skipped). "
        "Per-device step = forward + backward + optimiser step in the DDP run, without the "
        "all-reduce wait; predicted from each device's affine profile.",
        "",
        "| per-device step time | median APE | worst APE | n |",
        "|---|---:|---:|---:|",
        f"| all | {100 * pd['median_ape']:.1f}% | {100 * pd['worst_ape']:.1f}% | {pd['n']} |",
    ]
    for w, v in pd["by_where"].items():
        md.append(
            f"| batch {w} | {100 * v['median_ape']:.1f}% | {100 * v['worst_ape']:.1f}% | {v['n']} |"
        )
    gs = summary["global_step"]
    md.append(
        f"| whole step (slowest + all-reduce) | {100 * gs['median_ape']:.1f}% "
        f"| {100 * gs['worst_ape']:.1f}% | {gs['n']} |"
    )
    nf = summary["noise_floor"]
    md.append(
        f"| noise floor: same plan run twice | {100 * nf['median_ape']:.1f}% "
        f"| {100 * nf['worst_ape']:.1f}% | {len(noise)} |"
    )
    md += [
        "",
        f"Profiling cost: {planning.profiling_s:.1f} s wall for all devices at once "
        "(3 short DDP runs over all devices under LC load, plus the all-reduce model), "
        f"{planning.profiles[next(iter(cost))].profile.cost_s:.1f} s of it in the DDP runs.",
        "",
        "| run | device | batch | where | predicted ms | measured ms | APE |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['run']} | {r['device']} | {r['batch']} | {r['where']} "
            f"| {1e3 * r['predicted_s']:.0f} | {1e3 * r['measured_s']:.0f} "
            f"| {100 * r['ape']:.1f}% |"
        )
    md += ["", f"Reproduce: `{result['command']}`"]
    write_results("profile_accuracy", result, md)
    console.print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
