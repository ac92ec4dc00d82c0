"""Small atomic file writers."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def _tmp_path(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")


def write_json(path: str, obj: Any) -> None:
    """Write JSON atomically (temp file + os.replace)."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_npz(path: str, **arrays: np.ndarray) -> None:
    """Write an .npz atomically."""
    tmp = _tmp_path(path) + ".npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
