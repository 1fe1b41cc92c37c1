"""Forecasters: seasonal naive is exact on periodic data, AutoReg beats it on a noisy
daily+weekly series, the upper quantile covers held-out points, and the CLI plots."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from deepedge.errors import DataError
from deepedge.serving import RateTrace, SeasonalAutoReg, SeasonalNaive, evaluate
from tests.cli import run_cli


def _synthetic(weeks: int = 8, seed: int = 0) -> np.ndarray:
    """Daily + weekly seasonality times a slowly wandering level (like weather)."""
    t = np.arange(weeks * 168)
    daily = 1 + 0.8 * np.sin(2 * np.pi * t / 24 - 1.5)
    weekly = 1 + 0.3 * (t % 168 < 120)
    rng = np.random.default_rng(seed)
    level = np.exp(np.cumsum(rng.normal(0, 0.03, t.size)) * 0.5)
    return 100 * daily * weekly * level * np.exp(rng.normal(0, 0.05, t.size))


def test_seasonal_naive_is_exact_on_a_periodic_series() -> None:
    y = np.tile(np.arange(24.0), 30)
    f = SeasonalNaive(24).fit(y[:-5])
    np.testing.assert_allclose(f.predict(5).mean, y[-5:])


def test_autoreg_recursion_matches_statsmodels_forecast() -> None:
    y = _synthetic(6)
    f = SeasonalAutoReg().fit(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.exp(f.fitted_.forecast(6)) - f._eps
    np.testing.assert_allclose(f.predict(6).mean, ref, rtol=1e-8)


def test_autoreg_beats_seasonal_naive_and_upper_covers() -> None:
    y = _synthetic(8)
    ar = evaluate(SeasonalAutoReg, y, holdout_weeks=1, horizon=3)
    sn = evaluate(lambda: SeasonalNaive(168), y, holdout_weeks=1, horizon=3)
    assert ar.mase < 0.8 * sn.mase
    assert ar.mape < sn.mape
    assert ar.coverage >= 0.85
    assert ar.fit_s < 3.0


def test_short_history_is_a_data_error() -> None:
    with pytest.raises(DataError):
        SeasonalAutoReg().fit(np.ones(100))


def test_cli_forecast_writes_png(tmp_path: Path) -> None:
    y = _synthetic(6)
    csv = tmp_path / "trace.csv"
    csv.write_text("t,rate\n" + "".join(f"{i * 3600},{v / 3600}\n" for i, v in enumerate(y)))
    png = tmp_path / "f.png"
    res = run_cli("forecast", str(csv), "--holdout-weeks", "1", "--png", str(png))
    assert res.code == 0, res.text
    assert "autoreg-weekly" in res.out and png.stat().st_size > 1000


def test_cli_forecast_bad_trace_is_one_line(tmp_path: Path) -> None:
    res = run_cli("forecast", str(tmp_path / "missing.csv"))
    assert res.code != 0
    assert len(res.err.strip().splitlines()) == 1 and "error" in res.err


def test_rate_trace_rejects_negative_rates() -> None:
    with pytest.raises(DataError):
        RateTrace(np.array([1.0, -1.0]), 1.0, "x", "t")
