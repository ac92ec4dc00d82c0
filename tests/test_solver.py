"""Optimiser parameter groups and the warm-up + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from configs.defaults import get_cfg_defaults
from solver import build_optimizer, build_scheduler, param_groups


class TinyReID(nn.Module):
    """Names like the real model's: backbone weights and biases, a BNNeck with a frozen bias, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 8))
        self.bottleneck = nn.BatchNorm1d(8)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(8, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bottleneck(self.backbone(x)))


def solver_cfg(**solver):
    cfg = get_cfg_defaults()
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def groups_by_name(optimizer):
    return {name: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for name in g["param_names"]}


def test_param_groups_follow_original_rules():
    model = TinyReID()
    cfg = solver_cfg(BASE_LR=0.01, WEIGHT_DECAY=1e-4, BIAS_LR_FACTOR=2.0, WEIGHT_DECAY_BIAS=5e-4)
    optimizer = build_optimizer(cfg, model)
    by_name = groups_by_name(optimizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(by_name) == sorted(trainable)
    assert "bottleneck.bias" not in by_name  # frozen
    for name in trainable:
        expected = (0.02, 5e-4) if "bias" in name else (0.01, 1e-4)
        assert by_name[name] == pytest.approx(expected), name
    assert len(optimizer.param_groups) == 2  # grouped, not one group per parameter
    assert optimizer.param_groups[0]["param_names"][0] == "backbone.0.weight"  # order of first appearance
    # every trainable tensor is in exactly one group
    ids = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_param_groups_without_config():
    groups = param_groups(TinyReID(), base_lr=1.0, weight_decay=0.5, bias_lr_factor=3.0, weight_decay_bias=0.0)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1.0, 0.5), (3.0, 0.0)]
    assert groups[1]["param_names"] == ["backbone.0.bias", "backbone.1.bias", "backbone.2.bias"]


def test_large_fc_lr_doubles_the_classifier():
    model = TinyReID()
    model.classifier = nn.Linear(8, 5, bias=True)
    optimizer = build_optimizer(solver_cfg(BASE_LR=0.01, BIAS_LR_FACTOR=3.0, LARGE_FC_LR=True), model)
    by_name = groups_by_name(optimizer)
    assert by_name["classifier.weight"][0] == pytest.approx(0.02)
    assert by_name["classifier.bias"][0] == pytest.approx(0.02)  # the classifier rule wins, as in the original
    assert by_name["backbone.0.bias"][0] == pytest.approx(0.03)
    assert by_name["backbone.0.weight"][0] == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_optimizer_kind_and_a_step(name):
    model = TinyReID()
    optimizer = build_optimizer(solver_cfg(OPTIMIZER_NAME=name, MOMENTUM=0.8), model)
    expected_type = torch.optim.SGD if name == "SGD" else torch.optim.AdamW
    assert type(optimizer) is expected_type
    assert all(g["foreach"] for g in optimizer.param_groups)  # CPU: multi-tensor steps
    if name == "SGD":
        assert all(g["momentum"] == 0.8 for g in optimizer.param_groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(4, 8)).logsumexp(1).mean().backward()
    optimizer.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == p.requires_grad, n


def test_sgd_step_matches_manual_update():
    model = nn.Linear(3, 2)
    cfg = solver_cfg(BASE_LR=0.1, BIAS_LR_FACTOR=2.0, WEIGHT_DECAY=0.01, WEIGHT_DECAY_BIAS=0.0, MOMENTUM=0.9)
    optimizer = build_optimizer(cfg, model)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    model(torch.ones(1, 3)).sum().backward()
    gw, gb = model.weight.grad.clone(), model.bias.grad.clone()
    optimizer.step()
    torch.testing.assert_close(model.weight.detach(), w0 - 0.1 * (gw + 0.01 * w0))
    torch.testing.assert_close(model.bias.detach(), b0 - 0.2 * gb)


def test_errors():
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(get_cfg_defaults(), frozen)
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER_NAME='RMSprop'"):
        build_optimizer(solver_cfg(OPTIMIZER_NAME="RMSprop"), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="SOLVER.SCHEDULER"):
        build_scheduler(solver_cfg(SCHEDULER="step"), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))


def lrs_at(scheduler, optimizer, epoch):
    scheduler.step(epoch)
    return [g["lr"] for g in optimizer.param_groups]


def test_schedule_warmup_cosine_and_floor():
    base, warmup, epochs = 0.009, 10, 120
    cfg = solver_cfg(BASE_LR=base, WARMUP_ITERS=warmup, MAX_EPOCHS=epochs, WARMUP_FACTOR=0.01, MIN_LR_FACTOR=0.001,
                     BIAS_LR_FACTOR=2.0)
    optimizer = build_optimizer(cfg, TinyReID())
    weight_group, bias_group = 0, 1
    assert "bias" in optimizer.param_groups[bias_group]["param_names"][0]
    scheduler = build_scheduler(cfg, optimizer)
    start, floor = 0.01 * base, 0.001 * base
    # epoch 0: the warm-up start, the same absolute value for every group (timm's warmup_lr_init)
    assert lrs_at(scheduler, optimizer, 0) == pytest.approx([start, start])
    # linear warm-up of each group towards its own lr
    for t in range(warmup):
        lr = lrs_at(scheduler, optimizer, t)
        assert lr[weight_group] == pytest.approx(start + t / warmup * (base - start))
        assert lr[bias_group] == pytest.approx(start + t / warmup * (2 * base - start))
    # then cosine from each group's lr (the bias multiplier is kept) down to the shared floor
    for t in (warmup, 30, 60, 90, epochs - 1):
        lr = lrs_at(scheduler, optimizer, t)
        cosine = 0.5 * (1 + math.cos(math.pi * t / epochs))
        assert lr[weight_group] == pytest.approx(floor + (base - floor) * cosine)
        assert lr[bias_group] == pytest.approx(floor + (2 * base - floor) * cosine)
    # the cosine counts from epoch 0 (timm's warmup_prefix=False, as in the original), so the warm-up ends at
    # cos-factor(10 / 120) = 0.983 x base rather than at base itself
    assert lrs_at(scheduler, optimizer, warmup)[weight_group] == pytest.approx(
        floor + (base - floor) * 0.5 * (1 + math.cos(math.pi / 12)))
    assert lrs_at(scheduler, optimizer, epochs) == pytest.approx([floor, floor])
    # monotone: up during warm-up, down after
    curve = [lrs_at(scheduler, optimizer, t)[weight_group] for t in range(epochs + 1)]
    assert all(a < b for a, b in zip(curve[:warmup], curve[1:warmup + 1]))
    assert all(a > b for a, b in zip(curve[warmup:], curve[warmup + 1:]))


def test_schedule_without_warmup():
    cfg = solver_cfg(BASE_LR=0.1, WARMUP_ITERS=0, MAX_EPOCHS=20)
    optimizer = build_optimizer(cfg, nn.Linear(2, 2, bias=False))
    scheduler = build_scheduler(cfg, optimizer)
    assert lrs_at(scheduler, optimizer, 0) == pytest.approx([0.1])
    assert lrs_at(scheduler, optimizer, 10) == pytest.approx([1e-4 + (0.1 - 1e-4) * 0.5])


def test_state_dict_round_trip_for_resume():
    cfg = solver_cfg(BASE_LR=0.009, WARMUP_ITERS=5, MAX_EPOCHS=30)
    model = TinyReID()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    for epoch in range(1, 8):
        scheduler.step(epoch)
        model(torch.randn(4, 8)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    saved_opt, saved_sched = optimizer.state_dict(), scheduler.state_dict()

    resumed_model = TinyReID()
    resumed_model.load_state_dict(model.state_dict())
    resumed_opt = build_optimizer(cfg, resumed_model)
    resumed_sched = build_scheduler(cfg, resumed_opt)
    resumed_opt.load_state_dict(saved_opt)
    resumed_sched.load_state_dict(saved_sched)
    assert resumed_sched.base_values == scheduler.base_values
    for epoch in range(8, 31):
        assert lrs_at(resumed_sched, resumed_opt, epoch) == pytest.approx(lrs_at(scheduler, optimizer, epoch))
    x = torch.randn(4, 8)
    for m, opt in ((model, optimizer), (resumed_model, resumed_opt)):
        m(x).sum().backward()
        opt.step()
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(p, q)  # momentum buffers came back too


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_fused_kernel_accepts_the_groups_and_matches_foreach(name):
    """On CUDA build_optimizer uses fused=True; torch also has the fused kernels on CPU, so the groups can be checked
    here: same updates as the foreach steps used on CPU."""
    cfg = solver_cfg(OPTIMIZER_NAME=name, BASE_LR=0.05, WEIGHT_DECAY=0.01)
    # no BatchNorm here: a bias right before it has a zero gradient up to rounding, which Adam blows up to +-lr
    models = [nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 5)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    foreach = build_optimizer(cfg, models[0])
    groups = param_groups(models[1], 0.05, 0.01, cfg.SOLVER.BIAS_LR_FACTOR, cfg.SOLVER.WEIGHT_DECAY_BIAS)
    extra = {"momentum": cfg.SOLVER.MOMENTUM} if name == "SGD" else {"weight_decay": 0.01}
    fused = getattr(torch.optim, name)(groups, lr=0.05, fused=True, **extra)
    x = torch.randn(6, 8)
    for _ in range(3):
        for model, opt in zip(models, (foreach, fused)):
            opt.zero_grad()
            model(x).logsumexp(1).mean().backward()
            opt.step()
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q)
