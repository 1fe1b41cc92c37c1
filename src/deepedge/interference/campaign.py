"""Profiling campaigns: solo calibration of every resident, then designed co-location runs.

Step 1 (:func:`calibrate`) measures each resident alone on a device: every LC app kind at
a few request rates (its own CPU cost and unloaded latency), every stressor at a few
intensities (what the knob really consumes there) and the training job on a grid of
batch sizes and intensities. Those rows are the knowledge base's usage vectors.

Step 2 (:func:`design`, :func:`run_scenarios`) runs co-locations chosen by a Latin
hypercube over the factor space (device, app kind, app load, training batch and
intensity, two stressor slots with intensities) and stores what each measured. The
surrogate models are fitted on step 2's runs with inputs composed from step 1's vectors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from deepedge.api import Scenario, TrainLoad
from deepedge.interference.doe import Factor, FactorSpace
from deepedge.interference.lab import InterferenceLab, RunResult
from deepedge.interference.usage import UsageBook
from deepedge.models import build_model, model_signature
from deepedge.profile.kb import KnowledgeBase
from deepedge.spec import JobSpec

__all__ = [
    "CampaignSettings",
    "calibrate",
    "calibration_complete",
    "design",
    "distinct_devices",
    "factor_space",
    "load_books",
    "profile_interference",
    "run_scenarios",
    "scenario_from_point",
    "train_resident",
]

# First guess of each app kind's CPU cost per request (core-seconds), only to pick the
# probe rate; the probe then measures the real cost.
_CPU_GUESS_S = {"cnn_inference": 1.5e-3, "kv_lookup": 8e-4, "log_ingest": 5e-4, "frame_relay": 3e-4}
NO_STRESSOR = "none"
MAX_RATE_RPS = 400.0
"""Request rates are capped here: beyond it the host-side load generator, not the device,
would set the latency (cheap kinds like frame_relay reach high loads only at kHz rates)."""


@dataclass(frozen=True)
class CampaignSettings:
    """Ranges and levels of a profiling campaign (defaults suit the emulated catalog).

    The design spends the device's CPU on purpose: ``max_demand`` is the most the app and
    its co-runners may ask for together (as shares of the device), and ``busy`` is how
    much of what the app leaves the co-runners take, split between training and two
    stressor slots by random weights. Runs therefore cover the regime a plan that keeps
    deadlines can be in; fully overloaded devices (whose latency is set by the scheduler's
    fairness and grows with the run's length) say nothing a planner can use.
    """

    runs: int = 48
    seed: int = 0
    app_load: tuple[float, float] = (0.05, 0.4)  # share of the device's CPU the app uses alone
    max_demand: float = 0.95
    busy: tuple[float, float] = (0.0, 1.0)
    train_weight: tuple[float, float] = (0.0, 1.0)  # below ``no_training``: no training
    no_training: float = 0.15
    batches: tuple[int, ...] | None = None  # training batch levels (default from the job)
    levels: tuple[float, ...] = (0.25, 0.5, 1.0)  # stressor and training calibration levels
    app_loads: tuple[float, ...] = (0.05, 0.2, 0.4)  # solo app calibration loads
    calibration_window_s: float = 1.5

    def batch_levels(self, job: JobSpec) -> tuple[int, ...]:
        if self.batches:
            return tuple(sorted(set(self.batches)))
        b = job.global_batch
        return tuple(sorted({max(2, b // 16), max(4, b // 4), max(8, b // 2)}))


def train_resident(job: JobSpec) -> str:
    """The knowledge-base name of the job as a resident: its model signature and optimizer."""
    if job.custom is not None:  # a user's model (deepedge.fit): the signature it measured
        return f"train:{job.custom.signature}/{job.custom.optimizer_name}/idle"
    channels = 1 if job.dataset.kind == "digits" else 3
    size = job.dataset.image_size
    model = build_model(
        job.model, in_channels=channels, num_classes=job.dataset.num_classes, image_size=size
    )
    # "/idle": trainers run in the idle CPU class (deepedge.train.priority); rows measured
    # before that belong to another co-runner and must not mix with these
    return f"train:{model_signature(model, (channels, size, size))}/{job.optimizer.name}/idle"


def load_books(kb: KnowledgeBase, job: JobSpec) -> dict[str, UsageBook]:
    """Every device key's usage book from the knowledge base (training rows of this job)."""
    rows = kb.usages()
    mine = train_resident(job)
    rows = [r for r in rows if not r.resident.startswith("train:") or r.resident == mine]
    keys = sorted({r.device for r in rows})
    return {
        k: UsageBook.from_rows(
            k, float(json.loads(k)["cpu_cores"]), [r for r in rows if r.device == k]
        )
        for k in keys
    }


def calibrate(
    lab: InterferenceLab,
    kb: KnowledgeBase,
    devices: Sequence[str],
    settings: CampaignSettings = CampaignSettings(),
    *,
    progress: Callable[[str], None] = lambda msg: None,
) -> dict[str, UsageBook]:
    """Measure every resident alone on each of ``devices`` and store the usage rows.

    The devices are measured side by side (one :meth:`InterferenceLab.run_many` per
    step), so calibrating a cluster takes about as long as calibrating one device.
    A stressor that consumes less than half of what its intensity asks for, or that
    reports errors (no disk space, no GPU), is reported and marked skipped on the lab so
    the design leaves it out; it is never stored as if it were zero load.
    """
    devices = list(devices)
    keys = {d: lab.device_key(d) for d in devices}
    quota = {d: float(lab.devices[d].cpu_cores or 1.0) for d in devices}
    where = ", ".join(devices)
    for kind in lab.app_kinds:
        probe = {
            d: min(MAX_RATE_RPS, 0.15 * quota[d] / _CPU_GUESS_S.get(kind, 1e-3)) for d in devices
        }
        progress(f"{where}: probing {kind}")
        runs = lab.run_many([Scenario(d, kind, probe[d]) for d in devices], window_s=3.0)
        cost = {
            r.scenario.device: max(
                r.usage[f"app:{kind}"]["cpu_cores"] / probe[r.scenario.device], 1e-5
            )
            for r in runs
        }
        for load in settings.app_loads:
            progress(f"{where}: {kind} alone at {load:g} of each device")
            rates = {d: min(MAX_RATE_RPS, load * quota[d] / cost[d]) for d in devices}
            for r in lab.run_many([Scenario(d, kind, rates[d]) for d in devices]):
                usage = dict(r.usage[f"app:{kind}"])
                usage.update(p50_ms=r.p50_ms, p95_ms=r.p95_ms, p99_ms=r.p99_ms)
                d = r.scenario.device
                kb.add_usage(keys[d], f"app:{kind}", {"rate_rps": rates[d]}, usage)
    stressor_kinds = sorted({k for d in devices for k in lab.available_stressors(d)})
    for kind in stressor_kinds:
        active = [d for d in devices if kind in lab.available_stressors(d)]
        measured: dict[str, list[tuple[float, dict[str, float]]]] = {d: [] for d in active}
        for level in settings.levels:
            if not active:
                break
            progress(f"{', '.join(active)}: stressor {kind} alone at {level:g}")
            runs = lab.run_many(
                [Scenario(d, stressors={kind: level}) for d in active],
                window_s=settings.calibration_window_s,
            )
            for r in runs:
                d = r.scenario.device
                usage = r.usage[f"stressor:{kind}"]
                problem = r.errors.get(f"stressor:{kind}") or _short_of(kind, level, usage, lab, d)
                if problem:
                    lab.skip(d, kind, problem)
                    progress(f"{d}: stressor {kind} skipped: {problem}")
                    active.remove(d)
                else:
                    measured[d].append((level, usage))
        for d in active:  # every level reached: only then does the curve enter the base
            for level, usage in measured[d]:
                kb.add_usage(keys[d], f"stressor:{kind}", {"intensity": level}, usage)
    resident = train_resident(lab.job)
    for batch in settings.batch_levels(lab.job):
        for level in settings.levels:
            progress(f"{where}: training alone at batch {batch}, intensity {level:g}")
            runs = lab.run_many(
                [Scenario(d, train=TrainLoad(batch, level)) for d in devices],
                window_s=max(2.5, settings.calibration_window_s),
            )
            for r in runs:
                setting = {"batch": batch, "intensity": level}
                kb.add_usage(keys[r.scenario.device], resident, setting, r.usage["train"])
    books = load_books(kb, lab.job)
    return {d: books[keys[d]] for d in devices}


_MAIN_METRIC = {
    "cpu": "cpu_cores",
    "membw": "membw_mbps",
    "llc": "llc_mbps",
    "disk": "disk_mbps",
    "net": "net_mbps",
    "gpu": "gpu_util",
}
_CPU_BOUND = ("cpu", "membw", "llc")


def _short_of(
    kind: str, level: float, usage: Mapping[str, float], lab: InterferenceLab, device: str
) -> str | None:
    """Why a stressor fell short of its intensity, or None when it reached it.

    CPU-bound kinds must use at least half the CPU their duty cycle asks; I/O kinds
    (disk, net, gpu) wait on their device rather than the CPU, so they must show their
    resource's consumption; memcap must hold at least half the memory asked.
    """
    if kind == "memcap":
        want = level * lab.memcap_mb(device)
        got = usage.get("rss_mb", 0.0)
        return None if got >= 0.5 * want else f"held {got:.0f} MB of the {want:.0f} MB asked"
    metric = _MAIN_METRIC.get(kind, "cpu_cores")
    if not usage.get(metric, 0.0) > 0:
        return f"measured no {metric} at intensity {level:g}"
    if kind in _CPU_BOUND:
        want, got = lab.duty(device, level), usage.get("cpu_cores", 0.0)
        if got < 0.5 * want:
            return f"used {got:.3f} cores of the {want:.3f} its intensity asks"
    return None


def factor_space(
    devices: Sequence[str],
    app_kinds: Sequence[str],
    stressor_kinds: Sequence[str],
    batches: Sequence[int],
    settings: CampaignSettings = CampaignSettings(),
) -> FactorSpace:
    """The co-location factor space the design samples (see :class:`CampaignSettings`)."""
    slots = (NO_STRESSOR, *stressor_kinds)
    return FactorSpace(
        (
            Factor("device", levels=tuple(devices)),
            Factor("app", levels=tuple(app_kinds)),
            Factor("app_load", *settings.app_load),
            Factor("busy", *settings.busy),
            Factor("train_weight", *settings.train_weight),
            Factor("train_batch", float(min(batches)), float(max(batches)), log=True, integer=True)
            if len(set(batches)) > 1
            else Factor("train_batch", levels=(str(batches[0]),)),
            Factor("stressor", levels=slots),
            Factor("stressor_weight"),
            Factor("second", levels=slots),
            Factor("second_weight"),
        )
    )


def scenario_from_point(
    point: Mapping[str, object], book: UsageBook, settings: CampaignSettings = CampaignSettings()
) -> Scenario:
    """Turn one design point into a runnable scenario on its device.

    The co-runners share ``busy × (max_demand − app_load)`` of the device in proportion to
    their weights; a stressor kind the device could not run gets no share.
    """
    app = str(point["app"])
    load = float(point["app_load"])
    total = float(point["busy"]) * max(0.0, settings.max_demand - load)
    weights: dict[str, float] = {}
    w_train = float(point["train_weight"])
    if w_train >= settings.no_training:
        weights["train"] = w_train
    for slot, weight in (("stressor", "stressor_weight"), ("second", "second_weight")):
        kind = str(point[slot])
        if kind != NO_STRESSOR and kind in book.stressors and float(point[weight]) > 0:
            weights[kind] = weights.get(kind, 0.0) + float(point[weight])
    norm = sum(weights.values())
    shares = {k: total * w / norm for k, w in weights.items()} if norm > 0 else {}
    train = None
    if "train" in shares:
        train = TrainLoad(
            int(float(point["train_batch"])), min(1.0, max(shares.pop("train"), 0.02))
        )
    return Scenario(
        device=str(point["device"]),
        app=app,
        rate_rps=min(MAX_RATE_RPS, book.rate_for_load(app, load)),
        stressors={k: min(1.0, v) for k, v in shares.items() if v > 0.005},
        train=train,
    )


def design(
    space: FactorSpace,
    books: Mapping[str, UsageBook],
    n: int,
    *,
    seed: int = 0,
    sampler: str = "lhs",
    settings: CampaignSettings = CampaignSettings(),
) -> list[Scenario]:
    """``n`` scenarios from a Latin hypercube (or ``random``) over ``space``."""
    points = space.lhs(n, seed=seed) if sampler == "lhs" else space.random(n, seed=seed)
    return [scenario_from_point(p, books[str(p["device"])], settings) for p in points]


def run_scenarios(
    lab: InterferenceLab,
    kb: KnowledgeBase,
    scenarios: Sequence[Scenario],
    *,
    campaign: str,
    progress: Callable[[int, int, RunResult], None] = lambda i, n, r: None,
) -> list[RunResult]:
    """Run each scenario and store it in the knowledge base as soon as it is measured."""
    results = []
    for i, sc in enumerate(scenarios):
        r = lab.run(sc)
        kb.add_interference(lab.device_key(sc.device), campaign, sc.to_dict(), r.to_dict())
        results.append(r)
        progress(i + 1, len(scenarios), r)
    return results


def distinct_devices(lab: InterferenceLab) -> list[str]:
    """One device name per distinct device key: identical devices react identically."""
    seen: dict[str, str] = {}
    for name in lab.devices:
        seen.setdefault(lab.device_key(name), name)
    return list(seen.values())


def calibration_complete(book: UsageBook | None, lab: InterferenceLab, device: str) -> bool:
    """Whether ``book`` holds every solo measurement the lab would take on ``device``."""
    if book is None or not book.train:
        return False
    return set(lab.app_kinds) <= set(book.apps) and set(lab.available_stressors(device)) <= set(
        book.stressors
    ) | set(lab.skipped.get(device, {}))


def profile_interference(
    lab: InterferenceLab,
    kb: KnowledgeBase,
    settings: CampaignSettings = CampaignSettings(),
    *,
    refresh: bool = False,
    campaign: str | None = None,
    status: Callable[[str], None] = lambda msg: None,
    progress: Callable[[int, int, RunResult], None] = lambda i, n, r: None,
) -> list[RunResult]:
    """Calibrate each distinct device (reusing complete usage books unless ``refresh``),
    then run ``settings.runs`` Latin-hypercube co-locations and store them."""
    devices = distinct_devices(lab)
    books = load_books(kb, lab.job)
    by_name: dict[str, UsageBook] = {}
    todo = []
    for name in devices:
        book = books.get(lab.device_key(name))
        if refresh or not calibration_complete(book, lab, name):
            todo.append(name)
        else:
            status(f"{name}: reusing its solo usage from the knowledge base")
            by_name[name] = book
    if todo:
        by_name.update(calibrate(lab, kb, todo, settings, progress=status))
    kinds = sorted({k for n in devices for k in by_name[n].stressors})
    space = factor_space(devices, lab.app_kinds, kinds, settings.batch_levels(lab.job), settings)
    scenarios = design(space, by_name, settings.runs, seed=settings.seed, settings=settings)
    name = campaign or f"lhs-{settings.runs}-seed{settings.seed}"
    status(f"running {len(scenarios)} designed co-locations (campaign {name})")
    return run_scenarios(lab, kb, scenarios, campaign=name, progress=progress)
