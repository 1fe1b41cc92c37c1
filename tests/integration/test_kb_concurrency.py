"""Several real processes write one knowledge-base file at once: no lock errors, no loss.

Two profilers add points (one key each, plus one key both share) and all-reduce points,
while the monitor's time-series store appends samples to its own tables in the same
file. All start together on a file that does not exist yet, so the schema creation races
too. Halfway through, each waits for the others again: every writer is then in the middle of
its writes at once, however long a loaded host keeps one of them off the CPU (each takes
only about 0.1 s, so a start barrier alone does not make them overlap).
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

from deepedge.knowledge import SoftwareVersions
from deepedge.monitor import Sample, TimeSeriesStore
from deepedge.profile.kb import KnowledgeBase, ProfileKey

SW = SoftwareVersions(torch="2.13.0", deepedge="0.1.0", python="3.11.7")
OWN_POINTS = 200
SHARED_POINTS = 50
COMM_POINTS = 40
TS_ROWS = 400
FABRIC = '{"net":"loopback","n":2}'


def _key(kind: str) -> ProfileKey:
    return ProfileKey.build(kind, {"cpu_cores": 1.0}, "0123456789abcdef", [])


def _profiler(path: str, kind: str, start: Barrier, out: mp.Queue) -> None:
    try:
        start.wait(60)  # every writer has imported everything: go together
        began = time.time()
        with KnowledgeBase(path) as kb:
            own = kb.open_profile(_key(kind), device_name=f"{kind}-1", software=SW)
            shared = kb.open_profile(_key("shared"), software=SW)
            for i in range(OWN_POINTS):
                if i == OWN_POINTS // 2:
                    start.wait(60)  # halfway: see the module docstring
                kb.add_point(own, 1 + i % 8, [0.01 * (i + 1), 0.02], 100.0 + i, cost_s=0.5)
                if i < SHARED_POINTS:
                    kb.add_point(shared, 4, [0.1], None, cost_s=1.0)
                if i < COMM_POINTS:
                    kb.add_comm_point(FABRIC, 2, 1024 * (i + 1), [0.001], software=SW)
            kb.mark_partial(own, f"{kind} done")
        out.put((kind, began, time.time()))
    except BaseException as err:  # report to the parent instead of dying silently
        out.put((kind, f"{err!r}", None))
        raise


def _monitor(path: str, start: Barrier, out: mp.Queue) -> None:
    try:
        start.wait(60)
        began = time.time()
        with TimeSeriesStore(path) as store:
            for i in range(TS_ROWS):
                if i == TS_ROWS // 2:
                    start.wait(60)  # halfway: see the module docstring
                store.write([Sample.of("deepedge_device_cpu_seconds_total", float(i), 1e9 + i)])
        out.put(("monitor", began, time.time()))
    except BaseException as err:
        out.put(("monitor", f"{err!r}", None))
        raise


def test_concurrent_writers(tmp_path: Path) -> None:
    path = str(tmp_path / "kb.sqlite")
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_profiler, args=(path, "nano", start, out)),
        ctx.Process(target=_profiler, args=(path, "orin", start, out)),
        ctx.Process(target=_monitor, args=(path, start, out)),
    ]
    for p in procs:
        p.start()
    reports = []
    try:
        for _ in procs:
            reports.append(out.get(timeout=90))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    failed = [r for r in reports if r[2] is None]
    assert failed == []
    assert [p.exitcode for p in procs] == [0, 0, 0]
    # the writers really ran at the same time (else this test would prove nothing): the
    # halfway barrier makes sure of it
    assert max(r[1] for r in reports) < min(r[2] for r in reports)

    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    with TimeSeriesStore(path) as store:
        values = [s.value for s in store.query("deepedge_device_cpu_seconds_total")]
        assert values == [float(i) for i in range(TS_ROWS)]

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


ROUNDS = 30


def _opener(folder: str, start: Barrier, out: mp.Queue) -> None:
    """Open ROUNDS new knowledge bases, each at the same moment as the other openers."""
    errors = []
    for r in range(ROUNDS):
        start.wait(60)
        try:
            with KnowledgeBase(Path(folder) / f"kb{r}.sqlite"):
                pass
        except Exception as err:
            errors.append(f"round {r}: {err}")
    out.put(errors)


def test_processes_creating_one_knowledge_base_at_once_all_open_it(tmp_path: Path) -> None:
    # The schema check read the version and the table list in two statements: a process
    # creating the schema between them made its tables look foreign (25 of 150 rounds of
    # four openers failed that way before the fix).
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_opener, args=(str(tmp_path), start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        errors = [e for _ in procs for e in out.get(timeout=120)]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert errors == []
    for r in range(ROUNDS):
        with KnowledgeBase(tmp_path / f"kb{r}.sqlite", create=False) as kb:
            assert kb.profiles() == []
