"""Dataset and loaders: batch format, determinism across worker counts, shared augmentation, stitched crops,
unreadable images, the image cache."""

from __future__ import annotations

import os
import random
import re

import numpy as np
import pytest
import torch
import torchvision.transforms as T

import data.build
from configs.config import ConfigError
from configs.defaults import get_cfg_defaults
from data.build import build_dataloader
from data.datasets import DatasetError, Record, build_dataset
from data.loader import ImageCache, MultiSpectralDataset, collate
from data.transforms import build_transforms
from tests.helpers import rgbnt201_names, save_image, write_rgbnt100, write_rgbnt201

SPECTRA = ("RGB", "NI", "TI")


def _cfg(root: str, **overrides):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["DATASETS.NAMES", "RGBNT201", "DATASETS.ROOT_DIR", root, "MODEL.DEVICE", "cpu",
                         "INPUT.SIZE_TRAIN", [32, 16], "INPUT.SIZE_TEST", [32, 16], "INPUT.PADDING", 2,
                         "SOLVER.IMS_PER_BATCH", 8, "DATALOADER.NUM_INSTANCE", 2, "DATALOADER.NUM_WORKERS", 0,
                         "TEST.IMS_PER_BATCH", 5, "SOLVER.SEED", 5])
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


@pytest.fixture
def tree(tmp_path) -> str:
    write_rgbnt201(str(tmp_path), rgbnt201_names([1, 2, 3, 4, 5], [1, 2], 2), rgbnt201_names([9, 10], [1, 2], 2))
    return str(tmp_path)


def _epochs(bundle, epochs=(1, 2)):
    out = []
    for epoch in epochs:
        bundle.train_sampler.set_epoch(epoch)
        out.extend(bundle.train_loader)
    return out


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and x["images"].keys() == y["images"].keys()
        for s in x["images"]:
            assert torch.equal(x["images"][s], y["images"][s])
        for key in ("pid", "camid", "sceneid"):
            assert torch.equal(x[key], y[key])
        assert x["name"] == y["name"]


def test_bundle_and_batch_format(tree):
    bundle = build_dataloader(_cfg(tree))
    assert (bundle.num_query, bundle.num_classes, bundle.num_cameras) == (8, 5, 2)
    assert bundle.dataset.name == "RGBNT201" and bundle.train_loader.batch_sampler is bundle.train_sampler
    batch = _epochs(bundle, [1])[0]
    assert set(batch) == {"images", "pid", "camid", "sceneid", "name"}
    assert set(batch["images"]) == set(SPECTRA)
    for tensor in batch["images"].values():
        assert tensor.dtype == torch.float32 and tensor.shape == (8, 3, 32, 16)
    assert batch["pid"].dtype == batch["camid"].dtype == batch["sceneid"].dtype == torch.long
    assert batch["pid"].tolist() == [int(n[:6]) - 1 for n in batch["name"]]  # train pids 1..5 -> labels 0..4
    assert batch["camid"].tolist() == [int(n[10]) - 1 for n in batch["name"]]
    test = list(bundle.test_loader)
    names = [n for b in test for n in b["name"]]
    assert names == [r.name for r in bundle.dataset.query + bundle.dataset.gallery]
    assert [len(b["name"]) for b in test] == [5, 5, 5, 1]
    assert all(b["images"]["RGB"].shape[1:] == (3, 32, 16) for b in test)


def test_only_configured_spectra_are_loaded(tree):
    bundle = build_dataloader(_cfg(tree, **{"MODEL.SPECTRA": ["RGB", "TI"]}))
    assert set(_epochs(bundle, [1])[0]["images"]) == {"RGB", "TI"}
    assert set(next(iter(bundle.test_loader))["images"]) == {"RGB", "TI"}


def test_same_batches_for_zero_and_two_workers_and_main_rng_untouched(tree):
    torch.manual_seed(123)
    random.seed(123)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    serial = _epochs(build_dataloader(_cfg(tree)))
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    parallel = _epochs(build_dataloader(_cfg(tree, **{"DATALOADER.NUM_WORKERS": 2})))
    _assert_same_batches(serial, parallel)
    # the augmentation is really random: the two epochs' images of one record differ
    first = {n: b["images"]["RGB"][i] for b in serial[: len(serial) // 2] for i, n in enumerate(b["name"])}
    second = {n: b["images"]["RGB"][i] for b in serial[len(serial) // 2:] for i, n in enumerate(b["name"])}
    common = set(first) & set(second)
    assert common and any(not torch.equal(first[n], second[n]) for n in common)


def test_epoch_order_is_reproducible_and_changes_with_epoch(tree):
    bundle = build_dataloader(_cfg(tree))
    a, b = _epochs(bundle, [3]), _epochs(bundle, [3])
    _assert_same_batches(a, b)
    c = _epochs(bundle, [4])
    assert [x["name"] for x in a] != [x["name"] for x in c]


def _identical_spectra_tree(root: str) -> None:
    rng = np.random.default_rng(0)
    for split, pids in (("train_171", [1, 2, 3, 4]), ("test", [8])):
        for name in rgbnt201_names(pids, [1, 2], 2):
            pixels = rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)
            for spectrum in SPECTRA:
                save_image(os.path.join(root, "RGBNT201", split, spectrum, name), pixels)


def test_share_aug_gives_the_same_augmentation_to_every_spectrum(tmp_path):
    _identical_spectra_tree(str(tmp_path))
    options = {"INPUT.PROB": 0.5, "INPUT.RE_PROB": 0.5, "INPUT.PADDING": 4}
    shared = _epochs(build_dataloader(_cfg(str(tmp_path), **options, **{"INPUT.SHARE_AUG": True})), [1, 2, 3])
    for batch in shared:
        assert torch.equal(batch["images"]["RGB"], batch["images"]["NI"])
        assert torch.equal(batch["images"]["RGB"], batch["images"]["TI"])
    independent = _epochs(build_dataloader(_cfg(str(tmp_path), **options, **{"INPUT.SHARE_AUG": False})), [1, 2, 3])
    differs = [not torch.equal(b["images"]["RGB"][i], b["images"][s][i])
               for b in independent for i in range(len(b["name"])) for s in ("NI", "TI")]
    assert sum(differs) > len(differs) // 2


def test_rgbnt100_stitched_file_is_cropped_in_spectrum_order(tmp_path):
    write_rgbnt100(str(tmp_path), {"bounding_box_train": ["0001_c1_1.jpg"], "query": ["0002_c1_1.jpg"],
                                   "bounding_box_test": ["0002_c2_1.jpg"]})
    dataset = build_dataset("RGBNT100", str(tmp_path))
    item = MultiSpectralDataset(dataset.train, SPECTRA, T.ToTensor())[0]
    for spectrum, channel in zip(SPECTRA, range(3)):  # the tree's parts are red, green, blue
        image = item["images"][spectrum]
        assert image.shape == (3, 128, 256)
        means = image.mean(dim=(1, 2))
        assert means[channel] > 0.9 and all(means[c] < 0.1 for c in range(3) if c != channel)
    assert set(MultiSpectralDataset(dataset.train, ["TI"], T.ToTensor())[0]["images"]) == {"TI"}
    cfg = _cfg(str(tmp_path), **{"DATASETS.NAMES": "RGBNT100", "INPUT.SIZE_TEST": [64, 32]})
    test = MultiSpectralDataset(dataset.query, SPECTRA, build_transforms(cfg, is_train=False))[0]
    assert all(t.shape == (3, 64, 32) for t in test["images"].values())


def test_stitched_file_of_wrong_width_is_an_error(tmp_path):
    path = str(tmp_path / "0001_c1_1.jpg")
    save_image(path, size=(100, 20))
    record = Record(dict.fromkeys(SPECTRA, path), 0, 0, stitched=True)
    with pytest.raises(DatasetError, match=f"stitched image {re.escape(path)} is 100 pixels wide"):
        MultiSpectralDataset([record], SPECTRA, T.ToTensor())[0]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "deleted"])
def test_unreadable_image_is_reported_when_loaded(tree, damage):
    dataset = build_dataset("RGBNT201", tree)
    record = dataset.train[3]
    path = record.paths["NI"]
    with open(path, "rb") as f:
        data = f.read()
    if damage == "deleted":
        os.remove(path)
    else:
        with open(path, "wb") as f:
            f.write({"truncated": data[: len(data) * 2 // 3], "garbage": b"not an image" * 20, "empty": b""}[damage])
    items = MultiSpectralDataset(dataset.train, SPECTRA, T.ToTensor())
    with pytest.raises(DatasetError, match=re.escape(path)):
        items[(3, 11)]
    items[2]  # the other records still load


def test_corrupt_image_error_reaches_the_main_process_from_a_worker(tree):
    cfg = _cfg(tree, **{"DATALOADER.NUM_WORKERS": 2})
    bundle = build_dataloader(cfg)
    path = bundle.dataset.query[0].paths["TI"]
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
    batches = iter(bundle.test_loader)
    try:
        with pytest.raises(DatasetError, match=re.escape(path)):
            next(batches)
    finally:
        # A worker exception leaves PyTorch's loader iterator in a reference cycle; shut its workers down now, as
        # shutting them down at garbage collection waits 5 s per worker.
        batches._shutdown_workers()


@pytest.mark.parametrize("workers", [0, 2])
def test_image_cache_gives_the_same_batches(tree, workers):
    """The tree's images are 32x64, so the cache holds resized images; flips, pads, crops and erasing are drawn."""
    options = {"DATALOADER.NUM_WORKERS": workers, "INPUT.PROB": 0.5, "INPUT.RE_PROB": 0.5}
    plain = build_dataloader(_cfg(tree, **options))
    cached = build_dataloader(_cfg(tree, **options, **{"DATALOADER.CACHE_IMAGES": True}))
    cache = cached.train_loader.dataset.cache
    assert plain.train_loader.dataset.cache is None and cache.images.shape == (20, 3, 32, 16, 3)
    assert not cache.images.flags.writeable
    before = cache.images.copy()
    _assert_same_batches(_epochs(plain, [1, 2]), _epochs(cached, [1, 2]))
    assert np.array_equal(cache.images, before)
    assert cached.test_loader.dataset.cache is None  # evaluation decodes as before


def test_image_cache_of_stitched_files_equals_decoding_per_sample(tmp_path):
    rng = np.random.default_rng(3)
    write_rgbnt100(str(tmp_path), {"query": ["0002_c1_1.jpg"], "bounding_box_test": ["0002_c2_1.jpg"]})
    for name in ("0001_c1_1.jpg", "0001_c2_1.jpg", "0003_c1_2.jpg"):
        save_image(str(tmp_path / "RGBNT100" / "rgbir" / "bounding_box_train" / name),
                   rng.integers(0, 256, (128, 768, 3), dtype=np.uint8))
    records = build_dataset("RGBNT100", str(tmp_path)).train
    transform = build_transforms(_cfg(str(tmp_path), **{"INPUT.SIZE_TRAIN": [64, 32]}), is_train=True)
    for spectra in (SPECTRA, ("TI", "NI")):
        cache = ImageCache(records, spectra, transform, threads=2)
        plain = MultiSpectralDataset(records, spectra, transform)
        cached = MultiSpectralDataset(records, spectra, transform, cache=cache)
        for item in [(0, 7), (1, 8), (2, 9), (0, 10)]:
            a, b = plain[item]["images"], cached[item]["images"]
            assert list(a) == list(b) == list(spectra)
            assert all(torch.equal(a[s], b[s]) for s in spectra)


def test_image_cache_must_match_the_records(tree):
    records = build_dataset("RGBNT201", tree).train
    transform = build_transforms(_cfg(tree), is_train=True)
    cache = ImageCache(records[:3], ["RGB", "NI"], transform)
    with pytest.raises(ValueError, match="holds 3 records of \\['RGB', 'NI'\\]"):
        MultiSpectralDataset(records, ["RGB", "NI"], transform, cache=cache)
    with pytest.raises(ValueError, match="holds 3 records"):
        MultiSpectralDataset(records[:3], ["RGB"], transform, cache=cache)


def test_image_cache_larger_than_the_memory_is_a_config_error(tree, monkeypatch):
    monkeypatch.setattr(data.build, "available_memory", lambda: 100_000)
    with pytest.raises(ConfigError, match=r"DATALOADER.CACHE_IMAGES = True needs 0.0 GiB for 20 training samples "
                                          r"\(3 spectra at 32x16\), more than 80% of the 0.0 GiB"):
        build_dataloader(_cfg(tree, **{"DATALOADER.CACHE_IMAGES": True}))
    # 20 x 3 x 32 x 16 x 3 = 92160 bytes are more than 80% of 100000; two spectra, 61440 bytes, are not
    bundle = build_dataloader(_cfg(tree, **{"DATALOADER.CACHE_IMAGES": True, "MODEL.SPECTRA": ["RGB", "TI"]}))
    assert bundle.train_loader.dataset.cache.images.shape == (20, 2, 32, 16, 3)


def test_unreadable_image_is_reported_when_the_cache_is_built(tree):
    path = build_dataset("RGBNT201", tree).train[5].paths["TI"]
    with open(path, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(DatasetError, match=re.escape(path)):
        build_dataloader(_cfg(tree, **{"DATALOADER.CACHE_IMAGES": True, "DATALOADER.NUM_WORKERS": 2}))


def test_collate_keeps_order():
    samples = [{"images": {"RGB": torch.full((3, 2, 2), float(i))}, "pid": i, "camid": 2 * i, "sceneid": -1,
                "name": f"n{i}"} for i in range(3)]
    batch = collate(samples)
    assert batch["images"]["RGB"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert batch["pid"].tolist() == [0, 1, 2] and batch["camid"].tolist() == [0, 2, 4]
    assert batch["sceneid"].tolist() == [-1, -1, -1] and batch["name"] == ["n0", "n1", "n2"]
