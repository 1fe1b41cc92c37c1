"""Benchmark: the Ray backend against the local backend, and ``deepedge launch``.

* ``local`` / ``ray``: the demo job re-trained with the Deep-Edge plan on the demo cluster
  (five boards, LC apps under load, the SLO guard on as in the product), once with the
  devices as cgroups of this machine and once with each device a node of an emulated Ray
  cluster (one raylet per device on 127.0.0.1, the device's processes in its cgroup),
  alternated, a session of its own each, from the same weights and the same knowledge
  base. Per run: makespan, accuracy on the drifted test set, SLO windows violated (1 s,
  every app), the plan, and the boot time of the session.
* ``ray-node-lost``: the same on Ray with the node of :data:`VICTIM` killed (raylet and
  workers, as a board losing power) at :data:`AT` of the steps: how long until the loss
  was noticed, and until the survivors completed a step again.
* ``launch``: an equal-split torchrun-style script through ``deepedge launch`` against
  ``torchrun`` on the same devices (``bench/launch_overhead.py``).

Targets (issue 15): makespan Ray / local <= 1.10, same accuracy, 0 violated windows on
both; launch / torchrun <= 1.05.

    .venv/bin/python bench/ray_backend.py [--repeats 3] [--cases local,ray,ray-node-lost,launch]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from _common import machine, median_case, write_results
from deepedge.apps import summarize_apps
from deepedge.control import RunController, RunOptions, RunState
from deepedge.data import build_dataset
from deepedge.demo import DEADLINE_POLICY, default_specs
from deepedge.knowledge import default_kb_path
from deepedge.spec import ClusterSpec, JobSpec
from deepedge.train import evaluate, job_model
from faults import back_to_training_s, cluster_emulation
from schedule_emulated import IDLE_S, base_state, job_summary

CASES = ("local", "ray", "ray-node-lost", "launch")
VICTIM = "xavier-1"
AT = 0.4


def one_run(
    case: str, cluster: ClusterSpec, job: JobSpec, state: dict, kb: Path, workdir: Path
) -> dict[str, Any]:
    backend = "local" if case == "local" else "ray"
    spec = cluster.model_copy(update={"backend": backend})
    train_set = build_dataset(job.dataset, "train", drifted=True)
    per_epoch = -(-len(train_set) // job.global_batch)
    options = RunOptions(out=workdir / case, policies=(DEADLINE_POLICY,), kb=kb)
    struck: dict[str, float] = {}
    with RunController(spec, job, options, train_set=train_set, initial_state=state) as ctl:
        plan = ctl.plan().plans[DEADLINE_POLICY]
        assert ctl.session is not None
        session = ctl.session
        time.sleep(IDLE_S)

        def strike(epoch: int, step: int) -> None:
            done = (epoch * per_epoch + step) / (job.epochs * per_epoch)
            if case == "ray-node-lost" and not struck and done >= AT:
                struck["t"] = time.time()
                session.cluster.emulated.kill_node(VICTIM)

        run = ctl.train(plan, on_step=strike).run
    # a lost node takes its LC apps with it: only the survivors' apps can keep their SLOs
    lost = {VICTIM} if case == "ray-node-lost" else set()
    deadlines = {a.name: a.deadline_ms for a in cluster.apps if a.device not in lost}
    stats = summarize_apps(session.records, deadlines, start_s=run.started, end_s=run.finished)
    states = {e.state: e.t for e in reversed(ctl.events.of_kind("state"))}  # first of each
    test = build_dataset(job.dataset, "test", drifted=True)
    model = job_model(job, test)
    model.load_state_dict(run.final_state()["model"])
    row: dict[str, Any] = {
        "makespan_s": run.wall_s,
        "accuracy": evaluate(model, *test.to_tensors()),
        "violated_windows": sum(s.slo_window_violations for s in stats.values()),
        "windows": sum(s.windows for s in stats.values()),
        "plan": dict(plan.local_batches),
        "session_boot_s": states[RunState.PROFILE] - states[RunState.BOOT],
    }
    if case == "ray-node-lost":
        rec = run.recoveries[0] if run.recoveries else None
        row |= {
            "recovered": rec is not None,
            "detection_s": rec.failure.detection_s if rec else None,
            "kill_to_training_s": (
                back_to_training_s(run) + rec.failure.lost_at - struck["t"]
                if rec and back_to_training_s(run) is not None
                else None
            ),
            "plan_after": dict(rec.plan.local_batches) if rec else None,
        }
    return row


def markdown(result: dict[str, Any]) -> list[str]:
    c = result["cases"]
    lines = [
        "# ray_backend",
        "",
        f"Job: {result['job_summary']}, policy {DEADLINE_POLICY}, SLO guard on, on the demo "
        f"cluster ({result['machine']['emulation']}) with its LC apps under load. `ray`: each "
        "device a node of an emulated Ray cluster (a raylet per device on 127.0.0.1; the "
        "device's processes in its cgroup, started by its node's host actor). Medians of "
        f"{result['repeats']} alternated run(s); each run in a session of its own.",
        "",
        "| case | makespan (s) | / local | target | accuracy | SLO windows violated | "
        "session boot (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = c.get("local", {}).get("makespan_s")
    for case in ("local", "ray", "ray-node-lost"):
        if case not in c:
            continue
        r = c[case]
        ratio = f"{r['makespan_s'] / base:.3f}" if base else ""
        target = {"ray": "≤ 1.10", "local": ""}.get(case, "")
        boot = f"{r['session_boot_s']:.1f}" if r.get("session_boot_s") is not None else ""
        lines.append(
            f"| {case} | {r['makespan_s']:.1f} | {ratio} | {target} | {r['accuracy']:.3f} | "
            f"{r['violated_windows']} / {r['windows']} | {boot} |"
        )
    if "ray-node-lost" in c:
        r = c["ray-node-lost"]
        lines += [
            "",
            f"ray-node-lost: the node of {VICTIM} killed at {AT:.0%} of the steps (SLO windows "
            "of the other devices' apps); loss noticed "
            f"{_s(r.get('detection_s'))} after its agent's last sign of life, survivors "
            f"training again {_s(r.get('kill_to_training_s'))} after the kill "
            f"(per run: {_list(result, 'ray-node-lost', 'kill_to_training_s')}); plan after: "
            f"{r.get('plan_after')}.",
        ]
    if "launch" in c:
        r = c["launch"]
        med = r["median_s"]
        lines += [
            "",
            f"`deepedge launch` against `torchrun --nnodes N --node-rank i` per device on the "
            f"same {len(r['cluster']['devices'])} booted devices (cgroups, no LC apps): "
            f"`examples/torchrun_train.py --epochs {r['epochs']}`, equal split, "
            f"{r['repeats']} alternated runs of each (boot not counted for either).",
            "",
            "| launcher | median wall (s) | / torchrun | target |",
            "|---|---:|---:|---:|",
            f"| torchrun | {med['torchrun']:.2f} | 1.000 | |",
            f"| deepedge launch | {med['deepedge']:.2f} | {r['ratio']:.3f} | ≤ {r['target']} |",
        ]
    lines += ["", f"Reproduce: `{result['command']}`"]
    return lines


def _s(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "n/a"


def _list(result: dict[str, Any], case: str, key: str) -> str:
    values = [r.get(key) for r in result["runs"].get(case, [])]
    return ", ".join(_s(v) for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-ray"))
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases {sorted(unknown)}; known: {', '.join(CASES)}")
    console = Console()
    cluster, job = default_specs()
    args.workdir.mkdir(parents=True, exist_ok=True)
    kb = args.workdir / "kb.sqlite"
    if not kb.exists() and default_kb_path().exists():  # the stored interference model
        shutil.copy(default_kb_path(), kb)
    state = base_state(job)
    t0 = time.time()
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    training = [c for c in cases if c != "launch"]
    for r in range(args.repeats):
        order = training if r % 2 == 0 else training[::-1]
        for case in order:
            console.print(f"[bold]{case}[/] (run {r + 1})")
            row = one_run(case, cluster, job, state, kb, args.workdir / f"r{r}")
            console.print(f"  {row['makespan_s']:.1f} s, accuracy {row['accuracy']:.3f}")
            runs[case].append(row)
    summary: dict[str, dict] = {}
    for case, rows in runs.items():
        if rows:
            summary[case] = median_case(rows, ("detection_s", "kill_to_training_s"))
    if "launch" in cases:
        from launch_overhead import run_launch_overhead

        console.print("[bold]launch[/]")
        summary["launch"] = run_launch_overhead(args.repeats)
    result = {
        "machine": machine(cluster_emulation(cluster)),
        "job": job.model_dump(mode="json"),
        "job_summary": job_summary(job),
        "repeats": args.repeats,
        "wall_s": time.time() - t0,
        "cases": summary,
        "runs": {c: rows for c, rows in runs.items() if rows},
        "command": "python bench/ray_backend.py"
        + (f" --repeats {args.repeats}" if args.repeats != 1 else "")
        + (f" --cases {args.cases}" if args.cases != ",".join(CASES) else ""),
    }
    lines = markdown(result)
    write_results("ray_backend", result, lines)
    console.print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
