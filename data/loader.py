"""The torch Dataset over records: decodes each file once, transforms each spectrum, and collates named batches.

With an :class:`ImageCache` the files are decoded and resized once per run instead of once per sample, and each
sample only runs the random part of the transforms; the tensors are the same.

Augmentation randomness comes from the sample seed the sampler sends with each index, inside a forked torch
generator and a saved/restored Python ``random`` state. The batches are therefore the same for any number of
workers, and with ``NUM_WORKERS 0`` the main process's generators are left untouched.
"""

from __future__ import annotations

import io
import logging
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from data.datasets.base import DatasetError, Record
from utils.spectra import SPECTRA

Sample = dict[str, Any]

# JPEG files are decoded by TorchCodec, which gives PIL's pixels faster, when it loads; PIL decodes everything else,
# and everything when TorchCodec is missing or was built for another torch (its compiled part then fails to load).
# Not torchvision.io.decode_jpeg: it gives PIL's pixels in every decoding case of tests/test_data_transforms.py
# (grey, CMYK, progressive, 4:4:4, EXIF-rotated, which it leaves unrotated) at the same speed and would make
# jpeg_orientation unnecessary, but torchvision 0.29 deprecates it in favour of TorchCodec and warns on each call.
# TorchCodec always applies the EXIF rotation, hence jpeg_orientation.
try:
    from torchcodec.decoders import decode_jpeg
except (ImportError, OSError, RuntimeError) as _err:
    decode_jpeg = None
    logging.getLogger(__name__).warning("TorchCodec is not usable (%s: %s); JPEG files are decoded by PIL (the same "
                                        "pixels, slower)", type(_err).__name__, " ".join(str(_err).split())[:200])


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers of every JPEG process
_EXIF_ORIENTATION_TAG = 0x0112


def jpeg_orientation(data: bytes | bytearray) -> int | None:
    """The EXIF orientation of a JPEG file (1, upright, when it has none), read from the marker segments before its
    frame; None when ``data`` is not a JPEG file or its header is cut short."""
    view = memoryview(data)
    if len(view) < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return None
    orientation, pos = 1, 2
    while pos + 9 < len(view):
        if view[pos] != 0xFF:
            return None
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            return orientation
        length = view[pos + 2] << 8 | view[pos + 3]
        if marker == 0xE1:  # APP1, where EXIF lives
            orientation = _exif_orientation(bytes(view[pos + 4:pos + 2 + length])) or orientation
        pos += 2 + length
    return None


def _exif_orientation(segment: bytes) -> int | None:
    """The orientation tag of the first image directory of an APP1 segment, or None (not EXIF, or no such tag)."""
    if not segment.startswith(b"Exif\0\0"):
        return None
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    (directory,) = struct.unpack_from(order + "I", tiff, 4)
    if directory + 2 > len(tiff):
        return None
    (entries,) = struct.unpack_from(order + "H", tiff, directory)
    for entry in range(directory + 2, min(directory + 2 + 12 * entries, len(tiff) - 11), 12):
        tag, _, _, value = struct.unpack_from(order + "HHIH", tiff, entry)
        if tag == _EXIF_ORIENTATION_TAG:
            return value
    return None


def read_image(path: str) -> np.ndarray:
    """Decode an image file to a uint8 [H, W, 3] RGB array; a missing, unreadable or truncated file raises
    DatasetError naming it.

    JPEG files (all of the three data sets') go to TorchCodec's libjpeg-turbo decoder, which gives PIL's pixels
    without PIL's Python-side header parsing (decoding times in ``benchmarks/RESULTS.md``). Anything else goes to
    PIL, which reads more formats and names what is wrong with a damaged file: other formats, JPEG with an EXIF
    rotation (TorchCodec applies it, PIL and the original pipeline do not), and any file TorchCodec cannot decode.
    """
    try:
        with open(path, "rb") as file:
            data = bytearray(file.read())
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except OSError as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None
    if decode_jpeg is not None and jpeg_orientation(data) == 1:
        try:
            decoded = decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode="RGB")
            return decoded.permute(1, 2, 0).numpy()  # the decoder writes [H, W, 3] memory
        except RuntimeError:
            pass  # truncated or corrupt: PIL reports it below
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decodes now: truncated data raises here (PIL's LOAD_TRUNCATED_IMAGES is off by default)
            return np.array(img if img.mode == "RGB" else img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read image {path}: {err}") from None


def decode_record(record: Record, spectra: Sequence[str]) -> dict[str, np.ndarray]:
    """The uint8 [H, W, 3] images of ``spectra`` for one record, each file decoded once (a stitched file is split
    into views of its parts; a copied slot is its source's array)."""
    sources = {s: record.copies.get(s, s) for s in spectra}
    absent = [s for s, source in sources.items() if source not in record.paths]
    if absent:
        raise DatasetError(f"sample {record.name} has no {', '.join(absent)} image (it offers "
                           f"{', '.join(record.spectra)})")
    needed = list(dict.fromkeys(sources.values()))
    if not record.stitched:
        images = {s: read_image(record.paths[s]) for s in needed}
    else:
        path = record.paths[needed[0]]
        image = read_image(path)
        height, width = image.shape[:2]
        order = list(record.paths)  # the strips, left to right
        parts = len(order)
        if width % parts:
            raise DatasetError(f"stitched image {path} is {width} pixels wide, not {parts} equal parts "
                               f"({', '.join(order)} side by side)")
        part = width // parts
        images = {s: image[:, order.index(s) * part:(order.index(s) + 1) * part] for s in needed}
    return {s: images[sources[s]] for s in spectra}


class ImageCache:
    """The prepared images (``transform.prepare``: decoded and resized to ``transform.size``) of every record, in one
    uint8 array ``images`` [records, spectra, H, W, 3].

    Built once, by ``threads`` threads (decoding and resizing release the GIL). Data loader workers started by fork
    share the array without copying it: it is one buffer that nothing writes to.
    """

    def __init__(self, records: Sequence[Record], spectra: Sequence[str], transform: Any, threads: int = 1,
                 progress: bool = False) -> None:
        self.spectra = tuple(spectra)
        self.size = tuple(transform.size)
        self.images = np.empty((len(records), len(spectra), *self.size, 3), np.uint8)

        def fill(index: int) -> None:
            for k, image in enumerate(decode_record(records[index], spectra).values()):
                self.images[index, k] = transform.prepare(image)

        with ThreadPoolExecutor(max(1, threads)) as pool:
            for _ in tqdm(pool.map(fill, range(len(records))), total=len(records), desc="caching images",
                          disable=None if progress else True, dynamic_ncols=True):
                pass
        self.images.flags.writeable = False  # the transforms copy before changing pixels; this keeps it so

    @staticmethod
    def nbytes(num_records: int, spectra: Sequence[str], size: Sequence[int]) -> int:
        """The size of the cache of ``num_records`` records at ``size`` (height, width)."""
        return num_records * len(spectra) * size[0] * size[1] * 3

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return dict(zip(self.spectra, self.images[index]))


def spectrum_seed(sample_seed: int, spectrum: str) -> int:
    """An independent seed per spectrum, derived from the sample seed (fixed per spectrum name, so it does not
    change with the set of spectra loaded)."""
    state = np.random.SeedSequence([sample_seed, SPECTRA.index(spectrum) + 1]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block with torch's CPU generator and Python's ``random`` restored afterwards."""
    python_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(python_state)


def seed_rng(seed: int) -> None:
    """Seed the generators the transforms draw from: torch's CPU generator (not CUDA's) and Python's ``random``."""
    torch.default_generator.manual_seed(seed)
    random.seed(seed)


class MultiSpectralDataset(Dataset):
    """Records -> samples ``{"images": {spectrum: tensor}, "pid", "camid", "sceneid", "name"}``.

    An item is either an index (no seeding: for deterministic test transforms) or ``(index, sample_seed)`` from a
    :class:`data.samplers.TrainBatchSampler`. With ``share_aug`` every spectrum of a sample is transformed with the
    sample seed (the same flip, crop and erasing when the images have the same size); otherwise each spectrum gets
    its own seed derived from it, as the original pipeline draws independent parameters per spectrum.

    With ``cache`` (an :class:`ImageCache` of the same records and spectra, built with ``transform``) the images come
    from the cache and only ``transform.finish`` runs.
    """

    def __init__(self, records: Sequence[Record], spectra: Sequence[str], transform: Callable[[np.ndarray], Any],
                 share_aug: bool = False, cache: ImageCache | None = None) -> None:
        unknown = [s for s in spectra if s not in SPECTRA]
        if unknown or not spectra:
            raise ValueError(f"spectra must be a non-empty subset of {SPECTRA}, got {list(spectra)}")
        if cache is not None and (len(cache) != len(records) or cache.spectra != tuple(spectra)):
            raise ValueError(f"the image cache holds {len(cache)} records of {list(cache.spectra)}, the data set "
                             f"{len(records)} records of {list(spectra)}")
        self.records = list(records)
        self.spectra = tuple(spectra)
        self.transform = transform
        self.share_aug = share_aug
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: int | tuple[int, int]) -> Sample:
        index, seed = item if isinstance(item, tuple) else (item, None)
        record = self.records[index]
        if self.cache is None:
            images, transform = decode_record(record, self.spectra), self.transform
        else:
            images, transform = self.cache[index], self.transform.finish
        # A copied slot gets the tensor of its source (transformed once, with the source's seed), as EDITOR's collate
        # puts the NI tensor in the TI slot.
        sources = {s: record.copies.get(s, s) for s in images}
        by_source: dict[str, Any] = {}
        if seed is None:
            for s, img in images.items():
                if sources[s] not in by_source:
                    by_source[sources[s]] = transform(img)
        else:
            with isolated_rng():
                for s, img in images.items():
                    if sources[s] not in by_source:
                        seed_rng(seed if self.share_aug else spectrum_seed(seed, sources[s]))
                        by_source[sources[s]] = transform(img)
        tensors = {s: by_source[sources[s]] for s in images}
        return {"images": tensors, "pid": record.pid, "camid": record.camid, "sceneid": record.sceneid,
                "name": record.name}


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """Stack samples into ``{"images": {spectrum: [B,3,H,W]}, "pid", "camid", "sceneid": [B] long, "name": [str]}``."""
    spectra = samples[0]["images"].keys()
    return {
        "images": {s: torch.stack([x["images"][s] for x in samples]) for s in spectra},
        "pid": torch.tensor([x["pid"] for x in samples], dtype=torch.long),
        "camid": torch.tensor([x["camid"] for x in samples], dtype=torch.long),
        "sceneid": torch.tensor([x["sceneid"] for x in samples], dtype=torch.long),
        "name": [x["name"] for x in samples],
    }
