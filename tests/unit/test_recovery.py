"""The coordinator's failure bookkeeping: where to go on, and who is lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from deepedge.train import recovery
from deepedge.train.recovery import Liveness, resume_point


def test_the_run_goes_on_from_the_most_completed_steps() -> None:
    # "a" and "c" finished step 7's all-reduce: its gradient is complete, "b" takes theirs
    assert resume_point({"a": 7, "b": 6, "c": 7}) == (7, "a")
    assert resume_point({"b": 3, "a": 3}) == (3, "a")  # ties: the first by name
    with pytest.raises(ValueError):
        resume_point({})


def test_a_stopped_worker_is_lost_sooner_than_a_silent_running_one(monkeypatch) -> None:
    monkeypatch.setattr(recovery, "STOPPED_S", 0.2)
    monkeypatch.setattr(recovery, "SILENT_S", 60.0)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = Liveness()
        live.start(["stopped", "quiet"])
        pids = {"stopped": sleeper.pid, "quiet": None}
        assert live.lost(pids) == {}
        sleeper.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while "stopped" not in (lost := live.lost(pids)):
            assert time.monotonic() < deadline, lost
            time.sleep(0.05)
        assert "stopped" in lost["stopped"] and "quiet" not in lost
        live.heard("stopped")  # a heartbeat resets the silence
        assert "stopped" not in live.lost(pids)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_long_silence_is_lost_even_while_running(monkeypatch) -> None:
    monkeypatch.setattr(recovery, "STOPPED_S", 0.0)
    monkeypatch.setattr(recovery, "SILENT_S", 0.0)
    live = Liveness()
    live.start(["a"])
    assert "hung" in live.lost({"a": None})["a"]


def test_the_coordinators_own_stall_is_not_the_workers_silence(monkeypatch) -> None:
    monkeypatch.setattr(recovery, "STOPPED_S", 0.0)
    monkeypatch.setattr(recovery, "SILENT_S", 0.5)
    live = Liveness()
    live.start(["a"])
    time.sleep(0.6)
    live.excuse(0.6)  # it was us, busy in a callback, not them
    assert live.lost({"a": None}) == {}


def test_a_silence_every_worker_shares_takes_three_times_as_long(monkeypatch) -> None:
    monkeypatch.setattr(recovery, "STOPPED_S", 0.0)
    monkeypatch.setattr(recovery, "SILENT_S", 0.2)
    live = Liveness()
    live.start(["a", "b"])
    time.sleep(0.3)
    assert live.lost({"a": None, "b": None}) == {}  # both at once: the host, most likely
    live.heard("b")
    assert set(live.lost({"a": None, "b": None})) == {"a"}  # one alone: that worker
    time.sleep(0.7)
    assert set(live.lost({"a": None, "b": None})) == {"a", "b"}  # over 0.6 s of it: lost
