"""Checkpoint files: atomic writes, safe loads.

A checkpoint of this project is a dict ``{"format": "topreid", "model": state_dict, ...}``; training checkpoints
add ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``rng`` and ``config``. Every load goes through
:func:`safe_load`, which never runs code from the file (``torch.load(weights_only=True)`` or safetensors).
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

FORMAT = "topreid"


class CheckpointError(RuntimeError):
    """A weights file that cannot be used; the message names the file."""


def save_checkpoint(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a crash mid-write leaves any previous file intact."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def safe_load(path: str) -> dict[str, Any]:
    """Load a weights or checkpoint file without executing code from it.

    ``.safetensors`` files are read with safetensors; everything else with ``torch.load(weights_only=True)``, which
    refuses pickles that would construct arbitrary objects (and so could run code).
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return dict(load_file(path, device="cpu"))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects that would run code when unpickled "
            f"(only tensors and plain containers are allowed). Details: {str(err).splitlines()[0]}") from None
    except Exception as err:  # a corrupt or foreign file surfaces as many error types from the unpickler
        first_line = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: {first_line})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj
