"""The fallback's self-pacing: a worker's CPU use is stretched to its device's share."""

from __future__ import annotations

import time

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


def test_pacer_does_not_sleep_for_idle_time():
    pacer = CpuPacer(0.5)
    time.sleep(0.1)  # waiting (e.g. for an all-reduce) uses no CPU: nothing is owed
    t0 = time.monotonic()
    pacer()
    assert time.monotonic() - t0 < 0.05
