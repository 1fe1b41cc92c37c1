"""Dynamic dispatch over real gloo processes and a real TCPStore equals full-batch SGD.

One spawn of three ranks runs every scenario (starting processes costs seconds): one
dispatched step compared with the single-process gradient, one step with a slowed rank,
and two epochs' worth of steps through ``run_dynamic_epochs``, including a short last step
with fewer chunks than ranks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from deepedge.control import Retraining
from deepedge.data import build_dataset
from deepedge.plan import dynamic_dispatch, equal_split
from deepedge.profile import KnowledgeBase
from deepedge.session import EdgeSession
from deepedge.spec import ClusterSpec, JobSpec
from deepedge.train import load_checkpoint
from deepedge.train.ddp import dynamic_step, run_dynamic_epochs
from deepedge.train.local import job_model
from deepedge.train.sampler import UnevenBatchSampler
from tests.conftest import (
    host_store,
    join_store,
    leave_group,
    needs_cgroups,
    tiny_groupnorm_cnn,
)

WORLD = 3
B = 32  # global batch
MICRO = 3  # 11 chunks per step, the last one short
N = 40  # data set: one full step of 32 and a last step of 8 (3 chunks) per epoch
SLOW_RANK = 2
EPOCH_MICRO = 5  # the last step has 2 chunks, so one rank claims nothing
LR = 0.5


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 3, 8, 8, generator=g), torch.randint(0, 10, (N,), generator=g)


def _exact_step(store: dist.Store) -> dict[str, Any]:
    model = tiny_groupnorm_cnn()
    x, y = _data()
    dist.barrier()
    done = dynamic_step(
        model, x, y, torch.arange(B), store=store, key="exact/s0", micro_batch=MICRO
    )
    return {
        "chunks": done.chunks,
        "samples": done.samples,
        "grads": [p.grad.clone() for p in model.parameters()],
    }


def _slow_step(store: dist.Store, rank: int) -> list[int]:
    model = tiny_groupnorm_cnn()
    x, y = _data()

    def delay(_: int) -> None:
        if rank == SLOW_RANK:
            time.sleep(0.2)

    dist.barrier()  # every rank starts claiming at about the same time
    return dynamic_step(
        model, x, y, torch.arange(B), store=store, key="slow/s0", micro_batch=1, on_chunk=delay
    ).chunks


def _epochs(store: dist.Store) -> dict[str, Any]:
    """Two epochs in float64, so parameter updates compare without float32 rounding."""
    model = tiny_groupnorm_cnn().double()
    x, y = _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    records = run_dynamic_epochs(
        model,
        optimizer,
        x.double(),
        y,
        store=store,
        run_key="epochs",
        global_batch=B,
        micro_batch=EPOCH_MICRO,
        seed=7,
        epochs=range(2),
    )
    return {
        "records": [r.to_dict() for r in records],
        "params": [p.detach().clone() for p in model.parameters()],
    }


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    store = join_store(port)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    result = {"exact": _exact_step(store), "slow": _slow_step(store, rank), **_epochs(store)}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    leave_group(store, rank, WORLD)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("dispatch")
    store = host_store()  # counters and rendezvous, hosted here as the coordinator does
    mp.spawn(_worker, args=(store.port, str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.timeout(120)
def test_dispatched_step_gradient_equals_full_batch(ranks):
    model = tiny_groupnorm_cnn()
    x, y = _data()
    nn.functional.cross_entropy(model(x[:B]), y[:B]).backward()
    want = [p.grad for p in model.parameters()]
    for r, res in enumerate(ranks):
        for got, w in zip(res["exact"]["grads"], want, strict=True):
            assert _rel(got, w) < 1e-5, f"rank {r}: relative gradient error {_rel(got, w):.2e}"


@pytest.mark.timeout(120)
def test_every_chunk_is_processed_exactly_once(ranks):
    claimed = sorted(k for res in ranks for k in res["exact"]["chunks"])
    assert claimed == list(range(-(-B // MICRO)))
    assert sum(res["exact"]["samples"] for res in ranks) == B


@pytest.mark.timeout(120)
def test_a_slow_rank_claims_fewer_chunks(ranks):
    counts = [len(res["slow"]) for res in ranks]
    assert sorted(k for res in ranks for k in res["slow"]) == list(range(B))
    fastest = max(c for r, c in enumerate(counts) if r != SLOW_RANK)
    assert counts[SLOW_RANK] < fastest, counts


@pytest.mark.timeout(120)
def test_dynamic_epochs_equal_single_process_sgd(ranks):
    model = tiny_groupnorm_cnn().double()
    x, y = _data()
    x = x.double()
    initial = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    sampler = UnevenBatchSampler(N, [B], seed=7)
    sizes = []
    for epoch in range(2):
        for idx in sampler.rank_steps(epoch, 0):
            index = torch.from_numpy(idx)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
            sizes.append(len(idx))
    assert sizes == [B, N - B, B, N - B]

    for r, res in enumerate(ranks):
        for got, want, start in zip(res["params"], model.parameters(), initial, strict=True):
            err = _rel(got - start, want.detach() - start)
            assert err < 1e-9, f"rank {r}: relative update error {err:.2e}"

    steps = [[(rec["epoch"], rec["step"]) for rec in res["records"]] for res in ranks]
    assert all(s == [(0, 0), (0, 1), (1, 0), (1, 1)] for s in steps)
    per_step = [sum(res["records"][i]["batch"] for res in ranks) for i in range(4)]
    assert per_step == sizes
    # the short last step has two chunks for three ranks: somebody processed nothing
    assert min(res["records"][1]["batch"] for res in ranks) == 0
    for res in ranks:
        for rec in res["records"]:
            assert rec["start"] <= rec["local_done"] <= rec["synced"] <= rec["end"]


CLUSTER = {
    "name": "dyn",
    "cpu_period_us": 5000,
    "devices": [{"name": "fast", "kind": "orin-nano"}, {"name": "slow", "kind": "jetson-nano"}],
}
JOB = {
    "model": {"arch": "small_cnn", "width": 8},
    "dataset": {"kind": "synthetic", "train_size": 120, "test_size": 20, "image_size": 16},
    "epochs": 1,
    "global_batch": 48,
}


@needs_cgroups
@pytest.mark.root
@pytest.mark.timeout(300)
def test_agent_pool_runs_a_dynamic_plan(tmp_path):
    job = JobSpec.model_validate(JOB)
    train_set = build_dataset(job.dataset, "train", drifted=True)
    state = job_model(job, train_set).state_dict()
    plan = dynamic_dispatch(["fast", "slow"], job.global_batch, micro_batch=4)
    with (
        KnowledgeBase(tmp_path / "kb.sqlite") as kb,
        EdgeSession(ClusterSpec.model_validate(CLUSTER), tmp_path / "s") as session,
    ):
        retraining = Retraining(session, job, train_set, state, kb=kb)
        run = retraining.run(plan)
        static = retraining.run(equal_split(plan.devices, job.global_batch))

    sizes = [48, 48, 24]  # 120 samples: two full steps and a short one
    assert all(len(recs) == len(sizes) for recs in run.steps.values())
    per_step = [sum(recs[i].batch for recs in run.steps.values()) for i in range(len(sizes))]
    assert per_step == sizes
    state = load_checkpoint(sorted(run.checkpoint_dir.glob("*.ckpt"))[-1])
    assert state["micro_batch"] == 4 and state["epoch"] == 0
    # the same SGD steps as static uneven DDP from the same weights, up to summation order
    want = static.final_state()["model"]
    for name, got in state["model"].items():
        err = float((got - want[name]).norm() / want[name].norm())
        assert err < 1e-4, f"{name}: {err:.2e}"
    # 0.495 against 0.143 host cores: the fast device comes back for more chunks
    fast, slow = (sum(r.batch for r in run.steps[d]) for d in ("fast", "slow"))
    assert fast >= slow, (fast, slow)
