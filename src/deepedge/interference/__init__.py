"""Interference profiling and prediction (FECBench method).

How much does a co-runner (a resource stressor, or the training job at batch b and
intensity c) slow each latency-critical app on a device? The :class:`InterferenceLab`
measures it on real emulated devices; :func:`calibrate` stores each resident's solo
resource-usage vector in the knowledge base; a Latin-hypercube design
(:class:`FactorSpace`) picks co-location runs; :class:`InterferenceModel` fits surrogate
models (chosen by cross-validation) from composed usage vectors to p95/p99 latency and
training throughput, each with a conformal bound the planner can trust; and
:func:`learn_from_runs` adds every training run's measured LC latency and refits.

The modules are imported on first use of one of their names: the knowledge base
includes :mod:`deepedge.interference.kb`, and importing that must not load the lab, its
stressors, scikit-learn or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deepedge.api import RESOURCE_STRESSORS, Scenario, TrainLoad
from deepedge.lazy import lazy_exports

if TYPE_CHECKING:
    from deepedge.interference.campaign import (
        CampaignSettings,
        calibrate,
        design,
        distinct_devices,
        factor_space,
        load_books,
        profile_interference,
        run_scenarios,
        scenario_from_point,
        train_resident,
    )
    from deepedge.interference.doe import Factor, FactorSpace
    from deepedge.interference.lab import InterferenceLab, RunResult, device_key
    from deepedge.interference.learning import (
        MIN_RUN_REQUESTS,
        RUN_CAMPAIGN,
        LearnedRun,
        RunLatency,
        learn_from_runs,
    )
    from deepedge.interference.model import (
        MODEL_NAME,
        InterferenceModel,
        LatencyPrediction,
        NoInterferenceModel,
        Observation,
        observations,
    )
    from deepedge.interference.planning import (
        PLAN_CAMPAIGN,
        ensure_model,
        missing_devices,
        plan_scenarios,
        refit,
    )
    from deepedge.interference.stressors import (
        STRESSOR_KINDS,
        StressorProcess,
        StressorUnavailable,
        Usage,
    )
    from deepedge.interference.surrogate import (
        NotEnoughPoints,
        StaleModel,
        Surrogate,
        coverage,
        fit_surrogate,
        min_points,
    )
    from deepedge.interference.usage import (
        LATENCY_FEATURES,
        LATENCY_MONOTONE,
        THROUGHPUT_FEATURES,
        THROUGHPUT_MONOTONE,
        MissingUsage,
        UsageBook,
        latency_features,
        throughput_features,
    )

__all__ = [
    "LATENCY_FEATURES",
    "LATENCY_MONOTONE",
    "MIN_RUN_REQUESTS",
    "MODEL_NAME",
    "PLAN_CAMPAIGN",
    "RESOURCE_STRESSORS",
    "RUN_CAMPAIGN",
    "STRESSOR_KINDS",
    "THROUGHPUT_FEATURES",
    "THROUGHPUT_MONOTONE",
    "CampaignSettings",
    "Factor",
    "FactorSpace",
    "InterferenceLab",
    "InterferenceModel",
    "LatencyPrediction",
    "LearnedRun",
    "MissingUsage",
    "NoInterferenceModel",
    "NotEnoughPoints",
    "Observation",
    "RunLatency",
    "RunResult",
    "Scenario",
    "StaleModel",
    "StressorProcess",
    "StressorUnavailable",
    "Surrogate",
    "TrainLoad",
    "Usage",
    "UsageBook",
    "calibrate",
    "coverage",
    "design",
    "device_key",
    "distinct_devices",
    "ensure_model",
    "factor_space",
    "fit_surrogate",
    "latency_features",
    "learn_from_runs",
    "load_books",
    "min_points",
    "missing_devices",
    "observations",
    "plan_scenarios",
    "profile_interference",
    "refit",
    "run_scenarios",
    "scenario_from_point",
    "throughput_features",
    "train_resident",
]

_LAZY: dict[str, str] = {
    "CampaignSettings": "deepedge.interference.campaign",
    "Factor": "deepedge.interference.doe",
    "FactorSpace": "deepedge.interference.doe",
    "InterferenceLab": "deepedge.interference.lab",
    "InterferenceModel": "deepedge.interference.model",
    "LATENCY_FEATURES": "deepedge.interference.usage",
    "LATENCY_MONOTONE": "deepedge.interference.usage",
    "LatencyPrediction": "deepedge.interference.model",
    "LearnedRun": "deepedge.interference.learning",
    "MIN_RUN_REQUESTS": "deepedge.interference.learning",
    "MODEL_NAME": "deepedge.interference.model",
    "MissingUsage": "deepedge.interference.usage",
    "NoInterferenceModel": "deepedge.interference.model",
    "NotEnoughPoints": "deepedge.interference.surrogate",
    "Observation": "deepedge.interference.model",
    "PLAN_CAMPAIGN": "deepedge.interference.planning",
    "RUN_CAMPAIGN": "deepedge.interference.learning",
    "RunLatency": "deepedge.interference.learning",
    "RunResult": "deepedge.interference.lab",
    "STRESSOR_KINDS": "deepedge.interference.stressors",
    "StaleModel": "deepedge.interference.surrogate",
    "StressorProcess": "deepedge.interference.stressors",
    "StressorUnavailable": "deepedge.interference.stressors",
    "Surrogate": "deepedge.interference.surrogate",
    "THROUGHPUT_FEATURES": "deepedge.interference.usage",
    "THROUGHPUT_MONOTONE": "deepedge.interference.usage",
    "Usage": "deepedge.interference.stressors",
    "UsageBook": "deepedge.interference.usage",
    "calibrate": "deepedge.interference.campaign",
    "coverage": "deepedge.interference.surrogate",
    "design": "deepedge.interference.campaign",
    "device_key": "deepedge.interference.lab",
    "distinct_devices": "deepedge.interference.campaign",
    "ensure_model": "deepedge.interference.planning",
    "factor_space": "deepedge.interference.campaign",
    "fit_surrogate": "deepedge.interference.surrogate",
    "latency_features": "deepedge.interference.usage",
    "learn_from_runs": "deepedge.interference.learning",
    "load_books": "deepedge.interference.campaign",
    "min_points": "deepedge.interference.surrogate",
    "missing_devices": "deepedge.interference.planning",
    "observations": "deepedge.interference.model",
    "plan_scenarios": "deepedge.interference.planning",
    "profile_interference": "deepedge.interference.campaign",
    "refit": "deepedge.interference.planning",
    "run_scenarios": "deepedge.interference.campaign",
    "scenario_from_point": "deepedge.interference.campaign",
    "throughput_features": "deepedge.interference.usage",
    "train_resident": "deepedge.interference.campaign",
}
"""Where each public name is defined; imported by :func:`__getattr__` when first used."""


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
