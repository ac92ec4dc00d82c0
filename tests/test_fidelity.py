"""Fidelity to the original code: fp32 evaluation unless TEST.AMP, the original's epoch rule of the P x K sampler,
CRM targets not detached, the BNNeck head's initialisation, MSVR310's scene junk, compile, DDP, NaN stop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from configs import load_config
from processor import hooks as hooks_module
from processor.hooks import EvalHook
from processor.inference import eval_amp
from processor.predictor import Predictor

CUDA = torch.device("cuda")  # a device object only: nothing is allocated on it


class _Stop(Exception):
    pass


class _StaysPut(nn.Module):
    """A model whose ``.to`` does nothing, so a Predictor can be built for a CUDA device on a CPU-only machine."""

    spectra = ("RGB",)

    def to(self, *args, **kwargs):
        return self


@pytest.mark.parametrize(("solver_amp", "test_amp"), [(True, False), (False, True), (True, True), (False, False)])
def test_test_amp_alone_decides_autocast_in_evaluation(solver_amp, test_amp, monkeypatch):
    cfg = load_config(None, ["SOLVER.AMP", str(solver_amp), "TEST.AMP", str(test_amp), "MODEL.DEVICE", "cpu"])
    assert eval_amp(cfg, CUDA) is test_amp
    assert eval_amp(cfg, torch.device("cpu")) is False
    assert Predictor(_StaysPut(), cfg, CUDA).amp is test_amp
    assert Predictor(_StaysPut(), cfg, torch.device("cpu")).amp is False

    seen = {}

    def fake_extract(model, loader, device, settings, amp=False, amp_dtype=None):
        seen["amp"] = amp
        raise _Stop

    monkeypatch.setattr(hooks_module, "extract_features", fake_extract)
    hook = EvalHook(1)
    hook.trainer = SimpleNamespace(cfg=cfg, device=CUDA, model=None, data=SimpleNamespace(test_loader=None),
                                   settings=["nothing"], amp=solver_amp, amp_dtype=torch.float16, main=True)
    with pytest.raises(_Stop):
        hook.evaluate()
    assert seen["amp"] is test_amp


def test_test_amp_defaults_to_fp32():
    assert load_config(None, []).TEST.AMP is False
