"""A trained deepedge checkpoint as a model ready to serve.

One function, :func:`load_served_model`, turns a checkpoint file into an eval-mode model
plus the facts a server and its clients need (input shape, class count). The replica
process (:mod:`deepedge.serving.replica`) and the CLI, which validates a checkpoint up
front before it starts any replica, call the same code, so a checkpoint that passes the
check is one the replicas can load.

A request is one image as raw ``uint8`` bytes in ``C×S×S`` (channel-major) order, the
layout of :class:`deepedge.data.ArrayDataset`. :meth:`ServedModel.to_input` normalises it
exactly as training did (:meth:`ArrayDataset.to_tensors`), so a served prediction equals
the trained model's prediction on the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepedge.data.arrays import PIXEL_MEAN, PIXEL_SCALE
from deepedge.errors import CheckpointError, SpecError
from deepedge.models import build_model
from deepedge.spec import DatasetSpec, JobSpec, parse_spec
from deepedge.train.checkpoint import load_checkpoint

__all__ = ["ServedModel", "input_shape", "load_served_model"]

_DDP_PREFIX = "module."


def input_shape(dataset: DatasetSpec) -> tuple[int, int, int]:
    """``(C, S, K)`` of the images a job trained on: channels, side, class count.

    Read off the spec, without generating or loading the data set (which for an image
    folder could take minutes): digits are grey (1 channel, as
    :func:`deepedge.data.load_digits` builds them), synthetic and image-folder data RGB;
    every loader resizes to ``dataset.image_size`` square.
    """
    if dataset.kind == "custom":
        raise SpecError(
            "dataset.kind 'custom' (data given in Python) has no shape in its spec",
            hint="serving supports jobs on synthetic, digits and image_folder data",
        )
    channels = 1 if dataset.kind == "digits" else 3
    return channels, dataset.image_size, dataset.num_classes


@dataclass(frozen=True, eq=False)
class ServedModel:
    """An eval-mode model with the shape of its requests.

    ``input_shape`` is ``(C, S, S)`` of one image; ``payload_bytes`` the size of one
    request (a ``uint8`` image); ``job_name`` the job that trained it (for messages).
    """

    model: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    job_name: str

    @property
    def payload_bytes(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    def to_input(self, payload: bytes | bytearray | memoryview) -> torch.Tensor:
        """One request's bytes as a ``(1, C, S, S)`` float batch, normalised as in training
        (``(p/255 - PIXEL_MEAN) / PIXEL_SCALE``): other constants would shift every input
        the model sees and quietly change its predictions."""
        if len(payload) != self.payload_bytes:
            raise ValueError(f"expected {self.payload_bytes} bytes, got {len(payload)}")
        x = torch.frombuffer(bytearray(payload), dtype=torch.uint8).view(1, *self.input_shape)
        return x.float().mul_(1.0 / (255.0 * PIXEL_SCALE)).sub_(PIXEL_MEAN / PIXEL_SCALE)

    def predict(self, payload: bytes | bytearray | memoryview) -> int:
        """The class the model assigns to one request's image (a model with its own
        ``predict``, such as MEANet's edge, gives its answer; others their top-1)."""
        x = self.to_input(payload)
        with torch.inference_mode():
            predict = getattr(self.model, "predict", None)
            return int((predict(x) if predict else self.model(x).argmax(dim=1)).item())


def _state_dict(path: Path, state: dict[str, Any]) -> dict[str, torch.Tensor]:
    weights = state.get("model")
    if not isinstance(weights, dict) or not weights:
        raise CheckpointError(
            f"checkpoint {path} holds no model weights (no 'model' state dict; "
            f"keys: {', '.join(map(str, state)) or 'none'})",
            hint="serve a checkpoint written by a deepedge training run",
        )
    # A state dict saved from a DistributedDataParallel wrapper names every key
    # "module.<name>"; the bare model is what gets served.
    if all(isinstance(k, str) and k.startswith(_DDP_PREFIX) for k in weights):
        weights = {k[len(_DDP_PREFIX) :]: v for k, v in weights.items()}
    return weights


def _job(path: Path, state: dict[str, Any]) -> JobSpec:
    if "job" not in state:
        raise CheckpointError(
            f"checkpoint {path} records no job spec, so its model cannot be rebuilt",
            hint="serve a checkpoint written by a deepedge training run (it stores 'job')",
        )
    job = parse_spec(JobSpec, state["job"], source=f"checkpoint {path}")
    if job.model.arch == "custom" or job.custom is not None:
        raise SpecError(
            f"checkpoint {path} holds a custom model (job {job.name!r}, brought with "
            f"deepedge.fit); serving custom models is not supported yet",
            hint="serve a job trained with model.arch 'small_cnn' or 'resnet'",
        )
    return job


def load_served_model(path: str | Path) -> ServedModel:
    """Load, verify and rebuild the model in the checkpoint at ``path``, in eval mode.

    Every way the file can be wrong (missing, corrupt, not a deepedge checkpoint, no job
    in it, a custom model, weights that do not fit the job's architecture) raises a
    one-line :class:`~deepedge.errors.CheckpointError` or
    :class:`~deepedge.errors.SpecError`, never a traceback.
    """
    path = Path(path)
    state = load_checkpoint(path)
    if "meanet" in state and "job" not in state:
        return _served_meanet(path, state)
    job = _job(path, state)
    weights = _state_dict(path, state)
    channels, size, classes = input_shape(job.dataset)
    model = build_model(job.model, in_channels=channels, num_classes=classes, image_size=size)
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        problem = " ".join(str(exc).split())
        raise CheckpointError(
            f"checkpoint {path}: the weights do not fit job {job.name!r}'s "
            f"{job.model.arch} model: {problem[:300]}",
            hint="the checkpoint's job spec and weights disagree; use the run's own file",
        ) from exc
    model.eval()
    return ServedModel(
        model=model, input_shape=(channels, size, size), num_classes=classes, job_name=job.name
    )


def _served_meanet(path: Path, state: dict[str, Any]) -> ServedModel:
    """The edge or cloud model of a ``deepedge meanet train`` checkpoint (which records its
    data set's config instead of a job)."""
    from deepedge.meanet.pipeline import model_from_checkpoint

    model, cfg, names, _ = model_from_checkpoint(path, state)
    channels = 1 if cfg.data == "digits" else 3
    model.eval()
    return ServedModel(
        model=model,
        input_shape=(channels, cfg.image_size, cfg.image_size),
        num_classes=len(names),
        job_name=f"meanet-{cfg.data}",
    )
