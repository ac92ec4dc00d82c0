"""Every ablation switch builds a working model: one CPU train step gives every trainable parameter it uses a
non-zero, finite gradient, and the heads are the ones the configuration asks for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from configs.config import load_config
from modeling import TOPReID, build_model
from modeling.backbones import backbone_names_hint, build_backbone, is_known_backbone

NUM_CLASSES = 4
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
CAMS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def tiny_cfg(**opts: str):
    base = {"MODEL.TRANSFORMER_TYPE": "vit_tiny_patch16_224", "MODEL.PRETRAIN_CHOICE": "none",
            "INPUT.SIZE_TRAIN": "[64,32]", "MODEL.DROP_PATH": "0.1"}
    base.update(opts)
    return load_config(None, [x for kv in base.items() for x in kv])


def loss_of(out: dict) -> torch.Tensor:
    """ID (cross entropy) + batch-hard soft-margin triplet per head, plus the auxiliary losses."""
    total = sum(out["losses"].values(), torch.zeros(()))
    for logits, feat in out["heads"].values():
        dist = torch.cdist(feat, feat)
        same = LABELS[:, None] == LABELS[None, :]
        d_ap = dist.masked_fill(~same, 0).amax(1)
        d_an = dist.masked_fill(same, float("inf")).amin(1)
        total = total + F.cross_entropy(logits, LABELS, label_smoothing=0.1) + F.softplus(d_ap - d_an).mean()
    return total


def train_step(model: TOPReID, size: tuple[int, int]) -> dict:
    torch.manual_seed(0)
    images = {s: torch.randn(len(LABELS), 3, *size) for s in model.spectra}
    model.train()
    out = model(images, CAMS)
    loss_of(out).backward()
    return out


def assert_all_gradients(model: TOPReID) -> None:
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    no_grad = [n for n, p in trainable.items() if p.grad is None]
    nonfinite = [n for n, p in trainable.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
    zero = [n for n, p in trainable.items() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not no_grad and not nonfinite and not zero, (no_grad, nonfinite, zero)


@pytest.mark.parametrize("opts, heads, parts", [
    ({}, ["tpm", "concat"], {"tpm", "crm"}),
    ({"MODEL.DIRECT": "False"}, ["tpm", "RGB", "NI", "TI"], {"tpm", "crm"}),
    ({"MODEL.RE": "False"}, ["tpm", "concat"], {"tpm"}),
    ({"MODEL.BASE": "True"}, ["concat"], set()),
    ({"MODEL.BASE": "True", "MODEL.DIRECT": "False"}, ["RGB", "NI", "TI"], set()),
    ({"MODEL.BASE": "True", "MODEL.SPECTRA": "['TI']"}, ["concat"], set()),
    ({"MODEL.SPECTRA": "['RGB','TI']", "MODEL.DIRECT": "False"}, ["tpm", "RGB", "TI"], {"tpm", "crm"}),
    ({"MODEL.SPECTRA": "['NI','RGB']", "MODEL.RE_LAYER": "2"}, ["tpm", "concat"], {"tpm", "crm"}),
    ({"MODEL.SIE_CAMERA": "False", "MODEL.STRIDE_SIZE": "[12,12]", "MODEL.TPM_HEADS": "4"}, ["tpm", "concat"],
     {"tpm", "crm"}),
])
def test_switch_trains_every_parameter(opts, heads, parts):
    cfg = tiny_cfg(**opts)
    model = build_model(cfg, NUM_CLASSES, camera_num=3)
    assert model.spectra == tuple(cfg.MODEL.SPECTRA)
    assert (model.tpm is not None, model.crm is not None) == ("tpm" in parts, "crm" in parts)
    out = train_step(model, (64, 32))
    assert list(out["heads"]) == heads
    assert list(out["losses"]) == (["crm"] if "crm" in parts else [])
    for name, (logits, feat) in out["heads"].items():
        assert logits.shape == (len(LABELS), NUM_CLASSES)
        assert feat.shape == (len(LABELS), model.feat_dim if name in ("tpm", "concat") else model.dim)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert_all_gradients(model)
    model.eval()
    with torch.no_grad():
        feat = model({s: torch.randn(2, 3, 64, 32) for s in model.spectra}, CAMS[:2])
    assert feat.shape == (2, model.feat_dim) == (2, len(model.spectra) * 192)


def test_camera_embedding_only_with_sie_and_several_cameras():
    assert build_model(tiny_cfg(), NUM_CLASSES, 3).backbones["RGB"].sie_embed.shape == (3, 1, 192)
    assert build_model(tiny_cfg(), NUM_CLASSES, 1).backbones["RGB"].sie_embed is None
    assert build_model(tiny_cfg(**{"MODEL.SIE_CAMERA": "False"}), NUM_CLASSES, 3).backbones["RGB"].sie_embed is None
    # T2T, as the original, keeps it with a single camera.
    assert build_backbone("t2t_vit_t_14", (64, 32), num_cameras=1).sie_embed.shape == (1, 1, 384)
    assert build_backbone("t2t_vit_t_14", (64, 32), num_cameras=0).sie_embed is None


@pytest.mark.parametrize("size", [(128, 64), (96, 64)])
def test_t2t_trains_at_small_and_non_square_sizes(size):
    cfg = tiny_cfg(**{"MODEL.TRANSFORMER_TYPE": "t2t_vit_t_14", "INPUT.SIZE_TRAIN": str(list(size)).replace(" ", ""),
                      "MODEL.SPECTRA": "['RGB','NI']"})
    model = build_model(cfg, NUM_CLASSES, camera_num=3)
    assert model.backbones["RGB"].grid_size == (size[0] // 16, size[1] // 16)
    assert model.tpm.start.attn.num_heads == 8
    train_step(model, size)
    assert_all_gradients(model)


def test_t2t_tokens_follow_the_real_grid():
    """A non-square grid must keep each token's spatial position: shifting image content by 16 pixels to the right
    moves its token by one column of the (H/16, W/16) grid."""
    backbone = build_backbone("t2t_vit_t_14", (96, 64)).eval()
    torch.manual_seed(0)
    image = torch.zeros(1, 3, 96, 64)
    image[..., 32:48, 16:32] = torch.randn(1, 3, 16, 16)
    shifted = torch.roll(image, shifts=16, dims=-1)
    with torch.no_grad():
        a = backbone.tokens_to_token(image).reshape(6, 4, -1)
        b = backbone.tokens_to_token(shifted).reshape(6, 4, -1)
    # The stem has no position information and a 16-pixel shift of content on a zero background permutes its
    # windows, so the token under the patch moves with it (only if the grid is reshaped as 6x4, not transposed).
    torch.testing.assert_close(a[2, 1], b[2, 2], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a[2, 1], a[2, 2])


def test_grad_checkpoint_gives_the_same_gradients():
    grads = []
    for flag in ("False", "True"):
        torch.manual_seed(1)
        model = build_model(tiny_cfg(**{"MODEL.GRAD_CHECKPOINT": flag, "MODEL.DROP_PATH": "0.0"}), NUM_CLASSES, 3)
        train_step(model, (64, 32))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_known_backbone_names():
    for name in ("t2t_vit_t_14", "t2t_vit_t_24", "vit_base_patch16_224", "deit_small_patch16_224",
                 "vit_tiny_patch16_224"):
        assert is_known_backbone(name)
    for name in ("resnet50", "vit_nonexistent_model", "t2t_vit_t_19", "", None):
        assert not is_known_backbone(name)
    assert "t2t_vit_t_24" in backbone_names_hint()


def test_unusable_backbone_settings_raise():
    with pytest.raises(ValueError, match="STRIDE_SIZE"):
        build_backbone("t2t_vit_t_14", (128, 64), stride=(12, 12))
    with pytest.raises(ValueError, match="divisible by 16"):
        build_backbone("t2t_vit_t_14", (120, 64))
    with pytest.raises(ValueError, match="TPM_HEADS"):
        build_model(tiny_cfg(**{"MODEL.TPM_HEADS": "5"}), NUM_CLASSES, 3)
