"""Packing emulated devices onto host CPUs."""

from __future__ import annotations

import pytest

from deepedge.cluster.placement import place_on_cpus


def test_devices_under_one_core_get_one_cpu_each_and_the_quota_is_balanced():
    demands = {"orin": 0.277, "xavier": 0.188, "rpi": 0.113, "odroid": 0.112, "nano": 0.08}
    placed = place_on_cpus(demands, [0, 1])
    assert all(len(cpus) == 1 for cpus in placed.values())
    load = {c: sum(demands[n] for n, cpus in placed.items() if c in cpus) for c in (0, 1)}
    assert abs(load[0] - load[1]) <= max(demands.values())
    assert placed["orin"] != placed["xavier"]  # the two largest never share a CPU


def test_a_device_gets_as_many_cpus_as_its_quota_needs():
    placed = place_on_cpus({"big": 2.5, "small": 0.3, "free": None}, [0, 1, 2, 3])
    assert len(placed["big"]) == 3
    assert placed["free"] == (0, 1, 2, 3)
    assert len(placed["small"]) == 1
    assert place_on_cpus({"huge": 9.0}, [4, 5]) == {"huge": (4, 5)}


def test_no_cpus_is_an_error():
    with pytest.raises(ValueError, match="no host CPUs"):
        place_on_cpus({"a": 0.5}, [])
