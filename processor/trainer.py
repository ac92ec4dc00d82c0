"""The training loop: a trainer that owns the run (directory, model, optimiser, checkpoints) and runs epochs of
steps, with hooks around it for everything else (:mod:`processor.hooks`).

What it guarantees:
- ``last.pth`` is written atomically at the end of every epoch and when SIGTERM/SIGINT arrives (after the current
  step); it holds everything needed to continue (model, optimiser, scheduler, scaler, epoch, iteration, RNG states,
  config), and a resumed run on CPU reproduces the losses of an uninterrupted one.
- A NaN/inf loss stops the run with a message; the previous ``last.pth`` is kept.
- An OUTPUT_DIR that already holds a run is never overwritten unless resuming or OVERWRITE is set.
- No per-iteration device synchronisation: loss terms are accumulated on the device and read once per log period.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from configs.config import save_config
from data.build import build_dataloader
from data.gpu_augment import BatchAugment, build_batch_augment
from data.samplers import skip_batches
from loss import build_loss
from modeling import build_model
from modeling.checkpoint import check_arch, model_payload
from modeling.compile import compile_blocks
from processor.hooks import EvalHook, HookBase, LRScheduler, MetricLogger, PeriodicCheckpointer, StopOnSignal
from processor.inference import settings_for
from solver import build_optimizer, build_scheduler, optimizer_kernel
from utils import distributed as du
from utils.checkpoint import CheckpointError, safe_load, save_checkpoint
from utils.env import amp_dtype, device_description, git_commit, resolve_device, versions
from utils.logger import setup_logger
from utils.rng import rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)

RUN_MARKERS = ("config.yaml", "last.pth")
TRAINING_SECTIONS = ("model", "optimizer", "scheduler", "epoch", "iteration", "rng")


class RunExistsError(RuntimeError):
    """OUTPUT_DIR already holds a run and neither resume nor overwrite was asked for."""


class TrainingInterrupted(SystemExit):
    """Raised after a stop request once ``last.pth`` is written; the exit code is 128 + signal number."""


def check_output_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an existing one."""
    existing = [m for m in RUN_MARKERS if os.path.exists(os.path.join(output_dir, m))]
    if resume:
        if not os.path.exists(os.path.join(output_dir, "last.pth")):
            raise FileNotFoundError(f"nothing to resume: {os.path.join(output_dir, 'last.pth')} does not exist")
    elif existing and not overwrite:
        raise RunExistsError(
            f"OUTPUT_DIR {output_dir} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
            f"choose another OUTPUT_DIR, or set OVERWRITE True to replace it")


class Trainer:
    """Builds everything from the config and trains; ``train()`` returns the last evaluation's results.

    State the hooks read: ``epoch``, ``iteration`` (steps done in this epoch), ``global_step``, ``step_outputs``
    (the last step's loss terms, on the device), ``step_samples``, ``history``, ``best``, ``results``,
    ``cross_results``."""

    def __init__(self, cfg: CfgNode, resume: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume or cfg.SOLVER.RESUME
        self.device = resolve_device(cfg.MODEL.DEVICE)
        self.rank, self.world_size = du.init_distributed(self.device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        self.main = self.rank == 0
        self.output_dir = cfg.OUTPUT_DIR
        check_output_dir(self.output_dir, self.resume, cfg.OVERWRITE)
        setup_logger(self.output_dir, self.rank, "train_log.txt")
        logger.info("versions %s, device %s, commit %s, world size %d", versions(),
                    device_description(self.device), git_commit(), self.world_size)
        if cfg.SOLVER.DETERMINISTIC:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # input sizes are fixed: cuDNN times its kernels once, keeps the best
        seed_everything(cfg.SOLVER.SEED)

        self.data = build_dataloader(cfg, distributed=self.world_size > 1)
        if self.main and not self.resume:  # written once the data set has been read: a failed start leaves no run
            save_config(cfg, os.path.join(self.output_dir, "config.yaml"))
        self.model = build_model(cfg, self.data.num_classes, self.data.num_cameras).to(self.device)
        self.loss_fn = build_loss(cfg, self.data.num_classes)
        self.optimizer = build_optimizer(cfg, self.model)
        self.optimizer_kernel = optimizer_kernel(self.optimizer)  # "fused" when every parameter is on CUDA
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.amp = cfg.SOLVER.AMP and (self.device.type == "cuda" or cfg.SOLVER.AMP_CPU)
        self.amp_dtype = amp_dtype(cfg.SOLVER.AMP_DTYPE)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        # INPUT.GPU_AUGMENT: the loader sends uint8 crops; normalisation, flip and erasing run here, on the device.
        self.augment: BatchAugment | None = build_batch_augment(cfg, cfg.SOLVER.SEED + self.rank) \
            if cfg.INPUT.GPU_AUGMENT else None
        logger.info("train step: %s autocast, %s optimiser step, %s, augmentation on %s",
                    cfg.SOLVER.AMP_DTYPE if self.amp else "no", self.optimizer_kernel,
                    "compiled blocks" if cfg.MODEL.COMPILE else "eager",
                    self.device.type if self.augment is not None else "the loader workers")
        self.settings = settings_for(cfg.TEST.MISS)
        self.max_epochs = cfg.SOLVER.MAX_EPOCHS
        self.iters_per_epoch = 0  # of the current epoch: set with the sampler's epoch (it may vary per epoch)
        self.start_epoch, self.start_iteration = 1, 0
        self.epoch, self.iteration, self.global_step = 0, 0, 0
        self.best = {"mAP": -1.0, "epoch": 0}
        self.results: dict[str, Any] = {}
        self.cross_results: dict[str, Any] = {}  # per TEST.CROSS pair, from the last evaluation
        self.history: list[dict[str, Any]] = []  # one entry per log window: epoch, iteration, mean of each term
        self.step_outputs: dict[str, torch.Tensor] = {}
        self.step_samples = 0
        self.stop_signal: int | None = None
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        if self.resume:
            self.load_last()
        if cfg.MODEL.COMPILE:  # in place, before DDP: evaluation and checkpoints use the same model
            compile_blocks(self.model)
        self.train_model: nn.Module = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.writer = None
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(self.output_dir, "tb"))
        self.hooks: list[HookBase] = []
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------------------------------------------------------
    def build_hooks(self) -> list[HookBase]:
        """The default hooks, in the order they run: LR schedule, metric logging (and the NaN stop), evaluation (and
        best.pth, results.json), checkpoints, the stop on a signal."""
        cfg = self.cfg
        return [LRScheduler(), MetricLogger(cfg.SOLVER.LOG_PERIOD), EvalHook(cfg.SOLVER.EVAL_PERIOD),
                PeriodicCheckpointer(cfg.SOLVER.CHECKPOINT_PERIOD), StopOnSignal()]

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        """Append hooks (they run after the ones registered before)."""
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    def _call(self, stage: str) -> None:
        for hook in self.hooks:
            getattr(hook, stage)()

    # ------------------------------------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        try:
            self._call("before_train")
            for epoch in range(self.start_epoch, self.max_epochs + 1):
                self.epoch = epoch
                skip = self.start_iteration if self.epoch == self.start_epoch else 0
                self.iteration = skip
                self.sampler_epoch()
                self._call("before_epoch")
                self.train_model.train()
                self._nonfinite.zero_()
                for batch in skip_batches(self.data.train_loader, skip):
                    self.run_step(batch)
                    self._call("after_step")
                self._call("after_epoch")
            return self.results
        finally:
            self._call("after_train")
            if self.writer is not None:
                self.writer.close()

    def sampler_epoch(self) -> None:
        self.iters_per_epoch = self.epoch_length(self.epoch)

    def epoch_length(self, epoch: int) -> int:
        """Steps of ``epoch`` (known from the seed and the epoch before iterating; with ``DATALOADER.EPOCH_RULE
        original`` it varies per epoch). Selects that epoch in the sampler."""
        self.data.train_sampler.set_epoch(epoch)
        return len(self.data.train_loader)

    def run_step(self, batch: dict[str, Any]) -> None:
        """One optimisation step; the loss terms stay on the device (``step_outputs``)."""
        images = {s: batch["images"][s].to(self.device, non_blocking=True) for s in self.model.spectra}
        if self.augment is not None:
            images = self.augment.batch(images, share=self.cfg.INPUT.SHARE_AUG)
        pids = batch["pid"].to(self.device, non_blocking=True)
        cams = batch["camid"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            outputs = self.train_model(images, cams)
            loss, terms = self.loss_fn(outputs, pids)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.SOLVER.GRAD_CLIP > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.SOLVER.GRAD_CLIP)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._nonfinite |= ~torch.isfinite(loss.detach())
        self.step_outputs = {"loss": loss, **terms}
        self.step_samples = len(pids) * self.world_size
        self.iteration += 1
        self.global_step += 1

    def nonfinite_loss(self) -> bool:
        """Whether a step of this epoch had a NaN/inf loss (a device synchronisation)."""
        return bool(self._nonfinite)

    # ------------------------------------------------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop after the current step: last.pth is written and :class:`TrainingInterrupted` raised."""
        self.stop_signal = signum

    def interrupt(self, signum: int) -> None:
        if self.nonfinite_loss():
            raise FloatingPointError(f"loss became NaN/inf at epoch {self.epoch}; not saving last.pth over the last "
                                     f"good state")
        self.save_last()
        message = (f"interrupted by {signal.Signals(signum).name} at epoch {self.epoch}, iteration {self.iteration}; "
                   f"state saved to {os.path.join(self.output_dir, 'last.pth')}. Resume with: python train_net.py "
                   f"--config_file <the same config> OUTPUT_DIR {self.output_dir} --resume")
        logger.warning(message)
        raise TrainingInterrupted(128 + int(signum))

    # ------------------------------------------------------------------------------------------------------------------
    def model_payload(self, **sections: Any) -> dict[str, Any]:
        """The checkpoint of the model now (weights, sizes, architecture, config, epoch, commit) with ``sections``."""
        return model_payload(self.model, self.cfg, self.data.num_classes, self.data.num_cameras, epoch=self.epoch,
                             commit=git_commit(), **sections)

    def save_last(self) -> None:
        """``last.pth``: the model and everything needed to continue after ``iteration`` steps of ``epoch``."""
        if self.main:
            save_checkpoint(os.path.join(self.output_dir, "last.pth"), self.model_payload(
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(), iteration=self.iteration, global_step=self.global_step,
                rng=rng_state(), best=self.best, dataset=self.cfg.DATASETS.NAMES,
                **({"augment": self.augment.state_dict()} if self.augment is not None else {})))
        du.barrier()

    def load_last(self) -> None:
        path = os.path.join(self.output_dir, "last.pth")
        state = safe_load(path)
        missing = [k for k in TRAINING_SECTIONS if k not in state]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint of this project (missing {missing})")
        dataset = state.get("dataset")
        if dataset is None and isinstance(state.get("config"), str):
            dataset = CfgNode.load_cfg(state["config"]).DATASETS.NAMES
        check_arch(state, self.cfg, path, extra={"DATASETS.NAMES": dataset} if dataset is not None else None)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.best = dict(state.get("best", self.best))
        self.global_step = int(state.get("global_step", 0))
        epoch, iteration = int(state["epoch"]), int(state["iteration"])
        if iteration >= self.epoch_length(epoch):
            self.start_epoch, self.start_iteration = epoch + 1, 0
        else:
            self.start_epoch, self.start_iteration = epoch, iteration
        set_rng_state(state["rng"])
        if self.augment is not None and "augment" in state:
            self.augment.load_state_dict(state["augment"])
        logger.info("resumed from %s: epoch %d, iteration %d", path, self.start_epoch, self.start_iteration)

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the configured settings now (as the evaluation hook does after an epoch)."""
        hook = next(h for h in self.hooks if isinstance(h, EvalHook))
        return hook.evaluate()
