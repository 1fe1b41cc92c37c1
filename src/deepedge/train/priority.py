"""Training yields the CPU to the LC apps on its device.

A device's LC app and its training worker share one CPU quota. At equal priority the
kernel splits that quota fairly while both want it, so each request that arrives during a
training step waits behind the step's slice. Running the trainer under ``SCHED_IDLE`` (or
nice 19 where that is refused) lets an arriving request preempt it at once; what remains is
the quota the trainer already spent in the current CFS period. Every training process the
LC apps share a device with does this: the agents (profiles, all-reduce timing and
training runs) and the interference lab's training co-runner, so the model is measured the
way training runs.
"""

from __future__ import annotations

import os

__all__ = ["yield_cpu_to_lc_apps"]


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def yield_cpu_to_lc_apps() -> str:
    """Lower every thread of this process (and so the threads it starts later, which
    inherit the policy) to the idle CPU class; returns what it got, for the log.

    Linux applies scheduling policy and niceness per thread, so the threads torch or gloo
    already started are lowered one by one.
    """
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            for tid in _threads():
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:
            pass
    try:
        for tid in _threads():
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        return "nice 19"
    except OSError as err:
        return f"unchanged: {err} (LC apps on this device compete with training at equal priority)"
