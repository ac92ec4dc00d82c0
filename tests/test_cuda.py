"""The GPU step on a CUDA device: bf16 training, compiled blocks, resume, the fused optimiser, no host-device
synchronisation in the step, batched augmentation.

Run with ``pytest -m cuda`` (``benchmarks/device_check.sh`` does); skipped where no GPU is present. The same code
paths on CPU are tested in tests/test_gpu_step.py and tests/test_gpu_augment.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from configs import load_config
from data.gpu_augment import BatchAugment
from data.transforms import ToNormalizedTensor
from modeling import build_model
from modeling.compile import compile_blocks, is_compiled, transformer_blocks
from processor.hooks import EvalHook
from processor.inference import extract_features
from processor.trainer import Trainer, TrainingInterrupted
from tests.helpers import register_toy_backbone, stop_after_step, tiny_opts

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _cfg(demo_root, out, **overrides):
    opts = {"MODEL.DEVICE": "cuda", "MODEL.TRANSFORMER_TYPE": register_toy_backbone(), "SOLVER.EVAL_PERIOD": "0",
            "INPUT.GPU_AUGMENT": "True", "DATALOADER.NUM_WORKERS": "2", **overrides}
    return load_config(None, tiny_opts(demo_root, str(out), **opts))




def _steps_only(trainer: Trainer, stop_at: int | None = None) -> Trainer:
    trainer.hooks = [h for h in trainer.hooks if not isinstance(h, EvalHook)]
    if stop_at is not None:
        stop_after_step(trainer, stop_at)
    return trainer


def test_bf16_training_lowers_the_loss_with_the_fused_optimizer(demo_root, tmp_path):
    trainer = _steps_only(Trainer(_cfg(demo_root, tmp_path, **{"SOLVER.MAX_EPOCHS": "3"})))
    assert trainer.amp and trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    assert trainer.optimizer_kernel == "fused"
    assert trainer.optimizer.defaults["fused"] is True
    trainer.train()
    losses = [h["loss"] for h in trainer.history]
    k = max(2, len(losses) // 5)
    assert np.isfinite(losses).all()
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k


def test_compiled_and_eager_features_agree(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=40, camera_num=4).cuda().eval()
    g = torch.Generator().manual_seed(0)
    batch = {"images": {s: torch.randn(16, 3, 64, 32, generator=g) for s in model.spectra},
             "camid": torch.arange(16) % 4, "pid": torch.arange(16), "sceneid": torch.full((16,), -1),
             "name": [str(i) for i in range(16)]}
    settings = ["nothing", "r", "nt"]
    eager = extract_features(model, [batch], torch.device("cuda"), settings, True, torch.bfloat16)
    compile_blocks(model)
    assert all(is_compiled(b) for b in transformer_blocks(model))
    compiled = extract_features(model, [batch], torch.device("cuda"), settings, True, torch.bfloat16)
    for s in settings:
        e, c = eager.feats[s], compiled.feats[s]
        relative = ((c - e).norm(dim=1) / e.norm(dim=1)).max().item()
        assert relative < 2e-2, f"{s}: relative difference {relative:.2e} (bf16 resolution 7.8e-3)"


def test_resumed_run_continues_from_the_saved_state(demo_root, tmp_path):
    reference = _steps_only(Trainer(_cfg(demo_root, tmp_path / "a")), stop_at=6)
    with pytest.raises(TrainingInterrupted):
        reference.train()
    first = _steps_only(Trainer(_cfg(demo_root, tmp_path / "b")), stop_at=3)
    with pytest.raises(TrainingInterrupted):
        first.train()
    saved_momentum = [s["momentum_buffer"].clone() for s in first.optimizer.state.values()]
    resumed = _steps_only(Trainer(_cfg(demo_root, tmp_path / "b"), resume=True), stop_at=6)
    assert (resumed.start_epoch, resumed.start_iteration, resumed.global_step) == (1, 3, 3)
    loaded = [s["momentum_buffer"] for s in resumed.optimizer.state.values()]
    assert len(loaded) == len(saved_momentum) and all(torch.equal(a, b) for a, b in zip(loaded, saved_momentum))
    assert resumed.optimizer_kernel == "fused"
    with pytest.raises(TrainingInterrupted):
        resumed.train()
    got = [h["loss"] for h in first.history + resumed.history]
    expected = [h["loss"] for h in reference.history]
    # CUDA kernels (atomics in backward) are not bit-reproducible; the resumed losses follow the reference closely.
    assert got == pytest.approx(expected, rel=1e-2)


def test_the_train_step_never_waits_for_the_device(demo_root, tmp_path):
    """After a first step (cuBLAS handles, momentum buffers), a step with batched augmentation, bf16 and the fused
    optimiser queues its work without one host-device synchronisation: CUDA's sync debug mode raises on any."""
    trainer = Trainer(_cfg(demo_root, tmp_path))
    trainer.model.train()
    batches = iter(trainer.data.train_loader)
    trainer.run_step(next(batches))
    torch.cuda.synchronize()
    for _ in range(2):
        batch = next(batches)
        torch.cuda.set_sync_debug_mode("error")
        try:
            trainer.run_step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(trainer.step_outputs["loss"]) and not trainer.nonfinite_loss()


def test_batched_augment_on_cuda_normalises_exactly_and_flips_at_the_rate():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 16), generator=g, dtype=torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    on_gpu = BatchAugment(mean, std, 0.0, 0.0)(images.cuda()).cpu()
    per_image = torch.stack([ToNormalizedTensor(mean, std)(np.ascontiguousarray(x.permute(1, 2, 0).numpy()))
                             for x in images])
    assert torch.equal(on_gpu, per_image)
    n = 20000
    flips = BatchAugment(mean, std, 0.5, 0.0, seed=1).flip_mask(n, torch.device("cuda")).double().mean().item()
    assert abs(flips - 0.5) <= 5 * (0.25 / n) ** 0.5
