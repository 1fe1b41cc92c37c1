"""A job brought from Python (:class:`Job`) and its early checks (:func:`prepare`).

Everything a user can get wrong is found here, on the coordinator, before a device
boots, and reported as one line with a hint (a :class:`~deepedge.errors.SpecError`):
code that cannot be imported or pickled, a factory that fails or returns no module, data
of the wrong kind or shape, a model that cannot run a batch of it, a loss that is not a
finite scalar or is not the mean over the batch, parameters the loss never reaches (DDP
would hang on them), BatchNorm (uneven batches would not give exact gradients), an
optimiser factory that returns no optimiser. What the checks measure on the real model
(its signature, memory per sample, optimiser state) goes into the job spec, for the
planner and the knowledge base.

The contract, as the README states it:

* ``model``: a factory, called as ``factory()`` after ``torch.manual_seed(seed)``, or as
  ``factory(seed=seed)`` when it has a ``seed`` parameter; returns an ``nn.Module``.
* ``data`` / ``eval_data``: ``(X, y)`` arrays or tensors, or a map-style torch
  ``Dataset`` of ``(x, y)`` pairs; read once (floats as float32, integers as int64).
* ``loss(outputs, targets)``: a scalar, the *mean* over the batch's samples (default:
  cross-entropy on class indices). Uneven local batches stay exact because of it.
* ``optimizer``: a factory ``params -> torch.optim.Optimizer``, or the built-in
  ``OptimizerSpec`` (``{"name": "adam", "lr": 1e-3}``); default SGD, lr 0.05, momentum 0.9.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deepedge.byo.code import code_spec, default_sys_path, resolve
from deepedge.byo.data import TensorData, as_tensor_data
from deepedge.errors import SpecError
from deepedge.spec import CodeSpec, JobSpec, OptimizerSpec, parse_spec

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Job", "PreparedJob", "prepare"]

SOURCE = "deepedge.Job"
CHECK_BATCH = 8  # samples the checks run the model and loss on


@dataclass(frozen=True)
class Job:
    """A re-training job of your own model on your own data (see the module doc for the
    contract of each field). ``deepedge.fit(job, cluster)`` checks and runs it."""

    model: Callable[..., Any] | str
    data: Any
    eval_data: Any = None
    loss: Callable[..., Any] | str | None = None
    optimizer: Callable[..., Any] | str | OptimizerSpec | Mapping[str, Any] | None = None
    epochs: int = 2
    global_batch: int = 64
    seed: int = 0
    name: str = "byo"


@dataclass(frozen=True)
class PreparedJob:
    """A checked job: its spec (what the devices are sent), its data and its model with
    the initial weights every device starts from."""

    spec: JobSpec
    train: TensorData
    eval: TensorData | None
    model: nn.Module


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else '(no message)'}"


def _optimizer(value: Any) -> tuple[OptimizerSpec, CodeSpec | None]:
    """The built-in optimiser spec and the user's factory (None: the spec is used)."""
    if value is None:
        return OptimizerSpec(), None
    if isinstance(value, OptimizerSpec):
        return value, None
    if isinstance(value, Mapping):
        return parse_spec(OptimizerSpec, dict(value), source=f"{SOURCE}.optimizer"), None
    if isinstance(value, str) and ":" not in value:
        return parse_spec(OptimizerSpec, {"name": value}, source=f"{SOURCE}.optimizer"), None
    return OptimizerSpec(), code_spec(value, "optimizer factory")


def _dtype(a: Any) -> str:
    return "int64" if str(a.dtype) in ("int64", "torch.int64") else "float32"


def prepare(job: Job) -> PreparedJob:
    """Check ``job`` on the coordinator and turn it into a :class:`PreparedJob`; every
    problem is a one-line SpecError (see the module doc)."""
    if not isinstance(job, Job):
        raise SpecError(
            f"deepedge.fit needs a deepedge.Job, got {type(job).__name__}",
            hint="build it with deepedge.Job(model=..., data=(X, y), ...)",
        )
    train = as_tensor_data(job.data, "data")
    evald = as_tensor_data(job.eval_data, "eval_data") if job.eval_data is not None else None
    if evald is not None and (
        evald.x.shape[1:] != train.x.shape[1:] or evald.y.shape[1:] != train.y.shape[1:]
    ):
        raise SpecError(
            f"eval_data samples are {evald.x.shape[1:]} -> {evald.y.shape[1:]} but data's are "
            f"{train.x.shape[1:]} -> {train.y.shape[1:]}",
            hint="evaluate on data shaped like the training data",
        )
    opt_spec, opt_code = _optimizer(job.optimizer)
    numbers = {
        "name": job.name,
        "epochs": job.epochs,
        "global_batch": job.global_batch,
        "seed": job.seed,
        "optimizer": opt_spec.model_dump(),
        "dataset": {"train_size": len(train), "test_size": max(1, len(evald or ()))},
    }
    try:  # epochs, batch and seed, before any of the user's code runs
        parse_spec(JobSpec, numbers, source=SOURCE)
    except SpecError as err:
        raise SpecError(str(err), hint="fix that argument of deepedge.Job") from None
    sys_path = default_sys_path()
    model_code = code_spec(job.model, "model factory")
    loss_code = code_spec(job.loss, "loss") if job.loss is not None else None
    factory = resolve(model_code, what="model factory", sys_path=sys_path)
    seeded = _takes_seed(factory)
    model = _build(factory, model_code.name, seeded, job.seed)
    loss_fn = _loss_fn(loss_code, sys_path)
    _check_model(model, model_code.name, train, loss_fn, loss_code)
    opt_name, slots = _check_optimizer(model, opt_spec, opt_code, sys_path)

    from deepedge.byo.hooks import custom_signature
    from deepedge.models import activation_bytes

    int_high = {
        name: int(a.max()) + 1 if _dtype(a) == "int64" and a.size else None
        for name, a in (("x", train.x), ("y", train.y))
    }
    if int_high["x"] is not None and train.x.min() < 0:
        int_high["x"] = None  # negative integer inputs: no index range to draw from
    x1, _ = train.head(1)
    custom = {
        "model": model_code.model_dump(),
        "loss": loss_code.model_dump() if loss_code else None,
        "optimizer": opt_code.model_dump() if opt_code else None,
        "seeded": seeded,
        "signature": custom_signature(model, train.x.shape[1:], _dtype(train.x)),
        "optimizer_name": opt_name,
        "optimizer_slots": slots,
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "activation_bytes": activation_bytes(model, x1),
        "input_shape": list(train.x.shape[1:]),
        "input_dtype": _dtype(train.x),
        "input_high": int_high["x"],
        "target_shape": list(train.y.shape[1:]),
        "target_dtype": _dtype(train.y),
        "target_high": int_high["y"],
        "sys_path": sys_path,
    }
    classes = int_high["y"] if int_high["y"] is not None and train.y.ndim == 1 else 2
    spec = parse_spec(
        JobSpec,
        {
            **numbers,
            "model": {"arch": "custom"},
            "dataset": {**numbers["dataset"], "kind": "custom", "num_classes": _clamp(classes)},
            "custom": custom,
        },
        source=SOURCE,
    )
    return PreparedJob(spec, train, evald, model)


def _clamp(classes: int) -> int:
    return min(1000, max(2, classes))


def _takes_seed(factory: Callable) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: call it plainly
        return False
    seed = params.get("seed")
    return seed is not None and seed.kind is not inspect.Parameter.POSITIONAL_ONLY


def _build(factory: Callable, name: str, seeded: bool, seed: int) -> nn.Module:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    try:
        model = factory(seed=seed) if seeded else factory()
    except TypeError as err:
        raise SpecError(
            f"the model factory {name!r} cannot be called as {name}"
            f"{'(seed=...)' if seeded else '()'}: {_first(err)}",
            hint="give every other parameter a default; a `seed` parameter gets the job's seed",
        ) from None
    except Exception as err:
        raise SpecError(
            f"the model factory {name!r} raised {_first(err)}",
            hint="call it yourself to see the traceback",
        ) from None
    if not isinstance(model, nn.Module):
        raise SpecError(
            f"the model factory {name!r} returned a {type(model).__name__}, not a torch.nn.Module",
            hint="return the model instance, e.g. `return nn.Sequential(...)`",
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise SpecError(f"the model of {name!r} has no trainable parameters")
    batchnorm = [
        n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if batchnorm:
        raise SpecError(
            f"the model of {name!r} uses BatchNorm ({batchnorm[0]}): with uneven local "
            "batches each device would normalise by its own batch, and the gradients would "
            "no longer be the whole batch's",
            hint="use GroupNorm or LayerNorm (deepedge.models.group_norm) instead",
        )
    return model


def _loss_fn(code: CodeSpec | None, sys_path: list[str]) -> Callable:
    if code is None:
        import torch.nn.functional as F

        return F.cross_entropy
    return resolve(code, what="loss", sys_path=sys_path)


def _check_model(
    model: nn.Module,
    name: str,
    train: TensorData,
    loss_fn: Callable,
    loss_code: CodeSpec | None,
) -> None:
    """Run the model and loss on a few samples; raise a SpecError for the first problem."""
    import torch

    x, y = train.head(CHECK_BATCH)
    k = len(x)
    model.train()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        raise SpecError(
            f"the model of {name!r} fails on a batch of {k} samples of shape "
            f"{tuple(x.shape[1:])} ({x.dtype}): {_first(err)}",
            hint="match the model's input layer to the data's per-sample shape",
        ) from None
    what = f"the loss {loss_code.name!r}" if loss_code else "the default cross-entropy loss"
    hint = (
        "loss(outputs, targets) gets the model's output and a batch of y"
        if loss_code
        else "it needs (N, classes) logits and int class indices in y; pass loss= otherwise"
    )

    def value(o: Any, t: torch.Tensor) -> torch.Tensor:
        try:
            v = loss_fn(o, t)
        except Exception as err:
            raise SpecError(
                f"{what} fails on a batch of {len(t)} (targets {tuple(t.shape)} "
                f"{t.dtype}): {_first(err)}",
                hint=hint,
            ) from None
        if not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise SpecError(
                f"{what} returned {type(v).__name__}"
                f"{f' of shape {tuple(v.shape)}' if isinstance(v, torch.Tensor) else ''}, "
                "not a scalar tensor",
                hint="reduce it to the mean over the batch (reduction='mean')",
            )
        return v

    full = value(out, y)
    if not math.isfinite(float(full)):
        raise SpecError(
            f"{what} is {float(full)} on the first {k} samples",
            hint="check the data for NaN/inf and the loss for log(0) or division by zero",
        )
    if k >= 2 and _sliceable(out):
        parts = [(slice(0, 1), 1), (slice(1, k), k - 1)]
        mean = sum(float(value(out[s], y[s])) * n for s, n in parts) / k
        if not math.isclose(float(full), mean, rel_tol=1e-3, abs_tol=1e-5):
            raise SpecError(
                f"{what} is not the mean over the batch's samples: {float(full):.6g} on "
                f"{k} samples, but their samples' weighted mean is {mean:.6g}",
                hint="reduce by the mean (not the sum, nor across samples): uneven batches "
                "are weighted by their share of the global batch, which needs it",
            )
    model.zero_grad(set_to_none=True)
    try:
        value(model(x), y).backward()
    except SpecError:
        raise
    except Exception as err:
        raise SpecError(
            f"backward through the model of {name!r} fails: {_first(err)}",
            hint="the loss must be differentiable w.r.t. the model's parameters",
        ) from None
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    if unused:
        raise SpecError(
            f"{len(unused)} parameter(s) of the model of {name!r} get no gradient from the "
            f"loss ({unused[0]}, ...): every rank's DDP would wait for them",
            hint="use them in forward, or freeze them with requires_grad_(False)",
        )


def _sliceable(out: Any) -> bool:
    import torch

    return isinstance(out, torch.Tensor) and out.ndim >= 1


def _check_optimizer(
    model: nn.Module, spec: OptimizerSpec, code: CodeSpec | None, sys_path: list[str]
) -> tuple[str, int]:
    """The optimiser's name and its state tensors per parameter, from one real step on a
    copy of the model (the initial weights stay as built)."""
    import torch

    from deepedge.train.ddp import build_optimizer

    probe = copy.deepcopy(model)
    params = [p for p in probe.parameters() if p.requires_grad]
    if code is None:
        opt = build_optimizer(params, spec)
    else:
        factory = resolve(code, what="optimizer factory", sys_path=sys_path)
        try:
            opt = factory(params)
        except Exception as err:
            raise SpecError(
                f"the optimizer factory {code.name!r} raised {_first(err)}",
                hint="it is called with the model's parameters: params -> Optimizer",
            ) from None
        if not isinstance(opt, torch.optim.Optimizer):
            raise SpecError(
                f"the optimizer factory {code.name!r} returned a {type(opt).__name__}, "
                "not a torch.optim.Optimizer",
                hint="e.g. `lambda params: torch.optim.AdamW(params, lr=1e-3)`",
            )
    for p in params:
        p.grad = torch.zeros_like(p)
    try:
        opt.step()
    except Exception as err:
        raise SpecError(
            f"the optimizer's step fails: {_first(err)}",
            hint="build it over the parameters it is given",
        ) from None
    slots = max(
        (
            sum(1 for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape)
            for p in params
        ),
        default=0,
    )
    name = spec.name if code is None else type(opt).__name__.lower()
    return name, min(slots, 16)
