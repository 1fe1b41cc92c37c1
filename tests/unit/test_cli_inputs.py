"""Broken inputs through the real CLI: one line naming the file and the problem, exit 2 for
a wrong input or command line, never a traceback; CLI conventions (flags anywhere, -h)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepedge.errors import SpecError, UsageError
from deepedge.spec import ClusterSpec, JobSpec, load_spec
from tests.cli import run_cli

EXAMPLES = Path(__file__).parents[2] / "src" / "deepedge" / "examples"
CLUSTER = EXAMPLES / "demo-cluster.yaml"
JOB = EXAMPLES / "demo-job.yaml"


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    f = tmp_path / name
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content)
    return f


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    ("name", "content", "expect"),
    [
        ("bin.yaml", b"\x7fELF\x00\x01binary", "binary file"),
        ("latin.yaml", "name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at line 1)"),
        ("deep.yaml", "[" * 100_000, "not valid YAML at line 1"),
        ("deep.json", "[" * 100_000, "nests deeper than"),
        ("bad.json", '{"devices": [],\n }', "not valid JSON at line 2, column 2"),
        ("bad.yaml", "devices:\n  - {name: a\n", "unclosed bracket"),
        ("dup.yaml", "epochs: 1\nepochs: 2\n", "duplicate mapping key: 'epochs'"),
        ("empty.yaml", "", "is empty"),
        ("bool.yaml", "global_batch: true\n", "'global_batch' = true: expected a number"),
        ("inf.yaml", "optimizer: {lr: .inf}\n", "'optimizer.lr'"),
        ("big-batch.yaml", "global_batch: 500\ndataset: {train_size: 100}\n", "larger than"),
        ("nofolder.yaml", "dataset: {kind: image_folder, path: /no/such}\n", "no such folder"),
        (
            "reserve.yaml",
            "devices:\n  - {name: a, kind: rpi4, memory_mb: 1000, reserved_mb: 1000}\n",
            "leaves nothing of memory_mb",
        ),
        (
            "appmem.yaml",
            "devices: [{name: a, kind: rpi4}]\n"
            "apps: [{name: x, device: a, rate_rps: 1, deadline_ms: 50, memory_mb: 999999}]\n",
            "need 999999 MB",
        ),
        ("unknown-kind.yaml", "devices: [{name: a, kind: toaster}]\n", "unknown kind 'toaster'"),
    ],
)
def test_validate_names_the_file_and_the_problem_in_one_line(tmp_path, name, content, expect):
    f = _write(tmp_path, name, content)
    r = run_cli("validate", str(f))
    assert r.code == 2, r.text
    errors = _error_lines(r.err)
    assert errors and str(f) in errors[0], r.text
    assert any(expect in e for e in errors), r.text
    assert "Traceback" not in r.text and "internal error" not in r.text


def test_validate_reports_every_file_and_every_error(tmp_path):
    two_bad = _write(tmp_path, "two.yaml", "epochs: 0\nglobal_batch: -1\n")
    swapped = _write(tmp_path, "c.yaml", "devices: [{name: a, kind: rpi4, cpu_cores: -1}]\n")
    r = run_cli("validate", str(two_bad), str(CLUSTER), str(swapped), str(JOB))
    assert r.code == 2
    errors = _error_lines(r.err)
    assert any("'epochs'" in e for e in errors) and any("'global_batch'" in e for e in errors)
    assert any("devices.0.cpu_cores" in e for e in errors)
    assert r.out.count("ok ") == 2  # the good files are still checked and reported
    assert "2 of 4 file(s) have problems" in r.err


def test_a_swapped_cluster_and_job_is_named_as_such(tmp_path):
    r = run_cli("plan", str(JOB), str(CLUSTER), "--dry-run")
    assert r.code == 2
    assert "looks like a job spec, but a cluster spec is expected" in r.err
    with pytest.raises(UsageError, match="looks like a cluster spec"):
        load_spec(JobSpec, CLUSTER)


def test_dry_run_checks_everything_and_boots_nothing(tmp_path):
    r = run_cli("plan", str(CLUSTER), str(JOB), "--dry-run")
    assert r.code == 0, r.text
    assert "nothing was booted" in r.out and "5 devices" in r.out
    bad_job = _write(tmp_path, "j.yaml", "dataset: {kind: image_folder, path: /no/such}\n")
    r = run_cli("train", str(CLUSTER), str(bad_job), "--dry-run")
    assert r.code == 2 and "no such folder" in r.err


def test_report_of_the_wrong_shape_is_a_usage_error(tmp_path):
    for content in ("{}", "[]", '{"accuracy_before": "x"}', "3"):
        f = _write(tmp_path, "r.json", content)
        r = run_cli("report", str(f))
        assert r.code == 2, (content, r.text)
        assert "not a deepedge demo report" in r.err, r.text


def test_report_prints_a_real_report(tmp_path):
    report = {
        "accuracy_before": 0.4,
        "accuracy_source": 0.8,
        "accuracy_after_by_policy": {"deep-edge": 0.7},
        "lower_bound_s": 10.0,
        "makespan_s": {"deep-edge": 12.0},
        "apps": {
            "cam": {
                "deadline_ms": 100.0,
                "phases": {
                    "deep-edge": {
                        "requests": 3,
                        "p95_ms": None,  # a phase whose p95 could not be estimated
                        "miss_rate": None,
                        "slo_window_violations": 0,
                        "windows": 1,
                    }
                },
            }
        },
    }
    r = run_cli("report", str(_write(tmp_path, "r.json", json.dumps(report))))
    assert r.code == 0, r.text
    assert "deep-edge" in r.out and "cam p95" in r.out


def test_global_flags_anywhere_help_and_version(tmp_path):
    bad = _write(tmp_path, "x.yaml", "epochs: 0\n")
    after = run_cli("validate", str(bad), "--debug")
    before = run_cli("--debug", "validate", str(bad))
    assert after.code == before.code == 2
    assert run_cli("validate", str(CLUSTER), "-v").code == 0
    for args in (("-h",), ("plan", "-h"), ("profile", "-h")):
        r = run_cli(*args)
        assert r.code == 0 and "Usage: deepedge" in r.out, args
    plan_help = run_cli("plan", "--help").out
    assert "CLUSTER JOB" in plan_help and "<bool>" not in plan_help
    assert "reset" in run_cli("profile", "--help").out
    version = run_cli("--version")
    assert version.code == 0 and version.out.startswith("deepedge ")


def test_usage_mistakes_exit_2_and_failures_exit_1(tmp_path):
    assert run_cli("plan", str(CLUSTER)).code == 2  # missing JOB
    assert run_cli("validate", "--no-such-flag", str(CLUSTER)).code == 2
    r = run_cli("train", str(CLUSTER), str(JOB), "--policy", "fastest", "--dry-run")
    assert r.code == 2 and "unknown policy" in r.err
    corrupt = _write(tmp_path, "kb.sqlite", b"not a database" * 100)
    r = run_cli("profile", "list", "--kb", str(corrupt))
    assert r.code == 1 and "Traceback" not in r.text, r.text  # a broken store: a failed run


def test_invalidate_needs_a_selector(tmp_path):
    r = run_cli("profile", "invalidate", "--kb", str(tmp_path / "kb.sqlite"))
    assert r.code == 2 and "--all" in r.err
    r = run_cli("profile", "invalidate", "--all", "--kind", "rpi4")
    assert r.code == 2


def test_a_large_fleet_with_a_repeated_name_is_one_short_line(tmp_path):
    """The duplicate-name and app-device checks are linear (they were quadratic, and a
    20,000-device spec took seconds); the message about a large fleet stays short."""
    devices = [{"name": f"d{i}", "kind": "rpi4"} for i in range(20_000)]
    devices.append({"name": "d7", "kind": "rpi4"})
    apps = [{"name": "x", "device": "ghost", "rate_rps": 1, "deadline_ms": 50}]
    f = _write(tmp_path, "big.json", json.dumps({"devices": devices}))
    with pytest.raises(SpecError, match="repeated: 'd7'") as err:
        load_spec(ClusterSpec, f)
    assert "\n" not in err.value.one_line() and len(err.value.one_line()) < 400
    f = _write(tmp_path, "ghost.json", json.dumps({"devices": devices[:-1], "apps": apps}))
    with pytest.raises(SpecError, match="unknown device 'ghost'") as err:
        load_spec(ClusterSpec, f)
    assert "and 19992 more" in err.value.one_line()
