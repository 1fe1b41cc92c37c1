"""Usage vectors, counter arithmetic and the host-side checks of the stressors (no processes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from deepedge.interference.stressors import (
    STRESSOR_KINDS,
    Counters,
    StressorProcess,
    Usage,
    usage_between,
)


def _counters(wall_s: float, **kw) -> Counters:
    base = dict(cpu_s=0.0, rss_mb=10.0, bytes=0, ops=0, steps=0, errors=0, last_error=None)
    return Counters(wall_s=wall_s, **{**base, **kw})


def test_usage_fields_are_ordered_and_round_trip():
    u = Usage(0.4, 100.0, 1.0, 2.0, 3.0, 4.0, 0.5, 6.0)
    assert Usage.FIELDS == (
        "cpu_cores",
        "rss_mb",
        "membw_mbps",
        "llc_mbps",
        "disk_mbps",
        "net_mbps",
        "gpu_util",
        "samples_per_s",
    )
    assert u.as_tuple() == (0.4, 100.0, 1.0, 2.0, 3.0, 4.0, 0.5, 6.0)
    assert list(u.to_dict()) == list(Usage.FIELDS)
    assert Usage.from_dict(u.to_dict()) == u
    # samples_per_s may be left out (it defaults to 0); anything else is an error
    d = u.to_dict()
    del d["samples_per_s"]
    assert Usage.from_dict(d).samples_per_s == 0.0
    with pytest.raises(ValueError, match="missing"):
        Usage.from_dict({"cpu_cores": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        Usage.from_dict({**u.to_dict(), "watts": 3.0})


def test_usages_add_elementwise_and_sum():
    a = Usage(0.1, 50.0, 10.0, 0.0, 1.0, 0.0, 0.0, 0.0)
    b = Usage(0.2, 25.0, 5.0, 3.0, 0.0, 2.0, 0.5, 100.0)
    total = a + b
    assert total.as_tuple() == pytest.approx((0.3, 75.0, 15.0, 3.0, 1.0, 2.0, 0.5, 100.0))
    assert sum([a, b]) == total
    assert Usage.zero() + a == a
    with pytest.raises(TypeError):
        _ = a + 1


@pytest.mark.parametrize(
    ("kind", "field"),
    [("membw", "membw_mbps"), ("llc", "llc_mbps"), ("disk", "disk_mbps"), ("net", "net_mbps")],
)
def test_bytes_go_to_the_kinds_field_in_megabytes_per_second(kind, field):
    before = _counters(100.0, cpu_s=1.0, bytes=1_000_000)
    after = _counters(102.0, cpu_s=1.5, rss_mb=64.0, bytes=9_000_000)
    u = usage_between(kind, before, after)
    assert u.cpu_cores == pytest.approx(0.25)
    assert u.rss_mb == 64.0  # the end of the window, not a rate
    assert getattr(u, field) == pytest.approx(4.0)  # 8e6 bytes in 2 s
    others = [n for n in Usage.FIELDS if n not in (field, "cpu_cores", "rss_mb")]
    assert all(getattr(u, n) == 0.0 for n in others)


def test_cpu_memcap_gpu_and_train_fields():
    before = _counters(10.0, cpu_s=2.0, ops=1000, steps=3, active_s=1.0, bytes=5)
    after = _counters(14.0, cpu_s=3.6, ops=3000, steps=13, active_s=3.0, bytes=10**9)
    cpu = usage_between("cpu", before, after)
    assert cpu.cpu_cores == pytest.approx(0.4)
    assert cpu.as_tuple()[2:] == (0.0,) * 6  # iterations are not a resource field
    assert usage_between("memcap", before, after).as_tuple()[2:] == (0.0,) * 6
    gpu = usage_between("gpu", before, after)
    assert gpu.gpu_util == pytest.approx(0.5)  # 2 s active in 4 s
    train = usage_between("train", before, after)
    assert train.samples_per_s == pytest.approx(500.0)
    assert train.gpu_util == 0.0


def test_gpu_util_is_capped_at_one_and_windows_must_move_forward():
    before = _counters(1.0, active_s=0.0)
    after = _counters(2.0, active_s=1.2)  # clock jitter between the two clocks
    assert usage_between("gpu", before, after).gpu_util == 1.0
    with pytest.raises(ValueError, match="after"):
        usage_between("cpu", after, before)
    with pytest.raises(ValueError, match="unknown stressor kind"):
        usage_between("fpga", before, after)


def test_counters_from_dict_ignores_extra_keys():
    c = Counters.from_dict(
        {
            "event": "counters",
            "wall_s": 1.0,
            "cpu_s": 0.5,
            "rss_mb": 20.0,
            "bytes": 7,
            "ops": 8,
            "steps": 0,
            "errors": 1,
            "last_error": "No space left on device (errno 28)",
            "active_s": 0.25,
            "intensity": 0.0,
            "future_field": 3,
        }
    )
    assert c.bytes == 7 and c.errors == 1 and c.last_error.startswith("No space")
    assert Counters.from_dict(c.to_dict()) == c


def test_kinds_and_constructor_checks(tmp_path: Path):
    assert STRESSOR_KINDS == ("cpu", "membw", "llc", "memcap", "disk", "net", "gpu", "train")

    class FakeDevice:
        name = "d"

    def make(kind: str, **options):
        return StressorProcess(
            kind, FakeDevice(), host="127.0.0.1", workdir=tmp_path, options=options
        )

    with pytest.raises(ValueError, match="unknown stressor kind"):
        make("fpga")
    with pytest.raises(ValueError, match="stress-ng backend"):
        make("net", backend="stress-ng")
    with pytest.raises(ValueError, match="backend"):
        make("cpu", backend="docker")
    with pytest.raises(ValueError, match="period_s"):
        make("cpu", period_s=0)
    s = make("cpu")
    assert s.pid is None and s.kind == "cpu"
    for bad in (-0.1, 1.5, math.nan, "high"):
        with pytest.raises(ValueError, match="intensity"):
            s.set(bad)
    s.close()
    s.close()  # idempotent, also when never started
