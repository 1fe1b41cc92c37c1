"""The `deepedge` command line.

Expected errors (``DeepEdgeError``) print as one line with a hint and exit 2; anything
else is a bug and shows a traceback only with ``--debug``. Logging and signal handling are
configured here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deepedge.errors import CheckpointError, DeepEdgeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Re-train models on heterogeneous edge clusters without breaking LC apps.",
)
cluster_app = typer.Typer(no_args_is_help=True, help="Emulated cluster housekeeping.")
app.add_typer(cluster_app, name="cluster")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # one line per error, never wrapped
_state = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where report.json and the plots go")] = Path(
        "demo-out"
    ),
    quick: Annotated[bool, typer.Option("--quick", help="smaller job, under 90 s")] = False,
    cluster: Annotated[Path | None, typer.Option(help="cluster spec (default: the demo's)")] = None,
    job: Annotated[Path | None, typer.Option(help="job spec (default: the demo's)")] = None,
    fallback: Annotated[
        bool, typer.Option("--fallback", help="force duty-cycle emulation")
    ] = False,
) -> None:
    """Train, drift, re-train on a 5-device emulated cluster under LC load; report and plot."""
    from deepedge.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            out=out, quick=quick, cluster_path=cluster, job_path=job, force_fallback=fallback
        ),
        console,
    )


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="cluster or job spec files")],
) -> None:
    """Check spec files; the kind (cluster or job) is recognised by its top-level keys."""
    from deepedge.catalog import resolve_device
    from deepedge.spec import ClusterSpec, JobSpec, parse_spec, read_spec_file

    for f in files:
        data = read_spec_file(f)
        if isinstance(data, dict) and "devices" in data:
            spec = parse_spec(ClusterSpec, data, source=str(f))
            for d in spec.devices:
                resolve_device(d)
            console.print(
                f"[green]ok[/] {f}: cluster {spec.name!r}, {len(spec.devices)} devices, "
                f"{len(spec.apps)} LC apps"
            )
        else:
            job_spec = parse_spec(JobSpec, data, source=str(f))
            console.print(
                f"[green]ok[/] {f}: job {job_spec.name!r}, {job_spec.model.arch}, "
                f"B={job_spec.global_batch}, {job_spec.epochs} epochs"
            )


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
        str, typer.Option(help="proportional | equal | fastest-single")
    ] = "proportional",
    init: Annotated[
        Path | None,
        typer.Option(help="start from this checkpoint (e.g. demo-out/base-model.ckpt)"),
    ] = None,
) -> None:
    """Plan and run one re-training job on the emulated cluster, on the job's drifted data."""
    from deepedge.data import build_dataset
    from deepedge.retrain import POLICIES, Retraining
    from deepedge.session import EdgeSession
    from deepedge.spec import ClusterSpec, JobSpec, load_spec
    from deepedge.train import evaluate, job_model, load_checkpoint

    if policy not in POLICIES:
        raise DeepEdgeError(f"unknown policy {policy!r}", hint=f"use one of {list(POLICIES)}")
    cluster_spec, job_spec = load_spec(ClusterSpec, cluster), load_spec(JobSpec, job)
    train_set = build_dataset(job_spec.dataset, "train", drifted=True)
    model = job_model(job_spec, train_set)
    if init is not None:
        try:
            model.load_state_dict(load_checkpoint(init)["model"])
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(
                f"{init} holds no weights for this job's {job_spec.model.arch} model: "
                f"{str(err).splitlines()[0]}",
                hint="use the base-model.ckpt of a demo run with the same model spec",
            ) from None
    with EdgeSession(cluster_spec, out, status=console.print) as session:
        retrain = Retraining(session, job_spec, train_set, model.state_dict())
        planning = retrain.plan((policy,))
        plan = planning.plans[policy]
        for e in plan.excluded:
            console.print(f"excluded {e.device}: {e.reason}")
        console.print(f"plan {policy}: {dict(plan.local_batches)}")
        run = retrain.run(plan)
    test = build_dataset(job_spec.dataset, "test", drifted=True)
    model.load_state_dict(run.final_state()["model"])
    acc = evaluate(model, *test.to_tensors())
    console.print(
        f"trained in {run.wall_s:.1f} s (T_min {planning.lower_bound_s:.1f} s); "
        f"test accuracy {acc:.3f}; checkpoints in {run.checkpoint_dir}"
    )


@cluster_app.command("cleanup")
def cluster_cleanup() -> None:
    """Remove device cgroups (and their processes) left by a run that was killed."""
    from deepedge.cluster import cleanup_stale

    reaped = cleanup_stale()
    console.print(f"removed {len(reaped)} stale session(s)" + (f": {reaped}" if reaped else ""))


@cluster_app.command("info")
def cluster_info() -> None:
    """Say how devices will be fenced on this machine (cgroup v1/v2 or the fallback)."""
    from deepedge.cluster import detect_cgroups

    driver, reason = detect_cgroups()
    if driver is None:
        console.print(f"[yellow]fallback emulation[/]: {reason}")
    else:
        console.print(f"[green]cgroup v{driver.version}[/]: {reason}")


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="a report.json from `deepedge demo`")],
) -> None:
    """Print the summary table of an earlier demo run."""
    from deepedge.demo import render_tables

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DeepEdgeError(
            f"cannot read report {path}: {err}", hint="run `deepedge demo` first"
        ) from None
    console.print(render_tables(data))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # SIGTERM behaves like Ctrl-C: KeyboardInterrupt in the main thread, so every `with`
    # block (devices, agents, load generator) tears down.
    signal.signal(signal.SIGTERM, _interrupt)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C must still tear down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = app(standalone_mode=False)  # typer returns 130 for a Ctrl-C it caught
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except DeepEdgeError as err:
        err_console.print(f"[red]error:[/] {err.one_line()}")
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        err_console.print(
            "[yellow]interrupted[/]: everything was torn down; the last checkpoint is intact"
        )
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: show them as click would
        show = getattr(exc, "show", None)
        if show:
            show()
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as err:
        if _state["debug"]:
            raise
        err_console.print(
            f"[red]internal error:[/] {type(err).__name__}: {err} "
            "(rerun with --debug for the traceback, and please report it)"
        )
        sys.exit(1)
