"""PNG plots of the interference model: predicted vs measured, and sensitivity curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepedge.api import Scenario, TrainLoad
from deepedge.apps import APP_KINDS
from deepedge.interference.model import InterferenceModel, Observation, latency_rows

__all__ = ["oof_scatter", "plot_predicted_vs_measured", "plot_sensitivity"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_predicted_vs_measured(
    measured: Sequence[float],
    predicted: Sequence[float],
    upper: Sequence[float] | None,
    labels: Sequence[str],
    path: Path,
    *,
    title: str = "LC p95 latency: predicted vs measured",
) -> Path:
    """Log-log scatter with the y = x line and a ±5 % band; upper bounds as ticks."""
    plt = _pyplot()
    y, p = np.asarray(measured, float), np.asarray(predicted, float)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for kind in sorted(set(labels)):
        mask = np.array([lab == kind for lab in labels])
        ax.scatter(y[mask], p[mask], s=18, label=kind)
        if upper is not None:
            ax.scatter(y[mask], np.asarray(upper, float)[mask], marker="_", s=40, alpha=0.5)
    lo, hi = float(min(y.min(), p.min())) * 0.8, float(max(y.max(), p.max())) * 1.2
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, "k-", lw=1)
    ax.fill_between(xs, xs * 0.95, xs * 1.05, color="grey", alpha=0.2, label="±5 %")
    ax.set(xscale="log", yscale="log", xlabel="measured (ms)", ylabel="predicted (ms)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sensitivity(
    model: InterferenceModel,
    device_key: str,
    path: Path,
    *,
    app_load: float = 0.2,
    batch: int | None = None,
) -> Path:
    """Each app kind's predicted p95 (relative to alone) as one co-runner's intensity grows.

    One panel per app kind, one curve per stressor and one for the training job, at
    ``app_load`` of the device's CPU for the app.
    """
    plt = _pyplot()
    book = model.book(device_key)
    kinds = [k for k in APP_KINDS if k in book.apps]
    batches = sorted({b for b, _ in book.train}) or [32]
    batch = batch or batches[len(batches) // 2]
    levels = np.linspace(0.0, 1.0, 11)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rate = book.rate_for_load(kind, app_load)
        base = model.predict_latency(device_key, Scenario("", kind, rate)).p95_ms
        curves = {
            s: [Scenario("", kind, rate, stressors={s: v}) for v in levels] for s in book.stressors
        }
        curves["training"] = [
            Scenario("", kind, rate, train=TrainLoad(batch, v) if v > 0 else None) for v in levels
        ]
        for name, scenarios in curves.items():
            ys = [model.predict_latency(device_key, sc).p95_ms / base for sc in scenarios]
            ax.plot(levels, ys, marker="o", ms=3, label=name, lw=2 if name == "training" else 1)
        ax.set(title=f"{kind} at {rate:.0f} rps", xlabel="co-runner intensity")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predicted p95 / p95 alone")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def oof_scatter(model: InterferenceModel, obs: Sequence[Observation], path: Path) -> Path:
    """The p95 surrogate's out-of-fold predictions against what was measured."""
    rows = latency_rows(obs)
    pred = model.out_of_fold_ms("p95", rows)
    return plot_predicted_vs_measured(
        [o.p95_ms for o in rows],
        pred,
        pred * model.p95.bound_factors(),
        [str(o.scenario.app) for o in rows],
        path,
        title=f"p95, out-of-fold ({model.p95.chosen}, {len(rows)} runs)",
    )
