"""The training objective: per named head an ID loss on its logits and a triplet loss on its feature (before the
BNNeck), plus the model's named auxiliary losses (the CRM reconstruction loss), each with its weight."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from yacs.config import CfgNode

from loss.triplet import TripletLoss

HeadOutputs = Mapping[str, tuple[torch.Tensor, torch.Tensor]]


class ReIDLoss(nn.Module):
    """``forward(outputs, labels) -> (total, terms)`` for the model's training output
    ``{"heads": {name: (logits, feature)}, "losses": {name: scalar}}``.

    ``terms`` holds every unweighted term, detached, by name: ``"<head>.id"``, ``"<head>.triplet"`` and each
    auxiliary loss; they stay tensors on the device (no synchronisation per step). ``total`` is
    sum over heads of (id_weight * id + triplet_weight * triplet) + sum of aux_weights[name] * aux.
    """

    def __init__(self, id_loss: nn.Module, triplet_loss: nn.Module, id_weight: float, triplet_weight: float,
                 aux_weights: Mapping[str, float], num_classes: int | None = None) -> None:
        super().__init__()
        self.id_loss = id_loss
        self.triplet_loss = triplet_loss
        self.id_weight = id_weight
        self.triplet_weight = triplet_weight
        self.aux_weights = dict(aux_weights)
        self.num_classes = num_classes

    def forward(self, outputs: Mapping[str, Mapping], labels: torch.Tensor) -> tuple[torch.Tensor,
                                                                                       dict[str, torch.Tensor]]:
        heads: HeadOutputs = outputs.get("heads", {})
        if not heads:
            raise ValueError("the model's training output has no heads: expected {'heads': {name: (logits, "
                             "feature)}, 'losses': {...}}")
        terms: dict[str, torch.Tensor] = {}
        total = None
        for name, (logits, feature) in heads.items():
            if self.num_classes is not None and logits.shape[-1] != self.num_classes:
                raise ValueError(f"head {name!r} has {logits.shape[-1]} logits per sample but the training set has "
                                 f"{self.num_classes} identities")
            id_term = self.id_loss(logits, labels)
            triplet_term = self.triplet_loss(feature, labels)
            head_total = self.id_weight * id_term + self.triplet_weight * triplet_term
            total = head_total if total is None else total + head_total
            terms[f"{name}.id"] = id_term.detach()
            terms[f"{name}.triplet"] = triplet_term.detach()
        for name, value in outputs.get("losses", {}).items():
            if name not in self.aux_weights:
                raise KeyError(f"the model returned the auxiliary loss {name!r}, which has no weight in the loss "
                               f"configuration (known: {sorted(self.aux_weights)})")
            total = total + self.aux_weights[name] * value
            terms[name] = value.detach()
        return total, terms


def build_loss(cfg: CfgNode, num_classes: int) -> ReIDLoss:
    """The loss from MODEL.IF_LABELSMOOTH, MODEL.LABEL_SMOOTH, MODEL.NO_MARGIN, SOLVER.MARGIN, the weights
    MODEL.ID_LOSS_WEIGHT and MODEL.TRIPLET_LOSS_WEIGHT, and the auxiliary losses the method declares (TOP-ReID: the
    CRM loss at MODEL.CRM_LOSS_WEIGHT)."""
    from modeling.methods import method_of

    epsilon = float(cfg.MODEL.LABEL_SMOOTH) if cfg.MODEL.IF_LABELSMOOTH else 0.0
    # Label smoothing as in the original's CrossEntropyLabelSmooth: targets (1 - eps) one-hot + eps / num_classes.
    id_loss = nn.CrossEntropyLoss(label_smoothing=epsilon)
    triplet = TripletLoss(margin=None if cfg.MODEL.NO_MARGIN else float(cfg.SOLVER.MARGIN))
    return ReIDLoss(id_loss, triplet, id_weight=float(cfg.MODEL.ID_LOSS_WEIGHT),
                    triplet_weight=float(cfg.MODEL.TRIPLET_LOSS_WEIGHT),
                    aux_weights=method_of(cfg).aux_losses(cfg), num_classes=num_classes)
