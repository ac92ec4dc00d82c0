"""The project's model computes what the original TOP-ReID code computes (tests/data/reference, see its README):
the original checkpoint layout is loaded through the project's own conversion (``load_model_weights``), then eval
features for the seven missing-spectrum settings and the per-head training losses are compared with the vectors
the original code produced, for the three backbones of the paper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs.config import load_config
from modeling import TOPReID, build_model
from modeling.checkpoint import load_model_weights
from tests.helpers import load_reference_weights
from utils.spectra import MISS_SETTINGS, missing_spectra

REFERENCE = Path(__file__).parent / "data" / "reference"
BACKBONES = ("vit_base_patch16_224", "deit_small_patch16_224", "t2t_vit_t_24")

pytestmark = pytest.mark.slow  # full-size backbones against the reference vectors


REF = load_reference_weights(REFERENCE)


def id_loss(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> float:
    """Label-smoothed cross entropy: targets (1 - eps) one-hot + eps / classes, averaged over the batch."""
    log_probs = logits.double().log_softmax(1)
    targets = torch.full_like(log_probs, epsilon / logits.shape[1])
    targets[torch.arange(len(labels)), labels] += 1 - epsilon
    return float((-targets * log_probs).sum(1).mean())


def triplet_loss(feat: torch.Tensor, labels: torch.Tensor) -> float:
    """Soft-margin batch-hard triplet on euclidean distances of the un-normalised feature."""
    f = feat.double()
    d2 = (f * f).sum(1, keepdim=True) + (f * f).sum(1) - 2 * f @ f.t()
    dist = d2.clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    hardest_pos = dist.masked_fill(~same, -np.inf).amax(1)
    hardest_neg = dist.masked_fill(same, np.inf).amin(1)
    return float(F.softplus(hardest_pos - hardest_neg).mean())


def build(backbone: str) -> tuple[TOPReID, dict, dict, list[str]]:
    """The DIRECT True model of the reference setting, loaded from the reference weights in the original layout."""
    cfg = load_config(None, ["MODEL.TRANSFORMER_TYPE", backbone, "MODEL.PRETRAIN_CHOICE", "none",
                             "MODEL.DIRECT", "True", "MODEL.STRIDE_SIZE", "[16,16]", "MODEL.SIE_CAMERA", "True",
                             "MODEL.RE", "True", "MODEL.RE_LAYER", "1", "MODEL.DROP_PATH", "0.0",
                             "MODEL.DROP_OUT", "0.0", "MODEL.ATT_DROP_RATE", "0.0", "INPUT.SIZE_TRAIN", "[256,128]",
                             "TEST.NECK_FEAT", "before"])
    model = build_model(cfg, num_classes=171, camera_num=4)
    manifest = json.loads((REFERENCE / "manifests" / f"topreid_{backbone}.json").read_text())
    state = REF.reference_state_dict(manifest, seed=0)
    dropped = load_model_weights(model, state, log=False)
    return model, manifest, state, dropped


@pytest.fixture(scope="module", params=BACKBONES)
def reference(request):
    backbone = request.param
    model, manifest, state, dropped = build(backbone)
    return model, manifest, state, dropped, np.load(REFERENCE / f"expected_{backbone}.npz")


def test_original_keys_dropped_are_the_unused_ones(reference):
    _, manifest, _, dropped, _ = reference
    unused_backbone = {k for k in manifest if ".base.fc." in k or ".base.head." in k}
    spectrum_heads = {k for k in manifest if k.split(".")[0] in ("RGB", "NI", "TI")
                      and k.split(".")[1] in ("classifier", "bottleneck")}
    assert unused_backbone and spectrum_heads
    assert set(dropped) == unused_backbone | spectrum_heads


def test_eval_features_all_missing_settings(reference):
    model, _, _, _, expected = reference
    model.eval()
    images, cams = REF.reference_inputs(2)
    assert cams.tolist() == [0, 1]
    with torch.no_grad():
        tokens = model.backbone_tokens(images, cams)
        for setting in MISS_SETTINGS:
            feat = model.features_from_tokens(tokens, missing_spectra(setting)).numpy()
            want = expected[f"eval_feat_{setting}"]
            assert feat.shape == want.shape == (2, model.feat_dim)
            np.testing.assert_allclose(feat, want, rtol=0, atol=1e-4, err_msg=f"setting {setting}")
        # The single-call eval forward (which skips the missing backbones) gives the same features.
        for setting in ("nothing", "rt"):
            feat = model(images, cams, missing=missing_spectra(setting)).numpy()
            np.testing.assert_allclose(feat, expected[f"eval_feat_{setting}"], rtol=0, atol=1e-4)


def _check_train_losses(model, expected, direct: bool) -> None:
    images, _ = REF.reference_inputs(8, seed=7)
    cams = torch.arange(8) % 4
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    model.train()
    with torch.no_grad():
        out = model(images, cams)
    names = ["tpm", "concat"] if direct else ["tpm", "RGB", "NI", "TI"]
    assert list(out["heads"]) == names
    ids = np.array([id_loss(logits, labels) for logits, _ in out["heads"].values()])
    triplets = np.array([triplet_loss(feat, labels) for _, feat in out["heads"].values()])
    crm = float(out["losses"]["crm"])
    key = f"train_direct{int(direct)}"
    np.testing.assert_allclose(ids, expected[f"{key}_id_losses"], rtol=1e-4, atol=0)
    np.testing.assert_allclose(triplets, expected[f"{key}_triplet_losses"], rtol=1e-4, atol=0)
    np.testing.assert_allclose(crm, expected[f"{key}_crm_loss"], rtol=1e-4, atol=0)
    np.testing.assert_allclose(ids.sum() + triplets.sum() + crm, expected[f"{key}_total_loss"], rtol=1e-4, atol=0)


def test_train_losses_direct(reference):
    model, _, _, _, expected = reference
    _check_train_losses(model, expected, direct=True)


def test_train_losses_per_spectrum_heads(reference):
    direct_model, manifest, state, _, expected = reference
    # Same backbones (to save building them again), new TPM/CRM/heads; everything is loaded from the original layout.
    model = TOPReID(dict(direct_model.backbones), 171, direct=False, crm_depth=1)
    dropped = load_model_weights(model, state, log=False)
    concat_head = {k for k in manifest if k.startswith(("classifier_ViT.", "bottleneck_ViT."))}
    assert concat_head <= set(dropped)
    assert not any(k.startswith(("RGB.classifier", "NI.bottleneck", "classifier_TPM")) for k in dropped)
    _check_train_losses(model, expected, direct=False)
