"""The run controller: one owner for a re-training run, from boot to done or failed.

``deepedge demo``, ``deepedge train``, ``deepedge plan``, ``deepedge profile run`` and the
benchmarks all drive a run through this class, so each of them boots, profiles, plans,
trains and learns the same way, and every decision lands in one :class:`EventLog`:

    with RunController(cluster, job, RunOptions(out=Path("runs/x"))) as ctl:
        planning = ctl.plan()                      # PROFILE, then PLAN
        done = ctl.train(planning.plans["deep-edge"])  # TRAIN
        ctl.learn([done])                          # ADAPT: the model learns from the run

It takes a :class:`~deepedge.cluster.BackendFactory` instead of building a cluster itself,
and keeps the session's profiles, so it can plan again (after learning, or over a changed
set of devices) without profiling again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deepedge.cluster import BackendFactory, make_backend
from deepedge.control.events import TERMINAL, Event, EventLog, RunState
from deepedge.control.policies import DEADLINE_POLICY, get_policy
from deepedge.control.retraining import Planning, Profiling, Retraining
from deepedge.control.stragglers import StragglerWatch
from deepedge.data import ArrayDataset, build_dataset
from deepedge.errors import DeepEdgeError
from deepedge.profile import (
    AffineModel,
    DeviceProfile,
    KnowledgeBase,
    ProfileSettings,
    default_kb_path,
)
from deepedge.session import EdgeSession, Phase
from deepedge.spec import ClusterSpec, ExcludedDevice, JobSpec, Plan
from deepedge.train import TrainRun, job_model

if TYPE_CHECKING:
    from deepedge.interference import LearnedRun
    from deepedge.train.pool import ProfilePointResult
    from deepedge.train.recovery import Failure

__all__ = ["PolicyRun", "RunController", "RunOptions"]


@dataclass(frozen=True)
class RunOptions:
    """How a run is set up; everything has a default but where its files go."""

    out: Path
    """Where the session's logs, checkpoints and monitor database go (``session_dir``),
    and the interference lab's files (``out/interference``)."""
    policies: tuple[str, ...] = (DEADLINE_POLICY,)
    """Policies to plan (names in :func:`~deepedge.control.policies.policy_names`)."""
    kb: KnowledgeBase | Path | None = None
    """An open knowledge base (left open), a path (opened and closed here), or None for
    the user's default one."""
    session_dir: Path | None = None
    """Default: ``out``."""
    settle_s: float = 0.0
    """LC load alone after boot, before profiling (the session's ``idle`` phase)."""
    refresh: bool = False
    """Measure profiles, the all-reduce and interference again even where stored ones
    are fresh."""
    exact: bool = False
    force_fallback: bool = False
    rebalance: bool = True
    """Change the split at a step boundary when a device drifts from its plan."""
    monitor_interval_s: float | None = 1.0
    metrics_port: int | None = None
    profile_settings: ProfileSettings = field(default_factory=ProfileSettings)


REBALANCE_GAIN = 0.1
"""A new split must shorten the slowest device's step by this share to be worth the
pause (a re-formed process group: about a second)."""


def _slowed(profile: DeviceProfile, factor: float) -> DeviceProfile:
    if factor == 1.0:
        return profile
    m = profile.model
    model = AffineModel(m.intercept_s * factor, m.slope_s * factor, m.batches, m.max_rel_residual)
    return replace(profile, model=model)


def _slowest_s(plan: Plan, profiles: Mapping[str, DeviceProfile]) -> float:
    """The plan's slowest device's compute per step under ``profiles`` (at its intensity)."""
    return max(
        profiles[n].step_s(b) / plan.intensities.get(n, 1.0)
        for n, b in plan.local_batches.items()
        if n in profiles
    )


@dataclass(frozen=True)
class PolicyRun:
    """One training run the controller made: which plan, what it measured, when."""

    policy: str
    plan: Plan
    run: TrainRun
    phase: Phase


class RunController:
    """Owns one run: the knowledge base, the session on the cluster, the profiles and
    plans, the training runs and the event log. A context manager: leaving it stops the
    cluster (leaving nothing behind) and records ``done``, or ``failed`` with the error."""

    def __init__(
        self,
        cluster: ClusterSpec,
        job: JobSpec,
        options: RunOptions,
        *,
        train_set: ArrayDataset | None = None,
        initial_state: Mapping[str, torch.Tensor] | None = None,
        backend: BackendFactory = make_backend,
        status: Callable[[str], None] = lambda msg: None,
    ) -> None:
        self.cluster = cluster
        self.job = job
        self.options = options
        self.backend = backend
        self.status = status
        for name in options.policies:
            get_policy(name)  # an unknown policy fails before anything boots
        self.train_set = (
            train_set
            if train_set is not None
            else build_dataset(job.dataset, "train", drifted=True)
        )
        self.initial_state = dict(
            initial_state
            if initial_state is not None
            else job_model(job, self.train_set).state_dict()
        )
        self.events = EventLog()
        self.state = RunState.BOOT
        self.session: EdgeSession | None = None
        self.retraining: Retraining | None = None
        self.profiling: Profiling | None = None
        self.planning: Planning | None = None
        self.runs: list[PolicyRun] = []
        self.lost: dict[str, str] = {}
        """Devices whose worker was lost during a run (left out of later plans), and how."""
        self.slowdown: dict[str, float] = {}
        """How much slower than profiled each device was seen to run (later plans use it)."""
        self._live_plan: Plan | None = None
        self._watch: StragglerWatch | None = None
        self._seen: set[str] = set()
        self.kb: KnowledgeBase | None = None
        self._owns_kb = False

    # --- states

    def _enter(self, state: RunState, message: str, **data: Any) -> None:
        self.state = state
        self.events.add(state, "state", message, **data)

    def _event(self, kind: str, message: str, **data: Any) -> Event:
        return self.events.add(self.state, kind, message, **data)

    @property
    def needs_interference(self) -> bool:
        return bool(self.cluster.apps) and any(
            get_policy(p).needs_interference for p in self.options.policies
        )

    def boot(self) -> RunController:
        """The interference model (profiled first where it does not cover the cluster's LC
        apps: its lab boots the devices itself, so before the session), then the session:
        devices, LC apps under load, training agents, monitor."""
        opts = self.options
        self._enter(RunState.BOOT, f"booting {len(self.cluster.devices)} devices")
        if isinstance(opts.kb, KnowledgeBase):
            self.kb = opts.kb
        else:
            self.kb = KnowledgeBase(opts.kb if opts.kb is not None else default_kb_path())
            self._owns_kb = True
        if self.needs_interference:
            from deepedge.interference import ensure_model

            started = time.monotonic()
            ensure_model(
                self.cluster,
                self.job,
                self.kb,
                opts.out / "interference",
                refresh=opts.refresh,
                force_fallback=opts.force_fallback,
                status=self.status,
                backend=self.backend,
            )
            self._event(
                "interference",
                f"interference model ready in {time.monotonic() - started:.1f} s",
                seconds=time.monotonic() - started,
            )
        self.session = EdgeSession(
            self.cluster,
            opts.session_dir or opts.out,
            force_fallback=opts.force_fallback,
            status=self.status,
            monitor_interval_s=opts.monitor_interval_s,
            metrics_port=opts.metrics_port,
            backend=self.backend,
        )
        self.session.start()
        self._event(
            "cluster",
            f"cluster up: {self.session.cluster.emulation}, {self.session.cluster.network}",
            emulation=self.session.cluster.emulation,
        )
        self.retraining = Retraining(
            self.session,
            self.job,
            self.train_set,
            self.initial_state,
            kb=self.kb,
            profile_settings=opts.profile_settings,
            exact=opts.exact,
        )
        if opts.settle_s > 0:
            start = time.time()
            time.sleep(opts.settle_s)
            self.session.mark("idle", start)
        return self

    def _ready(self) -> Retraining:
        if self.retraining is None or self.session is None:
            raise RuntimeError("the run controller has not booted (use it as a context manager)")
        return self.retraining

    def profile(
        self, *, on_run: Callable[[Mapping[str, ProfilePointResult]], None] | None = None
    ) -> Profiling:
        """Each device's step time under its live LC load, and the all-reduce: reused from
        the knowledge base where fresh, measured where not."""
        retraining = self._ready()
        assert self.session is not None
        self._enter(RunState.PROFILE, "profiling the devices under their LC load")
        start = time.time()
        profiling = retraining.profile(refresh=self.options.refresh, on_run=on_run)
        self.session.mark("profile", start)
        reused = [n for n, p in profiling.profiles.items() if p.reused]
        self._event(
            "profiled",
            f"profiles: {len(profiling.profiles) - len(reused)} measured, {len(reused)} "
            f"reused ({profiling.profiling_s:.1f} s)",
            measured=sorted(set(profiling.profiles) - set(reused)),
            reused=sorted(reused),
            seconds=profiling.profiling_s,
        )
        for e in profiling.excluded:
            self._event("exclude", f"left out {e.device}: {e.reason}", device=e.device)
        self.profiling = profiling
        return profiling

    def plan(
        self,
        policies: Sequence[str] | None = None,
        *,
        on_run: Callable[[Mapping[str, ProfilePointResult]], None] | None = None,
    ) -> Planning:
        """Plan ``policies`` (default: the options') from the session's profiles, profiling
        first if this run has not yet."""
        retraining = self._ready()
        if self.profiling is None:
            self.profile(on_run=on_run)
        assert self.profiling is not None
        names = tuple(policies) if policies is not None else self.options.policies
        self._enter(RunState.PLAN, f"planning {', '.join(names)}")
        planning = retraining.plan_from(self._surviving(), names)
        for name, plan in planning.plans.items():
            self._event(
                "plan",
                f"{name}: {plan.describe()}",
                policy=name,
                local_batches=dict(plan.local_batches),
                intensities=dict(plan.intensities),
                predicted_step_s=plan.predicted_step_s,
            )
            for e in plan.excluded:
                if e.device not in {x.device for x in self.profiling.excluded}:
                    self._event("exclude", f"{name} leaves out {e.device}: {e.reason}")
        if self.planning is None:
            self.planning = planning
        else:  # a re-plan replaces only the policies it planned
            self.planning = replace(planning, plans={**self.planning.plans, **planning.plans})
        return planning

    def train(
        self,
        plan: Plan,
        *,
        on_step: Callable[[int, int], None] | None = None,
        timeout_s: float | None = None,
        resume_from: Path | None = None,
        log_samples: bool = False,
    ) -> PolicyRun:
        """Run ``plan`` from the initial weights (``resume_from``: from that checkpoint's
        model, optimiser and epoch); a session phase named after its policy.

        The run is elastic: a lost worker (dead, stopped, silent) is fenced, the policy
        plans again over the survivors, and they go on from the last completed step with
        the model they hold, without a restart (:meth:`_recover`).
        """
        retraining = self._ready()
        assert self.session is not None
        self._enter(RunState.TRAIN, f"training with {plan.policy}", policy=plan.policy)
        if resume_from is not None:
            self._event("resume", f"resuming from {resume_from}", checkpoint=str(resume_from))
        self._follow(plan)
        run = retraining.run(
            plan,
            on_step=on_step,
            timeout_s=timeout_s,
            on_failure=lambda failure: self._recover(plan.policy, failure),
            watch=self._watch_step if self.options.rebalance else None,
            resume_from=resume_from,
            log_samples=log_samples,
        )
        done = PolicyRun(plan.policy, plan, run, self.session.phases[-1])
        self.runs.append(done)
        self._event(
            "run",
            f"{plan.policy} trained in {run.wall_s:.1f} s"
            + (f" after {len(run.recoveries)} recovery(ies)" if run.recoveries else ""),
            policy=plan.policy,
            wall_s=run.wall_s,
            recoveries=[r.to_dict() for r in run.recoveries],
        )
        return done

    def _surviving(self) -> Profiling:
        """The session's profiling without the devices lost so far, each device's step
        model scaled by how much slower than profiled it was seen to run."""
        assert self.profiling is not None
        gone = [
            ExcludedDevice(device=n, reason=f"lost during training: {why}")
            for n, why in self.lost.items()
        ]
        return replace(
            self.profiling,
            profiles={
                n: _slowed(p, self.slowdown.get(n, 1.0))
                for n, p in self.profiling.profiles.items()
                if n not in self.lost
            },
            excluded=[*self.profiling.excluded, *gone],
        )

    # --- stragglers: a device slower (or faster) than its plan beyond its noise

    def _follow(self, plan: Plan) -> None:
        """Watch the steps of ``plan`` (the running one) against what it predicted."""
        self._live_plan = plan
        self._watch = None
        if plan.micro_batch is not None or self.profiling is None:
            return  # dynamic dispatch balances itself
        profiles = self._surviving().profiles
        # a step's compute excludes a throttled trainer's pacing sleeps: no intensity here
        shares = {n: b for n, b in plan.local_batches.items() if n in profiles}
        expected = {n: profiles[n].step_s(b) for n, b in shares.items()}
        spread = {n: profiles[n].relative_spread() for n in expected}
        self._watch = StragglerWatch(expected, spread)
        self._seen: set[str] = set()

    def _watch_step(self, device: str, event: dict[str, Any]) -> Plan | None:
        """Each rank's step of the running plan; a plan to switch to when a device has
        drifted from its plan beyond its noise for two steps and a new split pays."""
        if self._watch is None or device not in self._watch.expected_s:
            return None
        if device not in self._seen:  # a segment's first step warms up: not a sign
            self._seen.add(device)
            return None
        self._watch.observe(device, float(event["compute_s"]))
        # faster than planned only counts for a device planned as slowed: back to its
        # profile (a device at its profiled speed having a few quick steps is noise)
        drifted = {
            n: f for n, f in self._watch.off_plan().items() if f > 1 or self.slowdown.get(n, 1) > 1
        }
        if not drifted:
            return None
        return self._rebalance(drifted)

    def _rebalance(self, drifted: dict[str, float]) -> Plan | None:
        retraining = self._ready()
        current = self._live_plan
        for n, factor in drifted.items():  # never faster than profiled
            self.slowdown[n] = max(1.0, self.slowdown.get(n, 1.0) * factor)
        surviving = self._surviving()
        profiles = surviving.profiles
        said = ", ".join(f"{n} {f:.2f}x its plan" for n, f in drifted.items())
        try:
            plan = retraining.plan_from(surviving, (current.policy,)).plans[current.policy]
        except (DeepEdgeError, KeyError) as err:
            self._event("straggler", f"{said}; cannot plan again: {err}")
            self._follow(current)
            return None
        before, after = _slowest_s(current, profiles), _slowest_s(plan, profiles)
        if plan.local_batches == current.local_batches or after > (1 - REBALANCE_GAIN) * before:
            self._event(
                "straggler",
                f"{said}; keeping the split (a new one would take {after * 1e3:.0f} ms "
                f"per step against {before * 1e3:.0f} ms)",
            )
            self._follow(current)
            return None
        self._event(
            "rebalance",
            f"{said}: {plan.describe()} (slowest device {before * 1e3:.0f} -> "
            f"{after * 1e3:.0f} ms per step)",
            drift=drifted,
            local_batches=dict(plan.local_batches),
        )
        self._follow(plan)
        return plan

    def _recover(self, policy: str, failure: Failure) -> Plan | None:
        """A worker was lost mid-run: plan ``policy`` again over the survivors (None when
        it cannot be planned there, which ends the run with the loss)."""
        retraining = self._ready()
        self.lost.update(failure.lost)
        self._event(
            "failure",
            "lost "
            + "; ".join(f"{n}: {why}" for n, why in failure.lost.items())
            + f" (noticed {failure.detection_s:.1f} s after its last sign of life); "
            f"going on from step {failure.completed_steps}",
            lost=failure.lost,
            detection_s=failure.detection_s,
            completed_steps=failure.completed_steps,
        )
        self._enter(RunState.ADAPT, f"re-planning {policy} over {len(failure.survivors)} survivors")
        try:
            plan = retraining.plan_from(self._surviving(), (policy,)).plans[policy]
        except (DeepEdgeError, KeyError) as err:
            self._event("error", f"cannot plan {policy} over the survivors: {err}")
            return None
        self._event(
            "replan",
            f"{policy} over the survivors: {plan.describe()}",
            policy=policy,
            local_batches=dict(plan.local_batches),
        )
        self._enter(RunState.TRAIN, f"training again with {policy}")
        self._follow(plan)
        return plan

    def learn(self, runs: Sequence[PolicyRun]) -> LearnedRun:
        """Store what ``runs`` measured of every LC app and refit the interference model,
        so the next deep-edge plan rests on them too."""
        retraining = self._ready()
        self._enter(RunState.ADAPT, f"learning from {len(runs)} run(s)")
        learned = retraining.learn([(r.plan, r.phase) for r in runs])
        self._event("learn", learned.describe(), rows=len(learned.rows))
        return learned

    # --- end

    def close(self, error: BaseException | None = None) -> None:
        """Stop the cluster and record how the run ended. Idempotent."""
        if self.state in TERMINAL:
            return
        try:
            if self.session is not None:
                self.session.stop()
        finally:
            if self._owns_kb and self.kb is not None:
                self.kb.close()
            if error is None:
                self._enter(RunState.DONE, "done")
            else:
                why = str(error).splitlines()[0] if str(error) else type(error).__name__
                self._enter(RunState.FAILED, f"failed: {why}", error=type(error).__name__)

    def __enter__(self) -> RunController:
        try:
            return self.boot()
        except BaseException as err:
            self.close(err)
            raise

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.close(exc)

    def report(self) -> dict[str, Any]:
        """The controller's part of ``report.json``: its final state and every event."""
        return {"state": self.state.value, "events": self.events.to_list()}
