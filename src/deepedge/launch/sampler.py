"""The planned split for a user's script: uneven local batches, exact gradients.

Two swaps turn a torchrun-style script into a Deep-Edge one (see the README)::

    loader = DataLoader(train_set, batch_sampler=PlannedBatchSampler(sampler))
    loss = planned_loss(criterion(model(x), y))

:class:`PlannedBatchSampler` hands rank ``i`` its ``b_i`` samples of every global batch
``B = Σ b_i``, cut from one seeded permutation of the data set that every rank derives on
its own (:class:`~deepedge.train.sampler.UnevenBatchSampler`'s, so the global batches are
the ones a single process with the same seed sees). DDP then *averages* the ranks'
gradients, which is right only for equal batches; :func:`planned_loss` scales each rank's
mean loss by ``WORLD_SIZE · n_i / N`` (``n_i`` this rank's samples of the step, ``N`` the
step's), so the average of the ranks' gradients is the mean gradient over the whole
global batch: the update of single-process SGD on it, whatever the split.

Between batches the sampler also paces the rank to its planned intensity (its share of
the device's CPU), as deepedge's own trainers do, so the LC apps keep the rest.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler

from deepedge.errors import SpecError
from deepedge.launch.plan import RankPlan, rank_plan
from deepedge.plan.shares import is_int, split_batch
from deepedge.train.ddp import CpuPacer
from deepedge.train.sampler import UnevenBatchSampler

__all__ = ["PlannedBatchSampler", "planned_loss"]

# (samples of this rank, samples of the whole step, world size) of each batch the sampler
# handed out and planned_loss has not scaled yet: oldest first, because a DataLoader with
# workers asks for a few batches ahead of the one being trained on.
_pending: collections.deque[tuple[int, int, int]] = collections.deque()
_current: list[tuple[int, int, int]] = []  # the batch planned_loss scaled last
_lock = threading.Lock()


def _world_and_rank(source: object) -> tuple[int, int]:
    """The process group's size and this rank, as a script without a plan sees them."""
    if isinstance(source, DistributedSampler):
        return int(source.num_replicas), int(source.rank)
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


class PlannedBatchSampler(Sampler[list[int]]):
    """Batches of sample indices for this rank: its planned share of each global batch.

    ``source`` is the script's ``DistributedSampler`` (its data set, seed and shuffle are
    taken, and its ``set_epoch`` keeps working: each epoch's order follows it), a data
    set, or the number of samples. The plan comes from ``deepedge launch``
    (``DEEPEDGE_PLAN``) or ``plan``; without one (plain torchrun, one process) the global
    batch is split equally over the process group.

    ``global_batch``: the script's own global batch; with a plan, the plan's shares are
    scaled to it (the plan's proportions, the script's size). Without a plan it is needed.

    Every epoch covers every sample exactly once: full steps of ``B``, then the remainder
    split in proportion to the shares, at least one sample per rank (DDP needs every rank
    in every step). A remainder smaller than the world size cannot give each rank one, so
    it is left out of that epoch (another one each epoch, as the order is reshuffled).
    Use it as ``DataLoader(data, batch_sampler=...)``; call :func:`planned_loss` once per
    batch it yields.
    """

    def __init__(
        self,
        source: DistributedSampler | Sized | int,
        global_batch: int | None = None,
        *,
        seed: int | None = None,
        shuffle: bool | None = None,
        plan: RankPlan | None = None,
        pace: bool = True,
    ) -> None:
        self._dist_sampler = source if isinstance(source, DistributedSampler) else None
        if self._dist_sampler is not None:
            size = len(self._dist_sampler.dataset)  # type: ignore[arg-type]
            seed = self._dist_sampler.seed if seed is None else seed
            shuffle = self._dist_sampler.shuffle if shuffle is None else shuffle
        elif is_int(source):
            size = int(source)  # type: ignore[arg-type]
        elif isinstance(source, Sized):
            size = len(source)
        else:
            raise SpecError(
                f"PlannedBatchSampler needs a DistributedSampler, a data set or a size, "
                f"got {type(source).__name__}"
            )
        if global_batch is not None and (not is_int(global_batch) or global_batch <= 0):
            raise SpecError(f"global_batch must be a positive integer, got {global_batch!r}")
        self.plan = plan if plan is not None else rank_plan()
        if self.plan is not None:
            world, self.rank = self.plan.world_size, self.plan.rank
            batches = list(self.plan.local_batches)
            if global_batch is not None and global_batch != sum(batches):
                batches = split_batch(global_batch, batches, min_each=1)
            self._check_group(world)
        else:
            world, self.rank = _world_and_rank(source)
            if global_batch is None:
                raise SpecError(
                    "PlannedBatchSampler without a plan needs the global batch",
                    hint="run under `deepedge launch`, or pass global_batch=",
                )
            batches = split_batch(global_batch, [1] * world, min_each=1)
        self._order = UnevenBatchSampler(
            size,
            batches,
            seed=0 if seed is None else seed,
            shuffle=True if shuffle is None else shuffle,
        )
        self.local_batches = tuple(batches)
        self.global_batch = sum(batches)
        self.world_size = world
        self._offsets = np.concatenate(([0], np.cumsum(batches))).tolist()
        full, tail = divmod(size, self.global_batch)
        self._full_steps = full
        self._tail_shares = split_batch(tail, batches, min_each=1) if tail >= world else []
        self.dropped_per_epoch = tail if not self._tail_shares else 0
        self._epoch = 0
        self._pace_cores = self.plan.pace_cores if (pace and self.plan is not None) else None

    def _check_group(self, world: int) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() != world:
            raise SpecError(
                f"the plan has {world} ranks but the process group {dist.get_world_size()}",
                hint="let `deepedge launch` start every rank; do not change WORLD_SIZE",
            )

    @property
    def local_batch(self) -> int:
        """This rank's samples in a full global batch."""
        return self.local_batches[self.rank]

    def set_epoch(self, epoch: int) -> None:
        """Each epoch has its own order (as ``DistributedSampler.set_epoch``)."""
        self._epoch = int(epoch)

    @property
    def epoch(self) -> int:
        return self._dist_sampler.epoch if self._dist_sampler is not None else self._epoch

    def __len__(self) -> int:
        return self._full_steps + (1 if self._tail_shares else 0)

    def step_slices(self, epoch: int) -> Iterator[tuple[np.ndarray, int]]:
        """Each step's indices for this rank and the step's global sample count."""
        order = self._order.permutation(epoch)
        lo, hi = self._offsets[self.rank], self._offsets[self.rank + 1]
        for k in range(self._full_steps):
            base = k * self.global_batch
            yield order[base + lo : base + hi], self.global_batch
        if self._tail_shares:
            base = self._full_steps * self.global_batch
            t_lo = sum(self._tail_shares[: self.rank])
            share = self._tail_shares[self.rank]
            yield order[base + t_lo : base + t_lo + share], sum(self._tail_shares)

    def __iter__(self) -> Iterator[list[int]]:
        with _lock:
            _pending.clear()  # what a loop left unconsumed belongs to no batch of this epoch
        pacer = CpuPacer(self._pace_cores) if self._pace_cores else None
        for k, (indices, step_size) in enumerate(self.step_slices(self.epoch)):
            if pacer is not None and k > 0:
                pacer()  # after the previous step's work, before this one's
            with _lock:
                _pending.append((len(indices), step_size, self.world_size))
            yield indices.tolist()


def planned_loss(loss: torch.Tensor) -> torch.Tensor:
    """``loss`` (this rank's *mean* loss over its batch) scaled so that DDP's gradient
    average equals the mean gradient over the whole global batch: ``× WORLD_SIZE · n_i /
    N``. Call it once per batch of a :class:`PlannedBatchSampler`; a second call in the
    same step scales by the same factor."""
    with _lock:
        if _pending:
            _current[:] = [_pending.popleft()]
        if not _current:
            raise SpecError(
                "planned_loss scales the loss of a PlannedBatchSampler's batch, but no "
                "batch was drawn from one",
                hint="use DataLoader(data, batch_sampler=PlannedBatchSampler(...))",
            )
        n_local, n_step, world = _current[0]
    return loss * (world * n_local / n_step)


def _reset_for_tests() -> Any:
    """Forget batches handed out (tests run several samplers in one process)."""
    with _lock:
        _pending.clear()
        _current.clear()
