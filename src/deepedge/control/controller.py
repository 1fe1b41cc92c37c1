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

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from deepedge.byo.data import TensorData
from deepedge.cluster import BackendFactory, SpecWatch, make_backend
from deepedge.control.events import TERMINAL, Event, EventLog, RunState
from deepedge.control.feed import RunFeed
from deepedge.control.policies import DEADLINE_POLICY, get_policy
from deepedge.control.retraining import Planning, Profiling, Retraining
from deepedge.control.slo_guard import GuardAction, GuardSettings, SloGuard
from deepedge.control.stragglers import StragglerWatch
from deepedge.data import ArrayDataset, build_dataset
from deepedge.errors import DeepEdgeError, UsageError
from deepedge.profile import (
    DeviceProfile,
    KnowledgeBase,
    ProfileSettings,
    default_kb_path,
)
from deepedge.serving.lc_rates import (
    LC_RATES,
    LcRates,
    PlannedRate,
    check_forecastable,
    describe_rates,
    planning_rates,
    spec_at_planning_rates,
    trace_peaks,
)
from deepedge.session import EdgeSession, Phase
from deepedge.spec import ClusterSpec, DeviceSpec, ExcludedDevice, JobSpec, Plan
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
    slo_guard: GuardSettings | None = field(default_factory=GuardSettings)
    """Cut a device's training when an LC app there nears its deadline while it trains
    (None: off, e.g. to measure what a plan alone does to the apps)."""
    spec_path: Path | None = None
    """The cluster spec's file: a device added to it while the run goes on (``deepedge
    cluster add``, or an edit) joins the session (:meth:`RunController.join`)."""
    monitor_interval_s: float | None = 1.0
    metrics_port: int | None = None
    profile_settings: ProfileSettings = field(default_factory=ProfileSettings)
    lc_rates: LcRates = "forecast-peak"
    """What policies that protect LC deadlines (deep-edge) plan apps with a ``rate_trace``
    at: ``forecast-peak``, the peak of the forecast's upper quantile over the job's
    predicted duration (:meth:`RunController.plan`); ``current``, the spec's rate (the
    rate at the replay start). Apps without a trace are planned at their rate either way."""


REBALANCE_GAIN = 0.1
"""A new split must shorten the slowest device's step by this share to be worth the
pause (a re-formed process group: about a second)."""
BENCH_SLOWDOWN = 4.0
"""A device seen this many times slower than profiled leaves the plan instead of keeping a
small share: starved that much (a CPU hog beside a trainer that yields the CPU), it also
holds up every collective and a re-formed group's rendezvous, which its compute does not
show. It is probed on the side (:data:`PROBE_S`) and comes back once it is fast again."""
PROBE_S = 3.0
"""How often a benched device's speed is measured again, alone, while the others train."""
JOIN_COST_S = 2.0
"""What taking a device into a running job costs the others: the pause at a step
boundary, the re-formed group, and the state sent to the new member. A join must save
more than this over the steps left."""


def _slowed(profile: DeviceProfile, factor: float) -> DeviceProfile:
    return profile if factor == 1.0 else replace(profile, model=profile.model.scaled(factor))


def _worth_switching(before_s: float, after_s: float) -> bool:
    """Whether a step of ``after_s`` instead of ``before_s`` pays for a re-formed group."""
    return after_s <= (1 - REBALANCE_GAIN) * before_s


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
    segments: list[tuple[Plan, float, float]] = field(default_factory=list)
    """Each plan the run ran, from when to when: the first plan, then every rebalance,
    recovery and SLO-guard change (what the knowledge base learns from)."""


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
        train_set: ArrayDataset | TensorData | None = None,
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
        if options.lc_rates not in LC_RATES:
            raise UsageError(
                f"unknown lc_rates {options.lc_rates!r}", hint=f"use one of {list(LC_RATES)}"
            )
        if self._forecasts(options.policies):
            check_forecastable(cluster)  # a trace too short fails before anything boots
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
        self.benched: dict[str, float] = {}
        """Devices out of the plan for running :data:`BENCH_SLOWDOWN` times slower than
        profiled, and when they were last probed (time.monotonic())."""
        self._probing: set[str] = set()
        self._back: set[str] = set()  # benched devices a probe found fast again
        self._live_plan: Plan | None = None
        self._watch: StragglerWatch | None = None
        self._seen: set[str] = set()
        self.guard: SloGuard | None = None
        """The running plan's SLO guard (a new one per run: caps do not outlive it)."""
        self._lc_seen = 0  # session.live_records the guard has been given
        self._guard_tick = 0.0
        self._segments: list[tuple[Plan, float]] = []  # the running run's plans, since when
        self._joined: dict[str, DeviceProfile] = {}  # profiled joiners not yet planned with
        self._joins_lock = threading.Lock()
        self._stopping = threading.Event()  # close() has begun
        self._closing = threading.Event()  # joiner threads wait on it (see _boot_joiner)
        self._spec_watch = (
            SpecWatch(options.spec_path, known=[d.name for d in cluster.devices])
            if options.spec_path is not None
            else None
        )
        self._join_tick = 0.0
        self._steps_done = 0  # global steps the running plan completed (rank 0's view)
        self.feed: RunFeed | None = None
        """The run's events and progress, written live into the session's monitor store."""
        self.kb: KnowledgeBase | None = None
        self._owns_kb = False
        self.lc_rates: dict[str, PlannedRate] = {}
        """The rates the last plan put the LC apps at, where a forecast changed them
        (empty: every app at its spec's rate)."""

    # --- states

    def _enter(self, state: RunState, message: str, **data: Any) -> None:
        self.state = state
        self.events.add(state, "state", message, **data)

    def _event(self, kind: str, message: str, **data: Any) -> Event:
        return self.events.add(self.state, kind, message, **data)

    def _forecasts(self, policies: Sequence[str]) -> bool:
        """Whether planning ``policies`` plans traced LC apps at their forecast peak."""
        return (
            self.options.lc_rates == "forecast-peak"
            and any(a.rate_trace is not None for a in self.cluster.apps)
            and any(get_policy(p).needs_interference for p in policies)
        )

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
            # planning at the forecast peak asks the latency bound near each traced app's
            # peak, not at the night's rate it starts at: the plan's runs are measured there
            lab_spec = self.cluster
            if self._forecasts(opts.policies):
                lab_spec = spec_at_planning_rates(lab_spec, trace_peaks(lab_spec))
            ensure_model(
                lab_spec,
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
        if self.session.store is not None:  # the run, live, for the dashboard
            self.feed = RunFeed(
                self.session.store, steps_total=self.job.epochs * self._steps_per_epoch
            )
            for event in self.events:
                self.feed.event(event)
            self.events.listeners.append(self.feed.event)
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
        self._take_joiners()
        names = tuple(policies) if policies is not None else self.options.policies
        self._enter(RunState.PLAN, f"planning {', '.join(names)}")
        planning = self._plan_at_lc_rates(retraining, names)
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

    def _plan_at_lc_rates(self, retraining: Retraining, names: Sequence[str]) -> Planning:
        """``names`` planned from the session's profiles, traced LC apps at their forecast
        peak over the job when the options ask for it (``lc_rates``).

        The job's horizon is the planner's own estimate of its duration, which depends on
        the rates planned at; one iteration settles it: plan at the current rates, take
        the longest predicted duration of the policies that read the rates (step time x
        steps), forecast each traced app over that from where its replay is now, and plan
        again at the forecast peaks. A higher rate can only slow a plan down, so the
        forecast may end a little before the re-planned job; the upper quantile's margin
        covers that. The forecast covers the whole job, so re-plans during the run
        (stragglers, SLO guard, joins, recovery) keep these rates. Where no plan meets the
        deadlines at the peak, the plan at the current rates is kept, with an event: the
        SLO guard then cuts training when the rise comes.
        """
        profiling = self._surviving()
        retraining.lc_rates = {}
        self.lc_rates = {}
        planning = retraining.plan_from(profiling, names)
        if not self._forecasts(names):
            return planning
        assert self.session is not None
        horizon = self._duration_s(planning, names)
        rates = planning_rates(self.session.spec, horizon, at_s=self.session.lc_elapsed_s())
        self._event(
            "lc-rates",
            f"planning traced LC apps at their forecast peak over the job's predicted "
            f"{horizon:.0f} s: {describe_rates(rates)}",
            horizon_s=horizon,
            rates={n: r.to_dict() for n, r in rates.items() if r.forecast},
        )
        retraining.lc_rates = rates
        try:
            at_peak = retraining.plan_from(profiling, names)
        except DeepEdgeError as err:
            retraining.lc_rates = {}
            self._event(
                "lc-rates",
                f"no plan meets the deadlines at the forecast peak ({err.one_line()}); "
                "planning at the current rates, the SLO guard covers the rise",
            )
            return planning
        self.lc_rates = dict(rates)
        return at_peak

    def _duration_s(self, planning: Planning, names: Sequence[str]) -> float:
        """The longest predicted job duration among the policies that read LC rates."""
        steps = self.job.epochs * self._steps_per_epoch
        spans = [
            p.predicted_step_s * steps
            for n, p in planning.plans.items()
            if n in names and get_policy(n).needs_interference and p.predicted_step_s
        ]
        return max(spans, default=planning.feasible_lower_bound_s or planning.lower_bound_s)

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
        self._start_guard()
        self._segments = []
        self._steps_done = 0
        self._follow(plan)
        try:
            run = retraining.run(
                plan,
                on_step=on_step,
                timeout_s=timeout_s,
                on_failure=lambda failure: self._recover(plan.policy, failure),
                watch=self._watch_step,
                resume_from=resume_from,
                log_samples=log_samples,
            )
        finally:
            self.guard = None
        phase = self.session.phases[-1]
        ends = [t for _, t in self._segments[1:]] + [phase.end]
        segments = [
            (p, max(t, phase.start), end) for (p, t), end in zip(self._segments, ends, strict=True)
        ]
        done = PolicyRun(plan.policy, plan, run, phase, segments)
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
        ] + [
            ExcludedDevice(
                device=n,
                reason=f"{self.slowdown.get(n, 1.0):.1f}x slower than profiled: out of the "
                "plan until a probe finds it fast again",
            )
            for n in self.benched
            if n not in self.lost
        ]
        return replace(
            self.profiling,
            profiles={n: p for n, p in self._as_seen().items() if n not in self.benched},
            excluded=[*self.profiling.excluded, *gone],
        )

    def _as_seen(self) -> dict[str, DeviceProfile]:
        """Every device not lost, benched ones included, at the speed it was seen to run:
        what a running plan is judged by."""
        assert self.profiling is not None
        return {
            n: _slowed(p, self.slowdown.get(n, 1.0))
            for n, p in self.profiling.profiles.items()
            if n not in self.lost
        }

    def _predicted_compute(self, plan: Plan) -> dict[str, float]:
        """Each device's predicted compute per step: the plan's own prediction where its
        policy made one, else the device's profile at its share."""
        if plan.predicted_compute_s:
            return dict(plan.predicted_compute_s)
        if self.profiling is None:
            return {}
        profiles = self.profiling.profiles
        return {n: profiles[n].step_s(b) for n, b in plan.local_batches.items() if n in profiles}

    # --- stragglers: a device slower (or faster) than its plan beyond its noise

    def _follow(self, plan: Plan) -> None:
        """Watch the steps of ``plan`` (the running one) against what it predicted."""
        self._live_plan = plan
        self._segments.append((plan, time.time()))
        if self.feed is not None:
            self.feed.plan(plan, self._predicted_compute(plan), plan.predicted_comm_s)
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
        """Each rank's steps and heartbeats of the running plan; a plan to switch to when
        the SLO guard asks for one, or when a device has drifted from its plan beyond
        its noise for two steps and a new split pays."""
        if self.guard is not None and (switch := self._check_slos()) is not None:
            return switch
        if event.get("event") == "step" and event.get("rank") == 0:
            self._steps_done = int(event["epoch"]) * self._steps_per_epoch + event["step"] + 1
        if event.get("event") == "step" and self.feed is not None:
            self.feed.step(
                device,
                event.get("compute_s"),
                self._steps_done if event.get("rank") == 0 else None,
            )
        if (switch := self._check_joins()) is not None:
            return switch
        if self.benched and (switch := self._check_benched()) is not None:
            return switch
        if not self.options.rebalance or event.get("event") != "step":
            return None
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
        current = self._live_plan
        for n, factor in drifted.items():  # never faster than profiled
            self.slowdown[n] = max(1.0, self.slowdown.get(n, 1.0) * factor)
            if self.slowdown[n] >= BENCH_SLOWDOWN and len(current.local_batches) > 1:
                self.benched[n] = time.monotonic()
        surviving = self._surviving()
        profiles = self._as_seen()
        said = ", ".join(f"{n} {f:.2f}x its plan" for n, f in drifted.items())
        try:
            plan = self._plan_again(current.policy, surviving)
        except (DeepEdgeError, KeyError) as err:
            self._event("straggler", f"{said}; cannot plan again: {err}")
            self._follow(current)
            return None
        before, after = _slowest_s(current, profiles), _slowest_s(plan, profiles)
        if plan.local_batches == current.local_batches or not _worth_switching(before, after):
            self._event(
                "straggler",
                f"{said}; keeping the split (a new one would take {after * 1e3:.0f} ms "
                f"per step against {before * 1e3:.0f} ms)",
            )
            for n in current.local_batches:  # it stays in the plan: nothing to probe
                self.benched.pop(n, None)
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

    def _plan_again(self, policy: str, profiling: Profiling | None = None) -> Plan:
        """``policy`` planned again mid-run: over the surviving devices (slowed as seen),
        within the SLO guard's caps."""
        caps = self.guard.caps if self.guard is not None else None
        profiling = profiling or self._surviving()
        return self._ready().plan_from(profiling, (policy,), caps=caps).plans[policy]

    # --- SLO guard: an LC app nearing its deadline beside training

    def _start_guard(self) -> None:
        settings, session = self.options.slo_guard, self.session
        self.guard = None
        if settings is None or session is None or not self.cluster.apps:
            return
        apps = session.spec.apps
        self.guard = SloGuard(
            {a.name: a.deadline_ms for a in apps}, {a.name: a.device for a in apps}, settings
        )
        self._lc_seen = session.poll_lc()  # what came before this run is not its doing

    def _check_slos(self) -> Plan | None:
        """Feed the guard the LC requests completed since its last look (at most every
        0.1 s); apply what it decides. A cut takes effect at the device's next step, in
        place; a device taken out of the plan, or one whose cap is lifted, needs a new
        split, which is returned (to switch to at the next step boundary)."""
        assert self.guard is not None and self.session is not None
        now = time.time()
        if now - self._guard_tick < 0.1 or self._live_plan is None:
            return None
        self._guard_tick = now
        end = self.session.poll_lc()
        self.guard.observe(self.session.live_records[self._lc_seen : end])
        self._lc_seen = end
        live = self._live_plan
        actions = self.guard.check(
            now, {n: live.intensities.get(n, 1.0) for n in live.local_batches}
        )
        if not actions:
            return None
        for action in actions:
            self._event(
                "slo-guard",
                action.describe(),
                action=action.kind,
                device=action.device,
                app=action.app,
                p95_ms=action.p95_ms,
                deadline_ms=action.deadline_ms,
                intensity=action.after,
            )
        return self._guarded_plan(actions)

    def _guarded_plan(self, actions: Sequence[GuardAction]) -> Plan | None:
        live = self._live_plan
        assert live is not None and self.session is not None
        assert self.guard is not None
        throttled = dict(live.intensities)
        for a in actions:
            if a.kind == "restore":  # only a new plan knows the intensity it may have
                continue
            # out of the plan: until the new split runs, it trains as little as it may
            value = a.after or self.guard.settings.min_intensity
            if self.session.agents.throttle(a.device, value):
                throttled[a.device] = value
        current = live.model_copy(update={"intensities": throttled})
        self._live_plan = current
        self._segments.append((current, time.time()))
        try:
            plan = self._plan_again(live.policy)
        except (DeepEdgeError, KeyError) as err:
            self._event("slo-guard", f"cannot plan {live.policy} within the caps: {err}")
            return None
        must = any(
            (a.kind == "off" and a.device in live.local_batches)
            or (a.kind == "restore" and a.before == 0)
            for a in actions
        )
        profiles = self._as_seen()
        before, after = _slowest_s(current, profiles), _slowest_s(plan, profiles)
        if plan.local_batches == current.local_batches and not must:
            return None
        if not must and not _worth_switching(before, after):
            return None
        self._event(
            "replan",
            f"{live.policy} within the SLO guard's caps: {plan.describe()}",
            policy=live.policy,
            local_batches=dict(plan.local_batches),
            intensities=dict(plan.intensities),
        )
        self._follow(plan)
        return plan

    def _check_benched(self) -> Plan | None:
        """Probe each benched device every :data:`PROBE_S` (a thread: a short profile run
        on it alone); one found within 1.5x of its profile comes back like a joiner, when
        the planner predicts that it pays."""
        now = time.monotonic()
        agents = self.session.agents if self.session is not None else None
        for name, probed in list(self.benched.items()):
            if agents is None or agents.in_segment(name) or name in self._back:
                continue  # still leaving the running group, or already found fast
            if name not in self._probing and now - probed >= PROBE_S:
                self._probing.add(name)
                threading.Thread(
                    target=self._probe, args=(name,), name=f"probe-{name}", daemon=True
                ).start()
        if not self._back or self._live_plan is None:
            return None
        back, self._back = sorted(self._back), set()
        for name in back:
            self.benched.pop(name, None)
        return self._admit(back, kind="straggler")

    def _probe(self, name: str) -> None:
        retraining, session = self._ready(), self.session
        assert session is not None and self.profiling is not None
        profile = self.profiling.profiles[name]
        batch = max(1, min(profile.timings))  # a measured batch: its median is the reference
        try:
            result = session.agents.profile(
                self.job,
                retraining.data_path,
                {name: batch},
                steps=3,
                warmup=1,
                state=retraining.state_path,
                timeout_s=60.0,
            )
            times = result.points[name].step_times
        except (DeepEdgeError, KeyError, OSError) as err:
            self._event("straggler", f"probing {name} failed: {err}")
            times = []
        finally:
            self._probing.discard(name)
        if not times or name not in self.benched:
            return
        ratio = sorted(times)[len(times) // 2] / profile.timings[batch].median_s
        if ratio < 1.5:
            self.slowdown[name] = max(1.0, ratio)
            self._back.add(name)  # weighed by the next _check_benched
            self._event("straggler", f"{name} is back to {ratio:.2f}x its profile (probed)")
        else:
            self.benched[name] = time.monotonic()

    # --- joins: a device added while the session runs

    @property
    def _steps_per_epoch(self) -> int:
        return -(-len(self.train_set) // self.job.global_batch)

    def join(self, device: DeviceSpec) -> None:
        """Boot ``device`` into the running session and profile it on the side (a thread:
        training goes on). A running plan takes it in at a step boundary when the
        planner predicts that it pays (:meth:`_admit`); later plans include it."""
        self._ready()
        self._event("join", f"{device.name} joins: booting and profiling it on the side")
        threading.Thread(
            target=self._boot_joiner, args=(device,), name=f"join-{device.name}", daemon=True
        ).start()

    def _boot_joiner(self, device: DeviceSpec) -> None:
        retraining, session = self._ready(), self.session
        assert session is not None
        started = time.monotonic()
        try:
            session.add_device(device)
            profile = retraining.profile_joiner(device.name)
        except Exception as err:  # a thread of its own: nothing above it to report to
            if not self._stopping.is_set():  # not just the session stopping under it
                why = err.one_line() if isinstance(err, DeepEdgeError) else repr(err)
                self._event("join", f"{device.name} could not join: {why}", device=device.name)
            return
        with self._joins_lock:
            self._joined[device.name] = profile
        self._event(
            "join",
            f"{device.name} booted and profiled in {time.monotonic() - started:.1f} s "
            f"({profile.samples_per_s(self.job.global_batch):.0f} samples/s)",
            device=device.name,
            seconds=time.monotonic() - started,
        )
        # The device's processes die with the thread that spawned them (their parent-death
        # signal follows the spawning *thread*): this one lives as long as the session.
        self._closing.wait()

    def _take_joiners(self) -> list[str]:
        """Fold the joiners profiled since the last call into the session's profiles."""
        with self._joins_lock:
            joined, self._joined = self._joined, {}
        if joined and self.profiling is not None and self.session is not None:
            self.profiling = replace(self.profiling, profiles={**self.profiling.profiles, **joined})
            self.cluster = self.session.spec
        return list(joined)

    def _check_joins(self) -> Plan | None:
        """Devices newly in the spec file start joining (at most every 0.5 s); a joiner
        profiled since the last look is weighed against the running plan."""
        now = time.monotonic()
        if self._spec_watch is not None and now - self._join_tick > 0.5:
            self._join_tick = now
            for device in self._spec_watch.added():
                self.join(device)
        if not self._joined or self._live_plan is None:
            return None
        return self._admit(self._take_joiners())

    def _admit(self, names: list[str], *, kind: str = "join") -> Plan | None:
        """The running plan's policy planned again with the joiners: switched to when its
        predicted step (slowest device plus the all-reduce over one more member) saves
        more than :data:`JOIN_COST_S` over the steps left, and by
        :data:`REBALANCE_GAIN` a step. Reported beside EDDL's bandwidth-usage coefficient
        BUC = n / T_sync, which grows with n as long as a member costs the all-reduce
        less than it adds."""
        current = self._live_plan
        assert current is not None and self.profiling is not None
        retraining = self._ready()
        try:
            plan = self._plan_again(current.policy)
        except (DeepEdgeError, KeyError) as err:
            self._event(kind, f"cannot plan {current.policy} with {names}: {err}")
            return None
        profiles, comm = self._as_seen(), self.profiling.comm

        def sync_s(k: int) -> float:
            return comm.predict(k, retraining.grad_bytes) if comm and k > 1 else 0.0

        n, m = len(current.local_batches), len(plan.local_batches)
        before = _slowest_s(current, profiles) + sync_s(n)
        after = _slowest_s(plan, profiles) + sync_s(m)
        left = max(0, self.job.epochs * self._steps_per_epoch - self._steps_done)
        saving = (before - after) * left
        taken = [x for x in names if x in plan.local_batches]
        pays = bool(taken) and saving > JOIN_COST_S and _worth_switching(before, after)
        # EDDL's BUC needs an all-reduce on both sides (one device alone does not sync)
        buc = [k / sync_s(k) if sync_s(k) > 0 else None for k in (n, m)]
        eddl = (
            f"EDDL BUC n/T_sync {buc[0]:.1f} -> {buc[1]:.1f}/s (it "
            f"{'would' if buc[1] > buc[0] else 'would not'} add it)"
            if buc[0] is not None and buc[1] is not None
            else "EDDL BUC n/T_sync: no all-reduce before, so none to compare"
        )
        self._event(
            kind,
            f"{', '.join(names)}: predicted step {before * 1e3:.0f} -> {after * 1e3:.0f} ms "
            f"over {left} steps left ({'taken in' if pays else 'kept out'}: "
            f"{saving:+.1f} s against {JOIN_COST_S:g} s to join); {eddl}",
            devices=names,
            predicted_step_before_s=before,
            predicted_step_after_s=after,
            steps_left=left,
            pays=pays,
            buc_before=buc[0],
            buc_after=buc[1],
            local_batches=dict(plan.local_batches),
        )
        if not pays:
            return None
        self._follow(plan)
        return plan

    def _recover(self, policy: str, failure: Failure) -> Plan | None:
        """A worker was lost mid-run: plan ``policy`` again over the survivors (None when
        it cannot be planned there, which ends the run with the loss)."""
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
            plan = self._plan_again(policy)
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
        learned = retraining.learn(
            [seg for r in runs for seg in (r.segments or [(r.plan, r.phase.start, r.phase.end)])]
        )
        self._event("learn", learned.describe(), rows=len(learned.rows))
        return learned

    # --- end

    def close(self, error: BaseException | None = None) -> None:
        """Stop the cluster and record how the run ended. Idempotent."""
        if self.state in TERMINAL:
            return
        self._stopping.set()
        try:
            if self.feed is not None:
                self.feed.close()
            if self.session is not None:
                self.session.stop()
        finally:
            self._closing.set()
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
