"""DeMo's optimiser (Adam, per-parameter lr rule with a backbone lr) and its noisy warm-up + cosine schedule, against
the original's values in ../shared/reference/expected_demo_{clip,vit}.npz."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from configs.defaults import get_cfg_defaults
from solver import NoisyCosineLR, build_optimizer, build_scheduler, param_groups

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
BACKBONES = ("clip", "vit")
# configs/RGBNT201/DeMo.yml of the original, with the values its code hard-codes (warm-up start 0.1 x BASE_LR, floor
# 0.001 x BASE_LR, backbone lr 5e-6 for CLIP and 0.8 x BASE_LR for an ImageNet ViT, replacing the bias factor)
DEMO = {"BASE_LR": 3.5e-4, "WARMUP_ITERS": 10, "MAX_EPOCHS": 50, "WARMUP_FACTOR": 0.1, "MIN_LR_FACTOR": 0.001,
        "BIAS_LR_FACTOR": 2.0, "WEIGHT_DECAY": 1e-4, "WEIGHT_DECAY_BIAS": 1e-4, "OPTIMIZER_NAME": "Adam",
        "SCHEDULER": "demo", "BIAS_LR_FACTOR_IN_BACKBONE": False}
BACKBONE_LR = {"clip": {"BACKBONE_LR": 5e-6}, "vit": {"BACKBONE_LR_FACTOR": 0.8}}
REL = 1e-9


def reference(backbone: str) -> dict[str, np.ndarray]:
    path = REFERENCE / f"expected_demo_{backbone}.npz"
    if not path.exists():
        pytest.skip(f"{path} is not there")
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files if key.startswith(("optim_", "sched_"))}


def solver_cfg(**solver):
    cfg = get_cfg_defaults()
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def demo_cfg(backbone: str):
    return solver_cfg(**DEMO, **BACKBONE_LR[backbone])


class NamedStandIn(nn.Module):
    """A module whose ``named_parameters()`` are exactly ``names`` (one-element tensors, nested modules), declaring
    its backbone as the parameters under ``backbone_prefix``."""

    def __init__(self, names: list[str], backbone_prefix: str) -> None:
        super().__init__()
        self.backbone_prefix = backbone_prefix
        for name in names:
            *path, leaf = name.split(".")
            module: nn.Module = self
            for part in path:
                if part not in module._modules:
                    module.add_module(part, nn.Module())
                module = module._modules[part]
            module.register_parameter(leaf, nn.Parameter(torch.zeros(1)))


def rel_diff(actual: float, expected: float) -> float:
    return abs(actual - expected) / abs(expected)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_demo_schedule_matches_original(backbone):
    ref = reference(backbone)
    base_lrs = ref["sched_base_lr"].tolist()
    params = [nn.Parameter(torch.zeros(1)) for _ in base_lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, base_lrs)], lr=1.0)
    scheduler = build_scheduler(demo_cfg(backbone), optimizer)
    assert isinstance(scheduler, NoisyCosineLR)
    worst = 0.0
    for epoch in range(1, DEMO["MAX_EPOCHS"] + 1):
        scheduler.step(epoch)
        # the references hold the noise as float64 arithmetic gives it back (1 ulp from the float32 draw)
        assert scheduler.noise(epoch) == pytest.approx(ref["sched_noise"][epoch - 1], rel=REL, abs=1e-15), epoch
        for group, expected in zip(optimizer.param_groups, ref["sched_lr"][epoch - 1].tolist()):
            worst = max(worst, rel_diff(group["lr"], expected))
    assert worst < REL
    # bug 2: noise of up to +-67% until the last epoch, which puts every group at the floor
    assert abs(ref["sched_noise"][:-1]).max() > 0.6
    assert [g["lr"] for g in optimizer.param_groups] == [DEMO["MIN_LR_FACTOR"] * DEMO["BASE_LR"]] * len(base_lrs)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_demo_optimizer_groups_match_original(backbone):
    ref = reference(backbone)
    names = ref["optim_keys"].tolist()
    model = NamedStandIn(names, backbone_prefix="BACKBONE.base.")
    assert [n for n, _ in model.named_parameters()] == names
    cfg = demo_cfg(backbone)
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer) is torch.optim.Adam
    assert all(g["foreach"] and not g["amsgrad"] and g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8
               for g in optimizer.param_groups)
    by_name = {n: g for g in optimizer.param_groups for n in g["param_names"]}
    assert sorted(by_name) == sorted(names)
    assert all(len(g["param_names"]) == len(g["params"]) and g["name"] for g in optimizer.param_groups)
    for name, lr, decay in zip(names, ref["optim_lr"].tolist(), ref["optim_weight_decay"].tolist()):
        assert rel_diff(by_name[name]["lr"], lr) < REL, name
        assert rel_diff(by_name[name]["weight_decay"], decay) < REL, name
    if backbone == "clip":  # bug 3: the camera embedding is outside the backbone's "base", at BASE_LR
        assert by_name["BACKBONE.cv_embed"]["lr"] == DEMO["BASE_LR"]
        assert by_name["BACKBONE.base.conv1.weight"]["lr"] == 5e-6
    # the backbone's biases at the backbone's lr, not BIAS_LR_FACTOR times it
    backbone_bias = next(n for n in names if n.startswith("BACKBONE.base.") and "bias" in n)
    assert by_name[backbone_bias]["lr"] == by_name["BACKBONE.base.class_embedding" if backbone == "clip"
                                                   else "BACKBONE.base.cls_token"]["lr"]

    # the schedule over these groups is the original's, from the first epoch (bug 1: the CLIP backbone warms DOWN
    # from 0.1 x BASE_LR = 3.5e-5 to its 5e-6) to the last
    scheduler = build_scheduler(cfg, optimizer)
    columns = [int(np.argmin(abs(ref["sched_base_lr"] - g["initial_lr"] * g["lr_scale"]))) for g in
               optimizer.param_groups]
    for group, column in zip(optimizer.param_groups, columns):
        assert rel_diff(group["initial_lr"] * group["lr_scale"], ref["sched_base_lr"][column]) < REL
    for epoch in range(1, DEMO["MAX_EPOCHS"] + 1):
        scheduler.step(epoch)
        for group, column in zip(optimizer.param_groups, columns):
            assert rel_diff(group["lr"], ref["sched_lr"][epoch - 1, column]) < REL, (epoch, group["name"])
        if epoch == 1 and backbone == "clip":
            start = DEMO["WARMUP_FACTOR"] * DEMO["BASE_LR"]
            first = [g for g in optimizer.param_groups if g["lr_scale"] != 1.0]
            assert len(first) == 1 and all(n.startswith("BACKBONE.base.") for n in first[0]["param_names"])
            assert first[0]["name"] == "BACKBONE.base weights+biases"
            assert first[0]["lr"] / (1 + scheduler.noise(1)) == pytest.approx(start + (5e-6 - start) / 10, rel=REL)


def test_demo_schedule_formula_and_scaled_groups():
    """The schedule written out for other settings, on a TOP-ReID factor group: its own lr is initial_lr x lr_scale,
    and its warm-up start and floor are the others' (unlike the cosine schedule, which scales them)."""
    base, warmup, epochs, start, floor = 0.01, 3, 8, 0.1 * 0.01, 0.001 * 0.01
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    groups = param_groups(model, base, 1e-4, 2.0, 1e-4, backbone_lr_factor=0.1, backbone_prefix="0.")
    assert [(g["initial_lr"], g["lr_scale"]) for g in groups] == [(base, 0.1), (2 * base, 0.1), (base, 1.0),
                                                                  (2 * base, 1.0)]
    optimizer = torch.optim.SGD(groups, lr=base)
    scheduler = build_scheduler(solver_cfg(BASE_LR=base, WARMUP_ITERS=warmup, MAX_EPOCHS=epochs, WARMUP_FACTOR=0.1,
                                           MIN_LR_FACTOR=0.001, SCHEDULER="demo"), optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == [start] * 4  # built: the epoch-0 value, no noise
    own = [0.1 * base, 0.2 * base, base, 2 * base]
    for epoch in range(epochs + 3):
        if epoch < warmup:
            expected = [start + epoch * (lr - start) / warmup for lr in own]
        elif epoch < epochs:
            expected = [floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * epoch / epochs)) for lr in own]
        else:
            expected = [floor] * 4
        noise = scheduler.noise(epoch)
        assert (noise == 0.0) == (epoch >= epochs) and abs(noise) < 0.67
        scheduler.step(epoch)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([v * (1 + noise) for v in expected],
                                                                         rel=1e-12, abs=0)


def test_demo_schedule_is_a_function_of_the_epoch_and_leaves_the_global_rng():
    cfg = demo_cfg("vit")
    model = nn.Linear(3, 2)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    optimizer = build_optimizer(solver_cfg(**{**DEMO, "BIAS_LR_FACTOR_IN_BACKBONE": True}), model)
    scheduler = build_scheduler(cfg, optimizer)
    trace = {}
    for epoch in (1, 30, 2, 50, 7, 1):  # any order: nothing is carried from one step to the next
        scheduler.step(epoch)
        trace.setdefault(epoch, [g["lr"] for g in optimizer.param_groups])
        assert [g["lr"] for g in optimizer.param_groups] == trace[epoch]
    assert torch.equal(torch.get_rng_state(), before)
    # a resumed run builds a fresh optimiser and scheduler from the config: same rates at every epoch
    resumed = build_optimizer(solver_cfg(**{**DEMO, "BIAS_LR_FACTOR_IN_BACKBONE": True}), model)
    resumed_scheduler = build_scheduler(cfg, resumed)
    for epoch in (7, 8, 50):
        scheduler.step(epoch)
        resumed_scheduler.step(epoch)
        assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in optimizer.param_groups]
    # and a second scheduler on a stepped optimiser plans from the groups' own lr, not from the current one
    again = build_scheduler(cfg, optimizer)
    again.step(7)
    assert [g["lr"] for g in optimizer.param_groups] == trace[7]


class TwoParts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.head = nn.Linear(2, 2)


@pytest.mark.parametrize(("options", "backbone_lrs"), [
    ({"backbone_lr": 1e-3}, (1e-3, 2e-3)),  # absolute, bias factor kept
    ({"backbone_lr": 1e-3, "bias_lr_factor_in_backbone": False}, (1e-3, 1e-3)),  # DeMo's CLIP rule
    ({"backbone_lr_factor": 0.8, "bias_lr_factor_in_backbone": False}, (0.08, 0.08)),  # DeMo's ViT rule
    ({"backbone_lr_factor": 0.8}, (0.08, 0.16)),  # TOP-ReID's factor
])
def test_backbone_lr_options(options, backbone_lrs):
    groups = param_groups(TwoParts(), 0.1, 1e-4, 2.0, 5e-4, backbone_prefix="backbone.", **options)
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert (by_name["backbone.weight"]["lr"], by_name["backbone.bias"]["lr"]) == pytest.approx(backbone_lrs)
    assert (by_name["head.weight"]["lr"], by_name["head.bias"]["lr"]) == pytest.approx((0.1, 0.2))
    assert by_name["backbone.bias"]["weight_decay"] == by_name["head.bias"]["weight_decay"] == 5e-4
    for group in groups:  # the cosine schedule multiplies initial_lr by lr_scale
        assert group["lr"] == pytest.approx(group["initial_lr"] * group["lr_scale"])


def test_backbone_lr_errors():
    with pytest.raises(ValueError, match="both set"):
        param_groups(TwoParts(), 0.1, 0.0, 2.0, 0.0, backbone_lr=1e-3, backbone_lr_factor=0.5,
                     backbone_prefix="backbone.")
    with pytest.raises(ValueError, match="negative"):
        param_groups(TwoParts(), 0.1, 0.0, 2.0, 0.0, backbone_lr=-1.0, backbone_prefix="backbone.")
    with pytest.raises(ValueError, match="no parameter of TwoParts starts with 'BACKBONE.base.'"):
        param_groups(TwoParts(), 0.1, 0.0, 2.0, 0.0, backbone_lr=1e-3, backbone_prefix="BACKBONE.base.")
    with pytest.raises(ValueError, match="SOLVER.BACKBONE_LR=0.001 and SOLVER.BACKBONE_LR_FACTOR=0.5"):
        build_optimizer(solver_cfg(BACKBONE_LR=1e-3, BACKBONE_LR_FACTOR=0.5), TwoParts())
    with pytest.raises(ValueError, match=r"SOLVER.OPTIMIZER_NAME='RMSprop' is not supported \(SGD, Adam, AdamW\)"):
        build_optimizer(solver_cfg(OPTIMIZER_NAME="RMSprop"), TwoParts())
    with pytest.raises(ValueError, match=r"SOLVER.SCHEDULER='step' is not supported \(cosine, demo\)"):
        build_scheduler(solver_cfg(SCHEDULER="step"), torch.optim.SGD(TwoParts().parameters(), lr=0.1))


def test_adam_adds_weight_decay_to_the_gradient():
    """Adam with L2 inside (DeMo's torch.optim.Adam), not AdamW's decoupled decay: the first step of a parameter
    moves it by lr x g / (|g| + eps) with g = gradient + weight_decay x parameter."""
    model = nn.Linear(3, 2)
    lr, decay = 0.01, 0.5
    optimizer = build_optimizer(solver_cfg(OPTIMIZER_NAME="Adam", BASE_LR=lr, BIAS_LR_FACTOR=1.0,
                                           WEIGHT_DECAY=decay, WEIGHT_DECAY_BIAS=decay), model)
    w0 = model.weight.detach().clone()
    model(torch.randn(4, 3)).square().sum().backward()
    g = model.weight.grad + decay * w0
    optimizer.step()
    torch.testing.assert_close(model.weight.detach(), w0 - lr * g / (g.abs() + 1e-8))


def test_adam_fused_kernel_matches_foreach():
    """On CUDA build_optimizer gives Adam fused=True; torch has the fused kernel on CPU too, so check it here."""
    cfg = solver_cfg(OPTIMIZER_NAME="Adam", BASE_LR=0.05, WEIGHT_DECAY=0.01, WEIGHT_DECAY_BIAS=0.0)
    models = [nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 5)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    foreach = build_optimizer(cfg, models[0])
    fused = torch.optim.Adam(param_groups(models[1], 0.05, 0.01, 2.0, 0.0), lr=0.05, fused=True)
    x = torch.randn(6, 8)
    for _ in range(3):
        for model, opt in zip(models, (foreach, fused)):
            opt.zero_grad()
            model(x).logsumexp(1).mean().backward()
            opt.step()
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q)
