"""export_onnx: the exported feature extractor agrees with PyTorch on real test images (checked here with
onnxruntime, independently of the tool's own check)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from configs import load_config
from tests.helpers import tool_opts
from tools import export_onnx
from utils.spectra import missing_spectra

pytestmark = pytest.mark.slow  # both tests export the model of a trained checkpoint


@pytest.mark.parametrize("setting", ["nothing", "rt"])
def test_onnx_features_match_pytorch(vit_tiny_run, demo_root, tmp_path, setting):
    from data.build import build_dataloader
    from modeling import build_model
    from modeling.checkpoint import load_model_weights

    path = tmp_path / f"model_{setting}.onnx"
    opts = tool_opts(vit_tiny_run, demo_root, tmp_path, **{"TEST.MISS": setting})  # vit_tiny: 3 x 192 features
    assert export_onnx.main([*opts, "--output", str(path), "--check-images", "5"]) == 0
    report = json.loads((tmp_path / f"model_{setting}.json").read_text())
    assert report["max_abs_diff"] < 1e-4 and report["check_images"] == 5

    cfg = load_config(None, opts)
    data = build_dataloader(cfg)
    model = build_model(cfg, data.num_classes, data.num_cameras)
    load_model_weights(model, cfg.TEST.WEIGHT)
    model.eval()
    batch = next(iter(data.test_loader))
    images = {s: x[-11:] for s, x in batch["images"].items()}  # 11 images, not those of the tool's check
    cams = batch["camid"][-11:]
    missing = missing_spectra(setting)
    with torch.no_grad():
        expected = model(images, cams, missing).numpy()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    available = [s for s in ("RGB", "NI", "TI") if s not in missing]
    assert names == [*available, "camids"]  # the demo model has a camera embedding
    feed = {**{s: images[s].numpy() for s in available}, "camids": cams.numpy()}
    got = session.run(["feature"], {n: feed[n] for n in names})[0]
    assert got.shape == expected.shape == (11, 3 * 192)
    assert np.abs(got - expected).max() < 1e-4
    # the graph depends on its inputs: another camera changes the feature
    feed["camids"] = (cams.numpy() + 1) % data.num_cameras
    changed = session.run(["feature"], {n: feed[n] for n in names})[0]
    assert np.abs(changed - got).max() > 1e-3


def test_check_failure_is_reported(trained_run, demo_root, tmp_path, capsys, monkeypatch):
    """A graph whose features stray beyond --atol fails the tool with one error line naming the difference."""
    run_onnx = export_onnx.onnx_features

    def off_by(path, inputs):
        features, names = run_onnx(path, inputs)
        return features + 1e-3, names

    monkeypatch.setattr(export_onnx, "onnx_features", off_by)
    assert export_onnx.main([*tool_opts(trained_run, demo_root, tmp_path), "--check-images", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "differ by up to 1.0" in err[0]
    assert json.loads((tmp_path / "topreid_nothing.json").read_text())["max_abs_diff"] > 1e-4
