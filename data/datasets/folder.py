"""A folder of images laid out like an RGBNT201 split (``<folder>/<spectrum>/<name>.jpg``), outside any data set:
what the feature and search tools run on."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from data.datasets.base import DatasetError, Record, paired_names, require_dir, require_nonempty
from data.datasets.rgbnt201 import parse_name

logger = logging.getLogger(__name__)


def parse_labels(name: str) -> tuple[int, int]:
    """(pid, camid) of an RGBNT201-style file name, or (-1, -1)."""
    try:
        return parse_name(name, "")
    except DatasetError:
        return -1, -1


def folder_records(folder: str, spectra: Sequence[str], num_cameras: int) -> tuple[list[Record], np.ndarray,
                                                                                     np.ndarray]:
    """(records, pids, camids as parsed: -1 where unknown) of a folder. The camera id given to the model is the
    parsed one when the model knows it (below ``num_cameras``), else 0."""
    require_dir(folder, "--folder")
    folders = {s: require_dir(os.path.join(folder, s), f"{s} sub-folder of --folder") for s in spectra}
    names = paired_names(folders)
    labels = [parse_labels(n) for n in names]
    pids = np.array([p for p, _ in labels], dtype=np.int64)
    camids = np.array([c for _, c in labels], dtype=np.int64)
    known = (camids >= 0) & (camids < max(num_cameras, 1))
    records = [Record({s: os.path.join(f, n) for s, f in folders.items()}, int(p), int(c) if ok else 0)
               for n, p, c, ok in zip(names, pids, camids, known)]
    require_nonempty(records, folders[spectra[0]])
    if num_cameras > 1 and not known.all():
        logger.warning("%d of %d images have no camera id the model knows (names not like 000028_cam3_0_02.jpg, or a "
                       "camera beyond its %d): camera 0's embedding is used for them", int((~known).sum()),
                       len(records), num_cameras)
    return records, pids, camids
