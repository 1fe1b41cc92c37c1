"""How the replica pool turns a target placement into actions, without processes: serving
replicas take a device's largest flavours (a resize is instant, a boot is not)."""

from __future__ import annotations

from pathlib import Path

from deepedge.serving import DEFAULT_FLAVOURS
from deepedge.serving.pool import Replica, ReplicaPool

FLAVOURS = {f.name: f for f in DEFAULT_FLAVOURS}


def pool_with(*replicas: tuple[str, str, str, bool]) -> ReplicaPool:
    """A pool object holding (name, device, flavour, ready) replicas and nothing else."""
    pool = ReplicaPool.__new__(ReplicaPool)
    pool.replicas = {
        name: Replica(
            name,
            device,
            FLAVOURS[flavour],
            proc=None,  # type: ignore[arg-type]
            ready_file=Path(f"{name}.ready"),
            spawned_at=0.0,
            ready_at=1.0 if ready else None,
        )
        for name, device, flavour, ready in replicas
    }
    return pool


def plan(pool: ReplicaPool, target: dict) -> set[tuple[str, str, str | None, str | None]]:
    return {
        (kind, device, r.name if r else None, f.name if f else None)
        for kind, device, r, f in pool._diff(target, FLAVOURS)
    }


def test_serving_replicas_take_the_largest_flavours_and_booting_ones_the_rest() -> None:
    pool = pool_with(("r1", "a", "xs", True), ("r2", "a", "l", False))
    # the serving r1 grows at once; the booting r2 shrinks, nothing restarts
    assert plan(pool, {"a": {"l": 1, "xs": 1}}) == {
        ("resize", "a", "r1", "l"),
        ("resize", "a", "r2", "xs"),
    }


def test_matching_replicas_are_kept_and_the_rest_start_or_drain() -> None:
    pool = pool_with(("r1", "a", "m", True), ("r2", "b", "s", True), ("r3", "b", "s", False))
    assert plan(pool, {"a": {"m": 1}, "b": {"s": 1}, "c": {"xs": 1}}) == {
        ("drain", "b", "r3", None),  # the booting one goes, the serving one stays
        ("start", "c", None, "xs"),
    }
    assert plan(pool, {"a": {"m": 1, "s": 1}}) == {
        ("start", "a", None, "s"),
        ("drain", "b", "r2", None),
        ("drain", "b", "r3", None),
    }
