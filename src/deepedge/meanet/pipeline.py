"""Train MEANet and its cloud model on a data set, then evaluate every exit configuration:
what ``deepedge meanet train|eval`` and ``bench/meanet.py`` run.

Data: the procedural shapes at any number of classes (20 by default, so "easy" and "hard"
halves mean something), scikit-learn's digits (real, 10 classes), or a CIFAR-layout folder
of your own (``root/train/<class>/*.png`` and ``root/test/<class>/*.png``; one folder of
class directories is split 80/20). The hard classes are chosen on a validation part held
out of the training set, never on the test set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from deepedge.data import ArrayDataset, load_digits, load_image_folder, make_synthetic
from deepedge.data.arrays import split_train_test
from deepedge.data.synthetic import split_seed
from deepedge.errors import DataError, SpecError
from deepedge.meanet.costs import DEFAULT_ENERGY, BlockMacs, EnergyModel, block_macs, exit_costs
from deepedge.meanet.exits import ExitOutputs, ExitRule, Routing, exit_outputs, route
from deepedge.meanet.sweep import SweepPoint, knee, pareto_front, sweep
from deepedge.meanet.training import (
    BlockTraining,
    class_accuracy,
    train_blocks,
    train_classifier,
)
from deepedge.models.meanet import MEANet, cloud_model
from deepedge.train import load_checkpoint, save_checkpoint

__all__ = [
    "TEST_FILE",
    "Evaluation",
    "MeanetConfig",
    "MeanetModels",
    "evaluate",
    "load_data",
    "load_models",
    "model_from_checkpoint",
    "train_models",
]

DataKind = Literal["synthetic", "digits", "folder"]
TEST_FILE = "test.npz"
"""The test set saved beside the checkpoints, whose images a served MEANet is sent."""


@dataclass(frozen=True)
class MeanetConfig:
    """The data set and the models' sizes; saved with the checkpoints."""

    data: DataKind = "synthetic"
    path: str | None = None
    classes: int = 20
    image_size: int = 32
    train_size: int = 4000
    test_size: int = 1000
    width: int = 16
    depth: int = 1
    cloud_width: int = 32
    cloud_depth: int = 3
    epochs: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.data == "folder" and not self.path:
            raise SpecError("the folder data set needs a path", hint="give --path ROOT")
        if self.data == "synthetic" and self.classes < 4:
            raise SpecError(f"MEANet needs at least 4 classes, got {self.classes}")


def load_data(cfg: MeanetConfig) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of ``cfg``'s data set."""
    if cfg.data == "synthetic":
        return tuple(  # type: ignore[return-value]
            make_synthetic(
                n,
                num_classes=cfg.classes,
                image_size=cfg.image_size,
                seed=split_seed(cfg.seed, split),
            )
            for n, split in ((cfg.train_size, "train"), (cfg.test_size, "test"))
        )
    if cfg.data == "digits":
        return split_train_test(load_digits(image_size=cfg.image_size), 0.2, seed=cfg.seed)
    root = Path(cfg.path or "")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = load_image_folder(root / "train", image_size=cfg.image_size, seed=cfg.seed)
        test = load_image_folder(root / "test", image_size=cfg.image_size, seed=cfg.seed)
        if train.class_names != test.class_names:
            raise DataError(
                f"{root}/train and {root}/test hold different classes",
                hint="give both splits the same class directories",
            )
        return train, test
    return split_train_test(
        load_image_folder(root, image_size=cfg.image_size, seed=cfg.seed), 0.2, seed=cfg.seed
    )


@dataclass
class MeanetModels:
    """The trained edge model, the cloud model, and how they were made."""

    edge: MEANet
    cloud: torch.nn.Module
    config: MeanetConfig
    class_names: tuple[str, ...]
    train_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def hard_classes(self) -> list[int]:
        """The edge model's hard classes (its buffer, saved with its weights)."""
        return self.edge.hard_classes.tolist()

    def save(self, out: Path) -> dict[str, Path]:
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "config": asdict(self.config),
            "class_names": list(self.class_names),
            "train_seconds": self.train_seconds,
        }
        paths = {"edge": out / "meanet-edge.ckpt", "cloud": out / "meanet-cloud.ckpt"}
        save_checkpoint(paths["edge"], {"model": self.edge.state_dict(), "meanet": meta})
        save_checkpoint(paths["cloud"], {"model": self.cloud.state_dict(), "meanet": meta})
        return paths


def _build(cfg: MeanetConfig, channels: int, classes: int) -> tuple[MEANet, torch.nn.Module]:
    torch.manual_seed(cfg.seed)
    edge = MEANet(channels, classes, width=cfg.width, depth=cfg.depth)
    cloud = cloud_model(channels, classes, width=cfg.cloud_width, depth=cfg.cloud_depth)
    return edge, cloud


def train_models(
    cfg: MeanetConfig,
    train: ArrayDataset,
    *,
    on_epoch: Callable[[str, int, float], None] | None = None,
) -> MeanetModels:
    """Block-wise edge training (hard classes from a 20 % validation part of ``train``)
    and the cloud model on all of ``train``."""
    if train.num_classes < 4:
        raise SpecError(f"MEANet needs at least 4 classes, the data set has {train.num_classes}")
    fit, val = split_train_test(train, 0.2, seed=cfg.seed)
    edge, cloud = _build(cfg, train.image_shape[0], train.num_classes)
    schedule = BlockTraining(epochs=cfg.epochs, seed=cfg.seed)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    train_blocks(edge, fit.to_tensors(), val.to_tensors(), schedule, on_epoch=on_epoch)
    seconds["edge"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x, y = train.to_tensors()
    train_classifier(
        cloud, x, y, schedule, (lambda e, v: on_epoch("cloud", e, v)) if on_epoch else None
    )
    seconds["cloud"] = time.perf_counter() - t0
    return MeanetModels(edge, cloud, cfg, train.class_names, seconds)


def load_models(out: Path) -> MeanetModels:
    """The models :meth:`MeanetModels.save` wrote to ``out``."""
    paths = {"edge": out / "meanet-edge.ckpt", "cloud": out / "meanet-cloud.ckpt"}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"no MEANet checkpoint at {', '.join(missing)}",
            hint="train first: deepedge meanet train --out DIR",
        )
    edge, cfg, names, meta = model_from_checkpoint(paths["edge"], load_checkpoint(paths["edge"]))
    cloud, *_ = model_from_checkpoint(paths["cloud"], load_checkpoint(paths["cloud"]))
    if not isinstance(edge, MEANet) or isinstance(cloud, MEANet):
        raise DataError(
            f"{out} does not hold an edge and a cloud model under their names",
            hint="train it with deepedge meanet train",
        )
    return MeanetModels(edge, cloud, cfg, names, dict(meta.get("train_seconds", {})))


def model_from_checkpoint(
    path: Path, state: dict[str, Any]
) -> tuple[torch.nn.Module, MeanetConfig, tuple[str, ...], dict[str, Any]]:
    """The edge or cloud model one :meth:`MeanetModels.save` checkpoint holds (which one
    its weights tell), with its config, class names and metadata."""
    try:
        meta = state["meanet"]
        cfg = MeanetConfig(**meta["config"])
        names = tuple(meta["class_names"])
        weights = state["model"]
        is_edge = "main.stem.0.weight" in weights
        channels = int(weights["main.stem.0.weight" if is_edge else "stem.0.weight"].shape[1])
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path} is not a MEANet checkpoint ({type(exc).__name__}: {exc})",
            hint="train it with deepedge meanet train",
        ) from exc
    edge, cloud = _build(cfg, channels, len(names))
    model = edge if is_edge else cloud
    try:
        model.load_state_dict(weights)
    except (RuntimeError, ValueError) as exc:
        raise DataError(
            f"{path}: the weights do not fit its MEANet config: {str(exc).splitlines()[0]}",
            hint="use the checkpoint deepedge meanet train wrote, unchanged",
        ) from exc
    return model, cfg, names, meta


@dataclass
class Evaluation:
    """The four configurations of issue 17 side by side, and the whole sweep."""

    rows: dict[str, dict[str, float]]
    sweep: list[SweepPoint]
    front: list[SweepPoint]
    knee: SweepPoint | None
    macs: BlockMacs
    per_class_accuracy: list[float]
    energy_source: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "knee": self.knee.as_dict() if self.knee else None,
            "sweep": [p.as_dict() for p in self.sweep],
            "front": [p.as_dict() for p in self.front],
            "macs": asdict(self.macs),
            "per_class_accuracy_main": self.per_class_accuracy,
            "energy_source": self.energy_source,
        }


def evaluate(
    models: MeanetModels,
    test: ArrayDataset,
    *,
    max_cloud_share: float = 0.1,
    energy: EnergyModel = DEFAULT_ENERGY,
) -> Evaluation:
    """Accuracy, edge MACs, share sent to the cloud and energy per input for: the main
    block alone, main + extension for every input, the cloud for every input, and
    MEANet at the threshold sweep's knee."""
    x, y = test.to_tensors()
    outputs = exit_outputs(models.edge, models.cloud, x, y)
    macs = block_macs(models.edge, models.cloud, test.image_shape)
    input_bytes = int(test.images[0].nbytes)
    points = sweep(outputs, macs, input_bytes, energy=energy)
    best = knee(points, max_cloud_share)
    rows = {
        "main block only": _row(
            Routing(torch.zeros_like(y), outputs.main.argmax(1)), y, macs, input_bytes, energy
        ),
        "main + extension for every input": _row(
            route(outputs, ExitRule(0.0, 1.0)), y, macs, input_bytes, energy
        ),
        "cloud only": _cloud_only(outputs, macs, input_bytes, energy),
    }
    if best is not None:
        rows["MEANet at the knee"] = _row(
            route(outputs, ExitRule(best.main_threshold, best.cloud_threshold)),
            y,
            macs,
            input_bytes,
            energy,
        ) | {"main_threshold": best.main_threshold, "cloud_threshold": best.cloud_threshold}
    accuracy = class_accuracy(outputs.main.argmax(1), y, test.num_classes)
    return Evaluation(
        rows, points, pareto_front(points), best, macs, accuracy.tolist(), energy.source
    )


def _row(
    routing: Routing, y: torch.Tensor, macs: BlockMacs, input_bytes: int, energy: EnergyModel
) -> dict[str, float]:
    return {
        "accuracy": routing.accuracy(y),
        **exit_costs(routing, macs, input_bytes, energy),
        "main_share": routing.share("main"),
        "extension_share": routing.share("extension"),
    }


def _cloud_only(
    outputs: ExitOutputs, macs: BlockMacs, input_bytes: int, energy: EnergyModel
) -> dict[str, float]:
    assert outputs.cloud is not None
    accuracy = float((outputs.cloud.argmax(1) == outputs.labels).float().mean())
    return {
        "accuracy": accuracy,
        "edge_macs": 0.0,
        "sent_bytes": float(input_bytes),
        "cloud_share": 1.0,
        "energy_j": energy.joules(0.0, input_bytes),
        "main_share": 0.0,
        "extension_share": 0.0,
    }
