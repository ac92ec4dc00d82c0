"""RGBNT100 (vehicles): ``RGBNT100/rgbir/{bounding_box_train,query,bounding_box_test}/<name>.jpg``.

Each file is 768x128 and holds RGB, NI and TI side by side (x 0-256, 256-512, 512-768); records mark it as
stitched and the loader decodes it once and crops the three parts. ``0561_c0001_006.jpg`` is pid 561, camid 0
(regex ``([-\\d]+)_c([-\\d]+)``, camera minus 1).
"""

from __future__ import annotations

import os
import re

from data.datasets.base import DatasetError, Record, ReIDDataset, list_images, require_dir, require_nonempty
from data.datasets.registry import register_dataset
from utils.spectra import SPECTRA

FOLDER = os.path.join("RGBNT100", "rgbir")
SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_NAME = re.compile(r"([-\d]+)_c([-\d]+)")


def parse_name(name: str, folder: str) -> tuple[int, int]:
    """File name -> (pid, camid)."""
    match = _NAME.search(name)
    try:
        pid, cam = (int(g) for g in match.groups()) if match else (-1, 0)
    except ValueError:
        pid, cam = -1, 0
    if pid < 0 or cam < 1:
        raise DatasetError(f"file name does not parse as <pid>_c<camera 1..>_...: {os.path.join(folder, name)}")
    return pid, cam - 1


def read_split(split_dir: str) -> list[Record]:
    require_dir(split_dir, "split folder")
    records = []
    for name in list_images(split_dir):
        pid, camid = parse_name(name, split_dir)
        path = os.path.join(split_dir, name)
        records.append(Record(dict.fromkeys(SPECTRA, path), pid, camid, stitched=True))
    require_nonempty(records, split_dir)
    return records


@register_dataset("RGBNT100")
def read_rgbnt100(root: str) -> ReIDDataset:
    require_dir(root, "data set root (DATASETS.ROOT_DIR)")
    base = require_dir(os.path.join(root, FOLDER), "RGBNT100 data set folder")
    splits = {k: read_split(os.path.join(base, v)) for k, v in SPLITS.items()}
    return ReIDDataset.from_raw("RGBNT100", splits["train"], splits["query"], splits["gallery"], junk_key="camid")
