"""The optimiser with the original's per-parameter settings, grouped so that foreach / fused steps apply."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

logger = logging.getLogger(__name__)


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, bias_lr_factor: float,
                 weight_decay_bias: float, large_fc_lr: bool = False, backbone_lr_factor: float = 1.0,
                 backbone_prefix: str = "backbones.") -> list[dict[str, Any]]:
    """Trainable parameters grouped by (lr, weight decay, part scale), in order of first appearance.

    As in the original: every parameter gets ``base_lr`` and ``weight_decay``; a parameter whose name contains
    "bias" gets ``base_lr * bias_lr_factor`` and ``weight_decay_bias``; with ``large_fc_lr`` one whose name contains
    "classifier" gets ``2 * base_lr`` (its weight decay unchanged). Frozen parameters are left out.

    Per-part rates: parameters under ``backbone_prefix`` get that lr times ``backbone_lr_factor`` (the bias rule
    still applies: backbone biases get ``base_lr * bias_lr_factor * backbone_lr_factor``). A group records the
    factor as ``lr_scale`` and its unscaled lr as ``initial_lr``: timm's scheduler schedules ``initial_lr`` and
    multiplies by ``lr_scale``, so the whole schedule of the backbone (warm-up start and floor included) is the
    others' times the factor. With factor 1 the backbone shares the groups of the other parts. Each group has a
    ``name``: the parts it holds (first name component: backbones, tpm, crm, heads) and its kind.
    """
    groups: dict[tuple[float, float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, decay, kind = base_lr, weight_decay, "weights"
        if "bias" in name:
            lr, decay, kind = base_lr * bias_lr_factor, weight_decay_bias, "biases"
        if large_fc_lr and "classifier" in name:
            lr, kind = base_lr * 2, "classifiers"
        scale = backbone_lr_factor if name.startswith(backbone_prefix) else 1.0
        group = groups.setdefault((lr, decay, scale), {
            "params": [], "lr": lr * scale, "initial_lr": lr, "lr_scale": scale, "weight_decay": decay,
            "param_names": [], "parts": [], "kinds": []})
        group["params"].append(param)
        group["param_names"].append(name)
        for field, value in (("parts", name.split(".", 1)[0]), ("kinds", kind)):
            if value not in group[field]:
                group[field].append(value)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimise")
    for group in groups.values():
        group["name"] = f"{'+'.join(group.pop('parts'))} {'+'.join(group.pop('kinds'))}"
    return list(groups.values())


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum SOLVER.MOMENTUM) or AdamW over :func:`param_groups` of SOLVER.BASE_LR, SOLVER.WEIGHT_DECAY,
    SOLVER.BIAS_LR_FACTOR, SOLVER.WEIGHT_DECAY_BIAS, SOLVER.LARGE_FC_LR, SOLVER.BACKBONE_LR_FACTOR. Fused kernels when
    every parameter is on CUDA, multi-tensor (foreach) steps otherwise. Logs every group (name, parameters, lr,
    weight decay)."""
    solver = cfg.SOLVER
    groups = param_groups(model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.BIAS_LR_FACTOR,
                          solver.WEIGHT_DECAY_BIAS, solver.LARGE_FC_LR, solver.BACKBONE_LR_FACTOR)
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    kernel = {"fused": True} if on_cuda else {"foreach": True}
    name = solver.OPTIMIZER_NAME
    if name == "SGD":
        optimizer = torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM, **kernel)
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(groups, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY, **kernel)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER_NAME={name!r} is not supported (SGD or AdamW)")
    logger.info("%s (%s step) with %d parameter groups:%s", name, optimizer_kernel(optimizer), len(groups), "".join(
        f"\n  {g['name']}: {len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} parameters, "
        f"lr {g['lr']:.2e}, weight decay {g['weight_decay']:.1e}" for g in groups))
    return optimizer


def optimizer_kernel(optimizer: torch.optim.Optimizer) -> str:
    """Which implementation the optimiser's step runs: ``fused`` (one kernel per group, CUDA), ``foreach``
    (multi-tensor) or ``for-loop`` (one parameter at a time)."""
    options = optimizer.defaults
    if options.get("fused"):
        return "fused"
    return "foreach" if options.get("foreach") else "for-loop"


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Restore the per-parameter state (momentum buffers, Adam moments) of ``saved`` into ``optimizer``, matched by
    parameter name, and keep ``optimizer``'s own hyperparameters (lr, weight decay, momentum, groups).

    ``torch.optim.Optimizer.load_state_dict`` would also bring back the saved groups' hyperparameters, so a run
    resumed with a new ``SOLVER.WEIGHT_DECAY`` or ``BACKBONE_LR_FACTOR`` would silently keep the old ones, and a new
    grouping (a backbone factor moving from 1, which shares the groups, to 0.1) would not load at all. Parameters
    the saved state does not know start with an empty state, as in a new run."""
    by_name: dict[str, Any] = {}
    for group in saved["param_groups"]:
        names = group.get("param_names")
        if names is None or len(names) != len(group["params"]):
            raise ValueError("the saved optimiser state does not name its parameters (param_names); it was not "
                             "written by this project")
        for index, name in zip(group["params"], names):
            if index in saved["state"]:
                by_name[name] = saved["state"][index]
    current = optimizer.state_dict()
    state = {}
    for group in current["param_groups"]:
        for index, name in zip(group["params"], group["param_names"]):
            if name in by_name:
                state[index] = by_name[name]
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
