"""RGBNT300, Market1501-MM and WMVEID863 on small trees in their layouts.

The records equal a plain re-implementation of the field's reader rules as ``SPEC_datasets.md`` states them (EDITOR's
RGBNT300 and Market1501-MM readers, FACENet's WMVEID863 reader), with the traps removed: RGBNT300's regex on the file
name, not the path; WMVEID863's spectra paired by name, not by position in three listings; train labels in sorted pid
order. Every bad input names itself. RGBNT300 has two spectra: it trains and evaluates the settings that exist for
them, and with its NI image copied into the TI slot (``DATASETS.NI_AS_TI``), end to end through train_net.py and
test_net.py, as do the other two.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import test_net
import train_net
from configs import ConfigError, load_config
from data.build import build_dataloader, read_dataset
from data.datasets import DatasetError, build_dataset, dataset_names, dataset_spectra
from data.loader import MultiSpectralDataset
from data.transforms import build_transforms
from processor.inference import eval_pairs, eval_settings
from tests.helpers import REPO, save_image, tiny_opts
from tools import inspect_dataset

SPECTRUM_FILES = ("RGB", "NI", "TI")
NEW_SETS = ("RGBNT300", "Market1501-MM", "WMVEID863")

# ----------------------------------------------------------------------------------------------------------------------
# Trees in the three layouts.

# A root whose path the field's RGBNT300 regex, run on the whole path, would read as pid 12, camera 3.
TRAP_FOLDER = "set_12_c3"


def _strip(path: str, parts: int, tile: tuple[int, int]) -> np.ndarray:
    """``parts`` tiles (width, height = ``tile``) side by side, noise seeded by the path, tile k bright in channel k."""
    rng = np.random.default_rng(zlib.crc32(path.encode()))
    tiles = []
    for k in range(parts):
        pixels = rng.integers(0, 40, (tile[1], tile[0], 3), dtype=np.uint8)
        pixels[..., k] += 200
        tiles.append(pixels)
    return np.concatenate(tiles, axis=1)


def write_rgbnt300(root: str, splits: dict[str, list[str]], tile: tuple[int, int] = (32, 64)) -> str:
    base = os.path.join(root, "RGBNT300", "rgbir")
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        os.makedirs(os.path.join(base, split), exist_ok=True)
        for name in splits.get(split, ()):
            path = os.path.join(base, split, name)
            save_image(path, _strip(path, 2, tile))
    return base


def write_market(root: str, splits: dict[str, list[str]]) -> str:
    base = os.path.join(root, "Market1501-MM")
    for split in ("train", "query", "gallery"):
        for spectrum in SPECTRUM_FILES:
            os.makedirs(os.path.join(base, split, spectrum), exist_ok=True)
            for name in splits.get(split, ()):
                save_image(os.path.join(base, split, spectrum, name))
    return base


def write_wmveid863(root: str, splits: dict[str, dict[str, list[str]]]) -> str:
    """``splits``: split folder (train, query, test) -> vehicle folder -> names."""
    base = os.path.join(root, "WMVEID863")
    for split in ("train", "query", "test"):
        os.makedirs(os.path.join(base, split), exist_ok=True)
        for vid, names in splits.get(split, {}).items():
            for folder in ("vis", "ni", "th"):
                os.makedirs(os.path.join(base, split, vid, folder), exist_ok=True)
                for name in names:
                    save_image(os.path.join(base, split, vid, folder, name))
    return base


# Enough for a P x K batch (4 identities x 4 samples, 2 cameras) and a query with a match on another camera.
RGBNT300_TREE = {
    "bounding_box_train": ["0001_c0001_001.jpg", "0001_c0001_002.jpg", "0001_c0003_012.jpg", "0001_c0003_013.jpg",
                           "0005_c0002_001.jpg", "0005_c0002_002.jpg", "0005_c0004_001.jpg", "0005_c0004_002.jpg",
                           "0017_c0005_001.jpg", "0017_c0005_002.jpg", "0017_c0006_001.jpg", "0017_c0006_002.jpg",
                           "0600_c0007_001.jpg", "0600_c0007_002.jpg", "0600_c0008_001.jpg", "0600_c0008_002.jpg"],
    "query": ["0301_c0001_001.jpg", "0302_c0002_001.jpg"],
    "bounding_box_test": ["0301_c0002_001.jpg", "0301_c0001_005.jpg", "0302_c0003_001.jpg", "0302_c0004_001.jpg",
                          "0303_c0001_001.jpg"],
}
MARKET_TREE = {
    "train": ["0002_c1s1_000451_03.jpg", "0002_c1s1_000476_01.jpg", "0002_c2s1_000301_01.jpg",
              "0002_c2s1_000326_02.jpg", "0007_c3s1_000151_01.jpg", "0007_c3s1_000176_01.jpg",
              "0007_c6s3_000001_02.jpg", "0007_c6s3_000011_01.jpg", "0011_c4s1_000001_01.jpg",
              "0011_c4s1_000026_01.jpg", "0011_c5s1_000001_01.jpg", "0011_c5s1_000051_01.jpg",
              "1501_c1s2_000001_01.jpg", "1501_c1s2_000026_01.jpg", "1501_c6s1_000001_01.jpg",
              "1501_c6s1_000026_01.jpg"],
    "query": ["0010_c1s1_000001_00.jpg", "0012_c3s1_000001_00.jpg"],
    # the -1 junk is left out, the 0000 distractor kept; 0010 on camera 1 is the junk rule's (same pid and camera)
    "gallery": ["0010_c2s1_000002_01.jpg", "0010_c1s1_000003_01.jpg", "0012_c4s1_000002_01.jpg",
                "-1_c1s1_000401_03.jpg", "-1_c4s2_000101_01.jpg", "0000_c5s1_000001_00.jpg", "0000_c1s1_000002_00.jpg"],
}
WMVEID863_TREE = {
    "train": {"0003": ["v3_n1_s012_004.jpg", "v0_n0_s001_000.jpg", "v3_n0_s012_005.jpg", "v0_n1_s001_001.jpg"],
              "0012": ["v7_n0_s002_010.jpg", "v7_n1_s002_011.jpg", "v6_n0_s003_000.jpg", "v6_n1_s003_001.jpg"],
              "0040": ["v1_n1_s004_000.jpg", "v1_n0_s004_001.jpg", "v2_n1_s004_002.jpg", "v2_n0_s004_003.jpg"],
              "0101": ["v4_n0_s005_000.jpg", "v4_n1_s005_001.jpg", "v5_n0_s005_002.jpg", "v5_n1_s005_003.jpg"]},
    "query": {"0200": ["v1_n1_s005_000.jpg"], "0201": ["v4_n0_s009_000.jpg"]},
    "test": {"0200": ["v2_n0_s005_001.jpg", "v1_n1_s006_002.jpg"], "0201": ["v5_n1_s009_001.jpg"],
             "0202": ["v0_n0_s001_000.jpg"]},
}


def _tree(name: str, root: str) -> str:
    """The data set ``name``'s tree under ``root``; returns its folder."""
    if name == "RGBNT300":
        return write_rgbnt300(root, RGBNT300_TREE)
    if name == "Market1501-MM":
        return write_market(root, MARKET_TREE)
    return write_wmveid863(root, WMVEID863_TREE)


@pytest.fixture
def shuffled_listings(monkeypatch):
    """Directory listings in an order of their own per folder (a hash of the folder's path), as some file systems
    list them: ``os.listdir`` and ``os.scandir`` of the vis, ni and th folders of one vehicle then disagree."""
    real_listdir, real_scandir = os.listdir, os.scandir

    def order(path, items, key):
        rng = np.random.default_rng(zlib.crc32(str(path).encode()))
        items = sorted(items, key=key)
        return [items[i] for i in rng.permutation(len(items))]

    class Listing(list):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def listdir(path="."):
        return order(path, real_listdir(path), str)

    def scandir(path="."):
        with real_scandir(path) as entries:
            return Listing(order(path, list(entries), lambda e: e.name))

    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os, "scandir", scandir)


# ----------------------------------------------------------------------------------------------------------------------
# The field's rules, re-implemented plainly from the spec (with the fixes): rows (paths, raw pid, camid, sceneid).

def rgbnt300_rules(root: str) -> dict[str, list[tuple]]:
    """EDITOR's RGBNT300.py: glob *.jpg, regex ([-\\d]+)_c([-\\d]+) (here on the file name: the fix), assert pid
    1..600 and camera 1..8, camid = camera - 1, no scene. One file holds both spectra."""
    out = {}
    for split, folder in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        rows = []
        for path in glob.glob(os.path.join(root, "RGBNT300", "rgbir", folder, "*.jpg")):
            pid, cam = map(int, re.search(r"([-\d]+)_c([-\d]+)", os.path.basename(path)).groups())
            assert 1 <= pid <= 600 and 1 <= cam <= 8
            rows.append(((path, path), pid, cam - 1, -1))
        out[split] = sorted(rows)
    return out


def market_rules(root: str) -> dict[str, list[tuple]]:
    """EDITOR's market_to_RGBNT201.py: glob RGB/*.jpg, NI and TI paths from the name, pid = first field (-1 skipped,
    0 kept), camera = second field's second character, assert pid 0..1501 and camera 1..6, camid = camera - 1."""
    out = {}
    for split in ("train", "query", "gallery"):
        rows = []
        for path in glob.glob(os.path.join(root, "Market1501-MM", split, "RGB", "*.jpg")):
            name = os.path.basename(path)
            pid = int(name.split("_")[0])
            cam = int(name.split("_")[1][1])
            if pid == -1:
                continue
            assert 0 <= pid <= 1501 and 1 <= cam <= 6
            paths = tuple(os.path.join(root, "Market1501-MM", split, s, name) for s in SPECTRUM_FILES)
            rows.append((paths, pid, cam - 1, -1))
        out[split] = sorted(rows)
    return out


def wmveid863_rules(root: str, pair_by_name: bool = True) -> dict[str, list[tuple]]:
    """FACENet's WMVEID863.py: vehicles and vis names from os.listdir, pid = int(vehicle folder), camera = the
    character after the first letter of the first v+\\d match (not decremented), night from n+\\d parsed and
    discarded, 4th field -1. FACENet takes the ni and th files at the vis file's position in their own listings;
    ``pair_by_name`` (the fix) takes the files of the same name."""
    out = {}
    for split, folder in (("train", "train"), ("query", "query"), ("gallery", "test")):
        rows = []
        split_dir = os.path.join(root, "WMVEID863", folder)
        for vid in os.listdir(split_dir):
            vis = os.listdir(os.path.join(split_dir, vid, "vis"))
            ni, th = os.listdir(os.path.join(split_dir, vid, "ni")), os.listdir(os.path.join(split_dir, vid, "th"))
            for i, img in enumerate(vis):
                partners = (img, img) if pair_by_name else (ni[i], th[i])
                paths = tuple(os.path.join(split_dir, vid, f, n) for f, n in zip(("vis", "ni", "th"), (img, *partners)))
                int(re.search(r"n+\d", img).group(0)[1])  # the night flag: parsed, then discarded
                cam = int(re.search(r"v+\d", img).group(0)[1])
                rows.append((paths, int(vid), cam, -1))
        out[split] = sorted(rows)
    return out


RULES = {"RGBNT300": rgbnt300_rules, "Market1501-MM": market_rules, "WMVEID863": wmveid863_rules}


def reader_rows(dataset, train_pids: list[int]) -> dict[str, list[tuple]]:
    """The reader's records as rows; train labels mapped back through the sorted raw pids (the relabel's order)."""
    raw = sorted(set(train_pids))

    def rows(records, pid):
        return sorted((tuple(r.paths[s] for s in r.paths), pid(r.pid), r.camid, r.sceneid) for r in records)

    return {"train": rows(dataset.train, lambda label: raw[label]), "query": rows(dataset.query, int),
            "gallery": rows(dataset.gallery, int)}


@pytest.mark.parametrize("name", NEW_SETS)
def test_records_equal_the_field_rules_with_the_fixes(tmp_path, name, shuffled_listings):
    root = str(tmp_path / TRAP_FOLDER)
    _tree(name, root)
    expected = RULES[name](root)
    dataset = build_dataset(name, root)
    assert reader_rows(dataset, [row[1] for row in expected["train"]]) == expected
    assert dataset.junk_key == "camid" and dataset.num_train_pids == 4


def test_rgbnt300_reads_the_file_name_not_the_path(tmp_path):
    root = str(tmp_path / TRAP_FOLDER)
    write_rgbnt300(root, RGBNT300_TREE)
    dataset = build_dataset("RGBNT300", root)
    path = dataset.query[0].paths["RGB"]
    assert re.search(r"([-\d]+)_c([-\d]+)", path).groups() == ("12", "3")  # the trap: the path's first match
    assert [(r.name, r.pid, r.camid) for r in dataset.query] == [("0301_c0001_001.jpg", 301, 0),
                                                                ("0302_c0002_001.jpg", 302, 1)]
    assert dataset.spectra == ("RGB", "NI") and dataset.copies == {}
    assert all(r.stitched and set(r.paths) == {"RGB", "NI"} for r in dataset.train + dataset.gallery)
    assert (dataset.num_train_pids, dataset.num_train_cams) == (4, 8)


def test_market_junk_left_out_distractors_kept(tmp_path):
    write_market(str(tmp_path), MARKET_TREE)
    dataset = build_dataset("Market1501-MM", str(tmp_path))
    assert [r.pid for r in dataset.gallery].count(0) == 2
    assert all(r.pid != -1 for r in dataset.train + dataset.query + dataset.gallery)
    assert len(dataset.gallery) == len(MARKET_TREE["gallery"]) - 2
    assert (dataset.num_train_pids, dataset.num_train_cams) == (4, 6)
    record = next(r for r in dataset.query if r.name == "0012_c3s1_000001_00.jpg")
    assert (record.pid, record.camid, record.sceneid) == (12, 2, -1)
    assert record.paths == {s: str(tmp_path / "Market1501-MM" / "query" / s / record.name) for s in SPECTRUM_FILES}


def test_wmveid863_pairs_by_name_where_the_field_pairs_by_position(tmp_path, shuffled_listings):
    root = str(tmp_path)
    write_wmveid863(root, WMVEID863_TREE)
    by_position = wmveid863_rules(root, pair_by_name=False)
    mispaired = [paths for rows in by_position.values() for paths, *_ in rows
                 if len({os.path.basename(p) for p in paths}) > 1]
    assert mispaired  # the trap, on this tree with these listings
    dataset = build_dataset("WMVEID863", root)
    for record in dataset.train + dataset.query + dataset.gallery:
        assert len({os.path.basename(p) for p in record.paths.values()}) == 1
        assert [os.path.basename(os.path.dirname(p)) for p in record.paths.values()] == ["vis", "ni", "th"]
    night_and_day = {r.name: (r.pid, r.camid) for r in dataset.query + dataset.gallery}
    assert night_and_day["v1_n1_s005_000.jpg"] == (200, 1) and night_and_day["v0_n0_s001_000.jpg"] == (202, 0)
    assert {r.camid for r in dataset.train} == {0, 1, 2, 3, 4, 5, 6, 7}  # v0..v7, not decremented


def test_registry_and_declared_spectra():
    assert {"RGBNT300", "Market1501-MM", "WMVEID863"} <= set(dataset_names())
    assert dataset_spectra("RGBNT300") == (("RGB", "NI"), {})
    assert dataset_spectra("RGBNT300", ni_as_ti=True) == (("RGB", "NI", "TI"), {"TI": "NI"})
    assert dataset_spectra("WMVEID863") == (("RGB", "NI", "TI"), {})
    with pytest.raises(DatasetError, match="Market1501-MM has RGB, NI, TI"):
        dataset_spectra("Market1501-MM", ni_as_ti=True)


# ----------------------------------------------------------------------------------------------------------------------
# The failure table: every bad input is a DatasetError naming itself.

@pytest.mark.parametrize("name", NEW_SETS)
def test_missing_root_data_set_and_split_folders(tmp_path, name):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=f"not found: {re.escape(missing)}"):
        build_dataset(name, missing)
    folder = {"RGBNT300": "RGBNT300/rgbir", "Market1501-MM": "Market1501-MM", "WMVEID863": "WMVEID863"}[name]
    with pytest.raises(DatasetError, match=f"data set folder not found: {re.escape(str(tmp_path / folder))}"):
        build_dataset(name, str(tmp_path))
    base = _tree(name, str(tmp_path))
    split = os.path.join(base, "query")
    shutil.rmtree(split)
    with pytest.raises(DatasetError, match=f"split folder not found: {re.escape(split)}"):
        build_dataset(name, str(tmp_path))


@pytest.mark.parametrize("name, bad", [
    ("RGBNT300", "car.jpg"), ("RGBNT300", "-1_c0001_001.jpg"), ("RGBNT300", "0601_c0001_001.jpg"),
    ("RGBNT300", "0001_c0009_001.jpg"), ("RGBNT300", "0001_c0000_001.jpg"),
    ("Market1501-MM", "car.jpg"), ("Market1501-MM", "0002_c7s1_000001_01.jpg"), ("Market1501-MM", "1502_c1s1_01.jpg"),
    ("WMVEID863", "car.jpg"), ("WMVEID863", "v3_s012_004.jpg"), ("WMVEID863", "n1_s012_004.jpg")])
def test_unparsable_names(tmp_path, name, bad):
    base = _tree(name, str(tmp_path))
    if name == "RGBNT300":
        folder = os.path.join(base, "bounding_box_train")
        save_image(os.path.join(folder, bad))
    elif name == "Market1501-MM":
        for spectrum in SPECTRUM_FILES:
            save_image(os.path.join(base, "train", spectrum, bad))
        folder = os.path.join(base, "train", "RGB")
    else:
        for f in ("vis", "ni", "th"):
            save_image(os.path.join(base, "train", "0003", f, bad))
        folder = os.path.join(base, "train", "0003", "vis")
    with pytest.raises(DatasetError, match=f"does not parse.*{re.escape(os.path.join(folder, bad))}"):
        build_dataset(name, str(tmp_path))


def test_wmveid863_vehicle_folder_and_root_mistakes(tmp_path):
    base = write_wmveid863(str(tmp_path), WMVEID863_TREE)
    with pytest.raises(DatasetError, match="DATASETS.ROOT_DIR is the folder that holds WMVEID863/"):
        build_dataset("WMVEID863", base)  # FACENet's ROOT_DIR
    shutil.copytree(os.path.join(base, "train", "0003"), os.path.join(base, "train", "car"))
    with pytest.raises(DatasetError, match=f"not a number: {re.escape(os.path.join(base, 'train', 'car'))}"):
        build_dataset("WMVEID863", str(tmp_path))


@pytest.mark.parametrize("name, spectrum", [("Market1501-MM", "NI"), ("Market1501-MM", "TI"), ("WMVEID863", "NI"),
                                            ("WMVEID863", "TI"), ("WMVEID863", "RGB")])
def test_missing_spectrum_file(tmp_path, name, spectrum):
    base = _tree(name, str(tmp_path))
    if name == "Market1501-MM":
        missing = os.path.join(base, "gallery", spectrum, "0000_c5s1_000001_00.jpg")
    else:
        folder = {"RGB": "vis", "NI": "ni", "TI": "th"}[spectrum]
        missing = os.path.join(base, "test", "0200", folder, "v2_n0_s005_001.jpg")
    os.remove(missing)
    with pytest.raises(DatasetError, match=f"missing {spectrum} file {re.escape(missing)}"):
        build_dataset(name, str(tmp_path))


@pytest.mark.parametrize("name", NEW_SETS)
def test_corrupt_image_is_named_when_read(tmp_path, name):
    _tree(name, str(tmp_path))
    dataset = build_dataset(name, str(tmp_path))
    record = dataset.query[0]
    path = record.paths[dataset.spectra[-1]]
    with open(path, "wb") as f:
        f.write(b"\xff\xd8 not a jpeg")
    with pytest.raises(DatasetError, match=f"cannot read image {re.escape(path)}"):
        MultiSpectralDataset(dataset.query, dataset.spectra, lambda x: torch.from_numpy(x.copy()))[0]


def test_rgbnt300_file_that_is_not_two_strips(tmp_path):
    base = write_rgbnt300(str(tmp_path), RGBNT300_TREE)
    path = os.path.join(base, "query", "0301_c0001_001.jpg")
    save_image(path, size=(65, 64))
    dataset = build_dataset("RGBNT300", str(tmp_path))
    with pytest.raises(DatasetError, match=f"stitched image {re.escape(path)} is 65 pixels wide, not 2 equal parts"):
        MultiSpectralDataset(dataset.query, ["RGB", "NI"], lambda x: x)[0]


# ----------------------------------------------------------------------------------------------------------------------
# Two spectra, and the NI image in the TI slot.

def _cfg(root: str, name: str = "RGBNT300", **overrides):
    opts = tiny_opts(root, os.path.join(root, "out"), **{"DATASETS.NAMES": name, "MODEL.SPECTRA": "['RGB','NI']",
                                                         **overrides})
    return load_config(None, opts)


def test_rgbnt300_strips_and_the_ni_copy_in_the_ti_slot(tmp_path):
    root = str(tmp_path)
    write_rgbnt300(root, RGBNT300_TREE)
    bundle = build_dataloader(_cfg(root))
    bundle.train_sampler.set_epoch(1)
    batch = next(iter(bundle.train_loader))
    assert set(batch["images"]) == {"RGB", "NI"} and batch["images"]["RGB"].shape[1:] == (3, 64, 32)
    plain = MultiSpectralDataset(bundle.dataset.query, ["RGB", "NI"], lambda x: torch.from_numpy(x.copy()))[0]
    assert plain["images"]["RGB"].float().mean((0, 1)).argmax() == 0  # the left tile is the RGB image (red)
    assert plain["images"]["NI"].float().mean((0, 1)).argmax() == 1  # the right one the NI image (green)

    two_spectra = batch
    for cache in ("False", "True"):
        cfg = _cfg(root, **{"DATASETS.NI_AS_TI": "True", "MODEL.SPECTRA": "['RGB','NI','TI']",
                            "DATALOADER.CACHE_IMAGES": cache})
        bundle = build_dataloader(cfg)
        assert bundle.dataset.spectra == ("RGB", "NI", "TI") and bundle.dataset.copies == {"TI": "NI"}
        bundle.train_sampler.set_epoch(1)
        batch = next(iter(bundle.train_loader))  # random flip, crop and erasing: TI holds the very NI tensor
        assert torch.equal(batch["images"]["TI"], batch["images"]["NI"])
        for spectrum in ("RGB", "NI"):  # and the copy changes nothing in the two spectra's batches
            assert torch.equal(batch["images"][spectrum], two_spectra["images"][spectrum])
    test = MultiSpectralDataset(bundle.dataset.query, ["TI"], build_transforms(cfg, is_train=False))[0]
    reference = MultiSpectralDataset(bundle.dataset.query, ["NI"], build_transforms(cfg, is_train=False))[0]
    assert torch.equal(test["images"]["TI"], reference["images"]["NI"])


def test_config_checks_the_spectra_against_the_data_set():
    with pytest.raises(ConfigError, match=r"MODEL.SPECTRA = \['RGB', 'NI', 'TI'\] holds TI, which data set RGBNT300 "
                                          r"\(DATASETS.NAMES\) does not have.*DATASETS.NI_AS_TI True"):
        load_config(None, ["DATASETS.NAMES", "RGBNT300"])
    with pytest.raises(ConfigError, match="DATASETS.NI_AS_TI = True with DATASETS.NAMES = 'WMVEID863'"):
        load_config(None, ["DATASETS.NAMES", "WMVEID863", "DATASETS.NI_AS_TI", "True"])
    with pytest.raises(ConfigError, match=r"TEST.MISS = 't' removes TI.*settings that exist: nothing, r, n, all"):
        load_config(None, ["DATASETS.NAMES", "RGBNT300", "MODEL.SPECTRA", "['RGB','NI']", "TEST.MISS", "t"])
    with pytest.raises(ConfigError, match=r"TEST.MISS = 'n' removes one of NI and TI.*exist: nothing, r, nt, all"):
        load_config(None, ["DATASETS.NAMES", "RGBNT300", "DATASETS.NI_AS_TI", "True", "TEST.MISS", "n"])
    with pytest.raises(ConfigError, match=r"TEST.CROSS.*'RGB->TI': TI holds a copy of the NI image"):
        load_config(None, ["DATASETS.NAMES", "RGBNT300", "DATASETS.NI_AS_TI", "True", "TEST.CROSS", "RGB->TI"])


def test_settings_and_pairs_that_exist(tmp_path):
    two = _cfg(str(tmp_path), **{"TEST.MISS": "all", "TEST.CROSS": "all"})
    copied = _cfg(str(tmp_path), **{"TEST.MISS": "all", "TEST.CROSS": "all", "DATASETS.NI_AS_TI": "True",
                                    "MODEL.SPECTRA": "['RGB','NI','TI']"})
    three = _cfg(str(tmp_path), "WMVEID863", **{"TEST.MISS": "all", "MODEL.SPECTRA": "['RGB','NI','TI']"})
    assert eval_settings(two) == ["nothing", "r", "n"]
    assert eval_settings(copied) == ["nothing", "r", "nt"]
    assert eval_settings(three) == ["nothing", "r", "n", "t", "rn", "rt", "nt"]
    ablation = _cfg(str(tmp_path), "RGBNT201", **{"TEST.MISS": "all"})  # two of three spectra: no duplicate rows
    assert eval_settings(ablation) == ["nothing", "r", "n"]
    assert [p.name for p in eval_pairs(two)] == ["RGB->NI", "NI->RGB"]
    assert [p.name for p in eval_pairs(copied)] == ["RGB->NI+TI", "NI+TI->RGB"]


@pytest.mark.parametrize("config, name", [(f"configs/{s}/{m}.yml", s) for s in NEW_SETS for m in ("TOP-ReID", "DeMo")])
def test_shipped_configs(config, name):
    cfg = load_config(os.path.join(REPO, config))
    assert cfg.DATASETS.NAMES == name
    if name == "RGBNT300":  # TOP-ReID on the two spectra; DeMo, which needs three, with the field's convention
        assert (list(cfg.MODEL.SPECTRA), cfg.DATASETS.NI_AS_TI) == ((["RGB", "NI"], False) if "TOP" in config else
                                                                   (["RGB", "NI", "TI"], True))
    else:
        assert list(cfg.MODEL.SPECTRA) == ["RGB", "NI", "TI"] and not cfg.DATASETS.NI_AS_TI


@pytest.mark.parametrize("name, config, spectra", [
    ("RGBNT300", "configs/RGBNT300/TOP-ReID.yml", "spectra: RGB, NI"),
    ("RGBNT300", "configs/RGBNT300/DeMo.yml", "spectra: RGB, NI, TI (the NI image)"),
    ("Market1501-MM", "configs/Market1501-MM/TOP-ReID.yml", "spectra: RGB, NI, TI"),
    ("WMVEID863", "configs/WMVEID863/TOP-ReID.yml", "spectra: RGB, NI, TI")])
def test_inspect_dataset(tmp_path, capsys, name, config, spectra):
    _tree(name, str(tmp_path))
    out = tmp_path / "records.json"
    assert inspect_dataset.main(["--config_file", os.path.join(REPO, config), "DATASETS.ROOT_DIR", str(tmp_path),
                                 "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"{name} statistics" in stdout and spectra in stdout and "same pid and same camid" in stdout
    records = json.loads(out.read_text())
    dataset = read_dataset(load_config(os.path.join(REPO, config), ["DATASETS.ROOT_DIR", str(tmp_path)]))
    assert [(r["paths"], r["pid"], r["camid"]) for r in records["gallery"]] == \
        [(r.paths, r.pid, r.camid) for r in dataset.gallery]
    assert all(r.get("copies", {}) == dataset.copies for r in records["train"])
    assert inspect_dataset.main(["--config_file", os.path.join(REPO, config), "DATASETS.ROOT_DIR",
                                 str(tmp_path / "none")]) == 1
    assert str(tmp_path / "none") in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# End to end: one epoch through train_net.py, every setting and pair that exists through test_net.py.

E2E = {
    "RGBNT300-two": ("RGBNT300", "configs/RGBNT300/TOP-ReID.yml", {}, ["nothing", "r", "n"], ["RGB->NI", "NI->RGB"]),
    "RGBNT300-NI_AS_TI": ("RGBNT300", "configs/RGBNT300/TOP-ReID.yml",
                          {"DATASETS.NI_AS_TI": "True", "MODEL.SPECTRA": "['RGB','NI','TI']"},
                          ["nothing", "r", "nt"], ["RGB->NI+TI", "NI+TI->RGB"]),
    "Market1501-MM": ("Market1501-MM", "configs/Market1501-MM/TOP-ReID.yml", {},
                      ["nothing", "r", "n", "t", "rn", "rt", "nt"], None),
    "WMVEID863": ("WMVEID863", "configs/WMVEID863/TOP-ReID.yml", {},
                  ["nothing", "r", "n", "t", "rn", "rt", "nt"], None),
}
CROSS_ALL = ["RGB->NI", "RGB->TI", "NI->RGB", "NI->TI", "TI->RGB", "TI->NI"]


def _opts(root: str, out, **overrides) -> list[str]:
    opts = tiny_opts(root, str(out), **{"TEST.MISS": "all", "TEST.CROSS": "all", **overrides})
    return opts[2:]  # the data set is the config file's (tiny_opts starts with DATASETS.NAMES demo)


def _entry_point(module, args: list[str], subprocess_run: bool) -> int:
    """``python <module>.py ARGS`` as a command, or its ``main(ARGS)`` in this process (the same code, without the
    seconds of imports)."""
    if not subprocess_run:
        return module.main(args)
    proc = subprocess.run([sys.executable, f"{module.__name__}.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("case", list(E2E))
def test_train_net_and_test_net(tmp_path, case):
    name, config, overrides, settings, pairs = E2E[case]
    root = str(tmp_path / "data")
    _tree(name, root)
    run = tmp_path / "run"
    as_command = case == "RGBNT300-two"  # one case as commands; the others in-process
    args = ["--config_file", os.path.join(REPO, config), *_opts(root, run, **overrides)]
    assert _entry_point(train_net, args, as_command) == 0
    trained = json.loads((run / "results.json").read_text())
    assert list(trained["settings"]) == settings and list(trained["cross"]) == (pairs or CROSS_ALL)

    out = tmp_path / "test"
    args = ["--config_file", os.path.join(REPO, config),
            *_opts(root, out, **{"TEST.WEIGHT": str(run / "best.pth"), **overrides})]
    assert _entry_point(test_net, args, as_command) == 0
    tested = json.loads((out / "results.json").read_text())
    assert list(tested["settings"]) == settings and list(tested["cross"]) == (pairs or CROSS_ALL)
    for metrics in [*tested["settings"].values(), *tested["cross"].values()]:
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert tested["settings"]["nothing"] == pytest.approx(trained["settings"]["nothing"])


@pytest.mark.slow
def test_rgbnt300_demo_config_with_the_ni_copy(tmp_path):
    """configs/RGBNT300/DeMo.yml (the NI image in the TI slot) trains and evaluates its settings, in-process."""
    from processor.trainer import Trainer

    root = str(tmp_path / "data")
    write_rgbnt300(root, RGBNT300_TREE)
    cfg = load_config(os.path.join(REPO, "configs/RGBNT300/DeMo.yml"),
                      _opts(root, tmp_path / "run", **{"SOLVER.IMS_PER_BATCH": "16", "TEST.CROSS": ""}))
    results = Trainer(cfg).train()
    assert list(results) == ["nothing", "r", "nt"]


def test_plot_results_with_the_settings_of_two_spectra(tmp_path):
    from tools import plot_results

    metrics = {"mAP": 0.5, "Rank-1": 0.6, "Rank-5": 0.7, "Rank-10": 0.8, "mINP": 0.1}
    results = {s: metrics for s in ("nothing", "r", "n")}
    cross = {p: results["nothing"] for p in ("RGB->NI+TI", "NI+TI->RGB")}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"settings": results, "cross": cross}))
    assert plot_results.main(["--results", str(path), "--out", str(tmp_path), "--labels", "RGBNT300"]) == 0
    with Image.open(tmp_path / "results_bars.png") as bars, Image.open(tmp_path / "cross_RGBNT300.png") as matrix:
        assert bars.size == (1200, 500) and matrix.size == (600, 500)
