"""Several real processes write one knowledge-base file at once: no lock errors, no loss.

Two profilers add points (one key each, plus one key both share) and all-reduce points,
while a stand-in for the monitor appends to a ``ts_samples`` table in the same file with
its own plain sqlite3 connection. All start together on a file that does not exist yet, so
the schema creation races too.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from pathlib import Path

from deepedge.profile.kb import KnowledgeBase, ProfileKey, SoftwareVersions

SW = SoftwareVersions(torch="2.13.0", deepedge="0.1.0", python="3.11.7")
OWN_POINTS = 200
SHARED_POINTS = 50
COMM_POINTS = 40
TS_ROWS = 400
FABRIC = '{"net":"loopback","n":2}'


def _key(kind: str) -> ProfileKey:
    return ProfileKey.build(kind, {"cpu_cores": 1.0}, "0123456789abcdef", [])


def _profiler(path: str, kind: str, start: mp.synchronize.Event, errors: mp.Queue) -> None:
    try:
        start.wait(30)
        with KnowledgeBase(path) as kb:
            own = kb.open_profile(_key(kind), device_name=f"{kind}-1", software=SW)
            shared = kb.open_profile(_key("shared"), software=SW)
            for i in range(OWN_POINTS):
                kb.add_point(own, 1 + i % 8, [0.01 * (i + 1), 0.02], 100.0 + i, cost_s=0.5)
                if i < SHARED_POINTS:
                    kb.add_point(shared, 4, [0.1], None, cost_s=1.0)
                if i < COMM_POINTS:
                    kb.add_comm_point(FABRIC, 2, 1024 * (i + 1), [0.001], software=SW)
            kb.mark_partial(own, f"{kind} done")
    except BaseException as err:  # report to the parent instead of dying silently
        errors.put(f"{kind}: {err!r}")
        raise


def _monitor(path: str, start: mp.synchronize.Event, errors: mp.Queue) -> None:
    try:
        start.wait(30)
        conn = sqlite3.connect(path, timeout=30)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        with conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS ts_samples (metric TEXT, labels TEXT, ts REAL, v REAL)"
            )
        for i in range(TS_ROWS):
            with conn:
                conn.execute(
                    "INSERT INTO ts_samples VALUES (?, ?, ?, ?)",
                    ("deepedge_step_seconds", '{"device":"a"}', time.time(), float(i)),
                )
        conn.close()
    except BaseException as err:
        errors.put(f"monitor: {err!r}")
        raise


def test_concurrent_writers(tmp_path: Path) -> None:
    path = str(tmp_path / "kb.sqlite")
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    errors = ctx.Queue()
    procs = [
        ctx.Process(target=_profiler, args=(path, "nano", start, errors)),
        ctx.Process(target=_profiler, args=(path, "orin", start, errors)),
        ctx.Process(target=_monitor, args=(path, start, errors)),
    ]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let the interpreters come up, then release them together
    start.set()
    for p in procs:
        p.join(60)
    alive = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert not alive, f"writers still running: {alive}"
    assert reported == []
    assert [p.exitcode for p in procs] == [0, 0, 0]

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM ts_samples").fetchone()[0] == TS_ROWS
        values = [r[0] for r in conn.execute("SELECT v FROM ts_samples ORDER BY v")]
        assert values == [float(i) for i in range(TS_ROWS)]
    finally:
        conn.close()

    with KnowledgeBase(path, create=False) as kb:
        fresh = kb.profiles()
        assert sorted(p.key.device_kind for p in fresh) == ["nano", "orin", "shared"]
        assert kb.profiles(include_stale=True) == fresh  # nothing went stale
        for kind in ("nano", "orin"):
            prof = kb.profile_for(_key(kind), SW)
            assert prof is not None
            assert len(prof.points) == OWN_POINTS
            assert prof.cost_s == OWN_POINTS * 0.5
            assert prof.partial_reason == f"{kind} done"
            assert prof.device_name == f"{kind}-1"
            memories = sorted(p.peak_memory_mb for p in prof.points)
            assert memories == [100.0 + i for i in range(OWN_POINTS)]
        shared = kb.profile_for(_key("shared"), SW)
        assert shared is not None
        assert len(shared.points) == 2 * SHARED_POINTS  # both writers added to one profile
        assert shared.cost_s == 2 * SHARED_POINTS * 1.0
        assert len(kb.comm_points(FABRIC, SW)) == 2 * COMM_POINTS
