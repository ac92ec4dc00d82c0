"""MSVR310 (vehicles): ``MSVR310/{bounding_box_train,query3,bounding_box_test}/<vid>/{vis,ni,th}/<name>.jpg``.

``0001_s002_v0_000.jpg`` is pid 1 (name[0:4]), scene 2 (name[6:9]), camid 0 (name[11]). Evaluation leaves out
gallery items of the query's pid and scene (``junk_key = "sceneid"``).
"""

from __future__ import annotations

import os
import re

from data.datasets.base import DatasetError, Record, ReIDDataset, paired_names, require_dir, require_nonempty
from data.datasets.registry import register_dataset

FOLDER = "MSVR310"
SPLITS = {"train": "bounding_box_train", "query": "query3", "gallery": "bounding_box_test"}
SPECTRUM_FOLDERS = {"RGB": "vis", "NI": "ni", "TI": "th"}
_NAME = re.compile(r"^(\d{4})_s(\d{3})_v(\d)_")


def parse_name(name: str, folder: str) -> tuple[int, int, int]:
    """File name -> (pid, camid, sceneid)."""
    match = _NAME.match(name)
    if not match:
        raise DatasetError("file name does not parse as <vid:4>_s<scene:3>_v<camera>_...: "
                           f"{os.path.join(folder, name)}")
    return int(match.group(1)), int(match.group(3)), int(match.group(2))


def read_split(split_dir: str) -> list[Record]:
    require_dir(split_dir, "split folder")
    with os.scandir(split_dir) as entries:
        vehicles = sorted(e.name for e in entries if e.is_dir())
    records = []
    for vid in vehicles:
        vid_dir = os.path.join(split_dir, vid)
        folders = {s: require_dir(os.path.join(vid_dir, f), f"{s} folder") for s, f in SPECTRUM_FOLDERS.items()}
        for name in paired_names(folders):
            pid, camid, sceneid = parse_name(name, folders["RGB"])
            records.append(Record({s: os.path.join(f, name) for s, f in folders.items()}, pid, camid, sceneid))
    require_nonempty(records, os.path.join(split_dir, "*", SPECTRUM_FOLDERS["RGB"]))
    return records


@register_dataset("MSVR310")
def read_msvr310(root: str) -> ReIDDataset:
    require_dir(root, "data set root (DATASETS.ROOT_DIR)")
    base = require_dir(os.path.join(root, FOLDER), "MSVR310 data set folder")
    splits = {k: read_split(os.path.join(base, v)) for k, v in SPLITS.items()}
    return ReIDDataset.from_raw("MSVR310", splits["train"], splits["query"], splits["gallery"], junk_key="sceneid")
