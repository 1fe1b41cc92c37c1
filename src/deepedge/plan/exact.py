"""The exact planner: the whole problem as one mixed-integer program (HiGHS via scipy).

Variables, per device i and intensity level l: z_il ∈ {0,1} (device i trains at level
l), b_il ∈ ℕ (its samples per step then); per device count k: y_k ∈ {0,1}; and T, the
slowest step. Constraints:

    Σ_l z_il ≤ 1                      one level per device
    z_il ≤ b_il ≤ cap_il · z_il       at least one sample when used, at most the cap
    Σ_il b_il = B                     the global batch
    f_il·(a_i·z_il + s_i·b_il) ≤ T    every used device finishes within T
    Σ_k y_k = 1,  Σ_il z_il = Σ_k k·y_k

minimise T + Σ_k C(k)·y_k, with T between the fractional lower bound and the heuristic's
plan (no better plan has a longer compute step). It proves optimality for small clusters
(the benchmark uses n ≤ 12) and measures the heuristic's gap; it is not meant for hundreds
of devices. Caps above :data:`MAX_CAP` are refused: HiGHS accepts a binary within 1e-6 of
0, and ``b ≤ cap·z`` would then let an "unused" device take ``1e-6·cap`` samples.
HiGHS writes some progress to the C-level stdout even with ``disp`` off; it is kept out
of the caller's output.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from deepedge.errors import PlanInfeasible, SpecError
from deepedge.plan.heuristic import lower_bound_step_s, solve_heuristic
from deepedge.plan.problem import PlanningProblem, Solution

__all__ = ["MAX_CAP", "solve_exact"]

MAX_CAP = 100_000
"""Largest per-device cap the MILP represents exactly (see the module doc)."""

_STDOUT_LOCK = threading.Lock()


@contextlib.contextmanager
def _highs_output_hidden() -> Iterator[None]:
    """Send file descriptor 1 to a scratch file while HiGHS runs, then pass on whatever
    other threads printed meanwhile, without HiGHS's own lines."""
    with _STDOUT_LOCK, tempfile.TemporaryFile() as scratch:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(scratch.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            scratch.seek(0)
            kept = [ln for ln in scratch.read().splitlines(keepends=True) if b"Highs" not in ln]
            if kept:
                sys.stdout.buffer.write(b"".join(kept))
                sys.stdout.flush()


def solve_exact(problem: PlanningProblem, *, time_limit_s: float = 60.0) -> Solution:
    """The optimal plan, or the best found within ``time_limit_s`` (``optimal`` False)."""
    started = time.perf_counter()
    devices = problem.usable()
    B = problem.global_batch
    biggest = max(lv.cap for d in devices for lv in d.levels)
    if biggest > MAX_CAP:
        raise SpecError(
            f"the exact planner handles caps up to {MAX_CAP:,} samples per device, this "
            f"problem has {biggest:,}",
            hint="use the heuristic planner (the default), which is exact for small clusters",
        )
    heuristic = solve_heuristic(problem)
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
    # No better plan computes longer than the heuristic's step minus the cheapest all-reduce.
    t_hi = heuristic.step_s - min(problem.comm_s(k) for k in ks) + 1e-9
    lower = np.zeros(nvar)
    lower[iT] = lower_bound_step_s(problem) * (1 - 1e-9)
    upper = np.concatenate(
        [
            np.ones(P),
            [float(devices[i].levels[j].cap) for i, j in pairs],
            np.ones(ny),
            [max(t_hi, lower[iT])],
        ]
    )
    left = max(0.1, time_limit_s - (time.perf_counter() - started))
    with _highs_output_hidden():
        res = milp(
            c,
            constraints=LinearConstraint(A.tocsr(), lo, hi),
            integrality=integrality,
            bounds=Bounds(lower, upper),
            options={"time_limit": left, "disp": False},
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
    sol = Solution(
        "exact",
        batches,
        intensities,
        compute,
        problem.comm_s(len(batches)),
        time.perf_counter() - started,
        optimal=res.status == 0,
    )
    try:
        sol.check(problem)
    except AssertionError as err:  # rounding broke a constraint: numerical trouble
        raise PlanInfeasible(
            f"the exact planner's solution does not round to a valid plan ({err})",
            hint="use the heuristic planner (the default)",
        ) from err
    return sol
