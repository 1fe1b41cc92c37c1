"""The exact planner: the whole problem as one mixed-integer program (HiGHS via scipy).

Variables, per device i and intensity level l: z_il ∈ {0,1} (device i trains at level
l), b_il ∈ ℕ (its samples per step then); per device count k: y_k ∈ {0,1}; and T, the
slowest step. Constraints:

    Σ_l z_il ≤ 1                      one level per device
    z_il ≤ b_il ≤ cap_il · z_il       at least one sample when used, at most the cap
    Σ_il b_il = B                     the global batch
    f_il·(a_i·z_il + s_i·b_il) ≤ T    every used device finishes within T
    Σ_k y_k = 1,  Σ_il z_il = Σ_k k·y_k

minimise T + Σ_k C(k)·y_k. It proves optimality for small clusters (the benchmark uses
n ≤ 12) and measures the heuristic's gap; it is not meant for hundreds of devices.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from deepedge.errors import PlanInfeasible
from deepedge.plan.problem import PlanningProblem, Solution

__all__ = ["solve_exact"]


def solve_exact(problem: PlanningProblem, *, time_limit_s: float = 60.0) -> Solution:
    started = time.perf_counter()
    devices = problem.usable()
    B = problem.global_batch
    pairs = [(i, j) for i, d in enumerate(devices) for j, lv in enumerate(d.levels) if lv.cap > 0]
    n, P = len(devices), len(pairs)
    ks = list(range(1, min(n, B) + 1))
    # variable layout: z (P), b (P), y (len(ks)), T (1)
    nz, nb, ny = P, P, len(ks)
    iz, ib, iy, iT = 0, P, 2 * P, 2 * P + ny
    nvar = nz + nb + ny + 1
    c = np.zeros(nvar)
    c[iT] = 1.0
    c[iy : iy + ny] = [problem.comm_s(k) for k in ks]

    rows: list[tuple[dict[int, float], float, float]] = []
    for i in range(n):  # one level per device
        rows.append(({iz + p: 1.0 for p, (ii, _) in enumerate(pairs) if ii == i}, -np.inf, 1.0))
    for p, (i, j) in enumerate(pairs):
        d, lv = devices[i], devices[i].levels[j]
        rows.append(({ib + p: 1.0, iz + p: -1.0}, 0.0, np.inf))  # b ≥ z
        rows.append(({ib + p: 1.0, iz + p: -float(lv.cap)}, -np.inf, 0.0))  # b ≤ cap·z
        coef = {iz + p: lv.slowdown * d.base_s, ib + p: lv.slowdown * d.per_sample_s, iT: -1.0}
        rows.append((coef, -np.inf, 0.0))  # step ≤ T
    rows.append(({ib + p: 1.0 for p in range(P)}, float(B), float(B)))
    rows.append(({iy + q: 1.0 for q in range(ny)}, 1.0, 1.0))
    count = {iz + p: 1.0 for p in range(P)} | {iy + q: -float(k) for q, k in enumerate(ks)}
    rows.append((count, 0.0, 0.0))

    A = lil_matrix((len(rows), nvar))
    lo, hi = np.empty(len(rows)), np.empty(len(rows))
    for r, (coef, low, high) in enumerate(rows):
        for col, v in coef.items():
            A[r, col] = v
        lo[r], hi[r] = low, high
    integrality = np.ones(nvar)
    integrality[iT] = 0
    upper = np.concatenate(
        [
            np.ones(P),
            [float(devices[i].levels[j].cap) for i, j in pairs],
            np.ones(ny),
            [np.inf],
        ]
    )
    res = milp(
        c,
        constraints=LinearConstraint(A.tocsr(), lo, hi),
        integrality=integrality,
        bounds=Bounds(np.zeros(nvar), upper),
        options={"time_limit": time_limit_s, "disp": False},
    )
    if res.x is None:
        raise PlanInfeasible(
            f"the exact planner found no solution ({res.message})",
            hint="use the heuristic planner for large clusters",
        )
    x = res.x
    batches, intensities = {}, {}
    for p, (i, j) in enumerate(pairs):
        if x[iz + p] > 0.5:
            batches[devices[i].name] = round(x[ib + p])
            intensities[devices[i].name] = devices[i].levels[j].intensity
    compute = max(
        (devices[i].base_s + devices[i].per_sample_s * batches[devices[i].name])
        * devices[i].levels[j].slowdown
        for p, (i, j) in enumerate(pairs)
        if x[iz + p] > 0.5
    )
    return Solution(
        "exact",
        batches,
        intensities,
        compute,
        problem.comm_s(len(batches)),
        time.perf_counter() - started,
        optimal=res.status == 0,
    )
