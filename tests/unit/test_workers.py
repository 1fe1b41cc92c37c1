"""Worker start-up (deepedge.cluster.workers) with real, tiny worker processes.

A fake device runs a short python snippet in place of the command it is given, passing
on ``--address`` and the key the way a real worker gets them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepedge.cluster.workers import Worker, WorkerListener, log_tail, stop_workers
from deepedge.errors import ClusterError, TrainingError

KEY_ENV = "DEEPEDGE_TEST_KEY"

CONNECT = """
import os, sys, time
from multiprocessing.connection import Client
args = sys.argv[1:]
host, port = args[args.index("--address") + 1].rsplit(":", 1)
conn = Client((host, int(port)), authkey=bytes.fromhex(os.environ["KEY_ENV"]))
"""

SAYS_HELLO = (
    CONNECT.replace("KEY_ENV", KEY_ENV)
    + """
name = args[args.index("--name") + 1]
conn.send({"event": "hello", "name": name, "pid": os.getpid()})
try:
    while conn.recv().get("op") != "stop":
        pass
except EOFError:
    pass
print("stopped", flush=True)
"""
)

DIES_BEFORE_HELLO = """
import sys
print("loading the model", flush=True)
print("RuntimeError: no GPU on this board", flush=True)
sys.exit(3)
"""

NEVER_CONNECTS = """
import time
print("importing torch, slowly", flush=True)
time.sleep(60)
"""

WRONG_KEY = """
import os, sys, time
from multiprocessing.connection import Client
args = sys.argv[1:]
host, port = args[args.index("--address") + 1].rsplit(":", 1)
try:
    Client((host, int(port)), authkey=b"not the key")
except Exception as err:
    print(repr(err), flush=True)
time.sleep(60)  # alive: the handshake is what failed
"""

IGNORES_STOP = (
    CONNECT.replace("KEY_ENV", KEY_ENV)
    + """
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
conn.send({"event": "hello", "name": "stubborn", "pid": os.getpid()})
time.sleep(60)
"""
)


class FakeDevice:
    """Runs ``snippet`` with ``python -c``, the given argv's options after it."""

    def __init__(self, snippet: str) -> None:
        self.snippet = snippet
        self.argv: list[str] = []

    def spawn(self, argv, *, env=None, log_path=None, self_paced=False):
        self.argv = list(argv)
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            return subprocess.Popen(
                [sys.executable, "-c", self.snippet, *self.argv[1:]],
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if log_path:
                out.close()


def _died(worker: Worker, code: int | None, when: str) -> ClusterError:
    return ClusterError(f"{worker.name} died ({code}) {when}: {worker.tail(2)}")


def _timed_out(waiting: list[Worker]) -> ClusterError:
    return ClusterError(f"{sorted(w.name for w in waiting)} did not start")


def _start(tmp_path: Path, snippets: dict[str, str], timeout_s: float = 10.0) -> list[Worker]:
    workers: list[Worker] = []
    with WorkerListener("127.0.0.1", len(snippets), key_env=KEY_ENV, what="test") as listener:
        try:
            for name, snippet in snippets.items():
                workers.append(
                    listener.spawn(
                        name,
                        FakeDevice(snippet),
                        ["worker", "--name", name],
                        log_path=tmp_path / f"{name}.log",
                    )
                )
            listener.await_hellos(
                workers,
                deadline=time.monotonic() + timeout_s,
                died=_died,
                timed_out=_timed_out,
                identify=lambda hello: hello["name"],
            )
        except BaseException:
            stop_workers(workers, grace_s=0.0)
            raise
    return workers


def test_workers_say_hello_and_stop_when_asked(tmp_path):
    workers = _start(tmp_path, {"a": SAYS_HELLO, "b": SAYS_HELLO})
    assert {w.name: w.hello["name"] for w in workers} == {"a": "a", "b": "b"}
    assert all(w.hello["pid"] == w.pid and w.conn is not None for w in workers)
    stop_workers(workers, {"op": "stop"}, grace_s=5.0)
    assert [w.exit_code() for w in workers] == [0, 0]  # they left on their own
    assert all(w.conn is None for w in workers)
    assert log_tail(tmp_path / "a.log") == "stopped"


def test_a_worker_that_dies_before_its_hello_names_its_log(tmp_path):
    started = time.monotonic()
    # "before saying hello" while the good worker's connection is not yet known as its own
    with pytest.raises(
        ClusterError, match=r"^bad died \(3\) before (connecting|saying hello)"
    ) as e:
        _start(tmp_path, {"good": SAYS_HELLO, "bad": DIES_BEFORE_HELLO})
    assert str(e.value).endswith(": loading the model | RuntimeError: no GPU on this board")
    assert time.monotonic() - started < 5  # not the deadline


def test_a_worker_that_never_connects_misses_the_deadline(tmp_path):
    started = time.monotonic()
    with pytest.raises(ClusterError, match=r"\['slow'\] did not start"):
        _start(tmp_path, {"slow": NEVER_CONNECTS}, timeout_s=0.8)
    assert 0.8 <= time.monotonic() - started < 3  # and it was killed, not waited for


def test_a_worker_that_ignores_its_stop_is_killed_after_the_grace(tmp_path):
    (worker,) = _start(tmp_path, {"stubborn": IGNORES_STOP})
    started = time.monotonic()
    stop_workers([worker], {"op": "stop"}, grace_s=0.3)
    assert worker.exit_code() == -9
    assert time.monotonic() - started < 3


def test_one_worker_needs_no_identify_and_a_wrong_key_fails_the_handshake(tmp_path):
    with WorkerListener("127.0.0.1", 1, key_env=KEY_ENV, what="lone") as listener:
        worker = listener.spawn(
            "lone", FakeDevice(SAYS_HELLO), ["worker", "--name", "x"], log_path=None
        )
        listener.await_hellos(
            [worker], deadline=time.monotonic() + 10, died=_died, timed_out=_timed_out
        )
        assert worker.hello["name"] == "x"
        stop_workers([worker], {"op": "stop"}, grace_s=5.0)

    with WorkerListener("127.0.0.1", 1, key_env=KEY_ENV, what="keyed") as listener:
        worker = listener.spawn("x", FakeDevice(WRONG_KEY), ["worker"], log_path=None)
        try:
            with pytest.raises(ClusterError, match="keyed handshake failed"):
                listener.await_hellos(
                    [worker], deadline=time.monotonic() + 10, died=_died, timed_out=_timed_out
                )
        finally:
            stop_workers([worker], grace_s=0.0)


# --- the two users keep their words


FAKE_AGENT = (
    CONNECT.replace("KEY_ENV", "DEEPEDGE_AGENT_KEY")
    + """
device = args[args.index("--device") + 1]
conn.send({"event": "hello", "device": device, "pid": os.getpid(), "rss_mb": 12.5})
while conn.recv().get("op") != "shutdown":
    pass
"""
)

FAKE_AGENT_DIES = """
import sys
print("agent: importing torch", flush=True)
print("agent: out of memory", flush=True)
sys.exit(1)
"""


class FakeBoard(FakeDevice):
    spec = type("Spec", (), {"cpu_cores": 0.5})()
    pace_cores = None
    interface = None


def test_agent_pool_starts_and_stops_its_agents(tmp_path):
    from deepedge.train.pool import AgentPool

    pool = AgentPool({"a": FakeBoard(FAKE_AGENT), "b": FakeBoard(FAKE_AGENT)}, tmp_path)
    try:
        pool.start(timeout_s=10)
        assert pool.runtime_mb == {"a": 12.5, "b": 12.5}
        procs = pool.processes
        pool.close(grace_s=5.0)
        assert [p.returncode for p in procs.values()] == [0, 0]  # left when asked
    finally:
        pool.close(grace_s=0.0)


def test_agent_pool_reports_an_agent_that_dies_while_starting(tmp_path):
    from deepedge.train.pool import AgentPool

    pool = AgentPool({"slow": FakeBoard(FAKE_AGENT_DIES)}, tmp_path)
    try:
        with pytest.raises(
            TrainingError,
            match=r"^worker on device 'slow' died \(exit code 1\): "
            r"agent: importing torch \| agent: out of memory$",
        ):
            pool.start(timeout_s=10)
        assert pool.dead_devices() == {"slow": 1}
    finally:
        pool.close(grace_s=0.0)


def test_stressor_reports_a_worker_that_dies_before_connecting(tmp_path):
    from deepedge.interference.stressors import StressorProcess

    device = FakeDevice(DIES_BEFORE_HELLO)
    device.name = "cam"
    s = StressorProcess("cpu", device, host="127.0.0.1", workdir=tmp_path)
    with pytest.raises(
        ClusterError,
        match=r"cpu stressor on device 'cam' exited with code 3 before connecting: "
        r"loading the model \| RuntimeError",
    ):
        s.start(timeout_s=10)
    assert "--address" in device.argv and "--kind" in device.argv
    s.close()
