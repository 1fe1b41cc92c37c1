"""Small image classifiers sized for edge devices.

No BatchNorm, anywhere. deepedge splits one global batch *unevenly* across processes
(device ``i`` computes ``b_i`` samples) and relies on the summed per-rank gradients being
exactly the single-process full-batch SGD gradient. BatchNorm breaks that: its statistics
(and so every sample's output and gradient) depend on which other samples share the local
batch, and its running stats would diverge per rank. GroupNorm normalises each sample on
its own, so the loss is a plain sum over samples and the split cannot change the result.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ResNetSmall", "SmallCNN", "group_norm"]


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the most groups ``<= max_groups`` that divide ``channels``.

    Per-sample normalisation: see the module docstring for why not BatchNorm.
    """
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), group_norm(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Three conv stages (``width``, ``2·width``, ``4·width`` channels) with 2x2 max-pooling
    between them, global average pooling and a linear head.

    Global pooling makes the network accept any image size >= 8, so one architecture
    serves 16x16 digits and 32x32+ colour images alike.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_block(in_channels, w),
            *_conv_block(w, w),
            nn.MaxPool2d(2),
            *_conv_block(w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) with GroupNorm and a 1x1 projection shortcut
    when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = group_norm(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), group_norm(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """CIFAR-style ResNet: a 3x3 stem, three stages of ``depth`` basic blocks at
    ``width``, ``2·width``, ``4·width`` channels (stride 2 entering stages 2 and 3),
    global average pooling, linear head. ``depth=3, width=16`` is ResNet-20's shape."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_block(in_channels, width))
        blocks: list[nn.Module] = []
        cin = width
        for stage in range(3):
            cout = width * 2**stage
            for b in range(depth):
                blocks.append(BasicBlock(cin, cout, stride=2 if stage > 0 and b == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last norm of each residual branch so every block starts as the identity:
        # standard trick that makes deeper variants train stably without BatchNorm's help.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.norm2.weight)
        bound = 1 / math.sqrt(self.head.in_features)
        nn.init.uniform_(self.head.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))))
