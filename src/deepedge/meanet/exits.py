"""Where each input leaves MEANet: at the main block, at the extension block, or in the
cloud, by softmax entropy (after MEANet's exit rule).

* An input **exits at the main block** when the main block's top-1 class is an easy one
  and its normalised entropy (entropy / log K) is under ``main_threshold``.
* Otherwise it runs the adaptive and extension blocks. Their answer is one distribution
  over every class: a hard class gets the extension's probability for it; an easy class
  gets the extension's "not hard" probability times the main block's probability for it
  among the easy classes. Its top-1 is the edge's answer.
* It **goes to the cloud** when that distribution's normalised entropy exceeds
  ``cloud_threshold``; the cloud model's answer replaces the edge's.

Every model runs once over a test set (:func:`exit_outputs`); any rule is then applied to
the stored logits (:func:`route`), so a threshold sweep costs no extra inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from deepedge.models.meanet import MEANet

__all__ = [
    "EXITS",
    "ExitOutputs",
    "ExitRule",
    "Routing",
    "edge_distribution",
    "exit_outputs",
    "route",
]

EXITS = ("main", "extension", "cloud")


@dataclass(frozen=True)
class ExitRule:
    """Normalised-entropy thresholds in [0, 1]: exit at the main block below
    ``main_threshold`` (easy top-1 only), go to the cloud above ``cloud_threshold``
    (1.0: never)."""

    main_threshold: float = 0.3
    cloud_threshold: float = 1.0

    def __post_init__(self) -> None:
        for name in ("main_threshold", "cloud_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    # The rule itself, for a batch of stored outputs (:func:`route`) and for one input at a
    # time as deployed (:class:`deepedge.meanet.offload.EdgeCloudClassifier`) alike.
    def exits_at_main(self, settles: torch.Tensor, main_entropy: torch.Tensor) -> torch.Tensor:
        """Whether each input leaves at the main block: an easy top-1, certain enough."""
        return settles & (main_entropy < self.main_threshold)

    def goes_to_cloud(self, edge_entropy: torch.Tensor) -> torch.Tensor:
        """Whether each input that ran the extension is too uncertain for the edge."""
        return edge_entropy > self.cloud_threshold


@dataclass(frozen=True)
class ExitOutputs:
    """Every model's logits for every input of a test set, and the labels."""

    main: torch.Tensor  # (N, K)
    extension: torch.Tensor  # (N, H + 1)
    cloud: torch.Tensor | None  # (N, K), None without a cloud model
    labels: torch.Tensor  # (N,)
    hard_classes: torch.Tensor  # (H,)

    # What every rule reads, computed once: a threshold sweep applies hundreds of rules.
    @cached_property
    def main_probs(self) -> torch.Tensor:
        return torch.softmax(self.main, 1)

    @cached_property
    def main_top(self) -> torch.Tensor:
        return self.main_probs.argmax(1)

    @cached_property
    def main_settles(self) -> torch.Tensor:
        """Whether the main block's top-1 is an easy class (it may exit there)."""
        return ~torch.isin(self.main_top, self.hard_classes)

    @cached_property
    def main_entropy(self) -> torch.Tensor:
        return normalised_entropy(self.main_probs)

    @cached_property
    def edge_probs(self) -> torch.Tensor:
        return edge_distribution(self.main, self.extension, self.hard_classes)

    @cached_property
    def edge_top(self) -> torch.Tensor:
        return self.edge_probs.argmax(1)

    @cached_property
    def edge_entropy(self) -> torch.Tensor:
        return normalised_entropy(self.edge_probs)


@dataclass(frozen=True)
class Routing:
    """Per input: where it exits (0 main, 1 extension, 2 cloud) and the final class."""

    exit: torch.Tensor
    prediction: torch.Tensor

    def accuracy(self, labels: torch.Tensor) -> float:
        return float((self.prediction == labels).float().mean())

    def share(self, where: str) -> float:
        return float((self.exit == EXITS.index(where)).float().mean())


def normalised_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row over log(number of columns): 0 certain, 1 uniform."""
    logp = torch.log(probs.clamp_min(1e-12))
    return -(probs * logp).sum(1) / math.log(probs.shape[1])


def edge_distribution(
    main_logits: torch.Tensor, ext_logits: torch.Tensor, hard_classes: torch.Tensor
) -> torch.Tensor:
    """The extension exit's probabilities over every class (see the module doc)."""
    k = main_logits.shape[1]
    hard = torch.zeros(k, dtype=torch.bool)
    hard[hard_classes] = True
    q = torch.softmax(ext_logits, 1)
    easy_probs = torch.softmax(main_logits.masked_fill(hard, float("-inf")), 1)
    out = easy_probs * q[:, -1:]
    out[:, hard_classes] = q[:, :-1]
    return out


@torch.no_grad()
def exit_outputs(
    model: MEANet,
    cloud: nn.Module | None,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int = 256,
) -> ExitOutputs:
    """Run every block (and the cloud model) once over ``x``."""
    model.eval()
    if cloud is not None:
        cloud.eval()
    mains, exts, clouds = [], [], []
    for i in range(0, len(x), batch):
        m, e = model.exits(x[i : i + batch])
        mains.append(m)
        exts.append(e)
        if cloud is not None:
            clouds.append(cloud(x[i : i + batch]))
    return ExitOutputs(
        torch.cat(mains),
        torch.cat(exts),
        torch.cat(clouds) if cloud is not None else None,
        y,
        model.hard_classes.clone(),
    )


def route(outputs: ExitOutputs, rule: ExitRule) -> Routing:
    """Apply ``rule`` to stored outputs."""
    at_main = rule.exits_at_main(outputs.main_settles, outputs.main_entropy)
    prediction = torch.where(at_main, outputs.main_top, outputs.edge_top)
    exit_ = torch.where(at_main, 0, 1)
    if outputs.cloud is not None:
        to_cloud = ~at_main & rule.goes_to_cloud(outputs.edge_entropy)
        prediction = torch.where(to_cloud, outputs.cloud.argmax(1), prediction)
        exit_[to_cloud] = 2
    return Routing(exit_, prediction)
