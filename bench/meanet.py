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
Everything runs on the emulated cluster: the demo's boards and a cloud device
(:func:`deepedge.meanet.deploy.cloud_device`), each in its network namespace with a
tbf-shaped link, the cloud's being the WAN (20 Mbit/s; a relay adds its 40 ms round trip).
Per-exit compute time is measured inside each board and the cloud device. Then each of
two boards classifies the test set one image at a time, sending images to the cloud
model's replica across the WAN, for MEANet at the knee and for cloud only: their latency is
measured end to end. The edge-only rows' latency is their exit shares times the measured
compute time of each path.

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

import numpy as np
import torch
from rich.console import Console

from _common import machine, write_results
from deepedge.cluster import make_backend
from deepedge.cluster.api import ClusterBackend
from deepedge.demo import default_specs
from deepedge.meanet import (
    EXITS,
    ExitRule,
    MeanetConfig,
    Routing,
    evaluate,
    exit_outputs,
    load_data,
    route,
    train_models,
)
from deepedge.meanet.deploy import Wan, cloud_behind_wan, cloud_device
from deepedge.meanet.pipeline import TEST_FILE
from deepedge.meanet.plots import sweep_png
from deepedge.spec import ClusterSpec

RESULTS = Path(__file__).parent / "results"
DATASETS = {
    "synthetic-20": MeanetConfig(data="synthetic", classes=20, image_size=32),
    "digits": MeanetConfig(data="digits", image_size=16),
}
BOARDS = ("orin-1", "nano-1")  # the demo cluster's fastest and slowest boards
CLOUD = "cloud-1"
WAN = Wan()


def cluster_spec() -> ClusterSpec:
    """The demo's boards on their own shaped links, with no LC apps, and a cloud device
    behind the WAN."""
    demo, _ = default_specs()
    return demo.model_copy(
        update={"apps": [], "network": "netns", "devices": [*demo.devices, cloud_device(CLOUD)]}
    )


def spawn_and_wait(cluster: ClusterBackend, device: str, argv: list[str], log: Path) -> None:
    proc = cluster.devices[device].spawn([sys.executable, "-m", *argv], log_path=log)
    code = proc.wait(timeout=1800)
    if code != 0:
        raise RuntimeError(f"{argv[0]} on {device} exited with {code}; see {log}")


def on_cluster(
    models_dir: Path, test_file: Path, rule: ExitRule | None, workdir: Path, console: Console
) -> dict[str, Any]:
    """On the emulated cluster: per-exit compute time inside each board of :data:`BOARDS`
    and the cloud device, then the test set classified input by input on each board, by
    MEANet at the knee (``rule``) and by sending every input to the cloud."""
    timing: dict[str, dict[str, float]] = {}
    runs: dict[str, dict[str, Any]] = {}
    with make_backend(cluster_spec()) as cluster:
        cluster.start()
        for w in cluster.warnings:
            console.print(f"[yellow]warning[/]: {w}")
        for device in (*BOARDS, CLOUD):
            out = workdir / f"timing-{device}.json"
            argv = ["deepedge.meanet.timing", "--models", str(models_dir), "--out", str(out)]
            spawn_and_wait(cluster, device, [*argv, "--seconds", "3"], out.with_suffix(".log"))
            timing[device] = json.loads(out.read_text())
            console.print(
                f"    {device}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in timing[device].items())
            )
        with cloud_behind_wan(cluster, CLOUD, models_dir / "meanet-cloud.ckpt", WAN, workdir) as at:
            console.print(f"    cloud model on {CLOUD}, reached at {at} ({WAN})")
            for board in BOARDS:
                modes = {"cloud only": ["--cloud-only"]}
                if rule is not None:
                    modes["MEANet at the knee"] = [
                        f"--main-threshold={rule.main_threshold}",
                        f"--cloud-threshold={rule.cloud_threshold}",
                    ]
                for mode, flags in modes.items():
                    out = workdir / f"offload-{board}-{mode.split()[0]}.json"
                    argv = ["deepedge.meanet.offload", "--models", str(models_dir)]
                    argv += ["--test", str(test_file), "--cloud", at, "--out", str(out), *flags]
                    spawn_and_wait(cluster, board, argv, out.with_suffix(".log"))
                    runs.setdefault(mode, {})[board] = summarise(json.loads(out.read_text()))
                    r = runs[mode][board]
                    console.print(
                        f"    {board}, {mode}: mean {r['mean_ms']:.1f} ms, accuracy "
                        f"{r['accuracy']:.2%}, cloud round trip {r['cloud_rtt_ms_median']:.1f} ms"
                    )
    return {"timing": timing, "runs": runs}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, exit shares and latency (mean, per exit; the cloud's round trip and the
    part of it spent on the network) of one input-by-input run."""
    exits = np.array(run["exits"])
    latency = 1e3 * np.array(run["latency_s"])
    rtt = 1e3 * np.array(run["cloud_rtt_s"])
    network = rtt - 1e3 * np.array(run["cloud_service_s"])
    return {
        "accuracy": float(np.mean(np.array(run["predictions"]) == np.array(run["labels"]))),
        "mean_ms": float(latency.mean()),
        "p95_ms": float(np.percentile(latency, 95)),
        **{f"{e}_share": float(np.mean(exits == i)) for i, e in enumerate(EXITS)},
        **{
            f"{e}_mean_ms": float(latency[exits == i].mean()) if np.any(exits == i) else None
            for i, e in enumerate(EXITS)
        },
        "cloud_rtt_ms_median": float(np.median(rtt)) if len(rtt) else None,
        "network_ms_median": float(np.median(network)) if len(network) else None,
        "network_ms_p95": float(np.percentile(network, 95)) if len(network) else None,
        "exits": run["exits"],
        "predictions": run["predictions"],
    }


def agreement(run: dict[str, Any], offline: Routing) -> float:
    """Share of inputs whose exit and class on the cluster are the offline sweep's."""
    same = (torch.tensor(run["exits"]) == offline.exit) & (
        torch.tensor(run["predictions"]) == offline.prediction
    )
    return float(same.float().mean())


def composed_latency(row: dict[str, float], edge: dict[str, float]) -> float:
    """Exit shares times each edge path's sustained compute time (no cloud in the row)."""
    return row["main_share"] * edge["main"] + row["extension_share"] * edge["extension"]


def run_dataset(name: str, cfg: MeanetConfig, workdir: Path, console: Console) -> dict[str, Any]:
    console.print(f"[bold]{name}[/]: training (epochs {cfg.epochs})")
    train, test = load_data(cfg)
    t0 = time.monotonic()
    models = train_models(cfg, train)
    console.print(
        f"    trained in {time.monotonic() - t0:.0f} s; hard classes {models.hard_classes}"
    )
    models_dir = (workdir / name).resolve()
    models.save(models_dir)
    test_file = test.save(models_dir / TEST_FILE)
    evaluation = evaluate(models, test)
    rows = evaluation.rows
    knee_row = rows.get("MEANet at the knee")
    rule = ExitRule(knee_row["main_threshold"], knee_row["cloud_threshold"]) if knee_row else None
    console.print("    on the emulated cluster")
    cluster = on_cluster(models_dir, test_file, rule, workdir, console)
    x, y = test.to_tensors()
    outputs = exit_outputs(models.edge, models.cloud, x, y)
    offline = {"cloud only": None, "MEANet at the knee": route(outputs, rule) if rule else None}
    for mode, per_board in cluster["runs"].items():
        for run in per_board.values():
            routing = offline[mode]
            if routing is None:  # every input to the cloud: its answer is the cloud model's
                routing = Routing(torch.full_like(y, 2), outputs.cloud.argmax(1))
            run["agreement"] = agreement(run, routing)
            del run["exits"], run["predictions"]
    for conf, row in rows.items():
        measured = cluster["runs"].get(conf)
        row["latency_ms"] = {
            b: measured[b]["mean_ms"] if measured else composed_latency(row, cluster["timing"][b])
            for b in BOARDS
        }
    png = sweep_png(evaluation, RESULTS / f"meanet_{name}.png", f"MEANet threshold sweep: {name}")
    edge_best = max(
        rows["main block only"]["accuracy"], rows["main + extension for every input"]["accuracy"]
    )
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
        "latency_ms_per_exit": cluster["timing"],
        "on_cluster": cluster["runs"],
        "targets": targets,
        "plot": png.name,
    }


def table(name: str, result: dict[str, Any]) -> list[str]:
    ev = result["evaluation"]
    md = [
        f"### {name}: {result['train_size']} training and {result['test_size']} test images, "
        f"{result['classes']} classes",
        "",
        "| configuration | accuracy | edge MMACs/input | "
        + " | ".join(f"mean latency on {b} (ms)" for b in BOARDS)
        + " | share sent to the cloud | energy/input (mJ) |",
        "|---|---:|---:|" + "---:|" * len(BOARDS) + "---:|---:|",
    ]
    for conf, row in ev["rows"].items():
        label = conf
        if "main_threshold" in row:
            label += f" (main {row['main_threshold']:g}, cloud {row['cloud_threshold']:g})"
        mark = "†" if conf in result["on_cluster"] else "*"
        md.append(
            f"| {label} | {row['accuracy']:.2%} | {row['edge_macs'] / 1e6:.2f} | "
            + " | ".join(f"{row['latency_ms'][b]:.1f}{mark}" for b in BOARDS)
            + f" | {row['cloud_share']:.1%} | {row['energy_j'] * 1e3:.3f} |"
        )
    lat = result["latency_ms_per_exit"]
    md += [
        "",
        r"\* Exit shares times each path's compute time on the board (the mean per "
        "single-image pass over 3 s of back-to-back passes, one thread, the device's quota "
        "applied): "
        + "; ".join(
            f"{where}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items())
            for where, t in lat.items()
        )
        + ".",
        "",
        f"† Measured end to end on the emulated cluster: the board classifies the test set "
        f"one image at a time, back to back, and sends images to the cloud model's replica "
        f"on {CLOUD} across the WAN ({WAN.mbps:g} Mbit/s tbf link, {WAN.rtt_ms:g} ms RTT "
        "added by a relay).",
        "",
        "| on the cluster | board | accuracy | mean (ms) | p95 (ms) | at main / extension / "
        "cloud | mean per exit (ms) | network per cloud input, median / p95 (ms) | "
        "same exit and class as offline |",
        "|---|---|---:|---:|---:|---|---|---|---:|",
    ]
    for mode, per_board in result["on_cluster"].items():
        for board, r in per_board.items():
            shares = " / ".join(f"{r[f'{e}_share']:.1%}" for e in EXITS)
            means = " / ".join(
                "–" if r[f"{e}_mean_ms"] is None else f"{r[f'{e}_mean_ms']:.1f}" for e in EXITS
            )
            md.append(
                f"| {mode} | {board} | {r['accuracy']:.2%} | {r['mean_ms']:.1f} | "
                f"{r['p95_ms']:.1f} | {shares} | {means} | {r['network_ms_median']:.1f} / "
                f"{r['network_ms_p95']:.1f} | {r['agreement']:.1%} |"
            )
    t = result["targets"]
    if t is not None:
        md += [
            "",
            f"Targets: accuracy {-t['accuracy_gap_points']:+.2f} points against the best "
            f"edge-only (goal ≥ -1), {t['edge_macs_ratio']:.2f}× fewer edge MACs than main + "
            f"extension for every input (goal ≥ 2), {t['cloud_share']:.1%} to the cloud "
            "(goal ≤ 10 %).",
        ]
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
        "meanet",
        {
            **machine("emulated demo boards and a cloud device behind a WAN, network: netns"),
            "datasets": results,
        },
        md,
    )
    console.print("\n".join(md))


if __name__ == "__main__":
    main()
