"""MODEL.SHARED_BACKBONE: one backbone stored once and run once for all spectra; checkpoints record it; ImageNet
loading, grad-cam and the original-checkpoint conversion behave; it trains and evaluates every setting."""

from __future__ import annotations

import logging

import pytest
import timm
import torch

from configs import load_config
from modeling import build_model
from modeling.checkpoint import load_model_weights, model_from_checkpoint, model_payload
from tests.helpers import register_toy_backbone, tiny_opts
from utils.checkpoint import CheckpointError, save_checkpoint
from utils.spectra import MISS_SETTINGS, missing_spectra, parse_cross

SIZE = (32, 16)


def _cfg(shared: bool, *extra: str):
    return load_config(None, ["MODEL.TRANSFORMER_TYPE", register_toy_backbone(), "MODEL.PRETRAIN_CHOICE", "none",
                              "MODEL.DEVICE", "cpu", "INPUT.SIZE_TRAIN", str(list(SIZE)), "INPUT.SIZE_TEST",
                              str(list(SIZE)), "MODEL.SHARED_BACKBONE", str(shared), *extra])


def _per_spectrum_copy(shared_model):
    """A per-spectrum model holding the shared model's weights in each spectrum's backbone."""
    model = build_model(_cfg(False), 5, 3)
    state = {}
    for key, value in shared_model.state_dict().items():
        if key.startswith("backbones.shared."):
            state.update({f"backbones.{s}.{key[len('backbones.shared.'):]}": value for s in shared_model.spectra})
        else:
            state[key] = value
    model.load_state_dict(state, strict=True)
    return model


def _batch(n: int = 4):
    torch.manual_seed(1)
    return {s: torch.randn(n, 3, *SIZE) for s in ("RGB", "NI", "TI")}, torch.tensor([0, 2, 1, 2])[:n]


def test_one_backbone_stored_once_and_batched():
    torch.manual_seed(0)
    model = build_model(_cfg(True), 5, 3).eval()
    assert model.backbones.is_shared
    assert model.backbones["RGB"] is model.backbones["NI"] is model.backbones["TI"]
    assert list(model.backbones) == ["RGB", "NI", "TI"] and "NI" in model.backbones
    keys = list(model.state_dict())
    assert any(k.startswith("backbones.shared.") for k in keys)
    assert not any(k.startswith(("backbones.RGB", "backbones.NI", "backbones.TI")) for k in keys)
    per_spectrum = build_model(_cfg(False), 5, 3)
    one = sum(p.numel() for p in model.backbones["RGB"].parameters())
    assert sum(p.numel() for p in per_spectrum.parameters()) - sum(p.numel() for p in model.parameters()) == 2 * one

    images, cams = _batch()
    calls = []
    handle = model.backbones.shared.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        tokens = model.backbone_tokens(images, cams)
        assert calls == [12]  # three spectra, one pass
        for s in ("RGB", "NI", "TI"):  # the same as running each spectrum alone
            torch.testing.assert_close(tokens[s], model.backbones[s](images[s], cams), atol=1e-5, rtol=1e-5)
        reference = _per_spectrum_copy(model).eval()
        for setting in MISS_SETTINGS:
            missing = missing_spectra(setting)
            torch.testing.assert_close(model(images, cams, missing), reference(images, cams, missing),
                                       atol=1e-5, rtol=1e-5)
    handle.remove()


def test_checkpoint_records_the_key_and_the_other_kind_is_refused(tmp_path):
    for shared in (True, False):
        cfg = _cfg(shared)
        model = build_model(cfg, 5, 3)
        path = str(tmp_path / f"shared_{shared}.pth")
        save_checkpoint(path, model_payload(model, cfg, 5, 3))
        loaded = model_from_checkpoint(cfg, path)
        assert loaded.model.backbones.is_shared is shared
        with pytest.raises(CheckpointError, match=f"MODEL.SHARED_BACKBONE = {shared!r}"):
            model_from_checkpoint(_cfg(not shared), path)


def test_original_checkpoint_into_a_shared_model_is_an_error():
    model = build_model(_cfg(True), 5, 3)
    original = {f"{s}.base.cls_token": torch.zeros(1, 1, 96) for s in ("RGB", "NI", "TI")}
    with pytest.raises(CheckpointError, match="MODEL.SHARED_BACKBONE"):
        load_model_weights(model, original, source="TOPReID.pth")


def test_imagenet_weights_load_once_into_the_shared_backbone(tmp_path, caplog):
    torch.manual_seed(0)
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, embed_dim=96, num_heads=3).state_dict()
    torch.save(state, tmp_path / "w.pth")
    with caplog.at_level(logging.INFO, logger="modeling.pretrained"):
        model = build_model(_cfg(True, "MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH_T",
                                 str(tmp_path / "w.pth")), 5, 3)
    assert torch.equal(model.backbones.shared.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    message = [r for r in caplog.records if r.name == "modeling.pretrained"][-1].getMessage()
    assert "RGB/NI/TI (one shared backbone)" in message and "14x14 -> 2x1" in message


def test_grad_cam_of_the_shared_backbone_matches_the_per_spectrum_model():
    from tools.grad_cam import grad_cam_maps

    torch.manual_seed(0)
    model = build_model(_cfg(True), 5, 3).eval()
    reference = _per_spectrum_copy(model).eval()
    images, cams = _batch(2)
    directions = torch.nn.functional.normalize(torch.randn(2, model.feat_dim), dim=1)
    for missing in (frozenset(), frozenset({"NI"})):
        available = {s: x for s, x in images.items() if s not in missing}
        got = grad_cam_maps(model, available, cams, missing, directions)
        want = grad_cam_maps(reference, available, cams, missing, directions)
        assert list(got) == list(available)
        for s in available:
            assert got[s].shape == (2, *SIZE)
            assert abs(got[s] - want[s]).max() < 1e-3, s


@pytest.mark.slow
def test_shared_backbone_trains_and_evaluates_every_setting(demo_root, tmp_path):
    from processor.inference import extract_features
    from processor.trainer import Trainer

    cfg = load_config(None, tiny_opts(demo_root, str(tmp_path), **{
        "MODEL.TRANSFORMER_TYPE": register_toy_backbone(), "MODEL.SHARED_BACKBONE": "True",
        "SOLVER.BACKBONE_LR_FACTOR": "0.5", "TEST.MISS": "all", "TEST.CROSS": "all"}))
    trainer = Trainer(cfg)
    results = trainer.train()
    assert trainer.model.backbones.is_shared
    assert list(results) == list(MISS_SETTINGS)  # the seven settings and the six cross pairs, in one pass
    assert sorted(trainer.cross_results) == sorted(p.name for p in parse_cross("all"))
    assert all(0.0 <= m["mAP"] <= 1.0 for m in trainer.cross_results.values())
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.history)
    assert 0.0 <= results["nothing"]["mAP"] <= 1.0
    extracted = extract_features(trainer.model, trainer.data.test_loader, torch.device("cpu"), list(MISS_SETTINGS))
    assert list(extracted.feats) == list(MISS_SETTINGS)
    n = len(extracted.names)
    for setting, feats in extracted.feats.items():
        assert feats.shape == (n, 3 * 96) and torch.isfinite(feats).all(), setting
    assert not torch.equal(extracted.feats["nothing"], extracted.feats["r"])
    saved = torch.load(tmp_path / "last.pth", weights_only=True)
    assert saved["arch"]["MODEL.SHARED_BACKBONE"] is True
    assert any(k.startswith("backbones.shared.") for k in saved["model"])


@pytest.mark.parametrize("setting", ["nothing", "rt"])
def test_onnx_export_of_the_shared_backbone_runs_any_batch(tmp_path, setting):
    """The exported graph splits the one batched backbone forward at the batch size it is given (traced at 2, run
    at 4), and gives PyTorch's features (onnxruntime, CPU)."""
    from tools.export_onnx import FeatureExtractor, export, onnx_features

    torch.manual_seed(0)
    model = build_model(_cfg(True), 5, 3).eval()
    missing = missing_spectra(setting)
    spectra = [s for s in model.spectra if s not in missing]
    extractor = FeatureExtractor(model, spectra, missing).eval()
    images, cams = _batch(4)
    path = str(tmp_path / f"shared_{setting}.onnx")
    export(extractor, [images[s][:2] for s in spectra] + [cams[:2]], path, opset=17)
    with torch.no_grad():
        expected = extractor(*[images[s] for s in spectra], cams).numpy()
    got, names = onnx_features(path, {**{s: images[s].numpy() for s in spectra}, "camids": cams.numpy()})
    assert names == [*spectra, "camids"]
    assert got.shape == expected.shape and abs(got - expected).max() < 1e-4
