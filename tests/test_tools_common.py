"""Shared tool pieces: the command line, the checkpoint-derived model sizes, the one-line error exit."""

from __future__ import annotations

import pytest
import torch

from configs import load_config
from data.build import build_query_gallery
from data.datasets.base import unique_records
from modeling.checkpoint import sizes_from_state
from processor.predictor import Predictor
from tests.helpers import assert_one_error_line, run_cli, tiny_opts, tool_opts
from tools import common
from utils.checkpoint import CheckpointError


def test_config_pairs_anywhere_on_the_line():
    parser = common.tool_parser("x")
    parser.add_argument("--samples", type=int, nargs="+", default=[0])
    parser.add_argument("--flag", action="store_true")
    args = common.parse_tool_args(parser, ["TEST.MISS", "r", "--samples", "0", "5", "OUTPUT_DIR", "/tmp/o",
                                           "INPUT.SIZE_TEST", "[64,32]", "--flag", "MODEL.SIE_COE", "2.5"])
    assert args.samples == [0, 5] and args.flag
    assert args.opts == ["TEST.MISS", "r", "OUTPUT_DIR", "/tmp/o", "INPUT.SIZE_TEST", "[64,32]", "MODEL.SIE_COE",
                         "2.5"]
    cfg = common.tool_config(args)
    assert cfg.TEST.MISS == "r" and cfg.OUTPUT_DIR == "/tmp/o" and cfg.MODEL.SIE_COE == 2.5
    assert cfg.MODEL.PRETRAIN_CHOICE == "none" and list(cfg.INPUT.SIZE_TEST) == [64, 32]


def test_mistyped_key_is_a_config_error(capsys):
    parser = common.tool_parser("x")
    args = common.parse_tool_args(parser, ["TEST.MISSING", "r"])
    assert common.run_tool(lambda: common.tool_config(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "TEST.MISSING" in err


def test_single_setting_refuses_all():
    cfg = load_config(None, ["TEST.MISS", "all"])
    with pytest.raises(common.ToolError, match="one missing-spectrum setting"):
        common.single_setting(cfg)
    assert common.single_setting(load_config(None, ["TEST.MISS", "rt"])) == "rt"


def test_sizes_from_state_reads_classifier_and_camera_rows():
    state = {"heads.tpm.classifier.weight": torch.zeros(7, 12), "heads.concat.classifier.weight": torch.zeros(7, 12),
             "backbones.RGB.sie_embed": torch.zeros(5, 1, 4), "backbones.NI.sie_embed": torch.zeros(5, 1, 4)}
    assert sizes_from_state(state, "x.pth") == (7, 5)
    state.pop("backbones.RGB.sie_embed"), state.pop("backbones.NI.sie_embed")
    assert sizes_from_state(state, "x.pth") == (7, 0)
    with pytest.raises(CheckpointError, match="x.pth"):
        sizes_from_state({"layer.weight": torch.zeros(3)}, "x.pth")


@pytest.mark.slow
def test_load_model_matches_training_model(trained_run, demo_root, tmp_path):
    """The tool's model (sizes read from the checkpoint) gives the trainer's test features."""
    out, trainer, _ = trained_run
    cfg = load_config(None, tool_opts(trained_run, demo_root, tmp_path, **{"TEST.WEIGHT": str(out / "last.pth")}))
    loaded = Predictor.from_config(cfg)
    assert (loaded.num_classes, loaded.num_cameras) == (trainer.data.num_classes, trainer.data.num_cameras)
    records = build_query_gallery(cfg).records
    batch = next(iter(loaded.loader(records[:4])))
    was_training = trainer.model.training
    trainer.model.eval()
    try:
        with torch.no_grad():
            expected = trainer.model(batch["images"], batch["camid"])
    finally:
        trainer.model.train(was_training)
    got = loaded.record_features(records[:4], ["nothing"])["nothing"]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_record_features_runs_a_repeated_sample_once(trained_run, demo_root, tmp_path):
    cfg = load_config(None, tool_opts(trained_run, demo_root, tmp_path))
    loaded = Predictor.from_config(cfg)
    records = build_query_gallery(cfg).records
    twice = [records[3], records[0], records[3]]
    assert len(unique_records(twice)) == 2
    feats = loaded.record_features(twice, ["t"])["t"]
    torch.testing.assert_close(feats[0], feats[2], rtol=0, atol=0)
    assert not torch.equal(feats[0], feats[1])


@pytest.mark.slow
def test_checkpoint_of_another_architecture_is_one_error_line(trained_run, demo_root, tmp_path):
    result = run_cli("extract_features", ["--split", "query", *tool_opts(
        trained_run, demo_root, tmp_path, **{"MODEL.TRANSFORMER_TYPE": "vit_small_patch16_224"})])
    assert_one_error_line(result, "best.pth", "do not fit")
    assert not list(tmp_path.glob("*.npz"))


@pytest.mark.slow
def test_missing_weight_is_one_error_line(demo_root, tmp_path):
    result = run_cli("tsne", [*tiny_opts(demo_root, str(tmp_path)), "TEST.WEIGHT", str(tmp_path / "nothing.pth")])
    assert_one_error_line(result, "nothing.pth")
