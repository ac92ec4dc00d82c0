"""Loading model weights: this project's checkpoints and checkpoints trained by the original TOP-ReID code.

The original layout (see ``tests/data/reference/manifests``) maps to this project's names as follows; the mapping
is a pure function of the key, so it needs no model:

==========================================  ================================================
original                                    this project
==========================================  ================================================
``<S>.base.<rest>``                         ``backbones.<S>.<rest>``
``<S>.base.fc.*`` / ``<S>.base.head.*``     dropped (ImageNet / unused backbone classifier)
``<S>.classifier.*``, ``<S>.bottleneck.*``  ``heads.<S>.classifier.*``, ``heads.<S>.bottleneck.*``
``classifier_TPM.*``, ``bottleneck_TPM.*``  ``heads.tpm.classifier.*``, ``heads.tpm.bottleneck.*``
``classifier_ViT.*``, ``bottleneck_ViT.*``  ``heads.concat.classifier.*``, ``heads.concat.bottleneck.*``
``TPM.Ro_<stage>.Rotation.<rest>``          ``tpm.<stage>.<rest>`` (``attn.normy``/``q_``/``k_``/``v_`` ->
                                            ``attn.norm_y``/``q``/``k``/``v``)
``CRM.<S>RE.re<i>.blocks.<rest>``           ``crm.recon.<S>.<T>.<rest>``, T from :data:`CRM_TARGETS`
==========================================  ================================================

The original always builds every head; the heads a model does not have (per-spectrum heads with DIRECT True, the
concat head with DIRECT False) are dropped when the model's head names are given.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from utils.checkpoint import FORMAT, CheckpointError, safe_load
from utils.spectra import SPECTRA

logger = logging.getLogger(__name__)

# Target spectrum of each reconstructor of the original CRM (``CRM.<S>RE.re1`` / ``re2``): the other two spectra
# in (RGB, NI, TI) order. Established with the reference vectors of the original code: the eval features of the
# six missing settings match only with this assignment (tests/test_model_parity.py).
CRM_TARGETS: dict[str, dict[str, str]] = {
    "RGB": {"re1": "NI", "re2": "TI"},
    "NI": {"re1": "RGB", "re2": "TI"},
    "TI": {"re1": "RGB", "re2": "NI"},
}

_S = "|".join(SPECTRA)
_ORIGINAL_MARKERS = re.compile(rf"^(({_S})\.base\.|TPM\.Ro_|CRM\.({_S})RE\.|(classifier|bottleneck)_(TPM|ViT)\.)")
_BACKBONE_UNUSED = re.compile(rf"^({_S})\.base\.(fc|head|head_dist|pre_logits)\.")
_BACKBONE = re.compile(rf"^({_S})\.base\.(.+)$")
_SPECTRUM_HEAD = re.compile(rf"^({_S})\.(classifier|bottleneck)\.(.+)$")
_MAIN_HEAD = re.compile(r"^(classifier|bottleneck)_(TPM|ViT)\.(.+)$")
_TPM = re.compile(r"^TPM\.Ro_(start|middle|end)\.Rotation\.(.+)$")
_CRM = re.compile(rf"^CRM\.({_S})RE\.(re1|re2)\.blocks\.(.+)$")
_TPM_RENAMES = {"attn.normy.": "attn.norm_y.", "attn.q_.": "attn.q.", "attn.k_.": "attn.k.", "attn.v_.": "attn.v."}
_MAIN_HEAD_NAMES = {"TPM": "tpm", "ViT": "concat"}
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


def is_original_layout(state_dict: Mapping[str, Any]) -> bool:
    """True when the keys are those of the original TOP-ReID code (with or without ``module.``)."""
    return any(_ORIGINAL_MARKERS.match(k) for k in strip_prefixes(dict.fromkeys(state_dict)))


def _map_key(key: str) -> tuple[str | None, str | None]:
    """(new key, head name) for a key of a head, (new key, None) for any other mapped key, (None, None) for a key
    that is never used."""
    if _BACKBONE_UNUSED.match(key):
        return None, None
    if m := _BACKBONE.match(key):
        return f"backbones.{m[1]}.{m[2]}", None
    if m := _SPECTRUM_HEAD.match(key):
        return f"heads.{m[1]}.{m[2]}.{m[3]}", m[1]
    if m := _MAIN_HEAD.match(key):
        head = _MAIN_HEAD_NAMES[m[2]]
        return f"heads.{head}.{m[1]}.{m[3]}", head
    if m := _TPM.match(key):
        rest = m[2]
        for old, new in _TPM_RENAMES.items():
            if rest.startswith(old):
                rest = new + rest[len(old):]
        return f"tpm.{m[1]}.{rest}", None
    if m := _CRM.match(key):
        return f"crm.recon.{m[1]}.{CRM_TARGETS[m[1]][m[2]]}.{m[3]}", None
    return key, None  # not recognised: kept as is, so that a model check reports it


def convert_original_state_dict(state_dict: Mapping[str, Any], heads: Collection[str] | None = None,
                                ) -> tuple[dict[str, Any], list[str]]:
    """Map an original TOP-ReID state_dict to this project's names.

    Returns (converted state_dict, dropped original keys). Dropped: each backbone's ImageNet classifier
    (``fc``/``head``) and, when ``heads`` (the model's head names) is given, the heads the model does not have.
    Keys that are not recognised are passed through unchanged (a load then reports them as unexpected).
    """
    converted: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in strip_prefixes(state_dict).items():
        new, head = _map_key(key)
        if new is None or (head is not None and heads is not None and head not in heads):
            dropped.append(key)
            continue
        if new in converted:
            raise CheckpointError(f"two keys of the original checkpoint map to {new}")
        converted[new] = value
    return converted, dropped


def summarize_keys(keys: Iterable[str], limit: int = 12, depth: int = 3) -> str:
    """Keys grouped by their first ``depth`` name parts with layer indices collapsed (``backbones.RGB.blocks.*
    (144 keys)``; a group of one shows the key itself), at most ``limit`` groups."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(".".join(re.sub(r"^\d+$", "*", p) for p in key.split(".")[:depth]), []).append(key)
    items = [ks[0] if len(ks) == 1 else f"{g}.* ({len(ks)} keys)" for g, ks in groups.items()]
    more = f", ... and {len(items) - limit} more groups" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _unwrap(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
    if "model" in obj and isinstance(obj["model"], Mapping) and (obj.get("format") == FORMAT or "format" not in obj):
        obj = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{name}: not a model state_dict (non-tensor entries: {summarize_keys(bad, 5)})")
    return dict(obj)


def load_model_weights(model: nn.Module, state_dict_or_path: str | os.PathLike | Mapping[str, Any], log: bool = True,
                       source: str | None = None) -> list[str]:
    """Load weights into ``model`` strictly and return the original keys dropped as unused.

    Accepts a path (read with :func:`utils.checkpoint.safe_load`) or an already loaded object: this project's
    checkpoint ``{"format": "topreid", "model": state_dict, ...}``, a bare state_dict in this project's layout, or
    a state_dict of the original TOP-ReID code (with or without ``module.``). ``source`` names the file in messages
    when an object is given. Raises :class:`CheckpointError` naming the file and listing missing, unexpected and
    shape-mismatched keys when the weights do not fit the model.
    """
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        name = os.fspath(state_dict_or_path)
        obj = safe_load(name)
    else:
        name = source or "<state_dict>"
        obj = state_dict_or_path
    state = strip_prefixes(_unwrap(obj, name))
    dropped: list[str] = []
    original = is_original_layout(state)
    if original:
        heads = model.heads.keys() if isinstance(getattr(model, "heads", None), nn.ModuleDict) else None
        state, dropped = convert_original_state_dict(state, heads)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (file {list(state[k].shape)}, model {list(v.shape)})" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)}: {summarize_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)}: {summarize_keys(unexpected)}")
        if mismatched:
            more = f", ... and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""
            problems.append(f"shape mismatch {len(mismatched)}: {', '.join(mismatched[:5])}{more}")
        layout = "original TOP-ReID layout" if original else "this project's layout"
        raise CheckpointError(f"{name}: the weights ({layout}) do not fit the model built from the config (another "
                              f"backbone, spectra or head setting?); " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    if log:
        note = f"; dropped {len(dropped)} unused keys of the original layout: {summarize_keys(dropped)}" \
            if dropped else ""
        logger.info("loaded %d tensors from %s (%s)%s", len(state), name,
                    "original TOP-ReID layout" if original else "project layout", note)
    return dropped
