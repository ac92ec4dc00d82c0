"""Backbones: one per spectrum, each mapping images [B, 3, H, W] (and camera ids) to all tokens of its last layer
after the final norm, [B, 1 + N, D] with the CLS token first.

Every backbone exposes ``name``, ``embed_dim`` (D, read from the model), ``grid_size`` (patch rows, cols) and
``default_heads`` (attention heads of TPM/CRM for this family: 12 for ViT/DeiT, 8 for T2T, as the original).
Families register themselves in :mod:`modeling.backbones.registry` when their module is imported below.
"""

from modeling.backbones import t2t, vit  # noqa: F401  (registers the families)
from modeling.backbones.registry import (
    backbone_names_hint,
    build_backbone,
    is_known_backbone,
    register_backbone,
    unregister_backbone,
)
from modeling.backbones.t2t import T2TViTBackbone
from modeling.backbones.vit import ViTBackbone

__all__ = ["T2TViTBackbone", "ViTBackbone", "backbone_names_hint", "build_backbone", "is_known_backbone",
           "register_backbone", "unregister_backbone"]
