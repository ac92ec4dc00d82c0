"""Rank-aware logging to the console and to a file in OUTPUT_DIR."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"


def setup_logger(output_dir: str | None, rank: int = 0, filename: str = "log.txt") -> logging.Logger:
    """Configure the root logger: INFO to stdout and to ``output_dir/filename`` on rank 0, warnings only elsewhere."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    formatter = logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    root.addHandler(console)
    if output_dir and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, filename), mode="a")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    for noisy in ("PIL", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("topreid")
