"""Experiments over many runs: sweep files (a table of the paper as rows x seeds of ``train_net.py``), their
launching through submitit (local processes or Slurm) and the aggregation of their ``results.json`` into tables."""

from experiments.collect import collect, write_tables
from experiments.sweep import LaunchOptions, Run, Sweep, SweepError, launch, load_sweep, plan_runs, run_state

__all__ = ["LaunchOptions", "Run", "Sweep", "SweepError", "collect", "launch", "load_sweep", "plan_runs",
           "run_state", "write_tables"]
