"""ImageNet initialisation from local files in every accepted format, written here from freshly built models."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from configs.config import load_config
from modeling import build_model
from modeling.backbones import build_backbone
from modeling.pretrained import load_imagenet_weights, resize_pos_embed
from utils.checkpoint import CheckpointError

SIZE = (64, 32)  # 4x2 patch grid with stride 16


def expected_pos(file_pos: torch.Tensor, grid: tuple[int, int], distilled: bool = False) -> torch.Tensor:
    """What the position table must become: CLS row kept, the 14x14 grid resized bilinearly."""
    patches = file_pos[:, 2:] if distilled else file_pos[:, 1:]
    side = int(patches.shape[1] ** 0.5)
    assert side * side == patches.shape[1]
    img = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([file_pos[:, :1], img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)


def timm_state(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=224).state_dict()  # 14x14 grid, with its head


def check_loaded(backbone, file_state, distilled: bool = False) -> None:
    got = backbone.state_dict()
    torch.testing.assert_close(got["pos_embed"], expected_pos(file_state["pos_embed"], backbone.grid_size, distilled),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(got["pos_embed"][:, 0], file_state["pos_embed"][:, 0], rtol=0, atol=0)
    for key in ("cls_token", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "norm.weight"):
        torch.testing.assert_close(got[key], file_state[key], rtol=0, atol=0)


def test_plain_state_dict_vit(tmp_path, caplog):
    state = timm_state("vit_tiny_patch16_224")
    path = tmp_path / "jx_vit_tiny.pth"
    torch.save(state, path)
    backbones = {s: build_backbone("vit_tiny_patch16_224", SIZE, num_cameras=4) for s in ("RGB", "NI")}
    sie_before = backbones["RGB"].sie_embed.detach().clone()
    with caplog.at_level(logging.INFO, logger="modeling.pretrained"):
        load_imagenet_weights(backbones, str(path))
    for backbone in backbones.values():
        check_loaded(backbone, state)
        torch.testing.assert_close(backbone.patch_embed.proj.weight, state["patch_embed.proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(backbones["RGB"].sie_embed, sie_before)  # not in ImageNet files: left as initialised
    records = [r for r in caplog.records if r.name == "modeling.pretrained"]
    assert len(records) == 1
    assert "14x14 -> 4x2" in records[0].getMessage() and "head" in records[0].getMessage()


def test_overlapping_stride_keeps_the_16x16_kernel(tmp_path):
    state = timm_state("vit_tiny_patch16_224")
    torch.save(state, tmp_path / "w.pth")
    backbone = build_backbone("vit_tiny_patch16_224", SIZE, stride=(12, 12))
    assert backbone.grid_size == ((64 - 16) // 12 + 1, (32 - 16) // 12 + 1)
    load_imagenet_weights({"RGB": backbone}, str(tmp_path / "w.pth"))
    assert backbone.patch_embed.proj.stride == (12, 12)
    torch.testing.assert_close(backbone.patch_embed.proj.weight, state["patch_embed.proj.weight"], rtol=0, atol=0)
    check_loaded(backbone, state)
    assert backbone(torch.randn(1, 3, *SIZE)).shape == (1, 1 + 5 * 2, 192)


def test_deit_wrapped_in_model(tmp_path):
    state = timm_state("deit_tiny_patch16_224")
    torch.save({"model": state, "epoch": 300}, tmp_path / "deit_tiny.pth")
    backbone = build_backbone("deit_tiny_patch16_224", SIZE)
    load_imagenet_weights({"TI": backbone}, str(tmp_path / "deit_tiny.pth"))
    check_loaded(backbone, state)


def test_distilled_deit_loses_its_distillation_token(tmp_path):
    state = timm_state("deit_tiny_distilled_patch16_224")
    assert "dist_token" in state and state["pos_embed"].shape[1] == 198
    torch.save({"model": state}, tmp_path / "deit_tiny_distilled.pth")
    backbone = build_backbone("deit_tiny_patch16_224", SIZE)
    load_imagenet_weights({"RGB": backbone}, str(tmp_path / "deit_tiny_distilled.pth"))
    check_loaded(backbone, state, distilled=True)


def test_safetensors(tmp_path):
    state = timm_state("vit_tiny_patch16_224")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    backbone = build_backbone("vit_tiny_patch16_224", SIZE, num_cameras=2)
    load_imagenet_weights({"RGB": backbone}, str(tmp_path / "model.safetensors"))
    check_loaded(backbone, state)


def test_t2t_pth_tar_prefers_the_ema_weights(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("t2t_vit_t_14", (224, 224))
    ema = {k: v for k, v in source.state_dict().items() if k != "sie_embed"}
    ema["head.weight"], ema["head.bias"] = torch.randn(1000, 384), torch.randn(1000)
    plain = {k: v + 1 for k, v in ema.items()}
    torch.save({"state_dict": plain, "state_dict_ema": ema, "epoch": 310}, tmp_path / "81.7_T2T_ViTt_14.pth.tar")
    backbone = build_backbone("t2t_vit_t_14", (128, 64), num_cameras=3)
    load_imagenet_weights({"NI": backbone}, str(tmp_path / "81.7_T2T_ViTt_14.pth.tar"))
    check_loaded(backbone, ema)
    got = backbone.state_dict()
    torch.testing.assert_close(got["tokens_to_token.attention1.attn.qkv.weight"],
                               ema["tokens_to_token.attention1.attn.qkv.weight"], rtol=0, atol=0)
    assert not backbone.pos_embed.requires_grad


def original_resize(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The resize as this project wrote it before using timm's: CLS row kept, the square grid resized bilinearly in
    float32 (align_corners False, no antialiasing), the table itself when the grid already fits."""
    side = int(round((pos.shape[1] - 1) ** 0.5))
    if (side, side) == grid:
        return pos
    img = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=grid, mode="bilinear", align_corners=False, antialias=False)
    return torch.cat([pos[:, :1], img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("side,dim,grid", [
    (14, 192, (4, 2)),  # down, non-square
    (14, 64, (16, 8)),  # up in one direction, down in the other
    (14, 48, (21, 10)),  # up, non-square
    (24, 32, (8, 4)),
    (4, 8, (2, 8)),  # the same number of patches, another shape
    (14, 16, (14, 14)),  # unchanged
])
def test_resize_pos_embed_is_bit_identical_to_the_original(side, dim, grid, dtype):
    pos = torch.randn(1, 1 + side * side, dim, generator=torch.Generator().manual_seed(side * dim)).to(dtype)
    got = resize_pos_embed(pos, grid)
    assert got.shape == (1, 1 + grid[0] * grid[1], dim) and got.dtype == dtype
    assert torch.equal(got, original_resize(pos, grid))
    if (side, side) == grid:
        assert got is pos


def test_resize_pos_embed_of_a_non_square_grid_raises():
    with pytest.raises(CheckpointError, match=r"w\.pth \(MODEL\.PRETRAIN_PATH_T\): position table of 8 patches is "
                                              "not a square grid"):
        resize_pos_embed(torch.zeros(1, 9, 4), (4, 2), "w.pth")


def test_missing_file_names_path_and_key(tmp_path):
    path = tmp_path / "nowhere" / "vitb_16_224_21k.pth"
    backbone = build_backbone("vit_tiny_patch16_224", SIZE)
    with pytest.raises(CheckpointError, match="MODEL.PRETRAIN_PATH_T") as err:
        load_imagenet_weights({"RGB": backbone}, str(path))
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="MODEL.PRETRAIN_PATH_T"):
        load_imagenet_weights({"RGB": backbone}, "")
    cfg = load_config(None, ["MODEL.TRANSFORMER_TYPE", "vit_tiny_patch16_224", "INPUT.SIZE_TRAIN", "[64,32]",
                             "MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH_T", str(path)])
    with pytest.raises(CheckpointError, match="MODEL.PRETRAIN_PATH_T"):
        build_model(cfg, 10, 2)


def test_file_missing_a_backbone_weight_raises(tmp_path):
    state = timm_state("vit_tiny_patch16_224")
    del state["blocks.3.attn.qkv.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.3\.attn\.qkv\.weight"):
        load_imagenet_weights({"RGB": build_backbone("vit_tiny_patch16_224", SIZE)}, str(tmp_path / "broken.pth"))


def test_file_of_another_width_raises(tmp_path):
    torch.save(timm_state("deit_tiny_patch16_224"), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_imagenet_weights({"RGB": build_backbone("deit_small_patch16_224", SIZE)}, str(tmp_path / "tiny.pth"))


def test_build_model_initialises_every_backbone_from_the_file(tmp_path):
    state = timm_state("vit_tiny_patch16_224")
    torch.save(state, tmp_path / "w.pth")
    cfg = load_config(None, ["MODEL.TRANSFORMER_TYPE", "vit_tiny_patch16_224", "INPUT.SIZE_TRAIN", "[64,32]",
                             "MODEL.PRETRAIN_CHOICE", "imagenet", "MODEL.PRETRAIN_PATH_T", str(tmp_path / "w.pth")])
    model = build_model(cfg, 10, 2)
    for backbone in model.backbones.values():
        check_loaded(backbone, state)
