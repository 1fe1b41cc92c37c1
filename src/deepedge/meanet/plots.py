"""Accuracy against edge MACs over the exit-threshold sweep, with the Pareto front, its
knee and the fixed configurations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepedge.meanet.pipeline import Evaluation

__all__ = ["sweep_png"]


def sweep_png(evaluation: Evaluation, path: Path, title: str = "MEANet threshold sweep") -> Path:
    """Every sweep point (coloured by the share sent to the cloud), the front, the knee,
    and the main-only, main+extension and cloud-only configurations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    pts = evaluation.sweep
    sc = ax.scatter(
        [p.edge_macs / 1e6 for p in pts],
        [100 * p.accuracy for p in pts],
        c=[100 * p.cloud_share for p in pts],
        cmap="viridis",
        s=14,
        alpha=0.7,
    )
    fig.colorbar(sc, ax=ax, label="% of inputs sent to the cloud")
    front = evaluation.front
    ax.step(
        [p.edge_macs / 1e6 for p in front],
        [100 * p.accuracy for p in front],
        where="post",
        color="black",
        lw=1,
        label="Pareto front",
    )
    markers = {"main block only": "s", "main + extension for every input": "D", "cloud only": "^"}
    for name, marker in markers.items():
        row = evaluation.rows.get(name)
        if row is not None:
            ax.scatter(
                row["edge_macs"] / 1e6,
                100 * row["accuracy"],
                marker=marker,
                s=70,
                edgecolor="black",
                facecolor="white",
                zorder=3,
                label=name,
            )
    if evaluation.knee is not None:
        k = evaluation.knee
        ax.scatter(
            k.edge_macs / 1e6,
            100 * k.accuracy,
            marker="*",
            s=220,
            color="crimson",
            zorder=4,
            label=f"knee (main {k.main_threshold:g}, cloud {k.cloud_threshold:g})",
        )
    ax.set_xlabel("edge MMACs per input")
    ax.set_ylabel("test accuracy, %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
