"""Benchmark: does the interference model learn from training runs? (the learning curve)

The tight scenario of ``schedule_emulated``: the demo cluster with every deadline at
``TIGHT_FACTOR`` × the app's idle p95, measured in a session of its own. The lab's
plan-targeted interference model is built once (cached in ``--workdir``); each bench run
starts from a copy of that knowledge base, so no earlier bench run's rows are in it.

In one session, the same job then runs ``--runs`` times under the deep-edge plan. After
each run, :meth:`~deepedge.control.RunController.learn` stores every LC app's latency over the
run and refits the model, and the next run is planned on the refitted model. Per run: the
plan, the makespan, the SLO windows violated, and per app the model's p95 upper bound at
the plan's operating point (as the model stood *before* the run) over the run's measured
p95, and the point prediction's error.

Writes bench/results/learning_curve.json, .md and .png.

    .venv/bin/python bench/learning_curve.py [--runs 5] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console

from _common import RESULTS, machine, write_results
from deepedge.control import DEADLINE_POLICY, RunController, RunOptions
from deepedge.data import build_dataset
from deepedge.demo import _quick, default_specs
from deepedge.interference import ensure_model
from deepedge.profile import KnowledgeBase
from schedule_emulated import (
    IDLE_S,
    TIGHT_FACTOR,
    base_state,
    idle_p95_ms,
    job_summary,
    slo_stats,
    with_deadlines,
)


def one_run(ctl: RunController, console: Console) -> dict[str, Any]:
    """Plan on the stored model, train, learn from the run; what the run showed."""
    plan = ctl.plan((DEADLINE_POLICY,)).plans[DEADLINE_POLICY]
    console.print(f"  plan: {plan.describe()}")
    done = ctl.train(plan)
    run, phase, session = done.run, done.phase, ctl.session
    assert session is not None
    learned = ctl.learn([done])
    console.print(f"  {run.wall_s:.1f} s; {learned.describe()}")
    stats = slo_stats(
        session.lc_records(phase.start, phase.end), session.spec, phase.start, phase.end
    )
    apps = {
        r.app: {
            "device": r.device,
            "local_batch": r.scenario.train.batch if r.scenario.train else 0,
            "intensity": r.scenario.train.intensity if r.scenario.train else None,
            "measured_p95_ms": r.measured.p95_ms,
            "requests": r.measured.requests,
            "predicted_p95_ms": r.predicted.p95_ms if r.predicted else None,
            "p95_upper_ms": r.predicted.p95_upper_ms if r.predicted else None,
            "bound_over_measured": r.bound_ratio,
            "ape_pct": 100 * abs(r.predicted.p95_ms / r.measured.p95_ms - 1)
            if r.predicted
            else None,
        }
        for r in learned.rows
    }
    ratios = [a["bound_over_measured"] for a in apps.values() if a["bound_over_measured"]]
    apes = [a["ape_pct"] for a in apps.values() if a["ape_pct"] is not None]
    return {
        "makespan_s": run.wall_s,
        "predicted_step_s": plan.predicted_step_s,
        "median_step_s": statistics.median(run.step_durations_s()),
        "split": plan.describe(),
        "local_batches": plan.local_batches,
        "intensities": plan.intensities,
        "excluded": [e.device for e in plan.excluded],
        "slo_window_violations": sum(s.slo_window_violations for s in stats.values()),
        "slo_windows": sum(s.windows for s in stats.values()),
        "median_bound_over_measured": statistics.median(ratios) if ratios else None,
        "median_ape_pct": statistics.median(apes) if apes else None,
        "refitted": learned.refitted,
        "skipped": learned.skipped,
        "apps": apps,
    }


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    xs = list(range(1, len(runs) + 1))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for app in runs[0]["apps"]:
        ys = [r["apps"].get(app, {}).get("bound_over_measured") for r in runs]
        ax1.plot(xs, [y if y else float("nan") for y in ys], "o-", alpha=0.5, label=app)
    ax1.plot(xs, [r["median_bound_over_measured"] for r in runs], "k-", lw=3, label="median")
    ax1.axhline(1.0, color="red", ls="--", lw=1)
    ax1.set(xlabel="run", ylabel="p95 upper bound / measured p95", title="bound width")
    ax1.legend(fontsize=7)
    ax2.plot(xs, [r["makespan_s"] for r in runs], "o-")
    ax2.set(xlabel="run", ylabel="makespan (s)", title="deep-edge makespan", ylim=(0, None))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "# learning_curve",
        "",
        f"Job: {result['job_summary']}. Cluster: the demo's, deadlines at {TIGHT_FACTOR:g} × "
        "each app's measured idle p95. One session; the deep-edge plan of each run is made "
        "on the model refitted after the runs before it. Bound / measured and the error are "
        "of the model as it stood before the run, at the run's operating points.",
        "",
        "| run | split (@ intensity) | makespan (s) | median bound / measured | "
        "median p95 APE | SLO windows violated |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(result["runs"], 1):
        ratio, ape = r["median_bound_over_measured"], r["median_ape_pct"]
        lines.append(
            f"| {i} | {r['split']} | {r['makespan_s']:.1f} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | "
            f"{'-' if ape is None else f'{ape:.1f} %'} | "
            f"{r['slo_window_violations']}/{r['slo_windows']} |"
        )
    lines += ["", f"![learning curve]({result['plot']})", "", f"Reproduce: `{result['command']}`"]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the demo's --quick job")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-learning"))
    args = parser.parse_args()
    console = Console()
    demo_cluster, job = default_specs()
    if args.quick:
        job = _quick(job)
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    idle = idle_p95_ms(demo_cluster, args.workdir, console)
    cluster = with_deadlines(
        demo_cluster, "learning-edge", {a: TIGHT_FACTOR * p for a, p in idle.items()}
    )
    lab_kb, kb_path = args.workdir / "lab-kb.sqlite", args.workdir / "kb.sqlite"
    with KnowledgeBase(lab_kb) as kb:  # the lab's model: built once, reused by later runs
        ensure_model(cluster, job, kb, args.workdir / "interference", status=console.print)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{kb_path}{suffix}").unlink(missing_ok=True)
    shutil.copy(lab_kb, kb_path)

    start_state = base_state(job)
    train_set = build_dataset(job.dataset, "train", drifted=True)
    runs = []
    options = RunOptions(
        out=args.workdir,
        kb=kb_path,
        session_dir=args.workdir / "session",
        settle_s=IDLE_S,
        rebalance=False,  # the plan as the model made it
        slo_guard=None,
    )
    with RunController(
        cluster, job, options, train_set=train_set, initial_state=start_state, status=console.print
    ) as ctl:
        for i in range(args.runs):
            console.print(f"[bold]run {i + 1}/{args.runs}[/]")
            runs.append(one_run(ctl, console))
    assert ctl.session is not None
    png = RESULTS / "learning_curve.png"
    plot(runs, png)
    result = {
        "machine": machine(ctl.session.cluster.emulation),
        "job": job.model_dump(mode="json"),
        "job_summary": job_summary(job),
        "deadlines_ms": {a.name: a.deadline_ms for a in cluster.apps},
        "idle_p95_ms": idle,
        "wall_s": time.time() - t0,
        "runs": runs,
        "plot": png.name,
        "command": "python bench/learning_curve.py"
        + (f" --runs {args.runs}" if args.runs != 5 else "")
        + (" --quick" if args.quick else ""),
    }
    lines = markdown(result)
    write_results("learning_curve", result, lines)
    console.print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
