"""Interference profiling and prediction (FECBench method).

How much does a co-runner (a resource stressor, or the training job at batch b and
intensity c) slow each latency-critical app on a device? The :class:`InterferenceLab`
measures it on real emulated devices; :func:`calibrate` stores each resident's solo
resource-usage vector in the knowledge base; a Latin-hypercube design
(:class:`FactorSpace`) picks co-location runs; :class:`InterferenceModel` fits surrogate
models (chosen by cross-validation) from composed usage vectors to p95/p99 latency and
training throughput, each with a conformal bound the planner can trust; and
:func:`learn_from_runs` adds every training run's measured LC latency and refits.
"""

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
from deepedge.interference.lab import (
    RESOURCE_STRESSORS,
    InterferenceLab,
    RunResult,
    Scenario,
    TrainLoad,
    device_key,
)
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
