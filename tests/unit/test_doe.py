"""Design of experiments: Latin hypercube, full factorial and random scenario points."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from deepedge.interference.doe import Factor, FactorSpace


@pytest.fixture
def space() -> FactorSpace:
    return FactorSpace(
        (
            Factor("cpu", 0.0, 4.0),
            Factor("mem_mb", 10.0, 1000.0, log=True),
            Factor("rps", -1.0, 1.0),
            Factor("app", levels=("nginx", "redis", "memcached")),
        )
    )


def _stratum(f: Factor, x: float, n: int) -> int:
    lo, hi, v = (math.log(f.low), math.log(f.high), math.log(x)) if f.log else (f.low, f.high, x)
    return min(int((v - lo) / (hi - lo) * n), n - 1)


@pytest.mark.parametrize("optimize", [True, False])
@pytest.mark.parametrize("n", [1, 7, 12, 30])
def test_lhs_holds_one_point_per_stratum(space: FactorSpace, n: int, optimize: bool) -> None:
    points = space.lhs(n, seed=5, optimize=optimize)
    assert len(points) == n
    for f in space.factors:
        if f.categorical:
            continue
        strata = sorted(_stratum(f, p[f.name], n) for p in points)
        assert strata == list(range(n)), f.name
        assert all(f.low <= p[f.name] <= f.high for p in points)


def test_lhs_is_reproducible_by_seed(space: FactorSpace) -> None:
    assert space.lhs(12, seed=3) == space.lhs(12, seed=3)
    assert space.lhs(12, seed=3) != space.lhs(12, seed=4)
    assert space.lhs(12) == space.lhs(12, seed=0)


@pytest.mark.parametrize("n", [3, 12, 30])
def test_lhs_balances_categorical_levels(space: FactorSpace, n: int) -> None:
    counts = Counter(p["app"] for p in space.lhs(n, seed=1))
    assert counts == dict.fromkeys(("nginx", "redis", "memcached"), n // 3)


def test_points_are_plain_json_values(space: FactorSpace) -> None:
    ints = FactorSpace((Factor("batch", 1, 256, log=True, integer=True), *space.factors))
    for points in (ints.lhs(6, seed=0), ints.random(6, seed=0), ints.grid(2)):
        for p in points:
            assert list(p) == list(ints.names)
            assert type(p["batch"]) is int
            assert type(p["cpu"]) is float and type(p["mem_mb"]) is float
            assert type(p["app"]) is str
        assert json.loads(json.dumps(points)) == points


def test_integer_factors_stay_in_range_and_cover_every_value() -> None:
    space = FactorSpace((Factor("workers", 1, 4, integer=True), Factor("x")))
    points = space.lhs(8, seed=2)
    counts = Counter(p["workers"] for p in points)
    # linear integer factors give every integer an equal share of the strata
    assert counts == {1: 2, 2: 2, 3: 2, 4: 2}
    log_space = FactorSpace((Factor("batch", 1, 512, log=True, integer=True),))
    batches = [p["batch"] for p in log_space.lhs(50, seed=0)]
    assert all(isinstance(b, int) and 1 <= b <= 512 for b in batches)
    # log scale: about as many points below sqrt(512) ~ 22.6 as above it
    assert 20 <= sum(b <= 22 for b in batches) <= 30


def test_random_points_are_iid_in_range_and_seeded(space: FactorSpace) -> None:
    points = space.random(200, seed=9)
    assert points == space.random(200, seed=9)
    assert points != space.random(200, seed=10)
    for f in space.factors:
        if f.categorical:
            assert {p[f.name] for p in points} == set(f.levels)
        else:
            assert all(f.low <= p[f.name] <= f.high for p in points)
    mem = [p["mem_mb"] for p in points]
    assert 70 <= sum(m < 100.0 for m in mem) <= 130  # half below the log midpoint


def test_grid_is_full_factorial_with_both_ends(space: FactorSpace) -> None:
    grid = space.grid(3)
    assert len(grid) == space.grid_size(3) == 3 * 3 * 3 * 3
    assert len({tuple(p.values()) for p in grid}) == len(grid)
    assert sorted({p["cpu"] for p in grid}) == [0.0, 2.0, 4.0]
    assert sorted({p["rps"] for p in grid}) == [-1.0, 0.0, 1.0]
    mem = sorted({p["mem_mb"] for p in grid})
    assert mem[0] == 10.0 and mem[-1] == 1000.0
    assert mem[1] == pytest.approx(100.0)  # log-spaced
    assert {p["app"] for p in grid} == {"nginx", "redis", "memcached"}
    # the last factor varies fastest
    assert [p["app"] for p in grid[:3]] == ["nginx", "redis", "memcached"]


def test_grid_levels_per_factor(space: FactorSpace) -> None:
    levels = {"cpu": 5, "mem_mb": 2, "rps": 2}
    grid = space.grid(levels)
    assert len(grid) == space.grid_size(levels) == 5 * 2 * 2 * 3
    assert sorted({p["cpu"] for p in grid}) == [0.0, 1.0, 2.0, 3.0, 4.0]
    # naming a categorical factor is allowed; it still takes all its levels
    assert space.grid_size({**levels, "app": 1}) == 60


def test_grid_on_integer_factor_drops_duplicate_values() -> None:
    space = FactorSpace((Factor("workers", 1, 3, integer=True),))
    assert [p["workers"] for p in space.grid(5)] == [1, 2, 3]
    assert space.grid_size(5) == 3
    batch = FactorSpace((Factor("batch", 8, 128, log=True, integer=True),))
    assert [p["batch"] for p in batch.grid(5)] == [8, 16, 32, 64, 128]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: FactorSpace((Factor("a"), Factor("b"), Factor("a"))), "duplicate factor names: a"),
        (lambda: Factor("a", 1.0, 1.0), "low .* must be below high"),
        (lambda: Factor("a", 2.0, 1.0), "low .* must be below high"),
        (lambda: Factor("a", 0.0, 10.0, log=True), "log-scale factor needs low > 0"),
        (lambda: Factor("a", -1.0, 10.0, log=True), "log-scale factor needs low > 0"),
        (lambda: Factor("a", 0.2, 0.8, integer=True), "no integer"),
        (lambda: Factor("a", levels=()), ">= 1 level"),
        (lambda: Factor("a", levels=("x", "x")), "duplicate levels"),
        (lambda: FactorSpace(()), "at least one factor"),
    ],
)
def test_invalid_factors_are_rejected(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_categorical_factor_ignores_low_high() -> None:
    f = Factor("app", 5.0, 1.0, levels=["a", "b"])  # low >= high does not matter
    assert f.levels == ("a", "b")


@pytest.mark.parametrize("n", [0, -3])
def test_bad_point_counts_are_rejected(space: FactorSpace, n: int) -> None:
    with pytest.raises(ValueError, match="number of points must be >= 1"):
        space.lhs(n)
    with pytest.raises(ValueError, match="number of points must be >= 1"):
        space.random(n, seed=0)


def test_bad_grid_levels_are_rejected(space: FactorSpace) -> None:
    with pytest.raises(ValueError, match=">= 2 levels"):
        space.grid(1)
    with pytest.raises(ValueError, match="unknown factors: nope"):
        space.grid({"cpu": 2, "mem_mb": 2, "rps": 2, "nope": 3})
    with pytest.raises(ValueError, match="missing for continuous factors: rps"):
        space.grid_size({"cpu": 2, "mem_mb": 2})
