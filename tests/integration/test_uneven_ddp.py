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


def _meanet_extension() -> nn.Module:
    from deepedge.models.meanet import MEANet

    torch.manual_seed(0)
    model = MEANet(3, 10, width=4, depth=1, adaptive_channels=4)
    model.set_hard_classes([0, 2, 4, 6, 8])
    return model.train_extension_only()


def _meanet_worker(rank: int, port: int, out: str) -> None:
    from deepedge.meanet import extension_output_loss

    torch.set_num_threads(1)
    store = join_store(port)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=len(SPLIT))
    x, y = _data()
    lo = sum(SPLIT[:rank])
    wrapped = wrap_ddp(_meanet_extension())
    loss = global_batch_loss(
        wrapped.module,
        x[lo : lo + SPLIT[rank]],
        y[lo : lo + SPLIT[rank]],
        sum(SPLIT),
        extension_output_loss,
    )
    loss.backward()
    if rank == 0:
        torch.save(
            {
                n: p.grad.clone()
                for n, p in wrapped.module.module.named_parameters()
                if p.grad is not None
            },
            out,
        )
    leave_group(store, rank, len(SPLIT))


@pytest.mark.timeout(120)
def test_meanet_extension_training_splits_exactly_and_leaves_the_main_block_alone(tmp_path):
    """MEANet's edge-side re-training (main block frozen, the weighted extension loss)
    keeps the uneven-split identity, and DDP reduces only the blocks it trains."""
    from deepedge.meanet import extension_output_loss

    out = str(tmp_path / "grads.pt")
    store = host_store()
    mp.spawn(_meanet_worker, args=(store.port, out), nprocs=len(SPLIT), join=True)
    ddp_grads = torch.load(out)

    model = _meanet_extension()
    x, y = _data()
    extension_output_loss(model(x), y).backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(ddp_grads) == set(want) and want
    assert not any(n.startswith("main.") for n in want)  # the main block is frozen
    for name, grad in want.items():
        rel = (ddp_grads[name] - grad).norm() / max(grad.norm(), 1e-12)
        assert rel < 1e-5, f"{name}: relative gradient error {rel:.2e}"
