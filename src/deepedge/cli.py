"""The `deepedge` command line.

Expected errors (``DeepEdgeError``) print as one line with a hint and exit with the
error's code: 2 for a wrong command line or input file, 1 for a run that failed, 130 for
Ctrl-C. Anything else is a bug and shows a traceback only with ``--debug``. Logging and
signal handling are configured here and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deepedge.errors import EXIT_FAILURE, EXIT_USAGE, CheckpointError, DeepEdgeError, UsageError
from deepedge.meanet.cli import meanet_app

_CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings=_CONTEXT,
    help="Re-train models on heterogeneous edge clusters without breaking LC apps.",
)
cluster_app = typer.Typer(
    no_args_is_help=True, context_settings=_CONTEXT, help="Emulated cluster housekeeping."
)
app.add_typer(cluster_app, name="cluster")
profile_app = typer.Typer(
    no_args_is_help=True,
    context_settings=_CONTEXT,
    help="Throughput profiles in the knowledge base: run, list, invalidate, reset.",
)
app.add_typer(profile_app, name="profile")
interference_app = typer.Typer(
    no_args_is_help=True,
    context_settings=_CONTEXT,
    help="Interference profiling and prediction (FECBench method): profile, fit, predict.",
)
app.add_typer(interference_app, name="interference")
app.add_typer(meanet_app, name="meanet")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one line per error, never wrapped
_state = {"debug": False}
# Flags that belong to the whole program; main() moves them in front of the subcommand,
# so `deepedge plan C J --debug` works like `deepedge --debug plan C J`.
GLOBAL_FLAGS = ("--debug", "--verbose", "-v")


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"deepedge {version('deepedge')}")
        raise typer.Exit


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks of internal errors")] = (
        False
    ),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Global flags (--debug, -v) may stand anywhere on the command line."""
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


KbOption = Annotated[
    Path | None,
    typer.Option("--kb", help="knowledge base file (default: $DEEPEDGE_KB or ~/.local/share)"),
]


def _kb_path(kb: Path | None) -> Path:
    from deepedge.profile import default_kb_path

    return kb if kb is not None else default_kb_path()


def _load_cluster(path: Path):  # -> ClusterSpec (imports stay lazy: `--help` is instant)
    from deepedge.spec import ClusterSpec, load_spec
    from deepedge.validation import require_usable

    spec = load_spec(ClusterSpec, path)
    require_usable(spec, source=str(path))
    return spec


def _load_job(path: Path):  # -> JobSpec
    from deepedge.spec import JobSpec, load_spec
    from deepedge.validation import require_usable

    spec = load_spec(JobSpec, path)
    require_usable(spec, source=str(path))
    return spec


DashboardOption = Annotated[
    bool,
    typer.Option("--dashboard", help="serve this session live in the browser dashboard"),
]
DashboardPortOption = Annotated[
    int, typer.Option(min=0, max=65535, help="the dashboard's port on 127.0.0.1 (0: any free one)")
]


@contextlib.contextmanager
def _live_dashboard(
    enabled: bool, port: int, *, db: Path, kb: Path | None, runs: list[Path]
) -> Iterator[None]:
    """The browser dashboard over this session's files while the block runs (on loopback;
    `deepedge dashboard` binds elsewhere). One that cannot start is a warning: the
    session itself goes on."""
    if not enabled:
        yield
        return
    from deepedge.dashboard import DashboardServer, Sources

    try:
        server = DashboardServer(Sources(db=db, kb=_kb_path(kb), runs=runs), port=port).start()
    except DeepEdgeError as err:
        console.print(f"[yellow]warning[/]: no dashboard: {err.one_line()}")
        yield
        return
    console.print(f"dashboard: {server.url} (live while this runs)")
    try:
        yield
    finally:
        server.stop()


DryRunOption = Annotated[
    bool,
    typer.Option("--dry-run", help="check the specs and inputs, say what would run; boot nothing"),
]


def _dry_run_report(cluster_spec, job_spec, policy: str) -> None:
    """What a plan or train command would do, from the specs alone."""
    from deepedge.catalog import resolve_device

    devices = [resolve_device(d) for d in cluster_spec.devices]
    cores = sum(d.cpu_cores or 0 for d in devices)
    console.print(
        f"[green]ok[/] cluster {cluster_spec.name!r}: {len(devices)} devices "
        f"({cores:.2f} host cores in all), {len(cluster_spec.apps)} LC apps; "
        f"job {job_spec.name!r}: {job_spec.model.arch}, B={job_spec.global_batch}, "
        f"{job_spec.epochs} epochs on {job_spec.dataset.train_size} {job_spec.dataset.kind} "
        f"samples; policy {policy}. Dry run: nothing was booted."
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where report.json and the plots go")] = Path(
        "demo-out"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="smaller job (about 2 min once interference is stored)")
    ] = False,
    cluster: Annotated[Path | None, typer.Option(help="cluster spec (default: the demo's)")] = None,
    job: Annotated[Path | None, typer.Option(help="job spec (default: the demo's)")] = None,
    fallback: Annotated[
        bool, typer.Option("--fallback", help="force duty-cycle emulation")
    ] = False,
    kb: KbOption = None,
    refresh_profiles: Annotated[
        bool, typer.Option("--refresh-profiles", help="profile again even if stored")
    ] = False,
    chaos: Annotated[
        bool,
        typer.Option(
            "--chaos", help="kill one training agent mid-run and show how the run survives it"
        ),
    ] = False,
    dashboard: DashboardOption = False,
    dashboard_port: DashboardPortOption = 8050,
) -> None:
    """Train, drift, re-train on a 5-device emulated cluster under LC load; report and plot."""
    from deepedge.demo import DemoOptions, run_demo

    db = out / "run" / "monitor.sqlite"
    with _live_dashboard(dashboard, dashboard_port, db=db, kb=kb, runs=[out]):
        run_demo(
            DemoOptions(
                out=out,
                quick=quick,
                cluster_path=cluster,
                job_path=job,
                force_fallback=fallback,
                kb_path=kb,
                refresh_profiles=refresh_profiles,
                chaos=chaos,
            ),
            console,
        )


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="cluster or job spec files")],
) -> None:
    """Check spec files: every file, every problem, one line each.

    The kind (cluster or job) is recognised by the top-level keys. Beyond the schema it
    checks what the catalog, this machine and the file system say: device kinds, memory
    for the LC apps, the image folder, the data set's size.
    """
    from pydantic import ValidationError

    from deepedge.spec import ClusterSpec, JobSpec, read_spec_file, spec_errors, spec_kind
    from deepedge.validation import problems

    bad = 0
    for f in files:
        try:
            data = read_spec_file(f)
        except DeepEdgeError as err:
            err_console.print(f"[red]error:[/] {escape(err.one_line())}")
            bad += 1
            continue
        kind = spec_kind(data)
        model = ClusterSpec if kind == "cluster" else JobSpec
        try:
            spec = model.model_validate(data)
        except ValidationError as err:
            found = spec_errors(str(f), err)
        else:
            found = [f"{f}: {p}" for p in problems(spec)]
        if kind is None and found:
            found.insert(
                0, f"{f}: neither a cluster spec (no 'devices') nor a job spec; read as a job"
            )
        for line in found:
            err_console.print(f"[red]error:[/] {escape(line)}")
        if found:
            bad += 1
        elif isinstance(spec, ClusterSpec):
            console.print(
                f"[green]ok[/] {f}: cluster {spec.name!r}, {len(spec.devices)} devices, "
                f"{len(spec.apps)} LC apps"
            )
        else:
            console.print(
                f"[green]ok[/] {f}: job {spec.name!r}, {spec.model.arch}, "
                f"B={spec.global_batch}, {spec.epochs} epochs"
            )
    if bad:
        err_console.print(f"{bad} of {len(files)} file(s) have problems")
        raise typer.Exit(EXIT_USAGE)


@app.command()
def catalog() -> None:
    """List the built-in device kinds and where their numbers come from."""
    from deepedge.catalog import CATALOG

    table = Table(title="device catalog")
    for col in ("kind", "board", "host cores", "memory MB", "reserved MB", "source"):
        table.add_column(col)
    for k in CATALOG.values():
        table.add_row(
            k.name, k.board, f"{k.cpu_cores:.3f}", str(k.memory_mb), str(k.reserved_mb), k.source
        )
    console.print(table)


@app.command()
def train(
    cluster: Annotated[Path, typer.Argument(help="cluster spec")],
    job: Annotated[Path, typer.Argument(help="job spec")],
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/train"),
    policy: Annotated[
        str, typer.Option(help="deep-edge | proportional | equal | fastest-single | dynamic")
    ] = "deep-edge",
    init: Annotated[
        Path | None,
        typer.Option(help="start from this checkpoint (e.g. demo-out/base-model.ckpt)"),
    ] = None,
    kb: KbOption = None,
    dry_run: DryRunOption = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="go on from the newest checkpoint this policy wrote in OUT (after the "
            "coordinator itself was killed; a lost device is survived without it)",
        ),
    ] = False,
    slo_guard: Annotated[
        bool,
        typer.Option(
            help="cut a device's training while an LC app there nears its deadline "
            "(--no-slo-guard: run the plan as made)"
        ),
    ] = True,
    dashboard: DashboardOption = False,
    dashboard_port: DashboardPortOption = 8050,
) -> None:
    """Plan and run one re-training job on the emulated cluster, on the job's drifted data.

    While it trains, a device added to CLUSTER (`deepedge cluster add CLUSTER ...`) joins:
    it is profiled on the side and given a share at a step boundary when that pays."""
    from deepedge.control import GuardSettings, RunController, RunOptions, get_policy
    from deepedge.data import build_dataset
    from deepedge.train import evaluate, job_model, load_checkpoint

    get_policy(policy)
    cluster_spec, job_spec = _load_cluster(cluster), _load_job(job)
    resume_from = _resume_point(out, policy, job_spec) if resume else None
    init_state = load_checkpoint(init).get("model") if init is not None else None
    if init is not None and not isinstance(init_state, dict):
        raise CheckpointError(
            f"{init} is a checkpoint without model weights",
            hint="use the base-model.ckpt of a demo run with the same model spec",
        )
    if dry_run:
        _dry_run_report(cluster_spec, job_spec, policy)
        return
    train_set = build_dataset(job_spec.dataset, "train", drifted=True)
    model = job_model(job_spec, train_set)
    if init_state is not None:
        try:
            model.load_state_dict(init_state)
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(
                f"{init} holds no weights for this job's {job_spec.model.arch} model: "
                f"{str(err).splitlines()[0]}",
                hint="use the base-model.ckpt of a demo run with the same model spec",
            ) from None
    options = RunOptions(
        out=out,
        policies=(policy,),
        kb=_kb_path(kb),
        spec_path=cluster,
        slo_guard=GuardSettings() if slo_guard else None,
    )
    ctl = RunController(
        cluster_spec,
        job_spec,
        options,
        train_set=train_set,
        initial_state=model.state_dict(),
        status=console.print,
    )
    result: dict = {"policy": policy}
    live = _live_dashboard(dashboard, dashboard_port, db=out / "monitor.sqlite", kb=kb, runs=[out])
    try:
        with live, ctl:
            planning = ctl.plan()
            plan = planning.plans[policy]
            result["plan"] = plan.model_dump(mode="json")
            for e in plan.excluded:
                console.print(f"excluded {e.device}: {e.reason}")
            console.print(f"plan {policy}: {plan.describe()}")
            done = ctl.train(plan, resume_from=resume_from)
            result.update(makespan_s=done.run.wall_s, lower_bound_s=planning.lower_bound_s)
            console.print(ctl.learn([done]).describe())
        test = build_dataset(job_spec.dataset, "test", drifted=True)
        model.load_state_dict(done.run.final_state()["model"])
        result["accuracy"] = acc = evaluate(model, *test.to_tensors())
    finally:  # what happened, also when it failed
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({**result, **ctl.report()}, indent=2))
    console.print(
        f"trained in {done.run.wall_s:.1f} s (T_min {planning.lower_bound_s:.1f} s); "
        f"test accuracy {acc:.3f}; checkpoints in {done.run.checkpoint_dir}; "
        f"report {out / 'report.json'}"
    )


def _resume_point(out: Path, policy: str, job_spec) -> Path:
    """The newest checkpoint ``policy`` wrote for this job in ``out``, to go on from."""
    from deepedge.train import CheckpointManager, load_checkpoint

    found = [
        (path.stat().st_mtime, epoch, path)
        for folder in (out / "checkpoints").glob(f"{policy}-*")
        for epoch, path in CheckpointManager(folder).list()
    ]
    if not found:
        raise UsageError(
            f"no checkpoint of policy {policy} in {out / 'checkpoints'} to resume from",
            hint="run without --resume, or pass the --out and --policy of the run to resume",
        )
    _, epoch, path = max(found)
    saved = load_checkpoint(path)
    if saved.get("job") != job_spec.model_dump(mode="json"):
        raise UsageError(
            f"{path} was written by another job than {job_spec.name!r}",
            hint="resume with the job spec the run started with",
        )
    if epoch + 1 >= job_spec.epochs:
        raise UsageError(
            f"{path} is the job's last epoch: the run finished",
            hint="nothing to resume; start a new run without --resume",
        )
    console.print(f"resuming from {path} (epoch {epoch + 1} of {job_spec.epochs} done)")
    return path


@app.command("plan")
def plan_cmd(
    cluster: Annotated[Path, typer.Argument(help="cluster spec")],
    job: Annotated[Path, typer.Argument(help="job spec")],
    out: Annotated[Path, typer.Option(help="session directory; the Gantt PNG goes here")] = Path(
        "runs/plan"
    ),
    exact: Annotated[
        bool, typer.Option("--exact", help="solve with the exact MILP (small clusters)")
    ] = False,
    kb: KbOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Plan JOB on CLUSTER with the Deep-Edge planner and explain every device's part.

    Profiles (and the all-reduce model) are reused from the knowledge base when fresh, or
    measured on the booted cluster; LC limits come from the fitted interference model,
    which is profiled first where it does not cover the cluster's LC apps.
    """
    from deepedge.control import DEADLINE_POLICY, RunController, RunOptions
    from deepedge.plan.explain import gantt_png

    cluster_spec, job_spec = _load_cluster(cluster), _load_job(job)
    if dry_run:
        _dry_run_report(cluster_spec, job_spec, DEADLINE_POLICY)
        return
    options = RunOptions(
        out=out,
        policies=(DEADLINE_POLICY, "equal"),
        kb=_kb_path(kb),
        exact=exact,
        monitor_interval_s=None,
    )
    with RunController(cluster_spec, job_spec, options, status=console.print) as ctl:
        planning = ctl.plan()
        train_set = ctl.train_set
    plan = planning.plans[DEADLINE_POLICY]
    table = Table(title=f"Deep-Edge plan: {job_spec.global_batch} samples per step")
    for col in ("device", "samples/step", "intensity", "predicted compute"):
        table.add_column(col, justify="left" if col == "device" else "right")
    for name, b in plan.local_batches.items():
        table.add_row(
            name,
            str(b),
            f"{plan.intensities.get(name, 1.0):g}",
            f"{plan.predicted_compute_s.get(name, 0.0) * 1e3:.0f} ms",
        )
    console.print(table)
    for note in plan.notes:
        console.print(f"  {note}")
    for e in plan.excluded:
        console.print(f"[yellow]left out {e.device}[/yellow]: {e.reason}")
    equal = planning.plans["equal"].predicted_step_s or float("nan")
    step = plan.predicted_step_s or float("nan")
    steps = math.ceil(len(train_set) / job_spec.global_batch) * job_spec.epochs
    console.print(
        f"predicted step {step * 1e3:.0f} ms ({steps} steps: {step * steps:.1f} s); "
        f"T_min {planning.lower_bound_s:.1f} s; equal split {equal * 1e3:.0f} ms/step"
    )
    console.print(f"Gantt chart: {gantt_png(plan, out / 'plan-gantt.png')}")


@app.command(
    context_settings={**_CONTEXT, "allow_extra_args": True, "ignore_unknown_options": True}
)
def launch(
    cluster: Annotated[Path, typer.Argument(help="cluster spec")],
    script: Annotated[str, typer.Argument(help="training script (.py) or command")],
    args: Annotated[
        list[str] | None, typer.Argument(help="the script's own arguments", show_default=False)
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="deep-edge (default) | proportional | fastest-single | equal"),
    ] = None,
    job: Annotated[
        Path | None,
        typer.Option(help="comparable job the script is planned as (default: the demo job)"),
    ] = None,
    global_batch: Annotated[
        int | None, typer.Option(help="global batch to plan for (default: the job's)")
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(help="a,b,c: an equal split over these devices, nothing profiled"),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option("--plan", help="run a saved plan (a launch's plan.json, a train report)"),
    ] = None,
    workdir: Annotated[Path, typer.Option(help="logs/rank-N.log, plan.json")] = Path("runs/launch"),
    apps: Annotated[
        bool, typer.Option(help="run the cluster's LC apps under load meanwhile")
    ] = True,
    tee: Annotated[bool, typer.Option(help="echo every rank's output as [rankN]:")] = True,
    master_port: Annotated[int | None, typer.Option(help="default: a free port")] = None,
    rank_memory_mb: Annotated[
        float, typer.Option(help="one rank's memory, for the equal split's check")
    ] = 400.0,
    kb: KbOption = None,
    fallback: Annotated[
        bool, typer.Option("--fallback", help="force duty-cycle emulation")
    ] = False,
) -> None:
    """Run a torchrun-style SCRIPT with one rank per planned device, inside the device.

    Every rank gets torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) and the
    plan in DEEPEDGE_PLAN; an unmodified script trains with an equal share per rank,
    deepedge.launch.PlannedBatchSampler and planned_loss give it the Deep-Edge split.
    When a rank fails the others are stopped and the launch exits with its exit code.
    """
    from deepedge.launch.runner import LaunchOptions
    from deepedge.launch.runner import launch as run_launch

    names = tuple(n.strip() for n in devices.split(",") if n.strip()) if devices else ()
    options = LaunchOptions(
        script=script,
        args=tuple(args or ()),
        workdir=workdir,
        policy=policy,
        job=job,
        global_batch=global_batch,
        devices=names,
        plan_file=plan,
        apps=apps,
        tee=tee,
        master_port=master_port,
        rank_memory_mb=rank_memory_mb,
        kb=_kb_path(kb),
        force_fallback=fallback,
    )
    cluster_spec = _load_cluster(cluster)
    run_launch(
        cluster_spec,
        options,
        status=lambda msg: err_console.print(escape(msg)),
        echo=lambda line: print(line, flush=True),
    )


def _launch_script_args(args: list[str]) -> list[str]:
    """``launch CLUSTER SCRIPT ARGS``: everything after SCRIPT is the script's, as with
    torchrun, even words that look like deepedge's own options (``-v``, ``--workdir``):
    a ``--`` is put after SCRIPT before click and the global-flag hoisting see them."""
    head = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    if head is None or args[head] != "launch" or "--" in args[:head]:
        return args
    from typer.main import get_command

    command = get_command(app).commands["launch"]  # type: ignore[attr-defined]
    takes_value = {
        name
        for p in command.params
        if p.param_type_name == "option" and not p.is_flag  # type: ignore[attr-defined]
        for name in p.opts
    }
    positionals = 0
    i = head + 1
    while i < len(args):
        word = args[i]
        if word == "--":
            return args
        if word.startswith("-") and word != "-":
            if word in takes_value:
                i += 1  # its value
        else:
            positionals += 1
            if positionals == 2:
                return [*args[: i + 1], "--", *args[i + 1 :]]
        i += 1
    return args


@profile_app.command("run")
def profile_run(
    cluster: Annotated[Path, typer.Argument(help="cluster spec")],
    job: Annotated[Path, typer.Argument(help="job spec (its model, optimiser and batch)")],
    kb: KbOption = None,
    out: Annotated[Path, typer.Option(help="session directory")] = Path("runs/profile"),
    refresh: Annotated[
        bool, typer.Option("--refresh", help="measure again even where a profile is fresh")
    ] = False,
) -> None:
    """Profile every device of CLUSTER for JOB under its LC load and store the results."""
    from deepedge.control import RunController, RunOptions

    cluster_spec = _load_cluster(cluster)
    options = RunOptions(out=out, policies=("proportional",), kb=_kb_path(kb), refresh=refresh)
    with RunController(cluster_spec, _load_job(job), options, status=console.print) as ctl:
        assert ctl.kb is not None
        console.print(f"profiling into {ctl.kb.path} …")
        planning = ctl.plan(
            on_run=lambda pts: console.print(
                "    DDP run: "
                + ", ".join(f"{n} b={p.batch}" for n, p in pts.items())
                + f" in {next(iter(pts.values())).cost_s:.1f} s"
            ),
        )
    console.print(_profiles_table([p.profile for p in planning.profiles.values()]))
    for e in planning.excluded:
        console.print(f"excluded {e.device}: {e.reason}")
    if planning.comm is not None:
        c = planning.comm
        console.print(
            f"all-reduce model{' (reused)' if planning.comm_reused else ''}: "
            f"{c.alpha_s * 1e3:.2f} ms + {c.per_worker_s * 1e3:.2f} ms·(k−1) + "
            f"{c.per_byte_s * 1e9:.2f} ns·2(k−1)/k·bytes / bottleneck "
            f"({'Mbit/s' if cluster_spec.network == 'netns' else 'unshaped'}); "
            f"{planning.grad_bytes / 2**20:.2f} MB over {len(planning.profiles)} devices → "
            f"{planning.comm_s(len(planning.profiles)) * 1e3:.1f} ms"
        )
    console.print(f"profiling took {planning.profiling_s:.1f} s")


def _profiles_table(profiles: list) -> Table:
    from deepedge.profile import DeviceProfile, describe_key

    table = Table(title="throughput profiles")
    for col in ("id", "device", "key", "step time per batch (median, 95% CI)", "fit", "state"):
        table.add_column(col)
    for p in profiles:
        if not p.points:
            table.add_row(str(p.id), p.device_name or "", describe_key(p.key), "–", "–", "empty")
            continue
        d = DeviceProfile.from_profile(p.device_name or "", p, reused=True)
        points = "\n".join(
            f"b={b}: {s.median_s * 1e3:.0f} ms [{s.ci_low_s * 1e3:.0f}, {s.ci_high_s * 1e3:.0f}]"
            + (f", {d.memory_mb[b]:.0f} MB" if b in d.memory_mb else "")
            for b, s in sorted(d.timings.items())
        )
        fit = f"{d.model.intercept_s * 1e3:.1f} ms + {d.model.slope_s * 1e3:.2f} ms·b"
        state = f"stale: {p.stale_reason}" if p.stale_reason else p.partial_reason or "fresh"
        table.add_row(
            str(p.id), p.device_name or "", describe_key(p.key), points, fit, escape(state)
        )
    return table


@profile_app.command("list")
def profile_list(
    kb: KbOption = None,
    all_: Annotated[bool, typer.Option("--all", help="include stale profiles")] = False,
) -> None:
    """List the stored throughput profiles."""
    from deepedge.profile import KnowledgeBase

    with KnowledgeBase(_kb_path(kb), create=False) as base:
        profiles = base.profiles(include_stale=all_)
        console.print(_profiles_table(profiles) if profiles else f"no profiles in {base.path}")


@profile_app.command("invalidate")
def profile_invalidate(
    kb: KbOption = None,
    profile_id: Annotated[int | None, typer.Option("--id", help="one profile")] = None,
    kind: Annotated[str | None, typer.Option(help="every profile of a device kind")] = None,
    model: Annotated[str | None, typer.Option(help="every profile of a model signature")] = None,
    comm: Annotated[bool, typer.Option("--comm", help="also the all-reduce models")] = False,
    all_: Annotated[bool, typer.Option("--all", help="every profile")] = False,
) -> None:
    """Mark profiles stale so the next job measures again (nothing is deleted).

    Name what to invalidate (--id, --kind, --model) or say --all: a bare command must not
    throw away every measurement by accident.
    """
    from deepedge.profile import KnowledgeBase

    selected = profile_id is not None or kind is not None or model is not None
    if selected == all_:
        raise UsageError(
            "--all goes alone" if all_ else "say which profiles to invalidate",
            hint="give --id N, --kind K or --model SIG, or --all for every profile",
        )
    with KnowledgeBase(_kb_path(kb), create=False) as base:
        n = base.invalidate(profile_id=profile_id, device_kind=kind, model_signature=model)
        extra = f" and {base.invalidate_comm()} all-reduce measurements" if comm else ""
    console.print(f"marked {n} profile(s){extra} stale")


@profile_app.command("reset")
def profile_reset(kb: KbOption = None) -> None:
    """Move the knowledge base aside (e.g. corrupt or of another schema); keeps a backup."""
    from deepedge.profile import KnowledgeBase

    backup = KnowledgeBase.reset(_kb_path(kb))
    console.print(f"moved to {backup}" if backup else f"nothing at {_kb_path(kb)}")


@interference_app.command("profile")
def interference_profile(
    cluster: Annotated[Path, typer.Argument(help="cluster spec (its devices are profiled)")],
    job: Annotated[Path, typer.Argument(help="job spec (the training co-runner)")],
    kb: KbOption = None,
    runs: Annotated[int, typer.Option(help="designed co-location runs (Latin hypercube)")] = 48,
    seed: Annotated[int, typer.Option(help="seed of the design")] = 0,
    devices: Annotated[
        str | None, typer.Option(help="comma-separated device names (default: all)")
    ] = None,
    out: Annotated[Path, typer.Option(help="lab directory")] = Path("runs/interference"),
    refresh: Annotated[
        bool, typer.Option("--refresh", help="re-measure solo usage even where it is stored")
    ] = False,
    apps: Annotated[
        str | None,
        typer.Option(help="comma-separated LC app kinds (default: those CLUSTER runs; 'all')"),
    ] = None,
) -> None:
    """Measure how co-runners slow each LC app kind on CLUSTER's devices; store the runs."""
    from rich.progress import Progress

    from deepedge.apps import APP_KINDS
    from deepedge.interference import (
        CampaignSettings,
        InterferenceLab,
        profile_interference,
    )
    from deepedge.profile import KnowledgeBase

    if runs < 1:
        raise typer.BadParameter("--runs must be at least 1")
    cluster_spec, job_spec = _load_cluster(cluster), _load_job(job)
    names = [n.strip() for n in devices.split(",")] if devices else None
    if apps == "all":
        kinds = APP_KINDS
    elif apps:
        kinds = tuple(k.strip() for k in apps.split(","))
    else:
        kinds = tuple(sorted({a.kind for a in cluster_spec.apps})) or APP_KINDS
    unknown = [k for k in kinds if k not in APP_KINDS]
    if unknown:
        raise typer.BadParameter(f"unknown app kind {unknown[0]!r}; kinds: {list(APP_KINDS)}")
    settings = CampaignSettings(runs=runs, seed=seed)
    with (
        KnowledgeBase(_kb_path(kb)) as base,
        InterferenceLab(
            cluster_spec, job_spec, out, devices=names, app_kinds=kinds, status=console.print
        ) as lab,
        Progress(console=console) as bar,
    ):
        task = bar.add_task("co-location runs", total=runs)

        def advance(i: int, n: int, r: object) -> None:
            bar.update(task, completed=i)

        results = profile_interference(
            lab, base, settings, refresh=refresh, status=bar.console.print, progress=advance
        )
        skipped = {d: dict(k) for d, k in lab.skipped.items()}
    for device, kinds in skipped.items():
        for kind, why in kinds.items():
            console.print(f"[yellow]skipped stressor {kind} on {device}: {why}[/yellow]")
    console.print(f"stored {len(results)} co-location runs in {_kb_path(kb)}")


@interference_app.command("fit")
def interference_fit(
    job: Annotated[Path, typer.Argument(help="job spec whose training co-runner to model")],
    kb: KbOption = None,
    plots: Annotated[Path | None, typer.Option(help="write PNG plots into this folder")] = None,
    seed: Annotated[int, typer.Option(help="seed of cross-validation and models")] = 0,
) -> None:
    """Fit the surrogates on the stored runs (model chosen by cross-validation); store it."""
    from deepedge.interference import (
        InterferenceModel,
        load_books,
        observations,
        train_resident,
    )
    from deepedge.interference.plots import oof_scatter, plot_sensitivity
    from deepedge.profile import KnowledgeBase

    job_spec = _load_job(job)
    with KnowledgeBase(_kb_path(kb)) as base:
        books = load_books(base, job_spec)
        obs = observations(base.interference_runs(), books)
        model = InterferenceModel.fit(obs, books, seed=seed, resident=train_resident(job_spec))
        model.save(base)
    table = Table(title=f"interference model ({len(obs)} runs)")
    for col in ("target", "model", "CV median APE", "candidates (CV median APE)", "bound"):
        table.add_column(col, justify="right" if "APE" in col else "left")
    for name, part in (("p95", model.p95), ("p99", model.p99), ("throughput", model.throughput)):
        if part is None:
            table.add_row(name, "–", "–", "too few runs with the training job", "–")
            continue
        others = " ".join(f"{c} {e:.1f}%" for c, e in part.cv_error.items() if c != part.chosen)
        table.add_row(
            name,
            part.chosen,
            f"{part.cv_error[part.chosen]:.1f} %",
            others,
            f"{'×' if part.bound == 'upper' else '÷'}"
            + (
                f"{part.median_bound_factor():.2f} (median, adaptive)"
                if part.conformal == "adaptive"
                else f"{math.exp(part.log_margin):.2f}"
            ),
        )
    console.print(table)
    if plots is not None:
        written = [oof_scatter(model, obs, plots / "predicted_vs_measured.png")]
        for key in model.books:
            kind = json.loads(key)["kind"]
            written.append(plot_sensitivity(model, key, plots / f"sensitivity_{kind}.png"))
        console.print("plots: " + ", ".join(str(w) for w in written))


@interference_app.command("predict")
def interference_predict(
    cluster: Annotated[Path, typer.Argument(help="cluster spec")],
    device: Annotated[str, typer.Option(help="device name in CLUSTER")],
    batch: Annotated[int, typer.Option(help="local training batch on the device (0: none)")],
    intensity: Annotated[float, typer.Option(help="training's share of the device CPU")] = 1.0,
    kb: KbOption = None,
) -> None:
    """Predict each LC app's p95/p99 on DEVICE if training runs there with BATCH."""
    from deepedge.api import TrainLoad
    from deepedge.cluster import make_backend
    from deepedge.interference import InterferenceModel, device_key
    from deepedge.profile import KnowledgeBase

    backend = make_backend(_load_cluster(cluster))  # fills catalog defaults; starts nothing
    spec = backend.spec
    dev = next((d for d in spec.devices if d.name == device), None)
    if dev is None:
        raise typer.BadParameter(f"no device {device!r}; devices: {[d.name for d in spec.devices]}")
    if batch < 0 or not 0 < intensity <= 1:
        raise typer.BadParameter("need --batch >= 0 and 0 < --intensity <= 1")
    apps = {a.name: (a.kind, a.rate_rps) for a in spec.apps if a.device == device}
    if not apps:
        console.print(f"{device} runs no LC app: nothing can miss a deadline there")
        return
    with KnowledgeBase(_kb_path(kb), create=False) as base:
        model = InterferenceModel.load(base)
    key = device_key(dev, spec, backend.emulation)
    train = TrainLoad(batch, intensity) if batch > 0 else None
    preds = model.apps_beside_training(key, apps, train)
    title = f"b={batch}, intensity {intensity:g}" if train else "off"
    table = Table(title=f"{device}: LC apps with training {title}")
    for col in ("app", "rate", "p95 alone", "p95", "p95 bound", "deadline", "verdict"):
        table.add_column(col, justify="left" if col in ("app", "verdict") else "right")
    deadlines = {a.name: a.deadline_ms for a in spec.apps}
    for name, p in preds.items():
        table.add_row(
            name,
            f"{apps[name][1]:g}/s",
            f"{p.solo_p95_ms:.1f} ms",
            f"{p.p95_ms:.1f} ms",
            f"{p.p95_upper_ms:.1f} ms",
            f"{deadlines[name]:g} ms",
            "[green]safe[/green]" if p.p95_upper_ms <= deadlines[name] else "[red]may miss[/red]",
        )
    console.print(table)


@app.command()
def monitor(
    cluster: Annotated[
        Path | None, typer.Argument(help="cluster spec to boot and watch (omit with --export)")
    ] = None,
    db: Annotated[
        Path | None, typer.Option(help="time-series file (default: OUT/monitor.sqlite)")
    ] = None,
    out: Annotated[Path, typer.Option(help="session directory")] = Path("runs/monitor"),
    duration: Annotated[float | None, typer.Option(help="seconds; default until Ctrl-C")] = None,
    interval: Annotated[float, typer.Option(help="sampling interval, seconds")] = 1.0,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve Prometheus /metrics here (0 = any free port)")
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="write a time window of --db to this .csv or .json")
    ] = None,
    since: Annotated[
        float | None, typer.Option(help="export from: unix time, or negative = seconds ago")
    ] = None,
    until: Annotated[
        float | None, typer.Option(help="export until (same forms as --since)")
    ] = None,
    metric: Annotated[str | None, typer.Option(help="export only this metric")] = None,
    dashboard: DashboardOption = False,
    dashboard_port: DashboardPortOption = 8050,
) -> None:
    """Boot CLUSTER with its LC apps under load and watch devices and apps live.

    With --export (and no CLUSTER) it writes a window of an existing --db instead.
    """
    import time

    from rich.live import Live

    from deepedge.monitor import export_monitor_window
    from deepedge.monitor.live import LiveView
    from deepedge.session import EdgeSession

    if export is not None:
        if cluster is not None:
            raise UsageError(
                "--export reads an existing --db; it does not boot a cluster",
                hint="watch with `deepedge monitor CLUSTER`, then export with --db F --export",
            )
        source = db if db is not None else out / "monitor.sqlite"
        if not source.exists():
            raise UsageError(
                f"no time-series file at {source}",
                hint="pass --db (e.g. demo-out/run/monitor.sqlite)",
            )
        now = time.time()

        def when(t: float | None) -> float | None:
            return None if t is None else (now + t if t < 0 else t)

        n = export_monitor_window(source, export, start=when(since), end=when(until), metric=metric)
        console.print(f"wrote {n} samples to {export}")
        return
    if cluster is None:
        raise UsageError(
            "no cluster spec given", hint="deepedge monitor examples/demo-cluster.yaml"
        )
    spec = _load_cluster(cluster)
    session = EdgeSession(
        spec,
        out,
        status=console.print,
        agents_enabled=False,
        monitor_interval_s=interval,
        metrics_port=metrics_port,
        monitor_db=db,
    )
    live_db = db if db is not None else out / "monitor.sqlite"
    with session, _live_dashboard(dashboard, dashboard_port, db=live_db, kb=None, runs=[]):
        assert session.monitor is not None
        view = LiveView(session.spec)
        deadline = None if duration is None else time.monotonic() + duration
        with Live(console=console, refresh_per_second=2) as live:
            while deadline is None or time.monotonic() < deadline:
                mon = session.monitor
                live.update(view.render(mon.latest(), time.time(), mon.overhead()))
                time.sleep(min(interval, 1.0))
        overhead = session.monitor.overhead()
    console.print(
        f"samples in {session.monitor_db}; monitor overhead {100 * overhead:.2f}% of one core"
    )


@cluster_app.command("cleanup")
def cluster_cleanup() -> None:
    """Remove device cgroups (and their processes) left by a run that was killed."""
    from deepedge.cluster import cleanup_stale

    reaped = cleanup_stale()
    console.print(f"removed {len(reaped)} stale session(s)" + (f": {reaped}" if reaped else ""))


@cluster_app.command("add")
def cluster_add(
    spec: Annotated[Path, typer.Argument(help="cluster spec file (YAML or .json) to add to")],
    name: Annotated[str, typer.Option("--name", help="the new device's name")],
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="device kind from `deepedge catalog` (another kind needs --cpu-cores and "
            "--memory-mb)",
        ),
    ],
    cpu_cores: Annotated[
        float | None, typer.Option("--cpu-cores", help="capacity in host cores (default: kind's)")
    ] = None,
    memory_mb: Annotated[
        int | None, typer.Option("--memory-mb", help="memory in MB (default: kind's)")
    ] = None,
    reserved_mb: Annotated[
        int | None,
        typer.Option("--reserved-mb", help="memory the OS takes, in MB (default: kind's)"),
    ] = None,
    link_mbps: Annotated[
        float | None, typer.Option("--link-mbps", help="network link in Mbit/s (default: kind's)")
    ] = None,
) -> None:
    """Add a device to a cluster spec; a running `deepedge train` or `demo` on it picks it up.

    The spec is checked as a whole with the new device in it, then replaced atomically, so
    a running job never reads it half-written. The file is rewritten from its parsed
    content: its comments and formatting are not kept.
    """
    from deepedge.catalog import resolve_device
    from deepedge.cluster.specfile import add_to_spec_file, new_device

    device = new_device(
        name=name,
        kind=kind,
        cpu_cores=cpu_cores,
        memory_mb=memory_mb,
        reserved_mb=reserved_mb,
        link_mbps=link_mbps,
    )
    count = add_to_spec_file(spec, device)
    d = resolve_device(device)
    console.print(
        f"[green]added[/] device {escape(repr(d.name))} ({escape(d.kind)}, {d.cpu_cores:g} host "
        f"cores, {d.memory_mb} MB) to {escape(str(spec))}, now {count} devices; a running "
        "`deepedge train` or `deepedge demo` on this spec picks it up at a step boundary"
    )


@cluster_app.command("info")
def cluster_info() -> None:
    """Say how devices will be fenced on this machine (cgroup v1/v2 or the fallback)."""
    from deepedge.cluster import detect_cgroups

    driver, reason = detect_cgroups()
    if driver is None:
        console.print(f"[yellow]fallback emulation[/]: {reason}")
    else:
        console.print(f"[green]cgroup v{driver.version}[/]: {reason}")
    fence = "the cpuset controller" if driver and driver.pins_cpus else "CPU affinity"
    console.print(f"devices are pinned to host CPUs with {fence} (cluster spec: pin_cpus)")


def _ray_spec(path: Path):  # -> ClusterSpec of backend ray
    spec = _load_cluster(path)
    if spec.backend != "ray":
        raise UsageError(
            f"{path} uses backend {spec.backend}: its devices are emulated on this machine "
            "when a job starts",
            hint="set `backend: ray` (and `address: HEAD_IP:6379`) to run on Ray nodes",
        )
    return spec


@cluster_app.command("up")
def cluster_up(
    spec: Annotated[Path, typer.Argument(help="cluster spec with backend: ray")],
    head: Annotated[
        str | None, typer.Option(help="HOST:PORT of the Ray head (default: the spec's address)")
    ] = None,
) -> None:
    """Print the `ray start` line for the head and for every device of a Ray cluster spec."""
    from deepedge.cluster.ray_backend import ray_start_lines

    lines = ray_start_lines(_ray_spec(spec), head)
    for where, line in lines:
        console.print(f"[bold]# on {escape(where)}[/]")
        console.print(escape(line), soft_wrap=True)
    console.print(
        "# each board needs deepedge installed as on the coordinator (same version, same "
        "Python) and the run directory at the same path (e.g. an NFS mount)"
    )


@cluster_app.command("status")
def cluster_status(
    spec: Annotated[Path, typer.Argument(help="cluster spec with backend: ray")],
) -> None:
    """Show which devices of a Ray cluster spec have a node in the Ray cluster; exit 1 if any
    is missing."""
    cluster = _ray_spec(spec)
    if cluster.address is None:
        console.print(
            "no address in the spec: each job starts an emulated Ray cluster on this machine "
            "(a node per device) and stops it when it ends"
        )
        return
    from deepedge.cluster.ray_backend import connect, present_devices

    connect(cluster.address)
    present = present_devices()
    table = Table(title=f"Ray cluster at {cluster.address}")
    for col in ("device", "kind", "node", "address", "status"):
        table.add_column(col)
    for d in cluster.devices:
        node = present.get(d.name)
        table.add_row(
            d.name,
            d.kind,
            node["NodeID"][:12] if node else "-",
            node.get("NodeManagerAddress", "-") if node else "-",
            "[green]present[/]" if node else "[red]missing[/]",
        )
    console.print(table)
    missing = [d.name for d in cluster.devices if d.name not in present]
    if missing:
        console.print(f"missing: {', '.join(missing)}; start them with `deepedge cluster up`")
        raise typer.Exit(1)


@app.command()
def dashboard(
    db: Annotated[
        Path | None, typer.Option(help="a monitor store (a session's monitor.sqlite)")
    ] = None,
    kb: KbOption = None,
    run: Annotated[
        list[Path] | None, typer.Option(help="a run folder with report.json (repeatable)")
    ] = None,
    host: Annotated[str, typer.Option(help="address to bind; not loopback needs a token")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="port (0: any free one)")] = 8050,
    token: Annotated[
        str | None, typer.Option(help="token requests need (generated off loopback)")
    ] = None,
    allow_control: Annotated[
        bool, typer.Option(help="let the page act on the cluster (read-only without it)")
    ] = False,
    spec: Annotated[
        Path | None,
        typer.Option(help="the cluster spec a running job watches (--allow-control adds to it)"),
    ] = None,
) -> None:
    """Serve the browser dashboard over recorded files, read-only: the cluster's devices,
    LC apps' latency against their deadlines, the knowledge base and past runs."""
    from deepedge.dashboard import DashboardServer, Sources

    if not 0 <= port < 65536:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    for path in [db, spec, *(run or [])]:
        if path is not None and not path.exists():
            raise UsageError(f"{path} does not exist", hint="give a file a session wrote")
    sources = Sources(db=db, kb=_kb_path(kb), runs=list(run or []))
    sources.store()  # a --db or --kb that cannot be read: one line now, not at each poll
    sources.knowledge()
    server = DashboardServer(
        sources, host=host, port=port, token=token, allow_control=allow_control, spec=spec
    )
    console.print(f"dashboard at {server.url} (Ctrl-C stops it)")
    if server.token and token is None:
        console.print(f"token (generated, needed off loopback): {server.token}")
    server.run()


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="a report.json from `deepedge demo`")],
) -> None:
    """Print the summary table of an earlier demo run."""
    from deepedge.demo import read_report, render_tables

    console.print(render_tables(read_report(path)))


@app.command()
def forecast(
    trace: Annotated[
        Path | None, typer.Argument(help="CSV trace (t,rate or timestamps); default: bikeshare")
    ] = None,
    horizon: Annotated[int, typer.Option(help="steps ahead (trace intervals)")] = 3,
    holdout_weeks: Annotated[int, typer.Option(help="held-out weeks at the end")] = 4,
    png: Annotated[Path, typer.Option(help="plot of the best model")] = Path("forecast.png"),
) -> None:
    """Compare forecasters on the trace's last weeks (MAPE, MASE, fit time); plot the best."""
    from deepedge.serving import (
        default_forecasters,
        evaluate,
        forecast_png,
        load_bikeshare,
        load_trace,
    )

    if horizon < 1 or holdout_weeks < 1:
        raise UsageError("--horizon and --holdout-weeks must be at least 1")
    rate_trace = load_bikeshare() if trace is None else load_trace(trace)
    results = [
        evaluate(f, rate_trace, holdout_weeks, horizon) for f in default_forecasters().values()
    ]
    table = Table(title=f"{rate_trace.name}: {holdout_weeks} held-out weeks, horizon {horizon}")
    for col in ("forecaster", "MAPE %", "MASE", "coverage of upper", "fit s"):
        table.add_column(col, justify="left" if col == "forecaster" else "right")
    for r in results:
        table.add_row(
            r.name, f"{r.mape:.1f}", f"{r.mase:.3f}", f"{r.coverage:.1%}", f"{r.fit_s:.3f}"
        )
    console.print(table)
    best = min(results, key=lambda r: r.mase)
    console.print(f"MAPE over actuals >= {best.mape_floor:.3g}; best: {best.name}")
    console.print(f"plot: {forecast_png(rate_trace, best, png)}")


def _serve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the re-trained model in a demo's output folder."""
    if path.is_dir():
        for name in ("retrained-model.ckpt", "base-model.ckpt"):
            if (path / name).is_file():
                return path / name
        raise UsageError(
            f"{path} is a folder without retrained-model.ckpt or base-model.ckpt",
            hint="pass a checkpoint file, e.g. demo-out/retrained-model.ckpt",
        )
    return path


@app.command()
def serve(
    cluster: Annotated[Path, typer.Argument(help="cluster spec whose devices host replicas")],
    checkpoint: Annotated[
        Path, typer.Argument(help="checkpoint to serve, or a demo output folder")
    ],
    trace: Annotated[
        str, typer.Option(help="'bikeshare' or a CSV trace (t,rate or timestamps)")
    ] = "bikeshare",
    slo_ms: Annotated[float, typer.Option(help="p95 latency SLO, ms")] = 100.0,
    policy: Annotated[
        str, typer.Option(help="barista, reactive, static-peak, or a comma list")
    ] = "barista",
    hours: Annotated[int, typer.Option(help="trace hours to replay")] = 24,
    hour_s: Annotated[float, typer.Option(help="seconds one trace hour lasts")] = 3.0,
    peak_rps: Annotated[
        float, typer.Option(help="the replayed hours are scaled to peak here")
    ] = 150.0,
    start_hour: Annotated[
        int | None, typer.Option(help="first trace hour replayed (default: the last HOURS)")
    ] = None,
    interval_s: Annotated[float, typer.Option(help="decision interval, seconds")] = 1.0,
    flavours: Annotated[
        str | None, typer.Option(help="replica flavours, e.g. 's=0.08:512,m=0.16:768'")
    ] = None,
    catalog_file: Annotated[
        Path | None, typer.Option("--catalog", help="prices (JSON/YAML); default AWS Fargate")
    ] = None,
    devices: Annotated[
        str | None, typer.Option(help="devices that host replicas (comma list; default all)")
    ] = None,
    kb: KbOption = None,
    refresh: Annotated[
        bool, typer.Option(help="measure the latency model again even if the KB has it")
    ] = False,
    out: Annotated[Path, typer.Option(help="report, timelines and plots")] = Path("serve-out"),
    seed: Annotated[int, typer.Option(help="seed of the arrival process")] = 0,
    images: Annotated[
        Path | None,
        typer.Option(help="requests carry these images in turn (a data set .npz file)"),
    ] = None,
    cloud_device: Annotated[
        str | None,
        typer.Option(help="MEANet: run the cloud model on this device, behind the WAN"),
    ] = None,
    wan_rtt_ms: Annotated[float, typer.Option(help="MEANet: the WAN's round trip, ms")] = 40.0,
    main_threshold: Annotated[
        float, typer.Option(help="MEANet: exit at the main block below this entropy")
    ] = 0.3,
    cloud_threshold: Annotated[
        float, typer.Option(help="MEANet: send to the cloud above this entropy")
    ] = 0.6,
    dashboard: DashboardOption = False,
    dashboard_port: DashboardPortOption = 8050,
) -> None:
    """Serve CHECKPOINT on CLUSTER's devices under a p95 SLO, replaying a request trace.

    Replicas run in device partitions with a flavour (CPU quota, memory); the policy
    scales them vertically and horizontally each decision interval. Shows a live view,
    then writes OUT/serve_report.json and OUT/serving.png.

    A MEANet edge checkpoint (meanet-edge.ckpt) is served with its exits, and its
    requests carry the test images saved beside it; --cloud-device adds the cloud exit.
    """
    from rich.live import Live

    from deepedge.serving import (
        DEFAULT_CATALOG,
        DEFAULT_FLAVOURS,
        CloudOffload,
        ReplayTrace,
        ServeOptions,
        load_bikeshare,
        load_catalog,
        load_trace,
        parse_flavours,
    )
    from deepedge.serving import (
        serve as run_serve,
    )
    from deepedge.serving.live import ServeView
    from deepedge.serving.service import LIVE_DB

    spec = _load_cluster(cluster)
    checkpoint = _serve_checkpoint(checkpoint)
    rate_trace = load_bikeshare() if trace == "bikeshare" else load_trace(Path(trace))
    replay = ReplayTrace.from_trace(
        rate_trace, hours=hours, peak_rps=peak_rps, hour_s=hour_s, start_hour=start_hour
    )
    options = ServeOptions(
        slo_ms=slo_ms,
        flavours=parse_flavours(flavours) if flavours else DEFAULT_FLAVOURS,
        catalog=load_catalog(catalog_file) if catalog_file else DEFAULT_CATALOG,
        policies=[p.strip() for p in policy.split(",") if p.strip()],
        interval_s=interval_s,
        devices=[d.strip() for d in devices.split(",")] if devices else None,
        kb_path=kb,
        refresh=refresh,
        seed=seed,
        images=images,
        cloud=CloudOffload(cloud_device, wan_rtt_ms, main_threshold, cloud_threshold)
        if cloud_device
        else None,
    )
    if cloud_device is None and (main_threshold, cloud_threshold) != (0.3, 0.6):
        raise UsageError(
            "--main-threshold and --cloud-threshold set MEANet's exits with its cloud",
            hint="add --cloud-device DEVICE (without it the edge exits at 0.3)",
        )
    view = ServeView(replay, slo_ms)
    with Live(console=console, refresh_per_second=2, transient=True) as live:

        def status(message: str) -> None:
            live.console.print(message)

        def on_tick(name: str, row: dict) -> None:
            live.update(view.render(name, row))

        live_db = out / LIVE_DB  # serve writes each interval there as it goes
        with _live_dashboard(dashboard, dashboard_port, db=live_db, kb=kb, runs=[]):
            report = run_serve(
                spec, checkpoint, replay, options, out, status=status, on_tick=on_tick
            )
    console.print(view.summary(report.summary_rows()))
    console.print(f"report {report.files['report']}; plot {report.files['plot']}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _hoist_global_flags(args: list[str]) -> list[str]:
    """Move the program's own flags in front of the subcommand, wherever they were typed
    (never past a ``--``, after which every word is an argument)."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every way it ends is an exit code (see the README), never a traceback
    unless --debug asks for one."""
    args = sys.argv[1:] if argv is None else list(argv)
    args = _hoist_global_flags(_launch_script_args(args) if "launch" in args else args)
    # SIGTERM behaves like Ctrl-C: KeyboardInterrupt in the main thread, so every `with`
    # block (devices, agents, load generator) tears down.
    signal.signal(signal.SIGTERM, _interrupt)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C must still tear down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = app(args=args, prog_name="deepedge", standalone_mode=False)
        if code == 130:  # typer returns 130 for a Ctrl-C it caught
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except DeepEdgeError as err:
        err_console.print(f"[red]error:[/] {escape(err.one_line())}")
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print(
            "[yellow]interrupted[/]: everything was torn down; the last checkpoint is intact"
        )
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `deepedge ... | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush at exit
        sys.exit(EXIT_FAILURE)
    except Exception as err:
        if _is_usage_error(err):  # click's: a missing argument, an unknown option, …
            err.show()  # type: ignore[attr-defined]
            sys.exit(err.exit_code)  # type: ignore[attr-defined]
        if _state["debug"]:
            raise
        err_console.print(
            f"[red]internal error:[/] {type(err).__name__}: {escape(str(err))} "
            "(rerun with --debug for the traceback, and please report it)"
        )
        sys.exit(EXIT_FAILURE)


def _is_usage_error(err: Exception) -> bool:
    """Click's own exceptions (typer vendors click, so match by the base class's name)."""
    return any(c.__name__ == "ClickException" for c in type(err).__mro__) and hasattr(err, "show")
