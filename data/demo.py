"""A small synthetic tri-spectral person data set in the exact RGBNT201 layout, generated on first use.

Identity is split across the spectra. Every identity is a code of three attributes, one per spectrum, each with
six values:

- RGB shows clothing colours: upper body red / green / blue x lower body dark / light;
- NI shows clothing texture: horizontal stripes / vertical stripes / plain on the upper body x dark / bright legs;
- TI shows heat: a hot band at chest / hip / knee height x a cool (covered) / warm head.

Identities are distinct triples, so all three spectra together identify everyone, while each spectrum alone only
tells groups of identities apart (identities sharing that spectrum's value look the same in it) and two spectra
still leave some pairs together. The body shape is the same for everyone, and nothing else depends on the identity.
Cameras change the background, illumination and colour cast, position and scale; every image adds its own jitter
and noise. The files are written with the RGBNT201 names ``<pid:06d>_cam<c>_<seq>_<nn>.jpg`` into
``<root>/RGBNT201/{train_171,test}/{RGB,NI,TI}/`` and read by the RGBNT201 reader.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data.datasets.base import DatasetError

logger = logging.getLogger(__name__)

# Change the version whenever the generator's output changes: existing demo data with another stamp is replaced.
GENERATOR_VERSION = 2
DEFAULT_SEED = 2024
MARKER = "DEMO_VERSION.txt"
FOLDER = "RGBNT201"

NUM_TRAIN_IDS, NUM_TEST_IDS = 40, 20
NUM_CAMERAS = 4
IMAGES_PER_CAMERA = 3
HEIGHT, WIDTH = 128, 64
VALUES_PER_SPECTRUM = 6  # each spectrum's attribute: 3 x 2 values

# RGB: upper body colour x lower body colour.
UPPER_COLOURS = np.array([(0.85, 0.15, 0.15), (0.15, 0.70, 0.20), (0.15, 0.30, 0.90)], dtype=np.float32)
LOWER_COLOURS = np.array([(0.12, 0.12, 0.16), (0.88, 0.84, 0.70)], dtype=np.float32)
SKIN = np.array((0.80, 0.62, 0.52), dtype=np.float32)
# NI: upper body texture x leg reflectance.
NI_TEXTURES = ("horizontal", "vertical", "plain")
NI_LEGS = (0.2, 0.85)
NI_STRIPE_PERIOD = 20.0
# TI: height of a hot band (chest, hips, knees) x head temperature (covered and cool, bare and warm).
TI_ROWS = (40.0, 66.0, 96.0)
TI_HEAD = (0.35, 0.85)


@dataclass(frozen=True)
class Camera:
    """How one camera sees the scene (``shift``, ``scale`` in pixels / relative to the canonical body)."""

    rgb_background: tuple[float, float, float]
    rgb_gain: float
    rgb_cast: tuple[float, float, float]
    ni_background: float
    ni_gain: float
    ti_background: float
    ti_gain: float
    shift: tuple[float, float]  # (dx, dy)
    scale: float
    texture: float  # amplitude of the background's smooth pattern


CAMERAS = (
    Camera((0.50, 0.50, 0.50), 1.00, (1.00, 1.00, 1.00), 0.30, 1.00, 0.15, 1.00, (0.0, 0.0), 1.00, 0.06),
    Camera((0.55, 0.45, 0.35), 0.75, (1.08, 1.00, 0.90), 0.45, 0.85, 0.25, 0.90, (-4.0, 3.0), 0.92, 0.10),
    Camera((0.40, 0.50, 0.42), 1.20, (0.92, 1.00, 1.08), 0.18, 1.15, 0.10, 1.10, (4.0, -3.0), 1.08, 0.08),
    Camera((0.42, 0.45, 0.55), 0.90, (1.00, 1.05, 0.95), 0.38, 0.95, 0.20, 1.00, (2.0, 5.0), 0.96, 0.12),
)
# The clean rendering used to check the code design: plain background, no jitter, no noise.
NEUTRAL = Camera((0.5, 0.5, 0.5), 1.0, (1.0, 1.0, 1.0), 0.3, 1.0, 0.15, 1.0, (0.0, 0.0), 1.0, 0.0)

Code = tuple[int, int, int]  # (RGB value, NI value, TI value), each in 0..5

_Y, _X = (a.astype(np.float32) + 0.5 for a in np.mgrid[0:HEIGHT, 0:WIDTH])
_CX, _CY = WIDTH / 2, HEIGHT / 2


def identity_codes(seed: int = DEFAULT_SEED) -> tuple[dict[int, Code], dict[int, Code]]:
    """(train, test) maps pid -> code: distinct triples, every value of every spectrum used in train."""
    rng = np.random.default_rng([seed, 0])
    triples = [(r, n, t) for r in range(VALUES_PER_SPECTRUM) for n in range(VALUES_PER_SPECTRUM)
               for t in range(VALUES_PER_SPECTRUM)]
    while True:
        chosen = [triples[i] for i in rng.choice(len(triples), NUM_TRAIN_IDS + NUM_TEST_IDS, replace=False)]
        train = chosen[:NUM_TRAIN_IDS]
        if all(len({c[s] for c in train}) == VALUES_PER_SPECTRUM for s in range(3)):
            break
    train_ids = {pid: code for pid, code in enumerate(train, start=1)}
    test_ids = {pid: code for pid, code in enumerate(chosen[NUM_TRAIN_IDS:], start=NUM_TRAIN_IDS + 1)}
    return train_ids, test_ids


def _box(u: np.ndarray, v: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Anti-aliased mask of an axis-aligned box in canonical coordinates."""
    return np.clip(np.minimum(np.minimum(u - x0, x1 - u), np.minimum(v - y0, y1 - v)) + 0.5, 0.0, 1.0)


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    r = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    return np.clip((1.0 - r) * min(rx, ry) + 0.5, 0.0, 1.0)


def _background_pattern(rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in [-1, 1] (a few low-frequency waves)."""
    field = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    for _ in range(3):
        fy, fx, phase = rng.uniform(0.5, 2.5), rng.uniform(0.3, 1.5), rng.uniform(0, 2 * np.pi)
        field += np.sin(2 * np.pi * (fy * _Y / HEIGHT + fx * _X / WIDTH) + phase)
    return field / 3.0


def render(code: Code, camera: Camera = NEUTRAL, rng: np.random.Generator | None = None,
           pattern: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The three spectra of identity ``code`` seen by ``camera``: float images HxWx3 in [0, 1].

    ``rng`` adds the per-image jitter (position, scale, gain) and noise; without it the rendering is clean.
    ``pattern`` is the camera's background field in [-1, 1] (see :func:`_background_pattern`).
    """
    rgb_value, ni_value, ti_value = code
    jitter = rng is not None
    dx, dy = camera.shift
    scale, gain = camera.scale, 1.0
    if jitter:
        dx, dy = dx + rng.uniform(-3, 3), dy + rng.uniform(-3, 3)
        scale *= rng.uniform(0.95, 1.05)
        gain = rng.uniform(0.9, 1.1)
    u = (_X - _CX - dx) / scale + _CX  # canonical coordinates of every pixel
    v = (_Y - _CY - dy) / scale + _CY
    head = _ellipse(u, v, 32, 17, 7, 9)
    upper = np.maximum(_box(u, v, 19, 45, 27, 70), np.maximum(_box(u, v, 13, 19, 29, 64), _box(u, v, 45, 51, 29, 64)))
    legs = np.maximum(_box(u, v, 20, 31, 70, 120), _box(u, v, 33, 44, 70, 120))
    upper, legs = upper * (1 - head), legs * (1 - upper) * (1 - head)
    body = np.clip(head + upper + legs, 0.0, 1.0)
    back = np.zeros((HEIGHT, WIDTH), dtype=np.float32) if pattern is None else pattern * camera.texture
    shade = 1.0 - 0.12 * (v - _CY) / HEIGHT  # light from above

    # RGB: clothing colours under the camera's illumination and colour cast.
    rgb = (np.asarray(camera.rgb_background, dtype=np.float32) + back[..., None]) * (1 - body[..., None])
    rgb += (head[..., None] * SKIN + upper[..., None] * UPPER_COLOURS[rgb_value // 2]
            + legs[..., None] * LOWER_COLOURS[rgb_value % 2]) * shade[..., None]
    rgb = rgb * camera.rgb_gain * gain * np.asarray(camera.rgb_cast, dtype=np.float32)

    # NI: clothing texture and leg reflectance, grey.
    texture = NI_TEXTURES[ni_value // 2]
    wave = {"horizontal": np.sin(2 * np.pi * v / NI_STRIPE_PERIOD),
            "vertical": np.sin(2 * np.pi * u / NI_STRIPE_PERIOD), "plain": np.zeros_like(u)}[texture]
    ni = (camera.ni_background + back) * (1 - body) + head * 0.7 + legs * NI_LEGS[ni_value % 2]
    ni += upper * (0.55 + 0.4 * np.tanh(4.0 * wave))
    ni = ni * camera.ni_gain * gain

    # TI: a warm body with a hot band across it, and a warm or cool (covered) head.
    row, head_heat = TI_ROWS[ti_value // 2], TI_HEAD[ti_value % 2]
    heat = np.exp(-((v - row) ** 2) / (2 * 5.0**2))
    ti = (camera.ti_background + 0.5 * back) * (1 - body) + (upper + legs) * (0.4 + 0.55 * heat) + head * head_heat
    ti = ti * camera.ti_gain

    images = {"RGB": rgb, "NI": np.repeat(ni[..., None], 3, axis=2), "TI": np.repeat(ti[..., None], 3, axis=2)}
    if jitter:
        images = {s: img + rng.normal(0.0, 0.03, img.shape).astype(np.float32) for s, img in images.items()}
    return {s: np.clip(img, 0.0, 1.0) for s, img in images.items()}


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(image * 255.0).astype(np.uint8)


def _samples(seed: int) -> Iterator[tuple[str, int, int, int, dict[str, np.ndarray]]]:
    """(split folder, pid, camera 1.., image number 1.., images) for every sample, in a fixed order."""
    train_ids, test_ids = identity_codes(seed)
    rng = np.random.default_rng([seed, 1])
    patterns = [_background_pattern(rng) for _ in CAMERAS]
    for split, ids in (("train_171", train_ids), ("test", test_ids)):
        for pid, code in ids.items():
            for cam, camera in enumerate(CAMERAS[:NUM_CAMERAS], start=1):
                for number in range(1, IMAGES_PER_CAMERA + 1):
                    yield split, pid, cam, number, render(code, camera, rng, patterns[cam - 1])


def write_demo_dataset(folder: str, seed: int = DEFAULT_SEED) -> None:
    """Write the data set into ``folder`` (the RGBNT201 folder itself: ``folder/train_171/RGB/...``)."""
    for split in ("train_171", "test"):
        for spectrum in ("RGB", "NI", "TI"):
            os.makedirs(os.path.join(folder, split, spectrum), exist_ok=True)
    for split, pid, cam, number, images in _samples(seed):
        name = f"{pid:06d}_cam{cam}_0_{number:02d}.jpg"
        for spectrum, image in images.items():
            Image.fromarray(_to_uint8(image)).save(os.path.join(folder, split, spectrum, name), quality=92)
    with open(os.path.join(folder, MARKER), "w") as f:
        f.write(_stamp(seed))


def _stamp(seed: int) -> str:
    return f"topreid demo data, generator version {GENERATOR_VERSION}, seed {seed}\n"


def _read_marker(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, MARKER)) as f:
            return f.read()
    except OSError:
        return None


def ensure_demo_dataset(root: str, seed: int = DEFAULT_SEED) -> str:
    """Generate the demo data under ``root`` unless it is there and current; return ``<root>/RGBNT201``.

    The data is written into a temporary folder and renamed into place, so an interrupted run never leaves half a
    data set, and concurrent processes (e.g. several ranks) end up with one complete copy. A folder from another
    generator version or seed is replaced; an ``RGBNT201`` folder without the marker (real data) is refused.
    """
    target = os.path.join(root, FOLDER)
    stamp = _stamp(seed)
    current = _read_marker(target)
    if current == stamp:
        return target
    if current is None and os.path.exists(target):
        raise DatasetError(f"{target} exists but is not demo data (no {MARKER}); the demo data set needs a "
                           "DATASETS.ROOT_DIR of its own")
    os.makedirs(root, exist_ok=True)
    logger.info("generating the demo data set in %s (seed %d)", target, seed)
    tmp = tempfile.mkdtemp(prefix=f".{FOLDER}.tmp-", dir=root)
    try:
        write_demo_dataset(tmp, seed)
        if current is not None:  # outdated demo data: move it aside, then drop it once the new one is in place
            old = tempfile.mkdtemp(prefix=f".{FOLDER}.old-", dir=root)
            try:
                os.rename(target, os.path.join(old, FOLDER))
            except FileNotFoundError:  # another process replaced it first
                pass
        else:
            old = None
        try:
            os.rename(tmp, target)
        except OSError:  # another process put a data set in place first
            if _read_marker(target) != stamp:
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
