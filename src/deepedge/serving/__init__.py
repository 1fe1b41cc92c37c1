"""Serving the updated model under a latency SLO (Barista): workload traces and forecasting.

Imports numpy and statsmodels only (lazily for the latter), never torch, so trace and
forecast tools start fast.
"""

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
from deepedge.serving.trace import BIKESHARE_SOURCE, RateTrace, load_bikeshare, load_trace

__all__ = [
    "BIKESHARE_SOURCE",
    "EvalResult",
    "ForecastResult",
    "Forecaster",
    "RateTrace",
    "SeasonalAutoReg",
    "SeasonalNaive",
    "default_forecasters",
    "evaluate",
    "forecast_png",
    "load_bikeshare",
    "load_trace",
]
