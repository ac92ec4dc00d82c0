"""CLIP image towers as backbones: timm builds them, weights in the OpenAI / open_clip / timm layouts load to the same
backbone, OpenAI's TorchScript file is refused by training and converted by tools/convert_clip.py."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import QuickGELU
from torch import nn

from configs import load_config
from modeling.backbones import ViTBackbone, build_backbone, is_known_backbone
from modeling.pretrained import load_imagenet_weights
from tools import convert_clip
from utils.checkpoint import CheckpointError

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}  # a tiny tower of the ViT-B/16 CLIP architecture
SIZE = (64, 32)  # 4x2 patch grid
PROJ = 24  # width of CLIP's projection


def tiny_timm_clip(name: str = "vit_base_patch16_clip_224") -> dict[str, torch.Tensor]:
    """A random tiny CLIP tower in timm's layout at 224 (14x14 grid), with its projection as ``head``."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=224, num_classes=PROJ, **TINY)
    with torch.no_grad():
        for p in model.parameters():  # LayerNorms start at 1/0: make every tensor distinct
            p.add_(torch.randn_like(p) * 0.1)
    return model.state_dict()


def to_openai(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm names -> OpenAI CLIP names (``visual.*``), the inverse of timm's conversion, written out here; plus a few
    text-tower tensors that a backbone must leave out."""
    block = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv.weight": "attn.in_proj_weight",
             "attn.qkv.bias": "attn.in_proj_bias", "attn.proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
             "mlp.fc2": "mlp.c_proj"}
    out = {}
    for key, value in state.items():
        if key == "cls_token":
            out["visual.class_embedding"] = value.reshape(-1)
        elif key == "pos_embed":
            out["visual.positional_embedding"] = value[0]
        elif key == "patch_embed.proj.weight":
            out["visual.conv1.weight"] = value
        elif key.startswith("norm_pre."):
            out["visual.ln_pre." + key.split(".", 1)[1]] = value
        elif key.startswith("norm."):
            out["visual.ln_post." + key.split(".", 1)[1]] = value
        elif key == "head.weight":
            out["visual.proj"] = value.t().contiguous()
        elif key == "head.bias":
            continue  # CLIP's projection has no bias
        elif key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            for old, new in block.items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            else:
                raise AssertionError(f"unmapped block key {key}")
            out[f"visual.transformer.resblocks.{index}.{rest}"] = value
        else:
            raise AssertionError(f"unmapped key {key}")
    out["positional_embedding"] = torch.randn(7, 32)  # the text tower's
    out["transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(96, 32)
    out["text_projection"] = torch.randn(32, PROJ)
    out["logit_scale"] = torch.tensor(4.6)
    return out


def tiny_backbone(name: str = "vit_base_patch16_clip_224") -> ViTBackbone:
    return ViTBackbone(name, SIZE, num_cameras=3, **TINY)


def assert_same_backbones(a: nn.Module, b: nn.Module, skip: tuple[str, ...] = ("sie_embed",)) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if key not in skip:
            assert torch.equal(sa[key], sb[key]), key


def test_clip_names_build_with_norm_pre_and_token_norm():
    assert is_known_backbone("vit_base_patch16_clip_224") and is_known_backbone("vit_base_patch16_clip_quickgelu_224")
    backbone = build_backbone("vit_base_patch16_clip_quickgelu_224", (256, 128), num_cameras=4)
    assert backbone.grid_size == (16, 8) and backbone.embed_dim == 768 and backbone.default_heads == 12
    assert isinstance(backbone.norm_pre, nn.LayerNorm) and isinstance(backbone.norm, nn.LayerNorm)
    assert backbone.norm.eps == 1e-5 and backbone.patch_embed.proj.bias is None  # CLIP: no patch bias
    assert isinstance(backbone.blocks[0].mlp.act, QuickGELU)
    assert not any(isinstance(m, QuickGELU) for m in tiny_backbone().modules())  # the plain name uses GELU
    # norm_pre runs after the position table (+ SIE): replacing it changes the output
    backbone = tiny_backbone().eval()
    x, cams = torch.randn(2, 3, *SIZE), torch.tensor([0, 2])
    tokens = backbone(x, cams)
    assert tokens.shape == (2, 1 + 8, 64)
    with torch.no_grad():
        backbone.norm_pre.weight.mul_(2)
    assert not torch.allclose(backbone(x, cams), tokens)


@pytest.mark.parametrize("layout", ["openai_pth", "openai_safetensors", "open_clip_training", "timm"])
def test_layouts_load_to_the_same_backbone(tmp_path, caplog, layout):
    timm_state = tiny_timm_clip()
    reference = tiny_backbone()
    torch.save(timm_state, tmp_path / "timm.pth")
    load_imagenet_weights({"RGB": reference}, str(tmp_path / "timm.pth"))
    openai = to_openai(timm_state)
    if layout == "openai_pth":
        path = tmp_path / "clip.pth"
        torch.save(openai, path)
    elif layout == "openai_safetensors":
        path = tmp_path / "clip.safetensors"
        save_file(openai, str(path))
    elif layout == "open_clip_training":  # open_clip's training checkpoint: wrapped, DDP prefix
        path = tmp_path / "epoch_10.pt"
        torch.save({"epoch": 10, "state_dict": {f"module.{k}": v for k, v in openai.items()}}, path)
    else:
        path = tmp_path / "timm.safetensors"
        save_file(timm_state, str(path))
    backbone = tiny_backbone()
    with caplog.at_level(logging.INFO, logger="modeling.pretrained"):
        load_imagenet_weights({"RGB": backbone, "NI": tiny_backbone()}, str(path))
    assert_same_backbones(backbone, reference)
    got = backbone.state_dict()
    for key in ("cls_token", "patch_embed.proj.weight", "norm_pre.weight", "blocks.1.attn.qkv.weight",
                "blocks.0.mlp.fc2.bias", "norm.bias"):
        assert torch.equal(got[key], timm_state[key]), key
    assert torch.equal(got["pos_embed"][:, 0], timm_state["pos_embed"][:, 0])  # CLS row kept, grid resized
    message = caplog.records[-1].getMessage()
    assert "14x14 -> 4x2" in message and "head" in message  # the projection (head.*) is dropped and reported
    if layout != "timm":
        assert "text_projection" in message  # the text tower is left out, and said so


def _save_layout(tmp_path, layout: str) -> str:
    """A tiny CLIP tower saved in one layout; the file names say nothing true about the weights on purpose."""
    timm_state = tiny_timm_clip()
    openai = to_openai(timm_state)
    if layout == "openai_pth":  # OpenAI's state_dict, or open_clip's model.state_dict() of the OpenAI model
        path = tmp_path / "vit_base_patch16_clip_224.laion.pth"
        torch.save(openai, path)
    elif layout == "openai_wrapped":
        path = tmp_path / "weights.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in openai.items()}}, path)
    elif layout == "open_clip_training":
        path = tmp_path / "epoch_32.pt"
        torch.save({"epoch": 32, "name": "ViT-B-16", "state_dict": {f"module.{k}": v for k, v in openai.items()}},
                   path)
    elif layout == "openai_safetensors":
        path = tmp_path / "open_clip_model.safetensors"
        save_file(openai, str(path))
    elif layout == "openai_visual_only":  # the image tower's own state_dict: no ``visual.`` prefix
        path = tmp_path / "visual.pth"
        torch.save({k[len("visual."):]: v for k, v in openai.items() if k.startswith("visual.")}, path)
    elif layout == "timm_pth":
        path = tmp_path / "ViT-B-16-openai.pth"
        torch.save(timm_state, path)
    else:
        path = tmp_path / "ViT-B-16-openai.safetensors"
        save_file(timm_state, str(path))
    return str(path)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("layout", ["openai_pth", "openai_wrapped", "open_clip_training", "openai_safetensors",
                                    "openai_visual_only"])
def test_openai_layout_in_a_gelu_tower_warns_naming_quickgelu(tmp_path, caplog, layout):
    path = _save_layout(tmp_path, layout)
    with caplog.at_level(logging.WARNING, logger="modeling.pretrained"):
        load_imagenet_weights({"RGB": tiny_backbone()}, path)
    warnings = _warnings(caplog)
    assert len(warnings) == 1, warnings
    assert path in warnings[0] and "QuickGELU" in warnings[0] and "vit_base_patch16_clip_quickgelu_224" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeling.pretrained"):  # the tower OpenAI's weights belong in
        load_imagenet_weights({"RGB": tiny_backbone("vit_base_patch16_clip_quickgelu_224")}, path)
    assert not _warnings(caplog)


@pytest.mark.parametrize("layout", ["timm_pth", "timm_safetensors"])
def test_timm_layout_in_a_gelu_tower_does_not_warn(tmp_path, caplog, layout):
    path = _save_layout(tmp_path, layout)
    with caplog.at_level(logging.WARNING, logger="modeling.pretrained"):
        load_imagenet_weights({"RGB": tiny_backbone()}, path)
    assert not _warnings(caplog)


def _torchscript_clip(path, state: dict[str, torch.Tensor]) -> None:
    """A TorchScript archive whose state_dict holds ``state`` under the same names (as OpenAI's ViT-B-16.pt)."""

    class Node(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Node()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if part not in node._modules:
                node.add_module(part, Node())
            node = node._modules[part]
        node.register_buffer(leaf, value.clone())
    scripted = torch.jit.script(root)
    assert set(scripted.state_dict()) == set(state)
    torch.jit.save(scripted, str(path))


@pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # TorchScript is deprecated; OpenAI's file is one
def test_torchscript_is_refused_by_training_and_converted_by_the_tool(tmp_path, caplog):
    timm_state = tiny_timm_clip("vit_base_patch16_clip_quickgelu_224")
    archive = tmp_path / "ViT-B-16.pt"
    _torchscript_clip(archive, to_openai(timm_state))
    cfg = load_config(None, ["MODEL.PRETRAIN_PATH_T", str(archive), "MODEL.TRANSFORMER_TYPE",
                             "vit_base_patch16_clip_quickgelu_224"])
    with pytest.raises(CheckpointError, match="TorchScript.*tools/convert_clip.py.*MODEL.PRETRAIN_PATH_T"):
        load_imagenet_weights({"RGB": tiny_backbone()}, cfg.MODEL.PRETRAIN_PATH_T)

    out = tmp_path / "clip_vitb16.safetensors"
    with caplog.at_level(logging.INFO, logger="tools.convert_clip"):
        assert convert_clip.main(["--input", str(archive), "--output", str(out)]) == 0
    log = " ".join(r.getMessage() for r in caplog.records if r.name == "tools.convert_clip")
    assert "torch.jit.load" in log and "vit_base_patch16_clip_quickgelu_224" in log
    assert convert_clip.main(["--input", str(archive), "--output", str(out)]) == 1  # exists, no --force

    backbone, reference = tiny_backbone("vit_base_patch16_clip_quickgelu_224"), tiny_backbone()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="modeling.pretrained"):
        load_imagenet_weights({"RGB": backbone}, str(out))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    torch.save(timm_state, tmp_path / "timm.pth")
    load_imagenet_weights({"RGB": reference}, str(tmp_path / "timm.pth"))
    assert_same_backbones(backbone, reference)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modeling.pretrained"):  # QuickGELU weights into a GELU tower
        load_imagenet_weights({"RGB": tiny_backbone()}, str(out))
    assert any("QuickGELU" in r.getMessage() for r in caplog.records)


class _Payload:
    """Any class pickled into a weights file: unpickling it would run code of the file's choosing."""


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "clip.pth"
    torch.save({**to_openai(tiny_timm_clip()), "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to load.*MODEL.PRETRAIN_PATH_T"):
        load_imagenet_weights({"RGB": tiny_backbone()}, str(path))
    assert convert_clip.main(["--input", str(path), "--output", str(tmp_path / "o.safetensors")]) == 1


@pytest.mark.parametrize("dataset", ["RGBNT201", "RGBNT100", "MSVR310"])
def test_clip_configs_fine_tune_clip_as_the_field_does(dataset):
    """Adam with the new modules at 3.5e-4 and the CLIP tower at an absolute 5e-6, biases included (CLIP-ReID's and
    DeMo's recipe): under SGD a 5e-6 backbone barely moves."""
    from solver import build_optimizer

    cfg = load_config(f"configs/{dataset}/TOP-ReID-CLIP.yml", [])
    base = load_config(f"configs/{dataset}/TOP-ReID.yml", [])
    assert cfg.MODEL.TRANSFORMER_TYPE == "vit_base_patch16_clip_quickgelu_224"
    assert cfg.MODEL.PRETRAIN_PATH_T.endswith(".safetensors")
    assert cfg.DATASETS.NAMES == dataset and cfg.MODEL.DIRECT == base.MODEL.DIRECT
    model = nn.ModuleDict({"backbones": nn.Linear(4, 4), "heads": nn.Linear(4, 4)})
    lrs = {g["name"]: g["lr"] for g in build_optimizer(cfg, model).param_groups}
    assert type(build_optimizer(cfg, model)).__name__ == "Adam"
    assert lrs == pytest.approx({"backbones weights+biases": 5e-6, "heads weights": 3.5e-4, "heads biases": 7e-4})
