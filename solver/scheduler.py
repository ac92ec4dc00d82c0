"""The learning-rate schedules, stepped once per epoch (``step(epoch)`` at the start of epoch 1, 2, ...), chosen by
SOLVER.SCHEDULER.

``cosine`` (TOP-ReID): timm's cosine schedule with linear warm-up. Like the original (which uses the same timm
scheduler), each parameter group is scheduled from its own initial lr (the bias group from BIAS_LR_FACTOR x BASE_LR),
while the warm-up start (WARMUP_FACTOR x BASE_LR) and the floor (MIN_LR_FACTOR x BASE_LR) are absolute values shared
by all groups: the bias group starts its warm-up at the same lr as the others, not at twice it, and ends at the same
floor.
During warm-up (epochs t < WARMUP_ITERS) a group's lr is warmup_lr_init + t / WARMUP_ITERS x (its lr - warmup_lr_init);
from WARMUP_ITERS on, lr_min + (its lr - lr_min)(1 + cos(pi t / MAX_EPOCHS)) / 2, and lr_min from MAX_EPOCHS on.
The cosine counts from epoch 0, not from the end of the warm-up, so the warm-up ends slightly below the group's lr
(0.983 x for 10 of 120 epochs), as in the original.
A group with an ``lr_scale`` (the backbone's, SOLVER.BACKBONE_LR_FACTOR, see :func:`solver.optimizer.param_groups`)
gets that schedule times its scale, warm-up start and floor included (timm applies ``lr_scale`` to every value).

``demo`` (DeMo): the same warm-up and cosine with DeMo's per-epoch noise, and no per-group scaling of the warm-up
start or the floor, as :class:`NoisyCosineLR` describes.
"""

from __future__ import annotations

import math

import torch
from timm.scheduler import CosineLRScheduler
from yacs.config import CfgNode

SCHEDULERS = ("cosine", "demo")

# DeMo's noise (its solver/scheduler_factory.py: noise_pct 0.67, noise_std 1, noise_seed 42, over epochs [0, E)).
DEMO_NOISE_PCT = 0.67
DEMO_NOISE_SEED = 42


class NoisyCosineLR:
    """DeMo's schedule: linear warm-up, cosine to a floor, and a seeded random factor per epoch.

    With E = ``max_epochs``, W = ``warmup_epochs``, s = ``warmup_lr``, m = ``min_lr`` and lr0 a group's own lr (its
    ``initial_lr`` times its ``lr_scale``, i.e. its ``lr`` as :func:`solver.optimizer.param_groups` builds it), the lr
    of the group at epoch e is

    - e < W: s + e (lr0 - s) / W; every group starts from the same s, so a group below s (DeMo's CLIP backbone at
      5e-6 with s = 3.5e-5) warms *down* to its lr;
    - W <= e < E: m + (lr0 - m)(1 + cos(pi e / E)) / 2, the cosine counting from epoch 0, not from the end of the
      warm-up;
    - e >= E: m, the same for every group;

    times (1 + n_e) for 0 <= e < E, where n_e is the first draw of ``torch.randn(1)`` with |n_e| < ``noise_pct``
    from a ``torch.Generator`` seeded ``noise_seed + e`` (n_1 = -0.648, so epoch 1 runs at 0.35 x its lr;
    |n_e| reaches 0.66). The generator is local: the global random state, and so training's randomness, is
    untouched. With W > E the warm-up rule wins, as in the original.

    The lr of an epoch is a function of the epoch, the arguments and each group's lr0 only: nothing is carried from
    one ``step`` to the next, so a run resumed with a fresh optimiser and scheduler gets the same rates. Built, it
    sets every group to its epoch-0 value without noise (the original's state before its first step).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, warmup_epochs: int, warmup_lr: float,
                 min_lr: float, noise_pct: float = DEMO_NOISE_PCT, noise_seed: int = DEMO_NOISE_SEED) -> None:
        if max_epochs < 1 or warmup_epochs < 0:
            raise ValueError(f"max_epochs={max_epochs} must be at least 1 and warmup_epochs={warmup_epochs} at least 0")
        if noise_pct <= 0:
            raise ValueError(f"noise_pct={noise_pct} must be above 0")
        self.optimizer = optimizer
        self.max_epochs, self.warmup_epochs = max_epochs, warmup_epochs
        self.warmup_lr, self.min_lr = warmup_lr, min_lr
        self.noise_pct, self.noise_seed = noise_pct, noise_seed
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [g["initial_lr"] * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
        self._set(self.lrs(0, noise=False))

    def noise(self, epoch: int) -> float:
        """n_e: the relative change of every group's lr at ``epoch`` (0 outside [0, max_epochs))."""
        if not 0 <= epoch < self.max_epochs:
            return 0.0
        generator = torch.Generator().manual_seed(self.noise_seed + epoch)
        while True:
            value = torch.randn(1, generator=generator).item()
            if abs(value) < self.noise_pct:
                return value

    def lrs(self, epoch: int, noise: bool = True) -> list[float]:
        """Each group's lr at ``epoch``, in the optimiser's group order."""
        if epoch < self.warmup_epochs:
            values = [self.warmup_lr + epoch * (lr - self.warmup_lr) / self.warmup_epochs for lr in self.base_lrs]
        elif epoch < self.max_epochs:
            cosine = 1 + math.cos(math.pi * epoch / self.max_epochs)
            values = [self.min_lr + 0.5 * (lr - self.min_lr) * cosine for lr in self.base_lrs]
        else:
            values = [self.min_lr for _ in self.base_lrs]
        if noise:
            n = self.noise(epoch)
            values = [v + v * n for v in values]
        return values

    def step(self, epoch: int) -> None:
        """Set every group's lr to its value at ``epoch`` (call at the start of the epoch)."""
        self._set(self.lrs(epoch))

    def _set(self, values: list[float]) -> None:
        for group, value in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = value


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> CosineLRScheduler | NoisyCosineLR:
    """The schedule SOLVER.SCHEDULER names, over SOLVER.MAX_EPOCHS with SOLVER.WARMUP_ITERS warm-up epochs from
    SOLVER.WARMUP_FACTOR x BASE_LR down to a floor of SOLVER.MIN_LR_FACTOR x BASE_LR: ``cosine``, timm's (``lr_scale``
    scales a group's whole schedule; ``state_dict`` / ``load_state_dict`` as timm's), or ``demo``,
    :class:`NoisyCosineLR` (DeMo's: WARMUP_FACTOR 0.1, MIN_LR_FACTOR 0.001). Call ``step(epoch)`` at the start of each
    epoch."""
    solver = cfg.SOLVER
    warmup_lr, min_lr = solver.WARMUP_FACTOR * solver.BASE_LR, solver.MIN_LR_FACTOR * solver.BASE_LR
    if solver.SCHEDULER == "cosine":
        return CosineLRScheduler(optimizer, t_initial=solver.MAX_EPOCHS, lr_min=min_lr, warmup_t=solver.WARMUP_ITERS,
                                 warmup_lr_init=warmup_lr, t_in_epochs=True, cycle_limit=1)
    if solver.SCHEDULER == "demo":
        return NoisyCosineLR(optimizer, solver.MAX_EPOCHS, solver.WARMUP_ITERS, warmup_lr, min_lr)
    raise ValueError(f"SOLVER.SCHEDULER={solver.SCHEDULER!r} is not supported ({', '.join(SCHEDULERS)})")
