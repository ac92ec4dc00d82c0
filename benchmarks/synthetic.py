"""Synthetic data for the benchmarks: camera-like or noise pictures, and RGBNT201-layout trees of real-sized JPEGs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SPECTRUM_FOLDERS = ("RGB", "NI", "TI")


def pixels(rng: np.random.Generator, height: int, width: int, content: str) -> np.ndarray:
    """A uint8 [H, W, 3] picture: "photo" is a smooth random colour field with mild sensor noise (compresses like
    a camera picture), "noise" is uniform noise in every pixel (the worst case for a JPEG decoder)."""
    if content == "noise":
        return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    import cv2

    coarse = rng.uniform(0, 255, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)


def write_rgbnt201(root: Path, train_ids: int, per_id: int, test_ids: int = 2, test_per_id: int = 2,
                   cameras: int = 4, threads: int = 8) -> Path:
    """``root/RGBNT201/{train_171,test}/{RGB,NI,TI}/<pid>_cam<c>_0_<k>.jpg``: ``train_ids`` identities of ``per_id``
    samples (three 256x128 camera-like JPEGs each, quality 90), cameras in turn; returns ``root``."""
    from PIL import Image

    jobs = [("train_171", pid, k) for pid in range(1, train_ids + 1) for k in range(per_id)]
    jobs += [("test", 1000 + pid, k) for pid in range(test_ids) for k in range(test_per_id)]
    for split in ("train_171", "test"):
        for s in SPECTRUM_FOLDERS:
            (root / "RGBNT201" / split / s).mkdir(parents=True, exist_ok=True)

    def write(job: tuple[str, int, int]) -> None:
        split, pid, k = job
        rng = np.random.default_rng([pid, k])
        name = f"{pid:06d}_cam{k % cameras + 1}_0_{k:02d}.jpg"
        for s in SPECTRUM_FOLDERS:
            Image.fromarray(pixels(rng, 256, 128, "photo")).save(root / "RGBNT201" / split / s / name, quality=90)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(write, jobs))
    return root
