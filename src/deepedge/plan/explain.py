"""A solved split as a :class:`~deepedge.spec.Plan` that says why, and its Gantt chart."""

from __future__ import annotations

from pathlib import Path

from deepedge.plan.problem import PlanningProblem, Solution
from deepedge.spec import ExcludedDevice, Plan

__all__ = ["gantt_png", "to_plan"]


def to_plan(
    problem: PlanningProblem,
    sol: Solution,
    *,
    policy: str = "deep-edge",
    excluded: list[ExcludedDevice] | None = None,
) -> Plan:
    """The plan of ``sol`` with a reason for every device left out or throttled."""
    by_name = {d.name: d for d in problem.devices}
    out = list(excluded or [])
    notes = []
    compute = {}
    for name, b in sol.local_batches.items():
        d = by_name[name]
        t, level = d.step_s(b)
        assert level is not None
        compute[name] = t
        note = f"{name}: {b} samples/step at intensity {level.intensity:g}, {t * 1e3:.0f} ms"
        higher = [lv for lv in d.levels if lv.intensity > level.intensity]
        blocked = [lv for lv in higher if b > lv.cap]
        if blocked:
            why = (
                blocked[0].binding or f"intensity {blocked[0].intensity:g} allows {blocked[0].cap}"
            )
            note += f" (throttled: {why})"
        elif higher:  # a higher level would allow b but is no faster: the apps' CPU share
            note += " (a higher intensity would be no faster: the LC apps use the rest)"
        notes.append(note)
    for d in problem.devices:
        if d.name in sol.local_batches:
            continue
        if not d.usable:
            reason = d.excluded_reason or "no intensity allows a sample"
        else:
            t1, _ = d.step_s(1)
            reason = (
                f"too slow to help: one sample takes {t1 * 1e3:.0f} ms, the plan's step "
                f"{sol.compute_s * 1e3:.0f} ms"
                if t1 > sol.compute_s
                else "not worth its all-reduce: one more device adds more communication than "
                "it saves compute"
            )
        out.append(ExcludedDevice(device=d.name, reason=reason))
    if sol.comm_s:
        notes.append(
            f"all-reduce over {len(sol.local_batches)} devices: {sol.comm_s * 1e3:.0f} ms/step"
        )
    return Plan(
        policy=policy,
        global_batch=problem.global_batch,
        local_batches=dict(sol.local_batches),
        excluded=out,
        predicted_step_s=sol.step_s,
        notes=notes,
        intensities=dict(sol.intensities),
        predicted_compute_s=compute,
        predicted_comm_s=sol.comm_s,
    )


def gantt_png(plan: Plan, path: Path, *, steps: int = 3) -> Path:
    """A few steps of ``plan`` per device: compute, waiting for the slowest, all-reduce."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(plan.local_batches) + [e.device for e in plan.excluded]
    compute = plan.predicted_compute_s
    slowest = max(compute.values(), default=0.0)
    comm = plan.predicted_comm_s or 0.0
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 2.0))
    for row, name in enumerate(names):
        for k in range(steps):
            t0 = k * (slowest + comm)
            if name in compute:
                ax.barh(row, compute[name], left=t0, color="tab:blue")
                ax.barh(row, slowest - compute[name], left=t0 + compute[name], color="0.85")
                ax.barh(row, comm, left=t0 + slowest, color="tab:orange")
        label = name
        if name in plan.local_batches:
            label += f"  b={plan.local_batches[name]} c={plan.intensities.get(name, 1.0):g}"
        else:
            label += "  (left out)"
        ax.text(-0.01 * steps * (slowest + comm), row, label, ha="right", va="center", fontsize=8)
    ax.set_yticks([])
    ax.set_xlabel("seconds")
    ax.set_title(
        f"{plan.policy}: {len(plan.local_batches)} devices, predicted step "
        f"{(plan.predicted_step_s or 0) * 1e3:.0f} ms (blue compute, grey wait, orange all-reduce)",
        fontsize=9,
    )
    ax.invert_yaxis()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
