"""Hooks: what happens around the training loop, one concern per class (the detectron2 / fast-reid pattern).

A hook overrides any of ``before_train``, ``before_epoch``, ``after_step``, ``after_epoch``, ``after_train`` and
reads or drives the trainer through ``self.trainer`` (set by :meth:`Trainer.register_hooks`). Hooks run in list
order; :meth:`Trainer.build_hooks` assembles the default list. A new behaviour (EMA, another logger) is one class.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import torch
from tqdm import tqdm

from evaluation import format_cross_matrix, format_table
from processor.inference import eval_amp, eval_pairs, extract_features, extraction_settings, score, write_results
from utils.checkpoint import save_checkpoint

logger = logging.getLogger(__name__)


class HookBase:
    trainer: Any  # the processor.trainer.Trainer the hook is registered with

    def before_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def after_step(self) -> None: ...

    def after_epoch(self) -> None: ...

    def after_train(self) -> None: ...


class LRScheduler(HookBase):
    """Sets the epoch's learning rates (the schedule is per epoch, as the original) and logs them."""

    def before_epoch(self) -> None:
        t = self.trainer
        t.scheduler.step(t.epoch)
        groups = t.optimizer.param_groups
        lr = next((g["lr"] for g in groups if g.get("lr_scale", 1.0) == 1.0), groups[0]["lr"])
        scaled = {g["name"]: g["lr"] for g in groups if g.get("lr_scale", 1.0) != 1.0 and "name" in g}
        logger.info("epoch %d/%d, lr %.2e%s, %d iterations", t.epoch, t.max_epochs, lr,
                    "".join(f", {name} lr {value:.2e}" for name, value in scaled.items()), t.iters_per_epoch)
        if t.writer is not None:
            t.writer.add_scalar("lr", lr, t.epoch)
            for name, value in scaled.items():
                t.writer.add_scalar(f"lr/{name.replace(' ', '_')}", value, t.epoch)


class MetricLogger(HookBase):
    """Loss terms averaged over ``period`` steps with one device synchronisation per window: the log line, the
    progress bar, TensorBoard and ``trainer.history``. A NaN/inf loss in a window stops the run."""

    def __init__(self, period: int) -> None:
        self.period = period

    def before_epoch(self) -> None:
        t = self.trainer
        self.bar = tqdm(total=t.iters_per_epoch, initial=t.iteration, desc=f"epoch {t.epoch}",
                        disable=None if t.main else True, dynamic_ncols=True, mininterval=2.0, leave=False)
        self.epoch_start = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.samples, self.window_start = 0, 0, time.perf_counter()

    def after_step(self) -> None:
        t = self.trainer
        for name, value in t.step_outputs.items():
            v = value.detach().float()
            self.sums[name] = self.sums[name] + v if name in self.sums else v
        self.count += 1
        self.samples += t.step_samples
        self.bar.update(1)
        if self.count % self.period == 0 or t.iteration == t.iters_per_epoch:
            self._write()
            self._reset()

    def _write(self) -> None:
        t = self.trainer
        names = list(self.sums)
        values = (torch.stack([self.sums[n] for n in names]) / self.count).tolist()  # the one sync of the window
        if t.nonfinite_loss():
            self.bar.close()
            raise FloatingPointError(
                f"loss became NaN/inf at epoch {t.epoch} (iterations up to {t.iteration}); stopping. The last good "
                f"state is {os.path.join(t.output_dir, 'last.pth')} (end of the previous epoch, if any). "
                f"Lower SOLVER.BASE_LR or set SOLVER.GRAD_CLIP.")
        speed = self.samples / max(time.perf_counter() - self.window_start, 1e-9)
        t.history.append({"epoch": t.epoch, "iteration": t.iteration, **dict(zip(names, values))})
        text = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, values))
        logger.info("epoch %d iter %d/%d: %s, %.1f samples/s", t.epoch, t.iteration, t.iters_per_epoch, text, speed)
        self.bar.set_postfix(loss=f"{values[0]:.3f}", speed=f"{speed:.0f}/s")
        if t.writer is not None:
            for n, v in zip(names, values):
                t.writer.add_scalar(f"train/{n}", v, t.global_step)
            t.writer.add_scalar("train/samples_per_s", speed, t.global_step)

    def after_epoch(self) -> None:
        self.bar.close()
        logger.info("epoch %d done in %.1f s", self.trainer.epoch, time.perf_counter() - self.epoch_start)

    def after_train(self) -> None:
        if getattr(self, "bar", None) is not None:
            self.bar.close()


class EvalHook(HookBase):
    """Evaluates the configured settings (and the `TEST.CROSS` pairs, in the same pass) every ``period`` epochs and
    after the last; rank 0 writes results.json and keeps ``best.pth`` (selected on the first `TEST.MISS` setting, on
    the test set, as these data sets have no validation split). The cross results are ``trainer.cross_results``."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_epoch(self) -> None:
        t = self.trainer
        if t.epoch == t.max_epochs or (self.period > 0 and t.epoch % self.period == 0):
            t.results = self.evaluate()

    def evaluate(self) -> dict[str, Any]:
        t = self.trainer
        cfg = t.cfg
        pairs = eval_pairs(cfg, t.model)
        extracted = extract_features(t.model, t.data.test_loader, t.device, extraction_settings(t.settings, pairs),
                                     eval_amp(cfg, t.device), t.amp_dtype, check_stop=t.check_stop)
        if not t.main:
            return {}
        results, cross = score(extracted, t.data.num_query, t.data.dataset.junk_key, cfg, t.settings, pairs)
        logger.info("evaluation at epoch %d (%.1f s):\n%s", t.epoch, extracted.seconds, format_table(results))
        if cross:
            logger.info("cross-spectral evaluation at epoch %d:\n%s", t.epoch,
                        format_cross_matrix(cross, pairs, results))
        t.cross_results = cross
        if t.writer is not None:
            for setting, m in results.items():
                t.writer.add_scalar(f"eval/{setting}/mAP", m["mAP"], t.epoch)
                t.writer.add_scalar(f"eval/{setting}/Rank-1", m["Rank-1"], t.epoch)
            for name, m in cross.items():  # "RGB+NI->TI" -> eval_cross/RGB+NI_to_TI/mAP (out of the eval/ curves)
                tag = name.replace("->", "_to_")
                t.writer.add_scalar(f"eval_cross/{tag}/mAP", m["mAP"], t.epoch)
                t.writer.add_scalar(f"eval_cross/{tag}/Rank-1", m["Rank-1"], t.epoch)
        primary = results[t.settings[0]]
        if primary["mAP"] > t.best["mAP"]:
            t.best = {"mAP": primary["mAP"], "epoch": t.epoch}
            save_checkpoint(os.path.join(t.output_dir, "best.pth"), t.model_payload(metrics=results))
            logger.info("new best mAP %.1f%% at epoch %d -> best.pth (selected on the test set)",
                        100 * primary["mAP"], t.epoch)
        write_results(os.path.join(t.output_dir, "results.json"), results, cfg,
                      os.path.join(t.output_dir, "last.pth"), t.epoch, t.device, cross, source="training")
        return results

    def after_train(self) -> None:
        t = self.trainer
        if t.main and t.best["epoch"]:
            logger.info("best mAP %.1f%% at epoch %d (selected on the test set: these data sets have no "
                        "validation split)", 100 * t.best["mAP"], t.best["epoch"])


class PeriodicCheckpointer(HookBase):
    """``last.pth`` (everything needed to resume) after every epoch, ``epoch_<N>.pth`` (weights) every ``period``
    epochs (0: never)."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_epoch(self) -> None:
        t = self.trainer
        t.save_last(epoch_finished=True)
        if t.main and self.period > 0 and t.epoch % self.period == 0:
            save_checkpoint(os.path.join(t.output_dir, f"epoch_{t.epoch}.pth"), t.model_payload())


class StopOnSignal(HookBase):
    """A stop signal or :meth:`Trainer.request_stop`: ``last.pth`` is written and the run ends with
    :class:`TrainingInterrupted` (exit code 128 + signal), soon enough for a cluster's warning before a kill.

    Signals: SIGTERM (Slurm pre-emption, ``scancel``, ``scontrol requeue``), SIGINT (Ctrl-C), SIGUSR1 and SIGUSR2
    (the time-limit warnings clusters send with ``--signal``; submitit's is SIGUSR2 90 s before the limit). During
    training the current step finishes first; during the end-of-epoch evaluation the stop comes at the next test
    batch and the resumed run evaluates again; after the epoch's checkpoints it comes at once. After the last
    epoch's end there is nothing left to save and the run ends normally. Under torchrun the ranks agree to stop at
    the same step."""

    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

    def before_train(self) -> None:
        self.previous = {sig: signal.signal(sig, self._on_signal) for sig in self.signals}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.trainer.stop_signal is None:
            logger.warning("received %s: stopping after the current step (or test batch), then saving last.pth",
                           signal.Signals(signum).name)
        self.trainer.request_stop(signum)

    def after_step(self) -> None:
        self.trainer.check_stop()

    def after_epoch(self) -> None:
        t = self.trainer
        if t.epoch < t.max_epochs:
            t.check_stop()
        elif t.stop_signal is not None:
            logger.warning("received %s after the last epoch's end: the run is complete",
                           signal.Signals(t.stop_signal).name)

    def after_train(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
