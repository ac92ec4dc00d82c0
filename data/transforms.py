"""Per-spectrum image transforms of the original pipeline (torchvision + timm's random erasing).

Train: resize (bicubic) -> horizontal flip -> pad -> random crop -> tensor -> normalize -> random erasing with
per-pixel normal noise. Test: resize (bilinear) -> tensor -> normalize. The random ones draw from torch's and
Python's global generators; :class:`data.loader.MultiSpectralDataset` seeds those per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torchvision.transforms as T
from timm.data.random_erasing import RandomErasing
from yacs.config import CfgNode


def train_transform(size: Sequence[int], flip_prob: float, padding: int, erase_prob: float,
                    mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The training pipeline for one spectrum; ``size`` is (height, width)."""
    size = tuple(size)
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=flip_prob),
        T.Pad(padding),
        T.RandomCrop(size),
        T.ToTensor(),
        T.Normalize(mean=list(mean), std=list(std)),
        # Area 0.02..1/3 and aspect 0.3..1/0.3 (log-uniform) as in the original, one box, noise fill.
        RandomErasing(probability=erase_prob, min_area=0.02, max_area=1 / 3, min_aspect=0.3, mode="pixel",
                      max_count=1, device="cpu"),
    ])


def test_transform(size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The test pipeline for one spectrum; ``size`` is (height, width)."""
    return T.Compose([
        T.Resize(tuple(size), interpolation=T.InterpolationMode.BILINEAR),
        T.ToTensor(),
        T.Normalize(mean=list(mean), std=list(std)),
    ])


def build_transforms(cfg: CfgNode, is_train: bool) -> T.Compose:
    """The pipeline configured by ``cfg.INPUT``."""
    if is_train:
        return train_transform(cfg.INPUT.SIZE_TRAIN, cfg.INPUT.PROB, cfg.INPUT.PADDING, cfg.INPUT.RE_PROB,
                               cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
    return test_transform(cfg.INPUT.SIZE_TEST, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
