"""Benchmark: serving under a p95 SLO at least cost, three autoscaling policies side by side.

The demo's model (``demo-out/retrained-model.ckpt`` when a demo ran, else the demo job's
model at its initial weights: the same architecture, so the same cost per request) is
served on the demo cluster's five boards (their LC apps are not started). One week of the
Capital Bikeshare trace (2011, from :data:`START_HOUR`, a September Monday) is replayed
with one trace hour in :data:`HOUR_S` seconds, scaled so the year's busiest hour is
:data:`PEAK_RPS`, open-loop Poisson over HTTP through the front end. Each policy replays
the same week with the same arrival seed, one after the other on the same booted devices:

* ``barista``: forecast (weekly AutoReg, 95 % conformal upper quantile); replicas for the
  peak over the lead time (cold start + interval), cost-minimal flavour × replicas by
  MILP, started ahead; their flavours resized live for the next interval only;
* ``reactive``: HPA-style, CPU utilisation target 60 %, one flavour, scale-down window of
  one trace hour;
* ``static-peak``: the configuration for the week's peak, all week.

Also computed: the *hindsight* cost, the cheapest configuration for each replayed hour's
true rate with no lead time: what a policy that knew the future and started replicas
instantly would pay, a floor for every policy sized by the same latency model.

Also measured: the latency model per flavour (p95 against rate, fitted M/M/c + overhead),
the exact solver against the greedy heuristic over a sweep of rates (cost gap, time), the
replicas' cold starts, and the forecasters on four held-out weeks (MAPE, MASE).

Targets (issue 16): barista ≥ 99 % of requests within the SLO, cost ≤ 0.5× static-peak,
fewer violated 1 s windows than reactive at no more than its cost; forecast ≥ 20 % better
than seasonal naive.

    .venv/bin/python bench/serving.py [--hours 168] [--hour-s 4] [--policies ...]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from _common import machine, write_results
from deepedge.demo import default_specs
from deepedge.models import build_model
from deepedge.serving import (
    DEFAULT_CATALOG,
    DEFAULT_FLAVOURS,
    POLICIES,
    ReplayTrace,
    ServeOptions,
    default_forecasters,
    evaluate,
    load_bikeshare,
    optimality_gap,
    serve,
    solve_exact,
    solve_greedy,
)
from deepedge.train import save_checkpoint

RESULTS = Path(__file__).parent / "results"
START_HOUR = 24 * 7 * 36 + 2 * 24  # Monday 12 September 2011, 00:00 (the trace starts Sat 1 Jan)
HOUR_S = 4.0
PEAK_RPS = 250.0
SLO_MS = 100.0


def checkpoint(workdir: Path) -> tuple[Path, str]:
    demo = Path("demo-out/retrained-model.ckpt")
    if demo.is_file():
        return demo, str(demo)
    _, job = default_specs()
    torch.manual_seed(job.seed)
    model = build_model(
        job.model,
        in_channels=3,
        num_classes=job.dataset.num_classes,
        image_size=job.dataset.image_size,
    )
    path = workdir / "demo-model.ckpt"
    save_checkpoint(path, {"model": model.state_dict(), "job": job.model_dump(mode="json")})
    return path, "the demo job's model at its initial weights (no demo-out found)"


def solver_gap(report: Any, rates: np.ndarray) -> dict[str, Any]:
    p = report.problem
    args = {
        "models": p.models,
        "flavours": list(p.flavours.values()),
        "catalog": p.catalog,
        "devices": dict(p.devices),
    }
    gaps, t_exact, t_greedy = [], [], []
    for rate in rates:
        t0 = time.perf_counter()
        exact = solve_exact(float(rate), p.slo_ms, **args)
        t1 = time.perf_counter()
        greedy = solve_greedy(float(rate), p.slo_ms, **args)
        t2 = time.perf_counter()
        if exact is None or greedy is None:
            continue
        gaps.append(optimality_gap(exact, greedy))
        t_exact.append(t1 - t0)
        t_greedy.append(t2 - t1)
    return {
        "rates": len(gaps),
        "mean_gap": float(np.mean(gaps)),
        "max_gap": float(np.max(gaps)),
        "optimal_share": float(np.mean(np.array(gaps) <= 1e-9)),
        "exact_ms_median": 1e3 * statistics.median(t_exact),
        "exact_ms_max": 1e3 * max(t_exact),
        "greedy_ms_median": 1e3 * statistics.median(t_greedy),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=int, default=168)
    ap.add_argument("--hour-s", type=float, default=HOUR_S)
    ap.add_argument("--peak-rps", type=float, default=PEAK_RPS)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench-serving"))
    args = ap.parse_args()
    console = Console()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    ckpt, model_note = checkpoint(args.workdir)
    cluster, _ = default_specs()
    cluster = cluster.model_copy(update={"apps": []})
    trace = load_bikeshare()
    replay = ReplayTrace.from_trace(
        trace, hours=args.hours, peak_rps=args.peak_rps, hour_s=args.hour_s, start_hour=START_HOUR
    )
    options = ServeOptions(
        slo_ms=SLO_MS,
        flavours=DEFAULT_FLAVOURS,
        catalog=DEFAULT_CATALOG,
        policies=args.policies.split(","),
        kb_path=args.workdir / "kb.sqlite",  # measured afresh: part of what is reported
    )
    t0 = time.monotonic()
    report = serve(cluster, ckpt, replay, options, args.workdir / "out", status=console.print)
    wall = time.monotonic() - t0

    forecasts = {
        name: evaluate(factory, trace, holdout_weeks=4, horizon=3)
        for name, factory in default_forecasters().items()
    }
    gap = solver_gap(report, np.linspace(1.0, float(report.trace.window.max()) * 1.2, 60))
    hindsight = sum(report.problem.solve(float(r)).cost_per_hour for r in report.trace.window)
    cold = [c for r in report.results.values() for c in r.summary["cold_start_s"]]
    summary = {r["policy"]: r for r in report.summary_rows()}
    static = summary.get("static-peak")
    for row in summary.values():
        row["cost_vs_static"] = row["cost"] / static["cost"] if static else None
    for name in ("serving.png", "serving_latency.png"):
        src = args.workdir / "out" / name
        if src.exists():
            shutil.copy(src, RESULTS / name)

    result = {
        **machine("cgroup partitions in the demo cluster's devices"),
        "model": model_note,
        "trace": {
            "name": replay.name,
            "start_hour": START_HOUR,
            "hours": args.hours,
            "hour_s": args.hour_s,
            "peak_rps_of_year": args.peak_rps,
            "peak_rps_replayed": float(replay.window.max()),
            "mean_rps_replayed": float(replay.window.mean()),
        },
        "slo_ms": SLO_MS,
        "flavours": {f.name: [f.cores, f.memory_mb] for f in DEFAULT_FLAVOURS},
        "catalog": DEFAULT_CATALOG.source,
        "policies": summary,
        "latency_model": {
            k: v for k, v in report.latency.items() if k in ("models", "error", "seconds")
        },
        "solver": gap,
        "hindsight_cost": hindsight,
        "hindsight_vs_static": hindsight / static["cost"] if static else None,
        "cold_start_s": {
            "median": statistics.median(c["seconds"] for c in cold) if cold else None,
            "max": max(c["seconds"] for c in cold) if cold else None,
            "n": len(cold),
        },
        "forecast": {
            n: {"mape": r.mape, "mase": r.mase, "coverage": r.coverage, "fit_s": r.fit_s}
            for n, r in forecasts.items()
        },
        "wall_s": wall,
    }
    md = [
        "# Serving: three autoscaling policies on a week of bikeshare (issue 16)",
        "",
        f"{args.hours} trace hours from hour {START_HOUR} (Mon 12 Sep 2011), 1 h in "
        f"{args.hour_s:g} s, year's busiest hour = {args.peak_rps:g} rps (replayed peak "
        f"{replay.window.max():.0f}, mean {replay.window.mean():.0f} rps); p95 SLO "
        f"{SLO_MS:g} ms; model: {model_note}; the demo cluster's 5 boards.",
        "",
        "| policy | requests | within SLO | 1 s windows violated | p95 ms | cost (USD) "
        "| cost / static-peak | scaling actions |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary.values():
        md.append(
            f"| {s['policy']} | {s['requests']} | {s['within_slo']:.2%} | "
            f"{s['windows_violated']} / {s['windows']} | {s['p95_ms']:.1f} | {s['cost']:.4f} | "
            f"{s['cost_vs_static']:.2f} | {s['scaling_actions']} |"
            if s["cost_vs_static"] is not None
            else f"| {s['policy']} | {s['requests']} | {s['within_slo']:.2%} | "
            f"{s['windows_violated']} / {s['windows']} | {s['p95_ms']:.1f} | {s['cost']:.4f} "
            f"| - | {s['scaling_actions']} |"
        )
    md += [
        "",
        f"Hindsight (computed, not replayed): {hindsight:.4f} USD"
        + (f", {hindsight / static['cost']:.2f}× static-peak" if static else "")
        + ": the cheapest configuration for each hour's true rate, with no lead time.",
        "",
        f"Latency model: {report.latency.get('error', 'from the knowledge base')}. "
        f"Cold starts: median {result['cold_start_s']['median']:.1f} s, max "
        f"{result['cold_start_s']['max']:.1f} s over {len(cold)}.",
        f"Solver over {gap['rates']} rates: greedy heuristic mean gap {gap['mean_gap']:.2%}, "
        f"max {gap['max_gap']:.2%}, optimal in {gap['optimal_share']:.0%}; exact (MILP) "
        f"median {gap['exact_ms_median']:.1f} ms, max {gap['exact_ms_max']:.1f} ms; greedy "
        f"median {gap['greedy_ms_median']:.2f} ms.",
        "",
        "| forecaster (4 held-out weeks, 3 h ahead) | MAPE % | MASE | coverage of upper | fit s |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {n} | {r.mape:.1f} | {r.mase:.3f} | {r.coverage:.1%} | {r.fit_s:.3f} |"
            for n, r in forecasts.items()
        ),
        "",
        "Plots: `serving.png` (rate, forecast, capacity and cost over the week per policy), "
        "`serving_latency.png` (p95 against rate per flavour, measured and fitted).",
    ]
    write_results("serving", result, md)
    console.print("\n".join(md))


if __name__ == "__main__":
    main()
