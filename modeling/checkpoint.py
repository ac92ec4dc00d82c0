"""The model in a checkpoint: what every payload stores about it, strict loading of its weights, and building the
model a checkpoint holds.

Every checkpoint this project writes is ``model_payload(...)`` plus optional sections (training state in
``last.pth``, metrics in ``best.pth``, the source file of a converted one). The payload stores what shapes the model
besides the config (the number of identities and cameras, which come from the training data) and the config keys
that decide its architecture, so :func:`model_from_checkpoint` needs no data set and guesses nothing. Checkpoints
written before these entries existed, bare state_dicts and checkpoints of a registered method's original code
(TOP-ReID, DeMo) still load: their sizes are read from the classifier and camera-embedding rows, and a checkpoint of
an original code records its method by its layout.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from utils.checkpoint import FORMAT, CheckpointError, IncompatibleKeys, safe_load, summarize_keys, unwrap_state_dict

logger = logging.getLogger(__name__)

PROJECT_LAYOUT = "this project's"

# Config keys that decide the model's architecture (with the number of identities and cameras, all of it).
ARCH_KEYS = ("MODEL.META_ARCHITECTURE", "MODEL.TRANSFORMER_TYPE", "MODEL.SPECTRA", "MODEL.BASE", "MODEL.RE",
             "MODEL.DIRECT", "MODEL.RE_LAYER", "MODEL.TPM_HEADS", "MODEL.SIE_CAMERA", "MODEL.STRIDE_SIZE",
             "INPUT.SIZE_TRAIN", "TEST.NECK_FEAT", "MODEL.SHARED_BACKBONE", "MODEL.DEMO.HEAD", "MODEL.DEMO.FEATURE",
             "MODEL.DEMO.PIFE", "MODEL.DEMO.HDM", "MODEL.DEMO.ATMOE",
             "MODEL.EDITOR.AL", "MODEL.EDITOR.HEAD_KEEP", "MODEL.EDITOR.FREQUENCY_KEEP")


def cfg_get(cfg: CfgNode, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def arch_of(cfg: CfgNode) -> dict[str, Any]:
    return {key: cfg_get(cfg, key) for key in ARCH_KEYS}


def model_payload(model: nn.Module, cfg: CfgNode, num_classes: int, num_cameras: int, **sections: Any) -> dict:
    """The one checkpoint shape: weights, sizes, architecture keys and config, plus ``sections``."""
    return {"format": FORMAT, "model": getattr(model, "module", model).state_dict(), "num_classes": int(num_classes),
            "num_cameras": int(num_cameras), "arch": arch_of(cfg), "config": cfg.dump(), **sections}


def original_method(checkpoint: Mapping[str, Any]) -> str | None:
    """The registered method whose original code wrote ``checkpoint`` (recognised by its key layout), or None."""
    from modeling.methods import get_method, method_names

    try:
        state = unwrap_state_dict(checkpoint, "", tensors_only=True)
    except CheckpointError:
        return None
    for name in method_names():
        layout = get_method(name).original
        if layout is not None and layout.matches(state):
            return name
    return None


def saved_arch(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture keys a checkpoint records: its ``arch`` entry, or those of its saved config (older
    checkpoints of this project), or the method of an original code's layout; empty for other files."""
    if isinstance(checkpoint.get("arch"), Mapping):  # written before methods were registered: TOP-ReID's
        return {"MODEL.META_ARCHITECTURE": "TOPReID", **checkpoint["arch"]}
    if isinstance(checkpoint.get("config"), str):
        saved = CfgNode.load_cfg(checkpoint["config"])
        out = {}
        for key in ARCH_KEYS:
            try:
                out[key] = cfg_get(saved, key)
            except KeyError:
                continue
        out.setdefault("MODEL.META_ARCHITECTURE", "TOPReID")
        return out
    method = original_method(checkpoint)
    return {"MODEL.META_ARCHITECTURE": method} if method is not None else {}


def check_arch(checkpoint: Mapping[str, Any], cfg: CfgNode, path: str,
               keys: tuple[str, ...] = ARCH_KEYS, extra: Mapping[str, Any] | None = None) -> None:
    """Raise naming the first key whose value the checkpoint was trained with differs from ``cfg``'s.
    ``extra`` holds more recorded values to compare (resume compares the data set too)."""
    recorded = {**saved_arch(checkpoint), **(extra or {})}
    for key, value in recorded.items():
        if key in keys or (extra and key in extra):
            now = cfg_get(cfg, key)
            if value != now:
                raise CheckpointError(f"{path}: the weights do not fit the model built from the config: they were "
                                      f"trained with {key} = {value!r}, the config says {now!r} (set {key} "
                                      f"{value!r}, or use the config they were trained with)")


def sizes_from_state(state: Mapping[str, torch.Tensor], path: str) -> tuple[int, int]:
    """(identities, cameras) of a state_dict in this project's names that records neither: rows of its classifiers
    and of its camera embedding (0 when it has none)."""
    classes = {int(v.shape[0]) for k, v in state.items() if k.startswith("heads.") and k.endswith(".classifier.weight")}
    if len(classes) != 1:
        raise CheckpointError(f"{path}: not a checkpoint of a registered method (the number of identities cannot be "
                              f"read from heads.*.classifier.weight: found {sorted(classes) or 'none'})")
    cameras = {int(v.shape[0]) for k, v in state.items() if k.endswith((".sie_embed", "camera_embed"))}
    return classes.pop(), max(cameras, default=0)


def project_state_dict(checkpoint: Mapping[str, Any], path: str, model: nn.Module | None = None,
                       ) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """(state_dict in this project's names, original keys dropped, the layout it was in: "this project's" or the
    original code's of a registered method, e.g. "original TOP-ReID"). ``model`` (the model about to receive the
    weights) lets a conversion drop what the model does not have."""
    from modeling.methods import original_layouts

    state = unwrap_state_dict(checkpoint, path)
    for layout in original_layouts():
        if layout.matches(state):
            converted, dropped = layout.convert(state, model)
            return converted, dropped, layout.name
    return state, [], PROJECT_LAYOUT


def load_model_weights(model: nn.Module, state_dict_or_path: str | os.PathLike | Mapping[str, Any], log: bool = True,
                       source: str | None = None) -> list[str]:
    """Load weights into ``model`` strictly and return the original keys dropped as unused.

    Accepts a path (read with :func:`utils.checkpoint.safe_load`) or an already loaded object: this project's
    checkpoint, a bare state_dict in this project's layout, or a state_dict of a method's original code (TOP-ReID,
    DeMo; with or without ``module.``). ``source`` names the file in messages when an object is given. Raises
    :class:`CheckpointError` naming the file and listing missing, unexpected and shape-mismatched keys when the
    weights do not fit the model.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        name = os.fspath(state_dict_or_path)
        obj = safe_load(name)
    else:
        name = source or "<state_dict>"
        obj = state_dict_or_path
    try:
        state, dropped, layout = project_state_dict(obj, name, model)
    except CheckpointError as err:
        raise CheckpointError(f"{name}: {err}") from None
    problems = IncompatibleKeys.compare(model.state_dict(), state).report()
    if problems:
        raise CheckpointError(f"{name}: the weights ({layout} layout) do not fit the model built from the config "
                              f"(another method, backbone, spectra or head setting?); {problems}")
    model.load_state_dict(state, strict=True)
    if log:
        note = f"; dropped {len(dropped)} unused keys of the original layout: {summarize_keys(dropped)}" \
            if dropped else ""
        logger.info("loaded %d tensors from %s (%s layout)%s", len(state), name, layout, note)
    return dropped


@dataclass
class CheckpointModel:
    """A model built from a checkpoint, with what it was built with."""

    model: nn.Module  # on CPU, in eval mode
    num_classes: int
    num_cameras: int
    checkpoint: dict[str, Any]
    path: str


def model_from_checkpoint(cfg: CfgNode, path: str, log: bool = True) -> CheckpointModel:
    """The model of ``cfg`` holding the weights of ``path`` (strict), its sizes read from the checkpoint.

    The checkpoint's recorded architecture keys must equal the config's (an error names the key); the ImageNet
    initialisation is skipped, as the checkpoint holds every weight.
    """
    from modeling import build_model

    checkpoint = safe_load(path)
    check_arch(checkpoint, cfg, path)
    if isinstance(checkpoint.get("num_classes"), int) and isinstance(checkpoint.get("num_cameras"), int):
        num_classes, num_cameras = checkpoint["num_classes"], checkpoint["num_cameras"]
    else:
        num_classes, num_cameras = sizes_from_state(project_state_dict(checkpoint, path)[0], path)
    model = build_model(cfg, num_classes, num_cameras, pretrained=False)
    load_model_weights(model, checkpoint, log=log, source=path)
    model.eval()
    return CheckpointModel(model, num_classes, num_cameras, checkpoint, path)
