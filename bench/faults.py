"""Benchmark: re-training through a lost worker, against a run without faults.

The demo cluster (five boards, LC apps under load) re-trains the demo job with the
throughput-proportional plan, in a session of its own per case, from the same weights:

* ``no-fault``: the plan runs to its end.
* ``crash``: one agent is killed (``SIGKILL``) at ~40 % of the steps. The controller
  notices, the policy plans again over the survivors, and they go on from the last
  completed step with the model they hold (no restart).
* ``hang``: one agent is stopped (``SIGSTOP``) at ~40 %; it is fenced (killed) once
  noticed, then as a crash.
* ``slow``: a CPU hog (the lab's ``cpu`` stressor, at a normal priority, demanding
  :data:`HOG` of the device's CPU) starts in the device at ~20 % of the steps and runs
  :data:`HOG_S`; the controller notices the device drifting from its plan and changes
  the split at a step boundary. ``slow-kept``: the same with rebalancing off (the plan is
  kept, as before the controller).
* ``lc-spike``: :data:`SPIKE_DEVICE`'s LC app (deadline :data:`SPIKE_DEADLINE_MS`) gets
  :data:`SPIKE` times its request rate from :data:`SPIKE_AT` of the steps for
  :data:`SPIKE_S` (or until the run ends); the SLO guard cuts the device's training, then
  moves its share, as the app nears its deadline.
  ``lc-spike-kept``: the same spike with the guard off (the plan is kept).
* ``join``: a sixth board (:data:`JOINER`) is added at :data:`JOIN_AT` of the steps; it is
  booted and profiled on the side and taken into the plan at a step boundary when the
  planner predicts that it pays (the decision and EDDL's BUC = n / T_sync are reported).
  Against ``no-join``: the same (longer, :data:`JOIN_EPOCHS`) job without the new board.
* ``restart``: the torchrun-style baseline for the crash: every worker starts again from
  the last epoch's checkpoint over the survivors. Its makespan counts the time to the
  kill plus the resumed run's training from the checkpoint (measured in a fresh session
  of the surviving devices); process restarts and the detection delay are *not* charged
  to it, so it is a lower bound of what torchrun pays.

Per case: makespan, how long after the worker's last sign of life the loss was noticed,
how long until the survivors completed a step again, the samples used per epoch
(logged ids: lost or doubled ones are counted), and the accuracy on the drifted test set.
Target (issue 14): detected <= 2 s, training again <= 10 s, 0 samples lost or doubled,
accuracy within 1 point of no-fault, makespan <= no-fault x (1 + lost share) + 10 s; for
the spike, no SLO window (1 s, by scheduled time) violated later than 2 s after it starts.
Every case but ``lc-spike`` runs with the SLO guard off, so they compare plans alone.

    .venv/bin/python bench/faults.py [--repeats 1] [--victim xavier-1]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from _common import machine, median_case, write_results
from deepedge.apps import summarize_apps
from deepedge.control import GuardSettings, RunController, RunOptions
from deepedge.data import build_dataset
from deepedge.demo import default_specs
from deepedge.errors import TrainingError
from deepedge.interference.stressors import StressorProcess
from deepedge.spec import ClusterSpec, DeviceSpec, JobSpec
from deepedge.train import CheckpointManager, TrainRun, evaluate, job_model
from schedule_emulated import IDLE_S, base_state, job_summary

POLICY = "proportional"
CASES = (
    "no-fault",
    "crash",
    "hang",
    "restart",
    "slow",
    "slow-kept",
    "lc-spike",
    "lc-spike-kept",
    "no-join",
    "join",
)
AT = 0.4  # the share of the steps after which the worker is lost
SLOW_AT = 0.2  # the share of the steps after which the hog starts
HOG = 0.4  # the hog's share of the device's CPU
HOG_S = 20.0
SPIKE_AT = 0.1  # the share of the steps after which the LC load spikes
SPIKE = 3.0  # times the app's request rate
SPIKE_S = 20.0
GRACE_S = 2.0  # windows starting this long after the spike must meet the deadline
SPIKE_DEVICE = "orin-1"  # the device with the largest share of the plan
SPIKE_DEADLINE_MS = 25.0
"""The spiked app's deadline. At the demo's 60 ms a 3x spike beside training stayed under
half of it (measured): nothing for a guard to do. At 25 ms the kept plan violates it."""
JOIN_AT = 0.3
JOIN_EPOCHS = 3.0
"""The join cases train this many times the job's epochs: a board needs a few seconds to
boot and be profiled, and the demo job's ~17 s leave too few steps for it to pay."""
JOINER = DeviceSpec(name="orin-2", kind="orin-nano")


def accounting(run: TrainRun, size: int, epochs: int) -> dict[str, int]:
    """Samples of each epoch never used, and uses beyond the first, from the logged ids."""
    per_epoch: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for entry in run.samples:
        per_epoch[entry["epoch"]].update(entry["ids"])
    lost = sum(size - len(per_epoch[e]) for e in range(epochs))
    doubled = sum(c - 1 for counts in per_epoch.values() for c in counts.values() if c > 1)
    return {"samples_lost": lost, "samples_doubled": doubled}


def back_to_training_s(run: TrainRun) -> float | None:
    """From the lost worker's last sign of life to the survivors' first step completed
    after the run went on."""
    if not run.recoveries:
        return None
    rec = run.recoveries[0]
    after = [r.end for recs in run.steps.values() for r in recs if r.start >= rec.resumed_at]
    return min(after) - rec.failure.lost_at if after else None


def one_case(
    case: str,
    cluster: ClusterSpec,
    job: JobSpec,
    state: dict,
    workdir: Path,
    victim: str,
    console: Console,
) -> dict[str, Any]:
    if case.endswith("join"):
        job = job.model_copy(update={"epochs": round(job.epochs * JOIN_EPOCHS)})
    train_set = build_dataset(job.dataset, "train", drifted=True)
    steps_per_epoch = -(-len(train_set) // job.global_batch)
    options = RunOptions(
        out=workdir / case,
        policies=(POLICY,),
        kb=workdir / "kb.sqlite",
        rebalance=case != "slow-kept",
        slo_guard=GuardSettings() if case == "lc-spike" else None,
    )
    spike = case.startswith("lc-spike")
    if spike:
        cluster = cluster.model_copy(
            update={
                "apps": [
                    a.model_copy(update={"deadline_ms": SPIKE_DEADLINE_MS})
                    if a.device == SPIKE_DEVICE
                    else a
                    for a in cluster.apps
                ]
            }
        )
    app = next(a for a in cluster.apps if a.device == SPIKE_DEVICE)
    sig = {"crash": signal.SIGKILL, "restart": signal.SIGKILL, "hang": signal.SIGSTOP}.get(case)
    struck: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        ctl = stack.enter_context(
            RunController(
                cluster,
                job,
                options,
                train_set=train_set,
                initial_state=state,
                status=console.print,
            )
        )
        time.sleep(IDLE_S)
        plan = ctl.plan().plans[POLICY]
        assert ctl.session is not None and ctl.retraining is not None
        proc = ctl.session.agents.processes[victim]
        session = ctl.session
        hog = stack.enter_context(cpu_hog(ctl, victim, workdir)) if "slow" in case else None

        def strike(epoch: int, step: int) -> None:
            done_share = (epoch * steps_per_epoch + step) / (steps_per_epoch * job.epochs)
            if sig and not struck and done_share >= AT:
                struck["t"] = time.time()
                proc.send_signal(sig)
            elif hog and not struck and done_share >= SLOW_AT:
                struck["t"] = time.time()
                hog.set(HOG)
            elif hog and struck and time.time() - struck["t"] > HOG_S:
                hog.set(0.0)
            elif case == "join" and not struck and done_share >= JOIN_AT:
                struck["t"] = time.time()
                ctl.join(JOINER)
            elif spike and not struck and done_share >= SPIKE_AT:
                struck["t"] = time.time()
                session.set_lc_rate(app.name, SPIKE * app.rate_rps)
            elif spike and "end" not in struck and time.time() - struck.get("t", 1e99) > SPIKE_S:
                struck["end"] = time.time()
                session.set_lc_rate(app.name, app.rate_rps)

        if case != "restart":
            done = ctl.train(plan, on_step=strike, log_samples=True)
            run, makespan = done.run, done.run.wall_s
        else:  # torchrun-style: the run fails, every worker restarts from the checkpoint
            t0 = time.time()
            ckpt_dir = None
            try:
                ctl.retraining.run(plan, on_step=strike)
            except TrainingError:
                ckpt_dir = max((workdir / case / "checkpoints").glob(f"{POLICY}-*"))
            failed_after = struck["t"] - t0
    if case == "restart":
        assert ckpt_dir is not None
        epoch, ckpt = CheckpointManager(ckpt_dir).list()[-1]
        survivors = cluster.model_copy(
            update={
                "devices": [d for d in cluster.devices if d.name != victim],
                "apps": [a for a in cluster.apps if a.device != victim],
            }
        )
        again = RunOptions(out=workdir / "restart-2", policies=(POLICY,), kb=options.kb)
        with RunController(survivors, job, again, train_set=train_set, initial_state=state) as ctl:
            done = ctl.train(ctl.plan().plans[POLICY], resume_from=ckpt)
        run = done.run
        makespan = failed_after + run.wall_s
        console.print(f"  restart from epoch {epoch}: {failed_after:.1f} s + {run.wall_s:.1f} s")
    test = build_dataset(job.dataset, "test", drifted=True)
    model = job_model(job, test)
    model.load_state_dict(run.final_state()["model"])
    row: dict[str, Any] = {
        "makespan_s": makespan,
        "accuracy": evaluate(model, *test.to_tensors()),
        "plan": dict(plan.local_batches),
        "lost_share": plan.local_batches.get(victim, 0) / job.global_batch,
    }
    if case in ("crash", "hang"):
        rec = run.recoveries[0] if run.recoveries else None
        row |= {
            "recovered": rec is not None,
            "detection_s": rec.failure.detection_s if rec else None,
            "back_to_training_s": back_to_training_s(run),
            "resumed_from_step": rec.failure.completed_steps if rec else None,
            "plan_after": dict(rec.plan.local_batches) if rec else None,
            **accounting(run, len(train_set), job.epochs),
        }
    elif case in ("no-fault", "slow", "slow-kept", "lc-spike", "lc-spike-kept", "no-join", "join"):
        row |= accounting(run, len(train_set), job.epochs)
    if case == "join":
        weighed = [e for e in ctl.events.of_kind("join") if "pays" in e.data]
        row["join"] = [e.message for e in ctl.events.of_kind("join")]
        if weighed:
            w = weighed[0]
            row |= {
                "joined": w.data["pays"],
                "join_decided_after_s": w.t - struck["t"],
                "predicted_step_before_s": w.data["predicted_step_before_s"],
                "predicted_step_after_s": w.data["predicted_step_after_s"],
                "plan_after": w.data["local_batches"] if w.data["pays"] else None,
            }
    if spike:
        row |= spike_windows(ctl, cluster, app.name, struck, run)
    if case == "slow":
        moves = [e for e in ctl.events.of_kind("rebalance") if victim in e.data["drift"]]
        row["rebalanced_after_steps"] = (
            sum(
                1
                for r in run.steps.get(next(iter(run.steps)), [])
                if struck and struck["t"] <= r.start <= moves[0].t
            )
            if moves
            else None
        )
        row["rebalances"] = [e.message for e in ctl.events.of_kind("rebalance")]
    console.print(f"  {case}: {row['makespan_s']:.1f} s")
    return row


def spike_windows(
    ctl: RunController, cluster: ClusterSpec, app: str, struck: dict[str, float], run: TrainRun
) -> dict[str, Any]:
    """SLO windows of the spiked app (and of the others) from :data:`GRACE_S` after the
    spike started to the end of the spike or of the run, and what the guard did."""
    assert ctl.session is not None
    start = struck["t"] + GRACE_S
    end = min(struck.get("end", run.finished), run.finished)
    deadlines = {a.name: a.deadline_ms for a in cluster.apps}
    stats = summarize_apps(ctl.session.records, deadlines, start_s=start, end_s=end)
    actions = ctl.events.of_kind("slo-guard")
    return {
        "spike_app": app,
        "spike_s": end - struck["t"],
        "windows_after_grace": stats[app].windows,
        "violated_after_grace": stats[app].slo_window_violations,
        "worst_p95_over_deadline": stats[app].worst_window_p95_ms / deadlines[app],
        "others_violated_after_grace": sum(
            s.slo_window_violations for a, s in stats.items() if a != app
        ),
        "first_action_after_s": (actions[0].t - struck["t"]) if actions else None,
        "guard": [e.message for e in actions],
    }


@contextlib.contextmanager
def cpu_hog(ctl: RunController, device: str, workdir: Path) -> Iterator[StressorProcess]:
    """The lab's CPU stressor in ``device``, idle until set (it starts unthrottled)."""
    assert ctl.session is not None
    handle = ctl.session.cluster.devices[device]
    hog = StressorProcess(
        "cpu", handle, host=ctl.session.cluster.coordinator_address, workdir=workdir
    )
    hog.start_unthrottled(timeout_s=60)
    try:
        yield hog
    finally:
        hog.close()


def markdown(result: dict[str, Any]) -> list[str]:
    rows = result["cases"]
    base = rows["no-fault"]
    lines = [
        "# faults",
        "",
        f"Job: {result['job_summary']}, policy {POLICY}, on the demo cluster "
        f"({result['machine']['emulation']}) with its LC apps under load; the worker on "
        f"{result['victim']} is lost at {AT:.0%} of the steps. Medians of "
        f"{result['repeats']} run(s) per case, each case in a session of its own. "
        "`restart` (torchrun-style) is charged the time to the kill plus a fresh run from "
        "the last epoch's checkpoint over the survivors, not the process restarts or the "
        "detection: a lower bound of its cost.",
        "",
        "| case | makespan (s) | / no-fault (join: / no-join) | target | detected after (s) | "
        "training again after (s) | samples lost / doubled | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, r in rows.items():
        target = (
            base["makespan_s"] * (1 + r["lost_share"]) + 10
            if case in ("crash", "hang", "restart")
            else None
        )
        if case == "slow" and "slow-kept" in rows:
            target = rows["slow-kept"]["makespan_s"]  # better than keeping the plan
        if case == "join" and "no-join" in rows:
            target = rows["no-join"]["makespan_s"]  # better than not joining
        det, back = r.get("detection_s"), r.get("back_to_training_s")
        ref = rows.get("no-join", base) if case.endswith("join") else base  # a longer job
        lost = (
            f"{r['samples_lost']} / {r['samples_doubled']}" if "samples_lost" in r else "not logged"
        )
        lines.append(
            f"| {case} | {r['makespan_s']:.1f} | {r['makespan_s'] / ref['makespan_s']:.2f} | "
            + (
                (f"< {target:.1f}" if case in ("slow", "join") else f"≤ {target:.1f}")
                if target
                else ""
            )
            + f" | {f'{det:.2f}' if det is not None else ''} | "
            f"{f'{back:.1f}' if back is not None else ''} | {lost} | {r['accuracy']:.3f} |"
        )
    if "slow" in rows:
        slow = rows["slow"]
        lines += [
            "",
            f"slow: the hog ({HOG:.0%} of {result['victim']}'s CPU, from {SLOW_AT:.0%} of the "
            f"steps, {HOG_S:.0f} s) was answered after {slow.get('rebalanced_after_steps')} "
            "step(s) of the hogged device; rebalances: "
            + ("; ".join(slow.get("rebalances") or []) or "none"),
        ]
    spikes = {c: r for c, r in rows.items() if c.startswith("lc-spike")}
    if spikes:
        lines += [
            "",
            f"LC spike: {SPIKE_DEVICE}'s app at {SPIKE:g}x its rate from {SPIKE_AT:.0%} "
            f"of the steps for {SPIKE_S:.0f} s (or to the run's end); SLO windows (1 s) from "
            f"{GRACE_S:.0f} s after the spike started (target: none violated).",
            "",
            "| case | spiked app: windows violated | worst window p95 / deadline | "
            "other apps: windows violated | first guard action after (s) |",
            "|---|---:|---:|---:|---:|",
        ]
        for case, r in spikes.items():
            first = r.get("first_action_after_s")
            lines.append(
                f"| {case} | {r['violated_after_grace']}/{r['windows_after_grace']} | "
                f"{r['worst_p95_over_deadline']:.2f} | {r['others_violated_after_grace']} | "
                f"{f'{first:.2f}' if first is not None else ''} |"
            )
        guard = spikes.get("lc-spike", {}).get("guard") or []
        lines += ["", "SLO guard: " + ("; ".join(guard) or "no action")]
    if "join" in rows:
        j = rows["join"]
        lines += [
            "",
            f"join: {JOINER.name} ({JOINER.kind}) added at {JOIN_AT:.0%} of the steps of a "
            f"{JOIN_EPOCHS:g}x longer job; makespan {j['makespan_s']:.1f} s against "
            f"{rows.get('no-join', {}).get('makespan_s', float('nan')):.1f} s without it "
            "(no-join). Controller: " + "; ".join(j.get("join") or ["no event"]),
        ]
    lines += ["", f"Reproduce: `{result['command']}`"]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--victim", default="xavier-1")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-faults"))
    args = parser.parse_args()
    console = Console()
    cluster, job = default_specs()
    state = base_state(job)
    t0 = time.time()
    per_case: dict[str, list[dict]] = {c: [] for c in CASES}
    for r in range(args.repeats):
        for case in CASES:
            console.print(f"[bold]{case}[/] (run {r + 1})")
            per_case[case].append(
                one_case(case, cluster, job, state, args.workdir, args.victim, console)
            )
    cases = {}
    for case, runs in per_case.items():
        cases[case] = median_case(runs, ("detection_s",))
    result = {
        "machine": machine(cluster_emulation(cluster)),
        "job": job.model_dump(mode="json"),
        "job_summary": job_summary(job),
        "victim": args.victim,
        "repeats": args.repeats,
        "wall_s": time.time() - t0,
        "cases": cases,
        "command": "python bench/faults.py"
        + (f" --repeats {args.repeats}" if args.repeats != 1 else "")
        + (f" --victim {args.victim}" if args.victim != "xavier-1" else ""),
    }
    lines = markdown(result)
    write_results("faults", result, lines)
    console.print("\n".join(lines))
    return 0


def cluster_emulation(cluster: ClusterSpec) -> str:
    from deepedge.cluster import make_backend

    return make_backend(cluster).emulation


if __name__ == "__main__":
    sys.exit(main())
