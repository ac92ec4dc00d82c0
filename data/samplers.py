"""Training batch samplers whose order depends only on (seed, epoch), on any number of ranks and workers.

Each sampler builds the epoch's *global* batches (``SOLVER.IMS_PER_BATCH`` indices each) from a generator seeded
with (seed, epoch), gives every position of the epoch its own sample seed (for the augmentation randomness, see
:class:`data.loader.MultiSpectralDataset`), and yields ``[(index, sample_seed), ...]`` for its rank: rank r of
W takes the r-th contiguous 1/W of every global batch. So the ranks see disjoint parts of the same global batches,
and the global batches (images and augmentations) are the same whatever the number of ranks.

The number of batches of an epoch may vary with the epoch (``DATALOADER.EPOCH_RULE original``); ``len(sampler)`` is
that of the epoch selected by :meth:`TrainBatchSampler.set_epoch`, computed from (seed, epoch) before iterating.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Sampler

logger = logging.getLogger(__name__)

_ORDER_STREAM, _SEED_STREAM = 0, 1
_MAX_SEED = 2**63 - 1


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, stream)."""
    return np.random.default_rng([seed, epoch, stream])


class TrainBatchSampler(Sampler):
    """Base class: global batches of ``batch_size`` indices per epoch, this rank's share of each as
    ``(index, sample_seed)`` pairs. Subclasses define :meth:`global_batches`."""

    def __init__(self, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size (SOLVER.IMS_PER_BATCH) must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world size {world_size}")
        if batch_size % world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH = {batch_size} must be divisible by the number of processes "
                             f"({world_size}): each process takes an equal share of every batch")
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.per_rank = batch_size // world_size
        self.epoch = 0
        self._cached: tuple[int, np.ndarray] | None = None  # (epoch, its global batches)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields (call before every epoch)."""
        self.epoch = epoch

    def global_batches(self, rng: np.random.Generator) -> np.ndarray:
        """The epoch's batches as an int array [num_batches, batch_size]."""
        raise NotImplementedError

    def epoch_batches(self) -> np.ndarray:
        """The global batches of the selected epoch [num_batches, batch_size] (computed once per epoch)."""
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self.global_batches(epoch_rng(self.seed, self.epoch, _ORDER_STREAM)))
        return self._cached[1]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches = self.epoch_batches()
        seeds = epoch_rng(self.seed, self.epoch, _SEED_STREAM).integers(0, _MAX_SEED, size=batches.shape)
        lo, hi = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        for indices, sample_seeds in zip(batches[:, lo:hi].tolist(), seeds[:, lo:hi].tolist()):
            yield list(zip(indices, sample_seeds))

    def __len__(self) -> int:
        return len(self.epoch_batches())


EPOCH_RULES = ("original", "fixed")


class RandomIdentitySampler(TrainBatchSampler):
    """P x K batches: ``batch_size / num_instances`` identities with ``num_instances`` images each.

    Every epoch each identity's images are shuffled and cut into chunks of K (the last incomplete chunk is dropped;
    an identity with fewer than K images gets one chunk drawn with replacement), and batches take one chunk from
    each of P distinct identities, chosen uniformly among those with chunks left. ``epoch_rule`` says when the
    epoch ends (``DATALOADER.EPOCH_RULE``):

    - ``original``: as soon as fewer than P identities have chunks left, as the sampler of the original code
      (TransReID / TOP-ReID). The number of batches varies from epoch to epoch (it is at most
      ``sum_i max(n_i, K) // K // P``; identities with many images keep chunks unused at the end).
    - ``fixed``: every epoch has ``sum_i max(n_i, K) // K // P`` batches; when fewer than P identities have chunks
      left before that, a new round of chunks of every identity is dealt (added to what is left) and batching goes on.
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, epoch_rule: str = "fixed") -> None:
        super().__init__(batch_size, seed, rank, world_size)
        if num_instances < 1 or batch_size % num_instances:
            raise ValueError(f"SOLVER.IMS_PER_BATCH = {batch_size} must be divisible by DATALOADER.NUM_INSTANCE = "
                             f"{num_instances}")
        if epoch_rule not in EPOCH_RULES:
            raise ValueError(f"DATALOADER.EPOCH_RULE = {epoch_rule!r} is not one of: {', '.join(EPOCH_RULES)}")
        self.epoch_rule = epoch_rule
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        by_pid: dict[int, list[int]] = {}
        for index, pid in enumerate(pids):
            by_pid.setdefault(int(pid), []).append(index)
        self.pids = sorted(by_pid)
        self.index_of = {pid: np.asarray(by_pid[pid], dtype=np.int64) for pid in self.pids}
        if len(self.pids) < self.num_pids_per_batch:
            raise ValueError(f"a batch needs {self.num_pids_per_batch} identities (SOLVER.IMS_PER_BATCH / "
                             f"DATALOADER.NUM_INSTANCE = {batch_size} / {num_instances}) but the training split has "
                             f"{len(self.pids)}")
        chunks = sum(max(len(v), num_instances) // num_instances for v in self.index_of.values())
        self.max_batches = chunks // self.num_pids_per_batch
        few = [pid for pid in self.pids if len(self.index_of[pid]) < num_instances]
        if few:
            logger.info("%d of %d training identities have fewer than DATALOADER.NUM_INSTANCE = %d images; their "
                        "images are sampled with replacement", len(few), len(self.pids), num_instances)
        if world_size > 1 and self.per_rank % num_instances:
            logger.warning("each of the %d processes takes %d images of every batch, not a whole number of "
                           "identities (NUM_INSTANCE = %d): identities are split across processes", world_size,
                           self.per_rank, num_instances)

    def _deal(self, rng: np.random.Generator, queues: dict[int, deque]) -> None:
        k = self.num_instances
        for pid in self.pids:
            indices = self.index_of[pid]
            if len(indices) < k:
                indices = rng.choice(indices, size=k, replace=True)
            else:
                indices = rng.permutation(indices)
            queues[pid].extend(indices[i:i + k] for i in range(0, len(indices) - k + 1, k))

    def global_batches(self, rng: np.random.Generator) -> np.ndarray:
        queues: dict[int, deque] = {pid: deque() for pid in self.pids}
        self._deal(rng, queues)
        batches = []
        while len(batches) < self.max_batches:
            available = [pid for pid in self.pids if queues[pid]]
            if len(available) < self.num_pids_per_batch:
                if self.epoch_rule == "original":
                    break
                self._deal(rng, queues)
                continue
            chosen = rng.choice(available, size=self.num_pids_per_batch, replace=False)
            batches.append(np.concatenate([queues[int(pid)].popleft() for pid in chosen]))
        return np.stack(batches) if batches else np.zeros((0, self.batch_size), dtype=np.int64)


class RandomShuffleSampler(TrainBatchSampler):
    """A plain shuffle (``DATALOADER.SAMPLER softmax``); the last incomplete batch is dropped."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(batch_size, seed, rank, world_size)
        if num_samples < batch_size:
            raise ValueError(f"the training split has {num_samples} samples, fewer than one batch "
                             f"(SOLVER.IMS_PER_BATCH = {batch_size})")
        self.num_samples = num_samples

    def global_batches(self, rng: np.random.Generator) -> np.ndarray:
        num_batches = self.num_samples // self.batch_size
        order = rng.permutation(self.num_samples)[:num_batches * self.batch_size]
        return order.reshape(num_batches, self.batch_size)


class SkipBatches(Sampler):
    """The batches of a batch sampler after the first ``skip``: resuming in the middle of an epoch."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def skip_batches(loader: DataLoader, skip: int) -> DataLoader:
    """``loader`` without its first ``skip`` batches (the same batches after them)."""
    if skip == 0:
        return loader
    return DataLoader(loader.dataset, batch_sampler=SkipBatches(loader.batch_sampler, skip),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      generator=loader.generator)  # never draw from the global RNG: resume must not shift it
