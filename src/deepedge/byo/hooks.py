"""How a job's user code becomes a model, an optimiser and a loss in any process.

The built-in path (``JobSpec.model.arch`` small_cnn/resnet) is untouched: these hooks
answer ``None`` for it, or defer to it, so every caller (agents, profiler, interference
lab, coordinator) has one call for both kinds of job.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from deepedge.byo.code import resolve
from deepedge.errors import SpecError
from deepedge.spec import CustomSpec, JobSpec

__all__ = [
    "LossFn",
    "build_custom_model",
    "custom_memory_mb",
    "custom_signature",
    "custom_workload",
    "job_loss",
    "job_optimizer",
    "synthetic_batch",
]

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
"""``loss(outputs, targets)``: a scalar, the *mean* over the batch's samples."""


def _custom(job: JobSpec) -> CustomSpec:
    if job.custom is None:
        raise SpecError(f"job {job.name!r} has no custom model")
    return job.custom


def build_custom_model(job: JobSpec) -> nn.Module:
    """The user's model, built after ``torch.manual_seed(job.seed)`` (and given
    ``seed=job.seed`` when the factory takes it), so every process gets the same
    initial weights (the coordinator's are shipped to the agents all the same)."""
    custom = _custom(job)
    factory = resolve(custom.model, what="model factory", sys_path=custom.sys_path)
    torch.manual_seed(job.seed)
    model = factory(seed=job.seed) if custom.seeded else factory()
    if not isinstance(model, nn.Module):
        raise SpecError(
            f"the model factory {custom.model.name!r} returned a {type(model).__name__}, "
            "not a torch.nn.Module",
            hint="return the model instance, e.g. `return nn.Sequential(...)`",
        )
    return model


def job_optimizer(job: JobSpec, params: Any) -> torch.optim.Optimizer:
    """The job's optimiser over ``params``: the user's factory, or the ``optimizer`` spec."""
    from deepedge.train.ddp import build_optimizer

    custom = job.custom
    if custom is None or custom.optimizer is None:
        return build_optimizer(params, job.optimizer)
    factory = resolve(custom.optimizer, what="optimizer factory", sys_path=custom.sys_path)
    opt = factory(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise SpecError(
            f"the optimizer factory {custom.optimizer.name!r} returned a "
            f"{type(opt).__name__}, not a torch.optim.Optimizer",
            hint="e.g. `lambda params: torch.optim.AdamW(params, lr=1e-3)`",
        )
    return opt


def job_loss(job: JobSpec) -> LossFn | None:
    """The user's loss, MEANet's extension loss for a job that trains only the extension,
    or None for the built-in cross-entropy."""
    custom = job.custom
    if custom is None and job.model.blocks == "extension":
        from deepedge.meanet.training import extension_output_loss

        return extension_output_loss
    if custom is None or custom.loss is None:
        return None
    return resolve(custom.loss, what="loss", sys_path=custom.sys_path)


def custom_workload(job: JobSpec) -> str:
    """The knowledge-base workload of a custom job: its model's signature, its optimiser
    and the trainer's CPU class, as ``Retraining.workload`` is for built-in models."""
    custom = _custom(job)
    return f"{custom.signature}/{custom.optimizer_name}/idle"


def custom_memory_mb(custom: CustomSpec, batch: int) -> float:
    """Peak memory (MiB) to train at ``batch`` samples, without the data and the runtime:
    weights, gradients and optimiser state, plus every leaf module's output twice per
    sample (kept for backward, and its gradient), as
    :func:`deepedge.models.estimate_training_memory_mb` counts built-in models."""
    state = custom.param_bytes * (2 + custom.optimizer_slots)
    return (state + 2 * custom.activation_bytes * batch) / 2**20


def _forward_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError, AttributeError):
        return ""


def custom_signature(model: nn.Module, input_shape: Sequence[int], input_dtype: str) -> str:
    """16 hex digits naming the model's structure for the knowledge base.

    Covers each module's class (module and name), every parameter's and buffer's name,
    shape and dtype, the per-sample input shape and dtype, and the source of ``forward``
    of every class not from torch (two models of the same layers wired differently cost
    differently); not weight values. "custom" is part of it, so a user model never takes
    a built-in model's profile.
    """
    classes = [type(m) for _, m in model.named_modules()]
    own = sorted({c for c in classes if not c.__module__.startswith("torch.")}, key=str)
    payload = {
        "kind": "custom",
        "modules": [f"{c.__module__}.{c.__qualname__}" for c in classes],
        "params": [[n, list(p.shape), str(p.dtype)] for n, p in model.named_parameters()],
        "buffers": [[n, list(b.shape), str(b.dtype)] for n, b in model.named_buffers()],
        "forward": [hashlib.sha256(_forward_source(c).encode()).hexdigest()[:16] for c in own],
        "input": [list(input_shape), input_dtype],
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def synthetic_batch(custom: CustomSpec, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random inputs and targets shaped and typed as the job's data (the interference
    lab's training co-runner trains on these: its cost, not its result, matters)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(shape: list[int], dtype: str, high: int | None) -> torch.Tensor:
        if dtype == "int64":
            return torch.randint(0, max(1, high or 1), (batch, *shape), generator=gen)
        return torch.randn(batch, *shape, generator=gen)

    return (
        draw(custom.input_shape, custom.input_dtype, custom.input_high),
        draw(custom.target_shape, custom.target_dtype, custom.target_high),
    )
