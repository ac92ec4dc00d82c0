"""ImageNet initialisation of the backbones from a local file (MODEL.PRETRAIN_PATH_T); nothing is downloaded.

Accepted files: a plain timm-style state_dict (``jx_vit_base_p16_224-80ecf9dd.pth``, ``vitb_16_224_21k.pth``),
DeiT files wrapped in ``model`` (plain or distilled), T2T ``.pth.tar`` files with ``state_dict_ema`` or
``state_dict``, and timm ``.safetensors``. The classifier is dropped, a distilled file loses its distillation token
(also its row of the position table), and the square position grid of the file is resized bilinearly to the
model's patch grid with the CLS row kept. The patch convolution is loaded as it is (kernel 16 whatever the stride).

CLIP image towers: files in timm's layout load as above (the projection ``head.*`` is dropped); files in the OpenAI /
open_clip layout (``visual.conv1.weight``, ``visual.transformer.resblocks.N.attn.in_proj_weight``, ...; open_clip
training checkpoints wrap it in ``state_dict`` with ``module.``) are renamed by timm's own conversion
(``timm.models.vision_transformer._convert_openai_clip``), which turns the projection ``proj`` into ``head.*`` (then
dropped, and reported) and leaves the text tower out; open_clip files with a timm trunk (``visual.trunk.*``) lose
the prefix. OpenAI's ``ViT-B-16.pt`` is a TorchScript archive, which is never loaded here: ``tools/convert_clip.py``
turns it into a safetensors file once. A file converted by that tool, or any file in the OpenAI layout, loaded into a
GELU tower gets a warning naming the QuickGELU variant (OpenAI's CLIP was trained with QuickGELU).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import QuickGELU, resample_abs_pos_embed
from timm.models.vision_transformer import _convert_openai_clip
from torch import nn

from utils.checkpoint import CheckpointError, IncompatibleKeys, safe_load, summarize_keys, unwrap_state_dict

logger = logging.getLogger(__name__)

_WRAPPERS = ("state_dict_ema", "state_dict", "model")
_CLASSIFIER_PREFIXES = ("head.", "head_dist.", "pre_logits.", "fc.")
_DISTILLATION = ("dist_token",)
_NOT_IN_IMAGENET = ("sie_embed",)  # parameters of this project that ImageNet files never hold
_OPEN_CLIP_TRUNK = "visual.trunk."
OPENAI_LAYOUT = "OpenAI CLIP layout"
# Safetensors metadata written by tools/convert_clip.py: the activation the weights were trained with.
ACTIVATION_METADATA = "activation"


def clip_to_timm(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """A CLIP image tower in the OpenAI / open_clip layout renamed to timm's names with timm's conversion:
    (state_dict, keys left out (the text tower), the layout's name); any other state_dict comes back unchanged with
    an empty layout name. ``proj`` becomes ``head.weight`` (transposed) and a zero ``head.bias``, as timm does."""
    for prefix in ("visual.", ""):
        if f"{prefix}class_embedding" in state:
            # timm's conversion reads only the keys (the model argument is unused by it)
            converted = _convert_openai_clip(dict(state), None, prefix=prefix)  # type: ignore[arg-type]
            return converted, [k for k in state if not k.startswith(prefix)], OPENAI_LAYOUT
    if any(k.startswith(_OPEN_CLIP_TRUNK) for k in state):
        return ({k[len(_OPEN_CLIP_TRUNK):]: v for k, v in state.items() if k.startswith(_OPEN_CLIP_TRUNK)},
                [k for k in state if not k.startswith(_OPEN_CLIP_TRUNK)], "open_clip timm-trunk layout")
    return dict(state), [], ""


def unwrap_imagenet_state_dict(obj: Mapping[str, Any], path: str) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """The backbone state_dict inside a file, the keys dropped from it and the file's CLIP layout (see
    :func:`clip_to_timm`): wrappers removed, ``module.`` stripped, classifier and distillation token dropped (a
    distilled file's position table loses its second row)."""
    state = unwrap_state_dict(obj, f"{path} (MODEL.PRETRAIN_PATH_T)", wrappers=_WRAPPERS, tensors_only=True)
    state, other_tower, layout = clip_to_timm(state)
    distilled = "dist_token" in state
    dropped = [k for k in state if k.startswith(_CLASSIFIER_PREFIXES) or k in _DISTILLATION]
    state = {k: v for k, v in state.items() if k not in dropped}
    dropped = other_tower + dropped
    if distilled and "pos_embed" in state:
        pos = state["pos_embed"]
        state["pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)  # rows: CLS, distillation, patches
    return state, dropped, layout


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
    """Initialise every backbone from the same ImageNet file (a backbone shared by several spectra once). Raises
    :class:`CheckpointError` for a missing file, or when the file lacks a backbone weight or holds one of another
    shape; logs one line per file."""
    if not path:
        raise CheckpointError("MODEL.PRETRAIN_PATH_T is empty but MODEL.PRETRAIN_CHOICE is 'imagenet'; give the path "
                              "of the ImageNet weights, or set MODEL.PRETRAIN_CHOICE none (random init)")
    try:
        raw = safe_load(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err} (MODEL.PRETRAIN_PATH_T; ImageNet weights are never downloaded, place the file "
                              "there or set MODEL.PRETRAIN_CHOICE none)") from None
    source, dropped, layout = unwrap_imagenet_state_dict(raw, path)
    activation = _file_activation(path)  # read once, checked per backbone
    distinct: dict[int, tuple[nn.Module, list[str]]] = {}
    for spectrum, backbone in backbones.items():
        distinct.setdefault(id(backbone), (backbone, []))[1].append(spectrum)
    report = ""
    for backbone, spectra in distinct.values():
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
                                  f"{'/'.join(spectra)}: {problems}")
        unexpected = keys.unexpected
        backbone.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
        absent = [k for k in expected if k not in state]
        report = ", ".join(filter(None, [
            f"{len(expected) - len(absent)} tensors", resized,
            f"dropped (classifier / CLIP projection and text tower / distillation): {summarize_keys(dropped)}"
            if dropped else "",
            f"unused in the file: {summarize_keys(unexpected)}" if unexpected else "",
            f"not in the file (initialised here): {', '.join(absent)}" if absent else ""]))
        _check_activation(path, activation, layout, backbone)
    names = ", ".join("/".join(spectra) + (" (one shared backbone)" if len(spectra) > 1 else "")
                      for _, spectra in distinct.values())
    logger.info("ImageNet weights %s -> backbones %s: %s", path, names, report)


def _file_activation(path: str) -> str | None:
    """The activation a safetensors file records (tools/convert_clip.py writes ``quick_gelu``), or None."""
    if not path.endswith(".safetensors"):
        return None
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return (f.metadata() or {}).get(ACTIVATION_METADATA)


def _check_activation(path: str, activation: str | None, layout: str, backbone: nn.Module) -> None:
    """Warn when weights that OpenAI's CLIP trained with QuickGELU may be going into a GELU backbone.

    A file converted by tools/convert_clip.py records the activation, so the warning is certain. A file in the OpenAI
    layout (OpenAI's own state_dict, or an open_clip checkpoint of the OpenAI model) holds the same keys as open_clip's
    own (LAION) weights of that architecture, which were trained with GELU and belong in this backbone: the keys cannot
    tell the two apart, so every such file warns, naming both cases. A timm-layout file records nothing of the kind and
    does not warn, although it may hold OpenAI's weights too (timm's ``vit_base_patch16_clip_224.openai``)."""
    if any(isinstance(m, QuickGELU) for m in backbone.modules()):
        return
    if activation == "quick_gelu":
        logger.warning("%s holds weights trained with QuickGELU (OpenAI's CLIP), but the %s backbone uses GELU: use "
                       "the *_clip_quickgelu_* name (vit_base_patch16_clip_quickgelu_224 for ViT-B/16) to keep the "
                       "activation the weights were trained with", path, backbone.name)
    elif activation is None and layout == OPENAI_LAYOUT:
        logger.warning("%s is in the OpenAI / open_clip CLIP layout and goes into the %s backbone, which uses GELU: if "
                       "these are OpenAI's CLIP weights (trained with QuickGELU), use the *_clip_quickgelu_* name "
                       "(vit_base_patch16_clip_quickgelu_224 for ViT-B/16); open_clip's own (LAION) weights in this "
                       "layout were trained with GELU and fit this backbone", path, backbone.name)
