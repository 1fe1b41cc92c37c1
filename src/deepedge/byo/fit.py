"""``deepedge.fit``: train your own model on your own data over an edge cluster.

It is the same run as ``deepedge train``, not a separate path: a
:class:`~deepedge.control.RunController` boots the devices and their LC apps, profiles
every device for *this* model (its own knowledge-base signature), plans with the chosen
policy (Deep-Edge by default: no LC app's predicted p95 beyond its deadline), trains with
uneven-batch DDP in the same training agents, and survives lost workers, stragglers,
joining devices and the SLO guard's cuts as any run does. The user's code reaches the
agents inside the job spec (:mod:`deepedge.byo.code`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepedge.byo.data import TensorData
from deepedge.byo.job import Job, prepare
from deepedge.errors import UsageError
from deepedge.spec import ClusterSpec, JobSpec, Plan, load_spec, parse_spec

if TYPE_CHECKING:
    from torch import nn

    from deepedge.apps.stats import AppLatencyStats
    from deepedge.cluster import BackendFactory
    from deepedge.control.controller import PolicyRun
    from deepedge.control.retraining import Planning

__all__ = ["FitResult", "Metrics", "evaluate", "fit"]


@dataclass(frozen=True)
class Metrics:
    """The mean loss over an evaluation set, and top-1 accuracy where the task is
    classification (2-D outputs, integer class targets; else None)."""

    loss: float
    accuracy: float | None = None

    def describe(self) -> str:
        acc = f", accuracy {self.accuracy:.3f}" if self.accuracy is not None else ""
        return f"loss {self.loss:.4f}{acc}"


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` did: the trained model, its plan and run, the LC apps' latency."""

    model: nn.Module
    """Your model with the trained weights (on the CPU)."""
    job: JobSpec
    plan: Plan
    """The plan training started with (``run.segments``: every plan it ran)."""
    planning: Planning
    """Every planned policy, the device profiles, the lower bound on the makespan."""
    run: PolicyRun
    """The controller's run: its train run (steps, recoveries, checkpoints) and phase."""
    before: Metrics | None
    after: Metrics | None
    lc: dict[str, AppLatencyStats]
    """Each LC app's latency while training ran, against its deadline."""
    report: dict[str, Any] = field(default_factory=dict)
    """The run controller's state and events (also in ``out/report.json``)."""
    out: Path = Path(".")

    @property
    def state_dict(self) -> dict[str, Any]:
        return self.model.state_dict()

    @property
    def makespan_s(self) -> float:
        return self.run.run.wall_s

    @property
    def lower_bound_s(self) -> float:
        return self.planning.lower_bound_s

    @property
    def recoveries(self) -> list[Any]:
        return list(self.run.run.recoveries)

    def slo_met(self) -> bool:
        """Every LC app's p95 within its deadline while training ran."""
        return all(s.slo_met or s.requests == 0 for s in self.lc.values())

    def summary(self) -> str:
        """A few lines for a terminal."""
        lines = [
            f"plan {self.plan.policy}: {self.plan.describe()}",
            *(f"excluded {e.device}: {e.reason}" for e in self.plan.excluded),
            f"trained in {self.makespan_s:.1f} s (lower bound {self.lower_bound_s:.1f} s)"
            + (f", {len(self.recoveries)} recovery(ies)" if self.recoveries else ""),
        ]
        if self.before is not None and self.after is not None:
            lines.append(f"eval before: {self.before.describe()}")
            lines.append(f"eval after:  {self.after.describe()}")
        for app, st in self.lc.items():
            verdict = "ok" if st.slo_met else ("no requests" if not st.requests else "MISSED")
            lines.append(
                f"LC app {app}: p95 {st.p95_ms:.1f} ms vs deadline {st.deadline_ms:g} ms "
                f"({verdict}; {st.miss_rate:.1%} of {st.requests} requests late)"
            )
        return "\n".join(lines)


def evaluate(
    model: nn.Module, data: TensorData, loss: Callable | None = None, batch: int = 512
) -> Metrics:
    """Mean ``loss`` (default cross-entropy) over ``data`` and, for classification, the
    top-1 accuracy; the model in eval mode, without gradients."""
    import torch
    import torch.nn.functional as F

    loss = loss or F.cross_entropy
    model.eval()
    total, correct, n = 0.0, 0, len(data)
    classify = data.y.ndim == 1 and data.y.dtype.kind == "i"
    x, y = data.to_tensors()
    with torch.no_grad():
        for lo in range(0, n, batch):
            out = model(x[lo : lo + batch])
            total += float(loss(out, y[lo : lo + batch])) * len(y[lo : lo + batch])
            if classify and isinstance(out, torch.Tensor) and out.ndim == 2:
                correct += int((out.argmax(1) == y[lo : lo + batch]).sum())
            else:
                classify = False
    model.train()
    return Metrics(total / max(1, n), correct / n if classify and n else None)


def _cluster(cluster: Any) -> tuple[ClusterSpec, Path | None]:
    if isinstance(cluster, ClusterSpec):
        return cluster, None
    if isinstance(cluster, str | Path):
        return load_spec(ClusterSpec, cluster), Path(cluster)
    if isinstance(cluster, Mapping):
        return parse_spec(ClusterSpec, dict(cluster), source="deepedge.fit cluster"), None
    raise UsageError(
        f"deepedge.fit needs a cluster spec, a path to one or a dict, got {type(cluster).__name__}",
        hint="e.g. deepedge.fit(job, 'examples/small-cluster.yaml')",
    )


def fit(
    job: Job,
    cluster: ClusterSpec | str | Path | Mapping[str, Any],
    *,
    policy: str = "deep-edge",
    out: str | Path = "runs/fit",
    status: Callable[[str], None] | None = None,
    learn: bool = True,
    backend: BackendFactory | None = None,
    **options: Any,
) -> FitResult:
    """Check ``job``, then plan and train it on ``cluster`` as ``deepedge train`` does.

    ``policy``: deep-edge (default), proportional, equal, fastest-single or dynamic.
    ``out``: the run's folder (logs, checkpoints, ``report.json``). ``status`` gets one
    line per step of the run (``print`` shows progress). ``learn``: store what the run
    measured of the LC apps in the knowledge base, as ``deepedge train`` does. Any other
    keyword is a :class:`~deepedge.control.RunOptions` field (``kb``, ``slo_guard``,
    ``profile_settings``, ``force_fallback``, ``refresh``, ...). A cluster given as a
    path is watched: a device added to the file joins the running job.

    Raises a :class:`~deepedge.errors.DeepEdgeError` (one line, with a hint) for what
    the job, the cluster or the run got wrong.
    """
    from deepedge.apps import summarize_apps
    from deepedge.cluster import make_backend
    from deepedge.control import RunController, RunOptions, get_policy

    get_policy(policy)
    spec, spec_path = _cluster(cluster)
    fields = {f.name for f in dataclasses.fields(RunOptions)} - {"out", "policies"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(
            f"deepedge.fit got unknown option(s) {unknown}",
            hint=f"use the fields of deepedge.control.RunOptions: {sorted(fields)}",
        )
    prepared = prepare(job)
    out = Path(out)
    from deepedge.byo.hooks import job_loss

    loss = job_loss(prepared.spec)
    before = evaluate(prepared.model, prepared.eval, loss) if prepared.eval else None
    run_options = RunOptions(out=out, policies=(policy,), **{"spec_path": spec_path, **options})
    ctl = RunController(
        spec,
        prepared.spec,
        run_options,
        train_set=prepared.train,
        initial_state=prepared.model.state_dict(),
        backend=backend or make_backend,
        status=status or (lambda msg: None),
    )
    report: dict[str, Any] = {"policy": policy, "job": prepared.spec.model_dump(mode="json")}
    lc: dict[str, AppLatencyStats] = {}
    try:
        with ctl:
            planning = ctl.plan()
            plan = planning.plans[policy]
            report["plan"] = plan.model_dump(mode="json")
            done: PolicyRun = ctl.train(plan)
            report.update(makespan_s=done.run.wall_s, lower_bound_s=planning.lower_bound_s)
            apps = {a.name: a.deadline_ms for a in ctl.cluster.apps}
            if apps and ctl.session is not None:
                records = ctl.session.lc_records(done.phase.start, done.phase.end)
                lc = summarize_apps(records, apps, start_s=done.phase.start, end_s=done.phase.end)
                report["lc"] = {n: s.to_dict() for n, s in lc.items()}
            if learn and apps:
                ctl.learn([done])
        model = prepared.model
        model.load_state_dict(done.run.final_state()["model"])
        after = evaluate(model, prepared.eval, loss) if prepared.eval else None
        for key, m in (("before", before), ("after", after)):
            if m is not None:
                report[f"eval_{key}"] = dataclasses.asdict(m)
    finally:  # what happened, also when it failed
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**report, **ctl.report()}, indent=2, default=str)
        (out / "report.json").write_text(text)
    return FitResult(
        model, prepared.spec, plan, planning, done, before, after, lc, ctl.report(), out
    )
