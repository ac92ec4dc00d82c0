"""ImageNet initialisation of the backbones from a local file (MODEL.PRETRAIN_PATH_T); nothing is downloaded.

Accepted files: a plain timm-style state_dict (``jx_vit_base_p16_224-80ecf9dd.pth``, ``vitb_16_224_21k.pth``),
DeiT files wrapped in ``model`` (plain or distilled), T2T ``.pth.tar`` files with ``state_dict_ema`` or
``state_dict``, and timm ``.safetensors``. The classifier is dropped, a distilled file loses its distillation token
(also its row of the position table), and the square position grid of the file is resized bilinearly to the
model's patch grid with the CLS row kept. The patch convolution is loaded as it is (kernel 16 whatever the stride).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from utils.checkpoint import CheckpointError, IncompatibleKeys, safe_load, summarize_keys, unwrap_state_dict

logger = logging.getLogger(__name__)

_WRAPPERS = ("state_dict_ema", "state_dict", "model")
_CLASSIFIER_PREFIXES = ("head.", "head_dist.", "pre_logits.", "fc.")
_DISTILLATION = ("dist_token",)
_NOT_IN_IMAGENET = ("sie_embed",)  # parameters of this project that ImageNet files never hold


def unwrap_imagenet_state_dict(obj: Mapping[str, Any], path: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The backbone state_dict inside a file and the keys dropped from it: wrappers removed, ``module.`` stripped,
    classifier and distillation token dropped (a distilled file's position table loses its second row)."""
    state = unwrap_state_dict(obj, f"{path} (MODEL.PRETRAIN_PATH_T)", wrappers=_WRAPPERS, tensors_only=True)
    distilled = "dist_token" in state
    dropped = [k for k in state if k.startswith(_CLASSIFIER_PREFIXES) or k in _DISTILLATION]
    state = {k: v for k, v in state.items() if k not in dropped}
    if distilled and "pos_embed" in state:
        pos = state["pos_embed"]
        state["pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)  # rows: CLS, distillation, patches
    return state, dropped


def resize_pos_embed(pos_embed: torch.Tensor, grid_size: tuple[int, int], path: str = "") -> torch.Tensor:
    """[1, 1 + g*g, D] (CLS row first) -> [1, 1 + gh*gw, D]: the square grid resized bilinearly
    (align_corners False, no antialiasing), the CLS row kept; the table itself when the grid already fits."""
    patches = pos_embed.shape[1] - 1
    side = math.isqrt(patches)
    if side * side != patches:
        raise CheckpointError(f"{path} (MODEL.PRETRAIN_PATH_T): position table of {patches} patches is not a "
                              "square grid")
    return resample_abs_pos_embed(pos_embed, new_size=list(grid_size), old_size=[side, side], num_prefix_tokens=1,
                                  interpolation="bilinear", antialias=False, align_corners=False)


def load_imagenet_weights(backbones: Mapping[str, nn.Module], path: str) -> None:
    """Initialise every backbone from the same ImageNet file. Raises :class:`CheckpointError` for a missing file,
    or when the file lacks a backbone weight or holds one of another shape; logs one line per file."""
    if not path:
        raise CheckpointError("MODEL.PRETRAIN_PATH_T is empty but MODEL.PRETRAIN_CHOICE is 'imagenet'; give the path "
                              "of the ImageNet weights, or set MODEL.PRETRAIN_CHOICE none (random init)")
    try:
        raw = safe_load(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err} (MODEL.PRETRAIN_PATH_T; ImageNet weights are never downloaded, place the file "
                              "there or set MODEL.PRETRAIN_CHOICE none)") from None
    source, dropped = unwrap_imagenet_state_dict(raw, path)
    report = ""
    for spectrum, backbone in backbones.items():
        state = dict(source)
        resized = ""
        if "pos_embed" in state:
            before = state["pos_embed"].shape[1] - 1
            state["pos_embed"] = resize_pos_embed(state["pos_embed"], backbone.grid_size, path)
            if before != state["pos_embed"].shape[1] - 1:
                side = math.isqrt(before)
                resized = f"position grid {side}x{side} -> {backbone.grid_size[0]}x{backbone.grid_size[1]}"
        expected = backbone.state_dict()
        keys = IncompatibleKeys.compare(expected, state, optional=lambda k: k.rsplit(".", 1)[-1] in _NOT_IN_IMAGENET)
        problems = keys.report(unexpected=False)  # ImageNet files hold more than a backbone uses
        if problems:
            raise CheckpointError(f"{path} (MODEL.PRETRAIN_PATH_T) does not fit the {backbone.name} backbone of "
                                  f"{spectrum}: {problems}")
        unexpected = keys.unexpected
        backbone.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
        absent = [k for k in expected if k not in state]
        report = ", ".join(filter(None, [
            f"{len(expected) - len(absent)} tensors", resized,
            f"dropped (classifier / distillation): {summarize_keys(dropped)}" if dropped else "",
            f"unused in the file: {summarize_keys(unexpected)}" if unexpected else "",
            f"not in the file (initialised here): {', '.join(absent)}" if absent else ""]))
    logger.info("ImageNet weights %s -> backbones %s: %s", path, ", ".join(backbones), report)
