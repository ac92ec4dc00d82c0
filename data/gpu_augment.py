"""The random part of the training transforms, in batch on whatever device the batch is on (``INPUT.GPU_AUGMENT``).

The loader then sends uint8 [B, 3, H, W] images after resize, pad and crop (a quarter of the float bytes), and
:class:`BatchAugment` does what :class:`data.transforms.TrainTransform` does per image after that: float conversion
and normalisation (the same float operations, so equal bit for bit), horizontal flip with ``flip_prob``, and timm's
``RandomErasing`` in ``pixel`` mode with the original's settings (probability ``erase_prob``, one box, up to 10
attempts, area 0.02..1/3 of the image, aspect ratio log-uniform in 0.3..1/0.3, per-channel per-pixel N(0, 1) values
in normalised space), vectorised over the batch.

Differences from the CPU path: the flip comes after pad and crop (the same distribution: the padding is symmetric and
the crop offset uniform), and the draws come from one generator on the device, so the pixels differ from the CPU
path's for the same seeds; the distributions are the same (``tests/test_gpu_augment.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

ERASE_ATTEMPTS = 10  # timm RandomErasing tries this many boxes and erases nothing when none fits


class BatchAugment:
    """uint8 [B, C, H, W] -> normalised float [B, C, H, W] with flip and random erasing drawn per image.

    ``seed`` seeds one generator per device; :meth:`state_dict` / :meth:`load_state_dict` carry their states across a
    resume. With ``train=False`` only the conversion and normalisation run."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], flip_prob: float = 0.5, erase_prob: float = 0.5,
                 area: tuple[float, float] = (0.02, 1 / 3), aspect: tuple[float, float] = (0.3, 1 / 0.3),
                 seed: int = 0) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        self.flip_prob, self.erase_prob = flip_prob, erase_prob
        self.area = area
        self.log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}
        self._pending_state: dict[str, torch.Tensor] = {}
        self._constants: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # mean, std per device: copied once

    # ------------------------------------------------------------------------------------------------------------
    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            if key in self._pending_state:
                g.set_state(self._pending_state.pop(key))
            self._generators[key] = g
        return self._generators[key]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self._pending_state, **{k: g.get_state() for k, g in self._generators.items()}}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self._generators.clear()
        self._pending_state = dict(state)

    # ------------------------------------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float32 in [0, 1] -> (x - mean) / std, the operations of ``ToNormalizedTensor``."""
        key = str(images.device)
        if key not in self._constants:  # a copy to a GPU from ordinary memory waits for it: once, not per step
            self._constants[key] = (self.mean.to(images.device), self.std.to(images.device))
        mean, std = self._constants[key]
        return torch.div(images, 255).sub_(mean).div_(std)

    def flip_mask(self, batch: int, device: torch.device) -> torch.Tensor:
        """[B] bool: which images are flipped."""
        return torch.rand(batch, generator=self.generator(device), device=device) < self.flip_prob

    def erase_boxes(self, batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """[B, 5] long: (erase?, top, left, h, w) per image, drawn as timm's ``RandomErasing._erase`` draws them:
        with probability ``erase_prob``, the first of 10 attempts whose box fits inside the image (none: no
        erasing); box area uniform in ``area`` x H x W, aspect log-uniform, h and w rounded, top and left uniform
        over the positions that keep the box inside."""
        g = self.generator(device)
        draws = torch.rand(batch, 3 + 4 * ERASE_ATTEMPTS, generator=g, device=device, dtype=torch.float64)
        erase = draws[:, 0] < self.erase_prob
        attempts = draws[:, 3:].view(batch, 4, ERASE_ATTEMPTS)
        lo, hi = self.area
        target = (lo + (hi - lo) * attempts[:, 0]) * (height * width)
        ratio = torch.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * attempts[:, 1])
        h = torch.round(torch.sqrt(target * ratio)).long()  # round half to even, as Python's round
        w = torch.round(torch.sqrt(target / ratio)).long()
        fits = (w < width) & (h < height)
        first = fits.long().argmax(1, keepdim=True)  # first fitting attempt (0 when none fits; masked below)
        erase &= fits.any(1)
        h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
        u_top, u_left = attempts[:, 2].gather(1, first)[:, 0], attempts[:, 3].gather(1, first)[:, 0]
        top = torch.floor(u_top * (height - h + 1)).long().clamp_(min=0)  # uniform in 0..H-h, as random.randint
        left = torch.floor(u_left * (width - w + 1)).long().clamp_(min=0)
        return torch.stack([erase.long(), top, left, h, w], dim=1)

    def __call__(self, images: torch.Tensor, train: bool = True) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"BatchAugment expects uint8 [B, C, H, W] images, got {images.dtype} {list(images.shape)}")
        x = self.normalize(images)
        if not train:
            return x
        batch, channels, height, width = x.shape
        device = x.device
        if self.flip_prob > 0:
            x = torch.where(self.flip_mask(batch, device).view(-1, 1, 1, 1), x.flip(-1), x)
        if self.erase_prob > 0:
            box = self.erase_boxes(batch, height, width, device)
            erase, top, left, h, w = (c.view(-1, 1, 1, 1) for c in box.unbind(1))
            rows = torch.arange(height, device=device).view(1, 1, -1, 1)
            cols = torch.arange(width, device=device).view(1, 1, 1, -1)
            inside = (erase > 0) & (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
            noise = torch.randn(x.shape, generator=self.generator(device), device=device, dtype=x.dtype)
            x = torch.where(inside, noise, x)
        return x

    def batch(self, images: Mapping[str, torch.Tensor], share: bool = False) -> dict[str, torch.Tensor]:
        """Every spectrum of a batch; ``share`` gives every spectrum the same flip and box (``INPUT.SHARE_AUG``),
        otherwise each its own, as the original draws per spectrum."""
        if not share or not images:
            return {s: self(x) for s, x in images.items()}
        first = next(iter(images.values()))
        g = self.generator(first.device)
        state = g.get_state()
        out = {}
        for s, x in images.items():
            g.set_state(state)
            out[s] = self(x)
        return out


def build_batch_augment(cfg, seed: int | None = None) -> BatchAugment:
    """The :class:`BatchAugment` of ``cfg.INPUT`` (seed: ``SOLVER.SEED`` unless given)."""
    return BatchAugment(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, cfg.INPUT.PROB, cfg.INPUT.RE_PROB,
                        seed=cfg.SOLVER.SEED if seed is None else seed)
