"""The fallback's self-pacing: a worker's CPU use is stretched to its device's share."""

from __future__ import annotations

import time
from types import SimpleNamespace

from deepedge.train import ddp
from deepedge.train.ddp import CpuPacer


def _burn(cpu_s: float) -> None:
    start = time.process_time()
    while time.process_time() - start < cpu_s:
        pass


def test_pacer_stretches_cpu_work_to_the_share():
    pacer = CpuPacer(0.25)
    t0 = time.monotonic()
    _burn(0.05)
    pacer()
    # 0.05 s of CPU at a quarter of a core must take at least 0.2 s of wall time
    assert time.monotonic() - t0 >= 0.19


def test_pacer_does_not_sleep_for_idle_time(monkeypatch):
    pacer = CpuPacer(0.5)
    time.sleep(0.1)  # waiting (e.g. for an all-reduce) uses no CPU: nothing is owed
    # what it asks to sleep, not how long the call took: a loaded host can stall any call
    asked: list[float] = []
    fake = SimpleNamespace(
        process_time=time.process_time, monotonic=time.monotonic, sleep=asked.append
    )
    monkeypatch.setattr(ddp, "time", fake)  # ddp's clock only: other threads keep sleeping
    pacer()
    assert asked == []
