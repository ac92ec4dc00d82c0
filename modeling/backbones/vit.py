"""ViT / DeiT / CLIP image-tower backbones built from timm, returning every token of the last layer.

The timm model supplies the modules (patch embedding, blocks with fused attention, norms); this wrapper adds what
re-identification needs on top: an overlapping patch embedding (stride below the patch size), the camera embedding
(SIE) added with the position table, and activation checkpointing. Parameter names are timm's, so timm ImageNet
checkpoints load by name.

CLIP image towers (timm's ``vit_*_clip_*`` names, e.g. ``vit_base_patch16_clip_224``) are the same VisionTransformer
with ``pre_norm=True``: a LayerNorm (``norm_pre``, CLIP's ``ln_pre``) after the position table and a bias-free patch
convolution; the final ``norm`` (CLIP's ``ln_post``) is applied to every token, as CLIP-ReID does before its
projection, so the token output has the same meaning as for the other ViTs. OpenAI's CLIP was trained with
QuickGELU: its weights belong in the ``*_clip_quickgelu_*`` variants (``vit_base_patch16_clip_quickgelu_224``); the
plain names use GELU (open_clip / LAION weights). The camera embedding is added to every token with the position
table, before ``norm_pre``, as for the other ViTs (CLIP-ReID adds it to the CLS token only).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import timm
import torch
from timm.layers import PatchEmbed, to_2tuple, trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from modeling.backbones.registry import register_backbone


class OverlapPatchEmbed(PatchEmbed):
    """timm's patch embedding with a convolution stride that may be smaller than the patch (overlapping patches).

    The grid is ((H - p) // s + 1, (W - p) // s + 1); with stride == patch size it equals timm's grid.
    """

    def __init__(self, *args, stride: int | Sequence[int] = 16, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stride = to_2tuple(stride)
        self.grid_size = tuple((size - p) // s + 1 for size, p, s in zip(self.img_size, self.patch_size, self.stride))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        old = self.proj
        self.proj = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=self.patch_size, stride=self.stride,
                              bias=old.bias is not None)


class ViTBackbone(nn.Module):
    """A timm ViT/DeiT/CLIP tower (``vit_*``, ``deit_*``) as a token extractor:
    ``forward(x, cam_label) -> [B, 1 + N, D]``.
    ``timm_kwargs`` go to ``timm.create_model`` (``depth``, ``embed_dim``, ... for a smaller variant).

    Tokens = [CLS, patches] + position table (+ ``sie_coe * sie_embed[camid]`` when built with more than one
    camera), then the blocks and the final norm.
    """

    default_heads = 12  # attention heads of TPM/CRM with this backbone family (as the original)

    def __init__(self, name: str, img_size: Sequence[int], stride: Sequence[int] = (16, 16), num_cameras: int = 0,
                 sie_coe: float = 3.0, drop_path: float = 0.0, drop_out: float = 0.0, attn_drop: float = 0.0,
                 grad_checkpoint: bool = False, **timm_kwargs) -> None:
        super().__init__()
        try:
            vit = timm.create_model(name, pretrained=False, num_classes=0, img_size=tuple(img_size),
                                    drop_rate=drop_out, pos_drop_rate=drop_out, proj_drop_rate=drop_out,
                                    attn_drop_rate=attn_drop, drop_path_rate=drop_path,
                                    embed_layer=partial(OverlapPatchEmbed, stride=tuple(stride)), **timm_kwargs)
        except (TypeError, RuntimeError) as err:
            raise ValueError(f"MODEL.TRANSFORMER_TYPE {name!r}: timm cannot build it as a plain ViT ({err})") from None
        if type(vit) is not VisionTransformer or vit.cls_token is None or vit.reg_token is not None \
                or vit.no_embed_class or vit.pos_embed is None:
            raise ValueError(f"MODEL.TRANSFORMER_TYPE {name!r} is not a plain ViT/DeiT with a class token and a "
                             "learned position table (distilled, register-token, pooled-only and hybrid models are "
                             "not supported as backbones)")
        if not isinstance(vit.fc_norm, nn.Identity):
            raise ValueError(f"MODEL.TRANSFORMER_TYPE {name!r} normalises only its pooled feature (fc_norm), not its "
                             "tokens; token outputs need a final norm over every token")
        self.name = name
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.pos_embed = vit.pos_embed
        self.pos_drop = vit.pos_drop
        self.norm_pre = vit.norm_pre
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.embed_dim: int = int(vit.embed_dim)
        self.grid_size: tuple[int, int] = tuple(self.patch_embed.grid_size)
        self.sie_coe = float(sie_coe)
        self.sie_embed = nn.Parameter(torch.zeros(num_cameras, 1, self.embed_dim)) if num_cameras > 1 else None
        if self.sie_embed is not None:
            trunc_normal_(self.sie_embed, std=0.02)
        self.grad_checkpoint = grad_checkpoint

    def forward(self, x: torch.Tensor, cam_label: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        if self.sie_embed is not None:
            if cam_label is None:
                raise ValueError("this backbone has a camera embedding (SIE) and needs cam_label")
            x = x + self.sie_coe * self.sie_embed[cam_label]
        x = self.norm_pre(self.pos_drop(x))
        x = run_blocks(self.blocks, x, self.grad_checkpoint and self.training)
        return self.norm(x)

    def forward_with_attention(self, x: torch.Tensor, cam_label: torch.Tensor | None = None,
                               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``forward``'s tokens and every block's attention map [B, heads, 1 + N, 1 + N] in block order: the softmax
        as the block applies it to the values (after attention dropout), for methods that select tokens by attention
        (EDITOR). See :meth:`attention_taps`."""
        taps = self.attention_taps()
        for tap in taps:
            tap.recording = True
        try:
            tokens = self(x, cam_label)
            maps = [tap.last for tap in taps]
        finally:
            for tap in taps:
                tap.recording, tap.last = False, None
        return tokens, maps

    def attention_taps(self) -> list[AttentionTap]:
        """The :class:`AttentionTap` of every block, installed on first use as the block's attention dropout. timm
        materialises the attention map only on its non-fused path, so the blocks are switched to it (the same
        function). Parameter-free: state_dicts are unchanged."""
        taps = []
        for block in self.blocks:
            attention = block.attn
            if not isinstance(attention.attn_drop, AttentionTap):
                if not hasattr(attention, "fused_attn") or not isinstance(getattr(attention, "attn_drop", None),
                                                                           nn.Module):
                    raise ValueError(f"backbone {self.name!r}: its blocks' attention does not expose timm's "
                                     "attention map")
                attention.fused_attn = False
                attention.attn_drop = AttentionTap(attention.attn_drop)
            taps.append(attention.attn_drop)
        return taps


class AttentionTap(nn.Module):
    """A block's attention dropout that keeps its output, the attention map the block applies, as ``last`` while
    ``recording`` (a recomputation under activation checkpointing does not record)."""

    def __init__(self, dropout: nn.Module) -> None:
        super().__init__()
        self.dropout = dropout
        self.recording = False
        self.last: torch.Tensor | None = None

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        out = self.dropout(attn)
        if self.recording:
            self.last = out
        return out


def is_timm_vit(name: str) -> bool:
    """timm ``vit_*`` / ``deit_*`` model names (CLIP towers ``vit_*_clip_*`` included), distilled ones excepted (a
    name lookup, nothing is built)."""
    return name.startswith(("vit_", "deit_")) and "distilled" not in name and timm.is_model(name)


@register_backbone(matches=is_timm_vit, hint="a timm ViT/DeiT/CLIP name such as vit_base_patch16_224, "
                                             "deit_small_patch16_224, vit_base_patch16_clip_quickgelu_224")
def build_vit(name: str, img_size: Sequence[int], **options) -> ViTBackbone:
    return ViTBackbone(name, img_size, **options)


def run_blocks(blocks: nn.Module, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    """Apply transformer blocks in order; with ``use_checkpoint`` each block's activations are recomputed in the
    backward pass instead of stored (less memory, about one extra forward)."""
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x
