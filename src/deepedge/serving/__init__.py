"""Serving the updated model under a latency SLO (Barista): workload traces and forecasting,
replica flavours and their prices, the fitted p95 model per flavour and the cost-minimal
configuration.

Serving itself (model-server replicas in device partitions, the HTTP front end, the
autoscaling policies and :func:`serve`) is exported lazily: importing the package imports
numpy, and scipy, statsmodels and matplotlib only when used, never torch, so trace,
forecast and provisioning tools start fast.
"""

from typing import TYPE_CHECKING

from deepedge.lazy import lazy_exports
from deepedge.serving.costs import (
    DEFAULT_CATALOG,
    DEFAULT_FLAVOURS,
    CostCatalog,
    Flavour,
    load_catalog,
    parse_flavours,
)
from deepedge.serving.forecast import (
    EvalResult,
    Forecaster,
    ForecastResult,
    SeasonalAutoReg,
    SeasonalNaive,
    default_forecasters,
    evaluate,
    forecast_png,
)
from deepedge.serving.kb import load_latency_models, load_latency_points, save_latency_models
from deepedge.serving.latency import (
    LatencyError,
    LatencyModel,
    LatencyPoint,
    fit_latency_models,
    latency_error,
    latency_png,
    mmc_p95_s,
)
from deepedge.serving.optimize import (
    Config,
    optimality_gap,
    placement_fits,
    slo_capacity,
    solve_exact,
    solve_greedy,
)
from deepedge.serving.trace import BIKESHARE_SOURCE, RateTrace, load_bikeshare, load_trace

if TYPE_CHECKING:
    from deepedge.serving.frontend import FrontendProcess, ReplicaAddress
    from deepedge.serving.lc_rates import PlannedRate, planning_rates, spec_at_planning_rates
    from deepedge.serving.model import ServedModel, load_served_model
    from deepedge.serving.policies import (
        POLICIES,
        Barista,
        Reactive,
        ServingProblem,
        StaticPeak,
    )
    from deepedge.serving.pool import ReplicaPool
    from deepedge.serving.run import ReplayTrace, ServeResult, ServingSession
    from deepedge.serving.service import (
        CloudOffload,
        ServeOptions,
        ServeReport,
        make_policy,
        serve,
    )

_LAZY = {
    **dict.fromkeys(("FrontendProcess", "ReplicaAddress"), "deepedge.serving.frontend"),
    **dict.fromkeys(
        ("PlannedRate", "planning_rates", "spec_at_planning_rates"), "deepedge.serving.lc_rates"
    ),
    **dict.fromkeys(("ServedModel", "load_served_model"), "deepedge.serving.model"),
    **dict.fromkeys(
        ("POLICIES", "Barista", "Reactive", "ServingProblem", "StaticPeak"),
        "deepedge.serving.policies",
    ),
    "ReplicaPool": "deepedge.serving.pool",
    **dict.fromkeys(("ReplayTrace", "ServeResult", "ServingSession"), "deepedge.serving.run"),
    **dict.fromkeys(
        ("CloudOffload", "ServeOptions", "ServeReport", "make_policy", "serve"),
        "deepedge.serving.service",
    ),
}
__getattr__, __dir__ = lazy_exports(globals(), _LAZY)

__all__ = [
    "BIKESHARE_SOURCE",
    "DEFAULT_CATALOG",
    "DEFAULT_FLAVOURS",
    "POLICIES",
    "Barista",
    "CloudOffload",
    "Config",
    "CostCatalog",
    "EvalResult",
    "Flavour",
    "ForecastResult",
    "Forecaster",
    "FrontendProcess",
    "LatencyError",
    "LatencyModel",
    "LatencyPoint",
    "PlannedRate",
    "RateTrace",
    "Reactive",
    "ReplayTrace",
    "ReplicaAddress",
    "ReplicaPool",
    "SeasonalAutoReg",
    "SeasonalNaive",
    "ServeOptions",
    "ServeReport",
    "ServeResult",
    "ServedModel",
    "ServingProblem",
    "ServingSession",
    "StaticPeak",
    "default_forecasters",
    "evaluate",
    "fit_latency_models",
    "forecast_png",
    "latency_error",
    "latency_png",
    "load_bikeshare",
    "load_catalog",
    "load_latency_models",
    "load_latency_points",
    "load_served_model",
    "load_trace",
    "make_policy",
    "mmc_p95_s",
    "optimality_gap",
    "parse_flavours",
    "placement_fits",
    "planning_rates",
    "save_latency_models",
    "serve",
    "slo_capacity",
    "solve_exact",
    "solve_greedy",
    "spec_at_planning_rates",
]
