"""Benchmark: MEANet's exits against its fixed configurations, side by side on one test set
(issue 17).

For each data set (the procedural shapes at 20 classes, 32x32, and scikit-learn's real
digits at 10 classes, 16x16) the edge model is trained block-wise (main block; hard
classes = the half with the lowest per-class accuracy on a validation part of the training
set; adaptive + extension blocks with the main block frozen) and the cloud model on every
class. Then, on the test set:

* **main block only**: the main block's answer for every input;
* **main + extension for every input**: every input runs every edge block;
* **cloud only**: every input is sent to the cloud model;
* **MEANet at the knee** of the threshold sweep (main-exit × cloud thresholds) among the
  points sending at most 10 % of the inputs to the cloud.

Edge MACs per input are counted by torch's flop counter per block; energy per input uses
per-MAC and per-byte coefficients with their sources (:mod:`deepedge.meanet.costs`).
Latency per exit is measured inside the demo cluster's emulated boards (their CPU quotas)
and, for the cloud model, on the host without a quota; a configuration's mean latency is
its exit shares times those. The link to the cloud is not in these latencies yet.

Targets: MEANet within 1 point of the best edge-only accuracy, with >= 2x fewer edge MACs
per input than main + extension for every input, and <= 10 % of inputs sent to the cloud.

    .venv/bin/python bench/meanet.py [--epochs 10] [--datasets synthetic-20,digits]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from _common import machine, write_results
from deepedge.cluster import make_backend
from deepedge.demo import default_specs
from deepedge.meanet import MeanetConfig, evaluate, load_data, train_models
from deepedge.meanet.plots import sweep_png
from deepedge.meanet.timing import time_exits

RESULTS = Path(__file__).parent / "results"
DATASETS = {
    "synthetic-20": MeanetConfig(data="synthetic", classes=20, image_size=32),
    "digits": MeanetConfig(data="digits", image_size=16),
}
BOARDS = ("orin-1", "nano-1")  # the demo cluster's fastest and slowest boards


def board_latency(models_dir: Path, workdir: Path, console: Console) -> dict[str, dict[str, float]]:
    """Per-exit latency measured inside each board of :data:`BOARDS`, one at a time."""
    cluster_spec, _ = default_specs()
    cluster_spec = cluster_spec.model_copy(update={"apps": []})
    out: dict[str, dict[str, float]] = {}
    with make_backend(cluster_spec) as cluster:
        cluster.start()
        for w in cluster.warnings:
            console.print(f"[yellow]warning[/]: {w}")
        for board in BOARDS:
            result = workdir / f"timing-{board}.json"
            proc = cluster.devices[board].spawn(
                [
                    sys.executable,
                    "-m",
                    "deepedge.meanet.timing",
                    "--models",
                    str(models_dir.resolve()),
                    "--out",
                    str(result.resolve()),
                    "--seconds",
                    "3",
                ],
                log_path=workdir / f"timing-{board}.log",
            )
            code = proc.wait(timeout=900)
            if code != 0:
                raise RuntimeError(f"timing on {board} exited with {code}; see its log")
            out[board] = json.loads(result.read_text())
            console.print(
                f"    {board}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in out[board].items())
            )
    return out


def mean_latency(row: dict[str, float], edge: dict[str, float], cloud_ms: float) -> float:
    """Exit shares times the measured latency of each path (a cloud input ran the whole
    edge first, except under cloud only)."""
    if row["cloud_share"] >= 1.0 and row["edge_macs"] == 0:
        return cloud_ms
    return (
        row["main_share"] * edge["main"]
        + row["extension_share"] * edge["extension"]
        + row["cloud_share"] * (edge["extension"] + cloud_ms)
    )


def run_dataset(name: str, cfg: MeanetConfig, workdir: Path, console: Console) -> dict[str, Any]:
    console.print(f"[bold]{name}[/]: training (epochs {cfg.epochs})")
    train, test = load_data(cfg)
    t0 = time.monotonic()
    models = train_models(cfg, train)
    console.print(
        f"    trained in {time.monotonic() - t0:.0f} s; hard classes {models.hard_classes}"
    )
    models_dir = workdir / name
    models.save(models_dir)
    evaluation = evaluate(models, test)
    console.print("    latency per exit on the boards")
    boards = board_latency(models_dir, workdir, console)
    host = time_exits(models_dir, seconds=3.0)
    for row in evaluation.rows.values():
        row["latency_ms"] = {b: mean_latency(row, t, host["cloud"]) for b, t in boards.items()}
    png = sweep_png(evaluation, RESULTS / f"meanet_{name}.png", f"MEANet threshold sweep: {name}")
    rows = evaluation.rows
    edge_best = max(
        rows["main block only"]["accuracy"], rows["main + extension for every input"]["accuracy"]
    )
    knee_row = rows.get("MEANet at the knee")
    targets = None
    if knee_row is not None:
        targets = {
            "accuracy_gap_points": 100 * (edge_best - knee_row["accuracy"]),
            "edge_macs_ratio": rows["main + extension for every input"]["edge_macs"]
            / knee_row["edge_macs"],
            "cloud_share": knee_row["cloud_share"],
        }
    return {
        "config": asdict(cfg),
        "train_size": len(train),
        "test_size": len(test),
        "classes": train.num_classes,
        "hard_classes": models.hard_classes,
        "train_seconds": models.train_seconds,
        "evaluation": evaluation.as_dict(),
        "latency_ms_per_exit": {**boards, "host (cloud)": host},
        "targets": targets,
        "plot": png.name,
    }


def table(name: str, result: dict[str, Any]) -> list[str]:
    ev = result["evaluation"]
    boards = [b for b in result["latency_ms_per_exit"] if b != "host (cloud)"]
    md = [
        f"### {name}: {result['train_size']} training and {result['test_size']} test images, "
        f"{result['classes']} classes",
        "",
        "| configuration | accuracy | edge MMACs/input | "
        + " | ".join(f"mean latency on {b} (ms)" for b in boards)
        + " | share sent to the cloud | energy/input (mJ) |",
        "|---|---:|---:|" + "---:|" * len(boards) + "---:|---:|",
    ]
    for conf, row in ev["rows"].items():
        label = conf
        if "main_threshold" in row:
            label += f" (main {row['main_threshold']:g}, cloud {row['cloud_threshold']:g})"
        md.append(
            f"| {label} | {row['accuracy']:.2%} | {row['edge_macs'] / 1e6:.2f} | "
            + " | ".join(f"{row['latency_ms'][b]:.1f}" for b in boards)
            + f" | {row['cloud_share']:.1%} | {row['energy_j'] * 1e3:.3f} |"
        )
    lat = result["latency_ms_per_exit"]
    md += [
        "",
        "Latency per exit path (mean per single-image pass over 3 s of back-to-back passes, "
        "one thread, the device's quota applied): "
        + "; ".join(
            f"{where}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items())
            for where, t in lat.items()
        )
        + ". The link to the cloud is not included.",
    ]
    t = result["targets"]
    if t is not None:
        md.append(
            f"Targets: accuracy {-t['accuracy_gap_points']:+.2f} points against the best "
            f"edge-only (goal ≥ -1), {t['edge_macs_ratio']:.2f}× fewer edge MACs than main + "
            f"extension for every input (goal ≥ 2), {t['cloud_share']:.1%} to the cloud "
            "(goal ≤ 10 %)."
        )
    md += ["", f"Plot: `{result['plot']}`.", ""]
    return md


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench-meanet"))
    args = ap.parse_args()
    console = Console()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    results = {}
    for name in args.datasets.split(","):
        cfg = replace(DATASETS[name], epochs=args.epochs)
        results[name] = run_dataset(name, cfg, args.workdir, console)
    energy = next(iter(results.values()))["evaluation"]["energy_source"]
    md = ["# MEANet: exits at the main block, the extension block or the cloud (issue 17)", ""]
    for name, result in results.items():
        md += table(name, result)
    md += [f"Energy coefficients: {energy}."]
    write_results(
        "meanet", {**machine("emulated demo boards for latency"), "datasets": results}, md
    )
    console.print("\n".join(md))


if __name__ == "__main__":
    main()
