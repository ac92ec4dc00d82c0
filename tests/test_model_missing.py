"""Missing-spectrum evaluation: backbones of missing spectra are not run, unknown names raise, CRM completes the
missing tokens, and models without CRM leave the missing spectrum out (zeros in its slot)."""

from __future__ import annotations

import pytest
import torch

from modeling import TOPReID
from modeling.backbones import build_backbone
from utils.spectra import MISS_SETTINGS, missing_spectra

SIZE = (64, 32)
CAMS = torch.tensor([0, 1, 0])


def tiny_model(spectra=("RGB", "NI", "TI"), seed: int = 0, **kwargs) -> TOPReID:
    torch.manual_seed(seed)
    backbones = {s: build_backbone("vit_tiny_patch16_224", SIZE, num_cameras=2) for s in spectra}
    return TOPReID(backbones, 5, **kwargs).eval()


def images(spectra=("RGB", "NI", "TI")) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {s: torch.randn(3, 3, *SIZE) for s in spectra}


def count_calls(model: TOPReID) -> dict[str, int]:
    calls = dict.fromkeys(model.spectra, 0)
    for s, backbone in model.backbones.items():
        backbone.register_forward_hook(lambda *_, s=s: calls.__setitem__(s, calls[s] + 1))
    return calls


@pytest.mark.parametrize("setting", MISS_SETTINGS)
def test_missing_backbones_are_not_run(setting):
    model = tiny_model()
    calls = count_calls(model)
    missing = missing_spectra(setting)
    with torch.no_grad():
        feat = model(images(), CAMS, missing=missing)
    assert feat.shape == (3, model.feat_dim)
    assert calls == {s: int(s not in missing) for s in model.spectra}
    # Images of missing spectra need not be given at all.
    with torch.no_grad():
        again = model({s: x for s, x in images().items() if s not in missing}, CAMS, missing=missing)
    torch.testing.assert_close(feat, again, rtol=0, atol=0)


def test_eval_forward_is_tokens_then_features():
    model = tiny_model()
    with torch.no_grad():
        tokens = model.backbone_tokens(images(), CAMS)
        assert {s: t.shape for s, t in tokens.items()} == dict.fromkeys(model.spectra, (3, 1 + 4 * 2, 192))
        for setting in ("nothing", "n", "rt"):
            m = missing_spectra(setting)
            torch.testing.assert_close(model(images(), CAMS, missing=m), model.features_from_tokens(tokens, m),
                                       rtol=0, atol=0)


def test_unknown_or_impossible_missing_settings_raise():
    model = tiny_model()
    with torch.no_grad():
        with pytest.raises(ValueError, match="unknown spectra"):
            model(images(), CAMS, missing={"IR"})
        tokens = model.backbone_tokens(images(), CAMS)
        with pytest.raises(ValueError, match="unknown spectra"):
            model.features_from_tokens(tokens, {"rgb"})
        with pytest.raises(ValueError, match="every spectrum"):
            model(images(), CAMS, missing={"RGB", "NI", "TI"})
        with pytest.raises(ValueError, match="no tokens"):
            model.features_from_tokens({"RGB": tokens["RGB"]}, {"NI"})
        with pytest.raises(ValueError, match="unknown spectra"):
            model.backbone_tokens({"RGB": images()["RGB"], "depth": images()["NI"]}, CAMS)
    model.train()
    with pytest.raises(ValueError, match="evaluation setting"):
        model(images(), CAMS, missing={"RGB"})


def test_crm_fills_a_missing_spectrum_with_the_mean_of_its_reconstructions():
    model = tiny_model()
    with torch.no_grad():
        tokens = model.backbone_tokens(images(), CAMS)
        recon = model.crm.recon
        one = {"RGB": tokens["RGB"], "TI": tokens["TI"],
               "NI": (recon["RGB"]["NI"](tokens["RGB"]) + recon["TI"]["NI"](tokens["TI"])) / 2}
        torch.testing.assert_close(model.features_from_tokens(tokens, {"NI"}), model.tpm(one), rtol=1e-5, atol=1e-5)
        two = {"TI": tokens["TI"], "RGB": recon["TI"]["RGB"](tokens["TI"]), "NI": recon["TI"]["NI"](tokens["TI"])}
        torch.testing.assert_close(model.features_from_tokens(tokens, {"RGB", "NI"}), model.tpm(two))


def test_tpm_without_crm_leaves_the_missing_spectrum_out():
    """RE off: with NI missing, the RGB and TI slots are what a two-spectrum (RGB, TI) model with the same weights
    computes, and the NI slot is zeros."""
    full = tiny_model(use_crm=False)
    pair = TOPReID({s: full.backbones[s] for s in ("RGB", "TI")}, 5, use_crm=False).eval()
    pair.tpm.load_state_dict(full.tpm.state_dict())
    with torch.no_grad():
        feat = full(images(), CAMS, missing={"NI"})
        want = pair(images(), CAMS)
    rgb, ni, ti = feat.split(192, dim=1)
    assert torch.count_nonzero(ni) == 0
    torch.testing.assert_close(torch.cat([rgb, ti], dim=1), want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        only_ti = full(images(), CAMS, missing={"RGB", "NI"})
    assert torch.count_nonzero(only_ti[:, :384]) == 0 and torch.count_nonzero(only_ti[:, 384:]) > 0


@pytest.mark.parametrize("direct", [True, False])
def test_baseline_zeros_the_missing_cls(direct):
    model = tiny_model(base=True, direct=direct)
    with torch.no_grad():
        tokens = model.backbone_tokens(images(), CAMS)
        feat = model(images(), CAMS, missing={"RGB", "TI"})
        full = model(images(), CAMS)
    torch.testing.assert_close(full, torch.cat([tokens[s][:, 0] for s in model.spectra], dim=1))
    torch.testing.assert_close(feat, torch.cat([torch.zeros(3, 192), tokens["NI"][:, 0], torch.zeros(3, 192)], 1))


@pytest.mark.parametrize("kwargs", [{}, {"use_crm": False}, {"base": True}, {"base": True, "direct": False}])
def test_after_neck_feature(kwargs):
    model = tiny_model(neck_feat="after", **kwargs)
    before = tiny_model(neck_feat="before", **kwargs)
    with torch.no_grad():
        for m in model.heads.values():  # non-trivial running statistics
            m.bottleneck.running_mean.uniform_(-1, 1)
            m.bottleneck.running_var.uniform_(0.5, 2)
        before.load_state_dict(model.state_dict())
        feat = model(images(), CAMS)
        raw = before(images(), CAMS)
        if "tpm" in model.heads:
            want = model.heads["tpm"].neck(raw)
        elif "concat" in model.heads:
            want = model.heads["concat"].neck(raw)
        else:
            want = torch.cat([model.heads[s].neck(p) for s, p in zip(model.spectra, raw.split(192, 1))], 1)
        torch.testing.assert_close(feat, want)
        assert not torch.allclose(feat, raw)
        partial = model(images(), CAMS, missing={"TI"})
    if model.crm is None:
        assert torch.count_nonzero(partial[:, 384:]) == 0
