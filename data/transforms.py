"""Per-spectrum image transforms of the original pipeline, on decoded uint8 [H, W, 3] RGB arrays.

Train: resize (bicubic) -> horizontal flip -> pad -> random crop -> tensor -> normalize -> random erasing with
per-pixel normal noise. Test: resize (bilinear) -> tensor -> normalize.

They compute what the torchvision composition ``T.Resize, T.RandomHorizontalFlip, T.Pad, T.RandomCrop, T.ToTensor,
T.Normalize`` followed by timm's ``RandomErasing`` computes on a PIL image, bit for bit, drawing the same random
numbers from torch's and Python's generators in the same order (``tests/test_data_transforms.py``). The work is
arranged for speed: flip, pad and crop move uint8 pixels with OpenCV, the conversion to float runs once on the
cropped image, and resizing (PIL's, as torchvision applies it to PIL images) is skipped at the target size (timings
in ``benchmarks/RESULTS.md``).
:class:`data.loader.MultiSpectralDataset` seeds the generators per sample.

Each pipeline is ``finish(prepare(image))``: ``prepare`` is the deterministic resize to ``size``, ``finish`` the
rest. An image cache (:class:`data.loader.ImageCache`) keeps the prepared images and only runs ``finish``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from timm.data.random_erasing import RandomErasing
from yacs.config import CfgNode

# OpenCV's own threads would compete with the loader's workers for a few-microsecond copy.
cv2.setNumThreads(1)


def resize(image: np.ndarray, size: Sequence[int], resample: int) -> np.ndarray:
    """PIL's resize to ``size`` (height, width), as ``T.Resize`` does it on PIL images; the input at that size."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.array(Image.fromarray(image).resize((width, height), resample))


class ToNormalizedTensor:
    """uint8 [H, W, C] -> float [C, H, W] in [0, 1], then ``(x - mean) / std`` per channel: ``T.ToTensor`` and
    ``T.Normalize`` with the same float operations."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return torch.div(to_planes(image), 255).sub_(self.mean).div_(self.std)  # uint8 / 255 runs in float32


def to_planes(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] -> uint8 [C, H, W] tensor, one contiguous plane per channel."""
    planes = torch.empty(image.shape[2], image.shape[0], image.shape[1], dtype=torch.uint8)
    cv2.split(image, list(planes.numpy()))
    return planes


def random_crop_origin(shape: Sequence[int], size: Sequence[int]) -> tuple[int, int]:
    """The top-left corner of a random ``size`` crop of an image of ``shape`` (height, width), drawn as
    ``T.RandomCrop.get_params`` draws it: no draw when the sizes are equal, else the top row, then the left column."""
    (height, width), (crop_h, crop_w) = shape, size
    if height == crop_h and width == crop_w:
        return 0, 0
    top = int(torch.randint(0, height - crop_h + 1, size=(1,)).item())
    left = int(torch.randint(0, width - crop_w + 1, size=(1,)).item())
    return top, left


class TrainTransform:
    """The training pipeline for one spectrum; ``size`` is (height, width)."""

    def __init__(self, size: Sequence[int], flip_prob: float, padding: int, erase_prob: float,
                 mean: Sequence[float], std: Sequence[float], uint8_output: bool = False) -> None:
        self.size = tuple(size)
        self.uint8_output = uint8_output
        self.flip_prob = flip_prob
        self.padding = padding
        self.to_tensor = ToNormalizedTensor(mean, std)
        # Area 0.02..1/3 and aspect 0.3..1/0.3 (log-uniform) as in the original, one box, noise fill.
        self.erase = RandomErasing(probability=erase_prob, min_area=0.02, max_area=1 / 3, min_aspect=0.3,
                                   mode="pixel", max_count=1, device="cpu")

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.finish(self.prepare(image))

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The deterministic part: bicubic resize to ``size``."""
        return resize(image, self.size, Image.BICUBIC)

    def finish(self, image: np.ndarray) -> torch.Tensor:
        """The random part, on an image at ``size``: flip, pad, crop, tensor, normalize, erase. With
        ``uint8_output`` only pad and crop, to a uint8 [C, H, W] tensor: :class:`data.gpu_augment.BatchAugment`
        does the rest in batch on the training device."""
        if self.uint8_output:
            return to_planes(self._pad_crop(image))
        if torch.rand(1) < self.flip_prob:  # T.RandomHorizontalFlip's draw
            image = cv2.flip(image, 1)
        return self.erase(self.to_tensor(self._pad_crop(image)))

    def _pad_crop(self, image: np.ndarray) -> np.ndarray:
        if self.padding:  # the padding is symmetric, so padding after the flip equals T.Pad after it
            p = self.padding
            image = cv2.copyMakeBorder(image, p, p, p, p, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        top, left = random_crop_origin(image.shape[:2], self.size)
        return image[top:top + self.size[0], left:left + self.size[1]]


class EvalTransform:
    """The test pipeline for one spectrum; ``size`` is (height, width)."""

    def __init__(self, size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = tuple(size)
        self.to_tensor = ToNormalizedTensor(mean, std)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        return self.finish(self.prepare(image))

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Bilinear resize to ``size``."""
        return resize(image, self.size, Image.BILINEAR)

    def finish(self, image: np.ndarray) -> torch.Tensor:
        """Tensor and normalize, on an image at ``size``."""
        return self.to_tensor(image)


def build_transforms(cfg: CfgNode, is_train: bool) -> TrainTransform | EvalTransform:
    """The pipeline configured by ``cfg.INPUT`` (training with ``INPUT.GPU_AUGMENT``: uint8 after pad and crop)."""
    if is_train:
        return TrainTransform(cfg.INPUT.SIZE_TRAIN, cfg.INPUT.PROB, cfg.INPUT.PADDING, cfg.INPUT.RE_PROB,
                              cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, uint8_output=cfg.INPUT.GPU_AUGMENT)
    return EvalTransform(cfg.INPUT.SIZE_TEST, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
