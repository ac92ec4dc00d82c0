"""Cross attention from a few query tokens to a token set, and the pre-norm block built on it (TPM's "rotation")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head attention of queries x [B, M, D] over tokens y [B, N, D].

    query = W_q x, key = W_k LN_y(y), value = W_v y (the value reads y WITHOUT the norm, as TOP-ReID); no bias on
    W_q, W_k, W_v; bias on the output projection.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} attention heads (MODEL.TPM_HEADS)")
        self.num_heads = num_heads
        self.norm_y = nn.LayerNorm(dim, eps=norm_eps)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, h, L, D/h]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(self.norm_y(y))), self._heads(self.v(y))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))


class CrossAttentionBlock(nn.Module):
    """q' = q + CA(LN1(q), y); q'' = q' + MLP(LN2(q')): the rotation block R(q, Y) of TOP-ReID's TPM."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = CrossAttention(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop, norm_eps=norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q = q + self.attn(self.norm1(q), y)
        return q + self.mlp(self.norm2(q))
