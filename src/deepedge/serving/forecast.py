"""Workload forecasting for predictive autoscaling: seasonal naive and a statsmodels AutoReg.

Every forecaster has one interface, ``fit(history) -> self`` and
``predict(horizon) -> ForecastResult(mean, upper)``. ``upper`` is a split-conformal upper
quantile: ``fit`` first estimates the model on all but the last ``calib_hours`` points,
forecasts every ``horizon``-step window inside them with those parameters, and keeps the
``level`` quantile of the errors per horizon step. Errors are taken on a log scale
(``log(y + eps)``, eps = 5 % of the mean) so the band is narrow at night and wide at the
peak. Provisioning plans on ``upper``, so under-forecasts, not the mean error, decide the SLO.

``SeasonalAutoReg`` won on the bikeshare trace against Holt-Winters (statsmodels
``ExponentialSmoothing``, season 168 on the log scale): MAPE 19.6 % vs 23.6 % at a 3-hour
horizon over the last 4 weeks, 0.08 s vs 0.01 s per fit; both well ahead of seasonal naive
(39.3 %).
"""

from __future__ import annotations

import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepedge.errors import DataError
from deepedge.serving.trace import RateTrace

__all__ = [
    "EvalResult",
    "ForecastResult",
    "Forecaster",
    "SeasonalAutoReg",
    "SeasonalNaive",
    "default_forecasters",
    "evaluate",
    "forecast_png",
]

WEEK = 168  # hours
DAY = 24


@dataclass(frozen=True)
class ForecastResult:
    """``mean`` and the ``level`` upper quantile for each of the next ``horizon`` steps."""

    mean: np.ndarray
    upper: np.ndarray
    level: float


class Forecaster(ABC):
    """Fit on a history of one value per interval; forecast mean and upper quantile."""

    name: str = "forecaster"

    def __init__(self, *, level: float = 0.95, calib_hours: int = 2 * WEEK, max_horizon: int = 24):
        if not 0 < level < 1:
            raise DataError(f"level must be in (0, 1), got {level}")
        self.level = level
        self.calib_hours = calib_hours
        self.max_horizon = max_horizon
        self._y: np.ndarray | None = None
        self._q = np.zeros(max_horizon)
        self._eps = 1.0

    # -- what a model supplies -------------------------------------------------------
    @abstractmethod
    def _min_history(self) -> int:
        """Fewest points the model can be fitted on."""

    @abstractmethod
    def _fit_params(self, y: np.ndarray) -> None:
        """Estimate parameters on ``y`` (index 0 is the trace's first interval)."""

    @abstractmethod
    def _forecast_from(self, y: np.ndarray, origin: int, horizon: int) -> np.ndarray:
        """Forecast ``y[origin:origin + horizon]`` from ``y[:origin]`` with fitted params."""

    # -- shared machinery ------------------------------------------------------------
    def fit(self, history: np.ndarray) -> Forecaster:
        """Calibrate the upper quantile on the history's tail, then fit on all of it."""
        y = np.asarray(history, dtype=float)
        if y.ndim != 1 or not np.all(np.isfinite(y)) or np.any(y < 0):
            raise DataError(f"{self.name}: history must be finite non-negative values")
        need = self._min_history()
        if len(y) < need + self.max_horizon:
            raise DataError(
                f"{self.name}: history of {len(y)} points is too short (needs "
                f"{need + self.max_horizon})"
            )
        self._eps = max(0.05 * float(y.mean()), 1e-12)
        n_cal = min(self.calib_hours, len(y) - need)
        cut = len(y) - n_cal
        self._fit_params(y[:cut])
        errors = [
            self._z(y[o : o + self.max_horizon])
            - self._z(self._forecast_from(y, o, self.max_horizon))
            for o in range(cut, len(y) - self.max_horizon + 1)
        ]
        self._q = _conformal_quantile(np.array(errors), self.level)
        self._fit_params(y)
        self._y = y
        return self

    def update(self, history: np.ndarray) -> Forecaster:
        """Condition on newer data without re-estimating (cheap; what runs every decision
        interval between daily refits). ``history`` must extend the fitted one."""
        if self._y is None:
            return self.fit(history)
        self._y = np.asarray(history, dtype=float)
        return self

    def predict(self, horizon: int) -> ForecastResult:
        if self._y is None:
            raise DataError(f"{self.name}: predict() before fit()")
        if horizon < 1:
            raise DataError(f"horizon must be at least 1, got {horizon}")
        mean = np.maximum(self._forecast_from(self._y, len(self._y), horizon), 0.0)
        q = self._q[np.minimum(np.arange(horizon), len(self._q) - 1)]
        upper = np.maximum(np.exp(self._z(mean) + q) - self._eps, mean)
        return ForecastResult(mean, upper, self.level)

    def _z(self, y: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(y, 0.0) + self._eps)


def _conformal_quantile(errors: np.ndarray, level: float) -> np.ndarray:
    """Per-step split-conformal quantile: the ceil((n+1) level)-th smallest error."""
    n = errors.shape[0]
    k = min(math.ceil((n + 1) * level), n) - 1
    return np.sort(errors, axis=0)[k]


class SeasonalNaive(Forecaster):
    """Repeat the value one season ago: the baseline every model must beat."""

    def __init__(self, season: int = WEEK, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.season = season
        self.name = f"seasonal-naive-{season}h"

    def _min_history(self) -> int:
        return self.season

    def _fit_params(self, y: np.ndarray) -> None:
        pass  # nothing to estimate

    def _forecast_from(self, y: np.ndarray, origin: int, horizon: int) -> np.ndarray:
        steps = np.arange(horizon)
        return y[origin - self.season + steps % self.season]


class SeasonalAutoReg(Forecaster):
    """statsmodels ``AutoReg`` on ``log(y + eps)``: an hour-of-week dummy (168 levels), a
    constant and lags 1, 2, 3, 24, 168, estimated by OLS.

    The weekly dummies carry the weekday/weekend daily profile; the short lags carry today's
    level (weather, holidays), which is what seasonal naive misses. OLS makes a fit take
    well under a second on a year of hours. Forecasts run the fitted recursion directly
    (checked against ``AutoRegResults.forecast`` in the tests), so conditioning on new data
    needs no refit.
    """

    name = "autoreg-weekly"
    lags: tuple[int, ...] = (1, 2, 3, 24, 168)

    def __init__(self, period: int = WEEK, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.period = period
        self._const = 0.0
        self._season = np.zeros(period)
        self._phi = np.zeros(len(self.lags))

    def _min_history(self) -> int:
        return 3 * self.period

    def _fit_params(self, y: np.ndarray) -> None:
        from statsmodels.tsa.ar_model import AutoReg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = AutoReg(
                self._z(y), lags=list(self.lags), trend="c", seasonal=True, period=self.period
            ).fit()
        params = dict(zip(res.model.exog_names, np.asarray(res.params), strict=True))
        self._const = params["const"]
        # s(k,P) is the dummy of season k-1 (t % P == k - 1); season 0 is the baseline.
        self._season = np.array(
            [0.0] + [params[f"s({k},{self.period})"] for k in range(2, self.period + 1)]
        )
        self._phi = np.array([params[f"y.L{lag}"] for lag in self.lags])
        self.fitted_ = res

    def _forecast_from(self, y: np.ndarray, origin: int, horizon: int) -> np.ndarray:
        lags = np.array(self.lags)
        z = np.concatenate([self._z(y[:origin]), np.zeros(horizon)])
        for t in range(origin, origin + horizon):
            z[t] = self._const + self._season[t % self.period] + self._phi @ z[t - lags]
        return np.exp(z[origin:]) - self._eps


def default_forecasters() -> dict[str, Callable[[], Forecaster]]:
    """The candidates ``deepedge forecast`` compares, by name."""
    return {
        "seasonal-naive-168h": lambda: SeasonalNaive(WEEK),
        "seasonal-naive-24h": lambda: SeasonalNaive(DAY),
        "autoreg-weekly": SeasonalAutoReg,
    }


@dataclass(frozen=True)
class EvalResult:
    """Rolling-origin accuracy on the held-out tail of a trace."""

    name: str
    mape: float  # %, over actuals >= mape_floor
    mase: float  # MAE / in-sample seasonal-naive (season 168) MAE
    coverage: float  # share of actuals <= upper
    fit_s: float  # mean seconds per fit
    n_origins: int
    mape_floor: float
    level: float  # the upper quantile's level
    first_target: int  # index of the first value ``ahead_*`` forecast (origin + horizon - 1)
    ahead_mean: np.ndarray  # per origin: the forecast ``horizon`` steps ahead, as provisioned
    ahead_upper: np.ndarray


def evaluate(
    forecaster_factory: Callable[[], Forecaster],
    trace: RateTrace | np.ndarray,
    holdout_weeks: int = 4,
    horizon: int = 3,
    *,
    refit_every: int = DAY,
    floor_frac: float = 0.1,
) -> EvalResult:
    """Forecast ``horizon`` steps from every hour of the last ``holdout_weeks`` weeks.

    The model is refitted every ``refit_every`` hours on everything before the origin and
    only conditioned (``update``) in between, as the serving agent would run it. MAPE skips
    hours whose actual is below ``floor_frac`` x the training mean (night hours with a
    handful of requests would dominate it and do not drive provisioning). MASE divides by the
    in-sample MAE of seasonal naive with season 168 on the training part.
    """
    y = trace.counts if isinstance(trace, RateTrace) else np.asarray(trace, dtype=float)
    n_hold = holdout_weeks * WEEK
    start = len(y) - n_hold
    if holdout_weeks < 1 or start < 4 * WEEK:
        raise DataError(f"trace of {len(y)} points is too short for {holdout_weeks} held-out weeks")
    train = y[:start]
    scale = float(np.mean(np.abs(train[WEEK:] - train[:-WEEK])))
    floor = floor_frac * float(train.mean())
    model: Forecaster | None = None
    fit_times: list[float] = []
    preds, uppers, actuals = [], [], []
    last: ForecastResult | None = None
    for i, origin in enumerate(range(start, len(y) - horizon + 1)):
        if i % refit_every == 0 or model is None:
            t0 = time.perf_counter()
            model = forecaster_factory().fit(y[:origin])
            fit_times.append(time.perf_counter() - t0)
        else:
            model.update(y[:origin])
        last = model.predict(horizon)
        preds.append(last.mean)
        uppers.append(last.upper)
        actuals.append(y[origin : origin + horizon])
    p, u, a = np.array(preds), np.array(uppers), np.array(actuals)
    mask = a >= floor
    err = np.abs(p - a)
    assert model is not None and last is not None
    return EvalResult(
        name=model.name,
        mape=float(np.mean(err[mask] / a[mask]) * 100) if mask.any() else float("nan"),
        mase=float(err.mean() / scale) if scale > 0 else float("nan"),
        coverage=float(np.mean(a <= u)),
        fit_s=float(np.mean(fit_times)),
        n_origins=len(preds),
        mape_floor=floor,
        level=last.level,
        first_target=start + horizon - 1,
        ahead_mean=p[:, -1],
        ahead_upper=u[:, -1],
    )


def forecast_png(trace: RateTrace, result: EvalResult, path: Path, *, tail: int = 2 * WEEK) -> Path:
    """Plot the last ``tail`` held-out steps: what came, the forecast made ``horizon`` steps
    before each (what a provisioner with that lead time plans on) and its upper-quantile
    band, after a day of history, so a reader sees the headroom the quantile buys."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    y = trace.counts
    n = min(tail, len(result.ahead_mean))
    steps = np.arange(result.first_target, result.first_target + len(result.ahead_mean))[-n:]
    mean, upper = result.ahead_mean[-n:], result.ahead_upper[-n:]
    lo = max(0, steps[0] - DAY)
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot(np.arange(lo, steps[0]), y[lo : steps[0]], color="0.6", lw=1, label="history")
    ax.plot(steps, y[steps], color="k", lw=1, label="actual (held out)")
    ax.plot(steps, mean, color="C0", lw=1, label=f"{result.name} forecast")
    ax.fill_between(
        steps, mean, upper, color="C0", alpha=0.25, label=f"up to the {result.level:.0%} quantile"
    )
    ax.set_xlabel(f"interval ({trace.interval_s:g} s each)")
    ax.set_ylabel("requests per interval")
    ax.set_title(
        f"{trace.name}: MAPE {result.mape:.1f} %, MASE {result.mase:.3f}, "
        f"upper covers {result.coverage:.0%}"
    )
    ax.legend(loc="upper left", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
