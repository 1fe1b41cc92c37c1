"""Training-throughput profiles per device: measure, store in the knowledge base, reuse.

A profile answers "how long does one training step of this model take on this device,
under its current LC load, at batch size b?" for any b, from a handful of measured batch
sizes and an affine fit (see :mod:`deepedge.profile.stats`). It is keyed by what fixes
that answer (device kind and capacity, the host it is emulated on, the model's signature,
the LC load on the device) and reused across jobs until one of those or the software
versions change.

Profiles are measured in short real DDP runs over all the devices at once, at batch sizes
around the share each device is expected to get (its catalog capacity's share of the
global batch, ×½, ×1, ×1½): so the fit is accurate where the planner will ask, a slow
board is not made to grind through a fast board's batch, and every device is timed in
the regime it will train in (compute, then wait for the all-reduce while its LC app
catches up).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepedge.errors import TrainingError
from deepedge.profile.kb import KnowledgeBase, Profile, ProfileKey
from deepedge.profile.stats import AffineModel, TimingSummary
from deepedge.spec import ClusterSpec, DeviceSpec, JobSpec

if TYPE_CHECKING:  # the agents import torch; the knowledge base alone must not
    from deepedge.train.pool import AgentPool, ProfilePointResult

__all__ = [
    "DeviceProfile",
    "ProfileSettings",
    "default_batches",
    "describe_key",
    "expected_step_s",
    "host_fingerprint",
    "measure_profiles",
    "profile_key",
]

SHARE_FACTORS = (0.5, 1.0, 1.5)


@dataclass(frozen=True)
class ProfileSettings:
    """How much to measure: DDP steps per batch size, after ``warmup`` untimed ones.

    On the emulated cluster one step's compute varies by 10-20 % (CFS throttling, the LC
    app's Poisson load, the shared host), so the median of 16 steps is good to about
    ±5 %; fewer steps profile faster and less exactly.
    """

    steps: int = 16
    warmup: int = 3


@dataclass(frozen=True)
class DeviceProfile:
    """What the planner needs about one device, read back from the knowledge base."""

    device: str
    profile: Profile
    timings: dict[int, TimingSummary]  # batch -> the latest measurement's summary
    memory_mb: dict[int, float]  # batch -> peak memory of those steps
    model: AffineModel
    reused: bool  # True: every point came from an earlier run (no profiling cost now)

    @classmethod
    def from_profile(cls, device: str, profile: Profile, *, reused: bool) -> DeviceProfile:
        latest = {p.batch: p for p in profile.points}  # points are sorted; the last one wins
        timings = {b: TimingSummary.of(p.step_times_s) for b, p in latest.items()}
        memory = {b: p.peak_memory_mb for b, p in latest.items() if p.peak_memory_mb is not None}
        model = AffineModel.fit({b: s.median_s for b, s in timings.items()})
        return cls(device, profile, timings, memory, model, reused)

    def step_s(self, batch: float) -> float:
        return self.model.predict(batch)

    def samples_per_s(self, batch: float) -> float:
        return self.model.throughput(batch)

    def relative_spread(self) -> np.ndarray:
        """Every measured step time over its batch size's median: the step-to-step noise."""
        latest = {p.batch: p for p in self.profile.points}
        return np.concatenate(
            [np.asarray(p.step_times_s) / self.timings[b].median_s for b, p in latest.items()]
        )

    def summary(self) -> dict[str, object]:
        """Plain dict for reports."""
        return {
            "profile_id": self.profile.id,
            "reused": self.reused,
            "cost_s": self.profile.cost_s,
            "partial": self.profile.partial_reason,
            "fit": self.model.to_dict(),
            "points": {
                b: {
                    "median_s": s.median_s,
                    "ci_s": [s.ci_low_s, s.ci_high_s],
                    "steps": s.n,
                    "peak_memory_mb": self.memory_mb.get(b),
                }
                for b, s in sorted(self.timings.items())
            },
        }


def host_fingerprint() -> dict[str, object]:
    """The physical host an emulated device runs on: its CPU model and count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cpus": os.cpu_count()}


def device_hardware(device: DeviceSpec, cluster: ClusterSpec, emulation: str) -> dict[str, object]:
    """What fixes an emulated device's speed: its capacity, CPU period, emulation and host."""
    return {
        "cpu_cores": device.cpu_cores,
        "memory_mb": device.memory_mb,
        "gpu": device.gpu.model_dump() if device.gpu else None,
        "cpu_period_us": cluster.cpu_period_us,
        "emulation": emulation,
        "host": host_fingerprint(),
    }


def profile_key(
    device: DeviceSpec, cluster: ClusterSpec, model_signature: str, emulation: str
) -> ProfileKey:
    """Key a device's profile by what determines its step time (see the module doc)."""
    hardware = device_hardware(device, cluster, emulation)
    load = sorted([a.kind, a.rate_rps] for a in cluster.apps if a.device == device.name)
    return ProfileKey.build(device.kind, hardware, model_signature, load)


def default_batches(
    cores: Mapping[str, float], global_batch: int, factors: Sequence[float] = SHARE_FACTORS
) -> list[dict[str, int]]:
    """One profiling run per factor: each device at its expected share × the factor.

    The expected share is the device's catalog capacity's share of the global batch.
    """
    total = sum(cores.values())
    return [
        {n: max(1, round(global_batch * c / total * f)) for n, c in cores.items()} for f in factors
    ]


def measure_profiles(
    agents: AgentPool,
    kb: KnowledgeBase,
    keys: Mapping[str, ProfileKey],
    job: JobSpec,
    data_path: Path,
    *,
    runs: Sequence[Mapping[str, int]],
    refresh: bool = False,
    state: Path | None = None,
    settings: ProfileSettings = ProfileSettings(),
    on_run: Callable[[Mapping[str, ProfilePointResult]], None] | None = None,
) -> tuple[dict[str, DeviceProfile], dict[str, str]]:
    """Profiles for the named devices: reused from ``kb`` where fresh, measured otherwise.

    Measuring means short real DDP runs (see :meth:`AgentPool.profile`), one per entry
    of ``runs`` (device → local batch). Every device of ``keys`` takes part, so each is
    measured in the company it will train in, but only the devices without a usable
    stored profile (at least two batch sizes, not partial) record points, unless
    ``refresh``. Points are written to the knowledge base after every run. A device
    that dies or fails keeps the points of the runs before, its profile is marked
    partial, and it is returned in the second dict (and not the first); the run it
    broke is repeated without it.
    """
    measure: dict[str, int] = {}
    reused: dict[str, DeviceProfile] = {}
    for name, key in keys.items():
        stored = kb.profile_for(key)
        if (
            stored is not None
            and not refresh
            and stored.partial_reason is None
            and len({p.batch for p in stored.points}) >= 2
        ):
            reused[name] = DeviceProfile.from_profile(name, stored, reused=True)
        else:
            measure[name] = kb.open_profile(key, device_name=name)
    if not measure:
        return reused, {}
    failed: dict[str, str] = {}
    done = 0

    def lose(name: str, why: str) -> None:
        failed[name] = why
        if name in measure:
            kb.mark_partial(
                measure[name],
                f"device {name!r} failed after {done} of {len(runs)} profiling runs: {why}",
            )

    def died(names: Iterable[str]) -> set[str]:
        dead = agents.dead_devices()
        for name in set(names) & set(dead) - set(failed):
            lose(name, f"the worker died (exit code {dead[name]})")
        return set(names) & set(dead)

    for run in runs:
        for _attempt in range(2):
            died(keys)  # before the run: a dead member would stall the others' rendezvous
            members = {n: b for n, b in run.items() if n in keys and n not in failed}
            if not members:
                break
            result = agents.profile(
                job,
                data_path,
                members,
                steps=settings.steps,
                warmup=settings.warmup,
                state=state,
            )
            if result.failures and not died(members):  # nobody died: a real error
                name, why = next(iter(result.failures.items()))
                raise TrainingError(f"profiling failed on {name!r}: {why}")
            if result.failures:
                continue  # repeat the run without the dead devices
            for name, point in result.points.items():
                if name in measure:
                    kb.add_point(
                        measure[name],
                        point.batch,
                        point.step_times,
                        point.peak_memory_mb,
                        cost_s=point.cost_s,
                    )
            if on_run:
                on_run(result.points)
            break
        done += 1
    profiles = dict(reused)
    for name, pid in measure.items():
        if name not in failed:
            kb.mark_partial(pid, None)
            profiles[name] = DeviceProfile.from_profile(name, kb.get(pid), reused=False)
    return profiles, failed


def expected_step_s(
    profiles: Mapping[str, DeviceProfile],
    local_batches: Mapping[str, int],
    comm_s: float = 0.0,
    *,
    compute_s: Mapping[str, float] | None = None,
    draws: int = 4000,
    seed: int = 0,
) -> float:
    """Expected synchronous step time: E[max_i compute_i] + all-reduce.

    The slowest device decides every step, and with noisy step times the expected
    maximum exceeds the largest median (five devices at 15 % noise: about +20 %). Each
    device's noise is resampled from its own profile's measured spread, around
    ``compute_s[name]`` where given (a plan's throttled compute), else the profile's step.
    """
    rng = np.random.default_rng(seed)
    median = dict(compute_s or {})
    cols = [
        median.get(n, profiles[n].step_s(b)) * rng.choice(profiles[n].relative_spread(), draws)
        for n, b in local_batches.items()
    ]
    return float(np.mean(np.max(np.column_stack(cols), axis=1))) + comm_s


def describe_key(key: ProfileKey) -> str:
    """Short human description of a key for tables: kind, cores, LC load."""
    hw = json.loads(key.hardware)
    load = ", ".join(f"{k}@{r:g}rps" for k, r in json.loads(key.load)) or "no LC load"
    return f"{key.device_kind} ({hw.get('cpu_cores')} cores; {load})"
