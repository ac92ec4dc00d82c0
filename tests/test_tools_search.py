"""extract_features (split, folder, .npz and memory-mapped .npy) and search (chunked top-k)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from tests.helpers import tool_opts
from tools import extract_features, search


def _gallery_features(run, demo_root: str, out) -> str:
    assert extract_features.main([*tool_opts(run, demo_root, out), "--split", "gallery"]) == 0
    return out / "features_gallery_nothing.npz"


@pytest.fixture(scope="module")
def gallery_npz(trained_run, demo_root, tmp_path_factory):
    return _gallery_features(trained_run, demo_root, tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def vit_tiny_gallery_npz(vit_tiny_run, demo_root, tmp_path_factory):
    """The gallery features of the vit_tiny checkpoint (3 x 192 dimensions)."""
    return _gallery_features(vit_tiny_run, demo_root, tmp_path_factory.mktemp("vit_tiny_features"))


@pytest.mark.slow
def test_extracted_split_has_labels_and_normalised_features(vit_tiny_gallery_npz, demo_root):
    from data.datasets import build_dataset

    gallery = build_dataset("demo", demo_root).gallery
    z = np.load(vit_tiny_gallery_npz)
    assert z["features"].shape == (len(gallery), 3 * 192) and z["features"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z["features"], axis=1), 1, atol=1e-5)
    assert list(z["names"]) == [r.name for r in gallery]
    assert list(z["pids"]) == [r.pid for r in gallery] and list(z["camids"]) == [r.camid for r in gallery]
    assert str(z["setting"]) == "nothing" and bool(z["normalized"])


@pytest.mark.slow
def test_search_finds_each_item_given_itself(gallery_npz, tmp_path):
    out = tmp_path / "matches.json"
    assert search.main(["--gallery", str(gallery_npz), "--query-npz", str(gallery_npz), "--topk", "5",
                        "--query-chunk", "17", "--gallery-chunk", "50", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [str(n) for n in np.load(gallery_npz)["names"]]
    assert len(result["queries"]) == len(names)
    for query in result["queries"]:
        first = query["matches"][0]
        assert first["index"] == query["index"] and first["name"] == query["name"] == names[query["index"]]
        assert abs(first["distance"]) < 1e-5
        assert [m["rank"] for m in query["matches"]] == [1, 2, 3, 4, 5]
        distances = [m["distance"] for m in query["matches"]]
        assert distances == sorted(distances)


@pytest.mark.slow
def test_folder_to_memory_mapped_npy_and_csv(trained_run, demo_root, gallery_npz, tmp_path):
    """A folder laid out like RGBNT201 -> memory-mapped .npy + labels (the split's features: same images, same
    cameras); searching it with the split's features finds the same images first."""
    folder = f"{demo_root}/RGBNT201/test"
    npy = tmp_path / "folder.npy"
    assert extract_features.main([*tool_opts(trained_run, demo_root, tmp_path), "--folder", folder, "--output",
                                  str(npy)]) == 0
    features = np.load(npy, mmap_mode="r")
    labels = np.load(tmp_path / "folder.labels.npz")
    reference = np.load(gallery_npz)
    assert isinstance(features, np.memmap) and features.dtype == np.float32
    assert features.shape == reference["features"].shape
    assert list(labels["names"]) == list(reference["names"])
    assert list(labels["pids"]) == list(reference["pids"]) and list(labels["camids"]) == list(reference["camids"])
    np.testing.assert_allclose(features, reference["features"], atol=1e-6, rtol=0)

    out = tmp_path / "matches.csv"
    assert search.main(["--gallery", str(npy), "--query-npz", str(gallery_npz), "--topk", "3", "--output",
                        str(out)]) == 0
    with open(out) as f:
        rows = [r for r in csv.DictReader(f) if r["rank"] == "1"]
    assert len(rows) == len(reference["names"])
    assert all(r["gallery_name"] == r["query_name"] for r in rows)


@pytest.mark.slow
def test_folder_queries_and_unparsed_names(trained_run, demo_root, gallery_npz, tmp_path):
    """--folder queries are extracted with the model; names that do not parse get pid/camid -1."""
    folder = tmp_path / "queries"
    reference = np.load(gallery_npz)
    names = [str(n) for n in reference["names"][[0, 100]]]
    assert reference["camids"][0] == 0
    for spectrum in ("RGB", "NI", "TI"):
        (folder / spectrum).mkdir(parents=True)
        for k, name in enumerate(names):
            shutil.copy(f"{demo_root}/RGBNT201/test/{spectrum}/{name}", folder / spectrum / f"probe{k}.jpg")
    out = tmp_path / "found.json"
    assert search.main(["--gallery", str(gallery_npz), "--folder", str(folder), "--topk", "2", "--output", str(out),
                        *tool_opts(trained_run, demo_root, tmp_path)]) == 0
    found = json.loads(out.read_text())["queries"]
    # camera 0's embedding is used for unknown cameras, so only images of camera 1 (camid 0) match themselves
    assert [q["name"] for q in found] == ["probe0.jpg", "probe1.jpg"]
    assert found[0]["matches"][0]["name"] == names[0]
    assert extract_features.main([*tool_opts(trained_run, demo_root, tmp_path), "--folder", str(folder), "--dtype",
                                  "float16"]) == 0
    z = np.load(tmp_path / "features_queries_nothing.npz")
    assert list(z["pids"]) == [-1, -1] and list(z["camids"]) == [-1, -1]
    assert z["features"].dtype == np.float16
    np.testing.assert_allclose(z["features"][0].astype(np.float32), reference["features"][0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("normalize", [True, False])
def test_topk_search_equals_a_full_sort(normalize):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(23, 16, generator=generator)
    gallery = torch.randn(101, 16, generator=generator).numpy().astype(np.float16)
    dist, index = search.topk_search(queries, gallery, 7, query_chunk=5, gallery_chunk=9, normalize=normalize)
    q, g = queries, torch.from_numpy(gallery.astype(np.float32))
    if normalize:
        q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    full = torch.cdist(q.double(), g.double()) ** 2
    expected_d, expected_i = torch.sort(full, dim=1)
    assert torch.equal(index, expected_i[:, :7])
    torch.testing.assert_close(dist.double(), expected_d[:, :7], atol=1e-4, rtol=0)
    # k larger than the gallery: every item once
    _, index = search.topk_search(queries[:2], gallery[:4], 10, gallery_chunk=3)
    assert sorted(index[0].tolist()) == [0, 1, 2, 3]


@pytest.mark.slow
def test_search_input_errors(gallery_npz, tmp_path):
    assert search.main(["--gallery", str(tmp_path / "none.npz"), "--query-npz", str(gallery_npz)]) == 1
    other = tmp_path / "other.npz"
    np.savez(other, features=np.ones((3, 5), np.float32), names=np.array(["a", "b", "c"]))
    assert search.main(["--gallery", str(gallery_npz), "--query-npz", str(other)]) == 1  # 5 vs the gallery's dimensions
    assert search.main(["--gallery", str(gallery_npz)]) == 1  # no queries


def test_npy_gallery_with_a_text_names_file(tmp_path):
    generator = np.random.default_rng(0)
    gallery = generator.standard_normal((40, 8)).astype(np.float32)
    np.save(tmp_path / "g.npy", gallery)
    (tmp_path / "g.txt").write_text("".join(f"item{i}\n" for i in range(40)))
    np.savez(tmp_path / "q.npz", features=gallery[[5, 31]], names=np.array(["five", "thirty-one"]))
    out = tmp_path / "m.json"
    assert search.main(["--gallery", str(tmp_path / "g.npy"), "--gallery-labels", str(tmp_path / "g.txt"),
                        "--query-npz", str(tmp_path / "q.npz"), "--topk", "1", "--output", str(out)]) == 0
    found = json.loads(out.read_text())["queries"]
    assert [(q["name"], q["matches"][0]["name"]) for q in found] == [("five", "item5"), ("thirty-one", "item31")]
    (tmp_path / "g.txt").write_text("only one name\n")
    assert search.main(["--gallery", str(tmp_path / "g.npy"), "--gallery-labels", str(tmp_path / "g.txt"),
                        "--query-npz", str(tmp_path / "q.npz"), "--output", str(out)]) == 1
