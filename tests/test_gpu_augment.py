"""INPUT.GPU_AUGMENT: the batched device-side augmentation (data/gpu_augment.py), run here on CPU tensors, against
the per-image CPU path (data/transforms.py with timm's RandomErasing).

Normalisation is compared exactly; flip and erasing draw from other generators, so their distributions are compared:
rates and box statistics over many draws, each difference within 5 standard errors of a difference of two
independent sample means (binomial or sample standard deviations), not a hand-tuned tolerance.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from data.gpu_augment import BatchAugment
from data.transforms import ToNormalizedTensor, TrainTransform

MEAN, STD = (0.5, 0.45, 0.4), (0.5, 0.25, 0.2)
H, W = 32, 16
SIGMAS = 5.0
N_CPU, N_BATCH = 3000, 6000


def _within(a: np.ndarray, b: np.ndarray, what: str) -> None:
    """Means of two independent samples agree within SIGMAS standard errors of their difference."""
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    assert abs(a.mean() - b.mean()) <= SIGMAS * se + 1e-12, \
        f"{what}: {a.mean():.4f} (batched) vs {b.mean():.4f} (CPU path), {SIGMAS} x se = {SIGMAS * se:.4f}"


def _cpu_outputs(flip_prob: float, erase_prob: float, image: np.ndarray, n: int) -> torch.Tensor:
    transform = TrainTransform((H, W), flip_prob, 0, erase_prob, MEAN, STD)
    torch.manual_seed(0)
    random.seed(0)
    return torch.stack([transform.finish(image) for _ in range(n)])


def _batched_outputs(flip_prob: float, erase_prob: float, image: np.ndarray, n: int) -> torch.Tensor:
    augment = BatchAugment(MEAN, STD, flip_prob, erase_prob, seed=1)
    batch = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).expand(n, -1, -1, -1).contiguous()
    return torch.cat([augment(chunk) for chunk in batch.split(2000)])


def test_normalisation_equals_the_cpu_path_exactly():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, H, W), generator=g, dtype=torch.uint8)
    batched = BatchAugment(MEAN, STD, flip_prob=0.0, erase_prob=0.0)(images)
    per_image = torch.stack([ToNormalizedTensor(MEAN, STD)(np.ascontiguousarray(x.permute(1, 2, 0).numpy()))
                             for x in images])
    assert batched.dtype == torch.float32
    assert torch.equal(batched, per_image)
    assert torch.equal(BatchAugment(MEAN, STD)(images, train=False), per_image)


def test_uint8_loader_output_is_the_crop_before_normalisation():
    """With GPU augmentation the loader's transform stops after pad and crop; without padding the crop is the
    image itself, and normalising it gives the CPU path's tensor (flip and erasing off)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    out = TrainTransform((H, W), 0.0, 0, 0.0, MEAN, STD, uint8_output=True).finish(image)
    assert out.dtype == torch.uint8 and out.shape == (3, H, W)
    full = TrainTransform((H, W), 0.0, 0, 0.0, MEAN, STD).finish(image)
    assert torch.equal(BatchAugment(MEAN, STD, 0.0, 0.0)(out[None])[0], full)
    padded = TrainTransform((H, W), 0.0, 4, 0.0, MEAN, STD, uint8_output=True).finish(image)
    assert padded.shape == (3, H, W) and padded.dtype == torch.uint8


def test_flip_rate_matches_the_cpu_path():
    ramp = np.broadcast_to(np.arange(W, dtype=np.uint8)[None, :, None] * 16, (H, W, 3)).copy()
    unflipped = ToNormalizedTensor(MEAN, STD)(ramp)

    def flipped(out: torch.Tensor) -> np.ndarray:
        is_flipped = (out == unflipped.flip(-1)).flatten(1).all(1)
        assert bool((is_flipped | (out == unflipped).flatten(1).all(1)).all()), "outputs other than the two views"
        return is_flipped.double().numpy()

    batched = flipped(_batched_outputs(0.5, 0.0, ramp, N_BATCH))
    cpu = flipped(_cpu_outputs(0.5, 0.0, ramp, N_CPU))
    _within(batched, cpu, "flip rate")
    assert abs(batched.mean() - 0.5) <= SIGMAS * math.sqrt(0.25 / N_BATCH)


def _boxes(out: torch.Tensor, background: torch.Tensor) -> dict[str, np.ndarray]:
    """Per output: erased or not, and the erased box's area fraction, log aspect (h / w), centre (relative)."""
    changed = (out != background).any(1)  # [N, H, W]; N(0, 1) noise never equals the constant background
    rows, cols = changed.any(2), changed.any(1)
    erased = rows.any(1)
    h, w = rows.sum(1)[erased].double(), cols.sum(1)[erased].double()
    top = rows[erased].double().argmax(1)
    left = cols[erased].double().argmax(1)
    # the box is a full rectangle: every pixel in its bounding box changed
    assert bool((changed[erased].flatten(1).sum(1) == (h * w).long()).all())
    return {"rate": erased.double().numpy(), "area": (h * w / (H * W)).numpy(), "log_aspect": (h / w).log().numpy(),
            "centre_y": ((top + h / 2) / H).numpy(), "centre_x": ((left + w / 2) / W).numpy()}


def test_erasing_rate_and_box_statistics_match_the_cpu_path():
    grey = np.full((H, W, 3), 128, np.uint8)
    background = ToNormalizedTensor(MEAN, STD)(grey)
    batched = _boxes(_batched_outputs(0.0, 0.5, grey, N_BATCH), background)
    cpu = _boxes(_cpu_outputs(0.0, 0.5, grey, N_CPU), background)
    for key in batched:
        _within(batched[key], cpu[key], key)
    # the box limits of the original settings: area 0.02..1/3 (before rounding), aspect 0.3..3.3
    assert batched["area"].min() > 0.015 and batched["area"].max() < 0.36
    assert batched["log_aspect"].min() > math.log(0.3) - 0.2 and batched["log_aspect"].max() < math.log(1 / 0.3) + 0.2


def test_erased_pixels_are_standard_normal():
    grey = np.full((H, W, 3), 128, np.uint8)
    background = ToNormalizedTensor(MEAN, STD)(grey)
    out = _batched_outputs(0.0, 1.0, grey, 1000)
    values = out[out != background].double()
    n = values.numel()
    assert n > 5000
    assert abs(values.mean().item()) <= SIGMAS / math.sqrt(n)
    assert abs(values.var().item() - 1.0) <= SIGMAS * math.sqrt(2 / n)


def test_shared_draws_and_state_round_trip():
    g = torch.Generator().manual_seed(0)
    images = {s: torch.randint(0, 256, (8, 3, H, W), generator=g, dtype=torch.uint8) for s in ("RGB", "NI")}
    same = {s: images["RGB"] for s in images}
    augment = BatchAugment(MEAN, STD, 0.5, 0.5, seed=3)
    shared = augment.batch(same, share=True)
    assert torch.equal(shared["RGB"], shared["NI"])
    independent = augment.batch(same)
    assert not torch.equal(independent["RGB"], independent["NI"])

    state = augment.state_dict()
    first = augment.batch(images)
    restored = BatchAugment(MEAN, STD, 0.5, 0.5, seed=99)
    restored.load_state_dict(state)
    again = restored.batch(images)
    for s in images:
        assert torch.equal(first[s], again[s])


def test_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        BatchAugment(MEAN, STD)(torch.zeros(1, 3, H, W))
