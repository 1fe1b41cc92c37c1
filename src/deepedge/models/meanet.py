"""MEANet: a main block, an adaptive block and an extension block at the edge, and a
larger model in the cloud, with exits at each (after MEANet, seed 002).

* The **main block** is a CIFAR-style ResNet (:class:`~deepedge.models.cnn.ResNetSmall`)
  over every class. It answers the *easy* classes on its own, and its last stage's feature
  map is shared with the extension block.
* The **adaptive block** is a small CNN on the raw input whose feature map has the main
  block's last-stage resolution: features the frozen main block does not have.
* The **extension block** takes both feature maps, concatenated, and classifies the *hard*
  classes (the half of the classes with the lowest per-class validation accuracy of the
  main block) plus one more label, "not a hard class", which sends the input back to the
  main block's best easy class.
* The **cloud model** is a deeper, wider ResNet over every class, behind a slow link.

As everywhere in deepedge, no BatchNorm (GroupNorm): the training split across devices
must not change any sample's output (see :mod:`deepedge.models.cnn`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from deepedge.models.cnn import BasicBlock, ResNetSmall, group_norm

__all__ = ["AdaptiveBlock", "ExtensionBlock", "ExtensionOutput", "MEANet", "cloud_model"]


class ExtensionOutput(NamedTuple):
    """What a MEANet training only its extension gives per batch: the extension head's
    logits and the hard classes they stand for (what its loss needs to relabel)."""

    logits: torch.Tensor
    hard_classes: torch.Tensor


class AdaptiveBlock(nn.Module):
    """Three 3x3 conv layers on the raw image, the last two with stride 2: a feature map of
    ``channels`` at a quarter of the input's side, the main block's last-stage size."""

    def __init__(self, in_channels: int, channels: int = 16) -> None:
        super().__init__()
        half = max(channels // 2, 4)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, half, 3, padding=1, bias=False),
            group_norm(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, channels, 3, stride=2, padding=1, bias=False),
            group_norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
            group_norm(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ExtensionBlock(nn.Module):
    """``blocks`` residual blocks of ``channels`` on the concatenated main and adaptive
    feature maps, global pooling, and a head over the hard classes plus "not hard" (the
    last logit). Wider than the main block's last stage: it is the edge's heavy path,
    which only the inputs the main block cannot settle take."""

    def __init__(self, in_channels: int, channels: int, num_hard: int, blocks: int = 2) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(BasicBlock(in_channels if i == 0 else channels, channels, 1) for i in range(blocks))
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_hard + 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(features)))


class MEANet(nn.Module):
    """The edge part of MEANet. ``forward`` gives the main block's logits over every class
    (what a plain classifier gives, so MEANet trains and evaluates as one), or, after
    :meth:`train_extension_only`, an :class:`ExtensionOutput`; :meth:`exits` gives both
    exits' logits from one pass through the main block, :meth:`predict` the edge's class.

    ``hard_classes`` (a buffer, saved with the weights) holds the hard classes in the
    extension head's order; it is set from measured accuracy by
    :func:`deepedge.meanet.select_hard_classes` after the main block is trained.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        width: int = 16,
        depth: int = 3,
        adaptive_channels: int = 16,
        extension_channels: int | None = None,
        extension_blocks: int = 2,
    ) -> None:
        super().__init__()
        if num_classes < 4:
            raise ValueError(
                f"MEANet needs at least 4 classes (easy and hard halves), got {num_classes}"
            )
        self.num_classes = num_classes
        self.main = ResNetSmall(in_channels, num_classes, width=width, depth=depth)
        self.adaptive = AdaptiveBlock(in_channels, adaptive_channels)
        num_hard = num_classes // 2
        self.extension = ExtensionBlock(
            4 * width + adaptive_channels,
            extension_channels or 8 * width,
            num_hard,
            extension_blocks,
        )
        self.register_buffer("hard_classes", torch.arange(num_classes - num_hard, num_classes))
        self.extension_only = False

    @property
    def num_hard(self) -> int:
        return int(self.hard_classes.numel())

    def main_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.main.stages(self.main.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | ExtensionOutput:
        if self.extension_only:
            with torch.no_grad():
                features = self.main_features(x)
            return ExtensionOutput(self.extension_logits(x, features), self.hard_classes)
        return self.main(x)

    def train_extension_only(self) -> MEANet:
        """Freeze the main block; ``forward`` then runs the adaptive and extension blocks
        for the extension's loss (:func:`deepedge.meanet.extension_output_loss`)."""
        for p in self.main.parameters():
            p.requires_grad_(False)
        self.extension_only = True
        return self

    def train_main_only(self) -> MEANet:
        """Freeze the adaptive and extension blocks: ``forward`` (the main block) is then
        all a job trains, the first block-wise stage."""
        for block in (self.adaptive, self.extension):
            for p in block.parameters():
                p.requires_grad_(False)
        return self

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The edge's class per input: the main block's top-1, or, once the extension is
        trained for re-training (:meth:`train_extension_only`), the top-1 of the main and
        extension blocks together (the extension exit of :mod:`deepedge.meanet.exits`)."""
        if not self.extension_only:
            return self.forward(x).argmax(1)  # type: ignore[union-attr]
        from deepedge.meanet.exits import edge_distribution

        main, ext = self.exits(x)
        return edge_distribution(main, ext, self.hard_classes).argmax(1)

    def exits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(main logits over all classes, extension logits over hard classes + "not hard")."""
        features = self.main_features(x)
        main_logits = self.main.head(self.main.pool(features))
        return main_logits, self.extension_logits(x, features)

    def extension_logits(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The extension block on ``features`` (the main block's, for the same ``x``)."""
        return self.extension(torch.cat([features, self.adaptive(x)], dim=1))

    def set_hard_classes(self, classes: torch.Tensor | list[int]) -> None:
        hard = torch.as_tensor(classes, dtype=torch.long)
        if hard.numel() != self.num_hard or len(set(hard.tolist())) != hard.numel():
            raise ValueError(f"need {self.num_hard} distinct hard classes, got {hard.tolist()}")
        if int(hard.min()) < 0 or int(hard.max()) >= self.num_classes:
            raise ValueError(f"hard classes {hard.tolist()} outside 0..{self.num_classes - 1}")
        self.hard_classes.copy_(hard)


def cloud_model(
    in_channels: int, num_classes: int, *, width: int = 32, depth: int = 3
) -> nn.Module:
    """The cloud's classifier: the main block's ResNet twice as wide (about 4x the MACs)."""
    return ResNetSmall(in_channels, num_classes, width=width, depth=depth)
