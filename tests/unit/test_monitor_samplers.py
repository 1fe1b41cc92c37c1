"""Samplers and the monitor loop, on synthetic sources (no cgroups, GPU or Jetson needed)."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from deepedge.apps.stats import RequestRecord
from deepedge.cluster.api import DeviceUsage
from deepedge.monitor import (
    METRICS,
    DeviceSampler,
    HostSampler,
    LcLatencySampler,
    Monitor,
    NvmlSampler,
    ProcessSampler,
    Sample,
    SamplerUnavailable,
    TegrastatsSampler,
    TimeSeriesStore,
    build_samplers,
    parse_tegrastats,
    process_role,
)
from deepedge.spec import AppSpec, DeviceSpec

NANO = (
    "RAM 2448/3956MB (lfb 1x2MB) SWAP 0/1978MB (cached 0MB) "
    "CPU [12%@1479,5%@1479,off,8%@1479] EMC_FREQ 0% GR3D_FREQ 35%@921 "
    "PLL@31C CPU@33.5C PMIC@100C GPU@32C AO@40.5C thermal@32.75C POM_5V_IN 2318/2318 "
    "POM_5V_GPU 0/0 POM_5V_CPU 421/421"
)
ORIN = (
    "11-27-2023 10:15:02 RAM 3034/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [2%@729,1%@729,0%@729,100%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 7%@[305,0] "
    "VIC_FREQ 729 APE 200 CV0@-256C CPU@47.5C SOC2@44.468C SOC0@45.843C CV1@-256C "
    "GPU@44.062C tj@47.5C SOC1@44.781C CV2@-256C VDD_IN 4816mW/4816mW "
    "VDD_CPU_GPU_CV 481mW/481mW VDD_SOC 1443mW/1443mW"
)
XAVIER_NO_FREQ = "RAM 1200/15825MB (lfb 3418x4MB) CPU [50%,25%] GR3D_FREQ 35% GPU@40C"


def _value(samples: list[Sample], metric: str, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    hits = [s.value for s in samples if s.metric == metric and s.labels == want]
    assert len(hits) == 1, f"{metric}{labels}: {hits}"
    return hits[0]


def _assert_known(samples: list[Sample]) -> None:
    unknown = {s.metric for s in samples} - METRICS.keys()
    assert not unknown, f"metrics missing from METRICS: {unknown}"


# ------------------------------------------------------------------ tegrastats


def test_parse_tegrastats_nano_line():
    f = parse_tegrastats(NANO)
    assert f["ram_used_bytes"] == 2448 * 2**20
    assert f["ram_total_bytes"] == 3956 * 2**20
    assert f["swap_used_bytes"] == 0
    assert f["gpu_utilization_ratio"] == pytest.approx(0.35)
    assert (f["cpu0_utilization_ratio"], f["cpu1_utilization_ratio"]) == (0.12, 0.05)
    assert "cpu2_utilization_ratio" not in f  # offline core
    assert f["cpu3_utilization_ratio"] == pytest.approx(0.08)
    assert f["temperature_cpu_celsius"] == 33.5
    assert f["temperature_gpu_celsius"] == 32.0
    assert f["power_pom_5v_in_watts"] == pytest.approx(2.318)
    assert not any(k.startswith("temperature_emc") for k in f)


def test_parse_tegrastats_orin_line_skips_powered_down_sensors():
    f = parse_tegrastats(ORIN)
    assert f["ram_used_bytes"] == 3034 * 2**20
    assert f["gpu_utilization_ratio"] == pytest.approx(0.07)
    assert f["cpu3_utilization_ratio"] == 1.0
    assert "cpu4_utilization_ratio" not in f
    assert f["temperature_tj_celsius"] == 47.5
    assert "temperature_cv0_celsius" not in f
    assert f["power_vdd_in_watts"] == pytest.approx(4.816)


def test_parse_tegrastats_without_frequencies_and_garbage():
    f = parse_tegrastats(XAVIER_NO_FREQ)
    assert f["gpu_utilization_ratio"] == pytest.approx(0.35)
    assert (f["cpu0_utilization_ratio"], f["cpu1_utilization_ratio"]) == (0.5, 0.25)
    assert f["ram_total_bytes"] == 15825 * 2**20
    assert parse_tegrastats("tegrastats: command not supported\n") == {}


def test_tegrastats_sampler_reads_a_running_process(tmp_path):
    fake = tmp_path / "tegrastats"
    fake.write_text(f'#!/bin/sh\nwhile true; do echo "{ORIN}"; sleep 0.05; done\n')
    fake.chmod(0o755)
    sampler = TegrastatsSampler(command=str(fake), interval_ms=50)
    try:
        deadline = time.monotonic() + 5
        samples: list[Sample] = []
        while not samples and time.monotonic() < deadline:
            samples = sampler.sample(1.0)
            time.sleep(0.02)
        _assert_known(samples)
        assert _value(samples, "deepedge_jetson_ram_used_bytes") == 3034 * 2**20
        assert _value(samples, "deepedge_jetson_cpu_utilization_ratio", cpu="3") == 1.0
        assert _value(samples, "deepedge_jetson_power_watts", rail="vdd_soc") == 1.443
    finally:
        sampler.close()
    assert sampler._proc.poll() is not None


def test_tegrastats_missing_is_unavailable():
    with pytest.raises(SamplerUnavailable, match="not found"):
        TegrastatsSampler(command="tegrastats-does-not-exist")


def test_nvml_without_a_gpu_is_unavailable():
    try:
        sampler = NvmlSampler()
    except SamplerUnavailable as err:
        assert str(err).startswith("NVML unavailable")
        return
    try:  # a machine with a GPU: it must then sample
        _assert_known(sampler.sample(0.0))
    finally:
        sampler.close()
    pytest.skip("pynvml initialised: this machine has an NVIDIA GPU")


# ------------------------------------------------------------------ LC latency


def _rec(app: str, done_s: float, latency_ms: float, ok: bool = True) -> RequestRecord:
    sched = done_s - latency_ms / 1000.0
    return RequestRecord(
        app, sched, sched, done_s, latency_ms if ok else math.nan, ok, None if ok else "reset"
    )


class _Queue:
    def __init__(self) -> None:
        self.pending: list[RequestRecord] = []

    def drain(self) -> list[RequestRecord]:
        out, self.pending = self.pending, []
        return out


def test_lc_latency_quantiles_misses_failures_and_window_expiry():
    apps = [
        AppSpec(name="cam", device="a", rate_rps=10, deadline_ms=50),
        AppSpec(name="asr", device="b", rate_rps=5, deadline_ms=200),
    ]
    q = _Queue()
    sampler = LcLatencySampler(q.drain, apps, window_s=5.0)

    # 100 cam requests done in [100, 101): latencies 1..100 ms; 2 failures; 1 asr request
    q.pending = [_rec("cam", 100 + i / 100, float(i + 1)) for i in range(100)]
    q.pending += [_rec("cam", 100.5, 0.0, ok=False), _rec("cam", 100.6, 0.0, ok=False)]
    q.pending += [_rec("asr", 100.2, 80.0), _rec("other", 100.1, 1.0)]
    s = sampler.sample(101.0)
    _assert_known(s)
    assert _value(s, "deepedge_app_requests_total", app="cam") == 102
    assert _value(s, "deepedge_app_failures_total", app="cam") == 2
    assert _value(s, "deepedge_app_deadline_misses_total", app="cam") == 50 + 2  # 51..100 ms
    assert _value(s, "deepedge_app_deadline_seconds", app="cam") == 0.05
    lat = {
        q_: _value(s, "deepedge_app_latency_seconds", app="cam", quantile=q_)
        for q_ in ("0.5", "0.95", "0.99")
    }
    # 102 values: 1..100 ms then two infinities (failures)
    assert lat["0.5"] == pytest.approx(0.0515)
    assert lat["0.95"] == pytest.approx(0.09695)
    assert lat["0.99"] == math.inf
    assert _value(s, "deepedge_app_latency_seconds", app="asr", quantile="0.5") == 0.08
    assert not [x for x in s if x.label_dict.get("app") == "other"]

    # later: one fast cam request; the old ones left the window, counters keep counting
    q.pending = [_rec("cam", 106.0, 10.0)]
    s = sampler.sample(106.5)
    assert _value(s, "deepedge_app_requests_total", app="cam") == 103
    assert _value(s, "deepedge_app_latency_seconds", app="cam", quantile="0.99") == 0.01
    assert math.isnan(_value(s, "deepedge_app_latency_seconds", app="asr", quantile="0.5"))
    assert _value(s, "deepedge_app_requests_total", app="asr") == 1


# --------------------------------------------------------- devices and processes


@dataclass
class _FakeDevice:
    spec: DeviceSpec
    usage_value: DeviceUsage
    pid_set: set[int] = field(default_factory=set)
    cpu_limit: float | None = None

    def pids(self) -> set[int]:
        return self.pid_set

    def usage(self) -> DeviceUsage:
        return self.usage_value


def test_device_sampler_reports_usage_and_limits():
    spec = DeviceSpec(name="nano", kind="jetson-nano", cpu_cores=0.5, memory_mb=1024)
    devices = {
        "nano": _FakeDevice(spec, DeviceUsage(12.5, 3 * 2**20, 7, 0.25), {1, 2}),
        "boot": _FakeDevice(spec, DeviceUsage(1.0, None, None), cpu_limit=2.0),
    }
    s = DeviceSampler(devices).sample(5.0)
    _assert_known(s)
    assert _value(s, "deepedge_device_cpu_seconds_total", device="nano") == 12.5
    assert _value(s, "deepedge_device_cpu_throttled_periods_total", device="nano") == 7
    assert _value(s, "deepedge_device_cpu_throttled_seconds_total", device="nano") == 0.25
    assert _value(s, "deepedge_device_memory_used_bytes", device="nano") == 3 * 2**20
    assert _value(s, "deepedge_device_memory_limit_bytes", device="nano") == 2**30
    assert _value(s, "deepedge_device_cpu_limit_cores", device="nano") == 0.5  # from the spec
    assert _value(s, "deepedge_device_cpu_limit_cores", device="boot") == 2.0  # live limit
    assert _value(s, "deepedge_device_processes", device="nano") == 2
    assert not [x for x in s if x.label_dict == {"device": "boot"} and "throttled" in x.metric]


def test_process_sampler_names_roles_and_skips_vanished_pids():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spec = DeviceSpec(name="d", kind="jetson-nano")
    dev = _FakeDevice(spec, DeviceUsage(0, None, None), {os.getpid(), dead.pid})
    s = ProcessSampler({"d": dev}).sample(1.0)
    _assert_known(s)
    mine = [x for x in s if x.label_dict["pid"] == str(os.getpid())]
    assert {x.metric for x in mine} == {
        "deepedge_process_cpu_seconds_total",
        "deepedge_process_resident_memory_bytes",
    }
    assert all(x.label_dict["device"] == "d" for x in mine)
    assert (
        _value(
            s,
            "deepedge_process_resident_memory_bytes",
            device="d",
            pid=str(os.getpid()),
            name=mine[0].label_dict["name"],
        )
        > 10 * 2**20
    )
    assert not [x for x in s if x.label_dict["pid"] == str(dead.pid)]


def test_process_role():
    assert (
        process_role(["python", "-m", "deepedge.train.agent", "--device", "x"], "python") == "agent"
    )
    assert process_role(["/usr/bin/python3", "-m", "deepedge.apps.server"], "python3") == "app"
    assert process_role(["python", "-m", "pkg.tool"], "python") == "tool"
    assert process_role(["sleep", "300"], "sleep") == "sleep"
    assert process_role([], "zombie") == "zombie"


def test_host_sampler_emits_sane_values():
    sampler = HostSampler()
    first = sampler.sample(1.0)
    _assert_known(first)
    assert math.isnan(_value(first, "deepedge_host_cpu_utilization_ratio"))  # too soon to tell
    t_end = time.monotonic() + 0.3
    while time.monotonic() < t_end:
        pass
    s = sampler.sample(2.0)
    util = _value(s, "deepedge_host_cpu_utilization_ratio")
    assert 0.0 < util <= 1.0  # this thread was busy
    used = _value(s, "deepedge_host_memory_used_bytes")
    assert 0 < used < _value(s, "deepedge_host_memory_total_bytes")


# ----------------------------------------------------------------------- monitor


class _Counter:
    name = "counter"

    def __init__(self) -> None:
        self.calls = 0

    def sample(self, now: float) -> list[Sample]:
        self.calls += 1
        return [Sample.of("deepedge_device_cpu_seconds_total", self.calls, now, device="x")]


class _Broken:
    name = "broken"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0
        self.closed = False

    def sample(self, now: float) -> list[Sample]:
        self.calls += 1
        raise self.exc

    def close(self) -> None:
        self.closed = True


def test_monitor_reports_a_failing_sampler_once_and_keeps_the_others(tmp_path, caplog):
    good, broken = _Counter(), _Broken(SamplerUnavailable("no such board"))
    crashing = _Broken(ZeroDivisionError("bug"))
    crashing.name = "crashing"
    with TimeSeriesStore(tmp_path / "ts.db") as store:
        mon = Monitor([broken, good, crashing], store=store, interval_s=1.0)
        with caplog.at_level(logging.WARNING, logger="deepedge.monitor"):
            for i in range(5):
                mon.tick(now=100.0 + i)
        assert mon.unavailable == {"broken": "no such board", "crashing": "ZeroDivisionError: bug"}
        assert sum("no such board" in r.getMessage() for r in caplog.records) == 1
        assert (broken.calls, crashing.calls, good.calls) == (1, 1, 5)
        assert broken.closed and crashing.closed
        assert mon.samplers == ["counter"]
        stored = store.query("deepedge_device_cpu_seconds_total")
        assert [s.value for s in stored] == [1, 2, 3, 4, 5]
        assert len(store.query("deepedge_monitor_cpu_seconds_total")) == 5
    latest = {s.metric: s for s in mon.latest()}
    assert latest["deepedge_device_cpu_seconds_total"].value == 5
    assert latest["deepedge_monitor_samplers"].value == 1
    overhead = mon.overhead()
    assert math.isfinite(overhead) and overhead >= 0


def test_monitor_thread_ticks_and_stale_series_leave_latest():
    good = _Counter()
    with Monitor([good], interval_s=0.02) as mon:
        deadline = time.monotonic() + 30
        while good.calls < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert good.calls >= 5
    calls = good.calls
    time.sleep(0.05)
    assert good.calls == calls  # stopped
    mon.stop()  # idempotent
    overhead = mon.overhead()
    assert math.isfinite(overhead) and 0 < overhead < 1
    time.sleep(0.05)
    assert mon.overhead() == overhead  # frozen at stop: reports read it later

    mon = Monitor([], interval_s=1.0)
    mon._remember([Sample.of("deepedge_process_cpu_seconds_total", 1.0, 10.0, pid="7")], 10.0)
    mon.tick(now=20.0)
    assert "deepedge_process_cpu_seconds_total" not in {s.metric for s in mon.latest()}


def test_build_samplers_records_unavailable_constructors(caplog):
    def no_board() -> _Counter:
        raise SamplerUnavailable("not a Jetson")

    samplers, off = build_samplers({"ok": _Counter, "jetson": no_board})
    assert [s.name for s in samplers] == ["counter"]
    assert off == {"jetson": "not a Jetson"}
    with caplog.at_level(logging.WARNING, logger="deepedge.monitor"):
        mon = Monitor(samplers, unavailable=off)
    assert mon.unavailable == off
    assert any("not a Jetson" in r.getMessage() for r in caplog.records)
