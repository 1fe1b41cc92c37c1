"""Worker-side DDP training on uneven local batches, equal to single-process SGD.

Rank r takes b_r samples of each global step of size B_step (Σ b_r = B_step). Each rank's
loss is the *sum* of its per-sample losses divided by B_step, and the DDP communication hook
all-reduces with SUM (no division by world size). The synchronised gradient is therefore

    Σ_r Σ_{j ∈ rank r} ∇ℓ_j / B_step  =  ∇ (mean loss over the global batch),

exactly the gradient of one process on the whole batch, whatever the split. A user's loss
(``deepedge.fit``) must be the *mean* over its batch's samples, as ``F.cross_entropy`` is by
default: rank r weights it by b_r / B_step, which gives the same sum. The hook also
timestamps when a rank's local backward finished, which separates each rank's compute
from its wait for the slowest rank in the step timeline.

:func:`run_dynamic_epochs` is the EDDL-style baseline with no fixed split: within each
step the ranks claim micro-batches from a shared counter until the step is used up, so the
same identity holds with each rank's share decided at run time.
"""

# No `from __future__ import annotations`: DDP inspects the comm hook's annotations at runtime.

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from deepedge.spec import OptimizerSpec
from deepedge.train.sampler import UnevenBatchSampler

__all__ = [
    "ChunkStore",
    "CpuPacer",
    "DispatchResult",
    "StepRecord",
    "allreduce_grads",
    "build_optimizer",
    "dynamic_step",
    "global_batch_loss",
    "run_dynamic_epochs",
    "run_epochs",
    "select_backend",
    "wrap_ddp",
]


def select_backend(rank: int, world_size: int) -> tuple[str, torch.device]:
    """NCCL with one CUDA device per rank where there are enough GPUs, else gloo on CPU.

    Ranks sharing one GPU cannot form an NCCL group, so an emulated cluster on a one-GPU
    machine trains on CPU with gloo.
    """
    if torch.cuda.is_available() and torch.cuda.device_count() >= world_size:
        return "nccl", torch.device("cuda", rank % torch.cuda.device_count())
    return "gloo", torch.device("cpu")


class CpuPacer:
    """Sleeps between steps so this process uses at most ``cores`` CPUs on average.

    The fallback emulation's pacing for training workers (see ``LocalDevice.pace_cores``):
    weaker than a cgroup quota (only between steps, and the work itself runs at host
    speed) but it never freezes a rank inside a collective.
    """

    def __init__(self, cores: float) -> None:
        self.cores = cores
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    def __call__(self) -> None:
        owed = (time.process_time() - self._cpu) / self.cores - (time.monotonic() - self._wall)
        if owed > 0:
            time.sleep(owed)
        self._cpu, self._wall = time.process_time(), time.monotonic()


@dataclass
class _HookClock:
    local_done: float = 0.0


@dataclass(frozen=True)
class StepRecord:
    """One rank's view of one step, wall-clock seconds (comparable across processes)."""

    epoch: int
    step: int
    batch: int
    start: float
    local_done: float  # local forward+backward done; the rest until ``synced`` is waiting
    synced: float  # gradients all-reduced
    end: float  # optimiser step done
    loss: float

    @property
    def compute_s(self) -> float:
        """This rank's own work in the step: forward, backward and optimiser step, without
        the wait for the all-reduce (what a throughput profile predicts)."""
        return (self.local_done - self.start) + (self.end - self.synced)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sum_allreduce_hook(
    clock: _HookClock, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    clock.local_done = time.time()
    fut = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


@dataclass
class DdpModel:
    module: DDP
    clock: _HookClock = field(default_factory=_HookClock)


def wrap_ddp(model: nn.Module, device: torch.device | None = None) -> DdpModel:
    """Wrap ``model`` in DDP with the SUM all-reduce hook (needs an initialised group)."""
    on_cuda = device is not None and device.type == "cuda"
    ddp = DDP(model.to(device) if on_cuda else model, device_ids=[device] if on_cuda else None)
    wrapped = DdpModel(ddp)
    ddp.register_comm_hook(wrapped.clock, _sum_allreduce_hook)
    return wrapped


def global_batch_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    global_size: int,
    loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """This rank's share of the mean loss over a global batch of ``global_size`` samples.

    ``loss(outputs, targets)`` (default cross-entropy) must be the mean over the samples
    it is given; its share is that mean times ``len(x) / global_size``.
    """
    if loss is None:
        return F.cross_entropy(model(x), y, reduction="sum") / global_size
    return loss(model(x), y) * (len(x) / global_size)


def _empty_rank_loss(
    model: nn.Module,
    x_like: torch.Tensor,
    y_like: torch.Tensor | None = None,
    loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A rank with no samples in a (last, partial) step still runs a forward pass, so DDP's
    reducer sees every parameter, with a zero-weighted loss."""
    if loss is not None and y_like is not None:
        return loss(model(x_like[:1]), y_like[:1]) * 0.0
    return model(x_like[:1]).sum() * 0.0


def build_optimizer(params: Any, spec: OptimizerSpec) -> torch.optim.Optimizer:
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(
        params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )


def run_epochs(
    wrapped: DdpModel,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    rank: int,
    local_batches: Sequence[int],
    seed: int,
    epochs: range,
    on_step: Callable[[StepRecord], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    pace: Callable[[], None] | None = None,
    max_steps: int | None = None,
    start_step: int = 0,
    on_samples: Callable[[int, int, Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
) -> list[StepRecord]:
    """Train ``epochs`` on this rank's share of every global step; returns its step log.

    ``max_steps`` stops after that many steps (a profiling run); every rank must be
    given the same value, as every rank must take part in every step. ``start_step``
    skips the first epoch's steps before it (a run resumed after a failure: a global
    step's samples do not depend on the split, so the rest of the epoch is exactly the
    samples not yet used). ``on_samples(epoch, step, indices)`` sees this rank's sample
    indices of each step before it runs (sample accounting in tests). ``should_stop()``
    is asked before every step (on every rank, so it may be a collective); True ends the
    run there, at a step boundary. ``loss``: see :func:`global_batch_loss`.
    """
    sampler = UnevenBatchSampler(len(images), list(local_batches), seed=seed)
    model, clock = wrapped.module, wrapped.clock
    model.train()
    records: list[StepRecord] = []
    for epoch in epochs:
        sizes = sampler.step_sizes(epoch)
        first = start_step if epoch == epochs[0] else 0
        for step, idx in enumerate(sampler.rank_steps(epoch, rank, first), start=first):
            if max_steps is not None and len(records) >= max_steps:
                return records
            if should_stop and should_stop():
                return records
            if on_samples:
                on_samples(epoch, step, idx)
            if pace:
                pace()
            start = time.time()
            optimizer.zero_grad(set_to_none=True)
            if len(idx):
                index = torch.from_numpy(idx)
                value = global_batch_loss(model, images[index], labels[index], sizes[step], loss)
            else:
                value = _empty_rank_loss(model, images, labels, loss)
            value.backward()
            synced = time.time()
            optimizer.step()
            rec = StepRecord(
                epoch,
                step,
                len(idx),
                start,
                min(clock.local_done, synced) or synced,
                synced,
                time.time(),
                float(value.detach()),
            )
            records.append(rec)
            if on_step:
                on_step(rec)
        if on_epoch_end:
            on_epoch_end(epoch)
    return records


# --- dynamic dispatch (EDDL-style): ranks claim micro-batches of each step at run time ---


class ChunkStore(Protocol):
    """What dynamic dispatch needs of a store: an atomic counter (``dist.Store`` has it)."""

    def add(self, key: str, amount: int, /) -> int: ...


@dataclass(frozen=True)
class DispatchResult:
    """What one rank did in one dynamically dispatched step."""

    chunks: list[int]  # the chunk ids this rank claimed and processed, in claim order
    samples: int
    loss: float  # this rank's share of the step's mean loss
    local_done: float  # wall clock after its last backward (or its last, empty claim)
    synced: float  # wall clock once the gradients were all-reduced


def allreduce_grads(params: Sequence[nn.Parameter]) -> None:
    """SUM-all-reduce the gradients of ``params`` in one flat buffer per dtype.

    A parameter without a gradient (this rank claimed no chunk, or its forward did not
    reach it) contributes zeros, so every rank joins the same collectives with buffers of
    the same size; afterwards every parameter holds the summed gradient.
    """
    groups: dict[torch.dtype, list[nn.Parameter]] = {}
    for param in params:
        groups.setdefault(param.dtype, []).append(param)
    for group in groups.values():  # same order on every rank: the model's parameter order
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
        )
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in group:
            p.grad = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()


def dynamic_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    store: ChunkStore,
    key: str,
    micro_batch: int,
    on_chunk: Callable[[int], None] | None = None,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
) -> DispatchResult:
    """Claim and process chunks of one global step until none is left, then all-reduce.

    ``indices`` are the whole step's samples (the same on every rank); chunk ``k`` is
    ``indices[k*m : (k+1)*m]``. Claims come from ``store.add(key, 1)``, which is atomic,
    so each chunk goes to exactly one rank; a claim past the last chunk ends this rank's
    part. Each chunk's loss is its summed per-sample loss over the *step's* size, and the
    gradients accumulate, so after the SUM all-reduce every rank holds exactly the mean
    gradient of the whole step, however the chunks fell. ``key`` must be fresh for every
    step of every run: the counter is never reset. Gradients should be zeroed (or None)
    before the call; the optimiser step is the caller's. ``on_chunk`` is called with each
    claimed chunk id before it is processed (tests use it to slow a rank down).
    ``loss_fn``: the job's loss (see :func:`global_batch_loss`).
    """
    size = len(indices)
    chunks: list[int] = []
    loss = 0.0
    while (k := store.add(key, 1) - 1) * micro_batch < size:
        if on_chunk:
            on_chunk(k)
        index = indices[k * micro_batch : (k + 1) * micro_batch]
        chunk_loss = global_batch_loss(model, images[index], labels[index], size, loss_fn)
        chunk_loss.backward()
        loss += float(chunk_loss.detach())
        chunks.append(k)
    local_done = time.time()
    allreduce_grads([p for p in model.parameters() if p.requires_grad])
    samples = sum(min(micro_batch, size - k * micro_batch) for k in chunks)
    return DispatchResult(chunks, samples, loss, local_done, time.time())


def run_dynamic_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    store: ChunkStore,
    run_key: str,
    global_batch: int,
    micro_batch: int,
    seed: int,
    epochs: range,
    on_step: Callable[[StepRecord], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    pace: Callable[[], None] | None = None,
    max_steps: int | None = None,
    start_step: int = 0,
    should_stop: Callable[[], bool] | None = None,
    loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
) -> list[StepRecord]:
    """Train ``epochs`` claiming micro-batches of every global step; returns this rank's log.

    ``model`` is a plain module (no DDP: the ranks sync once per step with
    :func:`allreduce_grads`) that every rank initialised identically; identical summed
    gradients then keep the replicas identical. Every rank walks the same global steps
    (the sampler's permutation with one "rank" of size ``global_batch``) and claims its
    chunks through counters ``{run_key}/e{epoch}/s{step}`` in ``store``, so ``run_key``
    must be unique to this run. A record's ``batch`` is the number of samples this rank
    processed in the step, which varies from step to step. ``max_steps``, ``start_step``
    and ``should_stop`` as in :func:`run_epochs` (the same on every rank).

    Like static uneven DDP this needs a model without batch statistics (no BatchNorm):
    each chunk is normalised on its own.
    """
    sampler = UnevenBatchSampler(len(images), [global_batch], seed=seed)
    model.train()
    records: list[StepRecord] = []
    for epoch in epochs:
        # rank 0 of a one-rank sampler of size B: the indices of every whole global step
        first = start_step if epoch == epochs[0] else 0
        for step, idx in enumerate(sampler.rank_steps(epoch, 0, first), start=first):
            if max_steps is not None and len(records) >= max_steps:
                return records
            if should_stop and should_stop():
                return records
            if pace:
                pace()
            start = time.time()
            optimizer.zero_grad(set_to_none=True)
            done = dynamic_step(
                model,
                images,
                labels,
                torch.from_numpy(idx),
                store=store,
                key=f"{run_key}/e{epoch}/s{step}",
                micro_batch=micro_batch,
                loss_fn=loss,
            )
            optimizer.step()
            rec = StepRecord(
                epoch,
                step,
                done.samples,
                start,
                done.local_done,
                done.synced,
                time.time(),
                done.loss,
            )
            records.append(rec)
            if on_step:
                on_step(rec)
        if on_epoch_end:
            on_epoch_end(epoch)
    return records
