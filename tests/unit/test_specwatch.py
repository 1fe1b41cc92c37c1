"""SpecWatch: devices added to a cluster spec file while a job runs, polled cheaply and
never raising on a file caught half-written or saved broken."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import deepedge.cluster.specwatch as specwatch
from deepedge.cluster import SpecWatch

BASE = "name: w\ndevices:\n  - {name: a, kind: rpi4}\n  - {name: b, kind: orin-nano}\n"


def _replace(path: Path, text: str) -> None:
    """Write ``text`` the way `deepedge cluster add` does: a new file renamed over the old."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _with(*devices: str) -> str:
    return BASE + "".join(f"  - {d}\n" for d in devices)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(BASE)
    return path


def test_reports_each_new_device_once_in_file_order(spec):
    watch = SpecWatch(spec, settle_s=0)
    assert watch.added() == [] and watch.error is None
    _replace(spec, _with("{name: c, kind: rpi4, cpu_cores: 0.05}", "{name: d, kind: x86-mini}"))
    new = watch.added()
    assert [(d.name, d.kind, d.cpu_cores) for d in new] == [
        ("c", "rpi4", 0.05),
        ("d", "x86-mini", None),  # as written: the cluster fills in the catalog defaults
    ]
    assert watch.added() == []
    _replace(spec, _with("{name: c, kind: rpi4, cpu_cores: 0.05}", "{name: d, kind: x86-mini}"))
    assert watch.added() == []  # rewritten, but nothing new


def test_unchanged_file_is_not_parsed_again(spec, monkeypatch):
    watch = SpecWatch(spec, settle_s=0)
    calls = []
    real = specwatch.load_spec
    monkeypatch.setattr(specwatch, "load_spec", lambda *a: calls.append(a) or real(*a))
    for _ in range(100):
        assert watch.added() == []
    assert calls == []
    _replace(spec, _with("{name: c, kind: rpi4}"))
    assert [d.name for d in watch.added()] == ["c"]
    assert watch.added() == []
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (BASE + "  - {name: c, kin", "not valid YAML"),  # caught half-written
        (BASE + "  - {name: c, kind: toaster}\n", "unknown kind 'toaster'"),
        (BASE + "  - {name: a, kind: rpi4}\n", "device names must be unique"),
        (BASE + "  - {name: c}\n", "'devices.2.kind'"),
        ("", "is empty"),
        ("\0\1\2binary", "binary file"),
        ("global_batch: 8\n", "looks like a job spec"),
    ],
)
def test_an_unusable_file_is_no_exception_and_the_fixed_file_is_read(spec, content, reason):
    watch = SpecWatch(spec, settle_s=0)
    _replace(spec, content)
    assert watch.added() == []
    assert watch.error is not None and reason in watch.error and "\n" not in watch.error
    error = watch.error
    assert watch.added() == [] and watch.error == error  # kept, for the caller to log once
    _replace(spec, _with("{name: c, kind: rpi4}"))
    assert [d.name for d in watch.added()] == ["c"]
    assert watch.error is None


def test_a_missing_file_is_an_error_until_it_is_back(spec):
    watch = SpecWatch(spec, settle_s=0)
    spec.unlink()
    assert watch.added() == []
    assert watch.error is not None and "No such file" in watch.error
    _replace(spec, _with("{name: c, kind: rpi4}"))
    assert [d.name for d in watch.added()] == ["c"] and watch.error is None


def test_removed_devices_are_ignored_and_not_reported_when_back(spec):
    watch = SpecWatch(spec, settle_s=0)
    _replace(spec, "devices:\n  - {name: a, kind: rpi4}\n  - {name: c, kind: rpi4}\n")
    assert [d.name for d in watch.added()] == ["c"]  # b's removal is not its business
    _replace(spec, _with("{name: c, kind: rpi4}"))
    assert watch.added() == []  # b is back, but it was known


def test_the_baseline_can_be_the_devices_running_now(spec):
    watch = SpecWatch(spec, known=["a"], settle_s=0)
    assert [d.name for d in watch.added()] == ["b"]


def test_a_file_unusable_at_the_start_makes_its_first_usable_content_the_baseline(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("devices: [")
    watch = SpecWatch(path, settle_s=0)
    assert watch.error is not None
    _replace(path, BASE)
    assert watch.added() == [] and watch.error is None  # nothing to compare it with
    _replace(path, _with("{name: c, kind: rpi4}"))
    assert [d.name for d in watch.added()] == ["c"]


def test_a_file_is_read_once_it_has_settled(spec):
    watch = SpecWatch(spec, settle_s=0.3)
    spec.write_text(_with("{name: c, kind: rpi4}"))  # in place, as an editor may
    assert watch.added() == []  # just written: maybe not finished
    time.sleep(0.35)
    assert [d.name for d in watch.added()] == ["c"]


def test_json_specs_are_watched_too(tmp_path):
    path = tmp_path / "cluster.json"
    path.write_text('{"devices": [{"name": "a", "kind": "rpi4"}]}')
    watch = SpecWatch(path, settle_s=0)
    _replace(path, '{"devices": [{"name": "a", "kind": "rpi4"}, {"name": "z", "kind": "rpi4"}]}')
    assert [d.name for d in watch.added()] == ["z"]
