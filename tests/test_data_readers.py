"""Readers of RGBNT201, RGBNT100 and MSVR310 on tiny trees in their published layouts; every bad input names itself."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from data.datasets import DatasetError, Record, ReIDDataset, build_dataset, dataset_names, relabel
from tests.helpers import (
    SPECTRA,
    rgbnt201_names,
    save_image,
    write_msvr310,
    write_rgbnt100,
    write_rgbnt201,
)


def test_registry_names_and_unknown_name(tmp_path):
    assert {"RGBNT201", "RGBNT100", "MSVR310", "demo"} <= set(dataset_names())
    with pytest.raises(DatasetError, match="unknown data set 'Market1501'; known: ") as err:
        build_dataset("Market1501", str(tmp_path))
    assert all(name in str(err.value) for name in ("RGBNT201", "RGBNT100", "MSVR310", "demo"))


def test_rgbnt201_parses_names_pairs_spectra_and_relabels(tmp_path):
    write_rgbnt201(str(tmp_path), ["000028_cam3_0_02.jpg", "000028_cam1_0_01.jpg", "000005_cam4_1_10.jpg",
                                   "000171_cam2_0_03.jpg"], ["000300_cam1_0_01.jpg", "000301_cam2_0_01.jpg"])
    ds = build_dataset("RGBNT201", str(tmp_path))
    assert [r.name for r in ds.train] == sorted(r.name for r in ds.train)
    raw = {r.name: r for r in ds.train}
    # sorted raw pids 5, 28, 171 -> labels 0, 1, 2
    assert (raw["000028_cam3_0_02.jpg"].pid, raw["000028_cam3_0_02.jpg"].camid) == (1, 2)
    assert (raw["000028_cam1_0_01.jpg"].pid, raw["000028_cam1_0_01.jpg"].camid) == (1, 0)
    assert (raw["000005_cam4_1_10.jpg"].pid, raw["000005_cam4_1_10.jpg"].camid) == (0, 3)
    assert (raw["000171_cam2_0_03.jpg"].pid, raw["000171_cam2_0_03.jpg"].camid) == (2, 1)
    record = raw["000028_cam3_0_02.jpg"]
    assert set(record.paths) == set(SPECTRA) and not record.stitched and record.sceneid == -1
    for spectrum in SPECTRA:
        assert record.paths[spectrum] == os.path.join(str(tmp_path), "RGBNT201", "train_171", spectrum,
                                                      "000028_cam3_0_02.jpg")
    assert ds.query == ds.gallery and [r.pid for r in ds.query] == [300, 301]  # raw pids
    assert (ds.num_train_pids, ds.num_train_cams, ds.junk_key) == (3, 4, "camid")


def test_rgbnt100_reads_stitched_files(tmp_path):
    write_rgbnt100(str(tmp_path), {"bounding_box_train": ["0561_c0001_006.jpg", "0003_c008_001.jpg"],
                                   "query": ["0600_c0002_001.jpg"],
                                   "bounding_box_test": ["0600_c0003_001.jpg", "0599_c0002_001.jpg"]})
    ds = build_dataset("RGBNT100", str(tmp_path))
    assert [(r.name, r.pid, r.camid) for r in ds.train] == [("0003_c008_001.jpg", 0, 7), ("0561_c0001_006.jpg", 1, 0)]
    assert all(r.stitched and len(set(r.paths.values())) == 1 and set(r.paths) == set(SPECTRA) for r in ds.train)
    assert [(r.pid, r.camid) for r in ds.query] == [(600, 1)]
    assert [(r.pid, r.camid) for r in ds.gallery] == [(599, 1), (600, 2)]
    assert ds.junk_key == "camid"


def test_msvr310_reads_scenes(tmp_path):
    write_msvr310(str(tmp_path), {"bounding_box_train": ["0001_s002_v0_000.jpg", "0001_s002_v3_001.jpg",
                                                         "0007_s010_v7_000.jpg"],
                                  "query3": ["0100_s030_v1_000.jpg"],
                                  "bounding_box_test": ["0100_s031_v2_000.jpg", "0100_s030_v5_004.jpg"]})
    ds = build_dataset("MSVR310", str(tmp_path))
    assert [(r.pid, r.camid, r.sceneid) for r in ds.train] == [(0, 0, 2), (0, 3, 2), (1, 7, 10)]
    assert ds.train[0].paths == {s: os.path.join(str(tmp_path), "MSVR310", "bounding_box_train", "0001", f,
                                                 "0001_s002_v0_000.jpg") for s, f in zip(SPECTRA, ("vis", "ni", "th"))}
    assert [(r.pid, r.camid, r.sceneid) for r in ds.query] == [(100, 1, 30)]
    assert [(r.pid, r.camid, r.sceneid) for r in ds.gallery] == [(100, 5, 30), (100, 2, 31)]
    assert ds.junk_key == "sceneid"
    stats = ds.statistics()
    assert "# scenes" in stats


def test_statistics_table_counts(tmp_path):
    write_rgbnt201(str(tmp_path), rgbnt201_names([1, 2, 3], [1, 2, 4], 2), rgbnt201_names([7, 8], [1, 3], 1))
    ds = build_dataset("RGBNT201", str(tmp_path))
    lines = [line.split("|") for line in ds.statistics().splitlines() if "|" in line]
    rows = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in lines}
    assert rows["subset"] == ["# ids", "# images", "# cameras"]
    assert rows["train"] == ["3", "18", "3"]
    assert rows["query"] == rows["gallery"] == ["2", "4", "2"]


def test_relabel_is_sorted_and_dataset_checks_it():
    records = [Record({"RGB": f"{p}.jpg"}, p, 0) for p in (40, 7, 40, 12)]
    assert [r.pid for r in relabel(records)] == [2, 0, 2, 1]
    with pytest.raises(ValueError, match="relabelled"):
        ReIDDataset("x", records, records, records)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: a DatasetError naming the path or name.

def _good_rgbnt201(tmp_path) -> str:
    return write_rgbnt201(str(tmp_path), rgbnt201_names([1, 2], [1, 2], 1), rgbnt201_names([5], [1, 2], 1))


def test_missing_root(tmp_path):
    missing = str(tmp_path / "nowhere")
    for name in ("RGBNT201", "RGBNT100", "MSVR310"):
        with pytest.raises(DatasetError, match=f"not found: {re.escape(missing)}"):
            build_dataset(name, missing)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "RGBNT100" / "rgbir"))):
        build_dataset("RGBNT100", str(tmp_path))


@pytest.mark.parametrize("reader,layout,split", [
    ("RGBNT201", "rgbnt201", "test"), ("RGBNT100", "rgbnt100", "query"), ("MSVR310", "msvr310", "query3")])
def test_missing_split_folder(tmp_path, reader, layout, split):
    if layout == "rgbnt201":
        base = _good_rgbnt201(tmp_path)
    elif layout == "rgbnt100":
        base = write_rgbnt100(str(tmp_path), {"bounding_box_train": ["0001_c1_1.jpg"], "query": ["0002_c1_1.jpg"],
                                              "bounding_box_test": ["0002_c2_1.jpg"]})
    else:
        base = write_msvr310(str(tmp_path), {"bounding_box_train": ["0001_s001_v0_000.jpg"],
                                             "query3": ["0002_s001_v0_000.jpg"],
                                             "bounding_box_test": ["0002_s002_v1_000.jpg"]})
    shutil.rmtree(os.path.join(base, split))
    with pytest.raises(DatasetError, match=f"split folder not found: {re.escape(os.path.join(base, split))}"):
        build_dataset(reader, str(tmp_path))


def test_missing_spectrum_folder(tmp_path):
    base = _good_rgbnt201(tmp_path)
    shutil.rmtree(os.path.join(base, "train_171", "TI"))
    with pytest.raises(DatasetError, match=re.escape(os.path.join(base, "train_171", "TI"))):
        build_dataset("RGBNT201", str(tmp_path))


def test_empty_split(tmp_path):
    base = _good_rgbnt201(tmp_path)
    for spectrum in SPECTRA:
        folder = os.path.join(base, "test", spectrum)
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
    with pytest.raises(DatasetError, match=f"empty split.*{re.escape(os.path.join(base, 'test'))}"):
        build_dataset("RGBNT201", str(tmp_path))
    write_rgbnt100(str(tmp_path), {"bounding_box_train": ["0001_c1_1.jpg"], "query": ["0002_c1_1.jpg"]})
    empty = os.path.join("rgbir", "bounding_box_test")
    with pytest.raises(DatasetError, match=f"empty split.*{re.escape(empty)}"):
        build_dataset("RGBNT100", str(tmp_path))


@pytest.mark.parametrize("spectrum", SPECTRA)
def test_missing_spectrum_file(tmp_path, spectrum):
    base = _good_rgbnt201(tmp_path)
    missing = os.path.join(base, "train_171", spectrum, "000002_cam1_0_01.jpg")
    os.remove(missing)
    with pytest.raises(DatasetError, match=f"missing {spectrum} file {re.escape(missing)}"):
        build_dataset("RGBNT201", str(tmp_path))


def test_missing_msvr310_spectrum_file(tmp_path):
    base = write_msvr310(str(tmp_path), {"bounding_box_train": ["0001_s001_v0_000.jpg", "0001_s001_v1_000.jpg"],
                                         "query3": ["0002_s001_v0_000.jpg"],
                                         "bounding_box_test": ["0002_s002_v1_000.jpg"]})
    missing = os.path.join(base, "bounding_box_train", "0001", "th", "0001_s001_v1_000.jpg")
    os.remove(missing)
    with pytest.raises(DatasetError, match=f"missing TI file {re.escape(missing)}"):
        build_dataset("MSVR310", str(tmp_path))


@pytest.mark.parametrize("bad", ["foo.jpg", "00002_cam1_0_01.jpg", "000002_c1_0_01.jpg", "000002_cam0_0_01.jpg"])
def test_unparsable_rgbnt201_name(tmp_path, bad):
    base = _good_rgbnt201(tmp_path)
    for spectrum in SPECTRA:
        save_image(os.path.join(base, "train_171", spectrum, bad))
    path = os.path.join(base, "train_171", "RGB", bad)
    with pytest.raises(DatasetError, match=f"does not parse.*{re.escape(path)}"):
        build_dataset("RGBNT201", str(tmp_path))


def test_unparsable_rgbnt100_and_msvr310_names(tmp_path):
    write_rgbnt100(str(tmp_path / "a"), {"bounding_box_train": ["0001_c1_1.jpg", "car_front.jpg"],
                                         "query": ["0002_c1_1.jpg"], "bounding_box_test": ["0002_c2_1.jpg"]})
    with pytest.raises(DatasetError, match="does not parse.*car_front.jpg"):
        build_dataset("RGBNT100", str(tmp_path / "a"))
    write_msvr310(str(tmp_path / "b"), {"bounding_box_train": ["0001_s001_v0_000.jpg", "0001_x001_v0_000.jpg"],
                                        "query3": ["0002_s001_v0_000.jpg"],
                                        "bounding_box_test": ["0002_s002_v1_000.jpg"]})
    with pytest.raises(DatasetError, match="does not parse.*0001_x001_v0_000.jpg"):
        build_dataset("MSVR310", str(tmp_path / "b"))


def test_non_image_files_are_not_samples(tmp_path):
    base = _good_rgbnt201(tmp_path)
    with open(os.path.join(base, "train_171", "RGB", "Thumbs.db"), "w") as f:
        f.write("x")
    assert len(build_dataset("RGBNT201", str(tmp_path)).train) == 4
