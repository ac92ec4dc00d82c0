"""Small reusable blocks: cross attention and the BNNeck head."""

from layers.bnneck import BNNeckHead
from layers.cross_attention import CrossAttention, CrossAttentionBlock

__all__ = ["BNNeckHead", "CrossAttention", "CrossAttentionBlock"]
