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


def _meanet_extension() -> nn.Module:
    from deepedge.models.meanet import MEANet

    torch.manual_seed(0)
    model = MEANet(3, 10, width=4, depth=1, adaptive_channels=4)
    model.set_hard_classes([0, 2, 4, 6, 8])
    return model.train_extension_only()


def _model_and_loss(kind: str):
    """The model and job loss of each case (None: the built-in cross-entropy)."""
    if kind == "cnn":
        return tiny_groupnorm_cnn(), None
    from deepedge.meanet import extension_output_loss

    return _meanet_extension(), extension_output_loss


def _worker(rank: int, port: int, out: str, kind: str) -> None:
    torch.set_num_threads(1)
    store = join_store(port)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=len(SPLIT))
    x, y = _data()
    lo = sum(SPLIT[:rank])
    model, loss_fn = _model_and_loss(kind)
    wrapped = wrap_ddp(model)
    loss = global_batch_loss(
        wrapped.module, x[lo : lo + SPLIT[rank]], y[lo : lo + SPLIT[rank]], sum(SPLIT), loss_fn
    )
    loss.backward()
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save(grads, out)
    leave_group(store, rank, len(SPLIT))


def _ddp_and_full_batch_grads(tmp_path, kind: str):
    """Gradients of the uneven 3-process DDP step and of one process on the whole batch."""
    out = str(tmp_path / "grads.pt")
    store = host_store()
    mp.spawn(_worker, args=(store.port, out, kind), nprocs=len(SPLIT), join=True)
    model, loss_fn = _model_and_loss(kind)
    x, y = _data()
    (nn.functional.cross_entropy if loss_fn is None else loss_fn)(model(x), y).backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return torch.load(out), want


def _assert_close(got: dict, want: dict) -> None:
    assert set(got) == set(want) and want
    for name, grad in want.items():
        rel = (got[name] - grad).norm() / max(grad.norm(), 1e-12)
        assert rel < 1e-5, f"{name}: relative gradient error {rel:.2e}"


@pytest.mark.timeout(120)
def test_uneven_three_process_gradient_equals_full_batch(tmp_path):
    _assert_close(*_ddp_and_full_batch_grads(tmp_path, "cnn"))


@pytest.mark.timeout(120)
def test_meanet_extension_training_splits_exactly_and_leaves_the_main_block_alone(tmp_path):
    """MEANet's edge-side re-training (main block frozen, the weighted extension loss)
    keeps the uneven-split identity, and DDP reduces only the blocks it trains."""
    got, want = _ddp_and_full_batch_grads(tmp_path, "meanet")
    assert not any(n.startswith("main.") for n in want)  # the main block is frozen
    _assert_close(got, want)
