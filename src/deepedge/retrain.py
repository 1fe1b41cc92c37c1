"""One re-training job on a running edge session: exclude, probe, plan, train per policy.

Shared by ``deepedge demo``, ``deepedge train`` and the benchmarks, so every number they
report comes from the same steps: memory filter → timed probe on each remaining device
(under its live LC load) → plans → DDP runs from the same starting weights.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from deepedge.data import ArrayDataset
from deepedge.errors import PlanInfeasible
from deepedge.models import estimate_training_memory_mb
from deepedge.plan import (
    equal_split,
    fastest_single,
    lower_bound_s,
    memory_exclusions,
    proportional_split,
)
from deepedge.session import EdgeSession
from deepedge.spec import ExcludedDevice, JobSpec, Plan
from deepedge.train.local import job_model
from deepedge.train.pool import ProbeResult, TrainRun

__all__ = ["POLICIES", "Planning", "Retraining"]

POLICIES = ("proportional", "equal", "fastest-single")


@dataclass(frozen=True)
class Planning:
    probes: dict[str, ProbeResult]
    excluded: list[ExcludedDevice]
    plans: dict[str, Plan]
    lower_bound_s: float
    total_samples: int

    @property
    def throughput(self) -> dict[str, float]:
        return {n: p.samples_per_s for n, p in self.probes.items()}


@dataclass
class Retraining:
    session: EdgeSession
    job: JobSpec
    train_set: ArrayDataset
    initial_state: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        # A fresh name per job: agents cache data sets by path for the session's lifetime.
        self.run_tag = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        data_dir = self.session.workdir / "data" / self.run_tag
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_path = self.train_set.save(data_dir / "train.npz")
        self.state_path = data_dir / "initial-state.pt"
        torch.save(self.initial_state, self.state_path)

    def required_memory_mb(self) -> dict[str, float]:
        """Worker runtime (measured) + data + model, optimiser, activations at the whole batch.

        The whole global batch is the worst case any one device can be handed.
        """
        job_mb = estimate_training_memory_mb(
            job_model(self.job, self.train_set),
            self.train_set.images.shape[1:],
            self.job.global_batch,
            optimizer=self.job.optimizer.name,
        )
        # every agent holds the training set twice: uint8 as loaded, float32 as tensors
        data_mb = self.train_set.images.nbytes * 5 / 2**20
        return {n: rt + job_mb + data_mb for n, rt in self.session.agents.runtime_mb.items()}

    def plan(self, policies: Sequence[str] = POLICIES, *, probe_steps: int = 5) -> Planning:
        spec = self.session.spec
        excluded = memory_exclusions(spec.devices, spec.apps, self.required_memory_mb())
        usable = [d.name for d in spec.devices if d.name not in {e.device for e in excluded}]
        if not usable:
            raise PlanInfeasible(
                "no device can hold the job: "
                + "; ".join(f"{e.device}: {e.reason}" for e in excluded),
                hint="use a smaller model or global batch, or add devices with more memory",
            )
        probe_batch = max(1, math.ceil(self.job.global_batch / len(usable)))
        probes = self.session.agents.probe(
            self.job,
            self.data_path,
            dict.fromkeys(usable, probe_batch),
            steps=probe_steps,
            state=self.state_path,
        )
        throughput = {n: p.samples_per_s for n, p in probes.items()}
        builders: dict[str, Callable[[], Plan]] = {
            "proportional": lambda: proportional_split(
                throughput, self.job.global_batch, excluded=excluded
            ),
            "equal": lambda: equal_split(
                usable, self.job.global_batch, excluded=excluded, throughput=throughput
            ),
            "fastest-single": lambda: fastest_single(
                throughput, self.job.global_batch, excluded=excluded
            ),
        }
        total = self.job.epochs * len(self.train_set)
        return Planning(
            probes,
            excluded,
            {p: builders[p]() for p in policies},
            lower_bound_s(total, throughput),
            total,
        )

    def run(
        self,
        plan: Plan,
        *,
        on_step: Callable[[int, int], None] | None = None,
        timeout_s: float | None = None,
    ) -> TrainRun:
        """Train from the initial weights with ``plan``; the run is marked as a session phase.

        Checkpoints go to a directory of their own per run, so an earlier run's files in a
        reused output folder are neither overwritten nor mistaken for this run's. Without
        ``timeout_s`` the run may take ten times its predicted compute (at least 10 min).
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
            )
        finally:
            self.session.mark(plan.policy, start)
        return run
