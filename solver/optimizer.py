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
                 backbone_prefix: str | tuple[str, ...] = "backbones.", backbone_lr: float = 0.0,
                 bias_lr_factor_in_backbone: bool = True) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (lr, weight decay, part scale), in order of first appearance.

    As in the original: every parameter gets ``base_lr`` and ``weight_decay``; a parameter whose name contains
    "bias" gets ``base_lr * bias_lr_factor`` and ``weight_decay_bias``; with ``large_fc_lr`` one whose name contains
    "classifier" gets ``2 * base_lr`` (its weight decay unchanged). Frozen parameters are left out.

    The backbone (parameters whose name starts with ``backbone_prefix``, a prefix or a tuple of them, which the
    method declares) has its own rate: ``backbone_lr`` when it is above 0 (an absolute lr, as DeMo's 5e-6 for a CLIP
    backbone), otherwise ``base_lr * backbone_lr_factor``. Its biases get that rate times ``bias_lr_factor``, or the
    rate itself with ``bias_lr_factor_in_backbone`` False (DeMo: the backbone rule replaces the bias rule); their
    weight decay is ``weight_decay_bias`` either way. The two backbone options are exclusive.

    A group records its unscaled lr as ``initial_lr`` and the backbone's rate over ``base_lr`` as ``lr_scale``
    (``backbone_lr / base_lr`` for an absolute lr); its ``lr`` is their product. timm's cosine scheduler schedules
    ``initial_lr`` and multiplies by ``lr_scale``, so under ``SOLVER.SCHEDULER cosine`` the whole schedule of the
    backbone (warm-up start and floor included) is the others' times the scale; under ``demo`` every group goes from
    the same warm-up start to its own ``lr`` (see :mod:`solver.scheduler`). With scale 1 the backbone shares the
    groups of the other parts. Each group has ``param_names`` (resume matches the optimiser state by name) and a
    ``name``: the parts it holds (the backbone prefix, else the first name component: backbones, tpm, crm, heads)
    and its kinds.
    """
    if backbone_lr < 0:
        raise ValueError(f"backbone_lr={backbone_lr} is negative (0 means base_lr * backbone_lr_factor)")
    if backbone_lr > 0 and backbone_lr_factor != 1.0:
        raise ValueError(f"backbone_lr={backbone_lr} and backbone_lr_factor={backbone_lr_factor} both set the "
                         "backbone's lr; give one")
    backbone_scale = backbone_lr / base_lr if backbone_lr > 0 else backbone_lr_factor
    prefixes = (backbone_prefix,) if isinstance(backbone_prefix, str) else tuple(backbone_prefix)
    if backbone_scale != 1.0 or not bias_lr_factor_in_backbone:
        if not any(name.startswith(prefixes) for name, _ in model.named_parameters()):
            raise ValueError(f"a backbone lr is set but no parameter of {type(model).__name__} starts with "
                             f"{backbone_prefix!r}")
    groups: dict[tuple[float, float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        in_backbone = prefix is not None
        lr, decay, kind = base_lr, weight_decay, "weights"
        if "bias" in name:
            lr, decay, kind = base_lr * bias_lr_factor, weight_decay_bias, "biases"
            if in_backbone and not bias_lr_factor_in_backbone:
                lr = base_lr
        if large_fc_lr and "classifier" in name:
            lr, kind = base_lr * 2, "classifiers"
        scale = backbone_scale if in_backbone else 1.0
        group = groups.setdefault((lr, decay, scale), {
            "params": [], "lr": lr * scale, "initial_lr": lr, "lr_scale": scale, "weight_decay": decay,
            "param_names": [], "parts": [], "kinds": []})
        group["params"].append(param)
        group["param_names"].append(name)
        part = prefix.rstrip(".") if in_backbone else name.split(".", 1)[0]
        for field, value in (("parts", part), ("kinds", kind)):
            if value not in group[field]:
                group[field].append(value)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimise")
    for group in groups.values():
        group["name"] = f"{'+'.join(group.pop('parts'))} {'+'.join(group.pop('kinds'))}"
    return list(groups.values())


OPTIMIZERS = ("SGD", "Adam", "AdamW")


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum SOLVER.MOMENTUM), Adam or AdamW over :func:`param_groups` of SOLVER.BASE_LR, WEIGHT_DECAY,
    BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS, LARGE_FC_LR, BACKBONE_LR_FACTOR, BACKBONE_LR and BIAS_LR_FACTOR_IN_BACKBONE,
    the backbone being the parameters under the model's ``backbone_prefix`` ("backbones." when it declares none).
    Adam (DeMo's) adds the weight decay to the gradient (L2), AdamW decouples it; both with torch's default betas
    and eps. Fused kernels when every parameter is on CUDA, multi-tensor (foreach) steps otherwise. Logs every group
    (name, parameters, lr, weight decay)."""
    solver = cfg.SOLVER
    name = solver.OPTIMIZER_NAME
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER_NAME={name!r} is not supported ({', '.join(OPTIMIZERS)})")
    backbone_lr = solver.BACKBONE_LR
    if backbone_lr > 0 and solver.BACKBONE_LR_FACTOR != 1.0:
        raise ValueError(f"SOLVER.BACKBONE_LR={backbone_lr} and SOLVER.BACKBONE_LR_FACTOR="
                         f"{solver.BACKBONE_LR_FACTOR} both set the backbone's lr; leave the factor at 1")
    groups = param_groups(model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.BIAS_LR_FACTOR,
                          solver.WEIGHT_DECAY_BIAS, solver.LARGE_FC_LR, solver.BACKBONE_LR_FACTOR,
                          getattr(model, "backbone_prefix", "backbones."), backbone_lr,
                          solver.BIAS_LR_FACTOR_IN_BACKBONE)
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    kernel = {"fused": True} if on_cuda else {"foreach": True}
    if name == "SGD":
        optimizer = torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM, **kernel)
    else:
        optimizer = getattr(torch.optim, name)(groups, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY, **kernel)
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
