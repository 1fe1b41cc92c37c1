"""Block-wise MEANet training: the main block first, then the hard classes from its
measured per-class accuracy, then the adaptive and extension blocks with the main block
frozen (after the authors' code).

The extension head classifies the hard classes plus "not hard". Every training sample
takes part: a hard-class sample is labelled with its place among the hard classes, any
other sample with "not hard", weighted by ``other_weight`` (about 0.3), so the head spends
its capacity on the hard classes yet learns to hand easy inputs back.

The losses are means over the batch's samples (a weighted mean keeps the per-sample
weights, it is not renormalised), so they split across devices exactly as cross-entropy
does (:func:`deepedge.train.ddp.global_batch_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepedge.models.meanet import ExtensionOutput, MEANet

__all__ = [
    "BlockTraining",
    "class_accuracy",
    "extension_loss",
    "extension_output_loss",
    "extension_targets",
    "per_class_accuracy",
    "select_hard_classes",
    "train_blocks",
    "train_classifier",
    "train_extension",
]

OTHER_WEIGHT = 0.3


@dataclass(frozen=True)
class BlockTraining:
    """SGD with momentum and a cosine schedule, ``epochs`` passes of ``batch`` samples."""

    epochs: int = 8
    batch: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0


def extension_targets(labels: torch.Tensor, hard_classes: torch.Tensor) -> torch.Tensor:
    """The extension head's label per sample: the class's place among ``hard_classes``,
    or ``len(hard_classes)`` ("not hard") for every other class."""
    targets = torch.full_like(labels, len(hard_classes))
    for place, c in enumerate(hard_classes.tolist()):
        targets[labels == c] = place
    return targets


def extension_loss(
    ext_logits: torch.Tensor,
    labels: torch.Tensor,
    hard_classes: torch.Tensor,
    other_weight: float = OTHER_WEIGHT,
) -> torch.Tensor:
    """Mean over the samples of the weighted cross-entropy of the extension head."""
    targets = extension_targets(labels, hard_classes)
    per_sample = F.cross_entropy(ext_logits, targets, reduction="none")
    weights = torch.where(targets == len(hard_classes), other_weight, 1.0)
    return (weights * per_sample).mean()


def extension_output_loss(output: ExtensionOutput, labels: torch.Tensor) -> torch.Tensor:
    """:func:`extension_loss` of a MEANet training only its extension (a job's loss)."""
    return extension_loss(output.logits, labels, output.hard_classes)


def _sgd(
    params: Iterable[nn.Parameter],
    n: int,
    cfg: BlockTraining,
    step: Callable[[torch.Tensor], torch.Tensor],
    on_epoch: Callable[[int, float], None] | None,
) -> None:
    """``cfg.epochs`` shuffled passes over ``n`` samples; ``step(indices)`` gives the loss."""
    params = list(params)
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(n / cfg.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        total, batches = 0.0, 0
        for idx in torch.randperm(n, generator=gen).split(cfg.batch):
            opt.zero_grad(set_to_none=True)
            loss = step(idx)
            loss.backward()
            opt.step()
            sched.step()
            total, batches = total + float(loss.detach()), batches + 1
        if on_epoch:
            on_epoch(epoch, total / max(batches, 1))


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: BlockTraining,
    on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    """Plain cross-entropy training of a whole classifier (the main block, the cloud)."""
    model.train()
    _sgd(model.parameters(), len(x), cfg, lambda i: F.cross_entropy(model(x[i]), y[i]), on_epoch)
    model.eval()


@torch.no_grad()
def per_class_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch: int = 256
) -> np.ndarray:
    """Top-1 accuracy of ``model`` per class (NaN for a class with no sample)."""
    model.eval()
    preds = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return class_accuracy(preds, y, num_classes)


def class_accuracy(preds: torch.Tensor, y: torch.Tensor, num_classes: int) -> np.ndarray:
    """Accuracy of predictions ``preds`` per class (NaN for a class with no sample)."""
    correct = np.bincount(y[preds == y].numpy(), minlength=num_classes).astype(float)
    counts = np.bincount(y.numpy(), minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / counts


def select_hard_classes(accuracy: np.ndarray, num_hard: int) -> list[int]:
    """The ``num_hard`` classes with the lowest accuracy (ties by class index; a class
    never seen counts as hard)."""
    acc = np.where(np.isnan(accuracy), -1.0, accuracy)
    order = sorted(range(len(acc)), key=lambda c: (acc[c], c))
    return sorted(order[:num_hard])


def train_extension(
    model: MEANet,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: BlockTraining,
    other_weight: float = OTHER_WEIGHT,
    on_epoch: Callable[[int, float], None] | None = None,
) -> None:
    """Train the adaptive and extension blocks; the main block is frozen (and its
    features, which do not change, are computed once)."""
    model.eval()
    for p in model.main.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        features = torch.cat([model.main_features(x[i : i + 256]) for i in range(0, len(x), 256)])
    model.adaptive.train()
    model.extension.train()

    def step(i: torch.Tensor) -> torch.Tensor:
        logits = model.extension_logits(x[i], features[i])
        return extension_loss(logits, y[i], model.hard_classes, other_weight)

    params = [*model.adaptive.parameters(), *model.extension.parameters()]
    try:
        _sgd(params, len(x), cfg, step, on_epoch)
    finally:
        for p in model.main.parameters():
            p.requires_grad_(True)
        model.eval()


def train_blocks(
    model: MEANet,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    cfg: BlockTraining,
    *,
    other_weight: float = OTHER_WEIGHT,
    on_epoch: Callable[[str, int, float], None] | None = None,
) -> list[int]:
    """Block-wise: the main block on every class, the hard classes from its accuracy on
    ``val``, then the adaptive and extension blocks. Returns the hard classes."""
    x, y = train
    train_classifier(
        model.main, x, y, cfg, (lambda e, v: on_epoch("main", e, v)) if on_epoch else None
    )
    accuracy = per_class_accuracy(model.main, *val, model.num_classes)
    hard = select_hard_classes(accuracy, model.num_hard)
    model.set_hard_classes(hard)
    train_extension(
        model,
        x,
        y,
        cfg,
        other_weight,
        (lambda e, v: on_epoch("extension", e, v)) if on_epoch else None,
    )
    return hard
