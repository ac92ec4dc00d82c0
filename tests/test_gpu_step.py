"""The GPU training step's code paths, run on CPU: bf16 autocast (SOLVER.AMP_CPU), batched augmentation
(INPUT.GPU_AUGMENT), regional compilation (MODEL.COMPILE) and the optimiser kernel choice. The same paths on CUDA are
in tests/test_cuda.py.

Compilation here uses the ``eager`` backend: it traces the blocks with dynamo as inductor does, without generating
C++ code, which would take minutes on the CI machine's cores."""

from __future__ import annotations

import functools

import pytest
import torch

import processor.trainer as trainer_module
from configs import load_config
from modeling import build_model
from modeling.compile import compile_blocks, is_compiled, transformer_blocks
from processor.hooks import EvalHook
from processor.inference import batch_features, missing_by_setting
from processor.trainer import Trainer, TrainingInterrupted
from solver import build_optimizer, optimizer_kernel
from tests.helpers import register_toy_backbone, stop_after_step, tiny_opts


def _opts(demo_root, out, **overrides):
    base = {"MODEL.TRANSFORMER_TYPE": register_toy_backbone(), "SOLVER.EVAL_PERIOD": "0", "TEST.MISS": "all"}
    return tiny_opts(demo_root, str(out), **{**base, **overrides})


def _without_evaluation(trainer: Trainer, stop_at: int | None = None) -> Trainer:
    """Drop the evaluation hook (these tests look at steps); stop after global step ``stop_at`` as SIGTERM would."""
    trainer.hooks = [h for h in trainer.hooks if not isinstance(h, EvalHook)]
    if stop_at is not None:
        stop_after_step(trainer, stop_at)
    return trainer




def test_bf16_cpu_step_with_batched_augment_and_compiled_blocks(demo_root, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "compile_blocks", functools.partial(compile_blocks, backend="eager"))
    cfg = load_config(None, _opts(demo_root, tmp_path, **{"SOLVER.AMP_CPU": "True", "INPUT.GPU_AUGMENT": "True",
                                                          "MODEL.COMPILE": "True"}))
    assert cfg.SOLVER.AMP_DTYPE == "bf16"  # the default
    trainer = Trainer(cfg)
    assert trainer.amp and trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    assert trainer.optimizer_kernel == "foreach"  # parameters on CPU: no fused kernel
    assert all(is_compiled(b) for b in transformer_blocks(trainer.model))

    dtypes = []
    head = next(iter(trainer.model.heads.values()))
    handle = head.classifier.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    trainer.model.train()
    for _, batch in zip(range(2), trainer.data.train_loader):
        assert all(x.dtype == torch.uint8 for x in batch["images"].values())
        trainer.run_step(batch)
    handle.remove()
    assert dtypes == [torch.bfloat16] * 2
    assert torch.isfinite(trainer.step_outputs["loss"]) and not trainer.nonfinite_loss()

    batch = next(iter(trainer.data.test_loader))  # evaluation: the same compiled blocks, under autocast
    missing = missing_by_setting(trainer.model, ["nothing", "rn"])
    feats = batch_features(trainer.model.eval(), batch, trainer.device, missing, trainer.amp, trainer.amp_dtype)
    assert all(f.dtype == torch.float32 and torch.isfinite(f).all() for f in feats.values())


def test_resume_with_batched_augment_reproduces_the_losses(demo_root, tmp_path):
    opts = {"INPUT.GPU_AUGMENT": "True", "TEST.MISS": "nothing"}

    def trainer(out, stop_at, resume=False):
        return _without_evaluation(Trainer(load_config(None, _opts(demo_root, out, **opts)), resume=resume), stop_at)

    def losses(*trainers):
        return [(h["epoch"], h["iteration"], h["loss"]) for t in trainers for h in t.history]

    reference = trainer(tmp_path / "a", 4)  # each built just before it trains: drop path draws from the global RNG
    with pytest.raises(TrainingInterrupted):
        reference.train()
    first = trainer(tmp_path / "b", 2)
    with pytest.raises(TrainingInterrupted):
        first.train()
    resumed = trainer(tmp_path / "b", 4, resume=True)
    with pytest.raises(TrainingInterrupted):
        resumed.train()
    assert len(losses(reference)) == 4
    assert losses(first, resumed) == losses(reference)


def test_compiled_blocks_keep_names_and_features():
    cfg = load_config(None, ["MODEL.TRANSFORMER_TYPE", register_toy_backbone(), "MODEL.PRETRAIN_CHOICE", "none",
                             "INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]", "MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5, camera_num=2).eval()
    images = {s: torch.randn(3, 3, 64, 32) for s in model.spectra}
    cams = torch.tensor([0, 1, 0])
    keys = list(model.state_dict())
    with torch.no_grad():
        eager = {m: model(images, cams, missing={m} if m else set()) for m in ("", "RGB")}
        count = compile_blocks(model, backend="eager")
        compiled = {m: model(images, cams, missing={m} if m else set()) for m in ("", "RGB")}
    assert count == 3 * 2 + 3 + 6  # backbone blocks, TPM's three, one block per CRM reconstructor
    assert list(model.state_dict()) == keys
    for m in eager:
        torch.testing.assert_close(compiled[m], eager[m], rtol=0, atol=1e-6)
    assert optimizer_kernel(build_optimizer(cfg, model)) == "foreach"
