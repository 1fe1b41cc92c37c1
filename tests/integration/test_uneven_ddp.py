"""Uneven-batch DDP over real gloo processes equals single-process full-batch SGD."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from deepedge.train.ddp import global_batch_loss, wrap_ddp
from tests.conftest import host_store, join_store, leave_group, tiny_groupnorm_cnn

SPLIT = [3, 9, 20]  # deliberately uneven local batches, B = 32


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(sum(SPLIT), 3, 8, 8, generator=g), torch.randint(
        0, 10, (sum(SPLIT),), generator=g
    )


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    store = join_store(port)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=len(SPLIT))
    x, y = _data()
    lo = sum(SPLIT[:rank])
    wrapped = wrap_ddp(tiny_groupnorm_cnn())
    loss = global_batch_loss(
        wrapped.module, x[lo : lo + SPLIT[rank]], y[lo : lo + SPLIT[rank]], sum(SPLIT)
    )
    loss.backward()
    if rank == 0:
        torch.save([p.grad.clone() for p in wrapped.module.parameters()], out)
    leave_group(store, rank, len(SPLIT))


@pytest.mark.timeout(120)
def test_uneven_three_process_gradient_equals_full_batch(tmp_path):
    out = str(tmp_path / "grads.pt")
    store = host_store()
    mp.spawn(_worker, args=(store.port, out), nprocs=len(SPLIT), join=True)
    ddp_grads = torch.load(out)

    model = tiny_groupnorm_cnn()
    x, y = _data()
    nn.functional.cross_entropy(model(x), y).backward()
    for got, want in zip(ddp_grads, (p.grad for p in model.parameters()), strict=True):
        rel = (got - want).norm() / want.norm()
        assert rel < 1e-5, f"relative gradient error {rel:.2e}"
