"""Optimiser and learning-rate schedule."""

from solver.optimizer import OPTIMIZERS, build_optimizer, optimizer_kernel, param_groups
from solver.scheduler import SCHEDULERS, NoisyCosineLR, build_scheduler

__all__ = ["OPTIMIZERS", "SCHEDULERS", "NoisyCosineLR", "build_optimizer", "build_scheduler", "optimizer_kernel",
           "param_groups"]
