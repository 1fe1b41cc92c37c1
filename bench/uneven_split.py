"""Benchmark: the same re-training job on the same emulated devices, three splits.

Policies: equal split over all devices (plain DDP), the split balanced by the profiled
step-time models, and the fastest single device. Each makespan is reported against the
lower bound T_min (each step ideally balanced over the profiled devices, no all-reduce)
and against the equal split run in the same session. Writes bench/results/uneven_split.json and .md.

    .venv/bin/python bench/uneven_split.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from rich.console import Console

from _common import machine, write_results
from deepedge.control import BASELINES, RunController, RunOptions
from deepedge.data import build_dataset
from deepedge.demo import default_specs
from deepedge.train import job_model

POLICIES = BASELINES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on 1024 samples")
    parser.add_argument("--repeats", type=int, default=1, help="runs per policy (interleaved)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-uneven-split"))
    args = parser.parse_args()
    console = Console()
    cluster, job = default_specs()
    if args.quick:
        job = job.model_copy(
            update={"epochs": 1, "dataset": job.dataset.model_copy(update={"train_size": 1024})}
        )
    train_set = build_dataset(job.dataset, "train", drifted=True)
    model = job_model(job, train_set)

    makespans: dict[str, list[float]] = {p: [] for p in POLICIES}
    startups: dict[str, list[float]] = {p: [] for p in POLICIES}
    step_medians: dict[str, list[float]] = {p: [] for p in POLICIES}
    options = RunOptions(
        out=args.workdir,
        policies=POLICIES,
        kb=args.workdir / "kb.sqlite",
        refresh=True,
        rebalance=False,  # each split as planned
        slo_guard=None,
    )
    with RunController(
        cluster, job, options, train_set=train_set, initial_state=model.state_dict()
    ) as ctl:
        planning = ctl.plan()
        console.print(
            f"T_min = {planning.lower_bound_s:.2f} s; throughput "
            f"{ {n: round(v, 1) for n, v in planning.throughput.items()} }"
        )
        for rep in range(args.repeats):
            order = POLICIES if rep % 2 == 0 else tuple(reversed(POLICIES))
            for policy in order:
                run = ctl.train(planning.plans[policy]).run
                makespans[policy].append(run.wall_s)
                startups[policy].append(run.startup_s)
                step_medians[policy].append(statistics.median(run.step_durations_s()))
                console.print(f"  {policy:15s} run {rep + 1}: {run.wall_s:.2f} s")

    session = ctl.session
    assert session is not None
    lb = planning.lower_bound_s
    equal = statistics.median(makespans["equal"])
    rows = {
        p: {
            "makespan_s": statistics.median(v),
            "runs_s": v,
            "ratio_to_lower_bound": statistics.median(v) / lb,
            "ratio_to_equal": statistics.median(v) / equal,
            "startup_s": statistics.median(startups[p]),
            "median_step_s": statistics.median(step_medians[p]),
            "predicted_step_s": planning.plans[p].predicted_step_s,
            "local_batches": planning.plans[p].local_batches,
        }
        for p, v in makespans.items()
    }
    result = {
        "machine": machine(session.cluster.emulation),
        "job": job.model_dump(mode="json"),
        "devices": {
            d.name: {"kind": d.kind, "cpu_cores": d.cpu_cores} for d in session.spec.devices
        },
        "throughput_samples_per_s": planning.throughput,
        "total_samples": planning.total_samples,
        "lower_bound_s": lb,
        "policies": rows,
        "command": "python bench/uneven_split.py"
        + (" --quick" if args.quick else "")
        + (f" --repeats {args.repeats}" if args.repeats != 1 else ""),
    }
    lines = [
        "# uneven_split",
        "",
        f"Job: {job.model.arch} w{job.model.width}, {planning.total_samples} samples "
        f"({job.epochs} epochs), global batch {job.global_batch}; "
        f"{len(session.spec.devices)} emulated devices ({session.cluster.emulation}) with LC "
        f"apps under load. T_min = {lb:.2f} s. Median of {args.repeats} run(s) per policy.",
        "",
        "| policy | local batches | makespan (s) | / T_min | / equal split "
        "| start-up (s) | median step (s) | predicted step (s): expected slowest + all-reduce |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p, r in rows.items():
        lines.append(
            f"| {p} | {r['local_batches']} | {r['makespan_s']:.2f} | "
            f"{r['ratio_to_lower_bound']:.2f} | {r['ratio_to_equal']:.2f} | "
            f"{r['startup_s']:.2f} | {r['median_step_s']:.3f} | {r['predicted_step_s']:.3f} |"
        )
    lines += ["", f"Reproduce: `{result['command']}`"]
    write_results("uneven_split", result, lines)
    console.print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
