"""Plots and tables a person reads after a run: step timelines and LC latency over time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt

from deepedge.apps import RequestRecord
from deepedge.session import Phase
from deepedge.spec import AppSpec
from deepedge.train.pool import TrainRun

if TYPE_CHECKING:
    from deepedge.control.events import Event

__all__ = ["plot_lc_latency", "plot_step_timeline"]

TIMELINE_QUIET = ("state", "run", "plan", "profiled", "cluster", "interference")
"""Event kinds the step timeline leaves off: bookkeeping, not decisions taken mid-run."""

_PHASE_COLOURS = ["#dbe9f6", "#fde2cf", "#e2f0d9", "#eadcf2", "#f6f2cf"]


def plot_step_timeline(
    runs: Mapping[str, TrainRun],
    path: Path,
    *,
    max_steps: int = 12,
    events: Iterable[Event] = (),
) -> Path:
    """Per device and policy: each step's local compute, wait for the slowest, update.

    The first ``max_steps`` steps are drawn so individual bars stay readable. The run
    controller's decisions during a run (``events``: failures, rebalances, SLO-guard
    actions, joins) are marked where they happened, the axis stretched to show them.
    """
    marks = [e for e in events if e.kind not in TIMELINE_QUIET]
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 1.2 + 1.6 * len(runs) * 0.9), squeeze=False)
    for ax, (policy, run) in zip(axes[:, 0], runs.items(), strict=True):
        t0 = min(r.start for recs in run.steps.values() for r in recs)
        t1 = max(r.end for recs in run.steps.values() for r in recs)
        for e in (e for e in marks if t0 <= e.t <= t1):
            ax.axvline(e.t - t0, color="#c0392b", linestyle="--", linewidth=1)
            ax.annotate(
                e.kind,
                (e.t - t0, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="#c0392b",
                rotation=90,
                va="top",
                ha="right",
            )
        devices = list(run.steps)
        for y, dev in enumerate(devices):
            for r in run.steps[dev][:max_steps]:
                ax.barh(y, r.local_done - r.start, left=r.start - t0, color="#2b7bba", height=0.6)
                ax.barh(
                    y, r.synced - r.local_done, left=r.local_done - t0, color="#cccccc", height=0.6
                )
                ax.barh(y, r.end - r.synced, left=r.synced - t0, color="#f39c12", height=0.6)
        ax.set_yticks(
            range(len(devices)),
            [f"{d} ({_share_label(run, d)})" for d in devices],
            fontsize=8,
        )
        ax.set_title(f"{policy}: first {max_steps} steps", fontsize=9)
        ax.set_xlabel("seconds since the first step", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ("#2b7bba", "#cccccc", "#f39c12")]
    fig.legend(
        handles,
        ["local forward+backward", "waiting for all-reduce", "optimiser step"],
        loc="upper right",
        fontsize=8,
        ncols=3,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _share_label(run: TrainRun, device: str) -> str:
    """A device's part of each step: its fixed b, or (dynamic dispatch) the mean it claimed."""
    if not run.plan.dynamic:
        now = run.recoveries[-1].plan.local_batches.get(device) if run.recoveries else None
        before = run.plan.local_batches[device]
        return f"b={before}" if now in (None, before) else f"b={before}→{now}"
    claimed = [r.batch for r in run.steps[device]]
    return f"mean b={sum(claimed) / max(1, len(claimed)):.1f}, m={run.plan.micro_batch}"


def plot_lc_latency(
    records: Sequence[RequestRecord], apps: Sequence[AppSpec], phases: Sequence[Phase], path: Path
) -> Path:
    """Every request's latency over time per app, its deadline, and the run phases shaded."""
    if not records:
        raise ValueError("no LC requests were recorded")
    t0 = min(r.scheduled_s for r in records)
    fig, axes = plt.subplots(
        len(apps), 1, figsize=(11, 1.0 + 1.7 * len(apps)), sharex=True, squeeze=False
    )
    for ax, app in zip(axes[:, 0], apps, strict=True):
        mine = [r for r in records if r.app == app.name]
        ok = [r for r in mine if r.ok]
        ax.scatter(
            [r.scheduled_s - t0 for r in ok], [r.latency_ms for r in ok], s=3, color="#2b7bba"
        )
        failed = [r.scheduled_s - t0 for r in mine if not r.ok]
        if failed:
            ax.scatter(
                failed,
                [app.deadline_ms * 2] * len(failed),
                s=8,
                marker="x",
                color="red",
                label="failed",
            )
        ax.axhline(
            app.deadline_ms,
            color="red",
            linestyle="--",
            linewidth=1,
            label=f"deadline {app.deadline_ms:g} ms (p95)",
        )
        for i, ph in enumerate(phases):
            ax.axvspan(
                ph.start - t0, ph.end - t0, color=_PHASE_COLOURS[i % len(_PHASE_COLOURS)], zorder=0
            )
            ax.text(
                ph.start - t0,
                1.0,
                ph.label,
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                va="top",
            )
        ax.set_yscale("log")
        ax.set_ylabel(f"{app.name}\n{app.device}\nms", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
