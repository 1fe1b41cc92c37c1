"""UnevenBatchSampler and split_batch: every sample exactly once per epoch, on every rank
the same way, with shares proportional to the local batches."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepedge.errors import SpecError
from deepedge.train.sampler import UnevenBatchSampler, split_batch

sizes = st.integers(min_value=1, max_value=5000)
batches = st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
epochs = st.integers(min_value=0, max_value=1000)


@settings(max_examples=150, deadline=None)
@given(size=sizes, local=batches, seed=seeds, epoch=epochs, shuffle=st.booleans())
def test_epoch_covers_dataset_exactly_once(
    size: int, local: list[int], seed: int, epoch: int, shuffle: bool
) -> None:
    sampler = UnevenBatchSampler(size, local, seed=seed, shuffle=shuffle)
    sizes_ = sampler.step_sizes(epoch)
    assert sum(sizes_) == size
    assert len(sizes_) == sampler.steps_per_epoch == -(-size // sum(local))
    assert all(s == sum(local) for s in sizes_[:-1]) and 0 < sizes_[-1] <= sum(local)

    per_rank = [sampler.rank_steps(epoch, r) for r in range(len(local))]
    everything = []
    for k, step_size in enumerate(sizes_):
        step = [per_rank[r][k] for r in range(len(local))]
        assert sum(len(a) for a in step) == step_size
        for r, indices in enumerate(step):
            assert indices.dtype == np.int64
            if step_size == sum(local):
                assert len(indices) == local[r]
            else:  # partial last step: largest-remainder share, within 1 of the exact quota
                assert abs(Fraction(len(indices)) - Fraction(step_size * local[r], sum(local))) < 1
            everything.append(indices)
    merged = np.concatenate(everything)
    assert len(merged) == size
    assert np.array_equal(np.sort(merged), np.arange(size))


@settings(max_examples=60, deadline=None)
@given(size=sizes, local=batches, seed=seeds, epoch=epochs, data=st.data())
def test_deterministic_and_resumable(
    size: int, local: list[int], seed: int, epoch: int, data: st.DataObject
) -> None:
    a = UnevenBatchSampler(size, local, seed=seed)
    b = UnevenBatchSampler(size, list(local), seed=seed)
    rank = data.draw(st.integers(0, len(local) - 1))
    start = data.draw(st.integers(0, a.steps_per_epoch))
    full = a.rank_steps(epoch, rank)
    other = b.rank_steps(epoch, rank)
    assert all(np.array_equal(x, y) for x, y in zip(full, other, strict=True))
    tail = b.rank_steps(epoch, rank, start_step=start)
    assert len(tail) == len(full) - start
    assert all(np.array_equal(x, y) for x, y in zip(full[start:], tail, strict=True))


def test_epochs_and_seeds_change_the_order() -> None:
    sampler = UnevenBatchSampler(1000, [7, 3, 22], seed=5)
    orders = [sampler.permutation(e) for e in range(3)]
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    other_seed = UnevenBatchSampler(1000, [7, 3, 22], seed=6).permutation(0)
    assert not np.array_equal(orders[0], other_seed)


def test_permutation_is_pinned() -> None:
    # Ranks on different numpy versions must agree; a change here breaks mixed clusters.
    sampler = UnevenBatchSampler(10, [2, 3], seed=1234)
    assert sampler.permutation(7).tolist() == [8, 9, 1, 0, 7, 5, 2, 3, 6, 4]


def test_no_shuffle_is_in_order_and_rank_slices_are_consecutive() -> None:
    sampler = UnevenBatchSampler(23, [3, 5, 2], seed=0, shuffle=False)
    assert sampler.global_batch == 10 and len(sampler) == 3
    assert sampler.step_sizes(0) == [10, 10, 3]
    steps = [[a.tolist() for a in sampler.rank_steps(0, r)] for r in range(3)]
    # Last step: quotas 0.9, 1.5, 0.6 -> floors 0, 1, 0; the 2 left go to remainders .9 and .6.
    assert steps[0] == [[0, 1, 2], [10, 11, 12], [20]]
    assert steps[1] == [[3, 4, 5, 6, 7], [13, 14, 15, 16, 17], [21]]
    assert steps[2] == [[8, 9], [18, 19], [22]]


def test_ranks_may_get_nothing_on_the_last_step() -> None:
    sampler = UnevenBatchSampler(2, [1, 1, 1, 1], seed=3)
    last = [sampler.rank_steps(0, r)[-1] for r in range(4)]
    assert [len(a) for a in last] == [1, 1, 0, 0]  # equal remainders: lower ranks first
    assert last[3].dtype == np.int64


def test_returned_arrays_are_private_copies() -> None:
    sampler = UnevenBatchSampler(50, [4, 6], seed=1)
    first = sampler.rank_steps(0, 0)[0]
    first[:] = -1
    assert (sampler.rank_steps(0, 0)[0] >= 0).all()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"dataset_size": 0, "local_batches": [1]}, "0"),
        ({"dataset_size": -5, "local_batches": [1]}, "-5"),
        ({"dataset_size": 10, "local_batches": []}, "empty"),
        ({"dataset_size": 10, "local_batches": [4, 0]}, "rank 1"),
        ({"dataset_size": 10, "local_batches": [4, -2]}, "-2"),
        ({"dataset_size": 10, "local_batches": [4, 2.5]}, "2.5"),
        ({"dataset_size": 10, "local_batches": [4], "seed": -1}, "-1"),
    ],
)
def test_invalid_sampler_inputs(kwargs: dict, needle: str) -> None:
    kwargs.setdefault("seed", 0)
    with pytest.raises(SpecError, match=needle):
        UnevenBatchSampler(**kwargs)


def test_invalid_step_arguments() -> None:
    sampler = UnevenBatchSampler(10, [2, 3], seed=0)
    with pytest.raises(SpecError, match="rank"):
        sampler.rank_steps(0, 2)
    with pytest.raises(SpecError, match="start_step"):
        sampler.rank_steps(0, 0, start_step=3)
    with pytest.raises(SpecError, match="epoch"):
        sampler.step_sizes(-1)
    assert sampler.rank_steps(0, 0, start_step=2) == []


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(0, 10_000),
    weights=st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=12).filter(
        lambda w: sum(w) > 0
    ),
)
def test_split_batch_sums_and_is_proportional(total: int, weights: list[float]) -> None:
    shares = split_batch(total, weights)
    assert sum(shares) == total and all(s >= 0 for s in shares)
    weight_sum = sum(Fraction(w) for w in weights)
    for share, w in zip(shares, weights, strict=True):
        assert abs(share - total * Fraction(w) / weight_sum) < 1


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.integers(0, 100), min_size=1, max_size=10).filter(lambda w: sum(w) > 0),
    min_each=st.integers(0, 20),
    extra=st.integers(0, 500),
)
def test_split_batch_min_each(weights: list[int], min_each: int, extra: int) -> None:
    total = min_each * len(weights) + extra
    shares = split_batch(total, weights, min_each=min_each)
    assert sum(shares) == total
    assert all(s >= min_each for s in shares)
    if all(total * w >= min_each * sum(weights) + sum(weights) for w in weights):
        # The floor does not bind, so it must not distort the plain split.
        assert shares == split_batch(total, weights)


def test_split_batch_examples() -> None:
    assert split_batch(10, [1, 1, 1]) == [4, 3, 3]  # ties go to the lowest index
    assert split_batch(100, [1, 1, 8], min_each=5) == [10, 10, 80]
    assert split_batch(100, [1, 1, 98], min_each=5) == [5, 5, 90]
    assert split_batch(10, [0, 1], min_each=2) == [2, 8]
    assert split_batch(3, [0.1, 0.2, 0.7]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        ((5, []), {}, "empty"),
        ((-1, [1]), {}, "-1"),
        ((5, [0, 0]), {}, "zero"),
        ((5, [1, -1]), {}, "negative"),
        ((5, [1, float("nan")]), {}, "nan"),
        ((5, [1, 2]), {"min_each": 3}, "at least 3"),
        ((5, [1, 2]), {"min_each": -1}, "-1"),
    ],
)
def test_split_batch_invalid(args: tuple, kwargs: dict, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        split_batch(*args, **kwargs)
