"""Complementary Reconstruction Module (CRM) of TOP-ReID."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn


class ComplementaryReconstruction(nn.Module):
    """For each ordered pair of spectra (s, t) a reconstructor, ``depth`` pre-norm transformer blocks (no qkv bias,
    MLP ratio 4), mapping the full token sequence of s [B, 1 + N, D] to that of t.

    Training: ``loss(tokens)`` = sum over ordered pairs of MSE(recon_{s->t}(tokens_s), tokens_t) (the targets are
    not detached). Test: ``complete(tokens, missing)`` fills each missing spectrum with the mean of its
    reconstructions from the available spectra.

    LayerNorm eps is PyTorch's 1e-5. The reference vectors of the original code cannot tell it from 1e-6 (features
    agree to 6e-6 either way: the normalised tokens have a variance far above both), so the default is kept.
    """

    def __init__(self, dim: int, num_heads: int, spectra: Sequence[str], depth: int = 1, norm_eps: float = 1e-5,
                 ) -> None:
        super().__init__()
        self.spectra = tuple(spectra)

        def reconstructor() -> nn.Sequential:
            return nn.Sequential(*[Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=False,
                                         norm_layer=partial(nn.LayerNorm, eps=norm_eps)) for _ in range(depth)])

        self.recon = nn.ModuleDict({
            s: nn.ModuleDict({t: reconstructor() for t in self.spectra if t != s}) for s in self.spectra})

    def loss(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for s in self.spectra:
            for t, net in self.recon[s].items():
                term = F.mse_loss(net(tokens[s]), tokens[t])
                total = term if total is None else total + term
        return total

    def complete(self, tokens: Mapping[str, torch.Tensor], missing: Collection[str],
                 cache: dict[tuple[str, str], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``tokens`` of the available spectra plus a reconstruction for each spectrum in ``missing``.

        ``cache`` (one dict per batch) keeps each reconstruction s -> t, so evaluating several missing settings on
        the same tokens runs each reconstructor at most once.
        """
        available = [s for s in self.spectra if s in tokens and s not in missing]
        if not available:
            raise ValueError(f"nothing to reconstruct from: every spectrum of {self.spectra} is missing")
        out = {s: tokens[s] for s in available}
        for t in self.spectra:
            if t in missing:
                recons = [self._reconstruct(tokens, s, t, cache) for s in available]
                out[t] = recons[0] if len(recons) == 1 else torch.stack(recons).mean(0)
        return out

    def _reconstruct(self, tokens: Mapping[str, torch.Tensor], s: str, t: str,
                     cache: dict[tuple[str, str], torch.Tensor] | None) -> torch.Tensor:
        if cache is None:
            return self.recon[s][t](tokens[s])
        if (s, t) not in cache:
            cache[(s, t)] = self.recon[s][t](tokens[s])
        return cache[(s, t)]
