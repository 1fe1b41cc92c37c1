"""`deepedge launch` with real processes: torchrun-style scripts on emulated devices, a
failing rank, the planned split, and exact gradients over uneven gloo ranks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from deepedge.launch.plan import RankPlan
from tests.cli import run_cli
from tests.conftest import host_store, join_store, leave_group, tiny_groupnorm_cnn

pytestmark = [pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SPLIT = [5, 2, 9]  # uneven local batches, B = 16
SIZE = 40


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(SIZE, 3, 8, 8, generator=g), torch.randint(0, 10, (SIZE,), generator=g)


def _plan(rank: int) -> RankPlan:
    return RankPlan(
        policy="test",
        rank=rank,
        device=f"d{rank}",
        devices=tuple(f"d{i}" for i in range(len(SPLIT))),
        global_batch=sum(SPLIT),
        local_batches=tuple(SPLIT),
        intensities=(1.0,) * len(SPLIT),
    )


def _rank(rank: int, port: int, out: str) -> None:
    """One rank of a plain DDP script (gradients *averaged*) with the two swaps."""
    from deepedge.launch import PlannedBatchSampler, planned_loss

    torch.set_num_threads(1)
    store = join_store(port)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=len(SPLIT))
    x, y = _data()
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=PlannedBatchSampler(data, seed=4, plan=_plan(rank))
    )
    model = DDP(tiny_groupnorm_cnn())
    xb, yb = next(iter(loader))
    assert len(yb) == SPLIT[rank]
    planned_loss(nn.functional.cross_entropy(model(xb), yb)).backward()
    if rank == 0:
        torch.save([p.grad.clone() for p in model.module.parameters()], out)
    leave_group(store, rank, len(SPLIT))


def test_uneven_planned_ranks_have_the_single_process_gradient(tmp_path):
    from deepedge.launch.sampler import PlannedBatchSampler

    out = str(tmp_path / "grads.pt")
    store = host_store()
    mp.spawn(_rank, args=(store.port, out), nprocs=len(SPLIT), join=True)
    got = torch.load(out)

    x, y = _data()
    whole = RankPlan("test", 0, "d0", ("d0",), sum(SPLIT), (sum(SPLIT),), (1.0,))
    first = next(iter(PlannedBatchSampler(SIZE, seed=4, plan=whole)))  # one process, one batch
    model = tiny_groupnorm_cnn()
    nn.functional.cross_entropy(model(x[first]), y[first]).backward()
    for g, p in zip(got, model.parameters(), strict=True):
        assert p.grad is not None
        assert (g - p.grad).abs().max().item() <= 1e-5


CLUSTER = """
name: launch-test
devices:
  - {name: a, kind: custom, cpu_cores: 0.8, memory_mb: 2048, reserved_mb: 200}
  - {name: b, kind: custom, cpu_cores: 0.5, memory_mb: 2048, reserved_mb: 200}
"""
APP = "apps:\n  - {name: cam, device: a, rate_rps: 5, deadline_ms: 200}\n"


def _cluster(tmp_path: Path, with_app: bool = False, backend: str = "local") -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER + f"backend: {backend}\n" + (APP if with_app else ""))
    return path


def _samples_per_rank(workdir: Path) -> list[int]:
    """Samples each rank trained on in its first epoch, from its log."""
    counts = []
    for rank in (0, 1):
        log = (workdir / "logs" / f"rank-{rank}.log").read_text()
        counts.append(int(re.search(r"epoch 0 loss \S+ on (\d+) samples", log).group(1)))
    return counts


def test_an_unmodified_torchrun_script_runs_to_completion_beside_the_lc_apps(tmp_path, backend):
    work, snap = tmp_path / "work", tmp_path / "snap"
    result = run_cli(
        "launch", str(_cluster(tmp_path, True, backend)), "--policy", "equal",
        "--workdir", str(work), str(ROOT / "examples" / "torchrun_train.py"),
        "--epochs", "1", "--out", str(snap),
    )  # fmt: skip
    assert result.code == 0, result.text
    assert (snap / "snapshot.pt").is_file()
    assert "[rank1]: rank 1 of 2 on b" in result.out
    assert "SCHED_IDLE" in (work / "logs" / "rank-0.log").read_text()
    assert (work / "logs" / "app-cam.log").exists()  # the LC app ran meanwhile
    assert _samples_per_rank(work) == [899, 899]  # DistributedSampler: equal shares


def test_a_failing_rank_gives_its_exit_code_and_log_tail(tmp_path, backend):
    script = tmp_path / "fail.py"
    script.write_text(
        "import os, sys, time\n"
        "if os.environ['RANK'] == '1':\n"
        "    print('bad batch in shard 7', flush=True)\n"
        "    sys.exit(3)\n"
        "while True:\n"
        "    time.sleep(0.05)\n"
    )
    work = tmp_path / "work"
    result = run_cli(
        "launch", str(_cluster(tmp_path, backend=backend)), "--devices", "a,b",
        "--workdir", str(work),
        str(script),
    )  # fmt: skip
    assert result.code == 3, result.text
    assert "Root Cause (first observed failure):" in result.out
    assert "bad batch in shard 7" in result.out and "exitcode  : 3" in result.out
    assert "rank 0 on a: exitcode -15 (signal: SIGTERM)" in result.out
    assert "error: rank 1 (device b) exited with 3" in result.err


def test_the_planned_script_trains_the_planned_uneven_shares(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(
        '{"policy": "mine", "global_batch": 64, "local_batches": {"a": 48, "b": 16},'
        ' "intensities": {"b": 0.5}}'
    )
    work = tmp_path / "work"
    result = run_cli(
        "launch", str(_cluster(tmp_path)), "--plan", str(plan), "--workdir", str(work),
        "--no-tee", str(ROOT / "examples" / "torchrun_train_planned.py"),
        "--epochs", "1", "--out", str(tmp_path / "snap"),
    )  # fmt: skip
    assert result.code == 0, result.text
    # 1,797 digits: 28 steps of 48 + 16, the 5 left split 4 + 1
    assert _samples_per_rank(work) == [28 * 48 + 4, 28 * 16 + 1]
    assert (work / "plan.json").is_file()
