"""Checkpoints of the original DeMo code mapped to :class:`modeling.methods.demo.DeMo`'s names (a pure function of
the keys, no model needed):

==============================================================  ==============================================
original                                                        this project
==============================================================  ==============================================
``BACKBONE.base.*`` (CLIP, OpenAI layout: ``class_embedding``,  ``backbone.trunk.*`` in timm's names (the
``conv1``, ``transformer.resblocks.N``, ``ln_pre/post``)        project's OpenAI -> timm conversion)
``BACKBONE.base.proj`` [width, D]                               ``backbone.proj.weight`` [D, width]
``BACKBONE.base.*`` (ImageNet ViT, timm names)                  ``backbone.*``
``BACKBONE.cv_embed``                                           ``camera_embed``
``{rgb,nir,tir}_reduce.{0,1}.*``                                ``pife.{RGB,NI,TI}.{norm,fc}.*``
``generalFusion.<set>_token``                                   ``hdm.queries.<set>`` (set: r, n, t, rn, ...)
``generalFusion.<set>.*``                                       ``hdm.attn.<set>.*``
``generalFusion.moe.experts.<h>.expertHead.<e>.mlp.{0,2}.*``    ``atmoe.experts.<h>.<e>.{fc,norm}.*``
``generalFusion.moe.gating_network.gate.linear_re.{0,2}.*``     ``atmoe.gate.reduce.{fc,norm}.*``
``generalFusion.moe.gating_network.gate.{q_,k_}.weight``        ``atmoe.gate.{q,k}.weight``
``classifier_moe``, ``bottleneck_moe``                          ``heads.moe.{classifier,bottleneck}``
``classifier``, ``bottleneck`` (DIRECT 1)                       ``heads.ori.{classifier,bottleneck}``
``classifier_{r,n,t}``, ``bottleneck_{r,n,t}`` (DIRECT 0)       ``heads.{RGB,NI,TI}.{classifier,bottleneck}``
==============================================================  ==============================================

The CLIP position table of such a checkpoint is already at its training grid. Every key must map: an unknown one
is an error, so that a checkpoint of another layout is not loaded half.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from modeling.pretrained import OPENAI_LAYOUT, clip_to_timm
from utils.checkpoint import CheckpointError, strip_prefixes, summarize_keys
from utils.spectra import LETTERS

_BACKBONE = "BACKBONE.base."
_REDUCE = {"rgb": "RGB", "nir": "NI", "tir": "TI"}  # the original's PIFE module prefixes
_SETS = "rnt|rn|rt|nt|r|n|t"
_MLP = {"0": "fc", "2": "norm"}  # Sequential(Linear, QuickGELU, BatchNorm1d) of the original
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^BACKBONE\.cv_embed$"), lambda m: "camera_embed"),
    (re.compile(r"^(rgb|nir|tir)_reduce\.([01])\.(.+)$"),
     lambda m: f"pife.{_REDUCE[m[1]]}.{('norm', 'fc')[int(m[2])]}.{m[3]}"),
    (re.compile(rf"^generalFusion\.({_SETS})_token$"), lambda m: f"hdm.queries.{m[1]}"),
    (re.compile(rf"^generalFusion\.({_SETS})\.(.+)$"), lambda m: f"hdm.attn.{m[1]}.{m[2]}"),
    (re.compile(r"^generalFusion\.moe\.experts\.(\d+)\.expertHead\.(\d+)\.mlp\.([02])\.(.+)$"),
     lambda m: f"atmoe.experts.{m[1]}.{m[2]}.{_MLP[m[3]]}.{m[4]}"),
    (re.compile(r"^generalFusion\.moe\.gating_network\.gate\.linear_re\.([02])\.(.+)$"),
     lambda m: f"atmoe.gate.reduce.{_MLP[m[1]]}.{m[2]}"),
    (re.compile(r"^generalFusion\.moe\.gating_network\.gate\.([qk])_\.weight$"), lambda m: f"atmoe.gate.{m[1]}.weight"),
    (re.compile(r"^(classifier|bottleneck)_moe\.(.+)$"), lambda m: f"heads.moe.{m[1]}.{m[2]}"),
    (re.compile(r"^(classifier|bottleneck)\.(.+)$"), lambda m: f"heads.ori.{m[1]}.{m[2]}"),
    (re.compile(r"^(classifier|bottleneck)_([rnt])\.(.+)$"), lambda m: f"heads.{LETTERS[m[2]]}.{m[1]}.{m[3]}"),
]


def is_demo_layout(state: Mapping[str, object]) -> bool:
    """True when the keys are those of the original DeMo code (with or without ``module.``): a ``BACKBONE.base.``
    backbone and every other key one that the key map knows. So an ablated model (no PIFE, HDM or ATMoE: only the
    backbone and the ori heads) is recognised, and EDITOR's checkpoints, whose backbone is named alike, are not."""
    keys = list(strip_prefixes(dict.fromkeys(state)))
    return any(k.startswith(_BACKBONE) for k in keys) and all(
        k.startswith(_BACKBONE) or any(pattern.match(k) for pattern, _ in _RULES) for k in keys)


def _convert_backbone(backbone: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "class_embedding" not in backbone:  # ImageNet ViT: already timm's / the project's names
        return {f"backbone.{k}": v for k, v in backbone.items()}
    timm_state, _, layout = clip_to_timm(backbone)
    assert layout == OPENAI_LAYOUT
    out = {}
    for key, value in timm_state.items():
        if key == "head.bias":  # made (zero) by the conversion; CLIP's projection has no bias
            continue
        out["backbone.proj.weight" if key == "head.weight" else f"backbone.trunk.{key}"] = value
    return out


def convert_demo_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original DeMo state_dict (``module.`` prefixes allowed) in this project's names; raises
    :class:`CheckpointError` naming the keys it cannot map."""
    state = strip_prefixes(state)
    out = _convert_backbone({k[len(_BACKBONE):]: v for k, v in state.items() if k.startswith(_BACKBONE)})
    unknown = []
    for key, value in state.items():
        if key.startswith(_BACKBONE):
            continue
        new = next((rename(m) for pattern, rename in _RULES if (m := pattern.match(key))), None)
        if new is None:
            unknown.append(key)
        elif new in out:
            raise CheckpointError(f"two keys of the original DeMo checkpoint map to {new}")
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(f"keys that are not in the original DeMo layout: {summarize_keys(unknown)}")
    return out
