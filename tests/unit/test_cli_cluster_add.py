"""`deepedge cluster add`: a device appended to a spec file, checked as a whole, written
atomically; every wrong input is one line and exit 2, and leaves the file untouched."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from deepedge.cluster import SpecWatch
from deepedge.spec import ClusterSpec, load_spec
from tests.cli import run_cli
from tests.conftest import file_snapshot

EXAMPLES = Path(__file__).parents[2] / "src" / "deepedge" / "examples"


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text((EXAMPLES / "demo-cluster.yaml").read_text())
    return path


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_adds_the_device_and_keeps_every_other_entry(spec):
    before = load_spec(ClusterSpec, spec)
    watch = SpecWatch(spec, settle_s=0)
    r = run_cli("cluster", "add", str(spec), "--name", "rpi-2", "--kind", "rpi4")
    assert r.code == 0, r.text
    assert "added device 'rpi-2'" in r.out and "deepedge train" in r.out
    after = load_spec(ClusterSpec, spec)
    assert after.devices[:-1] == before.devices
    assert after.devices[-1].model_dump(exclude_none=True) == {"name": "rpi-2", "kind": "rpi4"}
    assert after.model_copy(update={"devices": before.devices}) == before  # apps, name, …
    assert [d.name for d in watch.added()] == ["rpi-2"]  # what a running job sees
    assert [p.name for p in spec.parent.iterdir()] == [spec.name]  # no temp file left


def test_capacities_are_written_and_a_custom_board_needs_them(spec):
    r = run_cli(
        "cluster",
        "add",
        str(spec),
        "--name",
        "board",
        "--kind",
        "my-board",
        "--cpu-cores",
        "0.25",
        "--memory-mb",
        "2048",
        "--reserved-mb",
        "300",
        "--link-mbps",
        "100",
    )
    assert r.code == 0, r.text
    d = load_spec(ClusterSpec, spec).devices[-1]
    assert (d.kind, d.cpu_cores, d.memory_mb, d.reserved_mb, d.link_mbps) == (
        "my-board",
        0.25,
        2048,
        300,
        100.0,
    )


def test_a_json_spec_stays_json_and_keeps_its_mode(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"name": "j", "devices": [{"name": "a", "kind": "rpi4"}]}))
    path.chmod(0o640)
    r = run_cli("cluster", "add", str(path), "--name", "b", "--kind", "orin-nano")
    assert r.code == 0, r.text
    data = json.loads(path.read_text())
    assert [d["name"] for d in data["devices"]] == ["a", "b"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_symlinked_spec_is_followed_not_replaced(spec, tmp_path):
    link = tmp_path / "link.yaml"
    link.symlink_to(spec)
    r = run_cli("cluster", "add", str(link), "--name", "n2", "--kind", "jetson-nano")
    assert r.code == 0, r.text
    assert link.is_symlink()
    assert load_spec(ClusterSpec, spec).devices[-1].name == "n2"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--name", "rpi-1", "--kind", "rpi4"], "already has a device named 'rpi-1'"),
        (["--name", "x", "--kind", "toaster"], "unknown device kind 'toaster'"),
        (["--name", "x", "--kind", "toaster", "--cpu-cores", "1"], "unknown device kind"),
        (["--name", "x", "--kind", "rpi4", "--cpu-cores", "-1"], "--cpu-cores -1.0"),
        (["--name", "a b", "--kind", "rpi4"], "--name 'a b'"),
        (["--name", "x", "--kind", "rpi4", "--memory-mb", "500"], "leaves nothing of memory_mb"),
    ],
)
def test_a_wrong_device_is_one_line_and_leaves_the_file_untouched(spec, args, expect):
    before = file_snapshot(spec)
    r = run_cli("cluster", "add", str(spec), *args)
    assert r.code == 2, r.text
    (line,) = _error_lines(r.err)
    assert expect in line and "hint:" in line, line
    assert "Traceback" not in r.text
    assert file_snapshot(spec) == before
    assert [p.name for p in spec.parent.iterdir()] == [spec.name]


def test_a_missing_or_wrong_file_is_one_line(tmp_path):
    r = run_cli("cluster", "add", str(tmp_path / "nope.yaml"), "--name", "x", "--kind", "rpi4")
    assert r.code == 2 and "cannot read" in _error_lines(r.err)[0]
    job = tmp_path / "job.yaml"
    job.write_text((EXAMPLES / "demo-job.yaml").read_text())
    r = run_cli("cluster", "add", str(job), "--name", "x", "--kind", "rpi4")
    assert r.code == 2 and "looks like a job spec" in _error_lines(r.err)[0]
    assert job.read_text() == (EXAMPLES / "demo-job.yaml").read_text()


def test_a_failed_write_is_one_line_and_leaves_the_file_and_no_temp_file(spec, monkeypatch):
    before = file_snapshot(spec)

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    r = run_cli("cluster", "add", str(spec), "--name", "x", "--kind", "rpi4")
    assert r.code == 1, r.text
    (line,) = _error_lines(r.err)
    assert "cannot write" in line and "No space left" in line
    assert file_snapshot(spec) == before
    assert [p.name for p in spec.parent.iterdir()] == [spec.name]


def test_help_says_comments_are_not_kept():
    r = run_cli("cluster", "add", "--help")
    assert r.code == 0
    assert "comments" in r.out and "--cpu-cores" in r.out and "--memory-mb" in r.out
