"""SOLVER.BACKBONE_LR_FACTOR: the backbone's groups, their log, and their rate at every epoch of the schedule."""

from __future__ import annotations

import logging
import math

import pytest

from configs import load_config
from modeling import build_model
from solver import build_optimizer, build_scheduler
from tests.helpers import register_toy_backbone

BASE, FACTOR, BIAS, WARMUP, EPOCHS = 0.01, 0.01, 2.0, 3, 8
WARMUP_FACTOR, MIN_FACTOR = 0.01, 0.001


def expected_lr(epoch: int, group_lr: float, scale: float) -> float:
    """The schedule written out (see solver/scheduler.py): linear warm-up from WARMUP_FACTOR x BASE, then a cosine
    over EPOCHS from epoch 0 down to MIN_FACTOR x BASE, for a group starting at ``group_lr``; times ``scale``."""
    start, floor = WARMUP_FACTOR * BASE, MIN_FACTOR * BASE
    if epoch < WARMUP:
        lr = start + epoch / WARMUP * (group_lr - start)
    elif epoch < EPOCHS:
        lr = floor + (group_lr - floor) * (1 + math.cos(math.pi * epoch / EPOCHS)) / 2
    else:
        lr = floor
    return scale * lr


def _cfg(factor: float):
    return load_config(None, [
        "MODEL.TRANSFORMER_TYPE", register_toy_backbone(), "MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu",
        "INPUT.SIZE_TRAIN", "[32,16]", "INPUT.SIZE_TEST", "[32,16]", "SOLVER.BASE_LR", str(BASE),
        "SOLVER.BIAS_LR_FACTOR", str(BIAS), "SOLVER.WEIGHT_DECAY", "1e-4", "SOLVER.WEIGHT_DECAY_BIAS", "5e-4",
        "SOLVER.WARMUP_ITERS", str(WARMUP), "SOLVER.MAX_EPOCHS", str(EPOCHS), "SOLVER.WARMUP_FACTOR",
        str(WARMUP_FACTOR), "SOLVER.MIN_LR_FACTOR", str(MIN_FACTOR), "SOLVER.BACKBONE_LR_FACTOR", str(factor)])


def test_backbone_factor_groups_log_and_schedule(caplog):
    cfg = _cfg(FACTOR)
    model = build_model(cfg, num_classes=5, camera_num=2)
    with caplog.at_level(logging.INFO, logger="solver.optimizer"):
        optimizer = build_optimizer(cfg, model)
    groups = {g["name"]: g for g in optimizer.param_groups}
    # BNNeck biases are frozen and classifiers have none: the heads have no bias group
    assert list(groups) == ["backbones weights", "backbones biases", "tpm+crm+heads weights", "tpm+crm biases"]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, group in groups.items():
        backbone = name.startswith("backbones")
        assert all(n.startswith("backbones.") == backbone for n in group["param_names"])
        assert all(("bias" in n) == name.endswith("biases") for n in group["param_names"])
    assert sum(len(g["params"]) for g in groups.values()) == len(trainable)
    log = caplog.records[-1].getMessage()
    for name, group in groups.items():
        count = sum(p.numel() for p in group["params"])
        line = (f"{name}: {len(group['params'])} tensors, {count:,} parameters, lr {group['lr']:.2e}, "
                f"weight decay {group['weight_decay']:.1e}")
        assert line in log, line
    assert "backbones weights: " in log and "lr 1.00e-04, weight decay 1.0e-04" in log
    assert "backbones biases: " in log and "lr 2.00e-04, weight decay 5.0e-04" in log
    assert "tpm+crm+heads weights: " in log and "lr 1.00e-02, weight decay 1.0e-04" in log
    assert "tpm+crm biases: " in log and "lr 2.00e-02, weight decay 5.0e-04" in log

    scheduler = build_scheduler(cfg, optimizer)
    setting = {"backbones weights": (BASE, FACTOR), "backbones biases": (BASE * BIAS, FACTOR),
               "tpm+crm+heads weights": (BASE, 1.0), "tpm+crm biases": (BASE * BIAS, 1.0)}
    for epoch in range(EPOCHS + 2):
        scheduler.step(epoch)
        for name, (group_lr, scale) in setting.items():
            assert groups[name]["lr"] == pytest.approx(expected_lr(epoch, group_lr, scale), rel=1e-12, abs=0), \
                (epoch, name)
    # the backbone's warm-up starts and its cosine ends at the factor times the others' (not at theirs)
    scheduler.step(0)
    assert groups["backbones weights"]["lr"] == pytest.approx(FACTOR * groups["tpm+crm+heads weights"]["lr"])


def test_factor_one_keeps_the_two_merged_groups():
    cfg = _cfg(1.0)
    optimizer = build_optimizer(cfg, build_model(cfg, num_classes=5, camera_num=2))
    assert [g["name"] for g in optimizer.param_groups] == ["backbones+tpm+crm+heads weights",
                                                          "backbones+tpm+crm biases"]
    assert [g["lr"] for g in optimizer.param_groups] == [BASE, BASE * BIAS]
