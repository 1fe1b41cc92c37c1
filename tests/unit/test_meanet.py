"""MEANet's blocks, block-wise training, exit rule, MAC counting and threshold sweep."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepedge.errors import SpecError
from deepedge.meanet import (
    BlockMacs,
    BlockTraining,
    ExitOutputs,
    ExitRule,
    MEANet,
    SweepPoint,
    block_macs,
    cloud_model,
    count_macs,
    edge_distribution,
    exit_costs,
    extension_loss,
    extension_targets,
    knee,
    pareto_front,
    per_class_accuracy,
    route,
    select_hard_classes,
    train_blocks,
)
from deepedge.models import build_model, estimate_training_memory_mb, model_signature
from deepedge.spec import ModelSpec


def tiny(num_classes: int = 6) -> MEANet:
    torch.manual_seed(0)
    return MEANet(3, num_classes, width=4, depth=1, adaptive_channels=4)


def test_blocks_give_both_exits_and_the_zoo_builds_signs_and_sizes_meanet() -> None:
    model = tiny()
    x = torch.randn(5, 3, 16, 16)
    main, ext = model.exits(x)
    assert main.shape == (5, 6) and ext.shape == (5, 3 + 1)  # 3 hard classes + "not hard"
    assert torch.allclose(model(x), main)  # forward is the main block
    built = build_model(
        ModelSpec(arch="meanet", width=4, depth=1, blocks="main"),
        in_channels=3,
        num_classes=20,
        image_size=16,
    )
    assert isinstance(built, MEANet) and built.num_hard == 10
    assert len(model_signature(built, (3, 16, 16))) == 16
    assert estimate_training_memory_mb(built, (3, 16, 16), 8) > 0
    with pytest.raises(SpecError, match="at least 4 classes"):
        build_model(
            ModelSpec(arch="meanet", blocks="main"), in_channels=3, num_classes=3, image_size=16
        )
    state = model.state_dict()
    assert "hard_classes" in state  # saved with the weights
    with pytest.raises(ValueError, match="distinct hard classes"):
        model.set_hard_classes([1, 1, 2])
    with pytest.raises(ValueError, match="outside"):
        model.set_hard_classes([1, 2, 9])


def test_extension_targets_and_loss_weight_the_easy_classes() -> None:
    hard = torch.tensor([4, 1])
    labels = torch.tensor([0, 1, 4, 3, 1])
    assert extension_targets(labels, hard).tolist() == [2, 1, 0, 2, 1]
    logits = torch.randn(5, 3)
    full = extension_loss(logits, labels, hard, other_weight=0.3)
    per = torch.nn.functional.cross_entropy(
        logits, extension_targets(labels, hard), reduction="none"
    )
    w = torch.tensor([0.3, 1, 1, 0.3, 1])
    assert full.item() == pytest.approx((w * per).mean().item())
    # a mean over samples: any split, weighted by its share, sums to the whole
    halves = (
        extension_loss(logits[:2], labels[:2], hard, 0.3) * 2 / 5
        + extension_loss(logits[2:], labels[2:], hard, 0.3) * 3 / 5
    )
    assert halves.item() == pytest.approx(full.item())


def test_the_hard_classes_are_the_least_accurate_half() -> None:
    acc = torch.tensor([0.9, 0.2, 0.5, 0.95, 0.2, float("nan")]).numpy()
    assert select_hard_classes(acc, 3) == [1, 4, 5]  # NaN (never seen) counts as hard
    model = nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 2))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 2, 2])  # class 2 never predicted
    assert per_class_accuracy(model, x, y, 3).tolist() == [1.0, 1.0, 0.0]


def test_block_wise_training_freezes_the_main_block_and_learns_the_extension() -> None:
    torch.manual_seed(1)
    n, k = 240, 4
    y = torch.arange(n) % k
    x = torch.randn(n, 3, 8, 8) * 0.3
    x[:, 0] += (y == 0).float()[:, None, None] * 2  # classes 0 and 1 are easy to tell
    x[:, 1] += (y == 1).float()[:, None, None] * 2
    x[:, 2, :4] += (y >= 2).float()[:, None, None]  # 2 and 3 differ only in a corner
    x[:, 2, :2, :2] += (y == 3).float()[:, None, None] * 1.5
    model = MEANet(3, k, width=4, depth=1, adaptive_channels=4)
    cfg = BlockTraining(epochs=6, batch=32, lr=0.05)
    initial = {n: p.clone() for n, p in model.main.named_parameters()}
    stages: list[str] = []
    after_main: dict[str, torch.Tensor] = {}

    def on_epoch(stage: str, epoch: int, loss: float) -> None:
        stages.append(stage)
        if stage == "main" and epoch == cfg.epochs - 1:  # the main block as stage 1 left it
            after_main.update({n: p.clone() for n, p in model.main.named_parameters()})

    hard = train_blocks(model, (x, y), (x, y), cfg, on_epoch=on_epoch)
    assert stages == ["main"] * 6 + ["extension"] * 6
    assert len(hard) == 2 and model.hard_classes.tolist() == hard
    assert any(not torch.equal(initial[n], p) for n, p in model.main.named_parameters())
    for n, p in model.main.named_parameters():
        assert torch.equal(after_main[n], p)  # frozen during stage 2
        assert p.requires_grad  # and trainable again after it
    _, ext = model.exits(x)
    targets = extension_targets(y, model.hard_classes)
    assert (ext.argmax(1) == targets).float().mean() > 0.6  # it learned the hard classes


def outputs(main: list[list[float]], ext: list[list[float]], cloud=None, labels=None):
    return ExitOutputs(
        torch.tensor(main, dtype=torch.float32),
        torch.tensor(ext, dtype=torch.float32),
        torch.tensor(cloud, dtype=torch.float32) if cloud is not None else None,
        torch.tensor(labels if labels is not None else [0] * len(main)),
        torch.tensor([2, 3]),
    )


def test_route_exits_at_main_extension_or_cloud_by_entropy() -> None:
    big = 8.0
    out = outputs(
        main=[[big, 0, 0, 0], [0, 0, big, 0], [1, 1, 1, 1], [0.1, 0, 0, 0]],
        ext=[[0, 0, big], [big, 0, 0], [0, big, 0], [0, 0, 0]],  # hard 2, hard 3, "not hard"
        cloud=[[0, 9, 0, 0]] * 4,
        labels=[0, 2, 3, 1],
    )
    r = route(out, ExitRule(main_threshold=0.5, cloud_threshold=0.9))
    # 0: easy, confident -> main. 1: top-1 is hard -> extension, which says class 2.
    # 2: main unsure -> extension says hard class 3. 3: nothing sure -> cloud (class 1).
    assert r.exit.tolist() == [0, 1, 1, 2]
    assert r.prediction.tolist() == [0, 2, 3, 1]
    assert r.accuracy(out.labels) == 1.0
    assert r.share("cloud") == 0.25
    never = route(out, ExitRule(main_threshold=0.0, cloud_threshold=1.0))
    assert never.exit.tolist() == [1, 1, 1, 1]
    probs = edge_distribution(out.main, out.extension, out.hard_classes)
    assert torch.allclose(probs.sum(1), torch.ones(4))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        ExitRule(main_threshold=1.5)


def test_macs_are_counted_per_block_and_per_exit() -> None:
    assert count_macs(nn.Linear(10, 5), torch.zeros(1, 10)) == 50
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    assert count_macs(conv, torch.zeros(1, 3, 8, 8)) == 8 * 8 * 4 * 3 * 9
    model = tiny()
    cloud = cloud_model(3, 6, width=8, depth=1)
    macs = block_macs(model, cloud, (3, 16, 16))
    assert macs.main > 0 and macs.adaptive > 0 and macs.extension > 0
    assert macs.cloud > macs.main  # the cloud model is the bigger one
    routing = route(
        outputs(main=[[9, 0, 0, 0], [0, 0, 9, 0]], ext=[[0, 0, 9], [9, 0, 0]], cloud=[[0] * 4] * 2),
        ExitRule(0.5, 1.0),
    )
    cost = exit_costs(routing, BlockMacs(100, 10, 30, 1000), input_bytes=768)
    assert cost["edge_macs"] == pytest.approx((100 + 140) / 2)
    assert cost["sent_bytes"] == 0 and cost["cloud_share"] == 0


def point(acc: float, macs: float, cloud: float = 0.0) -> SweepPoint:
    return SweepPoint(0, 1, acc, 0, 0, cloud, macs, 0, 0)


def test_pareto_front_and_knee() -> None:
    pts = [point(0.5, 10), point(0.8, 20), point(0.7, 25), point(0.85, 60), point(0.86, 100)]
    assert [p.edge_macs for p in pareto_front(pts)] == [10, 20, 60, 100]
    assert knee(pts).edge_macs == 20  # most accuracy gained per MAC
    assert knee([point(0.9, 5, cloud=0.5)], max_cloud_share=0.1) is None
    assert math.isclose(knee([point(0.6, 5)]).accuracy, 0.6)


def _folder(root, classes: list[str], per_class: int = 2) -> None:
    from PIL import Image

    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            Image.new("RGB", (10, 10), (40 * i, 10 * j, 0)).save(root / name / f"{j}.png")


def test_cifar_layout_folders_give_train_and_test(tmp_path) -> None:
    from deepedge.errors import DataError
    from deepedge.meanet import MeanetConfig, load_data

    _folder(tmp_path / "c" / "train", ["cat", "dog", "owl", "yak"], 3)
    _folder(tmp_path / "c" / "test", ["cat", "dog", "owl", "yak"], 1)
    train, test = load_data(MeanetConfig(data="folder", path=str(tmp_path / "c"), image_size=8))
    assert (len(train), len(test)) == (12, 4)
    assert train.class_names == ("cat", "dog", "owl", "yak") and train.image_shape == (3, 8, 8)
    _folder(tmp_path / "d" / "train", ["cat", "dog", "owl", "yak"])
    _folder(tmp_path / "d" / "test", ["cat", "dog", "owl", "emu"])
    with pytest.raises(DataError, match="different classes"):
        load_data(MeanetConfig(data="folder", path=str(tmp_path / "d"), image_size=8))
    with pytest.raises(SpecError, match="needs a path"):
        MeanetConfig(data="folder")


def test_a_meanet_job_can_train_only_the_extension() -> None:
    from pydantic import ValidationError

    from deepedge.byo.hooks import job_loss
    from deepedge.data import make_synthetic
    from deepedge.meanet import extension_output_loss
    from deepedge.spec import DatasetSpec, JobSpec
    from deepedge.train import evaluate, job_model

    spec = ModelSpec(arch="meanet", width=4, depth=1, blocks="extension")
    job = JobSpec(
        model=spec,
        dataset=DatasetSpec(num_classes=6, image_size=16, train_size=64),
        global_batch=16,
    )
    data = make_synthetic(24, num_classes=6, image_size=16, seed=3)
    model = job_model(job, data)
    assert isinstance(model, MEANet) and model.extension_only
    assert not any(p.requires_grad for p in model.main.parameters())
    assert job_loss(job) is extension_output_loss
    x, y = data.to_tensors()
    out = model(x)
    assert out.logits.shape == (24, 4) and torch.equal(out.hard_classes, model.hard_classes)
    extension_output_loss(out, y).backward()  # only the trained blocks get gradients
    assert all(p.grad is None for p in model.main.parameters())
    assert all(p.grad is not None for p in model.extension.parameters())
    # accuracy is the edge's answer (main and extension together), not the main block's
    main, ext = model.exits(x)
    edge = edge_distribution(main, ext, model.hard_classes).argmax(1)
    assert evaluate(model, x, y) == pytest.approx(float((edge == y).float().mean()))
    assert job_loss(JobSpec()) is None  # the built-in cross-entropy elsewhere
    with pytest.raises(ValidationError, match="is for arch 'meanet'"):
        ModelSpec(arch="resnet", blocks="extension")
    with pytest.raises(ValidationError, match="trains block-wise"):
        ModelSpec(arch="meanet")  # every block at once would leave some unused by forward
    # the first stage: the main block only, with the built-in cross-entropy
    main_job = job.model_copy(update={"model": spec.model_copy(update={"blocks": "main"})})
    first = job_model(main_job, data)
    assert job_loss(main_job) is None and not first.extension_only
    torch.nn.functional.cross_entropy(first(x), y).backward()
    assert all(p.grad is not None for p in first.main.parameters())
    assert not any(
        p.requires_grad for p in [*first.adaptive.parameters(), *first.extension.parameters()]
    )
