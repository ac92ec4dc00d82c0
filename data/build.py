"""Everything the engine needs from the data side, built from the config in one place."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from yacs.config import CfgNode

from data.datasets import Record, ReIDDataset, build_dataset
from data.loader import ImageCache, MultiSpectralDataset, collate
from data.samplers import RandomIdentitySampler, RandomShuffleSampler, TrainBatchSampler
from data.transforms import build_transforms
from utils.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """Loaders and the numbers the model and evaluator are built with.

    ``test_loader`` yields the query records, then the gallery records (``num_query`` of the former), in order.
    ``train_sampler.set_epoch(epoch)`` must be called before every epoch.
    """

    train_loader: DataLoader
    test_loader: DataLoader
    num_query: int
    num_classes: int
    num_cameras: int
    dataset: ReIDDataset
    train_sampler: TrainBatchSampler


def build_train_sampler(cfg: CfgNode, records: list[Record], rank: int = 0, world_size: int = 1) -> TrainBatchSampler:
    """The P x K identity sampler (``softmax_triplet``, epochs ending by ``DATALOADER.EPOCH_RULE``) or a plain
    shuffle (``softmax``)."""
    batch, seed = cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.SEED
    if cfg.DATALOADER.SAMPLER == "softmax_triplet":
        return RandomIdentitySampler([r.pid for r in records], batch, cfg.DATALOADER.NUM_INSTANCE, seed, rank,
                                     world_size, cfg.DATALOADER.EPOCH_RULE)
    if cfg.DATALOADER.SAMPLER == "softmax":
        return RandomShuffleSampler(len(records), batch, seed, rank, world_size)
    raise ValueError(f"config key DATALOADER.SAMPLER = {cfg.DATALOADER.SAMPLER!r} is not one of: softmax_triplet, "
                     "softmax")


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` of /proc/meminfo), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def build_image_cache(cfg: CfgNode, records: list[Record], transform: Any, processes: int = 1) -> ImageCache:
    """The training images of ``DATALOADER.CACHE_IMAGES``, after checking that ``processes`` copies of them (one
    per training process on this machine) fit in the available memory."""
    spectra, size = list(cfg.MODEL.SPECTRA), tuple(cfg.INPUT.SIZE_TRAIN)
    need, available = ImageCache.nbytes(len(records), spectra, size), available_memory()
    if available is not None and need * processes > 0.8 * available:
        copies = f" x {processes} processes" if processes > 1 else ""
        raise ConfigError(f"config key DATALOADER.CACHE_IMAGES = True needs {need / 2**30:.1f} GiB{copies} for "
                          f"{len(records)} training samples ({len(spectra)} spectra at {size[0]}x{size[1]}), more "
                          f"than 80% of the {available / 2**30:.1f} GiB of memory available; set it to False")
    start = time.perf_counter()
    cache = ImageCache(records, spectra, transform, threads=cfg.DATALOADER.NUM_WORKERS,
                       progress=len(records) >= 1000)
    logger.info("cached %d training samples (%.2f GiB) in %.1f s", len(records), need / 2**30,
                time.perf_counter() - start)
    return cache


def read_dataset(cfg: CfgNode) -> ReIDDataset:
    """The data set of ``DATASETS.NAMES`` under ``DATASETS.ROOT_DIR``, with the NI image in the TI slot under
    ``DATASETS.NI_AS_TI``; its spectra must hold ``MODEL.SPECTRA`` (the config's validation says so first)."""
    dataset = build_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.DATASETS.NI_AS_TI)
    lacking = [s for s in cfg.MODEL.SPECTRA if s not in dataset.spectra]
    if lacking:
        raise ConfigError(f"config key MODEL.SPECTRA = {list(cfg.MODEL.SPECTRA)} holds {', '.join(lacking)}, which "
                          f"data set {dataset.name} (DATASETS.NAMES) does not have (it has "
                          f"{', '.join(dataset.spectra)})")
    return dataset


def build_dataloader(cfg: CfgNode, distributed: bool = False) -> DataBundle:
    """Read the data set named by ``DATASETS.NAMES`` and build the train and test loaders.

    Only the spectra in ``MODEL.SPECTRA`` are decoded (a slot copied from another spectrum once, with its source).
    Under ``distributed`` every process takes its share of each training batch (``SOLVER.IMS_PER_BATCH`` is the
    global batch); the test loader is the same on every process.
    """
    dataset = read_dataset(cfg)
    rank, world_size = 0, 1
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("build_dataloader(distributed=True) needs an initialised process group")
        rank, world_size = dist.get_rank(), dist.get_world_size()
    spectra = list(cfg.MODEL.SPECTRA)
    workers = cfg.DATALOADER.NUM_WORKERS
    options = {"num_workers": workers, "collate_fn": collate, "persistent_workers": workers > 0,
               "pin_memory": torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu"}
    # The loaders draw their workers' base seed from a generator of their own, not from the global one; the
    # augmentation randomness comes from the per-sample seeds.

    sampler = build_train_sampler(cfg, dataset.train, rank, world_size)
    train_transform = build_transforms(cfg, is_train=True)
    cache = None
    if cfg.DATALOADER.CACHE_IMAGES:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if distributed else 1
        cache = build_image_cache(cfg, dataset.train, train_transform, processes)
    train_set = MultiSpectralDataset(dataset.train, spectra, train_transform, share_aug=cfg.INPUT.SHARE_AUG,
                                     cache=cache)
    train_loader = DataLoader(train_set, batch_sampler=sampler, generator=_generator(cfg.SOLVER.SEED), **options)

    test_loader = build_test_loader(cfg, dataset.query + dataset.gallery, spectra)
    logger.info("train: %d batches of %d in epoch 0 (%s sampler, seed %d%s), test: %d query + %d gallery, spectra %s, "
                "%d workers",
                len(sampler), cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.SAMPLER, cfg.SOLVER.SEED,
                ", images cached" if cache is not None else "", len(dataset.query), len(dataset.gallery),
                ", ".join(spectra), workers)
    return DataBundle(train_loader, test_loader, len(dataset.query), dataset.num_train_pids, dataset.num_train_cams,
                      dataset, sampler)


def build_test_loader(cfg: CfgNode, records: Sequence[Record], spectra: Sequence[str]) -> DataLoader:
    """Batches of ``records`` in order with the test transform (TEST.IMS_PER_BATCH), decoding only ``spectra``."""
    workers = cfg.DATALOADER.NUM_WORKERS
    dataset = MultiSpectralDataset(list(records), list(spectra), build_transforms(cfg, is_train=False))
    return DataLoader(dataset, batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False, num_workers=workers,
                      collate_fn=collate, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu",
                      generator=_generator(cfg.SOLVER.SEED))


@dataclass
class QueryGallery:
    """The evaluation's records: query then gallery, and the junk rule's key ("camid" or "sceneid")."""

    records: list[Record]
    num_query: int
    junk_key: str


def build_query_gallery(cfg: CfgNode) -> QueryGallery:
    """Query + gallery records of the configured data set, in the evaluation's order."""
    dataset = read_dataset(cfg)
    return QueryGallery(dataset.query + dataset.gallery, len(dataset.query), dataset.junk_key)
