"""RGBNT300 (vehicles, RGB and NI only): ``RGBNT300/rgbir/{bounding_box_train,query,bounding_box_test}/<name>.jpg``.

Each file is 512x128 and holds RGB and NI side by side (x 0-256, 256-512); records mark it as stitched and the loader
crops the two parts. ``0001_c0003_012.jpg`` is pid 1 (1..600), camid 2 (camera 1..8, minus 1), as EDITOR's reader
(regex ``([-\\d]+)_c([-\\d]+)``). The junk rule is Market-1501's: same pid and same camera.

There is no TI: the data set declares RGB and NI. ``DATASETS.NI_AS_TI True`` fills the TI slot with the NI image,
the convention of the published numbers (EDITOR's collate, HTT).
"""

from __future__ import annotations

import os
import re

from data.datasets.base import DatasetError, Record, ReIDDataset, list_images, require_dir, require_nonempty
from data.datasets.registry import register_dataset

FOLDER = os.path.join("RGBNT300", "rgbir")
SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
SPECTRA = ("RGB", "NI")
PIDS, CAMERAS = range(1, 601), range(1, 9)  # the ranges EDITOR's reader asserts
_NAME = re.compile(r"([-\d]+)_c([-\d]+)")


def parse_name(name: str, folder: str) -> tuple[int, int]:
    """File name -> (pid, camid).

    EDITOR runs the regex on the whole path, where a folder such as ``/data/run_c1/`` can match first; here it sees
    the file name only. A pid or camera outside EDITOR's asserted ranges (a ``-1`` junk name included, on which its
    assert fails) is an error naming the file.
    """
    match = _NAME.search(name)
    try:
        pid, cam = (int(g) for g in match.groups()) if match else (-1, 0)
    except ValueError:
        pid, cam = -1, 0
    if pid not in PIDS or cam not in CAMERAS:
        raise DatasetError(f"file name does not parse as <pid 1..600>_c<camera 1..8>_...: {os.path.join(folder, name)}")
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


@register_dataset("RGBNT300", spectra=SPECTRA)
def read_rgbnt300(root: str) -> ReIDDataset:
    # Train pids are relabelled in sorted order (relabel()), not in the iteration order of a Python set as EDITOR's.
    require_dir(root, "data set root (DATASETS.ROOT_DIR)")
    base = require_dir(os.path.join(root, FOLDER), "RGBNT300 data set folder")
    splits = {k: read_split(os.path.join(base, v)) for k, v in SPLITS.items()}
    return ReIDDataset.from_raw("RGBNT300", splits["train"], splits["query"], splits["gallery"], junk_key="camid",
                                spectra=SPECTRA)
