"""Benchmark: the Deep-Edge planner on simulated fleets of 1,000 to 100,000 devices.

Measures (all on this machine, in the same run):
1. planning time at each fleet size: building the problem (LC and memory limits per
   device, shared between identical devices) and solving it with the heuristic;
2. the heuristic's gap to the exact MILP (HiGHS) on random simulated fleets of 4 to 12
   devices and on ``deepedge.sim.small_instance`` problems (tiny LC caps, large all-reduce);
3. per fleet size, the predicted step time of each policy against the lower bound T_min,
   and how many devices the interference-blind baselines would push past an LC deadline.

The fleets and their LC limits come from ``deepedge.sim`` (a stated queueing model of
p95 against batch and intensity, its constants fitted to the lab's measured phases by
``bench/sim_calibration.py``): this benchmark measures the planner, not the cluster.
Writes bench/results/schedule_scale.json and .md.

    .venv/bin/python bench/schedule_scale.py [--sizes 1000,10000,100000] [--gap-fleets 500]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import numpy as np
from rich.console import Console

from _common import machine, write_results
from deepedge.errors import PlanInfeasible
from deepedge.plan.exact import solve_exact
from deepedge.plan.heuristic import lower_bound_step_s, solve_heuristic
from deepedge.plan.problem import PlanningProblem
from deepedge.sim import build_problem, small_instance, synthetic_fleet


def baselines(problem: PlanningProblem) -> dict[str, dict[str, float]]:
    """Interference-blind policies: every device at full intensity, caps ignored."""
    devs = problem.devices
    B = problem.global_batch
    full = [next(lv for lv in d.levels if lv.intensity == 1.0) for d in devs]
    a = np.array([d.base_s for d in devs])
    s = np.array([d.per_sample_s for d in devs])
    f = np.array([lv.slowdown for lv in full])
    cap = np.array([lv.cap for lv in full])
    out = {}
    # equal split over all devices (plain DDP); with more devices than samples, one each
    n = min(len(devs), B)
    eq = np.zeros(len(devs), int)
    eq[:n] = B // n
    eq[: B - eq.sum()] += 1
    # throughput-proportional at full intensity, blind to LC limits
    speed = 1.0 / ((a / max(1, B / len(devs)) + s) * f)
    prop = np.floor(speed / speed.sum() * B).astype(int)
    prop[np.argsort(-speed)[: B - prop.sum()]] += 1
    fastest = np.zeros(len(devs), int)
    fastest[int(np.argmax(1.0 / ((a + s * B) * f)))] = B
    for name, b in (("equal", eq), ("proportional (blind)", prop), ("fastest single", fastest)):
        used = b > 0
        step = float(np.max(((a + s * b) * f)[used])) + problem.comm_s(int(used.sum()))
        out[name] = {
            "step_s": step,
            "devices": int(used.sum()),
            "deadline_violations": int(np.count_nonzero(used & (b > cap))),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--batch-per-device", type=int, default=4, help="global batch / n")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gap-fleets", type=int, default=500)
    args = parser.parse_args()
    console = Console()
    sizes = [int(x) for x in args.sizes.split(",") if x]

    scale = []
    for n in sizes:
        B = args.batch_per_device * n
        builds, solves = [], []
        for r in range(args.repeats):
            fleet = synthetic_fleet(n, seed=r)
            t = time.perf_counter()
            problem = build_problem(fleet, B)
            builds.append(time.perf_counter() - t)
            sol = solve_heuristic(problem)
            solves.append(sol.solve_s)
        t_min = lower_bound_step_s(problem)
        row = {
            "devices": n,
            "global_batch": B,
            "build_s": statistics.median(builds),
            "solve_s": statistics.median(solves),
            "plan_s": statistics.median([b + s for b, s in zip(builds, solves, strict=True)]),
            "used": len(sol.local_batches),
            "throttled": sum(1 for c in sol.intensities.values() if c < 1.0),
            "excluded_by_limits": sum(1 for d in problem.devices if not d.usable),
            "step_s": sol.step_s,
            "t_min_step_s": t_min,
            "step_over_t_min": sol.step_s / t_min,
            "baselines": baselines(problem),
        }
        scale.append(row)
        console.print(
            f"n={n}: build {row['build_s']:.3f} s, solve {row['solve_s']:.3f} s, "
            f"{row['used']} used, step {row['step_s'] * 1e3:.1f} ms = "
            f"{row['step_over_t_min']:.2f}× T_min"
        )

    gaps = []
    for i in itertools.count():  # until --gap-fleets feasible instances are compared
        if len(gaps) == args.gap_fleets:
            break
        if i % 2:
            family, problem = "random small", small_instance(i)
        else:
            n = (4, 8, 12)[i // 2 % 3]
            family, problem = (
                "simulated fleet",
                build_problem(synthetic_fleet(n, seed=1000 + i), 8 * n),
            )
        try:
            e = solve_exact(problem)
        except PlanInfeasible:
            continue  # nothing to compare: the heuristic refuses it too (unit-tested)
        h = solve_heuristic(problem)
        gaps.append(
            {
                "family": family,
                "devices": len(problem.devices),
                "heuristic_s": h.step_s,
                "exact_s": e.step_s,
                "gap": h.step_s / e.step_s - 1,
                "proven_optimal": e.optimal,
                "exact_solve_s": e.solve_s,
                "heuristic_solve_s": h.solve_s,
            }
        )
    g = [x["gap"] for x in gaps]
    gap = {
        "fleets": len(gaps),
        "median_gap_pct": 100 * statistics.median(g),
        "max_gap_pct": 100 * max(g),
        "all_proven_optimal": all(x["proven_optimal"] for x in gaps),
        "within_3pct": sum(x["gap"] <= 0.03 for x in gaps),
        "families": {
            f: sum(x["family"] == f for x in gaps) for f in ("simulated fleet", "random small")
        },
        "runs": gaps,
    }
    console.print(
        f"gap over {len(g)} fleets: median {gap['median_gap_pct']:.2f} %, max "
        f"{gap['max_gap_pct']:.2f} %"
    )
    result = {
        "machine": machine("simulated"),
        "scale": scale,
        "gap": gap,
        "goals": {"plan_s_1k": 0.1, "plan_s_100k": 5.0, "max_gap_pct": 3.0},
    }
    write_results("schedule_scale", result, markdown(result))
    return 0


def markdown(r: dict) -> list[str]:
    lines = [
        "# Deep-Edge planner at scale (simulated fleets)",
        "",
        "| devices | global batch | build (s) | solve (s) | used | throttled | step / T_min |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in r["scale"]:
        lines.append(
            f"| {s['devices']:,} | {s['global_batch']:,} | {s['build_s']:.3f} | "
            f"{s['solve_s']:.3f} | {s['used']:,} | {s['throttled']:,} | "
            f"{s['step_over_t_min']:.3f} |"
        )
    lines += [
        "",
        "Interference-blind baselines on the same fleets (predicted step; devices pushed past "
        "an LC deadline):",
        "",
        "| devices | policy | step / T_min | devices used | deadline violations |",
        "|---:|---|---:|---:|---:|",
    ]
    for s in r["scale"]:
        lines.append(
            f"| {s['devices']:,} | deep-edge | {s['step_over_t_min']:.2f} | {s['used']:,} | 0 |"
        )
        for name, b in s["baselines"].items():
            lines.append(
                f"| {s['devices']:,} | {name} | {b['step_s'] / s['t_min_step_s']:.2f} | "
                f"{b['devices']:,} | {b['deadline_violations']:,} |"
            )
    g = r["gap"]
    lines += [
        "",
        f"Heuristic vs exact MILP on {g['fleets']} feasible instances "
        f"({g['families']['simulated fleet']} simulated fleets of 4–12 devices, "
        f"{g['families']['random small']} random small problems with tiny LC caps): median "
        f"gap {g['median_gap_pct']:.2f} %, max {g['max_gap_pct']:.2f} %, "
        f"{g['within_3pct']} within 3 % (all proven optimal: {g['all_proven_optimal']}).",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
