"""Training-throughput profiles per device: measure, store in the knowledge base, reuse.

A profile answers "how long does one training step of this model take on this device,
under its current LC load, at batch size b?" for any b, from a handful of measured batch
sizes and an affine fit (see :mod:`deepedge.profile.stats`). It is keyed by what fixes
that answer (device kind and capacity, the host it is emulated on, the model's signature,
the LC load on the device) and reused across jobs until one of those or the software
versions change.

Measured batch sizes are chosen around the share each device is expected to get (its
catalog capacity's share of the global batch, ×½, ×1, ×2), so the fit is accurate where
the planner will ask and a slow board is not made to grind through a fast board's batch.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deepedge.profile.kb import KnowledgeBase, Profile, ProfileKey
from deepedge.profile.stats import AffineModel, TimingSummary
from deepedge.spec import ClusterSpec, DeviceSpec, JobSpec
from deepedge.train.pool import AgentPool, ProfilePointResult

__all__ = [
    "DeviceProfile",
    "ProfileSettings",
    "default_batches",
    "describe_key",
    "host_fingerprint",
    "measure_profiles",
    "profile_key",
]

SHARE_FACTORS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class ProfileSettings:
    """How hard to measure: see the agent's ``profile`` op for each knob."""

    warmup: int = 2
    min_steps: int = 5
    max_steps: int = 30
    rel_tol: float = 0.05
    max_s: float = 6.0


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


def profile_key(
    device: DeviceSpec, cluster: ClusterSpec, model_signature: str, emulation: str
) -> ProfileKey:
    """Key a device's profile by what determines its step time (see the module doc)."""
    hardware = {
        "cpu_cores": device.cpu_cores,
        "memory_mb": device.memory_mb,
        "gpu": device.gpu.model_dump() if device.gpu else None,
        "cpu_period_us": cluster.cpu_period_us,
        "emulation": emulation,
        "host": host_fingerprint(),
    }
    load = sorted([a.kind, a.rate_rps] for a in cluster.apps if a.device == device.name)
    return ProfileKey.build(device.kind, hardware, model_signature, load)


def default_batches(
    cores: Mapping[str, float], global_batch: int, factors: Sequence[float] = SHARE_FACTORS
) -> dict[str, list[int]]:
    """Batch sizes to measure per device: its expected share of the batch × ``factors``."""
    total = sum(cores.values())
    out = {}
    for name, c in cores.items():
        share = global_batch * c / total
        out[name] = sorted({min(global_batch, max(1, round(share * f))) for f in factors})
    return out


def measure_profiles(
    agents: AgentPool,
    kb: KnowledgeBase,
    keys: Mapping[str, ProfileKey],
    job: JobSpec,
    data_path: Path,
    *,
    batches: Mapping[str, Sequence[int]],
    refresh: bool = False,
    state: Path | None = None,
    settings: ProfileSettings = ProfileSettings(),
    on_point: Callable[[str, ProfilePointResult], None] | None = None,
) -> tuple[dict[str, DeviceProfile], dict[str, str]]:
    """Profiles for the named devices: reused from ``kb`` where fresh, measured otherwise.

    A stored profile is reused when it has at least two measured batch sizes (enough for
    the fit) and is not partial; ``refresh`` measures again regardless. Every measured
    point is written to the knowledge base the moment it arrives. A device that dies or
    fails while profiling keeps its finished points, its profile is marked partial, and
    it is returned in the second dict with the reason (and not in the first).
    """
    ids: dict[str, int] = {}
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
            ids[name] = kb.open_profile(key, device_name=name)
    if not ids:
        return reused, {}

    def store(name: str, point: ProfilePointResult) -> None:
        kb.add_point(
            ids[name], point.batch, point.step_times, point.peak_memory_mb, cost_s=point.cost_s
        )
        if on_point:
            on_point(name, point)

    result = agents.profile(
        job,
        data_path,
        {n: batches[n] for n in ids},
        warmup=settings.warmup,
        min_steps=settings.min_steps,
        max_steps=settings.max_steps,
        rel_tol=settings.rel_tol,
        max_s=settings.max_s,
        state=state,
        on_point=store,
    )
    failed = {}
    for name, reason in result.failures.items():
        done = len(result.points[name])
        kb.mark_partial(
            ids[name],
            f"device {name!r} stopped after {done} of {len(batches[name])} batch sizes: "
            + reason,
        )
        failed[name] = reason
    profiles = dict(reused)
    for name, pid in ids.items():
        if name not in failed:
            kb.mark_partial(pid, None)
            profiles[name] = DeviceProfile.from_profile(name, kb.get(pid), reused=False)
    return profiles, failed


def describe_key(key: ProfileKey) -> str:
    """Short human description of a key for tables: kind, cores, LC load."""
    hw = json.loads(key.hardware)
    load = ", ".join(f"{k}@{r:g}rps" for k, r in json.loads(key.load)) or "no LC load"
    return f"{key.device_kind} ({hw.get('cpu_cores')} cores; {load})"
