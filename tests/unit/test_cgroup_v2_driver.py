"""The cgroup v2 driver's file protocol, against a directory laid out like cgroupfs.

This machine mounts v1; the v2 driver is checked here for what it writes and reads.
"""

from __future__ import annotations

from deepedge.cluster.cgroups import CgroupV2Driver


def test_v2_limits_and_controllers(tmp_path):
    (tmp_path / "cgroup.subtree_control").write_text("")
    driver = CgroupV2Driver(tmp_path)
    driver.create("deepedge/s1/dev", cpu_cores=0.25, period_us=20000, memory_bytes=2**30)
    assert (tmp_path / "deepedge/s1/dev/cpu.max").read_text() == "5000 20000"
    assert (tmp_path / "deepedge/s1/dev/memory.max").read_text() == str(2**30)
    # every ancestor must enable cpu and memory for its children (last write wins on a file)
    assert (tmp_path / "deepedge/s1/cgroup.subtree_control").read_text() in ("+cpu", "+memory")
    driver.set_limits("deepedge/s1/dev", cpu_cores=None, period_us=20000, memory_bytes=None)
    assert (tmp_path / "deepedge/s1/dev/cpu.max").read_text() == "max 20000"
    assert (tmp_path / "deepedge/s1/dev/memory.max").read_text() == "max"


def test_v2_usage_parsing(tmp_path):
    d = tmp_path / "g"
    d.mkdir()
    (d / "cpu.stat").write_text("usage_usec 1500000\nnr_throttled 7\nthrottled_usec 42\n")
    (d / "memory.current").write_text("12345\n")
    driver = CgroupV2Driver(tmp_path)
    assert driver.cpu_usage_ns("g") == 1_500_000_000
    assert driver.cpu_throttled("g") == (7, 42_000)
    assert driver.memory_usage_bytes("g") == 12345


def test_v2_pins_a_device_to_its_cpus_when_cpuset_is_available(tmp_path):
    (tmp_path / "cgroup.subtree_control").write_text("")
    driver = CgroupV2Driver(tmp_path, cpuset=True)
    driver.create(
        "deepedge/s1/dev", cpu_cores=0.25, period_us=20000, memory_bytes=None, cpus=[3, 1]
    )
    assert (tmp_path / "deepedge/s1/dev/cpuset.cpus").read_text() == "1,3"
    unpinned = CgroupV2Driver(tmp_path)
    unpinned.create(
        "deepedge/s1/other", cpu_cores=0.25, period_us=20000, memory_bytes=None, cpus=[1]
    )
    assert not (tmp_path / "deepedge/s1/other/cpuset.cpus").exists()
