"""Benchmark: every scheduling policy, end to end, on emulated clusters under live LC load.

Four scenarios: mild heterogeneity (four mid-range boards, 1.7x apart) and strong
heterogeneity (the demo's five boards, 3.5x apart), both with loose deadlines (300 ms);
tight: the demo cluster with every deadline at :data:`TIGHT_FACTOR` × the app's *measured*
idle p95 (never from the model being tested); and fast-lc: the fastest board carries a
latency-sensitive app (deadline :data:`FAST_LC_FACTOR` × its measured idle p95, the others
loose), so a plan that protects it by throttling pays off. Idle p95s come from a session
of their own before the scenario's, from at least :data:`IDLE_REQUESTS` requests per app.

In each scenario the same re-training job runs ``--repeats`` times per policy from the
same weights, interleaved (round r runs the policies in an order rotated by r): the
Deep-Edge plan, the throughput-proportional split blind to interference, the equal split
(plain DDP), the fastest single device and EDDL-style dynamic dispatch. Per policy: the
median makespan against T_min (unconstrained, and within the LC limits) and against the
equal split, every LC app's missed requests and violated SLO windows over all its runs
(each window long enough for :data:`SLO_WINDOW_REQUESTS` requests, so a window's p95 is
an estimate and not the largest of ten), by how much the worst window exceeded its
deadline, and the accuracy on the drifted test set. The fastest policy with no violated
window in any run is named per scenario. Each session starts with a warm-up run that is not
counted, so no policy pays for the cold start.

    .venv/bin/python bench/schedule_emulated.py [--quick] [--repeats 3]
        [--scenarios mild,strong,tight,fast-lc]
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
from deepedge.apps import AppLatencyStats, latency_summary, summarize_apps
from deepedge.cluster import make_backend
from deepedge.control import DEADLINE_POLICY, PolicyRun, RunController, RunOptions
from deepedge.data import build_dataset
from deepedge.demo import _quick, default_specs
from deepedge.profile import KnowledgeBase
from deepedge.session import EdgeSession
from deepedge.spec import ClusterSpec, JobSpec
from deepedge.train import evaluate, job_model, train_local

POLICIES = (DEADLINE_POLICY, "proportional", "equal", "fastest-single", "dynamic")
IDLE_S = 4.0  # settling time at the start of each scenario's session
IDLE_REQUESTS = 300  # per app, for the idle p95 that sets tight deadlines
LOOSE_DEADLINE_MS = 300.0
TIGHT_FACTOR = 5.0
FAST_LC_FACTOR = 3.0
FAST_LC_APP = "cam-orin"
SLO_WINDOW_REQUESTS = 100
TIE = 0.03  # makespans within 3 % count as a tie
SCENARIOS = ("mild", "strong", "tight", "fast-lc")


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


def idle_p95_ms(cluster: ClusterSpec, workdir: Path, console: Console) -> dict[str, float]:
    """Each app's p95 with nothing but the apps running, measured in a session of its own
    from at least :data:`IDLE_REQUESTS` requests of the slowest-rate app."""
    window_s = IDLE_REQUESTS / min(a.rate_rps for a in cluster.apps)
    with EdgeSession(cluster, workdir / f"{cluster.name}-idle", status=console.print) as session:
        time.sleep(IDLE_S)
        start = time.time()
        time.sleep(window_s)
        records = session.records
    stats = summarize_apps(records, {a.name: math.inf for a in cluster.apps}, start_s=start)
    return {name: s.p95_ms for name, s in stats.items()}


def base_state(job: JobSpec) -> dict:
    """The deployed model every run starts from: the job's model trained on undrifted data."""
    source = build_dataset(job.dataset, "train", drifted=False)
    model = job_model(job, source)
    train_local(model, *source.to_tensors(), job, epochs=3, batch=32)
    return {k: v.clone() for k, v in model.state_dict().items()}


def job_summary(job: JobSpec) -> str:
    return (
        f"{job.model.arch} w{job.model.width}, {job.dataset.train_size} samples × "
        f"{job.epochs} epochs, global batch {job.global_batch}"
    )


def with_deadlines(cluster: ClusterSpec, name: str, deadlines: dict[str, float]) -> ClusterSpec:
    """``cluster`` renamed, each app's deadline from ``deadlines`` (default: loose)."""
    apps = [
        a.model_copy(update={"deadline_ms": round(deadlines.get(a.name, LOOSE_DEADLINE_MS), 1)})
        for a in cluster.apps
    ]
    return cluster.model_copy(update={"name": name, "apps": apps})


def slo_stats(
    records: list, cluster: ClusterSpec, start: float, end: float
) -> dict[str, AppLatencyStats]:
    """Per app, its latency over [start, end] in SLO windows of :data:`SLO_WINDOW_REQUESTS`
    requests at its rate (at least 1 s)."""
    return {
        a.name: latency_summary(
            records,
            deadline_ms=a.deadline_ms,
            start_s=start,
            end_s=end,
            window_s=max(1.0, SLO_WINDOW_REQUESTS / a.rate_rps),
            app=a.name,
        )
        for a in cluster.apps
    }


def run_scenario(
    name: str,
    cluster: ClusterSpec,
    job: JobSpec,
    start_state: dict,
    kb: KnowledgeBase,
    workdir: Path,
    console: Console,
    repeats: int,
    idle: dict[str, float],
    learn: bool,
) -> dict[str, Any]:
    train_set = build_dataset(job.dataset, "train", drifted=True)
    test = build_dataset(job.dataset, "test", drifted=True)
    model = job_model(job, train_set)
    runs: dict[str, list[PolicyRun]] = {p: [] for p in POLICIES}
    # each policy as planned: no run-time rebalancing, which would blur the comparison
    options = RunOptions(
        out=workdir / name,
        policies=POLICIES,
        kb=kb,
        settle_s=IDLE_S,
        rebalance=False,
        slo_guard=None,  # each policy's plan as made: what it does to the LC apps
    )
    with RunController(
        cluster, job, options, train_set=train_set, initial_state=start_state, status=console.print
    ) as ctl:
        planning = ctl.plan()
        first_lb_lc = planning.feasible_lower_bound_s
        plans = dict(planning.plans)
        # the session's first run pays for cold caches and first-touch start-up (~20 % in
        # earlier runs); it would land on whichever policy round 1 starts with
        console.print(f"  {name}: warm-up run, not counted")
        ctl.train(plans["proportional"])
        for r in range(repeats):
            ran = []
            for policy in POLICIES[r % len(POLICIES) :] + POLICIES[: r % len(POLICIES)]:
                plan = plans[policy]
                console.print(f"  {name}/{policy} (round {r + 1}): {plan.describe()}")
                done = ctl.train(plan)
                runs[policy].append(done)
                ran.append(done)
                console.print(f"    {done.run.wall_s:.1f} s")
            if learn and r + 1 < repeats:  # the next round's deep-edge plan knows this one
                console.print(f"  {ctl.learn(ran).describe()}")
                planning = ctl.plan((DEADLINE_POLICY,))
                plans[DEADLINE_POLICY] = planning.plans[DEADLINE_POLICY]
    assert ctl.session is not None
    records = ctl.session.records  # complete once the session has stopped its load generator
    lb, lb_lc = planning.lower_bound_s, planning.feasible_lower_bound_s
    equal = statistics.median(d.run.wall_s for d in runs["equal"])
    rows = {}
    for policy, done in runs.items():
        per_run = [slo_stats(records, cluster, d.phase.start, d.phase.end) for d in done]
        model.load_state_dict(done[-1].run.final_state()["model"])
        plan = done[-1].plan
        makespan = statistics.median(d.run.wall_s for d in done)
        worst = max(
            (
                s.worst_window_p95_ms / s.deadline_ms
                for stats in per_run
                for s in stats.values()
                if s.requests
            ),
            default=math.nan,
        )
        rows[policy] = {
            "makespan_s": makespan,
            "makespans_s": [d.run.wall_s for d in done],
            "ratio_to_lower_bound": makespan / lb,
            "ratio_to_feasible_lower_bound": makespan / lb_lc if lb_lc else None,
            "ratio_to_equal": makespan / equal,
            "median_step_s": statistics.median(t for d in done for t in d.run.step_durations_s()),
            "predicted_step_s": plan.predicted_step_s,
            "split": plan.describe(),
            "local_batches": plan.local_batches,
            "intensities": plan.intensities,
            "excluded": [e.device for e in plan.excluded],
            "slo_window_violations": sum(
                s.slo_window_violations for stats in per_run for s in stats.values()
            ),
            "slo_windows": sum(s.windows for stats in per_run for s in stats.values()),
            "worst_p95_over_deadline": worst,
            "miss_rate": statistics.fmean(
                [
                    s.miss_rate
                    for stats in per_run
                    for s in stats.values()
                    if not math.isnan(s.miss_rate)
                ]
                or [0.0]
            ),
            "apps": [{a: s.to_dict() for a, s in stats.items()} for stats in per_run],
            "runs": [
                {
                    "split": d.plan.describe(),
                    "local_batches": d.plan.local_batches,
                    "intensities": d.plan.intensities,
                    "makespan_s": d.run.wall_s,
                }
                for d in done
            ],
            "accuracy": evaluate(model, *test.to_tensors()),
        }
    clean = [p for p, r in rows.items() if r["slo_window_violations"] == 0]
    fastest = min(clean, key=lambda p: rows[p]["makespan_s"]) if clean else None
    # one split run by two policies is one decision: their makespans differ only by noise
    same_plan = bool(fastest) and {decisions(r) for r in rows[DEADLINE_POLICY]["runs"]} == {
        decisions(r) for r in rows[fastest]["runs"]
    }
    return {
        "devices": {d.name: d.kind for d in cluster.devices},
        "apps": {
            a.name: {
                "device": a.device,
                "rate_rps": a.rate_rps,
                "deadline_ms": a.deadline_ms,
                "idle_p95_ms": idle.get(a.name),
            }
            for a in cluster.apps
        },
        "repeats": repeats,
        "lower_bound_s": lb,
        "feasible_lower_bound_s": lb_lc,
        "first_feasible_lower_bound_s": first_lb_lc,
        "deep_edge_notes": plans[DEADLINE_POLICY].notes,
        "policies": rows,
        "fastest_slo_clean": fastest,
        "deep_edge_same_plan_as_fastest": same_plan,
        "deep_edge_fastest_slo_clean": bool(
            fastest
            and DEADLINE_POLICY in clean
            and (
                same_plan
                or rows[DEADLINE_POLICY]["makespan_s"] <= (1 + TIE) * rows[fastest]["makespan_s"]
            )
        ),
    }


def decisions(run: dict[str, Any]) -> tuple:
    """A static run's decisions: each device's local batch and intensity (1 if unset)."""
    return tuple(
        sorted((d, b, run["intensities"].get(d, 1.0)) for d, b in run["local_batches"].items())
    )


def markdown(result: dict[str, Any]) -> list[str]:
    lines = [
        "# schedule_emulated",
        "",
        f"Job: {result['job_summary']}. Emulation: {result['machine']['emulation']}. "
        f"{result['repeats']} runs per policy per scenario, interleaved, from the same "
        "weights, in one session per scenario, after a warm-up run that is not counted; "
        "makespans are medians. SLO windows hold "
        f"about {SLO_WINDOW_REQUESTS} requests each (at least 1 s). T_min: every step "
        "ideally balanced over all profiled devices at full speed, no all-reduce; T_min(LC): "
        "the same within each device's LC and memory limits"
        + (
            " (as the last deep-edge plan knew them). After each round the session's runs "
            "are learned from (RunController.learn) and deep-edge is planned again, so its "
            "first run rests on the lab's model and later ones on the runs too."
            if result.get("learn")
            else "."
        ),
        "",
        "| scenario | fastest SLO-clean policy | deep-edge | deep-edge / T_min(LC) | "
        "deep-edge fastest SLO-clean (3 % tie or the same split) |",
        "|---|---|---:|---:|---|",
    ]
    for name, sc in result["scenarios"].items():
        de = sc["policies"][DEADLINE_POLICY]
        best = sc["fastest_slo_clean"]
        best_text = f"{best} {sc['policies'][best]['makespan_s']:.1f} s" if best else "none"
        lines.append(
            f"| {name} | {best_text} | {de['makespan_s']:.1f} s | "
            f"{de['ratio_to_feasible_lower_bound']:.2f} | "
            f"{'yes' if sc['deep_edge_fastest_slo_clean'] else 'no'} |"
        )
    lines.append("")
    for name, sc in result["scenarios"].items():
        deadlines = ", ".join(
            f"{a} {v['deadline_ms']:g} ms (idle p95 {v['idle_p95_ms']:.0f})"
            for a, v in sc["apps"].items()
            if v["idle_p95_ms"] is not None
        )
        de_runs = sc["policies"][DEADLINE_POLICY].get("runs", [])
        per_round = "; ".join(f"{r['split']} ({r['makespan_s']:.1f} s)" for r in de_runs)
        lines += [
            f"## {name}: T_min {sc['lower_bound_s']:.1f} s, "
            f"T_min(LC) {sc['feasible_lower_bound_s']:.1f} s",
            "",
            f"Deadlines: {deadlines}.",
            "",
            f"Deep-edge per round: {per_round}." if per_round else "",
            "",
            "| policy | split (@ intensity) | makespan (s) | runs (s) | / T_min | / T_min(LC) "
            "| / equal | SLO windows violated | worst window p95 / deadline | requests missed "
            "| accuracy |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for policy, r in sc["policies"].items():
            runs = ", ".join(f"{m:.1f}" for m in r["makespans_s"])
            lines.append(
                f"| {policy} | {r['split']} | {r['makespan_s']:.1f} | {runs} | "
                f"{r['ratio_to_lower_bound']:.2f} | {r['ratio_to_feasible_lower_bound']:.2f} | "
                f"{r['ratio_to_equal']:.2f} | {r['slo_window_violations']}/{r['slo_windows']} | "
                f"{r['worst_p95_over_deadline']:.2f} | {100 * r['miss_rate']:.1f} % | "
                f"{r['accuracy']:.3f} |"
            )
        lines.append("")
    lines += [f"Reproduce: `{result['command']}`", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the demo's --quick job")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--repeats", type=int, default=3, help="runs per policy, interleaved")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-schedule"))
    parser.add_argument(
        "--no-learn", action="store_true", help="plan deep-edge once, on the lab's model only"
    )
    args = parser.parse_args()
    console = Console()
    demo_cluster, job = default_specs()
    if args.quick:
        job = _quick(job)
    wanted = [s.strip() for s in args.scenarios.split(",")]
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    start_state = base_state(job)

    scenarios: dict[str, dict[str, Any]] = {}
    t0 = time.time()
    args.workdir.mkdir(parents=True, exist_ok=True)
    with KnowledgeBase(args.workdir / "kb.sqlite") as kb:
        for name in wanted:
            base = mild_cluster() if name == "mild" else demo_cluster
            idle = idle_p95_ms(base, args.workdir, console)
            if name == "tight":
                deadlines = {a: TIGHT_FACTOR * p for a, p in idle.items()}
            elif name == "fast-lc":
                deadlines = {FAST_LC_APP: FAST_LC_FACTOR * idle[FAST_LC_APP]}
            else:
                deadlines = {}
            cluster = with_deadlines(base, f"{name}-edge", deadlines)
            console.print(f"[bold]{name}[/]")
            scenarios[name] = run_scenario(
                name,
                cluster,
                job,
                start_state,
                kb,
                args.workdir,
                console,
                args.repeats,
                idle,
                not args.no_learn,
            )
    emulation = make_backend(demo_cluster).emulation
    result = {
        "machine": machine(emulation),
        "job": job.model_dump(mode="json"),
        "job_summary": job_summary(job),
        "wall_s": time.time() - t0,
        "scenarios": scenarios,
        "repeats": args.repeats,
        "learn": not args.no_learn,
        "command": "python bench/schedule_emulated.py"
        + (" --no-learn" if args.no_learn else "")
        + (" --quick" if args.quick else "")
        + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
        + (f" --scenarios {args.scenarios}" if args.scenarios != ",".join(SCENARIOS) else ""),
    }
    lines = markdown(result)
    write_results("schedule_emulated", result, lines)
    console.print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
