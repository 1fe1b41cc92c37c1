"""Benchmark: how well the interference model predicts LC tail latency under co-location.

On real emulated devices (cgroups), it
1. calibrates every resident alone (LC apps at three loads, stressors at three
   intensities, the demo's training job on a batch × intensity grid);
2. runs a Latin-hypercube design of co-locations and fits the surrogates on it;
3. measures held-out scenarios drawn at random, every one with the *real training job*
   as a co-runner (plus stressors), and scenarios composing two LC apps and training
   (combinations never run in step 2), and reports the absolute percentage error of the
   predicted p95 (median, p90, worst) and the coverage of its upper bound;
4. repeats some held-out scenarios to measure the noise floor (two runs of one scenario);
5. (unless --skip-study) on a 4-factor slice, compares a full grid with Latin hypercubes
   of growing size on the same held-out points: how many runs LHS needs to be as
   accurate as the grid.

Writes bench/results/interference_accuracy.json, .md and a predicted-vs-measured PNG.

    .venv/bin/python bench/interference_accuracy.py [--train-runs 48] [--skip-study]
    .venv/bin/python bench/interference_accuracy.py --study-only   # add step 5 to the last run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console

from _common import RESULTS, git_commit, machine, write_results
from deepedge.demo import default_specs
from deepedge.interference import (
    LATENCY_FEATURES,
    CampaignSettings,
    Factor,
    FactorSpace,
    InterferenceLab,
    InterferenceModel,
    Scenario,
    UsageBook,
    calibrate,
    coverage,
    design,
    factor_space,
    fit_surrogate,
    latency_features,
    load_books,
    observations,
    run_scenarios,
    scenario_from_point,
)
from deepedge.interference.plots import plot_predicted_vs_measured
from deepedge.interference.surrogate import NotEnoughPoints, ape
from deepedge.profile import KnowledgeBase
from deepedge.spec import ClusterSpec

FECBENCH = {"median_ape_pct": 7.6, "best_ape_pct": 5.4, "worst_ape_pct": 13.5}
"""FECBench's reported prediction errors (seed abstract), for the table."""


def bench_cluster(period_us: int) -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "name": "interference-bench",
            "cpu_period_us": period_us,
            "devices": [
                {"name": "mini", "kind": "x86-mini"},
                {"name": "orin", "kind": "orin-nano"},
            ],
        }
    )


def errors(measured: Sequence[float], predicted: Sequence[float]) -> dict[str, float]:
    e = ape(np.asarray(measured, float), np.asarray(predicted, float))
    return {
        "n": len(e),
        "median_ape_pct": float(np.median(e)),
        "p90_ape_pct": float(np.percentile(e, 90)),
        "worst_ape_pct": float(np.max(e)),
    }


def bound_stats(measured: Sequence[float], upper: Sequence[float]) -> dict[str, float]:
    """Coverage of an upper bound and how tight it is: bound / measured per run."""
    ratio = np.asarray(upper, float) / np.asarray(measured, float)
    return {
        "coverage": coverage(measured, upper),
        "median_bound_ratio": float(np.median(ratio)),
        "p90_bound_ratio": float(np.percentile(ratio, 90)),
    }


Row = tuple[str, Scenario, dict]
"""One stored run: device key, scenario, measured result."""


def stored(kb: KnowledgeBase, campaign: str) -> list[Row]:
    return [
        (r.device, Scenario.from_dict(r.scenario), r.result)
        for r in kb.interference_runs(campaign=campaign)
    ]


def finite(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if math.isfinite(r[2]["p95_ms"]) and math.isfinite(r[2]["p99_ms"])]


def evaluate(model: InterferenceModel, runs: Sequence[Row]) -> tuple[dict, list]:
    """p95/p99 errors and upper-bound coverage of ``model`` on measured ``runs``."""
    rows = finite(runs)
    preds = [model.predict_latency(key, sc) for key, sc, _ in rows]
    p95 = [r[2]["p95_ms"] for r in rows]
    p99 = [r[2]["p99_ms"] for r in rows]
    out = {
        "p95": errors(p95, [p.p95_ms for p in preds])
        | bound_stats(p95, [p.p95_upper_ms for p in preds]),
        "p99": errors(p99, [p.p99_ms for p in preds])
        | bound_stats(p99, [p.p99_upper_ms for p in preds]),
        "unfinished_runs": len(runs) - len(rows),
    }
    trained = [r for r in rows if r[2].get("train_samples_per_s") and model.throughput]
    if trained:
        tp = [model.predict_throughput(key, sc) for key, sc, _ in trained]
        measured = [float(r[2]["train_samples_per_s"]) for r in trained]
        out["throughput"] = errors(measured, [p for p, _ in tp]) | {
            "coverage": coverage(measured, [lo for _, lo in tp], "lower")
        }
    return out, list(zip(rows, preds, strict=True))


SLICE_FACTORS = ("app_load", "busy", "train_weight", "cpu_weight")


def slice_space(device: str, batch: int) -> FactorSpace:
    """The 4-factor slice of the grid-vs-LHS study: one device, the CNN app."""
    return FactorSpace(
        (
            Factor("device", levels=(device,)),
            Factor("app", levels=("cnn_inference",)),
            Factor("app_load", 0.05, 0.4),
            Factor("busy", 0.0, 1.0),
            Factor("train_weight", 0.15, 1.0),
            Factor("train_batch", levels=(str(batch),)),
            Factor("stressor", levels=("cpu",)),
            Factor("stressor_weight", 0.0, 1.0),
            Factor("second", levels=("none",)),
            Factor("second_weight", levels=("0",)),
        )
    )


def measure_slice(
    lab: InterferenceLab,
    kb: KnowledgeBase,
    book: UsageBook,
    device: str,
    batch: int,
    *,
    levels: int,
    lhs_sizes: Sequence[int],
    n_test: int,
    console: Console,
) -> None:
    """Run the slice study's held-out points, full grid and Latin hypercubes (replacing
    any an earlier, perhaps interrupted, study stored)."""
    kb.invalidate_interference(campaign_prefix="slice-")
    space = slice_space(device, batch)
    designs = {
        "slice-test": space.random(n_test, seed=202),
        f"slice-grid-{levels}": space.grid(levels),
        **{f"slice-lhs-{n}": space.lhs(n, seed=3) for n in lhs_sizes},
    }
    for campaign, points in designs.items():
        console.print(f"slice study: {campaign} ({len(points)} runs)")
        scenarios = [scenario_from_point(p, book) for p in points]
        run_scenarios(lab, kb, scenarios, campaign=campaign)


def analyse_slice(
    kb: KnowledgeBase, books: dict[str, UsageBook], levels: int, lhs_sizes: Sequence[int]
) -> dict:
    """Fit the same surrogate on the grid and on each Latin hypercube; judge on one test set."""
    test = finite(stored(kb, "slice-test"))
    grid_name = f"grid-{levels}^4"
    designs = {grid_name: finite(stored(kb, f"slice-grid-{levels}"))}
    designs |= {f"lhs-{n}": finite(stored(kb, f"slice-lhs-{n}")) for n in lhs_sizes}

    def features(rows: Sequence[Row]) -> np.ndarray:
        return np.array([latency_features(books[k], sc) for k, sc, _ in rows], float)

    all_x = features([*test, *(r for d in designs.values() for r in d)])
    varying = [i for i in range(all_x.shape[1]) if np.ptp(all_x[:, i]) > 1e-12]
    names = [LATENCY_FEATURES[i] for i in varying]

    def score(train: Sequence[Row]) -> dict:
        # Point accuracy only: the bound is not compared here, so a loose alpha lets the
        # smallest designs fit (the conformal quantile needs about 1/alpha points).
        try:
            s = fit_surrogate(
                features(train)[:, varying],
                [r[2]["p95_ms"] for r in train],
                names,
                target="p95 (slice)",
                alpha=0.5,
                folds=4,
            )
        except NotEnoughPoints as err:  # a design smaller than the model's minimum
            return {"runs": len(train), "chosen": None, "too_few": err.one_line()}
        pred = s.predict(features(test)[:, varying])
        return errors([r[2]["p95_ms"] for r in test], pred) | {
            "runs": len(train),
            "chosen": s.chosen,
        }

    results = {name: score(rows) for name, rows in designs.items()}
    grid_err = results[grid_name]["median_ape_pct"]
    matching = [
        d["runs"]
        for n, d in results.items()
        if n != grid_name and d.get("median_ape_pct", math.inf) <= grid_err
    ]
    grid_runs = results[grid_name]["runs"]
    return {
        "factors": list(SLICE_FACTORS),
        "test_points": len(test),
        "designs": results,
        "grid_runs": grid_runs,
        "lhs_runs_matching_grid": min(matching) if matching else None,
        "run_ratio": grid_runs / min(matching) if matching else None,
    }


def measure_held_out(
    args: argparse.Namespace,
    lab: InterferenceLab,
    kb: KnowledgeBase,
    books: dict[str, UsageBook],
    kinds: list[str],
    batches: tuple[int, ...],
    settings: CampaignSettings,
    phase: Callable[[str, float, int], None],
) -> None:
    """The design runs the model is fitted on, and every held-out set it is scored on."""
    t = time.monotonic()
    space = factor_space(list(lab.devices), lab.app_kinds, kinds, batches, settings)
    train = run_scenarios(lab, kb, design(space, books, args.train_runs), campaign="train")
    phase("train (LHS)", t, len(train))

    t = time.monotonic()
    held_out = replace(settings, train_weight=(0.3, 1.0))
    test_space = factor_space(list(lab.devices), lab.app_kinds, kinds, batches, held_out)
    test_sc = design(
        test_space, books, args.test_runs, seed=101, sampler="random", settings=held_out
    )
    test = run_scenarios(lab, kb, test_sc, campaign="test")
    phase("held-out (random, with training)", t, len(test))

    t = time.monotonic()
    rng = np.random.default_rng(7)
    compose_sc = []
    for sc in design(
        test_space, books, args.compose_runs, seed=303, sampler="random", settings=held_out
    ):
        other = str(rng.choice([k for k in lab.app_kinds if k != sc.app]))
        rate = books[sc.device].rate_for_load(other, float(rng.uniform(0.05, 0.2)))
        compose_sc.append(replace(sc, stressors={}, other_apps={other: rate}))
    compose = run_scenarios(lab, kb, compose_sc, campaign="compose")
    phase("composed (two LC apps + training)", t, len(compose))

    t = time.monotonic()
    repeat = run_scenarios(lab, kb, test_sc[: args.repeats], campaign="repeat")
    phase("repeats (noise floor)", t, len(repeat))


def measure(args: argparse.Namespace, kb: KnowledgeBase, console: Console) -> dict:
    """Every measurement of the benchmark, stored in ``kb``; returns what analysis needs."""
    cluster = bench_cluster(args.period_us)
    lab_options: dict = {}
    if args.smoke:
        cluster = cluster.model_copy(update={"devices": cluster.devices[:1]})
        lab_options = {"requests_per_run": 100, "window_s": (1.0, 2.0), "settle_s": 0.3}
    _, job = default_specs()
    settings = CampaignSettings(runs=args.train_runs)
    phases: dict[str, dict[str, float]] = {}

    def phase(name: str, started: float, runs: int) -> None:
        phases[name] = {"runs": runs, "wall_s": round(time.monotonic() - started, 1)}
        console.print(f"{name}: {runs} runs in {phases[name]['wall_s']} s")

    with InterferenceLab(
        cluster, job, args.workdir / "lab", status=console.print, **lab_options
    ) as lab:
        t = time.monotonic()
        if args.study_only:
            console.print(f"calibration and held-out runs: those stored in {kb.path}")
        elif args.reuse_calibration:
            with KnowledgeBase(args.reuse_calibration, create=False) as old:
                for row in old.usages():
                    kb.add_usage(row.device, row.resident, row.setting, row.usage)
            console.print(f"calibration reused from {args.reuse_calibration}")
        else:
            for name in lab.devices:  # one at a time, as the published numbers were taken
                calibrate(lab, kb, [name], settings, progress=console.print)
            phase("calibration", t, lab.run_count)
        books_by_key = load_books(kb, job)
        books = {n: books_by_key[lab.device_key(n)] for n in lab.devices}
        kinds = sorted({k for b in books.values() for k in b.stressors})
        batches = settings.batch_levels(job)

        if not args.study_only:
            measure_held_out(args, lab, kb, books, kinds, batches, settings, phase)

        if not args.skip_study:
            t, before = time.monotonic(), lab.run_count
            device = next(iter(lab.devices))
            measure_slice(
                lab,
                kb,
                books[device],
                device,
                batches[len(batches) // 2],
                levels=args.grid_levels,
                lhs_sizes=args.sizes,
                n_test=args.study_test,
                console=console,
            )
            phase("grid vs LHS slice study", t, lab.run_count - before)
        commit = git_commit()
        if args.study_only:
            earlier = json.loads((args.workdir / "measured.json").read_text())
            phases = earlier["phases"] | phases
            commit = earlier.get("held_out_commit", "unknown")
        return {
            "held_out_commit": commit,
            "emulation": lab.cluster.emulation,
            "cluster": cluster.model_dump(mode="json"),
            "job": job.model_dump(mode="json"),
            "phases": phases,
            "skipped_stressors": {d: dict(k) for d, k in lab.skipped.items()},
        }


def analyse(args: argparse.Namespace, kb: KnowledgeBase, measured: dict) -> tuple[dict, list]:
    """Fit on the stored design runs and score every held-out set, from the KB alone."""
    _, job = default_specs()
    books = load_books(kb, job)
    t = time.monotonic()
    model = InterferenceModel.fit(
        observations(kb.interference_runs(campaign="train"), books), books
    )
    fit_s = time.monotonic() - t
    held, pairs = evaluate(model, stored(kb, "test"))
    composed, more = evaluate(model, stored(kb, "compose"))
    test, repeat = stored(kb, "test"), stored(kb, "repeat")
    noise = errors([r[2]["p95_ms"] for r in test[: len(repeat)]], [r[2]["p95_ms"] for r in repeat])
    study = None
    if not args.skip_study and kb.interference_runs(campaign="slice-test"):
        study = analyse_slice(kb, books, args.grid_levels, args.sizes)
    result = {
        "machine": machine(measured["emulation"]),
        **{k: measured[k] for k in ("cluster", "job", "phases", "skipped_stressors")},
        "held_out_commit": measured.get("held_out_commit", "unknown"),
        "model": model.summary(),
        "fit_s": round(fit_s, 2),
        "held_out": held,
        "composed": composed,
        "noise_floor_p95": noise,
        "slice_study": study,
        "fecbench": FECBENCH,
        "goals": {
            "median_ape_pct": 5,
            "worst_ape_pct": 15,
            "coverage": 0.95,
            "median_bound_ratio": 1.3,
            "run_ratio": 5,
        },
    }
    return result, pairs + more


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-runs", type=int, default=48)
    parser.add_argument("--test-runs", type=int, default=24)
    parser.add_argument("--compose-runs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=6, help="held-out scenarios run twice")
    parser.add_argument("--grid-levels", type=int, default=3)
    parser.add_argument("--lhs-sizes", default="12,16,24")
    parser.add_argument("--study-test", type=int, default=16)
    parser.add_argument("--skip-study", action="store_true")
    parser.add_argument("--period-us", type=int, default=5000, help="CFS period (the demo's)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-interference"))
    parser.add_argument(
        "--smoke", action="store_true", help="one device, 1-2 s windows: checks the script only"
    )
    parser.add_argument(
        "--reuse-calibration",
        type=Path,
        default=None,
        help="copy the solo usage rows of an earlier run's knowledge base instead of measuring",
    )
    parser.add_argument(
        "--analyse-only",
        action="store_true",
        help="skip the measurements: refit and score the runs stored by the last full run",
    )
    parser.add_argument(
        "--study-only",
        action="store_true",
        help="run only the grid-vs-LHS study, on the knowledge base of the last full run",
    )
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.lhs_sizes.split(",") if s]
    console = Console()
    args.workdir.mkdir(parents=True, exist_ok=True)
    kb_path, meta_path = args.workdir / "kb.sqlite", args.workdir / "measured.json"
    if args.study_only and args.skip_study:
        parser.error("--study-only and --skip-study exclude each other")
    if not (args.analyse_only or args.study_only):
        KnowledgeBase.reset(kb_path)  # a fresh, private knowledge base every run
    with KnowledgeBase(kb_path, create=not args.analyse_only) as kb:
        if args.analyse_only:
            measured = json.loads(meta_path.read_text())
        else:
            measured = measure(args, kb, console)
            meta_path.write_text(json.dumps(measured, indent=2))
        result, pairs = analyse(args, kb, measured)
    if args.smoke:
        console.print_json(data={k: v for k, v in result.items() if k not in ("cluster", "job")})
        return 0
    plot_predicted_vs_measured(
        [r[2]["p95_ms"] for r, _ in pairs],
        [p.p95_ms for _, p in pairs],
        [p.p95_upper_ms for _, p in pairs],
        [f"{r[1].app}{' (composed)' if r[1].other_apps else ''}" for r, _ in pairs],
        RESULTS / "interference_accuracy.png",
        title="held-out p95: predicted vs measured",
    )
    write_results("interference_accuracy", result, markdown(result))
    console.print("\n".join(markdown(result)))
    return 0


def markdown(r: dict) -> list[str]:
    h, c, n = r["held_out"]["p95"], r["composed"]["p95"], r["noise_floor_p95"]
    f = r["fecbench"]
    lines = [
        "# Interference prediction accuracy (LC p95 latency)",
        "",
        f"Emulated devices on {r['machine']['cpus']} CPUs ({r['machine']['emulation']}); "
        f"model: {r['model']['p95']['chosen']} chosen by CV on {r['model']['p95']['points']} "
        f"Latin-hypercube runs; {r['model']['p95'].get('conformal', 'global')} conformal "
        "upper bound (at 95 %).",
        "",
        "| scenario set | runs | median APE | p90 APE | worst APE | upper-bound coverage "
        "| median bound / measured |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| held-out, real training as co-runner | {h['n']} | {h['median_ape_pct']:.1f} % | "
        f"{h['p90_ape_pct']:.1f} % | {h['worst_ape_pct']:.1f} % | {h['coverage']:.0%} | "
        f"{h['median_bound_ratio']:.2f} |",
        f"| composed: 2 LC apps + training (never run together) | {c['n']} | "
        f"{c['median_ape_pct']:.1f} % | {c['p90_ape_pct']:.1f} % | {c['worst_ape_pct']:.1f} % | "
        f"{c['coverage']:.0%} | {c['median_bound_ratio']:.2f} |",
        f"| noise floor: same scenario run twice | {n['n']} | {n['median_ape_pct']:.1f} % | "
        f"{n['p90_ape_pct']:.1f} % | {n['worst_ape_pct']:.1f} % | | |",
        f"| FECBench (paper) | | {f['median_ape_pct']} % | | {f['worst_ape_pct']} % "
        f"(best {f['best_ape_pct']} %) | | |",
        "",
    ]
    if "throughput" in r["held_out"]:
        t = r["held_out"]["throughput"]
        lines += [
            f"Training throughput beside the apps: median APE {t['median_ape_pct']:.1f} %, "
            f"worst {t['worst_ape_pct']:.1f} %, lower-bound coverage {t['coverage']:.0%}.",
            "",
        ]
    p99 = r["held_out"]["p99"]
    lines += [
        f"p99 (held-out): median APE {p99['median_ape_pct']:.1f} %, worst "
        f"{p99['worst_ape_pct']:.1f} %, upper-bound coverage {p99['coverage']:.0%}, "
        f"median bound / measured {p99['median_bound_ratio']:.2f}.",
        "",
    ]
    s = r.get("slice_study")
    if s:
        lines += [
            f"## Full grid vs Latin hypercube ({', '.join(s['factors'])}; "
            f"{s['test_points']} random held-out points)",
            "",
            "| design | runs | model | median APE | p90 APE | worst APE |",
            "|---|---:|---|---:|---:|---:|",
        ]
        for name, d in s["designs"].items():
            lines.append(
                f"| {name} | {d['runs']} | {d['chosen']} | {d['median_ape_pct']:.1f} % | "
                f"{d['p90_ape_pct']:.1f} % | {d['worst_ape_pct']:.1f} % |"
                if d.get("chosen")
                else f"| {name} | {d['runs']} | too few runs to fit the model | | | |"
            )
        ratio = s["run_ratio"]
        lines += [
            "",
            f"LHS runs needed to match the grid's median error: {s['lhs_runs_matching_grid']} "
            f"vs {s['grid_runs']} ({ratio:.1f}× fewer)."
            if ratio
            else "No LHS size tried matched the grid's median error.",
            "",
        ]
    lines += [
        "Phases: "
        + "; ".join(f"{k} {v['runs']} runs {v['wall_s']} s" for k, v in r["phases"].items())
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
