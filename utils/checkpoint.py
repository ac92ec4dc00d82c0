"""Checkpoint files: atomic writes, safe loads.

A checkpoint of this project is a dict ``{"format": "topreid", "model": state_dict, "num_classes": ...,
"num_cameras": ..., "arch": {...}, "config": ..., "epoch": ...}`` (see :mod:`modeling.checkpoint`); training
checkpoints add ``optimizer``, ``scheduler``, ``scaler``, ``iteration``, ``rng`` and ``best``. Every load goes through
:func:`safe_load`, which never runs code from the file (``torch.load(weights_only=True)`` or safetensors); every
state_dict is taken out of its file by :func:`unwrap_state_dict` and compared with a model by
:class:`IncompatibleKeys`.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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
    if is_torchscript_archive(path):
        raise CheckpointError(
            f"{path}: refused to load: a TorchScript archive (such as OpenAI's CLIP ViT-B-16.pt) holds code, and "
            "training reads weights only. Convert it once into a safetensors file with `python tools/convert_clip.py "
            f"--input {path} --output clip_vitb16.safetensors` and give that file instead")
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


def is_torchscript_archive(path: str) -> bool:
    """True for a TorchScript archive (``torch.jit.save``): a zip holding ``constants.pkl``, which ``torch.save``
    files never have (the test torch itself uses)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


# ----------------------------------------------------------------------------------------------------------------------
# State dicts inside files, and how they fit a model.

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove the ``module.`` (DataParallel / DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def unwrap_state_dict(obj: Mapping[str, Any], path: str, wrappers: Sequence[str] = ("model", "state_dict"),
                      tensors_only: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict inside a loaded file: the first of ``wrappers`` that holds a mapping (a ``model`` entry
    counts only in this project's format or in a file without a format), with the ``module.`` / ``_orig_mod.``
    prefixes stripped. Non-tensor entries are an error, or dropped with ``tensors_only``."""
    for wrapper in wrappers:
        if isinstance(obj.get(wrapper), Mapping) and (wrapper != "model" or obj.get("format", FORMAT) == FORMAT):
            obj = obj[wrapper]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad and not tensors_only:
        raise CheckpointError(f"{path}: not a model state_dict (non-tensor entries: {summarize_keys(bad, 5)})")
    state = strip_prefixes({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})
    if not state:
        raise CheckpointError(f"{path}: holds no model weights")
    return state


def summarize_keys(keys: Iterable[str], limit: int = 12, depth: int = 3) -> str:
    """Keys grouped by their first ``depth`` name parts with layer indices collapsed (``backbones.RGB.blocks.*
    (144 keys)``; a group of one shows the key itself), at most ``limit`` groups."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(".".join(re.sub(r"^\d+$", "*", p) for p in key.split(".")[:depth]), []).append(key)
    items = [ks[0] if len(ks) == 1 else f"{g}.* ({len(ks)} keys)" for g, ks in groups.items()]
    more = f", ... and {len(items) - limit} more groups" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


@dataclass
class IncompatibleKeys:
    """How a state_dict fits the tensors a module expects."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "key (file [shape], model [shape])"

    @classmethod
    def compare(cls, expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                optional: Callable[[str], bool] = lambda key: False) -> IncompatibleKeys:
        """``optional`` keys may be absent from ``state`` without counting as missing."""
        return cls([k for k in expected if k not in state and not optional(k)],
                   [k for k in state if k not in expected],
                   [f"{k} (file {list(state[k].shape)}, model {list(v.shape)})" for k, v in expected.items()
                    if k in state and state[k].shape != v.shape])

    def report(self, unexpected: bool = True) -> str:
        """One line of grouped keys (empty when everything fits); ``unexpected=False`` leaves extra keys out."""
        problems = []
        if self.missing:
            problems.append(f"missing {len(self.missing)}: {summarize_keys(self.missing)}")
        if unexpected and self.unexpected:
            problems.append(f"unexpected {len(self.unexpected)}: {summarize_keys(self.unexpected)}")
        if self.mismatched:
            more = f", ... and {len(self.mismatched) - 5} more" if len(self.mismatched) > 5 else ""
            problems.append(f"shape mismatch {len(self.mismatched)}: {', '.join(self.mismatched[:5])}{more}")
        return "; ".join(problems)
