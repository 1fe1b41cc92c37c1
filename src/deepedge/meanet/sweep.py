"""The exit thresholds swept: accuracy against edge MACs and cloud share, the Pareto front,
and its knee.

The knee is the point of the Pareto front (more accuracy, fewer edge MACs) among those
that send at most ``max_cloud_share`` of the inputs to the cloud that lies farthest
from the straight line joining the front's two ends, both axes scaled to [0, 1] (the
"Kneedle" criterion): past it, each extra point of accuracy costs more MACs than before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from deepedge.meanet.costs import DEFAULT_ENERGY, BlockMacs, EnergyModel, exit_costs
from deepedge.meanet.exits import ExitOutputs, ExitRule, route

__all__ = ["SweepPoint", "knee", "pareto_front", "sweep"]

MAIN_THRESHOLDS = tuple(np.round(np.linspace(0.0, 1.0, 21), 3))
CLOUD_THRESHOLDS = (*tuple(np.round(np.linspace(0.3, 0.95, 14), 3)), 1.0)


@dataclass(frozen=True)
class SweepPoint:
    main_threshold: float
    cloud_threshold: float
    accuracy: float
    main_share: float
    extension_share: float
    cloud_share: float
    edge_macs: float
    sent_bytes: float
    energy_j: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def sweep(
    outputs: ExitOutputs,
    macs: BlockMacs,
    input_bytes: int,
    *,
    main_thresholds: Sequence[float] = MAIN_THRESHOLDS,
    cloud_thresholds: Sequence[float] = CLOUD_THRESHOLDS,
    energy: EnergyModel = DEFAULT_ENERGY,
) -> list[SweepPoint]:
    """Every (main, cloud) threshold pair applied to the stored outputs."""
    if outputs.cloud is None:
        cloud_thresholds = (1.0,)
    points = []
    for tm in main_thresholds:
        for tc in cloud_thresholds:
            routing = route(outputs, ExitRule(float(tm), float(tc)))
            cost = exit_costs(routing, macs, input_bytes, energy)
            points.append(
                SweepPoint(
                    float(tm),
                    float(tc),
                    routing.accuracy(outputs.labels),
                    routing.share("main"),
                    routing.share("extension"),
                    routing.share("cloud"),
                    cost["edge_macs"],
                    cost["sent_bytes"],
                    cost["energy_j"],
                )
            )
    return points


def pareto_front(points: Sequence[SweepPoint]) -> list[SweepPoint]:
    """The points no other point beats on both accuracy (higher) and edge MACs (fewer),
    by increasing MACs."""
    front: list[SweepPoint] = []
    for p in sorted(points, key=lambda p: (p.edge_macs, -p.accuracy)):
        if not front or p.accuracy > front[-1].accuracy + 1e-12:
            front.append(p)
    return front


def knee(points: Sequence[SweepPoint], max_cloud_share: float = 0.1) -> SweepPoint | None:
    """The front's knee among points sending at most ``max_cloud_share`` to the cloud."""
    front = pareto_front([p for p in points if p.cloud_share <= max_cloud_share + 1e-12])
    if len(front) <= 2:
        return front[-1] if front else None
    macs = np.array([p.edge_macs for p in front])
    acc = np.array([p.accuracy for p in front])
    x = (macs - macs[0]) / max(macs[-1] - macs[0], 1e-12)
    y = (acc - acc[0]) / max(acc[-1] - acc[0], 1e-12)
    return front[int(np.argmax(y - x))]  # distance above the chord y = x, up to a factor
