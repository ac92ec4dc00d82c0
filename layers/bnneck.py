"""BNNeck head (Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-identification", 2019)."""

from __future__ import annotations

import torch
from torch import nn


class BNNeckHead(nn.Module):
    """feature -> BatchNorm1d (bias frozen at 0 by default) -> linear classifier without bias.

    The triplet loss reads the feature before the norm, the ID loss the logits after it; the normalised feature is
    the "after" test feature. Initialisation as the original: norm weight 1, bias 0; classifier N(0, 0.001).
    ``freeze_bias`` False trains the norm's bias (EDITOR's heads; TOP-ReID and DeMo freeze it).
    """

    def __init__(self, in_dim: int, num_classes: int, freeze_bias: bool = True) -> None:
        super().__init__()
        self.bottleneck = nn.BatchNorm1d(in_dim)
        self.bottleneck.bias.requires_grad_(not freeze_bias)
        nn.init.ones_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)
        self.classifier = nn.Linear(in_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def neck(self, feat: torch.Tensor) -> torch.Tensor:
        """The feature after the BNNeck."""
        return self.bottleneck(feat)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, feature before the BNNeck)."""
        return self.classifier(self.bottleneck(feat)), feat
