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

import math
import numbers
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from deepedge.errors import SpecError

__all__ = ["UnevenBatchSampler", "split_batch"]


def _is_int(value: object) -> bool:
    # bool is an int subclass, but ``True`` as a batch size is always a bug.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _exact(weight: object, index: int) -> Fraction:
    """Turn a weight into an exact fraction so every rank rounds identically."""
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise SpecError(f"split_batch: weight {index} is {weight!r}, not a number")
    value = Fraction(weight) if isinstance(weight, numbers.Rational) else None
    if value is None:
        as_float = float(weight)
        if not math.isfinite(as_float):
            raise SpecError(f"split_batch: weight {index} is {weight!r}, not a finite number")
        value = Fraction(as_float)
    if value < 0:
        raise SpecError(f"split_batch: weight {index} is {weight!r}, which is negative")
    return value


def _largest_remainder(total: int, weights: Sequence[Fraction]) -> list[int]:
    """Hamilton apportionment: floors of the exact quotas, then the leftover units go to
    the largest remainders, ties to the lowest index (rank)."""
    weight_sum = sum(weights, Fraction(0))
    quotas = [total * w / weight_sum for w in weights]
    shares = [math.floor(q) for q in quotas]
    leftover = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[:leftover]:
        shares[i] += 1
    return shares


def split_batch(total: int, weights: Sequence[float], *, min_each: int = 0) -> list[int]:
    """Split ``total`` items into integer shares proportional to ``weights``.

    Uses the largest-remainder method, so the shares sum to ``total`` and each one is
    within 1 of its exact proportional quota; ties go to the lower index. Arithmetic is
    exact (floats are converted to fractions), which makes the result identical on every
    machine — the sampler relies on that, since all ranks compute it independently.

    ``min_each`` guarantees every share is at least that many (the planner uses it so no
    device is handed a zero local batch). Shares whose quota falls below the floor are
    pinned to it and the rest is re-apportioned among the others, so shares that are not
    pinned stay as proportional as possible. If ``total < min_each * len(weights)`` the
    floor cannot be met and :class:`SpecError` is raised.
    """
    if not _is_int(total) or total < 0:
        raise SpecError(f"split_batch: total must be an integer >= 0, got {total!r}")
    if not _is_int(min_each) or min_each < 0:
        raise SpecError(f"split_batch: min_each must be an integer >= 0, got {min_each!r}")
    if len(weights) == 0:
        raise SpecError("split_batch: weights is empty; need at least one share")
    exact = [_exact(w, i) for i, w in enumerate(weights)]
    if sum(exact) == 0:
        raise SpecError(f"split_batch: weights {list(weights)!r} sum to zero")
    total, min_each = int(total), int(min_each)
    n = len(exact)
    if min_each * n > total:
        raise SpecError(
            f"split_batch: cannot give each of {n} shares at least {min_each} out of {total}",
            hint=f"raise the total to at least {min_each * n} or lower min_each",
        )

    # Water-filling: pin shares whose proportional quota is under the floor, then
    # re-apportion what is left among the free ones until no new share needs pinning.
    # Pinning only lowers the others' quotas, so this ends within n rounds; and because
    # total >= min_each * n, at least one share (with positive weight) always stays free.
    pinned: set[int] = set()
    while True:
        free = [i for i in range(n) if i not in pinned]
        remaining = total - min_each * len(pinned)
        free_sum = sum((exact[i] for i in free), Fraction(0))
        newly = [i for i in free if remaining * exact[i] < min_each * free_sum]
        if not newly:
            break
        pinned.update(newly)

    shares = [min_each] * n
    for i, share in zip(free, _largest_remainder(remaining, [exact[i] for i in free]), strict=True):
        shares[i] = share
    return shares


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
        if not _is_int(dataset_size) or dataset_size <= 0:
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
            if not _is_int(b) or b <= 0:
                raise SpecError(
                    f"local batch of rank {rank} must be a positive integer, got {b!r}",
                    hint="drop devices with no share from the plan instead of giving them 0",
                )
        if not _is_int(seed) or seed < 0:
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
        if not _is_int(epoch) or epoch < 0:
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
        if not _is_int(rank) or not 0 <= rank < len(self._batches):
            raise SpecError(
                f"rank must be in [0, {len(self._batches)}), got {rank!r}",
                hint="the rank must index local_batches",
            )
        if not _is_int(start_step) or not 0 <= start_step <= self.steps_per_epoch:
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
