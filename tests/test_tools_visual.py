"""t-SNE, Grad-CAM and rank-list tools on the shared 2-epoch demo checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import load_config
from tests.helpers import assert_not_blank, assert_one_error_line, read_png, run_cli, tool_opts
from tools import grad_cam, rank_list, tsne


@pytest.mark.slow
def test_tsne_png(trained_run, demo_root, tmp_path):
    out = tmp_path / "tsne.png"
    assert tsne.main([*tool_opts(trained_run, demo_root, tmp_path), "--max-ids", "6", "--size", "400",
                      "--output", str(out)]) == 0
    image = read_png(out)
    assert image.shape == (400, 400, 3)
    assert_not_blank(image)
    # points in six identity colours: the tab20 colours of the first six identities are all present
    tab20 = (np.array([(31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44),
                       (152, 223, 138)]))
    for colour in tab20:
        assert (np.abs(image.astype(int) - colour).sum(axis=2) <= 3).sum() > 20, colour


@pytest.mark.slow
def test_tsne_default_output_under_output_dir(trained_run, demo_root, tmp_path):
    assert tsne.main([*tool_opts(trained_run, demo_root, tmp_path, **{"TEST.MISS": "rn"}), "--max-ids", "3"]) == 0
    assert read_png(tmp_path / "tsne_rn.png").shape == (800, 800, 3)


@pytest.mark.slow
def test_grad_cam_maps_and_grid(trained_run, demo_root, tmp_path):
    out = tmp_path / "cam.png"
    samples = [0, 5, 130]  # identity 41 (cameras 1, 2) and another identity
    assert grad_cam.main([*tool_opts(trained_run, demo_root, tmp_path), "--samples", *map(str, samples),
                          "--tile-height", "64", "--output", str(out)]) == 0
    image = read_png(out)
    tile_w = 32  # INPUT.SIZE_TEST [64, 32] -> 64 x 32 tiles
    width = grad_cam.LEFT + 2 * 3 * (tile_w + grad_cam.GAP)
    height = grad_cam.TOP + len(samples) * (64 + grad_cam.GAP)
    assert image.shape == (height, width, 3)
    assert_not_blank(image)
    z = np.load(tmp_path / "cam.npz")
    maps = z["maps"]
    assert maps.shape == (3, 3, 64, 32) and list(z["spectra"]) == ["RGB", "NI", "TI"]
    assert list(z["samples"]) == samples
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    for k in range(len(samples)):
        for s in range(3):
            assert np.ptp(maps[k, s]) > 0.5, (k, s)  # not uniform: min-max scaled maps span most of [0, 1]
    for s in range(3):  # different samples, different maps; most of all for different identities
        assert all(np.abs(maps[a, s] - maps[b, s]).max() > 0.1 for a, b in ((0, 1), (0, 2), (1, 2)))
        assert np.abs(maps[0, s] - maps[2, s]).mean() > 0.05 and np.abs(maps[1, s] - maps[2, s]).mean() > 0.05
    # the overlay tiles are coloured by the heat map, the image tiles are not
    x_overlay = grad_cam.LEFT + (tile_w + grad_cam.GAP)  # RGB overlay column
    overlay = image[grad_cam.TOP:grad_cam.TOP + 64, x_overlay:x_overlay + tile_w].astype(int)
    assert (overlay[..., 2] - overlay[..., 0] > 60).any() and (overlay[..., 0] - overlay[..., 2] > 60).any()


@pytest.mark.slow
def test_grad_cam_missing_setting_and_reference(trained_run, demo_root, tmp_path):
    assert grad_cam.main([*tool_opts(trained_run, demo_root, tmp_path, **{"TEST.MISS": "r"}), "--samples", "1", "2",
                          "--reference", "3"]) == 0
    z = np.load(tmp_path / "grad_cam_r.npz")
    assert z["maps"].shape == (2, 2, 64, 32) and list(z["spectra"]) == ["NI", "TI"] and int(z["reference"]) == 3
    assert read_png(tmp_path / "grad_cam_r.png").shape[1] == grad_cam.LEFT + 2 * 2 * (64 + grad_cam.GAP)


def test_grad_cam_target_gradient_is_the_feature_direction():
    feature = torch.randn(6, requires_grad=True)
    direction = F.normalize(feature.detach(), dim=0)
    grad_cam.FeatureDirectionTarget(direction)(feature).backward()
    # at f the projection on f/|f| has the gradient of |f|
    torch.testing.assert_close(feature.grad, direction)


@pytest.mark.slow
def test_grad_cam_unknown_sample_is_one_error_line(vit_tiny_run, demo_root, tmp_path):
    result = run_cli("grad_cam", [*tool_opts(vit_tiny_run, demo_root, tmp_path), "--samples", "0", "4800"])
    assert_one_error_line(result, "sample index 4800", "0..479")
    assert not list(tmp_path.glob("*.png"))


def _reference_ranking(trained_run, demo_root, tmp_path):
    """Rankings computed as the evaluation does (test_net's path: data bundle, build_model, extract_features)."""
    from data.build import build_dataloader
    from modeling import build_model
    from modeling.checkpoint import load_model_weights
    from processor.inference import extract_features

    cfg = load_config(None, tool_opts(trained_run, demo_root, tmp_path))
    data = build_dataloader(cfg)
    model = build_model(cfg, data.num_classes, data.num_cameras)
    load_model_weights(model, cfg.TEST.WEIGHT)
    extracted = extract_features(model, data.test_loader, torch.device("cpu"), ["nothing"])
    feats = F.normalize(extracted.feats["nothing"], dim=1)
    nq = data.num_query
    return feats[:nq], feats[nq:], extracted.pids, extracted.camids, nq


@pytest.mark.slow
def test_rank_list_matches_evaluation_and_frames(trained_run, demo_root, tmp_path):
    qf, gf, pids, camids, nq = _reference_ranking(trained_run, demo_root, tmp_path)
    g_pids, g_cams = pids[nq:], camids[nq:]
    topk = 6

    def ranking(q: int) -> list[int]:
        dist = ((qf[q] - gf) ** 2).sum(1).numpy()
        keep = ~((g_pids == pids[q]) & (g_cams == camids[q]))  # junk: same identity and camera
        return [int(i) for i in np.argsort(dist, kind="stable") if keep[i]][:topk]

    # queries whose top-k holds true and false matches, so that both frame colours are checked
    mixed = [q for q in range(nq) if 0 < sum(g_pids[i] == pids[q] for i in ranking(q)) < topk]
    assert mixed, "no query with a true match in its top-k"
    queries = [mixed[0], mixed[-1], 7]
    out = tmp_path / "ranks.png"
    assert rank_list.main([*tool_opts(trained_run, demo_root, tmp_path), "--queries", *map(str, queries),
                           "--topk", str(topk), "--tile-height", "48", "--output", str(out)]) == 0
    image = read_png(out)
    report = json.loads((tmp_path / "ranks.json").read_text())
    layout = rank_list.Layout(3, (48, 24), topk, len(queries))
    assert image.shape == (layout.height, layout.width, 3)
    assert_not_blank(image)

    green, red, blue = (np.array(report["colours"][k]) for k in ("match", "false", "query"))
    assert [e["query"] for e in report["queries"]] == queries
    seen = set()
    for entry in report["queries"]:
        q = entry["query"]
        order = ranking(q)
        assert entry["ranked"] == order
        assert entry["match"] == [bool(g_pids[i] == pids[q]) for i in order]
        assert not any(g_pids[i] == pids[q] and g_cams[i] == camids[q] for i in entry["ranked"])
        dist = ((qf[q] - gf) ** 2).sum(1).numpy()
        np.testing.assert_allclose(entry["distances"], dist[order], atol=1e-5)
        x0, y0, x1, y1 = entry["query_box"]
        assert (image[y0 + 1, x0 + 1] == blue).all()
        for box, is_match in zip(entry["boxes"], entry["match"]):
            x0, y0, x1, y1 = box
            expected = green if is_match else red
            seen.add(bool(is_match))
            for x, y in ((x0 + 1, y0 + 1), (x0 + 1, (y0 + y1) // 2), (x1 - 2, y1 - 2), ((x0 + x1) // 2, y0 + 1)):
                assert (image[y, x] == expected).all(), (q, box, image[y, x])
    assert seen == {True, False}


@pytest.mark.slow
def test_rank_list_random_queries_are_reproducible(trained_run, demo_root, tmp_path):
    opts = tool_opts(trained_run, demo_root, tmp_path, **{"TEST.MISS": "nt"})
    for name in ("a", "b"):
        assert rank_list.main([*opts, "--num-queries", "2", "--seed", "3", "--topk", "2", "--tile-height", "32",
                               "--output", str(tmp_path / f"{name}.png")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b"))
    assert [e["query"] for e in a["queries"]] == [e["query"] for e in b["queries"]]
    assert len(a["queries"]) == 2 and a["setting"] == "nt"
