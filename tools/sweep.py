"""Reproduce a table of the paper: train every row x seed of a sweep file, then aggregate.

    python tools/sweep.py configs/paper/<table>.yml [--executor local|slurm] [--dry-run] [--collect]
        [--rows A B] [--seeds 0 1] [--output ROOT] [--max-parallel N]
        [--partition P --time MIN --gpus-per-run G --cpus-per-run C --mem GB --account A --qos Q --constraint C
         --max-timeouts N --poll S]
        [KEY VALUE ...]

Trailing ``KEY VALUE`` pairs apply to every run (``DATASETS.ROOT_DIR /data``). Runs go to
``ROOT/<row>/seed<k>`` (default ROOT ``logs/sweeps/<sweep file stem>``); running the same command again does only
what is left. ``--collect`` only writes ``ROOT/table.{md,csv,png}`` from what is there (also done after a sweep).
See :mod:`experiments.sweep` and :mod:`experiments.collect`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments import LaunchOptions, SweepError, collect, launch, load_sweep, plan_runs, write_tables  # noqa: E402
from experiments.sweep import check_slurm_options, default_gpus_per_run, dry_run  # noqa: E402
from tools.common import parse_tool_args, run_tool, tool_parser  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("Train the rows x seeds of a sweep file and aggregate them into a table", config=False)
    parser.add_argument("sweep", help="sweep file (configs/paper/*.yml)")
    parser.add_argument("--executor", choices=("local", "slurm"), default="local")
    parser.add_argument("--dry-run", action="store_true", help="list every run with its state; start nothing")
    parser.add_argument("--collect", action="store_true", help="only aggregate what is there into the table")
    parser.add_argument("--rows", nargs="+", default=None, help="only these rows")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="these seeds instead of the file's")
    parser.add_argument("--output", default="", help="root of the runs (default logs/sweeps/<sweep file stem>)")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="runs at a time (default: one per visible GPU, one on CPU; all at once on Slurm)")
    slurm = parser.add_argument_group("Slurm (and local GPU) options")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", type=int, default=None, help="job time limit in minutes")
    slurm.add_argument("--gpus-per-run", type=int, default=None, help="GPUs per run; more than one uses torchrun")
    slurm.add_argument("--cpus-per-run", type=int, default=None)
    slurm.add_argument("--mem", type=float, default=None, help="memory per run in GB")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--constraint")
    slurm.add_argument("--max-timeouts", type=int, default=20,
                       help="requeues of a Slurm job after a time limit before the run is given up (default 20)")
    slurm.add_argument("--poll", type=float, default=None,
                       help="seconds between two looks at the jobs (default 1 locally, 10 on Slurm)")
    return parse_tool_args(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code = [0]

    def body() -> None:
        if args.max_parallel is not None and args.max_parallel < 1:
            raise SweepError("--max-parallel must be at least 1")
        sweep = load_sweep(args.sweep)
        root = args.output or os.path.join("logs", "sweeps", sweep.stem)
        options = LaunchOptions(args.executor, args.max_parallel, args.gpus_per_run, args.time, args.partition,
                                args.cpus_per_run, args.mem, args.account, args.qos, args.constraint, args.poll,
                                args.max_timeouts)
        if args.executor == "slurm" and not (args.dry_run or args.collect):
            check_slurm_options(options)  # before the partition is asked for its GPUs
        options.gpus_per_run = default_gpus_per_run(options)
        runs = plan_runs(sweep, root, args.rows, args.seeds, args.opts, options.gpus_per_run)
        if args.dry_run:
            for entry in dry_run(runs, root):
                print(f"{entry['row']}  seed {entry['seed']}  {entry['state']}\n  folder:  {entry['output_dir']}\n"
                      f"  command: {shlex.join(entry['command'])}")
            return
        if not args.collect:
            from utils.logger import setup_logger

            setup_logger(root, filename="sweep_log.txt")
            state = launch(sweep, runs, root, options)
            unfinished = {r.key: state["runs"].get(r.key, {}).get("state", "to do") for r in runs
                          if state["runs"].get(r.key, {}).get("state") != "done"}
            if unfinished:
                logging.getLogger("experiments.sweep").warning(
                    "%d of %d runs unfinished: %s; run the same command again to continue them", len(unfinished),
                    len(runs), ", ".join(f"{k} ({v})" for k, v in unfinished.items()))
            code[0] = 130 if state.get("interrupted") else (1 if unfinished else 0)
        write_tables(collect(sweep, runs, root), root)

    return run_tool(body) or code[0]


if __name__ == "__main__":
    sys.exit(main())
