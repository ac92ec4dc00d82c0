"""Cross-spectral evaluation (`TEST.CROSS`): parsing and validation, refusal of models without CRM for disjoint
sides, the one-pass table against explicit per-side features, test_net's matrix and training-time evaluation."""

import json
import os
import subprocess
import sys

import pytest
import torch

from configs import ConfigError, load_config
from evaluation import evaluate_cross, evaluate_features, format_cross_matrix
from processor.inference import cross_pairs, extract_features, extraction_settings
from tests.helpers import assert_not_blank, read_png, tiny_opts
from utils.spectra import CrossPair, parse_cross

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_cross_values():
    assert [p.name for p in parse_cross("all")] == ["RGB->NI", "RGB->TI", "NI->RGB", "NI->TI", "TI->RGB", "TI->NI"]
    assert [p.name for p in parse_cross("all", ["RGB", "TI"])] == ["RGB->TI", "TI->RGB"]
    assert parse_cross("") == []
    pairs = parse_cross("NI+RGB -> TI, RGB->TI  RGB+NI->TI")
    assert [p.name for p in pairs] == ["RGB+NI->TI", "RGB->TI"]  # sides in spectrum order, each pair once
    assert (pairs[0].query_setting, pairs[0].gallery_setting) == ("t", "rn")
    assert parse_cross(["RGB->TI", "TI->RGB"]) == parse_cross("[RGB->TI, 'TI->RGB']")
    assert extraction_settings(["nothing"], parse_cross("all")) == ["nothing", "nt", "rt", "rn"]
    assert extraction_settings(["nt", "r"], parse_cross("RGB->NI")) == ["nt", "r", "rt"]


@pytest.mark.parametrize("value, named", [("RGB->XX", "XX"), ("RGB", "'RGB'"), ("->TI", "'->TI'"),
                                          ("RGB->TI->NI", "RGB->TI->NI"), ("RGB+RGB->TI", "RGB+RGB->TI"),
                                          ("al", "'al'"), ("rgb->ti", "rgb")])
def test_invalid_cross_is_a_config_error_naming_the_key(value, named):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["TEST.CROSS", value])
    assert "TEST.CROSS" in str(err.value) and named in str(err.value)


def test_cross_spectra_must_be_the_models(tmp_path):
    with pytest.raises(ConfigError, match=r"TEST.CROSS.*MODEL.SPECTRA.*'RGB->TI'"):
        load_config(None, ["TEST.CROSS", "RGB->TI", "MODEL.SPECTRA", "['RGB','NI']"])
    assert load_config(None, ["TEST.CROSS", "RGB->NI", "MODEL.SPECTRA", "['RGB','NI']"]).TEST.CROSS == "RGB->NI"
    config = tmp_path / "cross.yml"
    config.write_text("TEST:\n  CROSS: ['RGB->TI', 'RGB+NI->TI']\n")
    assert parse_cross(load_config(str(config)).TEST.CROSS) == parse_cross("RGB->TI RGB+NI->TI")


@pytest.mark.parametrize("model_opts", [["MODEL.RE", "False"], ["MODEL.BASE", "True"]])
def test_model_without_crm_refused_for_disjoint_sides_only(model_opts):
    with pytest.raises(ConfigError, match=r"TEST.CROSS.*RGB->NI has disjoint sides.*no CRM.*share no non-zero"):
        load_config(None, ["TEST.CROSS", "all", *model_opts])
    cfg = load_config(None, ["TEST.CROSS", "RGB+NI->NI, NI->RGB+NI", *model_opts])
    assert [p.name for p in parse_cross(cfg.TEST.CROSS)] == ["RGB+NI->NI", "NI->RGB+NI"]


def _toy_model(*opts):
    from modeling import build_model
    from tests.helpers import register_toy_backbone

    cfg = load_config(None, ["MODEL.TRANSFORMER_TYPE", register_toy_backbone(), "MODEL.PRETRAIN_CHOICE", "none",
                             "INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]", *opts])
    torch.manual_seed(0)
    return build_model(cfg, num_classes=4, camera_num=2).eval()


def test_model_level_refusal_and_overlapping_sides():
    """The Predictor/EvalHook path checks the model itself (a caller may skip the config)."""
    no_crm = _toy_model("MODEL.RE", "False")
    with pytest.raises(ValueError, match=r"RGB->TI has disjoint sides and the model has no CRM"):
        cross_pairs("RGB->TI", no_crm)
    pairs = cross_pairs("RGB+NI->NI", no_crm)
    batch = {"images": {s: torch.randn(6, 3, 32, 16, generator=torch.Generator().manual_seed(i))
                        for i, s in enumerate(("RGB", "NI", "TI"))},
             "camid": torch.tensor([0, 1, 0, 1, 0, 1]), "pid": torch.tensor([0, 1, 2, 0, 1, 2]),
             "sceneid": torch.full((6,), -1), "name": [str(i) for i in range(6)]}
    extracted = extract_features(no_crm, [batch], torch.device("cpu"), extraction_settings([], pairs))
    assert list(extracted.feats) == ["t", "rt"]
    out = evaluate_cross(extracted, 3, "camid", pairs)
    assert set(out["RGB+NI->NI"]) == {"mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"}
    with pytest.raises(ValueError, match="not among the spectra RGB, NI"):
        cross_pairs("RGB->TI", _toy_model("MODEL.SPECTRA", "['RGB','NI']"))


def test_format_cross_matrix():
    pairs = parse_cross("all")
    cross = {p.name: {"mAP": 0.1 * (k + 1)} for k, p in enumerate(pairs)}
    text = format_cross_matrix(cross, pairs, {"nt": {"mAP": 0.5}})
    lines = text.splitlines()
    assert lines[1].split()[-3:] == ["RGB", "NI", "TI"]
    assert lines[2].split() == ["RGB", "50.0", "10.0", "20.0"]  # diagonal: the RGB-only setting ("nt")
    assert lines[3].split() == ["NI", "30.0", "-", "40.0"]
    assert lines[4].split() == ["TI", "50.0", "60.0", "-"]


def test_cross_table_equals_explicit_per_side_features(trained_run):
    """The one-pass cross table on a trained checkpoint equals two explicit ``features_from_tokens`` calls (query
    side available, gallery side available) scored with ``evaluate_features``."""
    import torch.nn.functional as F

    _, trainer, _ = trained_run
    model, data = trainer.model.eval(), trainer.data
    nq = data.num_query
    pairs = cross_pairs("all, RGB+NI->TI", model)
    extracted = extract_features(model, data.test_loader, torch.device("cpu"), extraction_settings(["nothing"], pairs))
    table = evaluate_cross(extracted, nq, data.dataset.junk_key, pairs)
    assert len(table) == 7

    sides = {side for p in pairs for side in (p.query, p.gallery)}
    feats: dict[tuple[str, ...], list[torch.Tensor]] = {side: [] for side in sides}
    with torch.no_grad():
        for batch in data.test_loader:
            tokens = model.backbone_tokens(batch["images"], batch["camid"])
            for side in sides:  # a fresh call per side: no shared reconstruction cache
                available = {s: tokens[s] for s in side}
                feats[side].append(model.features_from_tokens(available, set(model.spectra) - set(side)))
    groups = extracted.camids if data.dataset.junk_key == "camid" else extracted.sceneids
    for p in pairs:
        qf = F.normalize(torch.cat(feats[p.query])[:nq], dim=1)
        gf = F.normalize(torch.cat(feats[p.gallery])[nq:], dim=1)
        cmc, m_ap, m_inp = evaluate_features(qf, gf, extracted.pids[:nq], extracted.pids[nq:], groups[:nq],
                                             groups[nq:])
        expected = {"mAP": m_ap, "Rank-1": cmc[0], "Rank-5": cmc[4], "Rank-10": cmc[9], "mINP": m_inp}
        for metric, value in expected.items():
            assert table[p.name][metric] == pytest.approx(float(value), abs=1e-6), (p.name, metric)
    assert isinstance(pairs[0], CrossPair)


@pytest.mark.slow
def test_test_net_cross_all_prints_matrix_and_writes_section(vit_tiny_run, demo_root, tmp_path):
    out, _, _ = vit_tiny_run  # test_net.py runs in a subprocess, which does not know the in-process toy backbone
    opts = tiny_opts(demo_root, str(tmp_path), **{"TEST.WEIGHT": str(out / "best.pth"), "TEST.CROSS": "all"})
    proc = subprocess.run([sys.executable, "test_net.py", *opts], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["settings"]) == ["nothing"]
    assert list(results["cross"]) == ["RGB->NI", "RGB->TI", "NI->RGB", "NI->TI", "TI->RGB", "TI->NI"]
    for metrics in results["cross"].values():
        assert set(metrics) == {"mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    log = proc.stdout + proc.stderr
    header = next(line for line in log.splitlines() if line.startswith("query \\ gallery"))
    assert header.split()[-3:] == ["RGB", "NI", "TI"]
    rows = [line.split() for line in log.splitlines() if line.split()[:1] in (["RGB"], ["NI"], ["TI"])
            and len(line.split()) == 4]
    assert [r[0] for r in rows] == ["RGB", "NI", "TI"]
    for k, row in enumerate(rows):
        assert row[1 + k] == "-"  # diagonal: no single-spectrum setting evaluated with TEST.MISS nothing
        ordered = [p for p in results["cross"] if p.startswith(row[0] + "->")]
        assert [float(v) for j, v in enumerate(row[1:]) if j != k] == \
            [round(100 * results["cross"][p]["mAP"], 1) for p in ordered]


@pytest.mark.slow
def test_training_evaluation_includes_cross(demo_root, tmp_path):
    from processor.trainer import Trainer
    from tests.helpers import register_toy_backbone

    cfg = load_config(None, tiny_opts(demo_root, str(tmp_path), **{
        "MODEL.TRANSFORMER_TYPE": register_toy_backbone(), "TEST.MISS": "all", "TEST.CROSS": "RGB->TI, NI+TI->RGB"}))
    trainer = Trainer(cfg)
    results = trainer.train()
    assert list(results) == ["nothing", "r", "n", "t", "rn", "rt", "nt"]  # best.pth still picked on "nothing"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["cross"]) == ["RGB->TI", "NI+TI->RGB"] == list(trainer.cross_results)
    assert saved["cross"] == trainer.cross_results  # JSON keeps floats exactly
    assert trainer.best["mAP"] == results["nothing"]["mAP"]


def test_plot_results_draws_the_cross_heat_map(tmp_path):
    from tools import plot_results

    cross = {p.name: {"mAP": 0.1 * (k + 1), "Rank-1": 0.5} for k, p in enumerate(parse_cross("all"))}
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"settings": {"nothing": {"mAP": 0.9, "Rank-1": 0.9},
                                             "nt": {"mAP": 0.7, "Rank-1": 0.7}}, "cross": cross}))
    rows, cols, values = plot_results.cross_matrix(cross, {"nt": {"mAP": 0.7}})
    assert rows == cols == ["RGB", "NI", "TI"]
    assert values[0].tolist() == pytest.approx([70.0, 10.0, 20.0]) and values[2, 1] == pytest.approx(60.0)
    assert values[1, 1] != values[1, 1]  # NaN: the NI-only setting is not in the file
    assert plot_results.main(["--results", str(path), "--labels", "demo", "--out", str(tmp_path / "plots")]) == 0
    image = read_png(tmp_path / "plots" / "cross_demo.png")
    assert image.shape == (500, 600, 3)
    assert_not_blank(image)
    assert (tmp_path / "plots" / "results_bars.png").exists()
