"""Single-process training and evaluation on the coordinator (base model, accuracy)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from deepedge.byo.data import TensorData
from deepedge.data import ArrayDataset
from deepedge.models import build_model
from deepedge.spec import JobSpec
from deepedge.train.ddp import build_optimizer

__all__ = ["evaluate", "job_model", "train_local"]


def job_model(job: JobSpec, data: ArrayDataset | TensorData) -> nn.Module:
    """The job's model shaped for ``data``, initialised from the job's seed.

    Every process that builds it (coordinator, agents) gets the same initial weights.
    A job brought from Python (``deepedge.fit``) builds the user's model instead.
    """
    if job.custom is not None:
        from deepedge.byo.hooks import build_custom_model

        return build_custom_model(job)
    torch.manual_seed(job.seed)
    channels, size, _ = data.image_shape
    model = build_model(
        job.model, in_channels=channels, num_classes=data.num_classes, image_size=size
    )
    if job.model.blocks == "extension":  # MEANet's edge-side re-training
        model.train_extension_only()  # type: ignore[operator]
    elif job.model.blocks == "main":  # MEANet's first block-wise stage
        model.train_main_only()  # type: ignore[operator]
    return model


def train_local(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    job: JobSpec,
    *,
    epochs: int,
    batch: int | None = None,
    on_step: Callable[[], None] | None = None,
) -> nn.Module:
    """Plain minibatch training over ``epochs`` with the job's optimiser.

    ``batch`` defaults to the job's global batch.
    """
    batch = batch or job.global_batch
    optimizer = build_optimizer(model.parameters(), job.optimizer)
    gen = torch.Generator().manual_seed(job.seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        for lo in range(0, len(images), batch):
            idx = order[lo : lo + batch]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images[idx]), labels[idx]).backward()
            optimizer.step()
            if on_step:
                on_step()
    return model


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 512
) -> float:
    """Top-1 accuracy (of the model's own ``predict`` where it has one, e.g. MEANet's)."""
    model.eval()
    predict = getattr(model, "predict", None) or (lambda x: model(x).argmax(1))
    correct = 0
    for lo in range(0, len(images), batch):
        correct += int((predict(images[lo : lo + batch]) == labels[lo : lo + batch]).sum())
    return correct / len(images)
