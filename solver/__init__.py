"""Optimiser and learning-rate schedule."""

from solver.optimizer import build_optimizer, optimizer_kernel, param_groups
from solver.scheduler import build_scheduler

__all__ = ["build_optimizer", "build_scheduler", "optimizer_kernel", "param_groups"]
