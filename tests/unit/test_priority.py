"""Training processes yield the CPU: every thread, including those started later."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# The script reads its threads' class, then leaves the idle class before it prints and
# exits: in the idle class a process gets next to no CPU while the host is busy, and its
# exit alone outlasted the timeout on a loaded machine.
SCRIPT = """
import contextlib, os, threading, time
from deepedge.train.priority import yield_cpu_to_lc_apps
gate = threading.Event()
before = threading.Thread(target=gate.wait)
before.start()
mode = yield_cpu_to_lc_apps()
after = threading.Thread(target=gate.wait)
after.start()
tids = [threading.get_native_id(), before.native_id, after.native_id]
policies = [os.sched_getscheduler(t) for t in tids]
nices = [os.getpriority(os.PRIO_PROCESS, t) for t in tids]
for t in tids:
    with contextlib.suppress(OSError):
        os.sched_setscheduler(t, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, t, 0)
print(mode.split(":")[0].replace(" ", "_"), *policies)
print(*nices)
gate.set()
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="needs Linux scheduling classes")
def test_every_thread_runs_in_the_idle_class():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    mode, policies = out[0], [int(p) for p in out[1:4]]
    if mode == "SCHED_IDLE":
        assert policies == [os.SCHED_IDLE] * 3
    else:  # a kernel that refuses SCHED_IDLE: nice 19 for every thread instead
        assert mode == "nice_19" and [int(n) for n in out[4:7]] == [19] * 3
