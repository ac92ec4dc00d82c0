"""The optimiser with the original's per-parameter settings, grouped so that foreach / fused steps apply."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

logger = logging.getLogger(__name__)


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, bias_lr_factor: float,
                 weight_decay_bias: float, large_fc_lr: bool = False) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (lr, weight decay), in order of first appearance.

    As in the original: every parameter gets ``base_lr`` and ``weight_decay``; a parameter whose name contains
    "bias" gets ``base_lr * bias_lr_factor`` and ``weight_decay_bias``; with ``large_fc_lr`` one whose name contains
    "classifier" gets ``2 * base_lr`` (its weight decay unchanged). Frozen parameters are left out.
    """
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, decay = base_lr, weight_decay
        if "bias" in name:
            lr, decay = base_lr * bias_lr_factor, weight_decay_bias
        if large_fc_lr and "classifier" in name:
            lr = base_lr * 2
        group = groups.setdefault((lr, decay), {"params": [], "lr": lr, "weight_decay": decay, "param_names": []})
        group["params"].append(param)
        group["param_names"].append(name)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimise")
    return list(groups.values())


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum SOLVER.MOMENTUM) or AdamW over :func:`param_groups` of SOLVER.BASE_LR, SOLVER.WEIGHT_DECAY,
    SOLVER.BIAS_LR_FACTOR, SOLVER.WEIGHT_DECAY_BIAS, SOLVER.LARGE_FC_LR. Fused kernels when every parameter is on
    CUDA, multi-tensor (foreach) steps otherwise."""
    solver = cfg.SOLVER
    groups = param_groups(model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.BIAS_LR_FACTOR,
                          solver.WEIGHT_DECAY_BIAS, solver.LARGE_FC_LR)
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    kernel = {"fused": True} if on_cuda else {"foreach": True}
    name = solver.OPTIMIZER_NAME
    if name == "SGD":
        optimizer = torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM, **kernel)
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(groups, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY, **kernel)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER_NAME={name!r} is not supported (SGD or AdamW)")
    logger.info("%s (%s step) with %d parameter groups: %s", name, optimizer_kernel(optimizer), len(groups),
                ", ".join(f"{len(g['params'])} params lr {g['lr']:.2e} wd {g['weight_decay']:.1e}" for g in groups))
    return optimizer


def optimizer_kernel(optimizer: torch.optim.Optimizer) -> str:
    """Which implementation the optimiser's step runs: ``fused`` (one kernel per group, CUDA), ``foreach``
    (multi-tensor) or ``for-loop`` (one parameter at a time)."""
    options = optimizer.defaults
    if options.get("fused"):
        return "fused"
    return "foreach" if options.get("foreach") else "for-loop"
