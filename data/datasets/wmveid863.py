"""WMVEID863 (vehicles in the wild, day and night, with lamp flare): ``WMVEID863/{train,query,test}/<vid>/{vis,ni,th}/
<name>.jpg``; ``test`` is the gallery.

The folder ``<vid>`` is the pid. ``v3_n1_s012_004.jpg`` is camid 3: the digit of the first ``v+<digit>`` of the RGB
(``vis``) name, not decremented (cameras 0..7), as FACENet's reader; its night flag (``n1``, first ``n+<digit>``) is
required as there, and not kept. The junk rule is same pid and same camera.
"""

from __future__ import annotations

import os
import re

from data.datasets.base import DatasetError, Record, ReIDDataset, paired_names, require_dir, require_nonempty
from data.datasets.registry import register_dataset

FOLDER = "WMVEID863"
SPLITS = {"train": "train", "query": "query", "gallery": "test"}
SPECTRUM_FOLDERS = {"RGB": "vis", "NI": "ni", "TI": "th"}
_CAMERA = re.compile(r"v+\d")
_NIGHT = re.compile(r"n+\d")


def _flag(pattern: re.Pattern, name: str) -> int | None:
    """The character after the first letter of the first match, as FACENet reads it (``group(0)[1]``), or None."""
    match = pattern.search(name)
    flag = match.group(0)[1] if match else ""
    return int(flag) if flag.isdigit() else None


def parse_name(name: str, folder: str) -> int:
    """RGB file name -> camid."""
    camid, night = _flag(_CAMERA, name), _flag(_NIGHT, name)
    if camid is None or night is None:
        raise DatasetError(f"file name does not parse as ...v<camera>...n<night>...: {os.path.join(folder, name)}")
    return camid


def read_split(split_dir: str) -> list[Record]:
    # FACENet pairs vis, ni and th by position in three unsorted os.listdir() calls, which mis-pairs the spectra
    # where the file system lists the folders in different orders; here they are paired by file name, and a file
    # missing from one folder is an error naming it. Vehicles and names are read in sorted order.
    require_dir(split_dir, "split folder")
    with os.scandir(split_dir) as entries:
        vehicles = sorted(e.name for e in entries if e.is_dir())
    records = []
    for vid in vehicles:
        if not vid.isdigit():
            raise DatasetError(f"vehicle folder name is not a number: {os.path.join(split_dir, vid)}")
        vid_dir = os.path.join(split_dir, vid)
        folders = {s: require_dir(os.path.join(vid_dir, f), f"{s} folder") for s, f in SPECTRUM_FOLDERS.items()}
        for name in paired_names(folders):
            camid = parse_name(name, folders["RGB"])
            records.append(Record({s: os.path.join(f, name) for s, f in folders.items()}, int(vid), camid))
    require_nonempty(records, os.path.join(split_dir, "*", SPECTRUM_FOLDERS["RGB"]))
    return records


@register_dataset("WMVEID863")
def read_wmveid863(root: str) -> ReIDDataset:
    # Train pids are relabelled in sorted order (relabel()), not in os.listdir() order as FACENet's.
    require_dir(root, "data set root (DATASETS.ROOT_DIR)")
    base = os.path.join(root, FOLDER)
    if not os.path.isdir(base) and all(os.path.isdir(os.path.join(root, s)) for s in SPLITS.values()):
        raise DatasetError(f"WMVEID863 data set folder not found: {base}; DATASETS.ROOT_DIR is the folder that holds "
                           f"WMVEID863/ (FACENet's ROOT_DIR is WMVEID863/ itself)")
    require_dir(base, "WMVEID863 data set folder")
    splits = {k: read_split(os.path.join(base, v)) for k, v in SPLITS.items()}
    return ReIDDataset.from_raw("WMVEID863", splits["train"], splits["query"], splits["gallery"], junk_key="camid")
