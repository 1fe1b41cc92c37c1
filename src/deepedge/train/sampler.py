"""Deterministic epoch sampling for *uneven* data parallelism.

Every rank takes a different share ``b_r`` of each global batch ``B = Σ b_r``. The ranks
never talk about sampling: each one derives the same permutation of the data set from
``(seed, epoch)`` and cuts its own slices out of it. Two things make that safe on a
heterogeneous edge cluster, where devices may run different numpy builds:

* The permutation is built from the raw 64-bit output of numpy's ``PCG64`` bit generator
  (seeded by ``SeedSequence([seed, epoch])``) followed by a stable argsort. numpy promises
  that bit-generator streams stay fixed across releases (NEP 19), but not the algorithms
  behind ``Generator.permutation``/``shuffle``; keying a stable sort on the raw stream
  keeps every rank on the same order even when their numpy versions differ.
* The split of the last, partial step uses exact rational arithmetic
  (:func:`split_batch`), so no rank can round a float differently from another.

Over one epoch the union of all ranks' indices is exactly a permutation of
``range(dataset_size)``: no sample is dropped (unlike ``DistributedSampler``'s
``drop_last``) and none is repeated (unlike its padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepedge.errors import SpecError
from deepedge.plan.shares import is_int, split_batch

__all__ = ["UnevenBatchSampler", "split_batch"]


class UnevenBatchSampler:
    """Which sample indices each rank processes at each step of an epoch.

    ``local_batches[r]`` is rank ``r``'s share ``b_r`` of a full global batch. A step
    ``k < S // B`` hands rank ``r`` exactly ``b_r`` consecutive indices of that step's
    slice of the epoch permutation. If ``B`` does not divide ``S``, the last step has
    ``S % B`` samples, split proportionally to ``b_r`` by :func:`split_batch`; a rank may
    then get an empty array and must still join the step's collectives. Each rank weights
    its loss by ``len(local) / step_sizes(epoch)[k]`` so the all-reduced gradient equals
    the mean over the global step.
    """

    def __init__(
        self,
        dataset_size: int,
        local_batches: Sequence[int],
        seed: int,
        shuffle: bool = True,
    ) -> None:
        if not is_int(dataset_size) or dataset_size <= 0:
            raise SpecError(
                f"dataset_size must be a positive integer, got {dataset_size!r}",
                hint="the training set is empty; check the dataset path and split",
            )
        batches = list(local_batches)
        if not batches:
            raise SpecError(
                "local_batches is empty; need one local batch size per rank",
                hint="the plan must assign at least one device",
            )
        for rank, b in enumerate(batches):
            if not is_int(b) or b <= 0:
                raise SpecError(
                    f"local batch of rank {rank} must be a positive integer, got {b!r}",
                    hint="drop devices with no share from the plan instead of giving them 0",
                )
        if not is_int(seed) or seed < 0:
            raise SpecError(f"seed must be an integer >= 0, got {seed!r}")
        self._size = int(dataset_size)
        self._batches = tuple(int(b) for b in batches)
        self._seed = int(seed)
        self._shuffle = bool(shuffle)
        self._global = sum(self._batches)
        self._full_steps, self._tail = divmod(self._size, self._global)
        self._offsets = np.concatenate(([0], np.cumsum(self._batches))).tolist()
        tail_shares = split_batch(self._tail, self._batches) if self._tail else []
        self._tail_offsets = np.concatenate(([0], np.cumsum(tail_shares, dtype=np.int64)))
        self._cache: tuple[int, np.ndarray] | None = None

    @property
    def dataset_size(self) -> int:
        return self._size

    @property
    def local_batches(self) -> tuple[int, ...]:
        return self._batches

    @property
    def world_size(self) -> int:
        return len(self._batches)

    @property
    def global_batch(self) -> int:
        return self._global

    @property
    def steps_per_epoch(self) -> int:
        return self._full_steps + (1 if self._tail else 0)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __repr__(self) -> str:
        return (
            f"UnevenBatchSampler(dataset_size={self._size}, local_batches={list(self._batches)},"
            f" seed={self._seed}, shuffle={self._shuffle})"
        )

    def _check_epoch(self, epoch: int) -> None:
        if not is_int(epoch) or epoch < 0:
            raise SpecError(f"epoch must be an integer >= 0, got {epoch!r}")

    def permutation(self, epoch: int) -> np.ndarray:
        """The epoch's order of all sample indices (int64, read-only, cached per epoch)."""
        self._check_epoch(epoch)
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self._shuffle:
            bits = np.random.PCG64(np.random.SeedSequence([self._seed, int(epoch)]))
            keys = bits.random_raw(self._size)
            order = np.argsort(keys, kind="stable").astype(np.int64, copy=False)
        else:
            order = np.arange(self._size, dtype=np.int64)
        order.setflags(write=False)
        self._cache = (int(epoch), order)
        return order

    def step_sizes(self, epoch: int) -> list[int]:
        """Global number of samples at each step; only the last one may be short."""
        self._check_epoch(epoch)
        return [self._global] * self._full_steps + ([self._tail] if self._tail else [])

    def rank_steps(self, epoch: int, rank: int, start_step: int = 0) -> list[np.ndarray]:
        """Index arrays (int64, possibly empty) rank ``rank`` processes at each step.

        ``start_step`` resumes mid-epoch: the result equals the full list's tail from
        that step, so a restarted run sees exactly the samples it had not yet seen.
        ``start_step == steps_per_epoch`` is allowed and gives an empty list.
        """
        if not is_int(rank) or not 0 <= rank < len(self._batches):
            raise SpecError(
                f"rank must be in [0, {len(self._batches)}), got {rank!r}",
                hint="the rank must index local_batches",
            )
        if not is_int(start_step) or not 0 <= start_step <= self.steps_per_epoch:
            raise SpecError(
                f"start_step must be in [0, {self.steps_per_epoch}], got {start_step!r}"
            )
        order = self.permutation(epoch)
        lo, hi = self._offsets[rank], self._offsets[rank + 1]
        steps: list[np.ndarray] = []
        for k in range(int(start_step), self._full_steps):
            base = k * self._global
            steps.append(order[base + lo : base + hi].copy())
        if self._tail and start_step <= self._full_steps:
            base = self._full_steps * self._global
            t_lo, t_hi = int(self._tail_offsets[rank]), int(self._tail_offsets[rank + 1])
            steps.append(order[base + t_lo : base + t_hi].copy())
        return steps
