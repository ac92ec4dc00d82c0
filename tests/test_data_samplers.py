"""P x K identity sampler and plain shuffle: batch structure, order by (seed, epoch) only, ranks disjoint."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from data.samplers import RandomIdentitySampler, RandomShuffleSampler

# 12 identities with 1..9 images each, interleaved in the record list.
PIDS = [pid for n in range(9) for pid in range(12) if n < 1 + (pid * 5) % 9]


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return [list(batch) for batch in sampler]


def test_pk_structure_and_length():
    batch, k = 16, 4
    sampler = RandomIdentitySampler(PIDS, batch, k, seed=3)
    batches = _epoch(sampler, 1)
    chunks = sum(max(n, k) // k for n in Counter(PIDS).values())
    assert len(batches) == len(sampler) == chunks // (batch // k)
    for b in batches:
        assert len(b) == batch
        pids = [PIDS[index] for index, _ in b]
        counts = Counter(pids)
        assert len(counts) == batch // k and set(counts.values()) == {k}
        # each identity's K images are contiguous in the batch
        assert [pids[i] for i in range(0, batch, k)] == list(dict.fromkeys(pids))
    seen = {index for b in batches for index, _ in b}
    assert len(seen) > 0.6 * len(PIDS)


def test_identities_with_few_images_are_sampled_with_replacement(caplog):
    pids = [0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    with caplog.at_level(logging.INFO, logger="data.samplers"):
        sampler = RandomIdentitySampler(pids, 8, 4, seed=0)
    assert "2 of 4 training identities have fewer than DATALOADER.NUM_INSTANCE = 4" in caplog.text
    for epoch in range(5):
        for b in _epoch(sampler, epoch):
            assert set(Counter(pids[i] for i, _ in b).values()) == {4}
            assert {i for i, _ in b if pids[i] == 0} <= {0}


def test_same_seed_and_epoch_same_order_other_epoch_or_seed_differs():
    a = RandomIdentitySampler(PIDS, 16, 4, seed=7)
    b = RandomIdentitySampler(PIDS, 16, 4, seed=7)
    assert _epoch(a, 3) == _epoch(b, 3)
    assert _epoch(a, 3) == _epoch(a, 3)  # re-iterating the same epoch
    assert _epoch(a, 3) != _epoch(a, 4)
    assert _epoch(a, 3) != _epoch(RandomIdentitySampler(PIDS, 16, 4, seed=8), 3)
    seeds = [s for batch in _epoch(a, 3) for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # one sample seed per position
    assert seeds != [s for batch in _epoch(a, 4) for _, s in batch]


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_take_disjoint_parts_of_the_same_global_batches(world_size):
    full = _epoch(RandomIdentitySampler(PIDS, 16, 4, seed=1), 2)
    parts = [_epoch(RandomIdentitySampler(PIDS, 16, 4, seed=1, rank=r, world_size=world_size), 2)
             for r in range(world_size)]
    assert all(len(p) == len(full) for p in parts)
    for i, batch in enumerate(full):
        pieces = [p[i] for p in parts]
        assert all(len(piece) == 16 // world_size for piece in pieces)
        assert sum(pieces, []) == batch  # disjoint positions covering the global batch, same sample seeds
        if world_size == 2:  # whole identities per rank when NUM_INSTANCE divides the share
            ids = [{PIDS[j] for j, _ in piece} for piece in pieces]
            assert not ids[0] & ids[1]


def test_shuffle_sampler():
    sampler = RandomShuffleSampler(50, 8, seed=2)
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler) == 6 and all(len(b) == 8 for b in batches)
    indices = [i for b in batches for i, _ in b]
    assert len(set(indices)) == 48 and set(indices) <= set(range(50))
    assert batches == _epoch(RandomShuffleSampler(50, 8, seed=2), 0) and batches != _epoch(sampler, 1)
    halves = [_epoch(RandomShuffleSampler(50, 8, seed=2, rank=r, world_size=2), 0) for r in range(2)]
    assert [h0 + h1 for h0, h1 in zip(*halves)] == batches


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="IMS_PER_BATCH = 10 must be divisible by DATALOADER.NUM_INSTANCE = 4"):
        RandomIdentitySampler(PIDS, 10, 4)
    with pytest.raises(ValueError, match="needs 13 identities.*has 12"):
        RandomIdentitySampler(PIDS, 52, 4)
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        RandomIdentitySampler(PIDS, 16, 4, world_size=3, rank=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        RandomShuffleSampler(5, 8)
