"""`deepedge launch` without booting devices: rank environments, plans, options, the
command line, and the rank group's failure handling over plain local processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from deepedge.errors import PlanInfeasible, SpecError, UsageError
from deepedge.launch.plan import (
    PLAN_ENV,
    free_port,
    load_plan_file,
    rank_plan,
    rank_plans,
    script_argv,
    torchrun_env,
)
from deepedge.launch.runner import (
    LaunchFailed,
    LaunchOptions,
    RankGroup,
    _check_options,
    _equal_over,
    _rescaled,
)
from deepedge.spec import ClusterSpec, DeviceSpec, Plan
from tests.cli import run_cli

PLAN = Plan(
    policy="deep-edge",
    global_batch=64,
    local_batches={"fast": 40, "slow": 24},
    intensities={"slow": 0.5},
)


def test_rank_plans_follow_the_plan_and_pace_below_full_intensity():
    ranks = rank_plans(PLAN, {"fast": 2.0, "slow": 0.8})
    assert [(r.rank, r.device, r.local_batch, r.intensity) for r in ranks] == [
        (0, "fast", 40, 1.0),
        (1, "slow", 24, 0.5),
    ]
    assert ranks[0].pace_cores is None  # full intensity: the device's fence is enough
    assert ranks[1].pace_cores == pytest.approx(0.4)
    assert all(r.world_size == 2 and r.local_batches == (40, 24) for r in ranks)


def test_the_rank_plan_round_trips_through_the_environment():
    rp = rank_plans(PLAN, {"fast": 2.0, "slow": 0.8})[1]
    env = torchrun_env(rp, master_addr="10.0.0.2", master_port=29500, run_id="r")
    assert env["RANK"] == env["GROUP_RANK"] == env["ROLE_RANK"] == "1"
    assert env["WORLD_SIZE"] == env["GROUP_WORLD_SIZE"] == "2"
    assert (env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("0", "1")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.2", "29500")
    assert env["DEEPEDGE_DEVICE"] == "slow"
    assert rank_plan(env) == rp
    assert json.loads(env[PLAN_ENV])["local_batch"] == 24
    assert rank_plan({}) is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"rank": 0}',
        json.dumps(
            {
                "policy": "x",
                "rank": 2,
                "device": "a",
                "devices": ["a", "b"],
                "global_batch": 4,
                "local_batches": [2, 2],
                "intensities": [1, 1],
            }
        ),
    ],
)
def test_a_bad_plan_variable_is_one_clear_error(text):
    with pytest.raises(SpecError, match=PLAN_ENV):
        rank_plan({PLAN_ENV: text})


def test_a_dynamic_plan_cannot_be_launched():
    dynamic = PLAN.model_copy(update={"micro_batch": 8})
    with pytest.raises(UsageError, match="dynamic"):
        rank_plans(dynamic, {})


def test_script_argv_runs_python_files_under_this_python(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    assert script_argv(str(script), ["--lr", "1"]) == [sys.executable, str(script), "--lr", "1"]
    with pytest.raises(UsageError, match="not found"):
        script_argv(str(tmp_path / "missing.py"), [])
    plain = tmp_path / "data.txt"
    plain.write_text("")
    with pytest.raises(UsageError, match="neither"):
        script_argv(str(plain), [])


def test_saved_plans_load_from_a_plan_or_a_report(tmp_path):
    bare = tmp_path / "plan.json"
    bare.write_text(PLAN.model_dump_json())
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"plan": PLAN.model_dump(mode="json"), "argv": ["x"]}))
    assert load_plan_file(bare) == PLAN == load_plan_file(report)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"policy": "x", "global_batch": 3, "local_batches": {"a": 1}}))
    with pytest.raises(SpecError, match="sum to 1"):
        load_plan_file(bad)


def test_a_saved_plan_keeps_its_proportions_at_another_global_batch():
    assert _rescaled(PLAN, None) is PLAN
    assert _rescaled(PLAN, 128).local_batches == {"fast": 80, "slow": 48}
    assert sum(_rescaled(PLAN, 7).local_batches.values()) == 7
    with pytest.raises(SpecError):
        _rescaled(PLAN, 1)


def _spec() -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "name": "t",
            "devices": [
                {"name": "big", "kind": "b", "cpu_cores": 1, "memory_mb": 4096, "reserved_mb": 0},
                {"name": "tiny", "kind": "t", "cpu_cores": 1, "memory_mb": 600, "reserved_mb": 0},
            ],
            "apps": [{"name": "cam", "device": "tiny", "rate_rps": 5, "deadline_ms": 50}],
        }
    )


def test_the_equal_split_leaves_out_devices_without_memory_for_a_rank():
    plan = _equal_over(_spec(), LaunchOptions(script="s.py"), 32)
    assert plan.local_batches == {"big": 32}
    assert [e.device for e in plan.excluded] == ["tiny"]
    forced = _equal_over(_spec(), LaunchOptions(script="s.py", rank_memory_mb=10), 32)
    assert forced.local_batches == {"big": 16, "tiny": 16}
    with pytest.raises(UsageError, match="nope"):
        _equal_over(_spec(), LaunchOptions(script="s.py", devices=("nope",)), 32)
    with pytest.raises(PlanInfeasible, match="tiny"):
        _equal_over(_spec(), LaunchOptions(script="s.py", devices=("tiny",)), 32)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"plan_file": Path("p.json"), "policy": "equal"}, "--plan"),
        ({"devices": ("a",), "policy": "proportional"}, "--devices"),
        ({"policy": "dynamic"}, "fixed share"),
        ({"policy": "no-such"}, "unknown policy"),
        ({"global_batch": 0}, "positive"),
    ],
)
def test_options_that_do_not_go_together_are_refused(options, match):
    with pytest.raises(UsageError, match=match):
        _check_options(LaunchOptions(script="s.py", **options))


def test_free_port_is_bindable():
    assert 0 < free_port() < 65536


# --- the command line


def test_script_arguments_stay_the_scripts(monkeypatch):
    from deepedge import cli

    split = cli._launch_script_args
    assert split(["launch", "c.yaml", "t.py", "-v", "--workdir", "x"]) == [
        "launch",
        "c.yaml",
        "t.py",
        "--",
        "-v",
        "--workdir",
        "x",
    ]
    assert split(["-v", "launch", "--policy", "equal", "c.yaml", "t.py"]) == [
        "-v",
        "launch",
        "--policy",
        "equal",
        "c.yaml",
        "t.py",
        "--",
    ]
    assert split(["train", "launch", "j"]) == ["train", "launch", "j"]
    seen = {}
    monkeypatch.setattr(
        "deepedge.launch.runner.launch", lambda spec, options, **kw: seen.update(o=options)
    )
    monkeypatch.setattr(cli, "_load_cluster", lambda path: None)
    result = run_cli("launch", "c.yaml", "--devices", "a,b", "t.py", "--epochs", "2", "-v")
    assert result.code == 0, result.text
    assert seen["o"].args == ("--epochs", "2", "-v") and seen["o"].devices == ("a", "b")


def test_bad_input_is_one_line_and_boots_nothing(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text("name: c\ndevices:\n  - {name: a, kind: orin-nano}\n")
    missing = run_cli("launch", str(cluster), str(tmp_path / "nope.py"))
    assert missing.code == 2 and "not found" in missing.err and "Traceback" not in missing.text
    no_cluster = run_cli("launch", str(tmp_path / "none.yaml"), "x.py")
    assert no_cluster.code == 2 and "none.yaml" in no_cluster.err
    assert "Traceback" not in no_cluster.text


# --- the rank group, over plain local processes


class _HostDevice:
    """A device that is just this host: enough of DeviceHandle for the rank group."""

    def __init__(self, name: str) -> None:
        self.spec = DeviceSpec(name=name, kind="host", cpu_cores=1, memory_mb=1024)
        self.address = "127.0.0.1"
        self.interface = None
        self.pace_cores = None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        self_paced: bool = False,
    ) -> subprocess.Popen[bytes]:
        assert log_path is not None
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                list(argv),
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


SCRIPT = """
import os, sys, time
rank = int(os.environ["RANK"])
print("rank", rank, "of", os.environ["WORLD_SIZE"], "at", os.environ["MASTER_ADDR"], flush=True)
if rank == int(sys.argv[1]):
    print("boom", flush=True)
    sys.exit(int(sys.argv[2]))
if sys.argv[1] != "-1":
    while True:
        time.sleep(0.05)  # a peer waiting for the failed rank: stopped by the launcher
"""


def _group(tmp_path: Path, fail_rank: int, code: int, lines: list[str]) -> RankGroup:
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    plan = Plan(policy="equal", global_batch=3, local_batches={"a": 1, "b": 1, "c": 1})
    devices = {n: _HostDevice(n) for n in "abc"}
    return RankGroup(
        devices,  # type: ignore[arg-type]
        rank_plans(plan, {}),
        [sys.executable, str(script), str(fail_rank), str(code)],
        log_dir=tmp_path / "logs",
        echo=lines.append,
        stop_grace_s=5,
    )


def test_ranks_that_all_succeed_return_and_tee_their_output(tmp_path):
    lines: list[str] = []
    _group(tmp_path, -1, 0, lines).run(timeout_s=60)
    for rank in range(3):
        assert f"[rank{rank}]: rank {rank} of 3 at 127.0.0.1" in lines
        assert (tmp_path / "logs" / f"rank-{rank}.log").read_text().count("of 3") == 1


def test_a_failed_rank_stops_the_others_and_gives_its_code_and_log_tail(tmp_path):
    lines: list[str] = []
    group = _group(tmp_path, 1, 7, lines)
    started = time.monotonic()
    with pytest.raises(LaunchFailed) as info:
        group.run(timeout_s=60)
    assert time.monotonic() - started < 30
    assert info.value.exit_code == 7
    assert "rank 1 (device b) exited with 7" in str(info.value)
    text = "\n".join(lines)
    assert "Root Cause (first observed failure):" in text
    assert "exitcode  : 7" in text and "    boom" in text
    assert "rank 0 on a: exitcode -15 (signal: SIGTERM)" in text
    assert all(p.poll() is not None for p in group.procs)


def test_a_rank_killed_by_a_signal_exits_the_launch_with_1(tmp_path):
    lines: list[str] = []
    script = tmp_path / "k.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    plan = Plan(policy="equal", global_batch=1, local_batches={"a": 1})
    group = RankGroup(
        {"a": _HostDevice("a")},  # type: ignore[dict-item]
        rank_plans(plan, {}),
        [sys.executable, str(script)],
        log_dir=tmp_path / "logs",
        echo=lines.append,
    )
    with pytest.raises(LaunchFailed) as info:
        group.run(timeout_s=60)
    assert info.value.exit_code == 1 and "SIGKILL" in str(info.value)
