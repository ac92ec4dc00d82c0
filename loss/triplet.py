"""Triplet loss with batch-hard mining (Hermans et al., "In Defense of the Triplet Loss", 2017).

Each anchor takes its farthest positive (itself included, as in the original code) and its closest negative in
euclidean distance. The loss is the soft margin mean(softplus(d_ap - d_an)) or, with a margin m,
mean(max(0, d_ap - d_an + m)). Distances are computed in float32 even under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from evaluation.distance import squared_euclidean


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[m, n] euclidean distances, sqrt(clamp(|x|^2 + |y|^2 - 2 x.y, 1e-12)) (the clamp keeps the gradient of the
    square root finite at zero)."""
    return squared_euclidean(x, y).clamp(min=1e-12).sqrt()


def hard_example_mining(dist: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each anchor (row): the largest distance to a same-label item, the smallest to another label, and whether
    the anchor has any item of another label. Works for any number of items per label."""
    same = labels[:, None] == labels[None, :]
    dist_ap = dist.masked_fill(~same, float("-inf")).amax(1)
    dist_an = dist.masked_fill(same, float("inf")).amin(1)
    return dist_ap, dist_an, (~same).any(1)


class TripletLoss(nn.Module):
    """Batch-hard triplet loss on a batch of features [B, D] with integer labels [B]. ``margin=None`` is the soft
    margin. Anchors without any negative in the batch contribute nothing; a batch of one label gives zero."""

    def __init__(self, margin: float | None = None, normalize_feature: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.normalize_feature = normalize_feature

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(feats.device.type, enabled=False):
            feats = feats.float()
            if self.normalize_feature:
                feats = F.normalize(feats, dim=-1)
            dist = euclidean_dist(feats, feats)
            dist_ap, dist_an, has_negative = hard_example_mining(dist, labels)
            target = torch.ones_like(dist_an)
            if self.margin is None:
                per_anchor = F.soft_margin_loss(dist_an - dist_ap, target, reduction="none")
            else:
                per_anchor = F.margin_ranking_loss(dist_an, dist_ap, target, margin=self.margin, reduction="none")
            # An anchor without negatives has d_an = inf and a zero term; it is left out of the mean. Masking
            # instead of indexing keeps the step free of host-device synchronisation.
            weight = has_negative.to(per_anchor.dtype)
            return (per_anchor * weight).sum() / weight.sum().clamp(min=1.0)

    def extra_repr(self) -> str:
        return f"margin={'soft' if self.margin is None else self.margin}, normalize_feature={self.normalize_feature}"
