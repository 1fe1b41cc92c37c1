"""The profile knowledge base: round trips, staleness, schema checks and reset."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from deepedge.errors import KnowledgeBaseError
from deepedge.knowledge import SCHEMA_VERSION, SoftwareVersions
from deepedge.profile.kb import KnowledgeBase, ProfileKey
from tests.conftest import assert_one_line, file_snapshot

SW = SoftwareVersions(torch="2.12.0", deepedge="0.1.0", python="3.11.7")
SW_NEW_TORCH = SoftwareVersions(torch="2.13.0", deepedge="0.1.0", python="3.11.7")
HW_NANO = {"cpu_cores": 2.0, "memory_mb": 4096, "gpu": None}
SIG = "0123456789abcdef"
LOAD = [["cnn_inference", 20.0]]


def key(
    kind: str = "jetson-nano", sig: str = SIG, hw: dict[str, object] | None = None
) -> ProfileKey:
    return ProfileKey.build(kind, hw if hw is not None else HW_NANO, sig, LOAD)


@pytest.fixture
def kb(tmp_path: Path) -> KnowledgeBase:
    with KnowledgeBase(tmp_path / "kb.sqlite") as store:
        yield store


def test_key_is_canonical() -> None:
    a = ProfileKey.build("k", {"b": 1, "a": 2.0}, SIG, [["cnn_inference", 20.0]])
    b = ProfileKey.build("k", {"a": 2.0, "b": 1}, SIG, (("cnn_inference", 20.0),))
    assert a == b
    assert a.hardware == '{"a":2.0,"b":1}'
    assert a.load == '[["cnn_inference",20.0]]'


def test_current_software_versions() -> None:
    import platform

    import deepedge

    sw = SoftwareVersions.current()
    assert sw.deepedge == deepedge.__version__
    assert sw.python == platform.python_version()
    assert sw.torch.startswith("2.")
    assert SoftwareVersions.from_json(sw.as_json()) == sw


def test_profile_round_trip_sorted_and_repeats_kept(kb: KnowledgeBase) -> None:
    pid = kb.open_profile(key(), device_name="nano-1", software=SW)
    kb.add_point(pid, 32, [0.30, 0.31], 900.0, cost_s=2.0)
    kb.add_point(pid, 8, [0.10, 0.11, 0.12], 400.5, cost_s=1.5)
    kb.add_point(pid, 32, [0.29], None, cost_s=0.5)
    kb.add_point(pid, 16, [0.2], 600.0)

    prof = kb.profile_for(key(), SW)
    assert prof is not None and prof.id == pid
    assert prof.key == key()
    assert prof.software == SW
    assert prof.stale_reason is None and prof.partial_reason is None
    assert prof.device_name == "nano-1"
    assert prof.cost_s == pytest.approx(4.0)
    assert [p.batch for p in prof.points] == [8, 16, 32, 32]
    assert prof.points[0].step_times_s == (0.10, 0.11, 0.12)
    assert prof.points[0].peak_memory_mb == 400.5
    # both measurements of batch 32 are kept, the latest last
    assert prof.points[2].step_times_s == (0.30, 0.31)
    assert prof.points[3].step_times_s == (0.29,)
    assert prof.points[3].peak_memory_mb is None
    assert prof.points[2].measured_at <= prof.points[3].measured_at
    assert prof.created_at <= prof.updated_at
    assert kb.get(pid) == prof
    # re-opening the same key returns the same profile and adds to it
    assert kb.open_profile(key(), device_name="nano-2", software=SW) == pid
    assert kb.get(pid).device_name == "nano-2"


def test_empty_profile_is_returned(kb: KnowledgeBase) -> None:
    pid = kb.open_profile(key(), software=SW)
    prof = kb.profile_for(key(), SW)
    assert prof is not None and prof.id == pid and prof.points == ()


def test_unknown_key_and_id(kb: KnowledgeBase) -> None:
    assert kb.profile_for(key(), SW) is None
    with pytest.raises(KnowledgeBaseError, match="no profile 42"):
        kb.get(42)
    with pytest.raises(KnowledgeBaseError):
        kb.add_point(42, 8, [0.1], None)


def test_bad_point_values_rejected(kb: KnowledgeBase) -> None:
    pid = kb.open_profile(key(), software=SW)
    with pytest.raises(ValueError):
        kb.add_point(pid, 0, [0.1], None)
    with pytest.raises(ValueError):
        kb.add_point(pid, 8, [float("nan")], None)
    assert kb.get(pid).points == ()


def test_software_change_marks_old_profile_stale(kb: KnowledgeBase) -> None:
    old = kb.open_profile(key(), software=SW)
    kb.add_point(old, 8, [0.1], None)
    # looking up under the new torch marks the old one stale and finds nothing fresh
    assert kb.profile_for(key(), SW_NEW_TORCH) is None
    stale = kb.get(old)
    assert stale.stale_reason is not None
    assert "torch 2.12.0 → 2.13.0" in stale.stale_reason
    assert "deepedge" not in stale.stale_reason
    assert stale.points  # data kept

    new = kb.open_profile(key(), software=SW_NEW_TORCH)
    assert new != old
    fresh = kb.profile_for(key(), SW_NEW_TORCH)
    assert fresh is not None and fresh.id == new and fresh.stale_reason is None
    assert [p.id for p in kb.profiles()] == [new]
    assert [p.id for p in kb.profiles(include_stale=True)] == [old, new]


def test_open_profile_under_new_software_stales_old(kb: KnowledgeBase) -> None:
    old = kb.open_profile(key(), software=SW)
    py = SoftwareVersions(torch="2.12.0", deepedge="0.2.0", python="3.12.1")
    new = kb.open_profile(key(), software=py)
    assert new != old
    reason = kb.get(old).stale_reason
    assert reason is not None
    assert "deepedge 0.1.0 → 0.2.0" in reason and "python 3.11.7 → 3.12.1" in reason
    assert "torch" not in reason


def test_invalidate_by_kind_model_id_and_all(kb: KnowledgeBase) -> None:
    a = kb.open_profile(key("jetson-nano", "a" * 16), software=SW)
    b = kb.open_profile(key("jetson-nano", "b" * 16), software=SW)
    c = kb.open_profile(key("orin-nano", "a" * 16), software=SW)
    d = kb.open_profile(key("orin-nano", "b" * 16), software=SW)

    assert kb.invalidate(profile_id=a, reason="bad run") == 1
    assert kb.get(a).stale_reason == "bad run"
    assert kb.invalidate(profile_id=a) == 0  # already stale
    assert kb.invalidate(device_kind="orin-nano", model_signature="b" * 16) == 1
    assert kb.get(d).stale_reason == "invalidated by user"
    assert kb.invalidate(model_signature="a" * 16) == 1  # only c is still fresh with sig a
    assert kb.get(c).stale_reason is not None
    assert [p.id for p in kb.profiles()] == [b]
    assert kb.invalidate() == 1
    assert kb.profiles() == []
    assert len(kb.profiles(include_stale=True)) == 4
    assert kb.invalidate() == 0


def test_profiles_filters(kb: KnowledgeBase) -> None:
    a = kb.open_profile(key("jetson-nano", "a" * 16), software=SW)
    b = kb.open_profile(key("orin-nano", "a" * 16), software=SW)
    c = kb.open_profile(key("orin-nano", "b" * 16), software=SW)
    assert [p.id for p in kb.profiles(device_kind="orin-nano")] == [b, c]
    assert [p.id for p in kb.profiles(model_signature="a" * 16)] == [a, b]
    assert [p.id for p in kb.profiles(device_kind="orin-nano", model_signature="b" * 16)] == [c]


def test_mark_stale_hardware(kb: KnowledgeBase) -> None:
    old_hw = key(hw={"cpu_cores": 2.0, "memory_mb": 4096})
    new_hw = key(hw={"cpu_cores": 1.0, "memory_mb": 4096})
    other_kind = key("orin-nano", hw={"cpu_cores": 2.0, "memory_mb": 4096})
    a = kb.open_profile(old_hw, software=SW)
    b = kb.open_profile(new_hw, software=SW)
    c = kb.open_profile(other_kind, software=SW)

    assert kb.mark_stale_hardware("jetson-nano", new_hw.hardware) == 1
    reason = kb.get(a).stale_reason
    assert reason is not None and "hardware" in reason and "cpu_cores 2.0 → 1.0" in reason
    assert "memory_mb" not in reason
    assert kb.get(b).stale_reason is None
    assert kb.get(c).stale_reason is None
    assert kb.mark_stale_hardware("jetson-nano", new_hw.hardware) == 0


def test_partial_marking(kb: KnowledgeBase) -> None:
    pid = kb.open_profile(key(), software=SW)
    kb.add_point(pid, 8, [0.1], None)
    kb.mark_partial(pid, "device 'nano-1' died after 1 of 4 batch sizes")
    prof = kb.profile_for(key(), SW)
    assert prof is not None
    assert prof.partial_reason == "device 'nano-1' died after 1 of 4 batch sizes"
    assert prof.stale_reason is None  # partial is not stale: it is still returned
    kb.mark_partial(pid, None)
    assert kb.get(pid).partial_reason is None


def test_comm_points_round_trip_and_invalidation(kb: KnowledgeBase) -> None:
    f1, f2 = '{"net":"loopback","n":2}', '{"net":"netns","n":3}'
    kb.add_comm_point(f1, 2, 1 << 20, [0.01, 0.011], software=SW)
    kb.add_comm_point(f1, 2, 1 << 10, [0.001], software=SW)
    kb.add_comm_point(f1, 4, 1 << 10, [0.002], software=SW)
    kb.add_comm_point(f2, 3, 1 << 10, [0.005], software=SW)

    points = kb.comm_points(f1, SW)
    assert [(p.workers, p.nbytes) for p in points] == [(2, 1 << 10), (2, 1 << 20), (4, 1 << 10)]
    assert points[1].times_s == (0.01, 0.011)
    assert all(p.fabric == f1 for p in points)

    assert kb.invalidate_comm(f1) == 3
    assert kb.comm_points(f1, SW) == []
    assert len(kb.comm_points(f2, SW)) == 1
    kb.add_comm_point(f1, 2, 1 << 10, [0.003], software=SW)
    assert kb.invalidate_comm() == 2
    assert kb.comm_points(f2, SW) == []


def test_comm_points_other_software_not_returned(kb: KnowledgeBase) -> None:
    fabric = '{"net":"loopback","n":2}'
    kb.add_comm_point(fabric, 2, 1024, [0.001], software=SW)
    assert kb.comm_points(fabric, SW_NEW_TORCH) == []
    assert kb.comm_points(fabric, SW) == []  # marked stale by the look-up above
    kb.add_comm_point(fabric, 2, 1024, [0.002], software=SW_NEW_TORCH)
    assert [p.times_s for p in kb.comm_points(fabric, SW_NEW_TORCH)] == [(0.002,)]


def test_file_settings(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "kb.sqlite"  # parent directories are created
    KnowledgeBase(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        meta = dict(conn.execute("SELECT key, value FROM kb_meta"))
        assert meta["created_by"].startswith("deepedge ")
    finally:
        conn.close()
    with KnowledgeBase(path) as kb:
        busy = kb._conn.execute("PRAGMA busy_timeout").fetchone()[0]
        assert busy >= 10_000
        assert kb._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_data_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "kb.sqlite"
    with KnowledgeBase(path) as kb:
        pid = kb.open_profile(key(), software=SW)
        kb.add_point(pid, 8, [0.1], 100.0, cost_s=3.0)
    with KnowledgeBase(path, create=False) as kb:
        prof = kb.profile_for(key(), SW)
        assert prof is not None and prof.cost_s == 3.0 and len(prof.points) == 1


def test_garbage_file_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "kb.sqlite"
    garbage = b"this is not a database\x00\x01\x02" * 100
    path.write_bytes(garbage)
    with pytest.raises(KnowledgeBaseError) as info:
        KnowledgeBase(path)
    assert "not a SQLite database" in str(info.value)
    assert "profile reset" in info.value.one_line()
    assert str(path) in info.value.one_line()
    assert path.read_bytes() == garbage


def test_directory_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeBaseError, match="is a directory"):
        KnowledgeBase(tmp_path)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kb.sqlite"
    KnowledgeBase(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(KnowledgeBaseError, match="newer deepedge") as info:
        KnowledgeBase(path)
    assert "upgrade deepedge" in info.value.one_line()
    assert "profile reset" in info.value.one_line()


def test_older_schema_without_migration_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deepedge.knowledge as kbmod

    path = tmp_path / "kb.sqlite"
    KnowledgeBase(path).close()
    monkeypatch.setattr(kbmod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(KnowledgeBaseError, match="old schema") as info:
        KnowledgeBase(path)
    assert "profile reset" in info.value.one_line()

    # with a migration registered, the file is upgraded in place
    calls: list[int] = []
    monkeypatch.setitem(kbmod._MIGRATIONS, SCHEMA_VERSION, lambda conn: calls.append(1))
    KnowledgeBase(path).close()
    assert calls == [1]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


def test_other_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE TABLE ts_samples (ts REAL)")
    conn.close()
    with pytest.raises(KnowledgeBaseError, match="not a deepedge knowledge base") as info:
        KnowledgeBase(path)
    assert "customers" in str(info.value)
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert not any(t.startswith("kb_") for t in tables)


def test_monitor_only_database_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "kb.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE ts_samples (id INTEGER PRIMARY KEY AUTOINCREMENT, v REAL)")
        conn.execute("INSERT INTO ts_samples (v) VALUES (1.5)")
    conn.close()
    with KnowledgeBase(path) as kb:
        pid = kb.open_profile(key(), software=SW)
        kb.add_point(pid, 4, [0.05], None)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT v FROM ts_samples").fetchall() == [(1.5,)]
    assert conn.execute("SELECT COUNT(*) FROM kb_points").fetchone()[0] == 1
    conn.close()


def test_empty_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "kb.sqlite"
    path.touch()
    with KnowledgeBase(path) as kb:
        assert kb.profiles() == []


def test_reset_moves_file_aside(tmp_path: Path) -> None:
    path = tmp_path / "kb.sqlite"
    with KnowledgeBase(path) as kb:
        pid = kb.open_profile(key(), software=SW)
        kb.add_point(pid, 8, [0.1], None)

    backup = KnowledgeBase.reset(path)
    assert backup is not None and backup.exists() and not path.exists()
    assert backup.parent == path.parent
    assert backup.name.startswith("kb.sqlite.bak-")

    with KnowledgeBase(path) as kb:
        assert kb.profiles(include_stale=True) == []
    with KnowledgeBase(backup, create=False) as old:
        prof = old.profile_for(key(), SW)
        assert prof is not None and len(prof.points) == 1

    second = KnowledgeBase.reset(path)  # same second: a distinct name, nothing overwritten
    assert second is not None and second != backup and backup.exists()


def test_reset_moves_wal_files_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "kb.sqlite"
    path.write_bytes(b"garbage")
    Path(f"{path}-wal").write_bytes(b"wal")
    Path(f"{path}-shm").write_bytes(b"shm")
    backup = KnowledgeBase.reset(path)
    assert backup is not None
    assert backup.read_bytes() == b"garbage"
    assert Path(f"{backup}-wal").read_bytes() == b"wal"
    assert Path(f"{backup}-shm").read_bytes() == b"shm"
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    with KnowledgeBase(path) as kb:
        assert kb.profiles() == []


def test_reset_missing_file(tmp_path: Path) -> None:
    assert KnowledgeBase.reset(tmp_path / "none.sqlite") is None


def test_create_false_on_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "kb.sqlite"
    with pytest.raises(KnowledgeBaseError, match="does not exist") as info:
        KnowledgeBase(path, create=False)
    assert "deepedge profile run" in info.value.one_line()
    assert not path.exists() and not path.parent.exists()


def test_default_path_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from deepedge.knowledge import default_kb_path

    monkeypatch.setenv("DEEPEDGE_KB", str(tmp_path / "x.sqlite"))
    assert default_kb_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("DEEPEDGE_KB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_kb_path() == tmp_path / "data" / "deepedge" / "kb.sqlite"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_kb_path() == tmp_path / "home" / ".local" / "share" / "deepedge" / "kb.sqlite"


def test_default_path_follows_the_environment_set_after_import(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """deepedge.profile was imported long before this test set $DEEPEDGE_KB (conftest's
    autouse fixture sets it per test), yet in-process callers use the new value."""
    import deepedge.profile
    from deepedge.profile import default_kb_path

    assert not hasattr(deepedge.profile, "DEFAULT_KB_PATH")  # no value frozen at import
    first = tmp_path / "first" / "kb.sqlite"
    monkeypatch.setenv("DEEPEDGE_KB", str(first))
    assert default_kb_path() == first
    with KnowledgeBase() as kb:
        assert kb.path == first
    assert first.is_file()

    second = tmp_path / "second.sqlite"
    monkeypatch.setenv("DEEPEDGE_KB", str(second))
    with KnowledgeBase() as kb:
        assert kb.path == second
    assert second.is_file()


def test_the_autouse_fixture_keeps_in_process_tests_off_the_users_file(tmp_path: Path) -> None:
    from deepedge.profile import default_kb_path

    assert default_kb_path() == tmp_path / "kb.sqlite"


def test_a_schema_1_file_is_upgraded_keeping_its_profiles(tmp_path: Path) -> None:
    """Files written before interference profiling (schema 1) gain its tables in place."""
    path = tmp_path / "kb.sqlite"
    with KnowledgeBase(path) as kb:
        key = ProfileKey.build("rpi4", {"cpu_cores": 0.11}, "sig/sgd", [])
        pid = kb.open_profile(key, device_name="rpi-1")
        kb.add_point(pid, 8, [0.1, 0.11], 300.0, cost_s=1.0)
    conn = sqlite3.connect(path)
    for table in ("kb_usage", "kb_interference", "kb_models"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with KnowledgeBase(path) as kb:
        assert [p.batch for p in kb.get(pid).points] == [8]
        kb.add_usage("dev", "stressor:cpu", {"intensity": 0.5}, {"cpu_cores": 0.2})
        assert kb.usages("dev")[0].usage == {"cpu_cores": 0.2}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()


def test_interference_runs_filter_and_invalidate(tmp_path: Path) -> None:
    with KnowledgeBase(tmp_path / "kb.sqlite") as kb:
        kb.add_interference("a", "train", {"app": "x"}, {"p95_ms": 5.0})
        kb.add_interference("b", "test", {"app": "y"}, {"p95_ms": 7.0})
        kb.add_usage("a", "app:x", {"rate_rps": 10.0}, {"cpu_cores": 0.1})
        assert [r.result["p95_ms"] for r in kb.interference_runs(campaign="train")] == [5.0]
        assert [r.device for r in kb.interference_runs(device="b")] == ["b"]
        kb.add_interference("b", "slice-test", {"app": "y"}, {"p95_ms": 8.0})
        kb.add_interference("b", "slicex", {"app": "y"}, {"p95_ms": 9.0})
        # a prefix is literal: "_" and "%" match only themselves
        assert kb.invalidate_interference(campaign_prefix="slice_") == 0
        assert kb.invalidate_interference(campaign_prefix="slice-") == 1
        assert [r.campaign for r in kb.interference_runs(device="b")] == ["test", "slicex"]
        assert kb.usages("a")  # usage rows are no campaign's: untouched
        assert kb.invalidate_interference("a") == 2  # its run and its usage row
        assert {r.device for r in kb.interference_runs()} == {"b"} and kb.usages() == []
        assert kb.load_model("none") is None
        kb.save_model("m", b"blob", {"k": 1})
        kb.save_model("m", b"blob2", {"k": 2})  # replaced, not added
        assert kb.load_model("m") == (b"blob2", {"k": 2})


# ---------------------------------------------------------------------------------------
# files given by --kb that are not (or no longer) knowledge bases


def _foreign(path: Path, *, user_version: int = 0) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.close()


def _full_kb(path: Path) -> None:
    with KnowledgeBase(path) as kb:
        pid = kb.open_profile(key(), software=SW)
        for batch in range(1, 120):
            kb.add_point(pid, batch, [0.1] * 40, None)


@pytest.mark.parametrize("create", [True, False])
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"\x00garbage\xff" * 300), "not a SQLite database"),
        (lambda p: p.write_bytes(b"name: my-cluster\ndevices: []\n"), "not a SQLite database"),
        (_foreign, "not a deepedge knowledge base"),
        (lambda p: _foreign(p, user_version=1), "not a deepedge knowledge base"),
        (lambda p: _foreign(p, user_version=99), "not a deepedge knowledge base"),
    ],
    ids=["garbage", "yaml", "foreign-sqlite", "foreign-sqlite-v1", "foreign-sqlite-v99"],
)
def test_a_file_that_is_not_ours_is_refused_and_not_written(
    tmp_path: Path, make, message: str, create: bool
) -> None:
    path = tmp_path / "kb.sqlite"
    make(path)
    before = file_snapshot(path)
    with pytest.raises(KnowledgeBaseError, match=message) as info:
        KnowledgeBase(path, create=create)
    assert_one_line(info.value, path)
    assert file_snapshot(path) == before  # no WAL switch, no tables, no side files


def test_a_foreign_database_keeps_its_journal_mode(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite"
    _foreign(path)
    with pytest.raises(KnowledgeBaseError):
        KnowledgeBase(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert conn.execute("SELECT name FROM customers").fetchall() == [("ada",)]
    conn.close()


@pytest.mark.parametrize("create", [True, False])
def test_a_directory_is_refused(tmp_path: Path, create: bool) -> None:
    with pytest.raises(KnowledgeBaseError, match="is a directory") as info:
        KnowledgeBase(tmp_path, create=create)
    assert_one_line(info.value, tmp_path)


@pytest.mark.parametrize("kind", ["empty", "monitor-only"])
def test_read_only_open_never_creates_a_knowledge_base(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "kb.sqlite"
    if kind == "empty":
        path.touch()
    else:
        conn = sqlite3.connect(path)
        with conn:
            conn.execute("CREATE TABLE ts_samples (series_id INTEGER, ts REAL, value REAL)")
        conn.close()
    before = file_snapshot(path)
    with pytest.raises(KnowledgeBaseError, match="holds no profiles yet") as info:
        KnowledgeBase(path, create=False)
    assert_one_line(info.value, path)
    assert "deepedge profile run" in info.value.one_line()
    assert file_snapshot(path) == before


@pytest.mark.parametrize("create", [True, False])
@pytest.mark.parametrize("cut", [0.0, 0.002, 0.01, 0.5, 0.9, 0.99])
def test_a_truncated_file_is_one_line(tmp_path: Path, cut: float, create: bool) -> None:
    """Wherever the file was cut, opening it and reading it is a KnowledgeBaseError."""
    path = tmp_path / "kb.sqlite"
    _full_kb(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    try:
        with KnowledgeBase(path, create=create) as kb:
            kb.profiles(include_stale=True)
            kb.open_profile(key("other"), software=SW)
    except KnowledgeBaseError as err:
        assert_one_line(err, path)
    else:  # only a cut to 0 bytes leaves a usable (empty) file, and only to create
        assert cut == 0.0 and create


@pytest.mark.parametrize("where", [4096, 3 * 4096, -4096, -2 * 4096, 200, 1000])
def test_a_damaged_page_is_one_line_whichever_call_meets_it(tmp_path: Path, where: int) -> None:
    path = tmp_path / "kb.sqlite"
    _full_kb(path)
    data = bytearray(path.read_bytes())
    start = where if where >= 0 else len(data) + where
    data[start : start + 4096] = b"\xa5" * 4096
    path.write_bytes(bytes(data))

    calls = [  # each on its own, so a failing read does not hide a failing write
        lambda kb: kb.profiles(include_stale=True),
        lambda kb: kb.open_profile(key(), software=SW),
        lambda kb: kb.add_point(1, 300, [0.1], None),
        lambda kb: kb.add_comm_point("f", 2, 10, [0.1]),
        lambda kb: kb.comm_points("f"),
    ]
    for call in calls:
        try:
            with KnowledgeBase(path) as kb:
                call(kb)
        except KnowledgeBaseError as err:  # never a bare sqlite3.DatabaseError
            assert_one_line(err, path)


def test_sqlite_errors_inside_a_write_are_knowledge_base_errors(kb: KnowledgeBase) -> None:
    with pytest.raises(KnowledgeBaseError) as info, kb._write() as conn:
        conn.execute("INSERT INTO no_such_table VALUES (1)")
    assert_one_line(info.value, kb.path)
    with kb._write() as conn:  # the failed transaction was rolled back
        conn.execute("SELECT 1")
