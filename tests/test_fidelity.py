"""Fidelity to the original code: fp32 evaluation unless TEST.AMP, the original's epoch rule of the P x K sampler,
CRM targets not detached, the BNNeck head's initialisation, MSVR310's scene junk, compile, DDP, NaN stop."""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from configs import load_config
from data.datasets import build_dataset
from data.samplers import RandomIdentitySampler
from evaluation import evaluate_rank, evaluate_settings
from layers.bnneck import BNNeckHead
from modeling import build_model
from modeling.checkpoint import model_payload
from modeling.compile import is_compiled, transformer_blocks
from modeling.crm import ComplementaryReconstruction
from processor import hooks as hooks_module
from processor.hooks import EvalHook, HookBase
from processor.inference import eval_amp, extract_features
from processor.predictor import Predictor
from processor.trainer import Trainer, TrainingInterrupted
from tests.helpers import register_toy_backbone, stop_after_step, tiny_opts
from utils.checkpoint import save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = torch.device("cuda")  # a device object only: nothing is allocated on it


class _Stop(Exception):
    pass


def _trainer(demo_root, out, resume=False, **overrides):
    return Trainer(load_config(None, tiny_opts(demo_root, str(out), **overrides)), resume=resume)


def _losses(history):
    return [(h["epoch"], h["iteration"], h["loss"]) for h in history]




def _stop_at(trainer, step):
    """Stop ``trainer`` after global step ``step``: the request comes before the stop hook looks for one."""
    stop_after_step(trainer, step)


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

    def fake_extract(model, loader, device, settings, amp=False, *rest, **options):
        seen["amp"] = amp
        raise _Stop

    monkeypatch.setattr(hooks_module, "extract_features", fake_extract)
    hook = EvalHook(1)
    hook.trainer = SimpleNamespace(cfg=cfg, device=CUDA, model=None, data=SimpleNamespace(test_loader=None),
                                   settings=["nothing"], amp=solver_amp, amp_dtype=torch.float16, main=True,
                                   check_stop=lambda: None)
    with pytest.raises(_Stop):
        hook.evaluate()
    assert seen["amp"] is test_amp


def test_test_amp_defaults_to_fp32():
    assert load_config(None, []).TEST.AMP is False


# ----------------------------------------------------------------------------------------------------------------------
# DATALOADER.EPOCH_RULE original: the P x K sampler of the original code, re-implemented independently here.

def original_sampler_epoch(pids: list[int], k: int, p: int, rnd: random.Random) -> list[list[int]]:
    """One epoch of the original RandomIdentitySampler, in plain Python: each identity's images shuffled and cut
    into chunks of k (fewer than k images: k drawn with replacement); each step takes one chunk of each of p
    identities drawn among those with chunks left; the epoch ends when fewer than p identities have chunks left."""
    images: dict[int, list[int]] = defaultdict(list)
    for index, pid in enumerate(pids):
        images[pid].append(index)
    chunks = {}
    for pid, indices in images.items():
        indices = list(indices) if len(indices) >= k else [rnd.choice(indices) for _ in range(k)]
        rnd.shuffle(indices)
        chunks[pid] = [indices[i:i + k] for i in range(0, len(indices) - k + 1, k)]
    available = list(chunks)
    batches = []
    while len(available) >= p:
        batch = []
        for pid in rnd.sample(available, p):
            batch += chunks[pid].pop(0)
            if not chunks[pid]:
                available.remove(pid)
        batches.append(batch)
    return batches


def _rgbnt100_like_pids(seed: int = 0) -> list[int]:
    """50 identities with very different image counts (1 to ~150, a long tail like RGBNT100's 3 to ~600, at a
    quarter of the size: the tests use K = 4 instead of 16), interleaved."""
    rnd = random.Random(seed)
    counts = [1, 3, 4] + [int(5 * math.exp(rnd.uniform(0, 3.4))) for _ in range(47)]
    pids = [pid for pid, n in enumerate(counts) for _ in range(n)]
    rnd.shuffle(pids)
    return pids


def _chunks_of(pids, k):
    return {pid: max(n, k) // k for pid, n in Counter(pids).items()}


def test_original_epoch_rule_ends_when_fewer_than_p_identities_have_chunks_left():
    pids, k, p = _rgbnt100_like_pids(), 4, 8
    sampler = RandomIdentitySampler(pids, k * p, k, seed=1111, epoch_rule="original")
    chunks, counts = _chunks_of(pids, k), Counter(pids)
    lengths = []
    for epoch in range(1, 21):
        sampler.set_epoch(epoch)
        expected_len = len(sampler)  # known before iterating
        batches = [[i for i, _ in b] for b in sampler]
        assert len(batches) == expected_len
        lengths.append(expected_len)
        used = Counter()
        for b in batches:
            ids = [pids[i] for i in b]
            assert Counter(ids) == {ids[j]: k for j in range(0, k * p, k)} and len(set(ids)) == p
            used.update(set(ids))
        left = [pid for pid, n in chunks.items() if used[pid] < n]
        assert all(used[pid] <= n for pid, n in chunks.items())  # never a second round of chunks
        assert len(left) < p  # the epoch ended because fewer than P identities had chunks left ...
        assert len(batches) == 0 or len(left) + sum(1 for pid in set(pids[i] for i in batches[-1][::k])
                                                     if used[pid] == chunks[pid]) >= p  # ... and not earlier
        seen = [i for b in batches for i in b if counts[pids[i]] >= k]
        assert len(seen) == len(set(seen))  # no image twice in an epoch (identities with at least K images)
    assert len(set(lengths)) > 1  # the number of batches varies per epoch
    assert max(lengths) < sum(chunks.values()) // p  # shorter than the fixed rule's epoch


def test_original_epoch_rule_matches_an_independent_reimplementation():
    """Same distribution of batches per epoch and of each identity's batches per epoch as the plain-Python original
    over 300 epochs (different random streams, so the comparison is statistical: within 5 standard errors)."""
    pids, k, p, epochs = _rgbnt100_like_pids(), 4, 8, 300
    sampler = RandomIdentitySampler(pids, k * p, k, seed=5, epoch_rule="original")
    rnd = random.Random(5)
    ours, ref = [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches = sampler.epoch_batches().tolist()
        ours.append((len(batches), Counter(pids[i] for b in batches for i in b[::k])))
        batches = original_sampler_epoch(pids, k, p, rnd)
        ref.append((len(batches), Counter(pids[i] for b in batches for i in b[::k])))

    def close(a, b):
        a, b = np.asarray(a, float), np.asarray(b, float)
        se = math.sqrt(a.var() / len(a) + b.var() / len(b)) + 1e-9
        assert abs(a.mean() - b.mean()) <= 5 * se + 1e-6, (a.mean(), b.mean(), se)

    close([n for n, _ in ours], [n for n, _ in ref])
    assert np.std([n for n, _ in ours]) > 0
    for pid in sorted(set(pids)):  # the multiset of identities of an epoch: how often each identity is drawn
        close([c[pid] for _, c in ours], [c[pid] for _, c in ref])


@pytest.mark.parametrize("world_size", [2, 4])
def test_original_epoch_rule_rank_slices_partition_the_batches(world_size):
    pids = _rgbnt100_like_pids(1)
    full = RandomIdentitySampler(pids, 32, 4, seed=3, epoch_rule="original")
    parts = [RandomIdentitySampler(pids, 32, 4, seed=3, rank=r, world_size=world_size, epoch_rule="original")
             for r in range(world_size)]
    for epoch in (1, 2, 3):
        for s in (full, *parts):
            s.set_epoch(epoch)
        assert len({len(s) for s in (full, *parts)}) == 1
        expected = [list(b) for b in full]
        pieces = [[list(b) for b in s] for s in parts]
        assert [sum((piece[i] for piece in pieces), []) for i in range(len(expected))] == expected


def test_epoch_rule_key():
    assert load_config(None, []).DATALOADER.EPOCH_RULE == "fixed"
    assert load_config("configs/RGBNT100/TOP-ReID.yml", []).DATALOADER.EPOCH_RULE == "original"
    with pytest.raises(ValueError, match="EPOCH_RULE"):
        RandomIdentitySampler([0, 0, 1, 1], 4, 2, epoch_rule="orignal")


class _EpochLengths(HookBase):
    """Records (epoch, iters_per_epoch announced before the epoch, steps done at its end)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    def before_epoch(self) -> None:
        self.announced = self.trainer.iters_per_epoch

    def after_epoch(self) -> None:
        self.seen.append((self.trainer.epoch, self.announced, self.trainer.iteration))


@pytest.mark.slow
def test_trainer_takes_the_epoch_length_per_epoch_and_resumes_mid_epoch(demo_root, tmp_path):
    opts = {"MODEL.TRANSFORMER_TYPE": register_toy_backbone(), "DATALOADER.EPOCH_RULE": "original",
            "SOLVER.MAX_EPOCHS": "2", "SOLVER.EVAL_PERIOD": "0", "TEST.IMS_PER_BATCH": "256"}
    sampler = RandomIdentitySampler([r.pid for r in build_dataset("demo", demo_root).train], 16, 4,
                                    seed=load_config(None, []).SOLVER.SEED, epoch_rule="original")
    lengths = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        lengths.append(len(sampler))
    assert lengths[0] != lengths[1]  # the demo data and seed give epochs of different lengths

    reference = _trainer(demo_root, tmp_path / "a", **opts)
    recorder = _EpochLengths()
    reference.register_hooks([recorder])
    reference.train()
    assert recorder.seen == [(1, lengths[0], lengths[0]), (2, lengths[1], lengths[1])]

    first = _trainer(demo_root, tmp_path / "b", **opts)
    _stop_at(first, lengths[0] + 3)  # mid-epoch 2
    with pytest.raises(TrainingInterrupted):
        first.train()
    resumed = _trainer(demo_root, tmp_path / "b", resume=True, **opts)
    assert (resumed.start_epoch, resumed.start_iteration) == (2, 3)
    resumed.train()
    assert _losses(first.history) + _losses(resumed.history) == _losses(reference.history)


# ----------------------------------------------------------------------------------------------------------------------
# CRM targets and the BNNeck head, as the original.

def test_crm_loss_reaches_the_target_tokens():
    """The original does not detach the reconstruction targets: MSE(recon_{s->t}(x_s), x_t) sends gradient into
    x_t as well. Each spectrum's gradient must equal the source-side gradient (targets detached) plus, from every
    pair where it is the target, the analytic 2 (x_t - recon) / numel."""
    torch.manual_seed(0)
    crm = ComplementaryReconstruction(dim=16, num_heads=2, spectra=("RGB", "NI", "TI"))
    tokens = {s: torch.randn(3, 5, 16, requires_grad=True) for s in crm.spectra}
    crm.loss(tokens).backward()
    got = {s: x.grad.clone() for s, x in tokens.items()}

    sources = {s: x.detach().clone().requires_grad_(True) for s, x in tokens.items()}
    expected = {s: torch.zeros_like(x) for s, x in tokens.items()}
    source_side = 0
    for s in crm.spectra:
        for t, net in crm.recon[s].items():
            recon = net(sources[s])
            source_side = source_side + F.mse_loss(recon, tokens[t].detach())
            expected[t] += 2 * (tokens[t].detach() - recon.detach()) / recon.numel()
    source_side.backward()
    for s in crm.spectra:
        torch.testing.assert_close(got[s], sources[s].grad + expected[s], rtol=1e-5, atol=1e-7)
        assert expected[s].abs().max() > 1e-3  # the target side is not negligible here


def test_bnneck_bias_frozen_at_zero_and_weight_one():
    head = BNNeckHead(32, 10)
    assert not head.bottleneck.bias.requires_grad
    assert torch.equal(head.bottleneck.bias, torch.zeros(32)) and torch.equal(head.bottleneck.weight, torch.ones(32))
    optimizer = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    logits, feat = head(torch.randn(8, 32))
    assert feat.shape == (8, 32)
    F.cross_entropy(logits, torch.arange(8)).backward()
    optimizer.step()
    assert head.bottleneck.bias.grad is None and torch.equal(head.bottleneck.bias, torch.zeros(32))
    assert not torch.equal(head.bottleneck.weight, torch.ones(32))  # the weight does train


def test_bnneck_classifier_init_is_normal_std_0_001_without_bias():
    torch.manual_seed(0)
    head = BNNeckHead(768, 500)
    w = head.classifier.weight.detach().double().flatten()
    assert head.classifier.bias is None
    assert abs(w.std().item() - 0.001) < 0.00002  # 384,000 draws: the std is known to about 0.1%
    assert abs(w.mean().item()) < 0.00001
    # normal, not uniform: the fourth moment ratio is 3 (uniform 1.8)
    assert abs((w - w.mean()).pow(4).mean().item() / w.var().item() ** 2 - 3) < 0.05


# ----------------------------------------------------------------------------------------------------------------------
# End to end through test_net.py and the trainer.

def _run_script(script, args, timeout=600):
    return subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _jpeg(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def _write_msvr310_junk_tree(root) -> None:
    """Per query (pid q, scene 1, camera 0, image X_q) the gallery holds A: pid q, scene 1, camera 1 (random
    image) and B: pid q, scene 2, camera 0, image X_q, among distractors. Scene junk leaves out A, so B (the same
    image and camera as the query, distance 0) is the only match and mAP is 1; camera junk leaves out B instead
    and A is the only match, at a random rank."""
    rng = np.random.default_rng(0)

    def noise():
        return rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)

    def put(split, name, pixels):
        for folder in ("vis", "ni", "th"):
            _jpeg(os.path.join(root, "MSVR310", split, name[:4], folder, name), pixels)

    put("bounding_box_train", "0001_s001_v0_000.jpg", noise())
    put("bounding_box_train", "0002_s001_v1_000.jpg", noise())
    for q in (10, 11, 12, 13):
        same = noise()
        put("query3", f"{q:04d}_s001_v0_000.jpg", same)
        put("bounding_box_test", f"{q:04d}_s001_v1_001.jpg", noise())
        put("bounding_box_test", f"{q:04d}_s002_v0_002.jpg", same)
    for d in range(20, 30):
        put("bounding_box_test", f"{d:04d}_s{3 + d % 4:03d}_v{d % 2}_000.jpg", noise())


@pytest.mark.slow
def test_msvr310_is_evaluated_with_scene_junk_through_test_net(tmp_path):
    _write_msvr310_junk_tree(tmp_path / "data")
    opts = ["DATASETS.NAMES", "MSVR310", "DATASETS.ROOT_DIR", str(tmp_path / "data"), "MODEL.DEVICE", "cpu",
            "MODEL.TRANSFORMER_TYPE", "vit_tiny_patch16_224", "MODEL.PRETRAIN_CHOICE", "none",
            "INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(tmp_path / "out")]
    cfg = load_config(None, opts)
    torch.manual_seed(0)
    save_checkpoint(str(tmp_path / "model.pth"), model_payload(build_model(cfg, 2, 2), cfg, 2, 2))
    proc = _run_script("test_net.py", [*opts, "TEST.WEIGHT", str(tmp_path / "model.pth"), "TEST.SAVE_FEATURES",
                                       "True"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]["nothing"]
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["Rank-1"] == pytest.approx(1.0)

    saved = np.load(tmp_path / "out" / "features.npz")
    nq = int(saved["num_query"])
    feats = F.normalize(torch.from_numpy(saved["feat_nothing"]), dim=1)
    dist = torch.cdist(feats[:nq], feats[nq:]).pow(2).numpy()
    pids, camids, sceneids = saved["pids"], saved["camids"], saved["sceneids"]
    _, scene_map, _ = evaluate_rank(dist, pids[:nq], pids[nq:], sceneids[:nq], sceneids[nq:])
    _, camera_map, _ = evaluate_rank(dist, pids[:nq], pids[nq:], camids[:nq], camids[nq:])
    assert metrics["mAP"] == pytest.approx(scene_map)
    assert camera_map < 0.9  # the tree tells the two rules apart


@pytest.mark.slow
def test_test_net_all_settings_equal_the_trainers_evaluation(demo_root, tmp_path):
    train_dir, test_dir = tmp_path / "train", tmp_path / "test"
    trainer = _trainer(demo_root, train_dir, **{"TEST.MISS": "all"})
    trainer.train()
    during_training = json.loads((train_dir / "results.json").read_text())
    assert during_training["epoch"] == 1 == torch.load(train_dir / "best.pth", weights_only=True)["epoch"]
    proc = _run_script("test_net.py", tiny_opts(demo_root, str(test_dir), **{
        "TEST.MISS": "all", "TEST.WEIGHT": str(train_dir / "best.pth")}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_test_net = json.loads((test_dir / "results.json").read_text())
    assert list(from_test_net["settings"]) == list(during_training["settings"])
    assert len(during_training["settings"]) == 7
    for setting, metrics in during_training["settings"].items():
        assert from_test_net["settings"][setting] == pytest.approx(metrics, abs=1e-6), setting


@pytest.mark.slow
def test_nan_stop_keeps_the_previous_last_pth(demo_root, tmp_path):
    """Epoch 1 trains; epoch 2's loss is NaN. With a log period longer than the epoch the NaN is only seen at the
    epoch's end, just before last.pth would be written: it must stay the file of epoch 1, byte for byte. (Epoch 3
    exists so that nothing evaluates after epoch 2; reaching it means the NaN went unnoticed.)"""
    trainer = _trainer(demo_root, tmp_path, **{"MODEL.TRANSFORMER_TYPE": register_toy_backbone(),
                                               "SOLVER.MAX_EPOCHS": "3", "SOLVER.EVAL_PERIOD": "0",
                                               "SOLVER.LOG_PERIOD": "1000"})
    loss_fn, before = trainer.loss_fn, {}

    def poisoned(outputs, labels):
        total, terms = loss_fn(outputs, labels)
        if trainer.epoch == 3:
            raise _Stop
        if trainer.epoch == 2:
            before.setdefault("last.pth", (tmp_path / "last.pth").read_bytes())
            total = total * float("nan")
        return total, terms

    trainer.loss_fn = poisoned
    with pytest.raises((FloatingPointError, _Stop)) as stopped:
        trainer.train()
    assert (tmp_path / "last.pth").read_bytes() == before["last.pth"]
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 1
    assert stopped.type is FloatingPointError and "NaN" in str(stopped.value)


@pytest.mark.slow
def test_model_compile_in_training_and_evaluation(demo_root, tmp_path, monkeypatch):
    """MODEL.COMPILE through the trainer on CPU (toy backbone, one epoch of 7 steps): every transformer block is
    compiled in place once and serves training and the evaluation, and the evaluation equals that of an eager model
    with the same weights. The graphs are captured by dynamo and AOT autograd as with the default backend, but run by
    ``aot_eager``: inductor's C++ code generation takes minutes on a CI CPU and is torch's to test, not ours."""
    real_compile, compiled = torch.compile, []

    def spy(target, *args, **kwargs):
        compiled.append(target)
        return real_compile(target, *args, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", spy)
    trainer = _trainer(demo_root, tmp_path, **{"MODEL.TRANSFORMER_TYPE": register_toy_backbone(),
                                               "MODEL.COMPILE": "True", "SOLVER.IMS_PER_BATCH": "64",
                                               "TEST.IMS_PER_BATCH": "256"})
    results = trainer.train()
    assert len(trainer.history) == trainer.iters_per_epoch == 7
    assert all(math.isfinite(h["loss"]) for h in trainer.history)
    blocks = transformer_blocks(trainer.model)
    assert blocks and all(is_compiled(b) for b in blocks)
    assert len(compiled) == len(blocks)  # once each: the evaluation reuses the training's compiled blocks
    eager = build_model(trainer.cfg, trainer.data.num_classes, trainer.data.num_cameras)
    eager.load_state_dict(trainer.model.state_dict())
    assert not any(is_compiled(b) for b in transformer_blocks(eager))
    features = extract_features(eager, trainer.data.test_loader, trainer.device, trainer.settings)
    expected = evaluate_settings(features, trainer.data.num_query, "camid", True, False)
    assert results["nothing"] == pytest.approx(expected["nothing"], abs=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Two DDP processes against one process computing the same thing.

class _RankSharesTrainer(Trainer):
    """One process doing what two DDP processes do with the same global batch: the loss of each rank's share (the
    r-th contiguous half of the batch) computed on its own, so BNNeck batch statistics and batch-hard triplet mining
    are per share as in DDP without SyncBatchNorm (and as the original's DDP mode); the gradients averaged, as DDP's
    all-reduce does. It logs share 0's loss terms, which is what rank 0 of the DDP run logs."""

    shares = 2

    def run_step(self, batch):
        n = len(batch["pid"])
        size = n // self.shares
        self.optimizer.zero_grad(set_to_none=True)
        logged = None
        for r in range(self.shares):
            part = slice(r * size, (r + 1) * size)
            images = {s: batch["images"][s][part] for s in self.model.spectra}
            loss, terms = self.loss_fn(self.train_model(images, batch["camid"][part]), batch["pid"][part])
            (loss / self.shares).backward()
            logged = logged or {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}
        self.optimizer.step()
        self.step_outputs, self.step_samples = logged, n
        self.iteration += 1
        self.global_step += 1


def _tb_scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(os.path.join(run_dir, "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


@pytest.mark.slow
def test_two_process_ddp_losses_equal_the_one_process_run(demo_root, tmp_path):
    """Two gloo processes on CPU (torch.distributed.run) against the one-process run of the same global batches.
    The tolerance is tight but not zero: the all-reduce adds the two gradients in another order than autograd's
    accumulation, a rounding difference (about 1e-7 relative) that the following steps carry along."""
    opts = {"SOLVER.IMS_PER_BATCH": "64", "MODEL.DROP_PATH": "0.0", "SOLVER.EVAL_PERIOD": "0",
            "TEST.IMS_PER_BATCH": "256"}
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "train_net.py", *tiny_opts(demo_root, str(ddp_dir), **opts)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = _RankSharesTrainer(load_config(None, tiny_opts(demo_root, str(one_dir), **opts)))
    one.train()

    logged = re.findall(r"epoch 1 iter (\d+)/(\d+): loss ([\d.]+)", (ddp_dir / "train_log.txt").read_text())
    assert [int(i) for i, _, _ in logged] == list(range(1, 8)) and {n for _, n, _ in logged} == {"7"}
    expected = [h["loss"] for h in one.history]
    assert [float(v) for _, _, v in logged] == pytest.approx(expected, abs=6e-4)  # the log has 3 decimals
    for tag in ("train/loss", "train/tpm.id", "train/tpm.triplet", "train/crm"):
        ddp, single = _tb_scalars(ddp_dir, tag), _tb_scalars(one_dir, tag)
        assert [s for s, _ in ddp] == [s for s, _ in single] == list(range(1, 8))
        assert [v for _, v in ddp] == pytest.approx([v for _, v in single], rel=1e-4, abs=1e-6), tag
    assert expected[0] != expected[-1]  # the steps do change the model
