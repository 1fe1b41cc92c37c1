"""The terminal view of ``deepedge serve``: the decision just made, and the final table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:
    from deepedge.serving.run import ReplayTrace

__all__ = ["ServeView"]


def _num(value: float | None, fmt: str = ".0f") -> str:
    return "-" if value is None else format(value, fmt)


class ServeView:
    """Renders one timeline row as a small table (refreshed every decision interval)."""

    def __init__(self, trace: ReplayTrace, slo_ms: float) -> None:
        self.trace = trace
        self.slo_ms = slo_ms

    def render(self, policy: str, row: dict[str, Any]) -> Table:
        hours = len(self.trace.window)
        done = row["t_s"] / self.trace.hour_s
        table = Table(
            title=f"serving under {policy}: trace hour {done:.1f} of {hours} "
            f"(SLO p95 ≤ {self.slo_ms:g} ms)",
            show_header=True,
        )
        for col in (
            "rate rps",
            "forecast",
            "capacity",
            "replicas",
            "p95 ms",
            "failed",
            "cost/h",
            "cost so far",
        ):
            table.add_column(col, justify="right")
        p95 = row["p95_ms"]
        late = p95 is not None and p95 > self.slo_ms
        table.add_row(
            _num(row["observed_rps"]),
            _num(row["forecast_rps"]),
            _num(row["capacity_rps"]),
            f"{row['ready']}" + (f" (+{row['starting']} booting)" if row["starting"] else ""),
            ("[red]" if late else "") + _num(p95, ".1f"),
            str(row["failed"]),
            _num(row["cost_per_hour"], ".4f"),
            _num(row["cost_so_far"], ".4f"),
        )
        table.caption = row["note"] + ("; " + "; ".join(row["actions"]) if row["actions"] else "")
        return table

    def summary(self, rows: Sequence[dict[str, Any]]) -> Table:
        table = Table(title=f"serving: {len(self.trace.window)} trace hours per policy")
        for col in (
            "policy",
            "requests",
            "within SLO",
            "windows violated",
            "p95 ms",
            "cost",
            "scaling actions",
            "replaced",
        ):
            table.add_column(col, justify="left" if col == "policy" else "right")
        for s in rows:
            table.add_row(
                s["policy"],
                str(s["requests"]),
                f"{s['within_slo']:.2%}",
                f"{s['windows_violated']} / {s['windows']}",
                _num(s["p95_ms"], ".1f"),
                f"{s['cost']:.4f} {s['currency']}",
                str(s["scaling_actions"]),
                str(s["replaced"]),
            )
        return table
