"""DeMo's ablation switches (MODEL.DEMO.PIFE / HDM / ATMOE, the original's GLOBAL_LOCAL / HDM / ATM) on the demo's
tiny backbone: what each switch removes, the features and heads that remain, the refused combinations, and a
checkpoint of one variant refused by another's config. Equality with the original code's flags, which needs its
checkout, is checked by benchmarks/check_demo_ablations.py (figures in benchmarks/RESULTS.md)."""

from __future__ import annotations

import pytest
import torch

from configs import load_config
from loss import build_loss
from modeling import build_model
from modeling.checkpoint import model_from_checkpoint, model_payload
from modeling.methods import get_method
from modeling.methods.demo import SPECTRUM_SETS
from processor.trainer import Trainer
from tests.helpers import REPO, tiny_opts
from utils.checkpoint import CheckpointError
from utils.spectra import SPECTRA

DEMO = str(REPO / "configs" / "demo" / "DeMo.yml")
CLASSES, CAMERAS, BATCH = 5, 3, 4


def _cfg(pife=True, hdm=True, atmoe=True, *extra):
    return load_config(DEMO, ["MODEL.DEVICE", "cpu", "MODEL.DEMO.PIFE", str(pife), "MODEL.DEMO.HDM", str(hdm),
                              "MODEL.DEMO.ATMOE", str(atmoe), *extra])


def _model(cfg):
    torch.manual_seed(0)
    return build_model(cfg, CLASSES, CAMERAS).eval()


def _inputs(cfg):
    g = torch.Generator().manual_seed(3)
    images = {s: torch.randn(BATCH, 3, *cfg.INPUT.SIZE_TRAIN, generator=g) for s in SPECTRA}
    return images, torch.arange(BATCH) % CAMERAS, torch.tensor([0, 0, 1, 1])


@torch.no_grad()
def test_without_pife_the_spectrum_feature_is_the_backbone_token_zero():
    cfg = _cfg(pife=False)
    model = _model(cfg)
    images, cams, _ = _inputs(cfg)
    assert model.pife is None and not any(k.startswith("pife.") for k in model.state_dict())
    tokens = model.backbone_tokens(images, cams)
    fused = model.fuse(tokens)
    for s in SPECTRA:
        assert torch.equal(fused.spectra[s], tokens[s][:, 0])
    assert torch.equal(fused.ori, torch.cat([tokens[s][:, 0] for s in SPECTRA], dim=-1))


@torch.no_grad()
def test_without_atmoe_the_moe_feature_is_the_hdm_parts_concatenated():
    cfg = _cfg(atmoe=False)
    model = _model(cfg)
    images, cams, _ = _inputs(cfg)
    assert model.atmoe is None and not any(k.startswith("atmoe.") for k in model.state_dict())
    fused = model.fuse(model.backbone_tokens(images, cams))
    assert fused.gates is None
    assert torch.equal(fused.moe, fused.parts.flatten(1))
    assert fused.moe.shape == (BATCH, len(SPECTRUM_SETS) * model.dim)
    feature = model(images, cams)
    assert model.feat_dim == (len(SPECTRA) + len(SPECTRUM_SETS)) * model.dim == feature.shape[1]
    assert torch.equal(feature, torch.cat([fused.ori, fused.moe], dim=-1))


@torch.no_grad()
def test_without_hdm_only_the_ori_head_and_feature_remain_in_every_setting():
    cfg = _cfg(hdm=False, atmoe=False)
    model = _model(cfg)
    images, cams, labels = _inputs(cfg)
    assert model.hdm is None and set(model.heads) == {"ori"}
    assert model.feature == "ori" and model.feat_dim == len(SPECTRA) * model.dim
    full = model(images, cams)
    assert torch.equal(full, model.fuse(model.backbone_tokens(images, cams)).ori)
    zero_rgb = model({"NI": images["NI"], "TI": images["TI"]}, cams, missing={"RGB"})
    assert zero_rgb.shape == full.shape and not torch.equal(zero_rgb, full)
    assert torch.allclose(zero_rgb[:, model.dim:], full[:, model.dim:])  # NI and TI parts do not see RGB
    model.train()
    out = model(images, cams)
    assert set(out["heads"]) == {"ori"} and out["losses"] == {}
    assert get_method("DeMo").aux_losses(cfg) == {}
    loss, terms = build_loss(cfg, CLASSES)(out, labels)
    assert torch.isfinite(loss) and set(terms) == {"ori.id", "ori.triplet"}


def test_the_full_model_keeps_its_moe_loss_and_heads():
    cfg = _cfg()
    model = _model(cfg).train()
    images, cams, _ = _inputs(cfg)
    out = model(images, cams)
    assert set(out["heads"]) == {"moe", "ori"} and set(out["losses"]) == {"moe"}
    assert get_method("DeMo").aux_losses(cfg) == {"moe": 1.0}


@pytest.mark.parametrize(("switches", "feature", "message"), [
    ((True, False, True), "cat", r"MODEL\.DEMO\.ATMOE True needs MODEL\.DEMO\.HDM True"),
    ((True, False, False), "moe", r"MODEL\.DEMO\.FEATURE 'moe' needs MODEL\.DEMO\.HDM True"),
])
def test_combinations_without_code_are_refused_naming_the_keys(switches, feature, message):
    with pytest.raises(ValueError, match=message):
        build_model(_cfg(*switches, "MODEL.DEMO.FEATURE", feature), CLASSES, CAMERAS)


def test_a_checkpoint_of_one_variant_is_refused_by_another_variants_config(tmp_path):
    cfg = _cfg(hdm=False, atmoe=False)
    path = tmp_path / "baseline.pth"
    torch.save(model_payload(_model(cfg), cfg, CLASSES, CAMERAS), path)
    assert model_from_checkpoint(_cfg(hdm=False, atmoe=False), str(path)).model.hdm is None
    with pytest.raises(CheckpointError, match=r"MODEL\.DEMO\.HDM = False.*says True"):
        model_from_checkpoint(_cfg(), str(path))


def test_the_baseline_trains_a_step_through_the_trainer(demo_root, tmp_path):
    opts = tiny_opts(demo_root, str(tmp_path), **{"MODEL.META_ARCHITECTURE": "DeMo", "MODEL.DEMO.PIFE": "False",
                                                  "MODEL.DEMO.HDM": "False", "MODEL.DEMO.ATMOE": "False"})
    trainer = Trainer(load_config(None, opts))
    trainer.sampler_epoch()
    trainer.model.train()
    trainer.run_step(next(iter(trainer.data.train_loader)))
    assert set(trainer.step_outputs) == {"loss", "ori.id", "ori.triplet"}
    assert torch.isfinite(trainer.step_outputs["loss"])


def _manifest_keys(name):
    import json

    return list(json.loads((REPO.parent / "shared" / "reference" / "manifests" / name).read_text()))


@pytest.mark.parametrize("manifest", ["demo_clip.json", "demo_vit.json"])
def test_an_original_checkpoint_of_the_baseline_is_recognised_as_demos(manifest):
    """The original's GLOBAL_LOCAL / HDM / ATM off: only its backbone and the ori heads are in the file."""
    from modeling.methods.demo_convert import is_demo_layout
    from modeling.methods.editor_convert import is_editor_layout

    full = _manifest_keys(manifest)
    baseline = [k for k in full if not k.startswith(("generalFusion.", "rgb_reduce.", "nir_reduce.", "tir_reduce.",
                                                     "classifier_moe", "bottleneck_moe"))]
    assert len(baseline) < len(full) and any(k.startswith("BACKBONE.base.") for k in baseline)
    for keys in (full, baseline, [f"module.{k}" for k in baseline]):
        assert is_demo_layout(dict.fromkeys(keys)) and not is_editor_layout(dict.fromkeys(keys))
    for other in ("editor_vit.json", "editor_vit_al0.json", "topreid_vit_base_patch16_224.json"):
        assert not is_demo_layout(dict.fromkeys(_manifest_keys(other)))
