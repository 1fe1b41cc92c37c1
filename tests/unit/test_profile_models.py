"""Profile statistics and fitted models: median CI, affine step time, all-reduce cost."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from deepedge.profile import AffineModel, CommModel, CommPoint, TimingSummary, median_ci
from deepedge.profile.comm import bottleneck_mbps
from deepedge.profile.throughput import default_batches


def test_median_ci_uses_the_binomial_order_statistics():
    xs = list(range(1, 21))  # n = 20: the 95 % interval runs from the 6th to the 15th value
    assert median_ci(xs) == (6.0, 15.0)
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few for 95 %: the whole range
    with pytest.raises(ValueError):
        median_ci([])


def test_median_ci_covers_the_true_median_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    true_median = 1.0  # lognormal(0, s) has median exp(0)
    hits = 0
    for _ in range(2000):
        lo, hi = median_ci(rng.lognormal(0.0, 0.3, 16))
        hits += lo <= true_median <= hi
    assert 0.94 <= hits / 2000 <= 0.995


def test_timing_summary():
    s = TimingSummary.of([0.9, 1.0, 1.1] * 7)
    assert s.n == 21 and s.median_s == pytest.approx(1.0)
    assert (s.ci_low_s, s.ci_high_s) == (0.9, 1.1)


def test_affine_fit_recovers_exact_lines_and_inverts():
    m = AffineModel.fit({8: 0.1, 16: 0.18, 32: 0.34, 64: 0.66})
    assert m.intercept_s == pytest.approx(0.02) and m.slope_s == pytest.approx(0.01)
    assert m.max_rel_residual < 1e-9 and m.batches == (8, 16, 32, 64)
    assert m.predict(100) == pytest.approx(1.02)
    assert m.batch_for(m.predict(40)) == pytest.approx(40)
    assert m.throughput(50) == pytest.approx(50 / 0.52)


def test_affine_fit_never_goes_negative():
    shrinking = AffineModel.fit({8: 0.5, 16: 0.4})  # noise made the bigger batch faster
    assert shrinking.slope_s == 0 and shrinking.intercept_s > 0
    steep = AffineModel.fit({8: 0.01, 16: 0.5})  # a negative intercept would fit best
    assert steep.intercept_s == 0 and steep.slope_s > 0
    single = AffineModel.fit({10: 0.2})
    assert single.predict(20) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        AffineModel.fit({8: -1.0, 16: 0.2})


def test_comm_model_recovers_ring_allreduce_coefficients():
    alpha, beta, gamma = 0.002, 0.001, 2e-9
    points = [
        CommPoint(
            "f",
            k,
            n,
            (alpha + beta * (k - 1) + gamma * n * 2 * (k - 1) / k,) * 3,
            time.time(),
        )
        for k in (2, 3, 4, 5)
        for n in (100_000, 400_000, 1_600_000)
    ]
    model = CommModel.fit(points, (1.0, 1.0, 1.0, 1.0))
    assert model.alpha_s == pytest.approx(alpha, rel=1e-3)
    assert model.per_worker_s == pytest.approx(beta, rel=1e-3)
    assert model.per_byte_s == pytest.approx(gamma, rel=1e-3)
    assert model.predict(1, 10**6) == 0.0  # nothing to reduce alone
    assert model.predict(6, 10**6) > model.predict(5, 10**6)


def test_comm_model_divides_bytes_by_the_bottleneck_link():
    fabric = json.dumps(
        {
            "network": "netns",
            "emulation": "cgroup-v1",
            "cpu_period_us": 5000,
            "devices": [["a", 0.3, None], ["b", 0.2, 100.0], ["c", 0.1, 50.0]],
        }
    )
    bw = bottleneck_mbps(fabric)
    assert bw == (100.0, 50.0)  # k=2: min(1000, 100); k=3: adds the 50 Mbit/s link
    gamma = 8e-6  # a byte at 1 Mbit/s
    points = [
        CommPoint(fabric, k, n, (0.001 + gamma * n * 2 * (k - 1) / k / bw[k - 2],) * 3, 0.0)
        for k in (2, 3)
        for n in (10_000, 100_000, 1_000_000)
    ]
    model = CommModel.fit(points, bw)
    assert model.per_byte_s == pytest.approx(gamma, rel=1e-3)
    # 1 MB over 3 workers through 50 Mbit/s: 2/3·2 MB·8 bit / 50 Mbit/s ≈ 0.213 s
    assert model.predict(3, 1_000_000) == pytest.approx(0.001 + 0.2133, rel=1e-2)
    loopback = json.loads(fabric) | {"network": "loopback"}
    assert bottleneck_mbps(json.dumps(loopback)) == (1.0, 1.0)


def test_default_batches_follow_each_devices_capacity_share():
    runs = default_batches({"fast": 0.3, "slow": 0.1}, 128)
    assert [r["fast"] for r in runs] == [48, 96, 144]
    assert [r["slow"] for r in runs] == [16, 32, 48]
    tiny = default_batches({"a": 1.0, "b": 0.001}, 4)
    assert all(r["b"] >= 1 for r in tiny)
    assert math.isclose(sum(runs[1].values()), 128, abs_tol=1)
