"""RGBNT201 (persons): ``RGBNT201/{train_171,test}/{RGB,NI,TI}/<name>.jpg``, the same name in the three folders.

``000028_cam3_0_02.jpg`` is pid 28 (first six digits), camid 2 (the digit after ``cam``, minus 1). Query and gallery
are both ``test/``. The ``demo`` data set is this layout, generated on first use by :mod:`data.demo`.
"""

from __future__ import annotations

import os
import re

from data.datasets.base import DatasetError, Record, ReIDDataset, paired_names, require_dir, require_nonempty
from data.datasets.registry import register_dataset

FOLDER = "RGBNT201"
SPLITS = {"train": "train_171", "test": "test"}
SPECTRUM_FOLDERS = {"RGB": "RGB", "NI": "NI", "TI": "TI"}
_NAME = re.compile(r"^(\d{6})_cam(\d+)_")


def parse_name(name: str, folder: str) -> tuple[int, int]:
    """File name -> (pid, camid)."""
    match = _NAME.match(name)
    if not match or int(match.group(2)) < 1:
        raise DatasetError(f"file name does not parse as <pid:6 digits>_cam<1..>_...: {os.path.join(folder, name)}")
    return int(match.group(1)), int(match.group(2)) - 1


def read_split(split_dir: str) -> list[Record]:
    require_dir(split_dir, "split folder")
    folders = {s: require_dir(os.path.join(split_dir, f), f"{s} folder") for s, f in SPECTRUM_FOLDERS.items()}
    records = []
    for name in paired_names(folders):
        pid, camid = parse_name(name, folders["RGB"])
        records.append(Record({s: os.path.join(folder, name) for s, folder in folders.items()}, pid, camid))
    require_nonempty(records, folders["RGB"])
    return records


def read_rgbnt201(root: str, name: str = "RGBNT201") -> ReIDDataset:
    """Read ``<root>/RGBNT201``; ``name`` is the data set's name in logs (``demo`` reads the same layout)."""
    require_dir(root, "data set root (DATASETS.ROOT_DIR)")
    base = require_dir(os.path.join(root, FOLDER), f"{name} data set folder")
    train = read_split(os.path.join(base, SPLITS["train"]))
    test = read_split(os.path.join(base, SPLITS["test"]))
    return ReIDDataset.from_raw(name, train, test, test, junk_key="camid")


@register_dataset("RGBNT201")
def _rgbnt201(root: str) -> ReIDDataset:
    return read_rgbnt201(root)


@register_dataset("demo")
def _demo(root: str) -> ReIDDataset:
    from data.demo import ensure_demo_dataset

    ensure_demo_dataset(root)
    return read_rgbnt201(root, name="demo")
