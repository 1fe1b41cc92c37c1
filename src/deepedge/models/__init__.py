"""Model zoo, signatures and memory estimates for edge training jobs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from torch import nn

from deepedge.errors import SpecError
from deepedge.models.cnn import ResNetSmall, SmallCNN, group_norm
from deepedge.models.meanet import MEANet
from deepedge.spec import ModelSpec

__all__ = [
    "MEANet",
    "ResNetSmall",
    "SmallCNN",
    "build_model",
    "count_parameters",
    "estimate_training_memory_mb",
    "group_norm",
    "model_signature",
]

# Extra per-parameter buffers each optimizer keeps: SGD momentum 1, Adam's two moments 2.
_OPTIMIZER_SLOTS = {"sgd": 1, "adam": 2}


def build_model(
    spec: ModelSpec, *, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    """Instantiate ``spec`` for the data set's shape.

    Initialisation draws from torch's global RNG only, so ``torch.manual_seed(s)`` before
    this call gives bit-identical weights on every rank — which is how workers start from
    the same model without shipping it.
    """
    for name, value, lo in (
        ("in_channels", in_channels, 1),
        ("num_classes", num_classes, 2),
        ("image_size", image_size, 8),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise SpecError(
                f"build_model: {name} must be an int >= {lo}, got {value!r}",
                hint="derive it from the data set (its image shape and class count)",
            )
    if spec.arch == "small_cnn":
        return SmallCNN(in_channels, num_classes, width=spec.width)
    if spec.arch == "resnet":
        return ResNetSmall(in_channels, num_classes, width=spec.width, depth=spec.depth)
    if spec.arch == "meanet":
        if num_classes < 4:
            raise SpecError(
                f"model arch 'meanet' needs at least 4 classes, the data set has {num_classes}",
                hint="MEANet splits the classes into an easy and a hard half",
            )
        return MEANet(in_channels, num_classes, width=spec.width, depth=spec.depth)
    raise SpecError(
        f"unknown model arch {spec.arch!r}", hint="use 'small_cnn', 'resnet' or 'meanet'"
    )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise SpecError(f"input_shape must be (C, H, W) positive ints, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def model_signature(model: nn.Module, input_shape: Sequence[int]) -> str:
    """16-hex-digit hash of the architecture, stable across processes and runs.

    Covers module class names in order, every parameter's name and shape, the parameter
    count and the per-sample ``(C, H, W)`` input shape — the things that determine cost —
    but not weight values, so a knowledge base can key measured step times by it.
    """
    shape = _check_shape(input_shape)
    payload = {
        "modules": [type(m).__name__ for _, m in model.named_modules()],
        "params": [[n, list(p.shape)] for n, p in model.named_parameters()],
        "count": count_parameters(model),
        "input": list(shape),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def activation_bytes(model: nn.Module, sample: torch.Tensor) -> int:
    """Bytes of the one-sample batch ``sample`` and of every leaf module's output for it,
    measured by a hooked forward pass in eval mode (the model's mode is restored)."""
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        outs = out if isinstance(out, tuple | list) else (out,)
        total += sum(t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total + sample.numel() * sample.element_size()


def _activation_bytes_per_sample(model: nn.Module, shape: tuple[int, int, int]) -> int:
    """:func:`activation_bytes` for one zero image of ``shape``, in the model's dtype."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    return activation_bytes(model, torch.zeros((1, *shape), dtype=dtype, device=device))


def estimate_training_memory_mb(
    model: nn.Module, input_shape: Sequence[int], batch: int, *, optimizer: str = "sgd"
) -> float:
    """Rough peak memory (MiB) to train ``model`` on batches of ``batch`` samples.

    ``weights + grads + optimizer state`` (1 extra copy for SGD momentum, 2 for Adam) plus
    ``2 x activations x batch``: every leaf module's output is measured for one sample by
    a hooked forward pass and counted twice, once as saved for backward and once for its
    gradient during backward. Deliberately simple and slightly pessimistic (in-place ReLUs
    are counted); it excludes the Python/torch runtime (~150-300 MiB per process), which
    the caller adds, and is meant to rule out devices that cannot hold a job at all, not
    to predict RSS exactly.
    """
    shape = _check_shape(input_shape)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SpecError(f"batch must be an int >= 1, got {batch!r}")
    if optimizer not in _OPTIMIZER_SLOTS:
        raise SpecError(f"unknown optimizer {optimizer!r}", hint="use 'sgd' or 'adam'")
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state = param_bytes * (2 + _OPTIMIZER_SLOTS[optimizer])
    acts = 2 * _activation_bytes_per_sample(model, shape) * batch
    return (state + acts) / 2**20
