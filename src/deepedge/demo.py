"""`deepedge demo`: the case study end to end on the embedded emulated cluster.

A classifier trained on the source domain loses accuracy when the camera images drift; a
5-device heterogeneous cluster whose LC apps are under load re-trains it on drifted data
with the Deep-Edge plan (devices, local batches and training intensities chosen so no LC
app misses its deadline), then, from the same weights, with the interference-blind
throughput-proportional split and the equal split (plain DDP). The report compares
accuracy, wall time against the lower bound, and every LC app's latency against its
deadline during each phase.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deepedge.apps import summarize_apps
from deepedge.control import DEADLINE_POLICY, Event, RunController, RunOptions
from deepedge.data import build_dataset
from deepedge.errors import UsageError
from deepedge.report import plot_lc_latency, plot_step_timeline
from deepedge.session import EdgeSession
from deepedge.spec import ClusterSpec, JobSpec, Plan, load_spec, read_spec_file, spec_errors
from deepedge.train import (
    TrainRun,
    evaluate,
    job_model,
    save_checkpoint,
    train_local,
)

__all__ = ["DemoOptions", "default_specs", "read_report", "render_tables", "run_demo"]

IDLE_S = 4.0  # LC load alone, before any training: each app's unloaded latency
CHAOS_AT = 0.4  # --chaos: the share of the headline run's steps after which an agent dies
POLICIES = (DEADLINE_POLICY, "proportional", "equal")  # the first is the headline


@dataclass(frozen=True)
class DemoOptions:
    out: Path
    quick: bool = False
    cluster_path: Path | None = None
    job_path: Path | None = None
    force_fallback: bool = False
    kb_path: Path | None = None  # the user's knowledge base by default
    refresh_profiles: bool = False
    base_epochs: int = 4
    base_batch: int = 32  # the deployed model was trained with small batches, off-cluster
    chaos: bool = False
    """Kill one agent at :data:`CHAOS_AT` of the headline run (see :func:`_chaos_monkey`)."""


def default_specs() -> tuple[ClusterSpec, JobSpec]:
    examples = resources.files("deepedge") / "examples"
    with (
        resources.as_file(examples / "demo-cluster.yaml") as c,
        resources.as_file(examples / "demo-job.yaml") as j,
    ):
        return load_spec(ClusterSpec, c), load_spec(JobSpec, j)


def _quick(job: JobSpec) -> JobSpec:
    """A smaller job with the same shape, for `--quick`."""
    ds = job.dataset.model_copy(
        update={
            "train_size": min(job.dataset.train_size, 1024),
            "test_size": min(job.dataset.test_size, 500),
        }
    )
    return job.model_copy(update={"dataset": ds, "epochs": min(job.epochs, 2)})


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _final_accuracy(
    run: TrainRun, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> float:
    model.load_state_dict(run.final_state()["model"])
    return evaluate(model, x, y)


def _announce(event: Event, cluster: ClusterSpec, console: Console) -> None:
    """The demo's step headers, as the controller reaches them."""
    if event.kind == "cluster":
        console.print(
            f"[bold]4/5 cluster[/]: {len(cluster.devices)} devices with {len(cluster.apps)} "
            f"LC apps under load ({event.data['emulation']})"
        )
    elif event.kind == "profiled":
        console.print(f"    {event.message}")


def _chaos_monkey(
    ctl: RunController, plan: Plan, total_steps: int, console: Console
) -> Callable[[int, int], None]:
    """``on_step`` that kills (SIGKILL) the agent of the plan's second-largest share once
    :data:`CHAOS_AT` of the steps are done: the run controller must survive it."""
    assert ctl.session is not None
    shares = sorted(plan.local_batches, key=plan.local_batches.__getitem__, reverse=True)
    victim = shares[1] if len(shares) > 1 else shares[0]
    proc = ctl.session.agents.processes[victim]
    per_epoch = max(1, total_steps // ctl.job.epochs)
    fired: list[str] = []

    def strike(epoch: int, step: int) -> None:
        if not fired and epoch * per_epoch + step >= CHAOS_AT * total_steps:
            fired.append(victim)
            console.print(f"    [red]chaos[/]: killing the training agent on {victim}")
            proc.send_signal(signal.SIGKILL)

    return strike


def run_demo(opts: DemoOptions, console: Console) -> dict[str, Any]:
    cluster, job = default_specs()
    if opts.cluster_path:
        cluster = load_spec(ClusterSpec, opts.cluster_path)
    if opts.job_path:
        job = load_spec(JobSpec, opts.job_path)
    base_epochs = opts.base_epochs
    if opts.quick:
        job, base_epochs = _quick(job), min(base_epochs, 3)
    opts.out.mkdir(parents=True, exist_ok=True)
    t_demo = time.time()

    console.print(
        f"[bold]1/5 data[/]: {job.dataset.kind} data set, {job.dataset.train_size} "
        f"training images, drift {job.dataset.drift.model_dump(exclude_defaults=True)}"
    )
    source_train = build_dataset(job.dataset, "train", drifted=False)
    source_test = build_dataset(job.dataset, "test", drifted=False)
    drift_train = build_dataset(job.dataset, "train", drifted=True)
    drift_test = build_dataset(job.dataset, "test", drifted=True)
    xs, ys = source_train.to_tensors()

    model = job_model(job, source_train)
    steps = base_epochs * math.ceil(len(xs) / opts.base_batch)
    with _progress(console) as prog:
        task = prog.add_task("2/5 base model on the source domain", total=steps)
        train_local(
            model,
            xs,
            ys,
            job,
            epochs=base_epochs,
            batch=opts.base_batch,
            on_step=lambda: prog.advance(task),
        )
    acc_source = evaluate(model, *source_test.to_tensors())
    xd, yd = drift_test.to_tensors()
    acc_before = evaluate(model, xd, yd)
    console.print(f"    accuracy on source test {acc_source:.3f}, on drifted test {acc_before:.3f}")
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base_ckpt = {"model": base_state, "job": job.model_dump(mode="json")}
    save_checkpoint(opts.out / "base-model.ckpt", base_ckpt)

    console.print("[bold]3/5 interference[/]: how training slows each LC app on its device")
    options = RunOptions(
        out=opts.out,
        policies=POLICIES,
        kb=opts.kb_path,
        session_dir=opts.out / "run",
        settle_s=IDLE_S,
        refresh=opts.refresh_profiles,
        force_fallback=opts.force_fallback,
        spec_path=opts.cluster_path,  # `deepedge cluster add` on it joins a device
    )
    ctl = RunController(
        cluster,
        job,
        options,
        train_set=drift_train,
        initial_state=base_state,
        status=lambda m: console.print(f"    {m}"),
    )
    ctl.events.listeners.append(lambda e: _announce(e, cluster, console))
    runs: dict[str, TrainRun] = {}
    with ctl:
        planning = ctl.plan()
        headline = planning.plans[DEADLINE_POLICY]
        for note in headline.notes:
            console.print(f"    {note}")
        for e in headline.excluded:  # memory and profiling exclusions, then the planner's
            console.print(f"    left out {e.device}: {e.reason}")
        console.print(
            f"[bold]5/5 re-training[/] {job.epochs} epochs × "
            f"{math.ceil(len(drift_train) / job.global_batch)} steps per policy"
        )
        total = job.epochs * math.ceil(len(drift_train) / job.global_batch)
        for policy in POLICIES:
            # after a lost device (--chaos) the later policies plan without it
            plan = ctl.plan((policy,)).plans[policy] if ctl.lost else planning.plans[policy]
            chaos = opts.chaos and not ctl.lost  # the headline run loses a device
            strike = _chaos_monkey(ctl, plan, total, console) if chaos else None
            with _progress(console) as prog:
                task = prog.add_task(f"    {policy}: {plan.describe()}", total=total)

                def advance(epoch: int, step: int, task=task, strike=strike) -> None:
                    prog.advance(task)
                    if strike:
                        strike(epoch, step)

                runs[policy] = ctl.train(plan, on_step=advance).run
        learned = ctl.learn(ctl.runs)
        console.print(f"    {learned.describe()}")
    # what `deepedge serve CLUSTER demo-out` serves: the headline policy's re-trained model
    retrained = {
        "model": runs[DEADLINE_POLICY].final_state()["model"],
        "job": job.model_dump(mode="json"),
    }
    save_checkpoint(opts.out / "retrained-model.ckpt", retrained)
    session = ctl.session
    assert session is not None
    interference = ctl.events.of_kind("interference")
    report = _report(
        job,
        cluster,
        session,
        planning,
        runs,
        model,
        xd,
        yd,
        acc_source=acc_source,
        acc_before=acc_before,
    )
    report["demo_wall_s"] = time.time() - t_demo
    report["interference_s"] = interference[0].data["seconds"] if interference else 0.0
    report["emulation"] = session.cluster.emulation
    report["learned"] = learned.summary()
    report["controller"] = ctl.report()
    report["recoveries"] = {
        p: [r.to_dict() for r in run.recoveries] for p, run in runs.items() if run.recoveries
    }
    report["monitor"] = {
        "db": str(session.monitor_db),
        "overhead_cores": session.monitor.overhead() if session.monitor else None,
        "unavailable": session.monitor.unavailable if session.monitor else {},
    }
    report["plots"] = {
        "step_timeline": str(opts.out / "step_timeline.png"),
        "lc_latency": str(opts.out / "lc_latency.png") if session.records else None,
    }
    # the numbers first: a plotting failure must not lose them
    (opts.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    plot_step_timeline(runs, opts.out / "step_timeline.png", events=ctl.events)
    if session.records:
        plot_lc_latency(
            session.records, session.spec.apps, session.phases, opts.out / "lc_latency.png"
        )
    console.print(render_tables(report))
    console.print(
        f"report: {opts.out / 'report.json'}; plots: "
        + ", ".join(p for p in report["plots"].values() if p)
    )
    return report


def _report(
    job: JobSpec,
    cluster: ClusterSpec,
    session: EdgeSession,
    planning: Any,
    runs: dict[str, TrainRun],
    model: torch.nn.Module,
    xd: torch.Tensor,
    yd: torch.Tensor,
    *,
    acc_source: float,
    acc_before: float,
) -> dict[str, Any]:
    accuracy_after = {p: _final_accuracy(r, model, xd, yd) for p, r in runs.items()}
    deadlines = {a.name: a.deadline_ms for a in cluster.apps}
    apps: dict[str, Any] = {
        a.name: {
            "device": a.device,
            "deadline_ms": a.deadline_ms,
            "rate_rps": a.rate_rps,
            "phases": {},
        }
        for a in cluster.apps
    }
    for ph in session.phases:
        for name, st in summarize_apps(
            session.records, deadlines, start_s=ph.start, end_s=ph.end
        ).items():
            apps[name]["phases"][ph.label] = st.to_dict()
    for a in apps.values():  # headline numbers: during the planned re-training
        planned = a["phases"].get(POLICIES[0], {})
        a.update({k: planned.get(k) for k in ("p95_ms", "miss_rate", "slo_window_violations")})
    return {
        "job": job.model_dump(mode="json"),
        "accuracy_source": acc_source,
        "accuracy_before": acc_before,
        "accuracy_after": accuracy_after[POLICIES[0]],
        "accuracy_after_by_policy": accuracy_after,
        "makespan_s": {p: r.wall_s for p, r in runs.items()},
        "lower_bound_s": planning.lower_bound_s,
        "feasible_lower_bound_s": planning.feasible_lower_bound_s,
        "throughput_samples_per_s": planning.throughput,
        "profiles": {n: p.summary() for n, p in planning.profiles.items()},
        "profiling_s": planning.profiling_s,
        "comm_model": planning.comm.to_dict() if planning.comm else None,
        "plans": {p: pl.model_dump(mode="json") for p, pl in planning.plans.items()},
        "excluded": [e.model_dump() for e in planning.excluded],
        "apps": apps,
    }


class _Read(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _PhaseStats(_Read):
    requests: int = Field(ge=0)
    p95_ms: float | None
    miss_rate: float | None
    slo_window_violations: int = Field(ge=0)
    windows: int = Field(ge=0)


class _AppReport(_Read):
    deadline_ms: float = Field(gt=0)
    phases: dict[str, _PhaseStats]


class _ReportSummary(_Read):
    """The part of report.json that :func:`render_tables` reads."""

    accuracy_before: float
    accuracy_source: float
    accuracy_after_by_policy: dict[str, float]
    lower_bound_s: float = Field(gt=0)
    feasible_lower_bound_s: float | None = None
    makespan_s: dict[str, float]
    apps: dict[str, _AppReport]


def read_report(path: Path) -> dict[str, Any]:
    """A demo's report.json, checked to hold what :func:`render_tables` prints."""
    data = read_spec_file(path, expect="demo report")
    if not isinstance(data, dict):
        raise UsageError(
            f"{path} holds a {type(data).__name__}, not a deepedge demo report",
            hint="pass the report.json a `deepedge demo --out DIR` wrote",
        )
    try:
        _ReportSummary.model_validate(data)
    except ValidationError as err:
        problems = spec_errors(f"{path} is not a deepedge demo report", err)
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(
            problems[0] + more, hint="pass the report.json a `deepedge demo --out DIR` wrote"
        ) from None
    return data


def render_tables(report: dict[str, Any]) -> Table:
    """The demo's summary as one rich table (also used by `deepedge report`)."""
    table = Table(title="deepedge demo", show_lines=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("note")
    table.add_row(
        "accuracy before (drifted test)",
        f"{report['accuracy_before']:.3f}",
        f"source-domain accuracy {report['accuracy_source']:.3f}",
    )
    for p, acc in report["accuracy_after_by_policy"].items():
        table.add_row(f"accuracy after ({p})", f"{acc:.3f}", "")
    lb = report["lower_bound_s"]
    table.add_row("lower bound T_min", f"{lb:.1f} s", "each step ideally balanced, no all-reduce")
    lb_lc = report.get("feasible_lower_bound_s")
    if lb_lc:
        table.add_row(
            "lower bound within LC limits",
            f"{lb_lc:.1f} s",
            "the same with each device at its best deadline-safe intensity",
        )
    for p, s in report["makespan_s"].items():
        vs_lc = f", {s / lb_lc:.2f} × within LC limits" if lb_lc else ""
        table.add_row(f"re-training wall time ({p})", f"{s:.1f} s", f"{s / lb:.2f} × T_min{vs_lc}")
    for name, a in report["apps"].items():
        for phase, st in a["phases"].items():
            if phase in ("probe", "profile"):
                continue
            p95 = st["p95_ms"]
            ok = st["requests"] and p95 is not None and p95 <= a["deadline_ms"]
            colour = "green" if ok else "red"
            table.add_row(
                escape(f"{name} p95 [{phase}]"),
                f"[{colour}]{'–' if p95 is None else f'{p95:.0f}'} ms[/]",
                f"deadline {a['deadline_ms']:g} ms, misses {100 * (st['miss_rate'] or 0):.1f}%, "
                f"{st['slo_window_violations']}/{st['windows']} SLO windows violated",
            )
    return table
