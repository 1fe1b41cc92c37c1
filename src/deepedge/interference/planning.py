"""The interference model one plan needs: measure what the planner will ask, and no more.

The general campaign (:func:`~deepedge.interference.campaign.profile_interference`) covers a
wide factor space with resource stressors, to build a model that transfers. A plan asks a
narrower question: each device's *own* LC apps at their spec rates, beside training at a
local batch b and an intensity c. :func:`plan_scenarios` puts the runs there (a Latin
hypercube over b and c per device) and :func:`ensure_model` reuses a stored model that
already covers the cluster and job, or calibrates the missing devices, runs the design
with the devices side by side, fits and stores the model. The deadline check then rests on
runs at the operating point, which is where its upper bound must hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from deepedge.api import Scenario, TrainLoad
from deepedge.cluster import BackendFactory, make_backend
from deepedge.interference.campaign import (
    CampaignSettings,
    calibrate,
    calibration_complete,
    distinct_devices,
    load_books,
    train_resident,
)
from deepedge.interference.doe import Factor, FactorSpace
from deepedge.interference.lab import InterferenceLab, device_key
from deepedge.interference.model import InterferenceModel, NoInterferenceModel, observations
from deepedge.interference.surrogate import NotEnoughPoints, StaleModel, min_points
from deepedge.interference.usage import LATENCY_FEATURES, UsageBook
from deepedge.profile.kb import KnowledgeBase
from deepedge.spec import ClusterSpec, JobSpec

__all__ = ["PLAN_CAMPAIGN", "ensure_model", "missing_devices", "plan_scenarios", "refit"]

PLAN_CAMPAIGN = "plan"
"""Campaign name prefix of plan-targeted runs in the knowledge base."""
INTENSITY_RANGE = (0.1, 1.0)


def _device_apps(spec: ClusterSpec, device: str) -> dict[str, float]:
    """The device's LC apps as kind -> total rate (the model knows one app per kind)."""
    rates: dict[str, float] = {}
    for a in spec.apps:
        if a.device == device:
            rates[a.kind] = rates.get(a.kind, 0.0) + a.rate_rps
    return rates


def plan_scenarios(
    spec: ClusterSpec,
    devices: Sequence[str],
    global_batch: int,
    runs_per_device: int,
    *,
    seed: int = 0,
) -> list[list[Scenario]]:
    """Rounds of scenarios, one per device in each round (so a round runs side by side).

    Each device's scenarios target each of its app kinds in turn, the others running as
    co-runners at their rates, beside training at a Latin hypercube of batch (log scale,
    from B/16 to B) and intensity.
    """
    space = FactorSpace(
        (
            Factor(
                "batch", max(1.0, global_batch / 16), float(global_batch), log=True, integer=True
            )
            if global_batch > 1
            else Factor("batch", levels=("1",)),
            Factor("intensity", *INTENSITY_RANGE),
        )
    )
    per_device: dict[str, list[Scenario]] = {}
    for i, name in enumerate(devices):
        apps = _device_apps(spec, name)
        kinds = sorted(apps)
        points = space.lhs(runs_per_device, seed=seed + i)
        per_device[name] = [
            Scenario(
                device=name,
                app=kinds[j % len(kinds)],
                rate_rps=apps[kinds[j % len(kinds)]],
                train=TrainLoad(int(float(p["batch"])), float(p["intensity"])),
                other_apps={k: r for k, r in apps.items() if k != kinds[j % len(kinds)]},
            )
            for j, p in enumerate(points)
        ]
    return [[per_device[n][j] for n in devices] for j in range(runs_per_device)]


def missing_devices(
    model: InterferenceModel, spec: ClusterSpec, keys: Mapping[str, str], job: JobSpec
) -> list[str]:
    """Devices with LC apps that ``model`` cannot answer for (no book, app kind or job)."""
    if model.resident and model.resident != train_resident(job):
        return [d.name for d in spec.devices if _device_apps(spec, d.name)]
    out = []
    for d in spec.devices:
        kinds = _device_apps(spec, d.name)
        book: UsageBook | None = model.books.get(keys[d.name])
        if kinds and (book is None or not book.train or not set(kinds) <= set(book.apps)):
            out.append(d.name)
    return out


def ensure_model(
    spec: ClusterSpec,
    job: JobSpec,
    kb: KnowledgeBase,
    workdir: Path,
    *,
    runs_per_device: int = 8,
    refresh: bool = False,
    force_fallback: bool = False,
    settings: CampaignSettings | None = None,
    window_s: tuple[float, float] = (4.0, 8.0),
    status: Callable[[str], None] = lambda msg: None,
    backend: BackendFactory = make_backend,
) -> InterferenceModel | None:
    """The stored interference model if it covers ``spec``'s LC apps for ``job``, else
    profile the devices it misses (side by side), refit on every stored run and store it.

    Returns None when no device runs an LC app (nothing to protect). It boots its own
    lab on the devices, so run it before a session boots them.
    """
    cluster = backend(spec, force_fallback=force_fallback)  # resolves; starts nothing
    spec = cluster.spec
    keys = {d.name: device_key(d, spec, cluster.emulation) for d in spec.devices}
    with_apps = [d.name for d in spec.devices if _device_apps(spec, d.name)]
    if not with_apps:
        return None
    model = None
    if not refresh:
        try:
            model = InterferenceModel.load(kb)
        except NoInterferenceModel:
            model = None
        except StaleModel:
            # fitted by another version: refit on the stored runs, which are still good
            status("interference model: the stored one is stale, refitting it")
            model = refit(kb, job)
    todo = with_apps if model is None else missing_devices(model, spec, keys, job)
    if model is not None and not todo:
        status("interference model: reusing the stored one (it covers every LC app)")
        return model
    settings = settings or CampaignSettings()
    # enough runs for a first fit even when the knowledge base holds no others
    per_device = max(runs_per_device, math.ceil(min_points(len(LATENCY_FEATURES)) / len(todo)))
    kinds = tuple(sorted({k for n in todo for k in _device_apps(spec, n)}))
    status(f"interference profile of {', '.join(todo)} (once; stored in {kb.path})")
    with InterferenceLab(
        spec,
        job,
        workdir,
        devices=todo,
        app_kinds=kinds,
        stressor_kinds=(),
        status=status,
        force_fallback=force_fallback,
        window_s=window_s,
        backend=backend,
    ) as lab:
        books = load_books(kb, job)
        stale = [  # identical devices share one calibration
            n
            for n in distinct_devices(lab)
            if refresh or not calibration_complete(books.get(keys[n]), lab, n)
        ]
        if stale:
            calibrate(lab, kb, stale, settings, progress=status)
        rounds = plan_scenarios(spec, todo, job.global_batch, per_device, seed=settings.seed)
        for i, scenarios in enumerate(rounds, 1):
            status(f"co-location round {i}/{len(rounds)} on {len(scenarios)} devices")
            for r in lab.run_many(scenarios):
                sc = r.scenario
                kb.add_interference(
                    keys[sc.device], f"{PLAN_CAMPAIGN}:{spec.name}", sc.to_dict(), r.to_dict()
                )
    model = refit(kb, job, required=True)
    assert model is not None
    return model


def refit(kb: KnowledgeBase, job: JobSpec, *, required: bool = False) -> InterferenceModel | None:
    """Fit the model on every stored run for ``job`` and store it; None (unless
    ``required``: then NotEnoughPoints) when the stored runs are too few."""
    books = load_books(kb, job)
    obs = observations(kb.interference_runs(), books)
    try:
        model = InterferenceModel.fit(obs, books, resident=train_resident(job))
    except NotEnoughPoints:
        if required:
            raise
        return None
    model.save(kb)
    return model
