"""The per-flavour p95 model: the M/M/c quantile is exact, the fit recovers known parameters
from noisy points, p95 is monotone, max_rate inverts it, and the models survive the KB."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq

from deepedge.errors import SpecError
from deepedge.serving import (
    LatencyModel,
    LatencyPoint,
    fit_latency_models,
    latency_error,
    latency_png,
    load_latency_models,
    load_latency_points,
    mmc_p95_s,
    save_latency_models,
)
from deepedge.serving.latency import _erlang_c, _mmc_p95_s_vec

TRUE = {
    # flavour: (mu per replica = cores / 0.65 ms, base_ms, k)
    "xs": (0.04 / 0.00065, 3.0, 1.8),
    "m": (0.16 / 0.00065, 3.0, 1.4),
    "l": (0.25 / 0.00065, 2.0, 1.2),
}


def _points(
    flavour: str, *, noise: float, seed: int, mean_service: bool = False
) -> list[LatencyPoint]:
    """p95 of the true model at 5 utilisations x 3 replica counts, times lognormal noise."""
    mu, base, k = TRUE[flavour]
    model = LatencyModel(flavour, mu, base, k)
    rng = np.random.default_rng(seed)
    ms = 1000 / mu if mean_service else None
    out = []
    for c in (1, 2, 3):
        for rho in (0.1, 0.3, 0.5, 0.7, 0.85):
            rate = rho * c * mu
            p95 = model.p95_ms(rate, c) * math.exp(rng.normal(0, noise))
            out.append(LatencyPoint(flavour, c, rate, p95, ms, n=2000))
    return out


def _reference_p95_s(rate: float, c: int, mu: float) -> float:
    """The M/M/c response-time quantile by numerical convolution, independent of the
    closed form: P(T <= t) = (1 - C) P(S <= t) + C * int theta e^(-theta w) P(S <= t - w)."""
    wait_p = _erlang_c(c, rate / mu)
    theta = c * mu - rate

    def cdf(t: float) -> float:
        conv = quad(lambda w: theta * math.exp(-theta * w) * -math.expm1(-mu * (t - w)), 0, t)[0]
        return (1 - wait_p) * -math.expm1(-mu * t) + wait_p * conv

    return brentq(lambda t: cdf(t) - 0.95, 1e-9, 100.0, xtol=1e-14)


def test_mm1_quantile_is_the_exponential_one() -> None:
    # M/M/1 response time is exponential with rate mu - lambda
    for rate in (0.0, 50.0, 200.0, 249.0):
        assert mmc_p95_s(rate, 1, 250.0) == pytest.approx(math.log(20) / (250.0 - rate))


@pytest.mark.parametrize(("rate", "c"), [(300.0, 2), (600.0, 3), (700.0, 3), (100.0, 4)])
def test_mmc_quantile_matches_numerical_convolution(rate: float, c: int) -> None:
    assert mmc_p95_s(rate, c, 250.0) == pytest.approx(_reference_p95_s(rate, c, 250.0), rel=1e-6)


def test_vectorised_quantile_equals_the_scalar_one() -> None:
    rng = np.random.default_rng(0)
    c = rng.integers(1, 8, 100).astype(float)
    rate = rng.uniform(0, 1.1, 100) * c * 250.0
    vec = _mmc_p95_s_vec(rate, c, 250.0)
    ref = np.array([mmc_p95_s(r, int(n), 250.0) for r, n in zip(rate, c, strict=True)])
    assert np.array_equal(np.isinf(vec), np.isinf(ref)) and np.isinf(ref).any()
    np.testing.assert_allclose(vec[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-12)


def test_p95_is_monotone_in_rate_and_decreasing_in_replicas() -> None:
    m = LatencyModel("m", 250.0, 2.0, 1.4)
    rates = np.linspace(0, 249.0, 60)
    p1 = [m.p95_ms(r, 1) for r in rates]
    assert all(b > a for a, b in itertools.pairwise(p1))
    for rate in (10.0, 200.0, 450.0):
        by_c = [m.p95_ms(rate, c) for c in (2, 3, 5, 8)]
        assert all(b <= a for a, b in itertools.pairwise(by_c))
    assert m.p95_ms(0.0, 1) == pytest.approx(2.0 + 1.4 * 1000 * math.log(20) / 250.0)


def test_saturation_predicts_infinity() -> None:
    m = LatencyModel("m", 250.0, 2.0, 1.4)
    assert math.isinf(m.p95_ms(500.0, 2)) and math.isinf(m.p95_ms(800.0, 2))
    assert math.isfinite(m.p95_ms(499.0, 2))


@pytest.mark.parametrize("c", [1, 2, 4])
def test_max_rate_inverts_p95(c: int) -> None:
    m = LatencyModel("m", 250.0, 2.0, 1.4)
    for slo in (20.0, 50.0, 200.0):
        r = m.max_rate(c, slo)
        assert 0 < r < c * 250.0
        assert m.p95_ms(r, c) == pytest.approx(slo, rel=1e-9)
        assert m.p95_ms(r, c) <= slo
    assert m.max_rate(c, 50.0) > m.max_rate(c, 20.0)
    assert m.max_rate(1, m.p95_ms(0.0, 1) * 0.99) == 0.0  # an idle replica misses it


def test_fit_recovers_parameters_from_noisy_points() -> None:
    points = [
        p
        for seed, name in enumerate(TRUE)
        for p in _points(name, noise=0.03, seed=seed, mean_service=name == "l")
    ]
    models = fit_latency_models(points)
    assert sorted(models) == sorted(TRUE)
    for name, (mu, _base, k) in TRUE.items():
        fitted = models[name]
        assert fitted.mu_rps == pytest.approx(mu, rel=0.05)
        assert fitted.k == pytest.approx(k, rel=0.2)  # base and k trade off a little
        assert fitted.n_points == 15 and fitted.rmse_log < 0.05
        truth = LatencyModel(name, *TRUE[name])
        for c in (1, 2, 3):
            for rho in (0.2, 0.6, 0.8):
                rate = rho * c * mu
                assert fitted.p95_ms(rate, c) == pytest.approx(truth.p95_ms(rate, c), rel=0.1)
    err = latency_error(models, points)
    assert err.n == 45 and err.median < 0.04 and err.max < 0.12


def test_fit_is_exact_on_noise_free_points() -> None:
    (model,) = fit_latency_models(_points("m", noise=0.0, seed=0)).values()
    mu, base, k = TRUE["m"]
    assert (model.mu_rps, model.base_ms, model.k) == pytest.approx((mu, base, k), rel=1e-4)
    assert model.rmse_log < 1e-6


def test_fit_refuses_too_few_points() -> None:
    pts = _points("m", noise=0.0, seed=0)[:2]
    with pytest.raises(SpecError, match="needs at least 3") as info:
        fit_latency_models(pts)
    assert "\n" not in info.value.one_line() and info.value.hint
    with pytest.raises(SpecError, match="no latency points"):
        fit_latency_models([])


@pytest.mark.parametrize(
    "kwargs",
    [{"replicas": 0}, {"p95_ms": 0.0}, {"rate_rps": -1.0}, {"p95_ms": math.inf}],
)
def test_bad_points_are_refused(kwargs: dict[str, float]) -> None:
    base = {"flavour": "m", "replicas": 1, "rate_rps": 10.0, "p95_ms": 5.0}
    with pytest.raises(SpecError):
        LatencyPoint(**{**base, **kwargs})


def test_latency_error_needs_a_model_per_flavour() -> None:
    pts = _points("m", noise=0.0, seed=0)
    models = {"m": LatencyModel("m", *TRUE["m"])}
    assert latency_error(models, pts).max < 1e-12
    with pytest.raises(SpecError, match="no latency model for flavour 'xs'"):
        latency_error(models, _points("xs", noise=0.0, seed=0))
    mu = TRUE["m"][0]
    beyond = LatencyPoint("m", 1, 1.2 * mu, 500.0)  # past the model's capacity: saturated
    err = latency_error(models, [*pts, beyond])
    assert err.saturated == 1 and err.max < 1e-12 and err.n == len(pts) + 1
    assert "1 predicted saturated" in str(err)


def test_model_dict_round_trip() -> None:
    m = LatencyModel("m", 250.0, 2.0, 1.4, rmse_log=0.02, n_points=15)
    assert LatencyModel.from_dict(m.to_dict()) == m
    with pytest.raises(SpecError, match="malformed"):
        LatencyModel.from_dict({"flavour": "m"})


def test_kb_round_trip(tmp_path: Path) -> None:
    kb = tmp_path / "kb.sqlite"
    assert load_latency_models(kb, "sig/emu") is None  # no file yet: not an error
    points = _points("m", noise=0.0, seed=0) + _points("xs", noise=0.0, seed=1)
    models = {n: LatencyModel(n, *TRUE[n], rmse_log=0.01, n_points=15) for n in ("m", "xs")}
    save_latency_models(kb, "sig/emu", models, points)
    assert load_latency_models(kb, "sig/emu") == models
    assert load_latency_points(kb, "sig/emu") == points
    assert load_latency_models(kb, "other") is None
    models["m"] = LatencyModel("m", 1.0, 1.0, 1.0)
    save_latency_models(kb, "sig/emu", models, points)  # replaces
    loaded = load_latency_models(kb, "sig/emu")
    assert loaded is not None and loaded["m"].mu_rps == 1.0


def test_latency_png(tmp_path: Path) -> None:
    points = _points("m", noise=0.02, seed=3)
    models = {"m": LatencyModel("m", *TRUE["m"])}
    out = latency_png(models, points, tmp_path / "plots" / "latency.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_needs_load() -> None:
    idle = [LatencyPoint("m", 1, 0.0, 5.0 + i) for i in range(3)]
    with pytest.raises(SpecError, match="at rate 0"):
        fit_latency_models(idle)
