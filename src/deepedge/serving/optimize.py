"""The cheapest set of replicas, placed on the serving devices, that meets the SLO.

Every decision interval the agent asks: at the forecast's upper-quantile rate, which
replicas (how many of which flavour, on which device) keep the predicted p95 under the SLO
at the least cost per hour? Two solvers answer with the same signature:

* :func:`solve_exact`, exact by MILP (scipy's HiGHS): integer ``x[f, d]`` replicas of
  flavour ``f`` on device ``d``; minimise ``sum cost_f x[f, d]`` subject to
  ``sum cap_f x[f, d] >= rate`` (SLO capacity), ``sum_f cores_f x[f, d] <= capacity_d`` per
  device and ``min_replicas <= sum x <= max_replicas``. Solved as that MILP, HiGHS takes up
  to a second at some rates (many placements are equivalent), so it is decomposed: a MILP
  over the per-flavour totals with valid packing inequalities, then a search that places
  the totals, with cuts if they cannot be (see :func:`_milp`);
* :func:`solve_greedy`, a heuristic: add the flavour of least cost per unit of SLO capacity
  (best-fit onto the devices) until the demand is covered, then replace or drop replicas
  while that lowers the cost. It falls back on the MILP when it finds nothing, so it
  returns a configuration whenever one exists.

``cap_f = models[f].max_rate(1, slo_ms)``, the rate one replica of ``f`` serves within the
SLO, and demand is split across replicas in proportion to it. That is conservative for
the join-shortest-queue front end: ``c`` replicas of one flavour pool their queues and serve
``max_rate(c, slo) >= c * max_rate(1, slo)``. The MILP keeps the per-replica sum because it
is linear; :func:`slo_capacity` with ``pooled=True`` gives the pooled figure of a
one-flavour configuration for a caller that wants to check it.

Both solve 4 flavours on 10 devices in well under 50 ms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepedge.errors import SpecError
from deepedge.serving.costs import CostCatalog, Flavour
from deepedge.serving.latency import LatencyModel

__all__ = [
    "Config",
    "optimality_gap",
    "placement_fits",
    "slo_capacity",
    "solve_exact",
    "solve_greedy",
]

_CORES_EPS = 1e-9  # 3 x 0.04 cores must fit on a 0.12-core device despite binary fractions


@dataclass(frozen=True)
class Config:
    """A set of replicas: ``replicas`` (flavour -> count, positive counts only), where they
    run (``placement``: device -> flavour -> count), their ``cost_per_hour`` in
    ``currency`` and ``capacity_rps``, the total rate they serve within the SLO."""

    replicas: dict[str, int]
    cost_per_hour: float
    capacity_rps: float
    placement: dict[str, dict[str, int]] = field(default_factory=dict)
    currency: str = "USD"

    @property
    def n_replicas(self) -> int:
        return sum(self.replicas.values())

    def describe(self) -> str:
        """E.g. ``2×m + 1×xs ($0.021/h)``: most replicas first."""
        parts = sorted(self.replicas.items(), key=lambda item: (-item[1], item[0]))
        what = " + ".join(f"{n}×{name}" for name, n in parts) or "no replicas"
        price = (
            f"${self.cost_per_hour:.3f}/h"
            if self.currency == "USD"
            else f"{self.cost_per_hour:.3f} {self.currency}/h"
        )
        return f"{what} ({price})"


def slo_capacity(
    replicas: Mapping[str, int],
    models: Mapping[str, LatencyModel],
    slo_ms: float,
    *,
    pooled: bool = False,
) -> float:
    """The total rate ``replicas`` serve with p95 <= ``slo_ms``: the sum of each replica's
    own capacity (what the solvers use), or with ``pooled`` and one flavour, the capacity
    of its replicas as one M/M/c pool, which join-shortest-queue routing comes close to."""
    counts = {name: n for name, n in replicas.items() if n > 0}
    missing = sorted(set(counts) - set(models))
    if missing:
        raise SpecError(
            f"no latency model for flavour {missing[0]!r}",
            hint="fit the latency models of every flavour you run",
        )
    if pooled and len(counts) == 1:
        ((name, n),) = counts.items()
        return models[name].max_rate(n, slo_ms)
    return sum(n * models[name].max_rate(1, slo_ms) for name, n in counts.items())


def placement_fits(
    placement: Mapping[str, Mapping[str, int]],
    flavours: Iterable[Flavour],
    devices: Mapping[str, float],
) -> bool:
    """Whether every device of ``placement`` exists and holds its replicas' cores."""
    cores = {f.name: f.cores for f in flavours}
    for device, counts in placement.items():
        if device not in devices:
            return False
        used = sum(cores[name] * n for name, n in counts.items())
        if used > devices[device] + _CORES_EPS:
            return False
    return True


def optimality_gap(exact: Config, heuristic: Config) -> float:
    """How much dearer the heuristic's configuration is: ``heuristic / exact - 1``."""
    if exact.cost_per_hour <= 0:
        return 0.0 if heuristic.cost_per_hour <= 0 else math.inf
    return heuristic.cost_per_hour / exact.cost_per_hour - 1


# ---------------------------------------------------------------------------------------
# the problem both solvers share


@dataclass(frozen=True)
class _Problem:
    """The usable flavours (a model, some SLO capacity, a device they fit on) as arrays."""

    names: list[str]
    cost: np.ndarray
    cap: np.ndarray
    cores: np.ndarray
    devices: list[str]
    room: np.ndarray
    rate: float
    min_replicas: int
    max_replicas: int
    currency: str

    def covers(self, capacity: float) -> bool:
        return capacity >= self.rate * (1 - 1e-12)

    def config(self, x: np.ndarray) -> Config:
        """The configuration of counts ``x[f, d]``."""
        x = np.asarray(np.rint(x), dtype=int)
        per_flavour = x.sum(axis=1)
        replicas = {n: int(c) for n, c in zip(self.names, per_flavour, strict=True) if c > 0}
        placement = {
            d: {n: int(x[i, j]) for i, n in enumerate(self.names) if x[i, j] > 0}
            for j, d in enumerate(self.devices)
            if x[:, j].any()
        }
        return Config(
            replicas=replicas,
            cost_per_hour=float(self.cost @ per_flavour),
            capacity_rps=float(self.cap @ per_flavour),
            placement=placement,
            currency=self.currency,
        )

    def hopeless(self) -> bool:
        """Cheap proofs that nothing is feasible: no flavour; the devices' cores, filled at
        the best capacity per core (an upper bound on any packing), or the replica cap
        filled with the most capacious flavour do not cover the demand; too little room
        for ``min_replicas`` of the smallest flavour."""
        if not self.names:
            return True
        fits = np.floor((self.room[None, :] + _CORES_EPS) / self.cores[:, None])  # (f, d)
        density = np.where(fits > 0, self.cap[:, None] / self.cores[:, None], 0.0)
        bound = float(np.sum(self.room * density.max(axis=0)))
        return (
            not self.covers(bound)
            or not self.covers(self.max_replicas * float(self.cap.max()))
            or float(fits.max(axis=0).sum()) < self.min_replicas
        )


def _problem(
    rate_rps: float,
    slo_ms: float,
    models: Mapping[str, LatencyModel],
    flavours: Iterable[Flavour],
    catalog: CostCatalog,
    devices: Mapping[str, float],
    min_replicas: int,
    max_replicas: int,
) -> _Problem:
    if not (math.isfinite(rate_rps) and rate_rps >= 0):
        raise SpecError(f"demand {rate_rps!r} rps", hint="give a finite rate of at least 0")
    if not (math.isfinite(slo_ms) and slo_ms > 0):
        raise SpecError(f"SLO {slo_ms!r} ms", hint="give a positive p95 target in ms")
    if min_replicas < 0 or max_replicas < min_replicas:
        raise SpecError(
            f"replica bounds {min_replicas}..{max_replicas} are empty",
            hint="give 0 <= min_replicas <= max_replicas",
        )
    for name, room in devices.items():
        if not (math.isfinite(room) and room >= 0):
            raise SpecError(
                f"device {name!r} offers {room!r} cores", hint="give at least 0 host cores"
            )
    flavour_list = list(flavours)
    names = [f.name for f in flavour_list]
    if len(set(names)) < len(names):
        raise SpecError("a flavour is given twice", hint="name each flavour once")
    max_room = max(devices.values(), default=0.0)
    usable = [
        (f, models[f.name].max_rate(1, slo_ms))
        for f in sorted(flavour_list, key=lambda f: f.name)
        if f.name in models and f.cores <= max_room + _CORES_EPS
    ]
    usable = [(f, cap) for f, cap in usable if cap > 0]
    return _Problem(
        names=[f.name for f, _ in usable],
        cost=np.array([catalog.cost_per_hour(f) for f, _ in usable], dtype=float),
        cap=np.array([cap for _, cap in usable], dtype=float),
        cores=np.array([f.cores for f, _ in usable], dtype=float),
        devices=list(devices),
        room=np.array(list(devices.values()), dtype=float),
        rate=float(rate_rps),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        currency=catalog.currency,
    )


# ---------------------------------------------------------------------------------------
# exact


def solve_exact(
    rate_rps: float,
    slo_ms: float,
    models: Mapping[str, LatencyModel],
    flavours: Iterable[Flavour],
    catalog: CostCatalog,
    devices: Mapping[str, float],
    *,
    min_replicas: int = 1,
    max_replicas: int = 32,
) -> Config | None:
    """The cost-minimal configuration serving ``rate_rps`` within ``slo_ms`` on
    ``devices`` (name -> host cores free for replicas), by MILP; None when none exists.

    Flavours without a latency model, with no SLO capacity (an idle replica already misses
    the SLO) or larger than every device are left out.
    """
    prob = _problem(
        rate_rps, slo_ms, models, flavours, catalog, devices, min_replicas, max_replicas
    )
    if prob.rate == 0 and prob.min_replicas == 0:
        return prob.config(np.zeros((len(prob.names), len(prob.devices))))
    if prob.hopeless():
        return None
    return _milp(prob)


_MAX_PATTERNS = 2000  # per device; a larger device is bounded by its LP relaxation instead
_MAX_NODES = 20_000  # of the packing search, before the placement MILP settles it
_MAX_CUTS = 30  # totals found unplaceable, before the placement MILP settles it


@dataclass(frozen=True)
class _Packing:
    """What the devices can hold. ``patterns[d]``: every count vector (one count per
    flavour) that fits on device ``d``, most cores first, or None when there are too many
    to list. ``best[d, w]``: the most of ``weights[w] @ counts`` device ``d`` holds.

    For any weights, ``weights @ totals <= best.sum(axis=0)`` holds for every placeable
    ``totals``: a valid inequality on the totals alone. The weights are each flavour's
    cores, SLO capacity and 1, each counted only for flavours of at least a given size,
    which fit on fewer devices: together they bound the totals nearly as tightly as
    placing every replica does.
    """

    patterns: list[np.ndarray | None]
    weights: np.ndarray
    best: np.ndarray


def _patterns(room: float, cores: np.ndarray, max_n: int) -> np.ndarray | None:
    out: list[tuple[int, ...]] = []

    def extend(i: int, left: float, counts: tuple[int, ...]) -> bool:
        if i == len(cores):
            out.append(counts)
            return len(out) <= _MAX_PATTERNS
        n = 0
        while n * cores[i] <= left + _CORES_EPS and sum(counts) + n <= max_n:
            if not extend(i + 1, left - n * cores[i], (*counts, n)):
                return False
            n += 1
        return True

    if not extend(0, room, ()):
        return None
    patterns = np.array(out, dtype=int)
    return patterns[np.argsort(-(patterns @ cores), kind="stable")]


def _packing(prob: _Problem) -> _Packing:
    weights = np.array(
        [
            np.where(prob.cores >= size - _CORES_EPS, per_flavour, 0.0)
            for size in np.unique(prob.cores)
            for per_flavour in (prob.cores, prob.cap, np.ones_like(prob.cores))
        ]
    )
    patterns = [_patterns(room, prob.cores, prob.max_replicas) for room in prob.room]
    best = np.zeros((len(prob.devices), len(weights)))
    for d, (room, pats) in enumerate(zip(prob.room, patterns, strict=True)):
        if pats is not None:
            best[d] = (pats @ weights.T).max(axis=0)
            continue
        fits = prob.cores <= room + _CORES_EPS  # the LP bound: fill with the densest
        per_core = np.where(fits, weights / prob.cores, 0.0).max(axis=1)
        best[d] = np.minimum(room * per_core, prob.max_replicas * (weights * fits).max(axis=1))
    return _Packing(patterns, weights, best)


def _milp(prob: _Problem) -> Config | None:
    """Exact, by decomposition. A MILP over the per-flavour totals (a handful of
    variables, the placement stood in for by :class:`_Packing`'s inequalities) gives a
    lower bound; if its totals can be placed (:func:`_place`) they are optimal. If not, no
    superset of them can be either, so a cut excluding those is added and the totals are
    solved again (rarely needed). One MILP placing every replica is the same problem, but
    its many equivalent placements cost HiGHS up to a second at some rates; it is the
    last resort."""
    packing = _packing(prob)
    cuts: list[np.ndarray] = []
    for _ in range(_MAX_CUTS):
        totals = _totals_milp(prob, packing, cuts)
        if totals is None:
            return None
        x = _place(prob, packing, totals)
        if x is not None:
            return prob.config(x)
        cuts.append(totals)
    x = _placement_milp(prob, packing)
    return None if x is None else prob.config(x)


def _upper(prob: _Problem) -> np.ndarray:
    """``(f, d)``: the most replicas of ``f`` device ``d`` holds."""
    fits = np.floor((prob.room[None, :] + _CORES_EPS) / prob.cores[:, None])
    return np.minimum(fits, prob.max_replicas)


def _totals_milp(prob: _Problem, packing: _Packing, cuts: list[np.ndarray]) -> np.ndarray | None:
    """The cheapest totals ``n_f`` that cover the demand, satisfy the packing inequalities
    and contain no cut vector ``n*``: for each cut, binaries ``z_f`` pick a flavour with
    ``n_f <= n*_f - 1``."""
    from scipy.optimize import Bounds, milp

    nf = len(prob.names)
    nv = nf * (1 + len(cuts))
    n_upper = _upper(prob).sum(axis=1).clip(max=prob.max_replicas)
    z_upper = np.ones(nv - nf)
    rows = _Rows(nv)
    rows.add(prob.cap, prob.rate * (1 - 1e-12), np.inf)
    rows.add(np.ones(nf), prob.min_replicas, prob.max_replicas)
    for weight, bound in zip(packing.weights, packing.best.sum(axis=0), strict=True):
        rows.add(weight, -np.inf, bound + 1e-9)
    for c, cut in enumerate(cuts):
        pick = np.zeros(nv)
        for f in range(nf):
            z = nf * (1 + c) + f
            big_m = n_upper[f] - cut[f] + 1  # z = 1 forces n_f <= cut_f - 1
            row = np.zeros(nv)
            row[f], row[z] = 1.0, big_m
            rows.add(row, -np.inf, cut[f] - 1 + big_m)
            pick[z] = 1.0
            if cut[f] == 0:
                z_upper[z - nf] = 0.0
        rows.add(pick, 1.0, np.inf)
    result = milp(
        c=np.concatenate([prob.cost, np.zeros(nv - nf)]),
        constraints=rows.constraint(),
        integrality=np.ones(nv),
        bounds=Bounds(np.zeros(nv), np.concatenate([n_upper, z_upper])),
        options={"mip_rel_gap": 0.0, "time_limit": 5.0},
    )
    return None if result.x is None else np.rint(result.x[:nf]).astype(int)


def _place(prob: _Problem, packing: _Packing, totals: np.ndarray) -> np.ndarray | None:
    """A placement ``x[f, d]`` of ``totals``, or None when there is none: a depth-first
    search over the devices, largest first, trying each device's patterns (most cores
    first) and pruning with the packing inequalities of the devices left; the placement
    MILP decides when a device's patterns were not listed or the search runs long."""
    if any(p is None for p in packing.patterns):
        return _placement_milp(prob, packing, totals)
    order = sorted(range(len(prob.devices)), key=lambda d: (-prob.room[d], d))
    left_best = np.cumsum(packing.best[order][::-1], axis=0)[::-1]  # devices i.. together
    dead: set[tuple[int, tuple[int, ...]]] = set()
    chosen: dict[int, np.ndarray] = {}
    nodes = 0

    def search(i: int, rest: np.ndarray) -> bool | None:
        nonlocal nodes
        if not rest.any():
            return True
        key = (i, tuple(int(v) for v in rest))
        if i == len(order) or key in dead:
            return False
        nodes += 1
        if nodes > _MAX_NODES:
            return None
        if np.any(packing.weights @ rest > left_best[i] + 1e-9):
            dead.add(key)
            return False
        patterns = packing.patterns[order[i]]
        assert patterns is not None
        for pattern in patterns[(patterns <= rest).all(axis=1)]:
            found = search(i + 1, rest - pattern)
            if found is None:
                return None
            if found:
                chosen[order[i]] = pattern
                return True
        dead.add(key)
        return False

    found = search(0, np.asarray(totals, dtype=int))
    if found is None:
        return _placement_milp(prob, packing, totals)
    if not found:
        return None
    x = np.zeros((len(prob.names), len(prob.devices)), dtype=int)
    for d, pattern in chosen.items():
        x[:, d] = pattern
    return x


def _placement_milp(
    prob: _Problem, packing: _Packing, totals: np.ndarray | None = None
) -> np.ndarray | None:
    """The whole problem as one MILP over ``x[f, d]``; with ``totals``, only whether those
    can be placed. Slow on some instances, hence the last resort."""
    from scipy.optimize import Bounds, milp

    nf, nd = len(prob.names), len(prob.devices)
    to_totals = np.kron(np.eye(nf), np.ones(nd))  # x (flavour-major) -> totals
    rows = _Rows(nf * nd)
    rows.add(prob.cap @ to_totals, prob.rate * (1 - 1e-12), np.inf)
    rows.add(np.ones(nf * nd), prob.min_replicas, prob.max_replicas)
    for d in range(nd):
        on_d = np.zeros((nf, nd))
        on_d[:, d] = prob.cores
        rows.add(on_d.ravel(), -np.inf, prob.room[d] + _CORES_EPS)
    for weight, bound in zip(packing.weights, packing.best.sum(axis=0), strict=True):
        rows.add(weight @ to_totals, -np.inf, bound + 1e-9)
    if totals is not None:
        for f in range(nf):
            rows.add(to_totals[f], float(totals[f]), float(totals[f]))
    result = milp(
        c=np.zeros(nf * nd) if totals is not None else prob.cost @ to_totals,
        constraints=rows.constraint(),
        integrality=np.ones(nf * nd),
        bounds=Bounds(np.zeros(nf * nd), _upper(prob).ravel()),
        options={"mip_rel_gap": 0.0, "time_limit": 5.0},
    )
    return None if result.x is None else np.rint(result.x).astype(int).reshape(nf, nd)


class _Rows:
    """Constraint rows ``lower <= row @ v <= upper``, added one at a time; a short row
    covers the first variables."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: list[np.ndarray] = []
        self.lower: list[float] = []
        self.upper: list[float] = []

    def add(self, row: np.ndarray, lower: float, upper: float) -> None:
        full = np.zeros(self.n)
        full[: len(row)] = row
        self.rows.append(full)
        self.lower.append(float(lower))
        self.upper.append(float(upper))

    def constraint(self) -> Any:
        from scipy.optimize import LinearConstraint

        return LinearConstraint(np.array(self.rows), self.lower, self.upper)


# ---------------------------------------------------------------------------------------
# greedy


def solve_greedy(
    rate_rps: float,
    slo_ms: float,
    models: Mapping[str, LatencyModel],
    flavours: Iterable[Flavour],
    catalog: CostCatalog,
    devices: Mapping[str, float],
    *,
    min_replicas: int = 1,
    max_replicas: int = 32,
) -> Config | None:
    """A cheap configuration, fast: the greedy fill (once by cost per unit of capacity,
    once largest capacity first, so a tight replica cap is met), improved by local
    replacement; the MILP only when both fail. Never cheaper than :func:`solve_exact`."""
    prob = _problem(
        rate_rps, slo_ms, models, flavours, catalog, devices, min_replicas, max_replicas
    )
    if prob.rate == 0 and prob.min_replicas == 0:
        return prob.config(np.zeros((len(prob.names), len(prob.devices))))
    if prob.hopeless():
        return None
    by_value = sorted(range(len(prob.names)), key=lambda i: (prob.cost[i] / prob.cap[i], i))
    by_size = sorted(range(len(prob.names)), key=lambda i: (-prob.cap[i], prob.cost[i], i))
    best: np.ndarray | None = None
    for order in (by_value, by_size):
        x = _fill(prob, order)
        if x is None:
            continue
        _improve(prob, x)
        if best is None or prob.cost @ x.sum(axis=1) < prob.cost @ best.sum(axis=1) - 1e-15:
            best = x
    if best is None:
        return _milp(prob)  # packing or the replica cap defeated the greedy: be exact
    return prob.config(best)


def _best_fit(prob: _Problem, free: np.ndarray, f: int) -> int | None:
    """The device with the least room left that still takes a replica of ``f``."""
    fits = np.flatnonzero(free + _CORES_EPS >= prob.cores[f])
    return None if fits.size == 0 else int(fits[np.argmin(free[fits])])


def _fill(prob: _Problem, order: list[int]) -> np.ndarray | None:
    x = np.zeros((len(prob.names), len(prob.devices)), dtype=int)
    free = prob.room.copy()
    count, capacity = 0, 0.0
    while not prob.covers(capacity) or count < prob.min_replicas:
        if count >= prob.max_replicas:
            return None
        for f in order:
            d = _best_fit(prob, free, f)
            if d is not None:
                break
        else:
            return None
        x[f, d] += 1
        free[d] -= prob.cores[f]
        count, capacity = count + 1, capacity + prob.cap[f]
    return x


def _improve(prob: _Problem, x: np.ndarray) -> None:
    """Drop or downgrade replicas, dearest first, while the demand stays covered."""
    improved = True
    while improved:
        improved = False
        placed = [(f, d) for f, d in zip(*np.nonzero(x), strict=True)]
        for f, d in sorted(placed, key=lambda fd: (-prob.cost[fd[0]], fd[0], fd[1])):
            x[f, d] -= 1
            capacity = float(prob.cap @ x.sum(axis=1))
            if prob.covers(capacity) and int(x.sum()) >= prob.min_replicas:
                improved = True
                break
            free = prob.room - prob.cores @ x
            cheaper = sorted(
                (g for g in range(len(prob.names)) if prob.cost[g] < prob.cost[f]),
                key=lambda g: (prob.cost[g], g),
            )
            for g in cheaper:
                e = _best_fit(prob, free, g)
                if e is not None and prob.covers(capacity + prob.cap[g]):
                    x[g, e] += 1
                    improved = True
                    break
            if improved:
                break
            x[f, d] += 1
