"""`deepedge profile list|invalidate|reset` and `deepedge monitor --export` on real files."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from typer.testing import CliRunner

from deepedge.cli import app
from deepedge.monitor import Sample, TimeSeriesStore
from deepedge.profile import KnowledgeBase, ProfileKey

runner = CliRunner()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point, whose error handling turns DeepEdgeError into one line."""
    code = "from deepedge.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def _kb_with_one_profile(path) -> int:
    with KnowledgeBase(path) as kb:
        key = ProfileKey.build(
            "jetson-nano", {"cpu_cores": 0.08}, "abc/adam", [["cnn_inference", 8.0]]
        )
        pid = kb.open_profile(key, device_name="nano-1")
        kb.add_point(pid, 8, [0.30, 0.31, 0.29], 380.0, cost_s=2.0)
        kb.add_point(pid, 16, [0.55, 0.60, 0.58], 390.0, cost_s=3.0)
    return pid


def test_list_invalidate_and_reset(tmp_path):
    kb = tmp_path / "kb.sqlite"
    pid = _kb_with_one_profile(kb)
    listed = runner.invoke(app, ["profile", "list", "--kb", str(kb)])
    assert listed.exit_code == 0, listed.output
    assert "nano-1" in listed.output and "b=16" in listed.output and "fresh" in listed.output

    gone = runner.invoke(app, ["profile", "invalidate", "--kb", str(kb), "--kind", "jetson-nano"])
    assert gone.exit_code == 0 and "marked 1 profile(s)" in gone.output
    assert "no profiles" in runner.invoke(app, ["profile", "list", "--kb", str(kb)]).output
    stale = runner.invoke(app, ["profile", "list", "--kb", str(kb), "--all"]).output
    assert "stale" in stale
    with KnowledgeBase(kb) as base:
        assert base.get(pid).stale_reason  # kept, only marked

    reset = runner.invoke(app, ["profile", "reset", "--kb", str(kb)])
    assert reset.exit_code == 0 and "moved to" in reset.output
    assert not kb.exists() and list(tmp_path.glob("kb.sqlite.bak-*"))


def test_a_corrupt_knowledge_base_is_one_line_naming_the_reset_command(tmp_path):
    kb = tmp_path / "kb.sqlite"
    kb.write_bytes(b"not a database at all" * 10)
    result = _cli("profile", "list", "--kb", str(kb))
    assert result.returncode == 1  # a damaged store: the run failed
    assert "deepedge profile reset" in result.stderr and "Traceback" not in result.stderr
    assert kb.read_bytes().startswith(b"not a database")  # nothing was touched


def test_monitor_export_writes_a_time_window(tmp_path):
    db = tmp_path / "monitor.sqlite"
    now = time.time()
    with TimeSeriesStore(db) as store:
        store.write(
            [
                Sample.of("deepedge_device_cpu_seconds_total", float(i), now - 100 + i, device="d")
                for i in range(100)
            ]
        )
    out = tmp_path / "window.json"
    args = ["monitor", "--db", str(db), "--export", str(out), "--since", "-30"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert 28 <= len(rows) <= 31  # the last 30 s of one sample per second
    assert all(r["ts"] >= now - 31 for r in rows)
    missing = _cli("monitor", "--db", str(tmp_path / "nope"), "--export", "x.csv")
    assert missing.returncode == 2 and "no time-series file" in missing.stderr
