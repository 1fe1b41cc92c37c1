"""Synthetic heterogeneous fleets and their planning problems (see the package doc)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from deepedge.catalog import CATALOG
from deepedge.plan.limits import AppLimit, device_option
from deepedge.plan.problem import DeviceOption, PlanningProblem

__all__ = [
    "REFERENCE_PROFILE",
    "FleetSpec",
    "SimDevice",
    "build_problem",
    "queueing_bound",
    "synthetic_fleet",
]

REFERENCE_PROFILE = ("orin-nano", 0.020, 0.004)
"""(kind, fixed seconds per step, seconds per sample) of the reference device: the order of
the demo's small CNN on an emulated Orin Nano. Other kinds scale by catalog CPU score."""


@dataclass(frozen=True)
class SimDevice:
    name: str
    kind: str
    base_s: float
    per_sample_s: float
    app_load: float  # share of the device's CPU its LC app uses alone
    solo_p95_ms: float
    deadline_ms: float
    link_mbps: float
    memory_batch: int


@dataclass(frozen=True)
class FleetSpec:
    """How a synthetic fleet is drawn."""

    kinds: Mapping[str, float] | None = None  # kind -> weight (default: the whole catalog)
    app_load: tuple[float, float] = (0.05, 0.5)
    deadline_slack: tuple[float, float] = (1.5, 6.0)  # deadline / solo p95
    link_mbps: tuple[float, float] = (50.0, 1000.0)
    solo_p95_ms: tuple[float, float] = (5.0, 40.0)
    memory_batch: tuple[int, int] = (64, 4096)


def synthetic_fleet(n: int, *, seed: int = 0, spec: FleetSpec = FleetSpec()) -> list[SimDevice]:
    """``n`` devices drawn from ``spec`` (seeded, so a fleet is reproducible).

    Loads, slacks and p95s are quantised to a few levels, as real fleets repeat a few app
    configurations: it also lets :func:`build_problem` share their limit computations.
    """
    if n < 1:
        raise ValueError(f"a fleet needs at least one device, got {n}")
    rng = np.random.default_rng(seed)
    weights = dict(spec.kinds or dict.fromkeys(CATALOG, 1.0))
    names = list(weights)
    p = np.array([weights[k] for k in names], float)
    kinds = rng.choice(names, size=n, p=p / p.sum())
    ref_kind, ref_a, ref_s = REFERENCE_PROFILE
    ref_score = CATALOG[ref_kind].cpu_score

    def levels(lo: float, hi: float, size: int, count: int = 8) -> np.ndarray:
        return rng.choice(np.linspace(lo, hi, count), size=size)

    loads = levels(*spec.app_load, n)
    slack = levels(*spec.deadline_slack, n)
    solo = levels(*spec.solo_p95_ms, n)
    links = levels(*spec.link_mbps, n)
    mem = rng.choice(np.geomspace(*spec.memory_batch, 7).astype(int), size=n)
    out = []
    for i in range(n):
        kind = str(kinds[i])
        scale = ref_score / CATALOG[kind].cpu_score
        out.append(
            SimDevice(
                f"{kind}-{i}",
                kind,
                ref_a * scale,
                ref_s * scale,
                float(loads[i]),
                float(solo[i]),
                float(solo[i] * slack[i]),
                float(links[i]),
                int(mem[i]),
            )
        )
    return out


def queueing_bound(app_load: float, solo_p95_ms: float) -> Callable[[int, float], float]:
    """The simulator's stand-in for the interference model (an approximation, not a fit).

    The app alone uses ``u`` of the CPU; training at intensity c takes up to
    ``c·(1−u)`` more, so the CPU is busy ``ρ = u + c·(1−u)`` of the time. Tail latency of a
    single-server queue grows like 1/(1−ρ); relative to the app alone that is a factor
    ``(1−u)/(1−ρ)``, floored at ρ = 0.98 where the queue would not be stable. Batch size
    matters through memory only (``build_problem``).
    """

    def p95(batch: int, intensity: float) -> float:
        if batch == 0:
            return solo_p95_ms
        rho = min(0.98, app_load + intensity * (1.0 - app_load) * 0.95)
        return solo_p95_ms * (1.0 - app_load) / (1.0 - rho)

    return p95


def build_problem(
    fleet: Sequence[SimDevice],
    global_batch: int,
    *,
    grad_bytes: int = 4 * 250_000,
    margin: float = 0.05,
    comm: tuple[float, float, float] = (0.002, 0.0005, 1.0),
    steps: int = 1,
) -> PlanningProblem:
    """The planning problem of ``fleet`` (limits shared between identical devices).

    ``comm`` = (α s, β s per extra worker, γ) of ``α + β(k−1) + γ·bytes·2(k−1)/k / w``
    with w the fleet's median link in bytes/s (the simulator does not model which links a
    ring would cross).
    """
    alpha, beta, gamma = comm
    w = float(np.median([d.link_mbps for d in fleet])) * 1e6 / 8

    def comm_s(k: int) -> float:
        return 0.0 if k <= 1 else alpha + beta * (k - 1) + gamma * grad_bytes * 2 * (k - 1) / k / w

    cache: dict[tuple, DeviceOption] = {}
    options = []
    for d in fleet:
        key = (d.kind, d.app_load, d.solo_p95_ms, d.deadline_ms, d.memory_batch)
        if key not in cache:
            law = queueing_bound(d.app_load, d.solo_p95_ms)
            cache[key] = device_option(
                "shared",
                base_s=d.base_s,
                per_sample_s=d.per_sample_s,
                global_batch=global_batch,
                memory_batch=d.memory_batch,
                memory_note=f"memory: at most {d.memory_batch} samples fit",
                apps={"app": AppLimit("app", d.deadline_ms)},
                bound=lambda b, c, law=law: {"app": law(b, c)},
                app_cpu_share=d.app_load,
                margin=margin,
            )
        shared = cache[key]
        options.append(
            DeviceOption(
                d.name, shared.base_s, shared.per_sample_s, shared.levels, shared.excluded_reason
            )
        )
    return PlanningProblem(tuple(options), global_batch, comm_s=comm_s, steps=steps)
