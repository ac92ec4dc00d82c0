"""Token Permutation Module (TPM) of TOP-ReID."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from layers.cross_attention import CrossAttentionBlock


class TokenPermutation(nn.Module):
    """Three rotation stages, each ONE shared cross-attention block R used by every spectrum; each spectrum's CLS
    token attends to the patch tokens (1..N) of:

    - start: the NEXT spectrum in ``spectra`` order (RGB <- NI, NI <- TI, TI <- RGB for (RGB, NI, TI)),
    - middle: the PREVIOUS one (RGB <- TI, NI <- RGB, TI <- NI),
    - end: its own patches.

    Each stage reads the CLS tokens updated by the one before. Output: the final CLS tokens concatenated in
    ``spectra`` order, [B, len(spectra) * D].

    ``forward`` also accepts a subset of the spectra (models without CRM evaluated with missing spectra): the
    cycle then runs over the spectra present and the slot of each absent spectrum is zeros.
    """

    def __init__(self, dim: int, num_heads: int, spectra: Sequence[str], attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        self.spectra = tuple(spectra)
        self.dim = dim
        self.start = CrossAttentionBlock(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop)
        self.middle = CrossAttentionBlock(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop)
        self.end = CrossAttentionBlock(dim, num_heads, attn_drop=attn_drop, proj_drop=proj_drop)

    def forward(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        order = [s for s in self.spectra if s in tokens]
        if not order:
            raise ValueError(f"TPM got no tokens of its spectra {self.spectra}")
        n = len(order)
        # All spectra go through the shared block in one call: queries and token sets stacked along the batch.
        cls = torch.cat([tokens[s][:, :1] for s in order])
        patches = [tokens[s][:, 1:] for s in order]
        for block, shift in ((self.start, 1), (self.middle, -1), (self.end, 0)):
            cls = block(cls, torch.cat([patches[(i + shift) % n] for i in range(n)]))
        out = dict(zip(order, cls[:, 0].chunk(n)))
        zeros = cls.new_zeros(cls.shape[0] // n, self.dim)
        return torch.cat([out.get(s, zeros) for s in self.spectra], dim=-1)
