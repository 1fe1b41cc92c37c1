"""Model zoo: shapes, no BatchNorm, deterministic init, signatures, memory estimates."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from deepedge.errors import SpecError
from deepedge.models import (
    ResNetSmall,
    SmallCNN,
    build_model,
    count_parameters,
    estimate_training_memory_mb,
    model_signature,
)
from deepedge.spec import ModelSpec

ARCHS = [ModelSpec(arch="small_cnn", width=8), ModelSpec(arch="resnet", width=8, depth=1)]


def _build(spec: ModelSpec, c: int = 3, k: int = 10, size: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec, in_channels=c, num_classes=k, image_size=size)


@pytest.mark.parametrize("spec", ARCHS, ids=lambda s: s.arch)
@pytest.mark.parametrize(("c", "size", "k"), [(3, 32, 10), (1, 16, 2), (3, 8, 50)])
def test_output_shapes(spec: ModelSpec, c: int, size: int, k: int) -> None:
    model = _build(spec, c=c, k=k, size=size)
    out = model(torch.randn(5, c, size, size))
    assert out.shape == (5, k)
    assert torch.isfinite(out).all()


def test_build_model_picks_the_architecture() -> None:
    assert isinstance(_build(ModelSpec(arch="small_cnn")), SmallCNN)
    deep = _build(ModelSpec(arch="resnet", depth=3))
    assert isinstance(deep, ResNetSmall) and len(deep.stages) == 9


@pytest.mark.parametrize(
    "spec",
    [*ARCHS, ModelSpec(arch="resnet", width=12, depth=3)],
    ids=lambda s: f"{s.arch}-{s.width}",
)
def test_no_batchnorm_anywhere(spec: ModelSpec) -> None:
    model = _build(spec)
    kinds = {type(m) for m in model.modules()}
    assert not any(issubclass(t, nn.modules.batchnorm._BatchNorm) for t in kinds)
    assert nn.GroupNorm in kinds


@pytest.mark.parametrize("spec", ARCHS, ids=lambda s: s.arch)
def test_per_sample_outputs_do_not_depend_on_batch_split(spec: ModelSpec) -> None:
    # The property uneven data parallelism relies on: a sample's output is the same in
    # any batch (GroupNorm, not BatchNorm), also in training mode.
    model = _build(spec).train()
    x = torch.randn(7, 3, 16, 16)
    whole = model(x)
    parts = torch.cat([model(x[:2]), model(x[2:])])
    assert torch.allclose(whole, parts, atol=1e-5)


@pytest.mark.parametrize("spec", ARCHS, ids=lambda s: s.arch)
def test_init_is_deterministic_given_the_seed(spec: ModelSpec) -> None:
    a, b, c = _build(spec, seed=1), _build(spec, seed=1), _build(spec, seed=2)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(
        not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_build_model_rejects_bad_shapes() -> None:
    with pytest.raises(SpecError, match="in_channels must be an int >= 1, got 0"):
        build_model(ModelSpec(), in_channels=0, num_classes=10, image_size=32)
    with pytest.raises(SpecError, match="image_size"):
        build_model(ModelSpec(), in_channels=3, num_classes=10, image_size=4)


def test_signature_stable_and_sensitive() -> None:
    spec = ModelSpec(arch="resnet", width=8, depth=1)
    sig = model_signature(_build(spec, seed=0), (3, 32, 32))
    assert sig == model_signature(_build(spec, seed=5), (3, 32, 32))  # weights don't matter
    assert len(sig) == 16 and int(sig, 16) >= 0
    others = {
        model_signature(_build(ModelSpec(arch="resnet", width=12, depth=1)), (3, 32, 32)),
        model_signature(_build(ModelSpec(arch="resnet", width=8, depth=2)), (3, 32, 32)),
        model_signature(_build(ModelSpec(arch="small_cnn", width=8)), (3, 32, 32)),
        model_signature(_build(spec), (3, 16, 16)),
        model_signature(_build(spec, k=5), (3, 32, 32)),
    }
    assert sig not in others and len(others) == 5
    with pytest.raises(SpecError, match="input_shape"):
        model_signature(_build(spec), (32, 32))


def test_count_parameters() -> None:
    model = nn.Linear(4, 3)
    assert count_parameters(model) == 15
    model.bias.requires_grad_(False)
    assert count_parameters(model) == 12
    assert count_parameters(_build(ModelSpec(width=16))) > count_parameters(
        _build(ModelSpec(width=8))
    )


@settings(max_examples=8, deadline=None)
@given(b1=st.integers(1, 256), extra=st.integers(1, 256))
def test_memory_estimate_grows_with_batch(b1: int, extra: int) -> None:
    model = _MODEL_CACHE.setdefault("m", _build(ARCHS[0]))
    small = estimate_training_memory_mb(model, (3, 32, 32), b1)
    big = estimate_training_memory_mb(model, (3, 32, 32), b1 + extra)
    assert 0 < small < big


_MODEL_CACHE: dict[str, nn.Module] = {}


def test_memory_estimate_components() -> None:
    model = _build(ModelSpec(arch="resnet", width=8, depth=1))
    params_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    one = estimate_training_memory_mb(model, (3, 32, 32), 1)
    two = estimate_training_memory_mb(model, (3, 32, 32), 2)
    per_sample = two - one
    # weights + grads + momentum, plus a linear activation term.
    assert one - per_sample == pytest.approx(3 * params_mb, rel=1e-6)
    assert estimate_training_memory_mb(model, (3, 32, 32), 1, optimizer="adam") == pytest.approx(
        one + params_mb, rel=1e-6
    )
    # Activations of a 32x32 input: at least the first feature map, 8 ch x 32 x 32 floats.
    assert per_sample > 8 * 32 * 32 * 4 / 2**20
    assert model.training  # the probe pass restored the mode
    with pytest.raises(SpecError, match="batch must be an int >= 1, got 0"):
        estimate_training_memory_mb(model, (3, 32, 32), 0)
    with pytest.raises(SpecError, match="'lamb'"):
        estimate_training_memory_mb(model, (3, 32, 32), 1, optimizer="lamb")
