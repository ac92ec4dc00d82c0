"""T2T-ViT-t backbones (Tokens-to-Token ViT with transformer token layers; Yuan et al., ICCV 2021), which timm
does not provide.

The stem unfolds overlapping windows (7/4/2, then 3/2/1 twice) with a single-head "token transformer" after each of
the first two unfolds, then projects to the model width. Unlike the original, the grid between unfolds is taken from
the real input size, so any input size divisible by 16 works (the original reshapes to a square grid). The main
blocks are timm's ``Block`` (no qkv bias, MLP ratio 3, LayerNorm eps 1e-5); their key names match the original.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from modeling.backbones.registry import register_backbone
from modeling.backbones.vit import run_blocks

T2T_CONFIGS: dict[str, dict[str, int]] = {
    "t2t_vit_t_14": {"embed_dim": 384, "depth": 14, "num_heads": 6},
    "t2t_vit_t_24": {"embed_dim": 512, "depth": 24, "num_heads": 8},
}
_UNFOLDS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))  # (kernel, stride, padding) of the three soft splits


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed sine/cosine position table of "Attention is all you need": [1, num_positions, dim]."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    index = torch.arange(dim)
    angle = position / torch.pow(10000.0, (2 * (index // 2)).double() / dim)
    table = torch.where(index % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()[None]


def _unfold_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def t2t_grid(img_size: Sequence[int]) -> tuple[int, int]:
    """Token grid (rows, cols) after the three unfolds: (H / 16, W / 16) for sizes divisible by 16."""
    h, w = img_size
    for kernel, stride, padding in _UNFOLDS:
        h, w = _unfold_size(h, kernel, stride, padding), _unfold_size(w, kernel, stride, padding)
    return h, w


class TokenAttention(nn.Module):
    """Single-head attention from width ``dim`` to width ``out_dim``. As in T2T, the scale uses the input width
    (``dim ** -0.5``) and the residual adds the output to V, since input and output widths differ."""

    def __init__(self, dim: int, out_dim: int, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.scale = dim ** -0.5
        self.qkv = nn.Linear(dim, out_dim * 3, bias=False)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(out_dim, out_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                             scale=self.scale)
        return v + self.proj_drop(self.proj(out))


class TokenTransformer(nn.Module):
    """Token transformer layer of the T2T stem: x = attn(norm1(x)) (residual on V); x = x + mlp(norm2(x))."""

    def __init__(self, dim: int, out_dim: int, mlp_ratio: float = 1.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(in_features=out_dim, hidden_features=int(out_dim * mlp_ratio), out_features=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokensToToken(nn.Module):
    """The T2T stem: image [B, 3, H, W] -> tokens [B, (H/16)(W/16), embed_dim]."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 512, token_dim: int = 64) -> None:
        super().__init__()
        (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = _UNFOLDS
        self.soft_split0 = nn.Unfold(kernel_size=k0, stride=s0, padding=p0)
        self.soft_split1 = nn.Unfold(kernel_size=k1, stride=s1, padding=p1)
        self.soft_split2 = nn.Unfold(kernel_size=k2, stride=s2, padding=p2)
        self.attention1 = TokenTransformer(in_chans * k0 * k0, token_dim)
        self.attention2 = TokenTransformer(token_dim * k1 * k1, token_dim)
        self.project = nn.Linear(token_dim * k2 * k2, embed_dim)

    @staticmethod
    def _to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        (k0, s0, p0), (k1, s1, p1), _ = _UNFOLDS
        h, w = _unfold_size(h, k0, s0, p0), _unfold_size(w, k0, s0, p0)
        x = self.attention1(self.soft_split0(x).transpose(1, 2))
        x = self.soft_split1(self._to_map(x, h, w)).transpose(1, 2)
        h, w = _unfold_size(h, k1, s1, p1), _unfold_size(w, k1, s1, p1)
        x = self.attention2(x)
        x = self.soft_split2(self._to_map(x, h, w)).transpose(1, 2)
        return self.project(x)


class T2TViTBackbone(nn.Module):
    """T2T-ViT-t as a token extractor: ``forward(x, cam_label) -> [B, 1 + N, D]``.

    Tokens = [CLS, stem tokens] + fixed sinusoidal table (a parameter without gradient, so checkpoints carry it)
    (+ ``sie_coe * sie_embed[camid]`` whenever built with cameras, as the original T2T), blocks, final norm.
    """

    default_heads = 8  # attention heads of TPM/CRM with this backbone family (as the original)

    def __init__(self, name: str, img_size: Sequence[int], num_cameras: int = 0, sie_coe: float = 3.0,
                 drop_path: float = 0.0, drop_out: float = 0.0, attn_drop: float = 0.0,
                 grad_checkpoint: bool = False) -> None:
        super().__init__()
        if name not in T2T_CONFIGS:
            raise ValueError(f"unknown T2T backbone {name!r}; known: {', '.join(T2T_CONFIGS)}")
        if any(s % 16 for s in img_size):
            raise ValueError(f"T2T-ViT needs an input size divisible by 16; got {list(img_size)} (INPUT.SIZE_TRAIN)")
        spec = T2T_CONFIGS[name]
        dim, depth, heads = spec["embed_dim"], spec["depth"], spec["num_heads"]
        self.name = name
        self.embed_dim = dim
        self.grid_size = t2t_grid(img_size)
        self.tokens_to_token = TokensToToken(embed_dim=dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(sinusoid_table(num_patches + 1, dim), requires_grad=False)
        self.sie_coe = float(sie_coe)
        self.sie_embed = nn.Parameter(torch.zeros(num_cameras, 1, dim)) if num_cameras > 0 else None
        self.pos_drop = nn.Dropout(drop_out)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth, linear in depth
        norm = nn.LayerNorm  # eps 1e-5, as the original
        # The main blocks use head_dim ** -0.5 (timm's fused attention); the reference vectors of the original code
        # agree with it (not with the D ** -0.5 that the original sets when it loads ImageNet weights).
        self.blocks = nn.Sequential(*[
            Block(dim, heads, mlp_ratio=3.0, qkv_bias=False, proj_drop=drop_out, attn_drop=attn_drop,
                  drop_path=rate, norm_layer=norm) for rate in rates])
        self.norm = norm(dim)
        self.grad_checkpoint = grad_checkpoint
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.cls_token, std=0.02)
        if self.sie_embed is not None:
            trunc_normal_(self.sie_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, cam_label: torch.Tensor | None = None) -> torch.Tensor:
        x = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if x.shape[1] != self.pos_embed.shape[1]:
            raise ValueError(f"input gives {x.shape[1] - 1} tokens but the model was built for "
                             f"{self.grid_size[0]}x{self.grid_size[1]}; use the INPUT.SIZE_TRAIN it was built with")
        x = x + self.pos_embed
        if self.sie_embed is not None:
            if cam_label is None:
                raise ValueError("this backbone has a camera embedding (SIE) and needs cam_label")
            x = x + self.sie_coe * self.sie_embed[cam_label]
        x = run_blocks(self.blocks, self.pos_drop(x), self.grad_checkpoint and self.training)
        return self.norm(x)


@register_backbone(*T2T_CONFIGS, hint=", ".join(T2T_CONFIGS))
def build_t2t(name: str, img_size: Sequence[int], stride: Sequence[int] = (16, 16), **options) -> T2TViTBackbone:
    """T2T has no patch convolution, so MODEL.STRIDE_SIZE must be the stem's fixed 16."""
    if tuple(stride) != (16, 16):
        raise ValueError(f"MODEL.STRIDE_SIZE {list(stride)} does not apply to {name} (its stem has a fixed "
                         "stride of 16); use [16, 16]")
    return T2TViTBackbone(name, img_size, **options)
