"""The backbone registry: a family is one factory and one registration; config validation and the model use it."""

import pytest
import torch

from configs import ConfigError, load_config
from modeling import build_model
from modeling.backbones import build_backbone, is_known_backbone, register_backbone, unregister_backbone
from tests.helpers import register_toy_backbone


def test_registered_toy_backbone_builds_validates_and_runs():
    name = register_toy_backbone()
    assert is_known_backbone(name)
    backbone = build_backbone(name, (64, 32), num_cameras=3)
    assert backbone.name == name and len(backbone.blocks) == 2 and backbone.embed_dim == 96
    tokens = backbone(torch.randn(2, 3, 64, 32), torch.tensor([0, 2]))
    assert tokens.shape == (2, 1 + 4 * 2, 96)
    cfg = load_config(None, ["MODEL.TRANSFORMER_TYPE", name, "MODEL.PRETRAIN_CHOICE", "none",
                             "INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]"])
    model = build_model(cfg, num_classes=5, camera_num=3)
    assert model.backbones["RGB"].name == name


def test_unregistered_name_is_a_config_error():
    @register_backbone("toy_tmp_backbone")
    def build(name, img_size, **options):  # pragma: no cover - never built
        raise AssertionError

    assert is_known_backbone("toy_tmp_backbone")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("toy_tmp_backbone")(build)
    unregister_backbone("toy_tmp_backbone")
    with pytest.raises(ConfigError, match="MODEL.TRANSFORMER_TYPE"):
        load_config(None, ["MODEL.TRANSFORMER_TYPE", "toy_tmp_backbone"])
