"""Backbone factory: one backbone per spectrum, each mapping images [B, 3, H, W] (and camera ids) to all tokens of
its last layer after the final norm, [B, 1 + N, D] with the CLS token first.

Every backbone exposes ``embed_dim`` (D, read from the model), ``grid_size`` (patch rows, cols) and
``default_heads`` (attention heads of TPM/CRM for this family: 12 for ViT/DeiT, 8 for T2T, as the original).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
from torch import nn

from modeling.backbones.t2t import T2T_CONFIGS, T2TViTBackbone
from modeling.backbones.vit import ViTBackbone

__all__ = ["T2TViTBackbone", "ViTBackbone", "backbone_names_hint", "build_backbone", "is_known_backbone"]

_TIMM_PREFIXES = ("vit_", "deit_")


def is_known_backbone(name: object) -> bool:
    """True for the T2T names and for timm ``vit_*`` / ``deit_*`` model names (a name lookup, nothing is built)."""
    if not isinstance(name, str):
        return False
    if name in T2T_CONFIGS:
        return True
    return name.startswith(_TIMM_PREFIXES) and "distilled" not in name and timm.is_model(name)


def backbone_names_hint() -> str:
    """Short text for error messages."""
    return (f"{', '.join(T2T_CONFIGS)}, or a timm ViT/DeiT name such as vit_base_patch16_224, "
            "deit_small_patch16_224, vit_tiny_patch16_224")


def build_backbone(name: str, img_size: Sequence[int], stride: Sequence[int] = (16, 16), num_cameras: int = 0,
                   sie_coe: float = 3.0, drop_path: float = 0.0, drop_out: float = 0.0, attn_drop: float = 0.0,
                   grad_checkpoint: bool = False) -> nn.Module:
    """One backbone. ``num_cameras`` is 0 when the camera embedding is off. T2T has no patch convolution, so
    ``stride`` does not apply to it."""
    if not is_known_backbone(name):
        raise ValueError(f"MODEL.TRANSFORMER_TYPE {name!r} is not a known backbone ({backbone_names_hint()})")
    if name in T2T_CONFIGS:
        if tuple(stride) != (16, 16):
            raise ValueError(f"MODEL.STRIDE_SIZE {list(stride)} does not apply to {name} (its stem has a fixed "
                             "stride of 16); use [16, 16]")
        return T2TViTBackbone(name, img_size, num_cameras=num_cameras, sie_coe=sie_coe, drop_path=drop_path,
                              drop_out=drop_out, attn_drop=attn_drop, grad_checkpoint=grad_checkpoint)
    return ViTBackbone(name, img_size, stride=stride, num_cameras=num_cameras, sie_coe=sie_coe, drop_path=drop_path,
                       drop_out=drop_out, attn_drop=attn_drop, grad_checkpoint=grad_checkpoint)
