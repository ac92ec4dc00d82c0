"""Checkpoints of the original EDITOR code mapped to :class:`modeling.methods.editor.EDITOR`'s names (a function of
the keys; the model, when given, only says which heads it has):

===============================================================  =============================================
original                                                         this project
===============================================================  =============================================
``BACKBONE.base.*`` (the shared ViT, timm's names)               ``backbone.*``
``FUSE_block.norm<S>``, ``attn<S>``, ``norm<S>_``, ``mlp<S>``    ``hma.spectra.<S>.{norm1,attn,norm2,mlp}``
(S = R, N, T)                                                    (<S> = RGB, NI, TI)
``FUSE_block.norm1``, ``attn1``, ``norm2``, ``mlp``              ``hma.joint.{norm1,attn,norm2,mlp}``
``FUSE_block.out_norm``                                          ``hma.out_norm``
``FUSE_block.memory_cls.{RGB,NIR,TIR}_centers``                  ``ocfr.{RGB,NI,TI}_centers`` (OCFR's class
                                                                 centres: checkpoint state, kept)
``{RGB,NIR,TIR}_REDUCE``                                         ``reduce.{RGB,NI,TI}``
``FUSE_HEAD``, ``FUSE_BN``                                       ``heads.fuse.{classifier,bottleneck}``
``AL_HEAD``, ``AL_BN`` (MODEL.AL 1)                              ``heads.al.{classifier,bottleneck}``
``BACKBONE_HEAD``, ``BACKBONE_BN``                               ``heads.backbone.{classifier,bottleneck}``
===============================================================  =============================================

Dropped as unused by the function the original computes: ``BACKBONE.base.fc.*`` (the ImageNet classifier of its
ViT), the 8 ``FREQ_INDEX.{DWT,IDWT}.*`` buffers (Haar filters of a wavelet transform whose reconstruction is exact, so
the frequency score is computed from the spectral mean image without them), and, for a model with MODEL.EDITOR.AL
True, ``BACKBONE_HEAD`` / ``BACKBONE_BN``, which the original builds with MODEL.AL 1 but never uses. Every other key
must map: an unknown one is an error, so that a checkpoint of another layout is not loaded half.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from utils.checkpoint import CheckpointError, strip_prefixes, summarize_keys

# Keys only the original EDITOR has (DeMo's and TOP-ReID's checkpoints have none of them).
_MARKERS = re.compile(r"^(FUSE_block\.|FREQ_INDEX\.|(RGB|NIR|TIR)_REDUCE\.|FUSE_HEAD\.|FUSE_BN\.)")
_UNUSED = re.compile(r"^(BACKBONE\.base\.fc\.|FREQ_INDEX\.(DWT|IDWT)\.)")
_HMA_SPECTRUM = {"R": "RGB", "N": "NI", "T": "TI"}  # FUSE_block's per-spectrum suffixes
_SPECTRUM = {"RGB": "RGB", "NIR": "NI", "TIR": "TI"}  # the original's names elsewhere
_HMA_PART = {"norm": "norm1", "attn": "attn", "mlp": "mlp"}
_JOINT_PART = {"norm1": "norm1", "attn1": "attn", "norm2": "norm2", "mlp": "mlp"}
_HEADS = {"FUSE": "fuse", "AL": "al", "BACKBONE": "backbone"}
_HEAD_PART = {"HEAD": "classifier", "BN": "bottleneck"}
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^BACKBONE\.base\.(.+)$"), lambda m: f"backbone.{m[1]}"),
    (re.compile(r"^FUSE_block\.(norm|attn|mlp)([RNT])\.(.+)$"),
     lambda m: f"hma.spectra.{_HMA_SPECTRUM[m[2]]}.{_HMA_PART[m[1]]}.{m[3]}"),
    (re.compile(r"^FUSE_block\.norm([RNT])_\.(.+)$"), lambda m: f"hma.spectra.{_HMA_SPECTRUM[m[1]]}.norm2.{m[2]}"),
    (re.compile(r"^FUSE_block\.(norm1|attn1|norm2|mlp)\.(.+)$"), lambda m: f"hma.joint.{_JOINT_PART[m[1]]}.{m[2]}"),
    (re.compile(r"^FUSE_block\.out_norm\.(.+)$"), lambda m: f"hma.out_norm.{m[1]}"),
    (re.compile(r"^FUSE_block\.memory_cls\.(RGB|NIR|TIR)_centers$"), lambda m: f"ocfr.{_SPECTRUM[m[1]]}_centers"),
    (re.compile(r"^(RGB|NIR|TIR)_REDUCE\.(.+)$"), lambda m: f"reduce.{_SPECTRUM[m[1]]}.{m[2]}"),
    (re.compile(r"^(FUSE|AL|BACKBONE)_(HEAD|BN)\.(.+)$"), lambda m: f"heads.{_HEADS[m[1]]}.{_HEAD_PART[m[2]]}.{m[3]}"),
]


def is_editor_layout(state: Mapping[str, object]) -> bool:
    """True when the keys are those of the original EDITOR code (with or without ``module.``)."""
    return any(_MARKERS.match(k) for k in strip_prefixes(dict.fromkeys(state)))


def convert_editor_state_dict(state: Mapping[str, Any], model: nn.Module | None = None,
                              ) -> tuple[dict[str, Any], list[str]]:
    """An original EDITOR state_dict (``module.`` prefixes allowed) in this project's names -> (state_dict, original
    keys dropped as unused). With ``model``, the heads it does not have are dropped too (``BACKBONE_HEAD`` /
    ``BACKBONE_BN`` of a MODEL.AL 1 checkpoint); without it every head is kept. Raises :class:`CheckpointError`
    naming the keys it cannot map."""
    state = strip_prefixes(state)
    heads = getattr(model, "heads", None)
    head_names = set(heads.keys()) if isinstance(heads, nn.ModuleDict) else None
    out: dict[str, Any] = {}
    dropped, unknown = [], []
    for key, value in state.items():
        if _UNUSED.match(key):
            dropped.append(key)
            continue
        new = next((rename(m) for pattern, rename in _RULES if (m := pattern.match(key))), None)
        if new is None:
            unknown.append(key)
        elif head_names is not None and new.startswith("heads.") and new.split(".")[1] not in head_names:
            dropped.append(key)
        elif new in out:
            raise CheckpointError(f"two keys of the original EDITOR checkpoint map to {new}")
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(f"keys that are not in the original EDITOR layout: {summarize_keys(unknown)}")
    return out, dropped
