"""Which host CPUs each emulated device runs on.

A device's CPU quota says how much it may run, not where. Left to wander, a device's LC app
and its trainer sometimes share a host CPU (the app preempts the ``SCHED_IDLE`` trainer)
and sometimes run side by side (the trainer spends the shared quota and the app waits for
the next period). The same scenario then gives p95 latencies that differ by 2x from run to
run. Pinning each device to as few host CPUs as its quota needs makes it behave like one
board, and the measurements repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["place_on_cpus"]


def place_on_cpus(
    demands: Mapping[str, float | None],
    cpus: Sequence[int],
    *,
    fixed: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, tuple[int, ...]]:
    """Give each device ``ceil(cores)`` host CPUs, balancing the quota placed on each CPU.

    Longest-first greedy packing: the device with the largest quota goes first onto the
    least-loaded CPUs. A device without a quota, or needing every CPU, gets all of them.
    ``fixed`` devices (also in ``demands``) keep the CPUs they were given when the cluster
    booted: a device joining a running cluster is placed around them, never moving them.
    """
    if not cpus:
        raise ValueError("no host CPUs to place devices on")
    load = dict.fromkeys(sorted(cpus), 0.0)
    placed: dict[str, tuple[int, ...]] = {}
    for name, chosen in (fixed or {}).items():
        cores = demands.get(name)
        mine = [c for c in chosen if c in load]
        for c in mine:
            load[c] += (cores or float(len(load))) / max(1, len(mine))
        placed[name] = tuple(chosen)
    for name, cores in sorted(
        ((n, c) for n, c in demands.items() if n not in placed),
        key=lambda kv: (-(kv[1] if kv[1] else math.inf), kv[0]),
    ):
        wanted = len(load) if not cores else min(len(load), max(1, math.ceil(cores - 1e-9)))
        chosen = sorted(sorted(load, key=lambda c: (load[c], c))[:wanted])
        share = (cores or float(len(load))) / wanted
        for c in chosen:
            load[c] += share
        placed[name] = tuple(chosen)
    return placed
