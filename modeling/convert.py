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

import re
from collections.abc import Collection, Mapping
from typing import Any

from utils.checkpoint import CheckpointError, strip_prefixes
from utils.spectra import SPECTRA

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
