"""The synthetic demo data: RGBNT201 layout through the real reader, deterministic, identity split across spectra,
generated atomically and only when absent or outdated."""

from __future__ import annotations

import hashlib
import itertools
import os

import numpy as np
import pytest

import data.demo as demo
from data.datasets import DatasetError, build_dataset

SPECTRA = ("RGB", "NI", "TI")


def _digest(folder: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def small_demo(monkeypatch):
    """Fewer images per identity, so the generation tests run fast."""
    monkeypatch.setattr(demo, "IMAGES_PER_CAMERA", 1)
    monkeypatch.setattr(demo, "NUM_CAMERAS", 2)


def test_demo_is_read_by_the_rgbnt201_reader(demo_root):
    ds = build_dataset("demo", demo_root)
    rgbnt201 = build_dataset("RGBNT201", demo_root)  # the same files, read as RGBNT201
    assert [r.paths for r in ds.train] == [r.paths for r in rgbnt201.train]
    assert ds.name == "demo" and ds.junk_key == "camid"
    assert ds.num_train_pids == demo.NUM_TRAIN_IDS and ds.num_train_cams == demo.NUM_CAMERAS
    assert len({r.pid for r in ds.query}) == demo.NUM_TEST_IDS and ds.query == ds.gallery
    assert not {r.pid for r in rgbnt201.train} & {r.pid for r in ds.query}
    assert len(ds.train) == demo.NUM_TRAIN_IDS * demo.NUM_CAMERAS * demo.IMAGES_PER_CAMERA
    for r in ds.train[:5] + ds.query[:5]:
        assert set(r.paths) == set(SPECTRA) and all(os.path.isfile(p) for p in r.paths.values())
    from PIL import Image

    with Image.open(ds.train[0].paths["TI"]) as img:
        assert img.size == (demo.WIDTH, demo.HEIGHT) and img.mode == "RGB"


def test_generation_is_deterministic(tmp_path, small_demo):
    demo.write_demo_dataset(str(tmp_path / "a"), seed=5)
    demo.write_demo_dataset(str(tmp_path / "b"), seed=5)
    a, b = _digest(str(tmp_path / "a")), _digest(str(tmp_path / "b"))
    assert len(a) == 3 * (demo.NUM_TRAIN_IDS + demo.NUM_TEST_IDS) * demo.NUM_CAMERAS * demo.IMAGES_PER_CAMERA + 1
    assert a == b
    train, test = demo.identity_codes(6)
    assert (train, test) != demo.identity_codes(5)


def test_identity_is_split_across_spectra():
    """Each spectrum alone confuses some identities (identical clean renderings); all three never do."""
    train, test = demo.identity_codes()
    codes = {**train, **test}
    assert len(codes) == demo.NUM_TRAIN_IDS + demo.NUM_TEST_IDS
    clean = {pid: demo.render(code) for pid, code in codes.items()}

    def differ(a: int, b: int, spectrum: str) -> float:
        return float(np.abs(clean[a][spectrum] - clean[b][spectrum]).mean())

    pairs = list(itertools.combinations(sorted(codes), 2))
    for spectrum in SPECTRA:
        same = [(a, b) for a, b in pairs if differ(a, b, spectrum) < 1e-6]
        assert same, f"{spectrum} alone tells every identity apart"
    for first, second in itertools.combinations(SPECTRA, 2):
        assert any(differ(a, b, first) < 1e-6 and differ(a, b, second) < 1e-6 for a, b in pairs), \
            f"{first} + {second} tell every identity apart"
    # Every pair of identities differs clearly in at least one spectrum.
    margin = min(max(differ(a, b, s) for s in SPECTRA) for a, b in pairs)
    assert margin > 0.01
    # The test identities are seen in each camera, so each query has matches in other cameras.
    assert demo.NUM_CAMERAS >= 2


def test_cameras_and_noise_change_appearance():
    code = demo.identity_codes()[0][1]
    rng = np.random.default_rng(0)
    views = [demo.render(code, cam, rng) for cam in demo.CAMERAS]
    for a, b in itertools.combinations(views, 2):
        assert all(np.abs(a[s] - b[s]).mean() > 0.01 for s in SPECTRA)
    again = demo.render(code, demo.CAMERAS[0], np.random.default_rng(1))
    assert np.abs(again["RGB"] - views[0]["RGB"]).mean() > 0.005  # per-image jitter and noise


def test_ensure_generates_once_and_regenerates_when_outdated(tmp_path, monkeypatch, small_demo):
    root = str(tmp_path)
    target = demo.ensure_demo_dataset(root)
    assert target == os.path.join(root, "RGBNT201") and os.path.isfile(os.path.join(target, demo.MARKER))
    first = _digest(target)
    calls = []
    with monkeypatch.context() as patch:
        patch.setattr(demo, "write_demo_dataset", lambda *a, **k: calls.append(a))
        assert demo.ensure_demo_dataset(root) == target and not calls  # present and current: nothing written
    monkeypatch.setattr(demo, "GENERATOR_VERSION", demo.GENERATOR_VERSION + 1)
    demo.ensure_demo_dataset(root)
    second = _digest(target)
    assert second.keys() == first.keys() and second[demo.MARKER] != first[demo.MARKER]
    assert os.listdir(root) == ["RGBNT201"]  # no temporary or old folders left


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch, small_demo):
    real = demo.write_demo_dataset

    def crash(folder: str, seed: int = 0) -> None:
        real(folder, seed)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "write_demo_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        demo.ensure_demo_dataset(str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_real_data_folder_is_not_overwritten(tmp_path):
    os.makedirs(tmp_path / "RGBNT201" / "train_171")
    with pytest.raises(DatasetError, match="not demo data"):
        demo.ensure_demo_dataset(str(tmp_path))
    assert os.listdir(tmp_path / "RGBNT201") == ["train_171"]
