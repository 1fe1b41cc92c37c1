"""Vertical scaling: the cheapest flavours for the replicas that already run.

Horizontal and vertical changes act on different time scales. A new replica serves only
after a cold start (seconds on a board, which is hours of a compressed trace), so the
*number* of replicas has to be planned over the whole provisioning lead time. A replica's
flavour is its partition's CPU quota and memory limit, rewritten live, so its *size* needs
to cover only the next decision interval. :func:`solve_resize` answers the second question:
given the replicas per device (``slots``) and how many of them serve now (``ready``), which
flavours cover ``rate_rps`` within the SLO at the least cost per hour?

Only ready replicas count towards the rate: one still booting serves nothing before the
next decision, so it takes the cheapest flavour that fits (it boots with its device's spare
CPU anyway, :mod:`deepedge.serving.pool`) and is sized once it serves.

Exact, by dynamic programming over the devices: each device offers every multiset of
flavours for its ready replicas that fits its cores (a few dozen on a board); the
(cost, capacity) pairs of the devices so far are combined with them and only the Pareto
front is kept, so the work grows with the front, not with the product of the choices.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

from deepedge.errors import SpecError
from deepedge.serving.costs import CostCatalog, Flavour
from deepedge.serving.latency import LatencyModel
from deepedge.serving.optimize import _CORES_EPS, Config, _problem

__all__ = ["solve_resize"]

_Front = list[tuple[float, float, dict[str, dict[str, int]]]]  # (cost, capacity, placement)


def solve_resize(
    rate_rps: float,
    slo_ms: float,
    models: Mapping[str, LatencyModel],
    flavours: Iterable[Flavour],
    catalog: CostCatalog,
    devices: Mapping[str, float],
    *,
    slots: Mapping[str, int],
    ready: Mapping[str, int] | None = None,
) -> Config | None:
    """The cheapest flavours for ``slots`` (device -> replicas) whose ready replicas
    (``ready``, device -> count; all of them when None) serve ``rate_rps`` within the SLO.

    When no choice covers the rate, the one with the most capacity (its ``capacity_rps``
    falls short of the rate, which tells the caller); None when the slots do not fit their
    devices even at the smallest flavour. ``capacity_rps`` counts the ready replicas only.
    """
    prob = _problem(rate_rps, slo_ms, models, flavours, catalog, devices, 0, 10**6)
    unknown = sorted(set(slots) - set(devices))
    if unknown:
        raise SpecError(f"replicas on unknown device(s) {', '.join(unknown)}")
    if not prob.names:
        return None
    options = [
        (name, float(cost), float(cap), float(cores))
        for name, cost, cap, cores in zip(prob.names, prob.cost, prob.cap, prob.cores, strict=True)
    ]
    cheapest = min(options, key=lambda o: (o[1], o[3]))
    front: _Front = [(0.0, 0.0, {})]
    for device, n in sorted(slots.items()):
        if n <= 0:
            continue
        serving = n if ready is None else max(0, min(n, ready.get(device, 0)))
        booting = n - serving
        room = devices[device] - booting * cheapest[3]
        choices = []
        for combo in itertools.combinations_with_replacement(options, serving):
            if sum(o[3] for o in combo) > room + _CORES_EPS:
                continue
            per: dict[str, int] = {}
            for o in (*combo, *[cheapest] * booting):
                per[o[0]] = per.get(o[0], 0) + 1
            cost = sum(o[1] for o in combo) + booting * cheapest[1]
            choices.append((cost, sum(o[2] for o in combo), per))
        if not choices:
            return None
        front = _pareto(
            (c0 + c1, k0 + k1, {**placed, device: per})
            for c0, k0, placed in front
            for c1, k1, per in choices
        )
    covering = [s for s in front if prob.covers(s[1])]
    cost, capacity, placement = (
        min(covering, key=lambda s: s[0]) if covering else max(front, key=lambda s: s[1])
    )
    replicas: dict[str, int] = {}
    for per in placement.values():
        for name, count in per.items():
            replicas[name] = replicas.get(name, 0) + count
    return Config(replicas, cost, capacity, placement, currency=prob.currency)


def _pareto(states: Iterable[tuple[float, float, dict]]) -> _Front:
    """The states no other state beats on both cost (lower) and capacity (higher)."""
    front: _Front = []
    for state in sorted(states, key=lambda s: (s[0], -s[1])):
        if not front or state[1] > front[-1][1] + 1e-9:
            front.append(state)
    return front
