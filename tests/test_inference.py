"""Fast paths give the plain results: one-pass settings with shared CRM reconstructions, activation checkpointing."""

import pytest
import torch

from configs import load_config
from modeling import build_model
from utils.spectra import MISS_SETTINGS, missing_spectra

OPTS = ["MODEL.TRANSFORMER_TYPE", "vit_tiny_patch16_224", "MODEL.PRETRAIN_CHOICE", "none", "INPUT.SIZE_TRAIN",
        "[64,32]", "INPUT.SIZE_TEST", "[64,32]", "MODEL.DROP_PATH", "0.0"]


def _model(*extra):
    torch.manual_seed(0)
    return build_model(load_config(None, OPTS + list(extra)), num_classes=5, camera_num=2)


def _inputs(batch=4):
    g = torch.Generator().manual_seed(1)
    images = {s: torch.randn(batch, 3, 64, 32, generator=g) for s in ("RGB", "NI", "TI")}
    return images, torch.arange(batch) % 2


def test_one_pass_settings_equal_separate_forwards():
    model = _model().eval()
    images, cams = _inputs()
    with torch.no_grad():
        tokens = model.backbone_tokens(images, cams)
        cache: dict = {}
        for setting in MISS_SETTINGS:
            missing = missing_spectra(setting)
            shared = model.features_from_tokens({s: t for s, t in tokens.items() if s not in missing}, missing, cache)
            separate = model(images, cams, missing=missing)
            torch.testing.assert_close(shared, separate, rtol=0, atol=1e-6)
    assert len(cache) == 6  # each reconstructor ran once for the seven settings


def test_activation_checkpointing_gives_the_same_outputs_and_gradients():
    images, cams = _inputs(8)
    results = []
    for flag in ("False", "True"):
        model = _model("MODEL.GRAD_CHECKPOINT", flag).train()
        out = model(images, cams)
        loss = sum(f.pow(2).mean() + lg.logsumexp(1).mean() for lg, f in out["heads"].values()) + out["losses"]["crm"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out["heads"]["tpm"][1].detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-5)
    assert results[0][1].keys() == results[1][1].keys()
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow  # torch.compile builds C++ kernels: minutes on a loaded 2-core machine
def test_compiled_model_gives_the_same_features():
    """MODEL.COMPILE wraps the model in torch.compile; its features must equal eager ones (CPU, within 1e-5)."""
    model = _model().eval()
    images, cams = _inputs()
    with torch.no_grad():
        eager = model(images, cams)
        compiled = torch.compile(model)(images, cams)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
