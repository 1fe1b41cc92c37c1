"""The parts of a device joining a running session that need no cgroups: one more agent in
a started pool (with fake agents), and host CPUs for a device placed around pinned ones."""

from __future__ import annotations

import pytest

from deepedge.cluster.placement import place_on_cpus
from deepedge.errors import ClusterError, TrainingError
from deepedge.train.pool import AgentPool
from tests.unit.test_workers import FAKE_AGENT, FAKE_AGENT_DIES, NEVER_CONNECTS, FakeBoard


@pytest.fixture
def pool(tmp_path):
    devices = {"a": FakeBoard(FAKE_AGENT)}
    pool = AgentPool(devices, tmp_path)
    pool.start(timeout_s=10)
    yield pool
    pool.close(grace_s=0.0)
    assert devices.keys() == {"a"}  # the caller's mapping is not the pool's to extend


def test_an_added_agent_joins_the_started_pool(pool):
    store = pool._store
    pool.add("b", FakeBoard(FAKE_AGENT), timeout_s=10)
    assert pool.runtime_mb == {"a": 12.5, "b": 12.5}
    assert set(pool._devices) == set(pool._workers) == {"a", "b"}
    assert pool._store is store  # every run's rendezvous stays where it was
    assert pool.dead_devices() == {}
    procs = pool.processes
    pool.close(grace_s=5.0)
    assert [p.returncode for p in procs.values()] == [0, 0]  # both left when asked


@pytest.mark.parametrize(
    ("snippet", "error", "match"),
    [
        (FAKE_AGENT_DIES, TrainingError, r"worker on device 'b' died \(exit code 1\)"),
        (NEVER_CONNECTS, ClusterError, r"training agents on \['b'\] did not start in 1 s"),
    ],
)
def test_an_agent_that_fails_to_join_leaves_the_pool_as_it_was(pool, snippet, error, match):
    board = FakeBoard(snippet)
    with pytest.raises(error, match=match):
        pool.add("b", board, timeout_s=1.0)
    assert set(pool._devices) == set(pool._workers) == set(pool.runtime_mb) == {"a"}
    pool.add("b", FakeBoard(FAKE_AGENT), timeout_s=10)  # the name is free again
    assert set(pool._workers) == {"a", "b"}


def test_an_agent_joins_only_a_started_pool_under_a_free_name(pool, tmp_path):
    with pytest.raises(ClusterError, match="already has a training agent"):
        pool.add("a", FakeBoard(FAKE_AGENT))
    idle = AgentPool({}, tmp_path / "idle")
    with pytest.raises(ClusterError, match="not started"):
        idle.add("b", FakeBoard(FAKE_AGENT))


def test_a_joining_device_is_placed_around_the_pinned_ones():
    cpus = [0, 1, 2, 3]
    booted = place_on_cpus({"big": 1.5, "small": 0.4}, cpus)
    demands = {"big": 1.5, "small": 0.4, "new": 0.9}
    placed = place_on_cpus(demands, cpus, fixed=booted)
    assert {n: placed[n] for n in booted} == booted  # nobody moves
    assert set(placed["new"]).isdisjoint(booted["big"] + booted["small"])  # idle CPUs first
    # a device without a quota gets every CPU; no fixed devices: the plain placement
    assert place_on_cpus({"a": 0.5, "b": None}, cpus, fixed={"a": (0,)})["b"] == (0, 1, 2, 3)
    assert place_on_cpus({"a": 0.5}, cpus, fixed={}) == place_on_cpus({"a": 0.5}, cpus)
