"""Optimiser and learning-rate schedule."""

from solver.optimizer import make_optimizer, param_groups
from solver.scheduler import make_scheduler

__all__ = ["make_optimizer", "make_scheduler", "param_groups"]
