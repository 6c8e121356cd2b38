"""Length-grouped sampler: one global order on every rank, resumable, grouped by length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsa.data.sampler import LengthGroupedSampler

LENGTHS = np.random.default_rng(0).integers(10, 400, 203).tolist()


def ranks(world: int, micro: int = 4, seed: int = 5, epoch: int = 0, lengths=LENGTHS) -> list[list[int]]:
    out = []
    for rank in range(world):
        sampler = LengthGroupedSampler(lengths, micro, world_size=world, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_rank_computes_the_same_global_order(world):
    per_rank = ranks(world)
    orders = []
    for rank in range(world):
        sampler = LengthGroupedSampler(LENGTHS, 4, world_size=world, rank=rank, seed=5)
        orders.append(sampler.global_order())
        assert list(sampler) == orders[-1][:, rank].ravel().tolist() == per_rank[rank]
    assert all(np.array_equal(orders[0], o) for o in orders)
    assert len({len(p) for p in per_rank}) == 1  # same number of steps everywhere
    union = [i for p in per_rank for i in p]
    assert set(union) == set(range(len(LENGTHS)))  # every sample, padded by repeats only
    assert len(union) - len(LENGTHS) < 4 * world


def test_resume_continues_exactly_where_it_stopped():
    full = ranks(2)[1]
    sampler = LengthGroupedSampler(LENGTHS, 4, world_size=2, rank=1, seed=5)
    it = iter(sampler)
    consumed = [next(it) for _ in range(12)]
    sampler.advance(12)
    state = sampler.state_dict()
    resumed = LengthGroupedSampler(LENGTHS, 4, world_size=2, rank=1, seed=5)
    resumed.load_state_dict(state)
    assert consumed + list(resumed) == full
    resumed.set_epoch(1)
    assert list(resumed) != full and sorted(set(resumed)) == sorted(set(ranks(2, epoch=1)[1]))


def test_epochs_and_seeds_change_the_order():
    assert ranks(1, epoch=0) != ranks(1, epoch=1)
    assert ranks(1, seed=1) != ranks(1, seed=2)


def test_micro_batches_group_similar_lengths_and_the_longest_comes_first():
    lengths = np.asarray(LENGTHS)
    sampler = LengthGroupedSampler(LENGTHS, 4, world_size=2, seed=5)
    order = sampler.global_order()  # (steps, world, micro)
    assert lengths[order[0]].max() == lengths.max()
    grouped_pad = np.mean([lengths[b].max() - lengths[b].mean() for b in order.reshape(-1, 4)])
    plain = LengthGroupedSampler(LENGTHS, 4, world_size=2, seed=5, group_by_length=False).global_order()
    plain_pad = np.mean([lengths[b].max() - lengths[b].mean() for b in plain.reshape(-1, 4)])
    assert grouped_pad < plain_pad / 2


def test_works_with_a_dataloader_and_tiny_datasets():
    sampler = LengthGroupedSampler([5, 9, 7], 4, world_size=2, rank=0)
    loader = torch.utils.data.DataLoader(list(range(3)), batch_size=4, sampler=sampler)
    batches = [b.tolist() for b in loader]
    assert len(batches) == 1 and len(batches[0]) == 4 and set(batches[0]) <= {0, 1, 2}
    with pytest.raises(ValueError, match="rank 2"):
        LengthGroupedSampler([1], 1, world_size=2, rank=2)
