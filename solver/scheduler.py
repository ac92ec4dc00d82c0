"""The learning-rate schedule: timm's cosine schedule with linear warm-up, stepped once per epoch.

Like the original (which uses the same timm scheduler), each parameter group is scheduled from its own initial lr
(the bias group from BIAS_LR_FACTOR x BASE_LR), while the warm-up start (WARMUP_FACTOR x BASE_LR) and the floor
(MIN_LR_FACTOR x BASE_LR) are absolute values shared by all groups: the bias group starts its warm-up at the same lr
as the others, not at twice it, and ends at the same floor.
During warm-up (epochs t < WARMUP_ITERS) a group's lr is warmup_lr_init + t / WARMUP_ITERS x (its lr - warmup_lr_init);
from WARMUP_ITERS on, lr_min + (its lr - lr_min)(1 + cos(pi t / MAX_EPOCHS)) / 2, and lr_min from MAX_EPOCHS on.
The cosine counts from epoch 0, not from the end of the warm-up, so the warm-up ends slightly below the group's lr
(0.983 x for 10 of 120 epochs), as in the original.
A group with an ``lr_scale`` (the backbone's, SOLVER.BACKBONE_LR_FACTOR, see :func:`solver.optimizer.param_groups`)
gets that schedule times its scale, warm-up start and floor included (timm applies ``lr_scale`` to every value).
"""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler
from yacs.config import CfgNode


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> CosineLRScheduler:
    """Cosine over SOLVER.MAX_EPOCHS to SOLVER.MIN_LR_FACTOR x BASE_LR after SOLVER.WARMUP_ITERS warm-up epochs
    from SOLVER.WARMUP_FACTOR x BASE_LR. Call ``step(epoch)`` at the start of each epoch; ``state_dict`` /
    ``load_state_dict`` for resuming."""
    solver = cfg.SOLVER
    if solver.SCHEDULER != "cosine":
        raise ValueError(f"SOLVER.SCHEDULER={solver.SCHEDULER!r} is not supported (cosine)")
    return CosineLRScheduler(optimizer, t_initial=solver.MAX_EPOCHS, lr_min=solver.MIN_LR_FACTOR * solver.BASE_LR,
                             warmup_t=solver.WARMUP_ITERS, warmup_lr_init=solver.WARMUP_FACTOR * solver.BASE_LR,
                             t_in_epochs=True, cycle_limit=1)
