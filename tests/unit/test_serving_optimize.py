"""Flavours, prices and the cost-minimal configuration: the MILP matches brute force, the
greedy is feasible and never cheaper, placements fit, and bad catalogs are one-line errors."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

import deepedge.serving.optimize as optimize
from deepedge.errors import SpecError
from deepedge.serving import (
    DEFAULT_CATALOG,
    DEFAULT_FLAVOURS,
    Config,
    CostCatalog,
    Flavour,
    LatencyModel,
    load_catalog,
    optimality_gap,
    parse_flavours,
    placement_fits,
    slo_capacity,
    solve_exact,
    solve_greedy,
)
from tests.conftest import assert_one_line

SLO = 50.0
FLAVOURS = {f.name: f for f in DEFAULT_FLAVOURS}


def _models(rng: np.random.Generator | None = None) -> dict[str, LatencyModel]:
    """One model per default flavour: mu from 0.65 ms of CPU per request at one core."""
    out = {}
    for f in DEFAULT_FLAVOURS:
        base, k = (2.0, 1.4) if rng is None else (rng.uniform(1, 4), rng.uniform(0.8, 1.6))
        out[f.name] = LatencyModel(f.name, f.cores / 0.00065, base, k)
    return out


# ---------------------------------------------------------------------------------------
# costs


def test_cost_per_hour_is_fargate_priced() -> None:
    large = FLAVOURS["l"]
    assert DEFAULT_CATALOG.cost_per_hour(large) == pytest.approx(0.25 * 0.04048 + 0.004445)
    assert "https://aws.amazon.com/fargate/pricing/" in DEFAULT_CATALOG.source
    assert DEFAULT_CATALOG.currency == "USD"
    costs = [DEFAULT_CATALOG.cost_per_hour(f) for f in DEFAULT_FLAVOURS]
    assert costs == sorted(costs)


@pytest.mark.parametrize(
    ("args", "match"),
    [(("x", 0.0, 512), "cores"), (("x", 0.1, 0), "memory"), (("a b", 0.1, 512), "name")],
)
def test_bad_flavours_are_refused(args: tuple[str, float, int], match: str) -> None:
    with pytest.raises(SpecError, match=match) as info:
        Flavour(*args)
    assert "\n" not in info.value.one_line() and info.value.hint


def test_parse_flavours() -> None:
    assert parse_flavours("xs=0.04:512, s=0.08:512") == DEFAULT_FLAVOURS[:2]
    for bad in ("xs=0.04", "xs=a:512", "xs=0.04:512,xs=0.08:512", "", "xs=0.04:-1"):
        with pytest.raises(SpecError) as info:
            parse_flavours(bad)
        assert "\n" not in info.value.one_line() and info.value.hint


def test_load_catalog_json_and_yaml(tmp_path: Path) -> None:
    js = tmp_path / "prices.json"
    js.write_text(json.dumps({"vcpu_hour": 0.05, "gb_hour": 0.005, "currency": "EUR"}))
    assert load_catalog(js) == CostCatalog(0.05, 0.005, "EUR", f"read from {js}")
    ym = tmp_path / "prices.yaml"
    ym.write_text("vcpu_hour: 0.04048\ngb_hour: 0.004445\ncurrency: USD\nsource: list\n")
    assert load_catalog(ym) == CostCatalog(0.04048, 0.004445, "USD", "list")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"vcpu_hour": 0.04, "gb_hour": 0.004, "gb_hours": 1}', "unknown"),
        ('{"vcpu_hour": 0.04}', "no gb_hour"),
        ('{"vcpu_hour": -1, "gb_hour": 0.004}', "vcpu_hour"),
        ('{"vcpu_hour": "cheap", "gb_hour": 0.004}', "not a number"),
        ('{"vcpu_hour": 0.04, "gb_hour": 0.004, "currency": ""}', "currency"),
        ("[1, 2]", "not a cost catalog"),
        ('{"vcpu_hour": 0.04,', "not valid JSON"),
    ],
)
def test_catalog_errors_are_one_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(text)
    with pytest.raises(SpecError, match=match) as info:
        load_catalog(path)
    assert_one_line(info.value, path)


def test_catalog_bad_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("vcpu_hour: [0.04\n")
    with pytest.raises(SpecError) as info:
        load_catalog(path)
    assert_one_line(info.value, path)


# ---------------------------------------------------------------------------------------
# brute force


def _per_device_counts(room: float, flavours: list[Flavour]) -> list[tuple[int, ...]]:
    """Every count vector of ``flavours`` whose cores fit in ``room``."""
    limits = [int((room + 1e-9) // f.cores) for f in flavours]
    return [
        counts
        for counts in itertools.product(*(range(n + 1) for n in limits))
        if sum(n * f.cores for n, f in zip(counts, flavours, strict=True)) <= room + 1e-9
    ]


def _brute_force(
    rate: float,
    models: dict[str, LatencyModel],
    flavours: list[Flavour],
    catalog: CostCatalog,
    devices: dict[str, float],
    min_replicas: int,
    max_replicas: int,
) -> float | None:
    """The least cost over every placeable total, by summing per-device count sets."""
    totals = {(0,) * len(flavours)}
    for room in devices.values():
        options = _per_device_counts(room, flavours)
        totals = {
            tuple(min(a + b, max_replicas + 1) for a, b in zip(t, o, strict=True))
            for t in totals
            for o in options
        }
    cap = [models[f.name].max_rate(1, SLO) for f in flavours]
    best = None
    for t in totals:
        n = sum(t)
        capacity = sum(c * x for c, x in zip(cap, t, strict=True))
        if not (min_replicas <= n <= max_replicas) or capacity < rate:
            continue
        if any(x and c <= 0 for c, x in zip(cap, t, strict=True)):
            continue  # a replica that misses the SLO idle is never used
        cost = sum(catalog.cost_per_hour(f) * x for f, x in zip(flavours, t, strict=True))
        best = cost if best is None else min(best, cost)
    return best


def _check(
    config: Config,
    rate: float,
    models: dict[str, LatencyModel],
    flavours: list[Flavour],
    catalog: CostCatalog,
    devices: dict[str, float],
    min_r: int,
    max_r: int,
) -> None:
    assert placement_fits(config.placement, flavours, devices)
    assert config.capacity_rps >= rate * (1 - 1e-9)
    assert config.capacity_rps == pytest.approx(slo_capacity(config.replicas, models, SLO))
    assert min_r <= config.n_replicas <= max_r
    assert all(n > 0 for n in config.replicas.values())
    placed: dict[str, int] = {}
    for counts in config.placement.values():
        for name, n in counts.items():
            placed[name] = placed.get(name, 0) + n
    assert placed == config.replicas
    by_name = {f.name: f for f in flavours}
    expected = sum(catalog.cost_per_hour(by_name[n]) * c for n, c in placed.items())
    assert config.cost_per_hour == pytest.approx(expected)


def _compare(
    rate: float,
    models: dict[str, LatencyModel],
    flavours: list[Flavour],
    catalog: CostCatalog,
    devices: dict[str, float],
    min_r: int = 1,
    max_r: int = 32,
) -> bool:
    """Both solvers against brute force on one instance; whether it was feasible."""
    truth = _brute_force(rate, models, flavours, catalog, devices, min_r, max_r)
    kw = {"min_replicas": min_r, "max_replicas": max_r}
    exact = solve_exact(rate, SLO, models, flavours, catalog, devices, **kw)
    greedy = solve_greedy(rate, SLO, models, flavours, catalog, devices, **kw)
    if truth is None:
        assert exact is None and greedy is None
        return False
    assert exact is not None and greedy is not None
    assert exact.cost_per_hour == pytest.approx(truth, rel=1e-9)
    _check(exact, rate, models, flavours, catalog, devices, min_r, max_r)
    _check(greedy, rate, models, flavours, catalog, devices, min_r, max_r)
    assert greedy.cost_per_hour >= exact.cost_per_hour * (1 - 1e-9)
    assert optimality_gap(exact, greedy) >= -1e-9
    return True


def test_milp_matches_brute_force_and_greedy_is_feasible_and_never_cheaper() -> None:
    rng = np.random.default_rng(7)
    outcomes = []
    for _ in range(40):
        models = _models(rng)
        names = sorted(str(n) for n in rng.choice(list(FLAVOURS), size=3, replace=False))
        flavours = [FLAVOURS[n] for n in names]
        devices = {f"d{i}": float(rng.choice([0.08, 0.12, 0.2, 0.25, 0.33, 0.42])) for i in (0, 1)}
        min_r, max_r = int(rng.integers(1, 3)), int(rng.choice([3, 5, 32]))
        rate = float(rng.uniform(0, 900))
        outcomes.append(_compare(rate, models, flavours, DEFAULT_CATALOG, devices, min_r, max_r))
    assert outcomes.count(True) >= 10 and outcomes.count(False) >= 3  # both branches ran


def _odd_instance(seed: int) -> tuple[dict[str, LatencyModel], list[Flavour], CostCatalog, dict]:
    """Random flavour sizes, memory prices and devices: instances where the totals that
    satisfy the packing inequalities sometimes cannot be placed (seeds 13 and 31)."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([0.04, 0.05, 0.08, 0.1, 0.12, 0.16, 0.25], 3, replace=False)
    memory = rng.choice([128, 256, 512, 1024, 2048], 3)
    flavours = [Flavour(n, float(c), int(m)) for n, c, m in zip("abc", sizes, memory, strict=True)]
    models = {
        f.name: LatencyModel(f.name, f.cores / 0.00065 * rng.uniform(0.7, 1.3), 2.0, 1.4)
        for f in flavours
    }
    catalog = CostCatalog(0.04, float(rng.uniform(0, 0.05)), "USD", "test")
    rooms = [0.12, 0.2, 0.24, 0.3, 0.33, 0.36]
    devices = {f"d{i}": float(rng.choice(rooms)) for i in range(int(rng.integers(1, 4)))}
    return models, flavours, catalog, devices


@pytest.mark.parametrize("seed", [13, 31])
def test_milp_cuts_unplaceable_totals(seed: int) -> None:
    models, flavours, catalog, devices = _odd_instance(seed)
    top = sum(devices.values()) / 0.00065
    for rate in np.linspace(0, top, 25):
        _compare(float(rate), models, flavours, catalog, devices)


@pytest.mark.parametrize("limits", [{"_MAX_PATTERNS": 1}, {"_MAX_CUTS": 0}, {"_MAX_NODES": 1}])
def test_milp_fallbacks_are_exact_too(monkeypatch: pytest.MonkeyPatch, limits: dict) -> None:
    """Too many patterns to list, too many cuts, a long search: the placement MILP."""
    for name, value in limits.items():
        monkeypatch.setattr(optimize, name, value)
    models, flavours, catalog, devices = _odd_instance(13)
    top = sum(devices.values()) / 0.00065
    for rate in np.linspace(0.5 * top, top, 6):
        _compare(float(rate), models, flavours, catalog, devices)
    _compare(300.0, _models(), list(DEFAULT_FLAVOURS), DEFAULT_CATALOG, {"a": 0.33, "b": 0.2})


def test_demand_beyond_the_cluster_is_none() -> None:
    models, devices = _models(), {"a": 0.25, "b": 0.16}
    for solve in (solve_exact, solve_greedy):
        assert solve(1e6, SLO, models, DEFAULT_FLAVOURS, DEFAULT_CATALOG, devices) is None
        assert solve(10.0, SLO, models, DEFAULT_FLAVOURS, DEFAULT_CATALOG, {}) is None
        # an SLO no idle replica meets leaves no usable flavour
        assert solve(10.0, 1.0, models, DEFAULT_FLAVOURS, DEFAULT_CATALOG, devices) is None


def test_min_replicas_and_zero_demand() -> None:
    models, devices = _models(), {"a": 0.42, "b": 0.42}
    for solve in (solve_exact, solve_greedy):
        one = solve(0.0, SLO, models, DEFAULT_FLAVOURS, DEFAULT_CATALOG, devices)
        assert one is not None and one.n_replicas == 1
        three = solve(0.0, SLO, models, DEFAULT_FLAVOURS, DEFAULT_CATALOG, devices, min_replicas=3)
        assert three is not None and three.n_replicas == 3
        none = solve(0.0, SLO, models, DEFAULT_FLAVOURS, DEFAULT_CATALOG, devices, min_replicas=0)
        assert none is not None and none.replicas == {} and none.cost_per_hour == 0


def test_bad_arguments_are_spec_errors() -> None:
    models, devices = _models(), {"a": 0.42}
    with pytest.raises(SpecError, match="replica bounds"):
        solve_exact(1.0, SLO, models, DEFAULT_FLAVOURS, DEFAULT_CATALOG, devices, max_replicas=0)
    with pytest.raises(SpecError, match="demand"):
        solve_greedy(-1.0, SLO, models, DEFAULT_FLAVOURS, DEFAULT_CATALOG, devices)
    with pytest.raises(SpecError, match="device 'a'"):
        solve_exact(1.0, SLO, models, DEFAULT_FLAVOURS, DEFAULT_CATALOG, {"a": -0.1})


def test_describe_and_gap() -> None:
    c = Config({"xs": 1, "m": 2}, 0.0214, 300.0)
    assert c.describe() == "2×m + 1×xs ($0.021/h)"
    assert Config({"m": 1}, 1.5, 1.0, currency="EUR").describe() == "1×m (1.500 EUR/h)"
    assert optimality_gap(Config({"m": 1}, 2.0, 1.0), Config({"l": 1}, 2.5, 1.0)) == 0.25
    assert math.isinf(optimality_gap(Config({}, 0.0, 0.0), Config({"l": 1}, 2.5, 1.0)))


def test_pooled_capacity_beats_the_per_replica_sum() -> None:
    models = _models()
    per_replica = slo_capacity({"m": 3}, models, SLO)
    assert per_replica == pytest.approx(3 * models["m"].max_rate(1, SLO))
    assert slo_capacity({"m": 3}, models, SLO, pooled=True) > per_replica
    mixed = {"m": 2, "l": 1}
    assert slo_capacity(mixed, models, SLO, pooled=True) == slo_capacity(mixed, models, SLO)


def test_placement_fits_checks_each_device() -> None:
    devices = {"a": 0.12, "b": 0.25}
    assert placement_fits({"a": {"xs": 3}, "b": {"l": 1}}, DEFAULT_FLAVOURS, devices)
    assert not placement_fits({"a": {"s": 2}}, DEFAULT_FLAVOURS, devices)
    assert not placement_fits({"c": {"xs": 1}}, DEFAULT_FLAVOURS, devices)


def test_solvers_are_fast_for_4_flavours_on_10_devices() -> None:
    models = _models()
    rooms = [0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.33, 0.36, 0.4, 0.42]
    devices = {f"dev{i}": r for i, r in enumerate(rooms)}
    args = (SLO, models, DEFAULT_FLAVOURS, DEFAULT_CATALOG, devices)
    solve_exact(100.0, *args)  # imports scipy's MILP once, fills the max_rate cache
    for solve in (solve_exact, solve_greedy):
        for rate in (300.0, 1500.0):
            best = math.inf
            for _ in range(3):
                start = time.perf_counter()
                assert solve(rate, *args) is not None
                best = min(best, time.perf_counter() - start)
            assert best < 0.05, f"{solve.__name__} at {rate} rps took {best * 1e3:.0f} ms"
