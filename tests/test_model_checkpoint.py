"""One checkpoint shape: payloads record sizes and architecture, model_from_checkpoint builds from them, older
checkpoints (no sizes recorded), bare state_dicts and original-layout files still load, a config of another
architecture is refused naming the key."""

from __future__ import annotations

import pytest
import torch

from configs import load_config
from modeling import build_model
from modeling.checkpoint import ARCH_KEYS, model_from_checkpoint, model_payload
from utils.checkpoint import FORMAT, CheckpointError, IncompatibleKeys, save_checkpoint, unwrap_state_dict

OPTS = ["MODEL.TRANSFORMER_TYPE", "vit_tiny_patch16_224", "MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu",
        "INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]"]


def _cfg(*extra: str):
    return load_config(None, [*OPTS, *extra])


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_payload_records_sizes_and_architecture(tmp_path):
    cfg = _cfg()
    model = build_model(cfg, num_classes=7, camera_num=5)
    payload = model_payload(model, cfg, 7, 5, epoch=3)
    assert payload["format"] == FORMAT and payload["num_classes"] == 7 and payload["num_cameras"] == 5
    assert set(payload["arch"]) == set(ARCH_KEYS) and payload["epoch"] == 3
    save_checkpoint(str(tmp_path / "m.pth"), payload)
    loaded = model_from_checkpoint(cfg, str(tmp_path / "m.pth"))
    assert (loaded.num_classes, loaded.num_cameras) == (7, 5) and not loaded.model.training
    _same_weights(loaded.model, model)


def test_checkpoints_without_recorded_sizes_still_load(tmp_path):
    """The payload written before sizes were recorded ({"format", "model", "epoch", "config"}) and a bare
    state_dict: the sizes are read from the classifier and camera-embedding rows."""
    cfg = _cfg()
    model = build_model(cfg, num_classes=6, camera_num=3)
    old = {"format": FORMAT, "model": model.state_dict(), "epoch": 2, "config": cfg.dump()}
    save_checkpoint(str(tmp_path / "old.pth"), old)
    save_checkpoint(str(tmp_path / "bare.pth"), {f"module.{k}": v for k, v in model.state_dict().items()})
    for name in ("old.pth", "bare.pth"):
        loaded = model_from_checkpoint(cfg, str(tmp_path / name))
        assert (loaded.num_classes, loaded.num_cameras) == (6, 3), name
        _same_weights(loaded.model, model)


@pytest.mark.parametrize("key, value", [("MODEL.RE", "False"), ("MODEL.TPM_HEADS", "4"),
                                        ("MODEL.TRANSFORMER_TYPE", "vit_small_patch16_224")])
def test_config_of_another_architecture_is_refused_naming_the_key(tmp_path, key, value):
    cfg = _cfg()
    model = build_model(cfg, num_classes=4, camera_num=2)
    path = tmp_path / "m.pth"
    save_checkpoint(str(path), model_payload(model, cfg, 4, 2))
    with pytest.raises(CheckpointError, match=rf"m\.pth.*{key}"):
        model_from_checkpoint(_cfg(key, value), str(path))


def test_unwrap_state_dict_and_incompatible_keys():
    weights = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(2)}
    assert unwrap_state_dict({"format": FORMAT, "model": weights}, "x.pth").keys() == weights.keys()
    assert unwrap_state_dict({"state_dict": {"module.a.weight": weights["a.weight"]}}, "x.pth").keys() == {"a.weight"}
    with pytest.raises(CheckpointError, match="x.pth.*non-tensor"):
        unwrap_state_dict({"a.weight": weights["a.weight"], "epoch": 3}, "x.pth")
    assert unwrap_state_dict({"a.weight": weights["a.weight"], "epoch": 3}, "x.pth", tensors_only=True).keys() == \
        {"a.weight"}
    with pytest.raises(CheckpointError, match="x.pth: holds no model weights"):
        unwrap_state_dict({"epoch": 3}, "x.pth", tensors_only=True)
    keys = IncompatibleKeys.compare({"a.weight": torch.zeros(2, 3), "c.weight": torch.zeros(1)},
                                    {"a.weight": torch.zeros(3, 3), "d.weight": torch.zeros(1)})
    assert keys.missing == ["c.weight"] and keys.unexpected == ["d.weight"]
    assert keys.mismatched == ["a.weight (file [3, 3], model [2, 3])"]
    assert "missing 1: c.weight" in keys.report() and "unexpected 1: d.weight" in keys.report()
    assert "unexpected" not in keys.report(unexpected=False)
    assert IncompatibleKeys.compare(weights, weights).report() == ""
