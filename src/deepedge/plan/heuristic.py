"""The fast planner: for each device count k, the smallest step at which k devices fit the batch.

For a target step time T every device can take ``b_i(T)`` samples (the most whose step
fits in T at its best allowed intensity, within its caps). The fewest devices that fit B
samples within T are the k with the largest ``b_i(T)``, so for each k the best step
``T_k`` is the smallest T at which the top k of ``b(T)`` sum to B: a bisection on T,
since every ``b_i`` grows with T. The plan is the k minimising ``T_k + C(k)``, its devices
the top k at ``T_k``, each taking the most samples that fit, minus the surplus, taken from
the slowest. With C non-decreasing in k and every k tried, this is optimal; the
property test in ``tests/unit/test_deadline_planner.py`` checks it against the exact MILP.

A fixed ranking of devices (by throughput) would be wrong exactly where LC limits bite: a
fast device capped at 3 samples ranks first but helps little, and a prefix of the ranking
can never drop it. Ranking is kept only to make large fleets fast: the ranked prefixes
find a good k and T first, and the exact top-k search then runs on the devices that fit
the most samples at that T (all of them up to ``_POOL_MIN`` devices). Vectorised with
numpy, it plans 100,000 devices in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from deepedge.plan.problem import DeviceOption, PlanningProblem, Solution

__all__ = ["lower_bound_step_s", "solve_heuristic"]

_POOL_MIN = 256  # the exact top-k search sees every device of fleets this small
_ALL_K = 64  # every k is tried up to this many devices; a geometric grid beyond


class _Fleet:
    """Vectorised devices: steps ``(a_i + s_i·b)·f_il`` within caps ``cap_il``.

    Levels are stored level-major (L × n), so the max over a device's levels is an
    elementwise maximum of L contiguous rows, not a slow reduction over a short axis.
    """

    def __init__(self, problem: PlanningProblem, devices: list[DeviceOption]) -> None:
        arr = problem.arrays(devices)
        self.devices = devices
        self.a, self.s, self.cap, self.slow = arr["a"], arr["s"], arr["cap"], arr["slow"]
        self._inv_slow = np.ascontiguousarray((1.0 / self.slow).T)
        self._cap_t = np.ascontiguousarray(self.cap.T)
        self._inv_s = 1.0 / self.s
        self.max_cap = self._cap_t.max(axis=0)

    def __len__(self) -> int:
        return len(self.devices)

    def fits(self, T: float, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Per device: the most samples whose step fits in T at some allowed level."""
        b = (T * self._inv_slow[:, rows] - self.a[rows]) * self._inv_s[rows] + 1e-9
        np.floor(b, out=b)
        np.minimum(b, self._cap_t[:, rows], out=b)
        best = b.max(axis=0)
        return np.maximum(best, 0.0, out=best)

    def subset(self, problem: PlanningProblem, rows: np.ndarray) -> _Fleet:
        return _Fleet(problem, [self.devices[i] for i in rows])

    def upper_T(self, B: int) -> float:
        """A step long enough for any device to take up to B samples at its slowest level."""
        return float(np.max((self.a + self.s * B) * self.slow.max(axis=1)))


def _bisect(
    fleet: _Fleet, B: int, enough: Callable[[np.ndarray], bool], rows: slice = slice(None)
) -> float:
    """Smallest T (to 1e-9 relative) with ``enough(fleet.fits(T, rows))``; it holds at
    upper_T."""
    lo, hi = 0.0, fleet.upper_T(B)
    for _ in range(64):
        mid = (lo + hi) / 2
        if enough(fleet.fits(mid, rows)):
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    return hi


def _top_k_T(fleet: _Fleet, k: int, B: int) -> float | None:
    """T_k: the smallest step at which some k devices fit B samples (None if none can)."""
    n = len(fleet)
    k = min(k, n)
    if np.partition(fleet.max_cap, n - k)[n - k :].sum() < B:
        return None
    return _bisect(fleet, B, lambda b: np.partition(b, n - k)[n - k :].sum() >= B)


def _prefix_T(fleet: _Fleet, k: int, B: int) -> float | None:
    """The smallest step at which the first k devices (in the fleet's order) fit B."""
    if fleet.max_cap[:k].sum() < B:
        return None
    return _bisect(fleet, B, lambda b: b.sum() >= B, slice(0, k))


def _chosen(fleet: _Fleet, k: int, T: float, *, prefix: bool) -> np.ndarray:
    """Rows of the devices a k-device plan at step T uses: the first k, or the k that fit
    the most samples in T (ties in the fleet's throughput order)."""
    if prefix:
        return np.arange(min(k, len(fleet)))
    return np.argsort(-fleet.fits(T), kind="stable")[: min(k, len(fleet))]


def _split(fleet: _Fleet, rows: np.ndarray, B: int, T: float) -> np.ndarray:
    """The most samples each chosen device fits in T, minus the surplus, from the slowest."""
    b = fleet.fits(T, rows).astype(np.int64)
    a, s, slow, cap = fleet.a[rows], fleet.s[rows], fleet.slow[rows], fleet.cap[rows]
    while (surplus := int(b.sum()) - B) > 0:
        ok = cap >= b[:, None]
        times = np.where(ok, (a + s * b)[:, None] * slow, np.inf).min(axis=1)
        times[b == 0] = -np.inf
        slowest = np.argsort(-times, kind="stable")[:surplus]
        b[slowest[b[slowest] > 0]] -= 1
    return b


def _candidates(n: int) -> list[int]:
    if n <= _ALL_K:
        return list(range(1, n + 1))
    grid = {1, n}
    x = 1.0
    while x < n:
        grid.add(round(x))
        x *= 1.25
    return sorted(k for k in grid if 1 <= k <= n)


def _search(
    fleet: _Fleet, problem: PlanningProblem, *, prefix: bool
) -> tuple[float, int, float] | None:
    """Best (T_k + C(k), k, T_k) over k: every k for small fleets, else a geometric grid
    refined by ternary search around its best point."""
    B = problem.global_batch
    solve = _prefix_T if prefix else _top_k_T
    cost: dict[int, tuple[float, float]] = {}  # k -> (T + C(used), T)

    def evaluate(k: int) -> float:
        if k not in cost:
            T = solve(fleet, k, B)
            if T is None:
                cost[k] = (np.inf, np.inf)
            else:
                rows = _chosen(fleet, k, T, prefix=prefix)
                used = int((fleet.fits(T, rows) > 0).sum())
                cost[k] = (T + problem.comm_s(used), T)
        return cost[k][0]

    grid = _candidates(len(fleet))
    for k in grid:
        evaluate(k)
    best = min(grid, key=lambda k: (cost[k][0], k))
    pos = grid.index(best)
    lo = grid[pos - 1] if pos > 0 else 1
    hi = grid[pos + 1] if pos + 1 < len(grid) else len(fleet)
    while hi - lo > 2:
        m1, m2 = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if evaluate(m1) <= evaluate(m2):
            hi = m2
        else:
            lo = m1
    for k in range(lo, hi + 1):
        evaluate(k)
    k = min(cost, key=lambda k: (cost[k][0], k))
    return None if not np.isfinite(cost[k][0]) else (cost[k][0], k, cost[k][1])


def _rank(devices: list[DeviceOption], B: int) -> list[DeviceOption]:
    """Fastest first: each device's best throughput at the largest batch it may take."""

    def speed(d: DeviceOption) -> float:
        best = 0.0
        for level in d.levels:
            b = min(level.cap, B)
            if b > 0:
                best = max(best, b / ((d.base_s + d.per_sample_s * b) * level.slowdown))
        return best

    return sorted(devices, key=lambda d: (-speed(d), d.name))


def _solution(
    problem: PlanningProblem, fleet: _Fleet, rows: np.ndarray, T: float, started: float
) -> Solution:
    b = _split(fleet, rows, problem.global_batch, T)
    batches, intensities, compute = {}, {}, 0.0
    for row, samples in zip(rows, b, strict=True):
        if samples > 0:
            d = fleet.devices[row]
            t, level = d.step_s(int(samples))
            assert level is not None
            batches[d.name], intensities[d.name] = int(samples), level.intensity
            compute = max(compute, t)
    return Solution(
        "heuristic",
        batches,
        intensities,
        compute,
        problem.comm_s(len(batches)),
        time.perf_counter() - started,
    )


def solve_heuristic(problem: PlanningProblem) -> Solution:
    """Plan ``problem``; raises :class:`~deepedge.errors.PlanInfeasible` when nothing fits."""
    started = time.perf_counter()
    ranked = _Fleet(problem, _rank(problem.usable(), problem.global_batch))
    if len(ranked) <= _POOL_MIN:
        found = _search(ranked, problem, prefix=False)
        assert found is not None  # usable() checked that all devices together fit B
        _, k, T = found
        return _solution(problem, ranked, _chosen(ranked, k, T, prefix=False), T, started)
    # Ranked prefixes find the scale; the top-k search then runs on the devices that fit
    # the most at that step, plus the prefix's own, so it can only improve on it.
    found = _search(ranked, problem, prefix=True)
    assert found is not None
    _, k, T = found
    by_prefix = _solution(problem, ranked, _chosen(ranked, k, T, prefix=True), T, started)
    size = max(_POOL_MIN, 2 * k)
    rows = np.union1d(np.arange(k), np.argsort(-ranked.fits(T), kind="stable")[:size])
    pool = ranked.subset(problem, rows)
    found = _search(pool, problem, prefix=False)
    assert found is not None
    _, k, T = found
    by_pool = _solution(problem, pool, _chosen(pool, k, T, prefix=False), T, started)
    best = min((by_pool, by_prefix), key=lambda sol: sol.step_s)
    return replace(best, solve_s=time.perf_counter() - started)


def lower_bound_step_s(problem: PlanningProblem) -> float:
    """T_min per step: the batch split in fractions over every usable device at its best
    allowed level, with no all-reduce. No plan can have a shorter step."""
    devices = problem.usable()
    arr = problem.arrays(devices)
    B = problem.global_batch

    def capacity(T: float) -> float:
        room = T / arr["slow"] - arr["a"][:, None]
        return float(
            np.clip(np.minimum(room / arr["s"][:, None], arr["cap"]), 0, None).max(1).sum()
        )

    lo, hi = 0.0, float(np.max((arr["a"] + arr["s"] * B) * arr["slow"].max(axis=1)))
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if capacity(mid) >= B else (mid, hi)
    return hi
