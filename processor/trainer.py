"""The training loop: one class that owns the run directory, the model, the optimiser and the checkpoints.

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
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm
from yacs.config import CfgNode

from configs.config import save_config
from data.build import make_dataloader
from evaluation import evaluate_settings, format_table
from loss import make_loss
from modeling import make_model
from processor.inference import extract_features, settings_for
from solver import make_optimizer, make_scheduler
from utils import distributed as du
from utils.checkpoint import CheckpointError, safe_load, save_checkpoint
from utils.env import device_description, git_commit, resolve_device, versions
from utils.io import write_json

logger = logging.getLogger(__name__)

RUN_MARKERS = ("config.yaml", "last.pth")


class RunExistsError(RuntimeError):
    """OUTPUT_DIR already holds a run and neither resume nor overwrite was asked for."""


class TrainingInterrupted(SystemExit):
    """Raised after a signal once ``last.pth`` is written; the exit code is 128 + signal number."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def amp_dtype(cfg: CfgNode) -> torch.dtype:
    return torch.bfloat16 if cfg.SOLVER.AMP_DTYPE == "bf16" else torch.float16


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


class _SkipBatches(Sampler):
    """The first ``skip`` batches of a batch sampler left out: resuming in the middle of an epoch."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def _resumed_loader(loader: DataLoader, skip: int) -> DataLoader:
    return DataLoader(loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, skip),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      generator=loader.generator)  # never draw from the global RNG: resume must not shift it


class Trainer:
    """Builds everything from the config and trains; ``train()`` returns the last evaluation's results."""

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
        from utils.logger import setup_logger

        setup_logger(self.output_dir, self.rank, "train_log.txt")
        logger.info("versions %s, device %s, commit %s, world size %d", versions(),
                    device_description(self.device), git_commit(), self.world_size)
        if self.main and not self.resume:
            save_config(cfg, os.path.join(self.output_dir, "config.yaml"))
        if cfg.SOLVER.DETERMINISTIC:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.SOLVER.SEED)

        self.data = make_dataloader(cfg, distributed=self.world_size > 1)
        self.model = make_model(cfg, self.data.num_classes, self.data.num_cameras).to(self.device)
        self.loss_fn = make_loss(cfg, self.data.num_classes)
        self.optimizer = make_optimizer(cfg, self.model)
        self.scheduler = make_scheduler(cfg, self.optimizer)
        self.amp = cfg.SOLVER.AMP and self.device.type == "cuda"
        self.amp_dtype = amp_dtype(cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.settings = settings_for(cfg.TEST.MISS)
        self.start_epoch, self.start_iteration = 1, 0
        self.best = {"mAP": -1.0, "epoch": 0}
        self.global_step = 0
        self.history: list[dict[str, Any]] = []  # one entry per log window: epoch, iteration, mean of each term
        if self.resume:
            self._load_last()
        self.train_model: nn.Module = self.model
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.MODEL.COMPILE:
            self.train_model = torch.compile(self.train_model)
        self.writer = None
        if self.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(self.output_dir, "tb"))
        self._stop_signal: int | None = None

    # ------------------------------------------------------------------------------------------------------------------
    def _payload(self, epoch: int, iteration: int) -> dict[str, Any]:
        return {"format": "topreid", "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
                "iteration": iteration, "global_step": self.global_step, "rng": rng_state(), "best": self.best,
                "config": self.cfg.dump(), "commit": git_commit()}

    def _save_last(self, epoch: int, iteration: int) -> None:
        if self.main:
            save_checkpoint(os.path.join(self.output_dir, "last.pth"), self._payload(epoch, iteration))
        du.barrier()

    def _load_last(self) -> None:
        path = os.path.join(self.output_dir, "last.pth")
        state = safe_load(path)
        missing = [k for k in ("model", "optimizer", "scheduler", "epoch", "iteration", "rng") if k not in state]
        if missing:
            raise CheckpointError(f"{path}: not a training checkpoint of this project (missing {missing})")
        saved_cfg = CfgNode.load_cfg(state["config"]) if "config" in state else None
        if saved_cfg is not None:
            for key in ("MODEL.TRANSFORMER_TYPE", "MODEL.DIRECT", "MODEL.RE", "MODEL.BASE", "DATASETS.NAMES"):
                a, b = saved_cfg, self.cfg
                for part in key.split("."):
                    a, b = a[part], b[part]
                if a != b:
                    raise CheckpointError(f"{path}: the run was trained with {key} = {a!r}, the config says {b!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.best = dict(state.get("best", self.best))
        self.global_step = int(state.get("global_step", 0))
        epoch, iteration = int(state["epoch"]), int(state["iteration"])
        if iteration >= len(self.data.train_loader):
            self.start_epoch, self.start_iteration = epoch + 1, 0
        else:
            self.start_epoch, self.start_iteration = epoch, iteration
        set_rng_state(state["rng"])
        logger.info("resumed from %s: epoch %d, iteration %d", path, self.start_epoch, self.start_iteration)

    # ------------------------------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is None:
            logger.warning("received %s: finishing the current step, then saving last.pth",
                           signal.Signals(signum).name)
        self._stop_signal = signum

    def _stop_requested(self) -> bool:
        flag = self._stop_signal is not None
        if du.is_distributed():
            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
            if flag and self._stop_signal is None:
                self._stop_signal = signal.SIGTERM
        return flag

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            results: dict[str, Any] = {}
            for epoch in range(self.start_epoch, cfg.SOLVER.MAX_EPOCHS + 1):
                self._train_epoch(epoch, self.start_iteration if epoch == self.start_epoch else 0)
                last_epoch = epoch == cfg.SOLVER.MAX_EPOCHS
                period = cfg.SOLVER.EVAL_PERIOD
                if last_epoch or (period > 0 and epoch % period == 0):
                    results = self.evaluate(epoch)
                self._save_last(epoch, len(self.data.train_loader))
                if self.main and cfg.SOLVER.CHECKPOINT_PERIOD > 0 and epoch % cfg.SOLVER.CHECKPOINT_PERIOD == 0:
                    save_checkpoint(os.path.join(self.output_dir, f"epoch_{epoch}.pth"),
                                    {"format": "topreid", "model": self.model.state_dict(), "epoch": epoch,
                                     "config": cfg.dump()})
            if self.main and self.best["epoch"]:
                logger.info("best mAP %.1f%% at epoch %d (selected on the test set: these data sets have no "
                            "validation split)", 100 * self.best["mAP"], self.best["epoch"])
            return results
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.writer is not None:
                self.writer.close()

    def _train_epoch(self, epoch: int, skip: int) -> None:
        cfg = self.cfg
        self.scheduler.step(epoch)
        sampler = self.data.train_sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        loader = self.data.train_loader if skip == 0 else _resumed_loader(self.data.train_loader, skip)
        num_iters = len(self.data.train_loader)
        self.train_model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        logger.info("epoch %d/%d, lr %.2e, %d iterations", epoch, cfg.SOLVER.MAX_EPOCHS, lr, num_iters)
        if self.writer is not None:
            self.writer.add_scalar("lr", lr, epoch)
        sums: dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        count, samples, window_start = 0, 0, time.perf_counter()
        epoch_start = time.perf_counter()
        bar = tqdm(total=num_iters, initial=skip, desc=f"epoch {epoch}", disable=not self.main, dynamic_ncols=True,
                   mininterval=2.0, leave=False)
        iteration = skip
        for batch in loader:
            images = {s: batch["images"][s].to(self.device, non_blocking=True) for s in self.model.spectra}
            pids = batch["pid"].to(self.device, non_blocking=True)
            cams = batch["camid"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                outputs = self.train_model(images, cams)
                loss, terms = self.loss_fn(outputs, pids)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.SOLVER.GRAD_CLIP > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.SOLVER.GRAD_CLIP)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            nonfinite |= ~torch.isfinite(loss.detach())
            for name, value in {"loss": loss, **terms}.items():
                v = value.detach().float()
                sums[name] = sums[name] + v if name in sums else v
            count += 1
            samples += len(pids) * self.world_size
            iteration += 1
            self.global_step += 1
            bar.update(1)
            at_end = iteration == num_iters
            if count % cfg.SOLVER.LOG_PERIOD == 0 or at_end:
                self._log_window(epoch, iteration, num_iters, sums, count, samples, window_start, nonfinite, bar)
                sums, count, samples, window_start = {}, 0, 0, time.perf_counter()
            if self._stop_requested():
                bar.close()
                self._interrupt(epoch, iteration, nonfinite)
        bar.close()
        logger.info("epoch %d done in %.1f s", epoch, time.perf_counter() - epoch_start)

    def _log_window(self, epoch: int, iteration: int, num_iters: int, sums: dict[str, torch.Tensor], count: int,
                    samples: int, window_start: float, nonfinite: torch.Tensor, bar: tqdm) -> None:
        names = list(sums)
        values = (torch.stack([sums[n] for n in names]) / count).tolist()  # the one sync of the window
        if bool(nonfinite):
            bar.close()
            raise FloatingPointError(
                f"loss became NaN/inf at epoch {epoch} (iterations up to {iteration}); stopping. The last good "
                f"state is {os.path.join(self.output_dir, 'last.pth')} (end of the previous epoch, if any). "
                f"Lower SOLVER.BASE_LR or set SOLVER.GRAD_CLIP.")
        speed = samples / max(time.perf_counter() - window_start, 1e-9)
        self.history.append({"epoch": epoch, "iteration": iteration, **dict(zip(names, values))})
        text = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, values))
        logger.info("epoch %d iter %d/%d: %s, %.1f samples/s", epoch, iteration, num_iters, text, speed)
        bar.set_postfix(loss=f"{values[0]:.3f}", speed=f"{speed:.0f}/s")
        if self.writer is not None:
            for n, v in zip(names, values):
                self.writer.add_scalar(f"train/{n}", v, self.global_step)
            self.writer.add_scalar("train/samples_per_s", speed, self.global_step)

    def _interrupt(self, epoch: int, iteration: int, nonfinite: torch.Tensor) -> None:
        signum = self._stop_signal or signal.SIGTERM
        if bool(nonfinite):
            raise FloatingPointError(f"loss became NaN/inf at epoch {epoch}; not saving last.pth over the last good "
                                     f"state")
        self._save_last(epoch, iteration)
        message = (f"interrupted by {signal.Signals(signum).name} at epoch {epoch}, iteration {iteration}; state saved "
                   f"to {os.path.join(self.output_dir, 'last.pth')}. Resume with: python train_net.py --config_file "
                   f"<the same config> OUTPUT_DIR {self.output_dir} --resume")
        logger.warning(message)
        raise TrainingInterrupted(128 + int(signum))

    # ------------------------------------------------------------------------------------------------------------------
    def evaluate(self, epoch: int) -> dict[str, Any]:
        """Evaluate the configured settings, write results.json, keep best.pth (rank 0)."""
        cfg = self.cfg
        extracted = extract_features(self.model, self.data.test_loader, self.device, self.settings, self.amp,
                                     self.amp_dtype)
        if not self.main:
            return {}
        results = evaluate_settings(extracted, self.data.num_query, self.data.dataset.junk_key, cfg.TEST.FEAT_NORM,
                                    cfg.TEST.RE_RANKING)
        logger.info("evaluation at epoch %d (%.1f s):\n%s", epoch, extracted.seconds, format_table(results))
        primary = results[self.settings[0]]
        if self.writer is not None:
            for setting, m in results.items():
                self.writer.add_scalar(f"eval/{setting}/mAP", m["mAP"], epoch)
                self.writer.add_scalar(f"eval/{setting}/Rank-1", m["Rank-1"], epoch)
        if primary["mAP"] > self.best["mAP"]:
            self.best = {"mAP": primary["mAP"], "epoch": epoch}
            save_checkpoint(os.path.join(self.output_dir, "best.pth"),
                            {"format": "topreid", "model": self.model.state_dict(), "epoch": epoch,
                             "config": cfg.dump(), "metrics": results})
            logger.info("new best mAP %.1f%% at epoch %d -> best.pth (selected on the test set)",
                        100 * primary["mAP"], epoch)
        write_results(os.path.join(self.output_dir, "results.json"), results, cfg,
                      os.path.join(self.output_dir, "last.pth"), epoch, self.device)
        return results


def write_results(path: str, results: dict[str, dict[str, float]], cfg: CfgNode, checkpoint: str, epoch: int | None,
                  device: torch.device) -> None:
    write_json(path, {"settings": results, "checkpoint": checkpoint, "epoch": epoch, "config": cfg.dump(),
                      "commit": git_commit(), "versions": versions(), "device": device_description(device)})
