"""The training loop: a trainer that owns the run (directory, model, optimiser, checkpoints) and runs epochs of
steps, with hooks around it for everything else (:mod:`processor.hooks`).

What it guarantees:
- ``last.pth`` is written atomically at the end of every epoch and when a stop signal arrives (SIGTERM, SIGINT,
  SIGUSR1, SIGUSR2: after the current step, or at once during the end-of-epoch evaluation); it holds everything
  needed to continue (model, optimiser, scaler, epoch, iteration, whether the epoch's end (evaluation,
  checkpoints) is done, RNG states, config), and a resumed run on CPU reproduces the losses and evaluations of an
  uninterrupted one. A stop after an epoch's last step, or during its evaluation, resumes into that epoch's end.
- A resume may change the schedule and optimiser keys (the new values hold from the resumed epoch on, see
  :mod:`configs.resume`); any other changed key is an error naming it.
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
from configs.resume import RESUME_FREE, resume_changes
from data.build import build_dataloader
from data.gpu_augment import BatchAugment, build_batch_augment
from data.samplers import skip_batches
from loss import build_loss
from modeling import build_model
from modeling.checkpoint import check_arch, model_payload
from modeling.compile import compile_blocks
from processor.hooks import EvalHook, HookBase, LRScheduler, MetricLogger, PeriodicCheckpointer, StopOnSignal
from processor.inference import eval_settings
from solver import build_optimizer, build_scheduler, optimizer_kernel
from solver.optimizer import load_optimizer_state
from utils import distributed as du
from utils.checkpoint import CheckpointError, safe_load, save_checkpoint
from utils.env import amp_dtype, device_description, git_commit, resolve_device, versions
from utils.logger import setup_logger
from utils.rng import rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)

RUN_MARKERS = ("config.yaml", "last.pth")
TRAINING_SECTIONS = ("model", "optimizer", "epoch", "iteration", "rng")


class RunExistsError(RuntimeError):
    """OUTPUT_DIR already holds a run and neither resume nor overwrite was asked for."""


class TrainingInterrupted(SystemExit):
    """Raised after a stop request once ``last.pth`` is written; the exit code is 128 + signal number."""


def holds_training_run(folder: str) -> bool:
    """Whether ``folder`` is a training run's OUTPUT_DIR (its config.yaml beside last.pth or train_log.txt)."""
    return os.path.isfile(os.path.join(folder, "config.yaml")) and any(
        os.path.exists(os.path.join(folder, name)) for name in ("last.pth", "train_log.txt"))


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
        self.settings = eval_settings(cfg)  # TEST.MISS: the settings that exist for the spectra
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
        self.in_epoch_end = False  # the end-of-epoch hooks (evaluation, checkpoints) are running
        self.end_rng: dict[str, Any] | None = None  # RNG states when the epoch's last step was done
        self.saved_state: tuple[int, int, bool] | None = None  # (epoch, iteration, epoch_finished) of last.pth
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
                if skip < self.iters_per_epoch:
                    self.train_model.train()
                    self._nonfinite.zero_()
                    for batch in skip_batches(self.data.train_loader, skip):
                        self.run_step(batch)
                        self._call("after_step")
                else:
                    logger.info("epoch %d: every step was done before the stop; running its end (evaluation, "
                                "checkpoints)", epoch)
                self.end_rng = rng_state()  # what a stop during the end-of-epoch hooks saves
                self.in_epoch_end = True
                self._call("after_epoch")
                self.in_epoch_end = False
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
            # A method whose training forward uses the identities (``takes_labels``: EDITOR's class centres) gets them.
            labels = {"labels": pids} if getattr(self.model, "takes_labels", False) else {}
            outputs = self.train_model(images, cams, **labels)
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
        """Stop after the current step (or at once during the end-of-epoch evaluation): last.pth is written and
        :class:`TrainingInterrupted` raised. The first request's signal is the one reported (a cluster may follow
        its own SIGUSR2 with a SIGTERM from the job)."""
        if self.stop_signal is None:
            self.stop_signal = signum

    def stop_requested(self) -> bool:
        """Whether a stop was asked for; under torchrun, whether any rank was asked (all ranks must call it at the
        same point). The ranks agree over a CPU process group: the device is never synchronised."""
        flag = self.stop_signal is not None
        return du.any_rank(flag) if du.is_distributed() else flag

    def check_stop(self) -> None:
        """Interrupt now if a stop was asked for (see :meth:`interrupt`)."""
        if self.stop_requested():
            self.interrupt(self.stop_signal or signal.SIGTERM)

    def interrupt(self, signum: int) -> None:
        """Write last.pth as things stand and raise :class:`TrainingInterrupted`. During the end-of-epoch hooks the
        epoch is recorded as not finished: the resumed run runs them again, from the state the last step left."""
        if self.nonfinite_loss():
            raise FloatingPointError(f"loss became NaN/inf at epoch {self.epoch}; not saving last.pth over the last "
                                     f"good state")
        finished = self.saved_state is not None and self.saved_state == (self.epoch, self.iteration, True)
        if not finished:
            self.save_last(epoch_finished=False)
        where = "during the end of" if self.in_epoch_end and not finished else "at"
        message = (f"interrupted by {signal.Signals(signum).name} {where} epoch {self.epoch}, iteration "
                   f"{self.iteration}; state saved to {os.path.join(self.output_dir, 'last.pth')}. Resume with: "
                   f"python train_net.py --config_file <the same config> OUTPUT_DIR {self.output_dir} --resume")
        logger.warning(message)
        raise TrainingInterrupted(128 + int(signum))

    # ------------------------------------------------------------------------------------------------------------------
    def model_payload(self, **sections: Any) -> dict[str, Any]:
        """The checkpoint of the model now (weights, sizes, architecture, config, epoch, commit) with ``sections``."""
        return model_payload(self.model, self.cfg, self.data.num_classes, self.data.num_cameras, epoch=self.epoch,
                             commit=git_commit(), **sections)

    def save_last(self, epoch_finished: bool) -> None:
        """``last.pth``: the model and everything needed to continue after ``iteration`` steps of ``epoch``;
        ``epoch_finished`` says whether the epoch's end (evaluation, checkpoints) is done. Written during that end,
        it holds the RNG states of the epoch's last step, so the resumed run's end starts from the same states."""
        rng = self.end_rng if self.in_epoch_end and not epoch_finished else rng_state()
        if self.main:
            save_checkpoint(os.path.join(self.output_dir, "last.pth"), self.model_payload(
                optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(), iteration=self.iteration,
                global_step=self.global_step, epoch_finished=epoch_finished, rng=rng, best=self.best,
                dataset=self.cfg.DATASETS.NAMES,
                **({"augment": self.augment.state_dict()} if self.augment is not None else {})))
        self.saved_state = (self.epoch, self.iteration, epoch_finished)
        du.barrier()

    def load_last(self) -> None:
        """Continue from ``last.pth``: weights, optimiser state, RNG states and position. The run's config is
        compared with the saved one (:func:`configs.resume.resume_changes`); the schedule is the current config's,
        so honoured changes hold from the resumed epoch on."""
        path = os.path.join(self.output_dir, "last.pth")
        state = safe_load(path)
        missing = [k for k in TRAINING_SECTIONS if k not in state]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint of this project (missing {missing})")
        dataset = state.get("dataset")
        if dataset is None and isinstance(state.get("config"), str):
            dataset = CfgNode.load_cfg(state["config"]).DATASETS.NAMES
        check_arch(state, self.cfg, path, extra={"DATASETS.NAMES": dataset} if dataset is not None else None)
        epoch, iteration = int(state["epoch"]), int(state["iteration"])
        length = self.epoch_length(epoch)
        # Written before the end-of-epoch hooks were recorded: a full epoch counted as finished, as it was then.
        finished = bool(state.get("epoch_finished", iteration >= length))
        if epoch > self.max_epochs:
            raise CheckpointError(f"{path} is at epoch {epoch}; SOLVER.MAX_EPOCHS = {self.max_epochs} ends the run "
                                  f"before it (set SOLVER.MAX_EPOCHS {epoch} or more to continue it)")
        if isinstance(state.get("config"), str):
            self.report_changes(resume_changes(state["config"], self.cfg, path), epoch)
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        # No scheduler state is kept: the lr of an epoch is a function of the epoch and the current config.
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.best = dict(state.get("best", self.best))
        self.global_step = int(state.get("global_step", 0))
        if iteration >= length and finished:
            self.start_epoch, self.start_iteration = epoch + 1, 0
        else:
            self.start_epoch, self.start_iteration = epoch, min(iteration, length)
        set_rng_state(state["rng"])
        if self.augment is not None and "augment" in state:
            self.augment.load_state_dict(state["augment"])
        self.saved_state = (epoch, iteration, finished)
        logger.info("resumed from %s: epoch %d, iteration %d%s", path, self.start_epoch, self.start_iteration,
                    " (the steps are done; its evaluation and checkpoints are not)"
                    if self.start_iteration >= length and not finished else "")

    def report_changes(self, changes: list[tuple[str, Any, Any]], epoch: int) -> None:
        """Log the keys a resume changes; when a key that affects training changed, the run folder's config.yaml
        becomes the new config and the previous one is kept as ``config.until_epoch<N>.yaml``."""
        honoured = [c for c in changes if c[0] not in RESUME_FREE]
        for key, old, new in changes:
            if key in RESUME_FREE:
                logger.info("resume: %s %r -> %r", key, old, new)
        if not honoured:
            return
        logger.warning("resuming with changed settings, which hold from the resumed step on as if the run had been "
                       "started with them (the schedule is planned with the new values): %s",
                       "; ".join(f"{k} {old!r} -> {new!r}" for k, old, new in honoured))
        if self.main:
            current = os.path.join(self.output_dir, "config.yaml")
            if os.path.exists(current):
                os.replace(current, os.path.join(self.output_dir, f"config.until_epoch{epoch}.yaml"))
            save_config(self.cfg, current)

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the configured settings now (as the evaluation hook does after an epoch)."""
        hook = next(h for h in self.hooks if isinstance(h, EvalHook))
        return hook.evaluate()
