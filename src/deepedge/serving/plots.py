"""The serving plot: arrival rate against forecast and capacity, and cost, per policy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepedge.serving.run import ReplayTrace, ServeResult

__all__ = ["serving_png"]


def serving_png(results: Mapping[str, ServeResult], trace: ReplayTrace, path: Path) -> Path:
    """One row per policy (trace rate, forecast upper quantile, SLO capacity of the ready
    replicas), and a last row of cumulative cost for all policies, against trace hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(results) + 1
    fig, axes = plt.subplots(rows, 1, figsize=(11, 2.4 * rows), sharex=True)
    hours = [i for i in range(len(trace.window) + 1)]
    rate = [*trace.window, trace.window[-1]]
    for ax, (name, result) in zip(axes, results.items(), strict=False):
        t = [r["t_s"] / trace.hour_s for r in result.timeline]
        ax.step(hours, rate, where="post", color="black", lw=1, label="trace rate")
        ax.plot(
            t,
            [r["observed_rps"] for r in result.timeline],
            color="grey",
            lw=0.6,
            alpha=0.6,
            label="observed",
        )
        if any(r["forecast_rps"] is not None for r in result.timeline):
            ax.plot(
                t,
                [r["forecast_rps"] for r in result.timeline],
                color="tab:orange",
                lw=1,
                label="forecast (upper)",
            )
        ax.plot(
            t,
            [r["capacity_rps"] for r in result.timeline],
            color="tab:blue",
            lw=1.2,
            label="capacity within SLO (ready)",
        )
        s = result.summary
        ax.set_title(
            f"{name}: {s['within_slo']:.2%} within SLO, {s['windows_violated']} windows "
            f"violated, cost {s['cost']:.3f} {s['currency']}",
            fontsize=9,
        )
        ax.set_ylabel("requests/s")
        ax.legend(fontsize=7, loc="upper right", ncol=4)
    cost_ax = axes[-1]
    for name, result in results.items():
        cost_ax.plot(
            [r["t_s"] / trace.hour_s for r in result.timeline],
            [r["cost_so_far"] for r in result.timeline],
            label=name,
        )
    cost_ax.set_ylabel("cost so far")
    cost_ax.set_xlabel(f"trace hour (1 h replayed in {trace.hour_s:g} s)")
    cost_ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
