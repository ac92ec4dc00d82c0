"""Market1501-MM (persons): ``Market1501-MM/{train,query,gallery}/{RGB,NI,TI}/<name>.jpg``, the same name in the
three folders (EDITOR's ``market_to_RGBNT201`` layout; its NI and TI images are synthesised from Market-1501's RGB).

``0002_c1s1_000451_03.jpg`` is pid 2 (the field before the first ``_``), camid 0 (the digit after ``c``, 1..6, minus
1), as EDITOR's reader. Market-1501's protocol: ``-1`` files (junk) are left out of every split, ``0000`` files
(distractors) are kept as gallery samples of pid 0; the junk rule is same pid and same camera.
"""

from __future__ import annotations

import os

from data.datasets.base import DatasetError, Record, ReIDDataset, paired_names, require_dir, require_nonempty
from data.datasets.registry import register_dataset

FOLDER = "Market1501-MM"
SPLITS = {"train": "train", "query": "query", "gallery": "gallery"}
SPECTRUM_FOLDERS = {"RGB": "RGB", "NI": "NI", "TI": "TI"}
JUNK_PID = -1
PIDS, CAMERAS = range(0, 1502), range(1, 7)  # the ranges EDITOR's reader asserts (0: distractors)


def parse_name(name: str, folder: str) -> tuple[int, int]:
    """File name -> (pid, camid); pid -1 for a junk file."""
    fields = name.split("_")
    try:
        pid, cam = int(fields[0]), int(fields[1][1])
    except (IndexError, ValueError):
        pid, cam = None, None
    if pid != JUNK_PID and (pid not in PIDS or cam not in CAMERAS):
        raise DatasetError("file name does not parse as <pid 0..1501 or -1>_c<camera 1..6>s<sequence>_...: "
                           f"{os.path.join(folder, name)}")
    return pid, cam - 1


def read_split(split_dir: str) -> list[Record]:
    # EDITOR globs RGB/*.jpg and builds the NI and TI paths from the name without looking at them; here the three
    # folders are paired by name and a file missing from one of them is an error naming it.
    require_dir(split_dir, "split folder")
    folders = {s: require_dir(os.path.join(split_dir, f), f"{s} folder") for s, f in SPECTRUM_FOLDERS.items()}
    records = []
    for name in paired_names(folders):
        pid, camid = parse_name(name, folders["RGB"])
        if pid != JUNK_PID:
            records.append(Record({s: os.path.join(folder, name) for s, folder in folders.items()}, pid, camid))
    require_nonempty(records, folders["RGB"])
    return records


@register_dataset("Market1501-MM")
def read_market1501mm(root: str) -> ReIDDataset:
    # Train pids are relabelled in sorted order (relabel()), not in the iteration order of a Python set as EDITOR's.
    require_dir(root, "data set root (DATASETS.ROOT_DIR)")
    base = require_dir(os.path.join(root, FOLDER), "Market1501-MM data set folder")
    splits = {k: read_split(os.path.join(base, v)) for k, v in SPLITS.items()}
    return ReIDDataset.from_raw("Market1501-MM", splits["train"], splits["query"], splits["gallery"], junk_key="camid")
