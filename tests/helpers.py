"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Sequence

from modeling.backbones import ViTBackbone, is_known_backbone, register_backbone

TOY_BACKBONE = "toy_vit"


def register_toy_backbone() -> str:
    """A 2-block ViT (width 96, 3 heads) registered as ``toy_vit``: engine and tool tests train on it in seconds."""
    if not is_known_backbone(TOY_BACKBONE):

        @register_backbone(TOY_BACKBONE, hint=f"{TOY_BACKBONE} (tests)")
        def build_toy(name: str, img_size: Sequence[int], **options) -> ViTBackbone:
            backbone = ViTBackbone("vit_tiny_patch16_224", img_size, depth=2, embed_dim=96, num_heads=3, **options)
            backbone.name = name
            return backbone

    return TOY_BACKBONE
