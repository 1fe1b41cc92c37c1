"""One re-training job on a running edge session: exclude, profile, plan, train per policy.

The mechanism under the run controller (:mod:`deepedge.control.controller`), so every
number ``deepedge demo``, ``deepedge train`` and the benchmarks report comes from the same
steps: memory filter → throughput profile of each remaining
device under its live LC load (reused from the knowledge base when still valid) and the
all-reduce model → plans → DDP runs from the same starting weights.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from deepedge.byo.data import TensorData
from deepedge.byo.hooks import custom_memory_mb, custom_workload
from deepedge.control.policies import BASELINES, PlanInputs, get_policy
from deepedge.data import ArrayDataset
from deepedge.errors import PlanInfeasible
from deepedge.models import estimate_training_memory_mb, model_signature
from deepedge.plan import lower_bound_from_models, memory_exclusions
from deepedge.plan.heuristic import lower_bound_step_s
from deepedge.plan.problem import PlanningProblem
from deepedge.plan.profiled import step_sizes
from deepedge.profile import (
    CommModel,
    DeviceProfile,
    KnowledgeBase,
    ProfileSettings,
    default_batches,
    expected_step_s,
    fabric_key,
    measure_comm,
    measure_profiles,
    profile_key,
)
from deepedge.serving.lc_rates import PlannedRate, spec_at_planning_rates
from deepedge.session import EdgeSession
from deepedge.spec import ExcludedDevice, JobSpec, Plan
from deepedge.train.local import job_model
from deepedge.train.pool import ProfilePointResult, TrainRun
from deepedge.train.recovery import Failure

if TYPE_CHECKING:
    from deepedge.interference import LearnedRun

__all__ = ["Planning", "Profiling", "Retraining"]


@dataclass(frozen=True)
class Profiling:
    """What profiling measured, which every policy plans from."""

    profiles: dict[str, DeviceProfile]
    comm: CommModel | None
    excluded: list[ExcludedDevice]  # before planning: memory, failed profiling
    profiling_s: float  # wall time of profiling, near 0 when everything was reused
    comm_reused: bool = False


@dataclass(frozen=True)
class Planning:
    profiles: dict[str, DeviceProfile]
    comm: CommModel | None
    excluded: list[ExcludedDevice]
    plans: dict[str, Plan]
    lower_bound_s: float
    total_samples: int
    profiling_s: float  # wall time of profiling, near 0 when everything was reused
    comm_reused: bool = False
    grad_bytes: int = 0  # what one all-reduce moves per step
    feasible_lower_bound_s: float | None = None
    """T_min within the LC and memory limits (each device at its best allowed intensity
    and batch cap), when a policy that reads them (deep-edge) was planned;
    ``lower_bound_s`` ignores them."""

    @property
    def throughput(self) -> dict[str, float]:
        """Samples/s of each profiled device at the share the first plan gives it
        (or at its largest measured batch where that plan leaves it out)."""
        plan = next(iter(self.plans.values()), None)
        shares = plan.local_batches if plan else {}
        return {n: p.samples_per_s(shares.get(n, max(p.timings))) for n, p in self.profiles.items()}

    def comm_s(self, workers: int) -> float:
        """Predicted all-reduce seconds per step over ``workers`` devices."""
        return self.comm.predict(workers, self.grad_bytes) if self.comm else 0.0


@dataclass
class Retraining:
    session: EdgeSession
    job: JobSpec
    train_set: ArrayDataset | TensorData
    initial_state: dict[str, torch.Tensor]
    kb: KnowledgeBase | None = None
    """Where profiles are reused from and stored; the user's default knowledge base if None."""
    profile_settings: ProfileSettings = field(default_factory=ProfileSettings)
    exact: bool = False
    """Solve the deep-edge policy with the exact MILP instead of the heuristic."""
    lc_rates: Mapping[str, PlannedRate] = field(default_factory=dict)
    """The rates to plan LC apps at (app -> planned rate) instead of their spec's: the
    forecast peak over the job for traced apps (set by the run controller). Only the
    Deep-Edge problem reads them; profiles are measured, and keyed, under the live load."""

    def __post_init__(self) -> None:
        # A fresh name per job: agents cache data sets by path for the session's lifetime.
        self.run_tag = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        data_dir = self.session.workdir / "data" / self.run_tag
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_path = self.train_set.save(data_dir / "train.npz")
        self.state_path = data_dir / "initial-state.pt"
        torch.save(self.initial_state, self.state_path)
        if self.kb is None:
            self.kb = KnowledgeBase()  # default_kb_path() as of now
        self._model = model = job_model(self.job, self.train_set)  # architecture, for sizes
        # what DDP all-reduces each step: the trained parameters' gradients
        self.grad_bytes = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
        # the optimiser is part of the step's cost, so part of what a profile is valid for;
        # "/idle": trainers yield the CPU to LC apps (profiles from before did not)
        if self.job.custom is not None:  # a user's model (deepedge.fit): its own signature
            self.workload = custom_workload(self.job)
        else:
            sig = model_signature(model, self.train_set.images.shape[1:])
            blocks = "" if self.job.model.blocks == "all" else f"/{self.job.model.blocks}"
            self.workload = f"{sig}{blocks}/{self.job.optimizer.name}/idle"

    def required_memory_mb(self) -> dict[str, float]:
        """Worker runtime (measured) + data + model, optimiser, activations at the whole batch.

        The whole global batch is the worst case any one device can be handed.
        """
        job_mb = self._job_memory_mb(self.job.global_batch)
        return {n: rt + job_mb for n, rt in self.session.agents.runtime_mb.items()}

    def _job_memory_mb(self, batch: int) -> float:
        """Data + model, optimiser and activations at ``batch`` (without the runtime)."""
        if self.job.custom is not None:  # measured on the user's model by deepedge.fit
            return custom_memory_mb(self.job.custom, batch) + self.train_set.nbytes / 2**20
        job_mb = estimate_training_memory_mb(
            self._model,
            self.train_set.images.shape[1:],
            batch,
            optimizer=self.job.optimizer.name,
        )
        # every agent holds the training set twice: uint8 as loaded, float32 as tensors
        return job_mb + self.train_set.images.nbytes * 5 / 2**20

    def plan(
        self,
        policies: Sequence[str] = BASELINES,
        *,
        refresh: bool = False,
        on_run: Callable[[Mapping[str, ProfilePointResult]], None] | None = None,
    ) -> Planning:
        """Profile (or reuse profiles), then build each policy's plan from the same models."""
        for p in policies:
            get_policy(p)  # an unknown name fails before profiling
        return self.plan_from(self.profile(refresh=refresh, on_run=on_run), policies)

    def profile(
        self,
        *,
        refresh: bool = False,
        on_run: Callable[[Mapping[str, ProfilePointResult]], None] | None = None,
    ) -> Profiling:
        """Each device's step-time profile under its live LC load and the all-reduce model,
        reused from the knowledge base where still valid; devices that cannot hold the job
        or fail while profiling are left out, with why."""
        assert self.kb is not None
        spec = self.session.spec
        excluded = memory_exclusions(spec.devices, spec.apps, self.required_memory_mb())
        usable = [d for d in spec.devices if d.name not in {e.device for e in excluded}]
        if not usable:
            raise PlanInfeasible(
                "no device can hold the job: "
                + "; ".join(f"{e.device}: {e.reason}" for e in excluded),
                hint="use a smaller model or global batch, or add devices with more memory",
            )
        emulation = self.session.cluster.emulation
        cores = {d.name: d.cpu_cores or 1.0 for d in usable}
        started = time.monotonic()
        profiles, failed = self._measure(
            default_batches(cores, self.job.global_batch),
            self.profile_settings,
            refresh=refresh,
            on_run=on_run,
        )
        excluded += [
            ExcludedDevice(device=n, reason=f"failed while profiling: {why}")
            for n, why in failed.items()
        ]
        if not profiles:
            raise PlanInfeasible(
                "every device failed while profiling: "
                + "; ".join(f"{n}: {why}" for n, why in failed.items()),
                hint="see the agents' logs in the session's logs/ folder",
            )
        # by catalog capacity, not by the (noisy) profiles: the same cluster must map to the
        # same all-reduce key every time for the stored model to be reused
        fastest_first = sorted(profiles, key=lambda n: -cores[n])
        comm, comm_reused = measure_comm(
            self.session.agents,
            self.kb,
            fabric_key(spec, fastest_first, emulation),
            fastest_first,
            self.grad_bytes,
            refresh=refresh,
        )
        return Profiling(profiles, comm, excluded, time.monotonic() - started, comm_reused)

    def profile_joiner(self, name: str) -> DeviceProfile:
        """The step-time profile of a device that joined the running session, measured on
        its own (while the others may train) or reused from the knowledge base; its
        batches are half and 1.5 times its expected share of the global batch among all
        the devices now. Quick (two batch sizes, at most 8 timed steps each): the decision
        it serves is due while the job runs."""
        cores = {d.name: d.cpu_cores or 1.0 for d in self.session.spec.devices}
        batches = default_batches(cores, self.job.global_batch, factors=(0.5, 1.5))
        quick = dataclasses.replace(
            self.profile_settings,
            steps=min(self.profile_settings.steps, 8),
            warmup=min(self.profile_settings.warmup, 2),
        )
        profiles, failed = self._measure([{name: r[name]} for r in batches], quick)
        if name not in profiles:
            raise PlanInfeasible(
                f"device {name} failed while profiling: {failed.get(name, 'no profile')}",
                hint="see its agent's log in the session's logs/ folder",
            )
        return profiles[name]

    def _measure(
        self,
        runs: Sequence[Mapping[str, int]],
        settings: ProfileSettings,
        *,
        refresh: bool = False,
        on_run: Callable[[Mapping[str, ProfilePointResult]], None] | None = None,
    ) -> tuple[dict[str, DeviceProfile], dict[str, str]]:
        """:func:`~deepedge.profile.measure_profiles` of the devices in ``runs`` (device ->
        local batch per run) for this job, under their knowledge-base keys."""
        assert self.kb is not None
        spec, emulation = self.session.spec, self.session.cluster.emulation
        names = {n for run in runs for n in run}
        keys = {
            d.name: profile_key(d, spec, self.workload, emulation)
            for d in spec.devices
            if d.name in names
        }
        return measure_profiles(
            self.session.agents,
            self.kb,
            keys,
            self.job,
            self.data_path,
            runs=runs,
            refresh=refresh,
            state=self.state_path,
            settings=settings,
            on_run=on_run,
        )

    def plan_from(
        self,
        profiling: Profiling,
        policies: Sequence[str],
        *,
        caps: Mapping[str, float] | None = None,
    ) -> Planning:
        """Each policy's plan from the same profiles (no measuring: cheap to call again).

        ``caps``: the most training intensity a device may get (the SLO guard's; 0 leaves
        it out). The Deep-Edge problem drops the intensity levels above a cap; a policy
        blind to intensities plans the capped device as that much slower and runs it at
        its cap.
        """
        chosen = [get_policy(p) for p in policies]
        profiles, comm, excluded = profiling.profiles, profiling.comm, list(profiling.excluded)
        caps = dict(caps or {})
        off = [n for n, c in caps.items() if c <= 0 and n in profiles]
        profiles = {n: p for n, p in profiles.items() if n not in off}
        excluded += [
            ExcludedDevice(device=n, reason="SLO guard: an LC app neared its deadline") for n in off
        ]
        caps = {n: c for n, c in caps.items() if 0 < c < 1 and n in profiles}
        models = {n: p.model for n, p in profiles.items()}
        blind_models = {n: m.scaled(1 / caps[n]) if n in caps else m for n, m in models.items()}

        allreduce_s = comm.predict(len(models), self.grad_bytes) if comm else 0.0
        B = self.job.global_batch
        problem = (
            self._deadline_problem(profiles, comm, caps)
            if any(p.needs_interference for p in chosen)
            else None
        )
        inputs = PlanInputs(
            blind_models,
            {n: p.samples_per_s(B) * caps.get(n, 1.0) for n, p in profiles.items()},
            B,
            excluded,
            allreduce_s,
            deadline_problem=problem,
            exact=self.exact,
        )
        feasible_lb = None
        if problem is not None:
            sizes = step_sizes(len(self.train_set), B, self.job.epochs)
            per_size = {
                b: lower_bound_step_s(dataclasses.replace(problem, global_batch=b))
                for b in set(sizes)
            }
            feasible_lb = math.fsum(per_size[b] for b in sizes)
        total = self.job.epochs * len(self.train_set)
        plans = {p.name: p.plan(inputs) for p in chosen}
        for p in chosen:
            plan = plans[p.name]
            if caps and not p.needs_interference:
                capped = {n: c for n, c in caps.items() if n in plan.local_batches}
                plan = plan.model_copy(update={"intensities": {**plan.intensities, **capped}})
            if plan.micro_batch is None:  # a static split waits for its slowest device each step
                plan = self._with_expected_step(plan, profiles, comm)
            plans[p.name] = plan
        return Planning(
            profiles,
            comm,
            excluded,
            plans,
            lower_bound_from_models(models, len(self.train_set), B, self.job.epochs),
            total,
            profiling.profiling_s,
            profiling.comm_reused,
            self.grad_bytes,
            feasible_lb,
        )

    def _with_expected_step(
        self, plan: Plan, profiles: Mapping[str, DeviceProfile], comm: CommModel | None
    ) -> Plan:
        """``plan`` predicting its step as the expected slowest device (each one's measured
        step-to-step spread around its planned compute) plus the all-reduce: the largest
        median alone misses the straggler wait every synchronous step pays."""
        k = len(plan.local_batches)
        comm_s = comm.predict(k, self.grad_bytes) if comm and k > 1 else 0.0
        step = expected_step_s(
            profiles, plan.local_batches, comm_s, compute_s=plan.predicted_compute_s
        )
        return plan.model_copy(update={"predicted_step_s": step, "predicted_comm_s": comm_s})

    def training_memory_mb(self, batch: int) -> float:
        """Memory one worker needs at ``batch`` samples per step (runtime, data, model, step)."""
        runtime = max(self.session.agents.runtime_mb.values(), default=0.0)
        return runtime + self._job_memory_mb(batch)

    def _deadline_problem(
        self,
        profiles: Mapping[str, DeviceProfile],
        comm: CommModel | None,
        caps: Mapping[str, float],
    ) -> PlanningProblem:
        """The Deep-Edge planning problem of the profiled devices (LC limits from the
        stored interference model, which must cover their apps for this job), without
        the intensity levels above a device's cap."""
        from deepedge.interference import (
            InterferenceModel,
            NoInterferenceModel,
            device_key,
            missing_devices,
        )
        from deepedge.plan.deadline import cluster_problem

        assert self.kb is not None
        spec = spec_at_planning_rates(self.session.spec, self.lc_rates)
        emulation = self.session.cluster.emulation
        keys = {d.name: device_key(d, spec, emulation) for d in spec.devices}
        apps = [a for a in spec.apps if a.device in profiles]
        model = InterferenceModel.load(self.kb) if apps else None
        missing = [
            n
            for n in (missing_devices(model, spec, keys, self.job) if model else [])
            if n in profiles
        ]
        if missing:
            raise NoInterferenceModel(
                f"the stored interference model cannot check the LC apps on {', '.join(missing)} "
                "for this job",
                hint="`deepedge train --policy deep-edge` profiles them first; or run "
                "`deepedge interference profile` and `deepedge interference fit` for this job",
            )
        problem = cluster_problem(
            [d for d in spec.devices if d.name in profiles],
            apps,
            {n: (p.model.intercept_s, p.model.slope_s) for n, p in profiles.items()},
            global_batch=self.job.global_batch,
            comm_s=lambda k: comm.predict(k, self.grad_bytes) if comm and k > 1 else 0.0,
            need_mb=self.training_memory_mb,
            interference=model,
            device_keys=keys,
        )
        return problem.with_caps(caps, why="SLO guard") if caps else problem

    def run(
        self,
        plan: Plan,
        *,
        on_step: Callable[[int, int], None] | None = None,
        timeout_s: float | None = None,
        on_failure: Callable[[Failure], Plan | None] | None = None,
        watch: Callable[[str, dict], Plan | None] | None = None,
        resume_from: Path | None = None,
        log_samples: bool = False,
    ) -> TrainRun:
        """Train from the initial weights with ``plan``; the run is marked as a session phase.

        Checkpoints go to a directory of their own per run, so an earlier run's files in a
        reused output folder are neither overwritten nor mistaken for this run's. Without
        ``timeout_s`` the run may take ten times its predicted compute (at least 10 min).
        ``on_failure``, ``watch``, ``resume_from`` and ``log_samples`` as in
        :meth:`~deepedge.train.pool.AgentPool.train` (elastic runs, checkpoint resume).
        """
        ckpt_dir = self.session.workdir / "checkpoints" / f"{plan.policy}-{self.run_tag}"
        if timeout_s is None:
            steps = self.job.epochs * math.ceil(len(self.train_set) / self.job.global_batch)
            timeout_s = max(600.0, 10 * steps * (plan.predicted_step_s or 60.0))
        start = time.time()
        try:
            run = self.session.agents.train(
                self.job,
                self.data_path,
                plan,
                checkpoint_dir=ckpt_dir,
                state=self.state_path,
                on_step=on_step,
                timeout_s=timeout_s,
                on_failure=on_failure,
                watch=watch,
                resume_from=resume_from,
                log_samples=log_samples,
            )
        finally:
            self.session.mark(plan.policy, start)
        return run

    def learn(self, runs: Sequence[tuple[Plan, float, float]]) -> LearnedRun:
        """Store what each run (its plan, start and end) measured of every LC app in the
        knowledge base and refit the interference model once, so the next deep-edge plan
        rests on these runs too (see :mod:`deepedge.interference.learning`)."""
        from deepedge.interference import LearnedRun, learn_from_runs

        assert self.kb is not None
        if not runs:
            return LearnedRun([], {}, refitted=False)
        records = self.session.lc_records(min(s for _, s, _ in runs), max(e for _, _, e in runs))
        return learn_from_runs(
            self.kb,
            self.session.spec,
            self.job,
            list(runs),
            records,
            emulation=self.session.cluster.emulation,
        )
