"""PlannedBatchSampler and planned_loss in one process: every sample once per epoch, the
single process's global batches, each rank's planned share, the loss scale."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from deepedge.errors import SpecError
from deepedge.launch.plan import RankPlan
from deepedge.launch.sampler import PlannedBatchSampler, _reset_for_tests, planned_loss


@pytest.fixture(autouse=True)
def _fresh():
    _reset_for_tests()
    yield
    _reset_for_tests()


def _plans(batches: list[int], intensities: list[float] | None = None) -> list[RankPlan]:
    n = len(batches)
    return [
        RankPlan(
            policy="test",
            rank=r,
            device=f"d{r}",
            devices=tuple(f"d{i}" for i in range(n)),
            global_batch=sum(batches),
            local_batches=tuple(batches),
            intensities=tuple(intensities or [1.0] * n),
        )
        for r in range(n)
    ]


def _epoch(sampler: PlannedBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize(("size", "batches"), [(100, [5, 2, 9]), (103, [1, 30]), (64, [8, 8])])
def test_the_ranks_together_see_the_single_process_batches(size, batches):
    single = PlannedBatchSampler(size, sum(batches), seed=3, plan=_plans([sum(batches)])[0])
    ranks = [PlannedBatchSampler(size, seed=3, plan=p) for p in _plans(batches)]
    for epoch in (0, 1):
        whole = _epoch(single, epoch)
        per_rank = [_epoch(s, epoch) for s in ranks]
        assert all(len(steps) == len(whole) for steps in per_rank)
        for k, step in enumerate(whole):
            assert [i for steps in per_rank for i in steps[k]] == step
        assert sorted(i for step in whole for i in step) == list(range(size))
        for r, steps in enumerate(per_rank):  # full steps take exactly the planned share
            assert {len(s) for s in steps[: size // sum(batches)]} == {batches[r]}
    assert _epoch(single, 0) != _epoch(single, 1)  # each epoch its own order


def test_a_remainder_smaller_than_the_world_is_left_out_of_the_epoch():
    ranks = [PlannedBatchSampler(34, seed=0, plan=p) for p in _plans([4, 4, 8])]
    assert all(len(s) == 2 and s.dropped_per_epoch == 2 for s in ranks)
    seen = [i for s in ranks for step in _epoch(s, 0) for i in step]
    assert len(seen) == len(set(seen)) == 32


def test_the_scripts_global_batch_rescales_the_plan_and_no_plan_splits_equally():
    scaled = PlannedBatchSampler(1000, 100, plan=_plans([30, 10])[0])
    assert scaled.local_batches == (75, 25) and scaled.local_batch == 75
    equal = PlannedBatchSampler(1000, 10, plan=None)  # no DEEPEDGE_PLAN, no group: 1 rank
    assert equal.local_batches == (10,)
    with pytest.raises(SpecError, match="global batch"):
        PlannedBatchSampler(1000)


def test_a_distributed_sampler_gives_its_data_seed_and_epoch():
    data = torch.utils.data.TensorDataset(torch.arange(50))
    dist_sampler = DistributedSampler(data, num_replicas=2, rank=1, seed=5)
    planned = PlannedBatchSampler(dist_sampler, 10)  # no plan: split as the group is
    assert planned.rank == 1 and planned.local_batches == (5, 5)
    by_seed = PlannedBatchSampler(50, seed=5, plan=_plans([5, 5])[1])
    dist_sampler.set_epoch(3)
    assert list(planned) == _epoch(by_seed, 3)


def test_planned_loss_makes_the_average_of_ranks_the_global_mean():
    sampler = PlannedBatchSampler(22, seed=0, plan=_plans([6, 2])[1])  # rank 1 of [6, 2]
    it = iter(sampler)
    next(it)
    assert planned_loss(torch.tensor(1.0)).item() == pytest.approx(2 * 2 / 8)
    assert planned_loss(torch.tensor(1.0)).item() == pytest.approx(2 * 2 / 8)  # same step
    next(it)
    next(it)  # the tail: 6 samples split in proportion to the plan
    tail = len(list(sampler.step_slices(0))[-1][0])
    planned_loss(torch.tensor(1.0))  # the second step's
    assert planned_loss(torch.tensor(1.0)).item() == pytest.approx(2 * tail / 6)


def test_planned_loss_without_a_planned_batch_is_a_clear_error():
    with pytest.raises(SpecError, match="PlannedBatchSampler"):
        planned_loss(torch.tensor(1.0))
