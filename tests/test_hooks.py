"""A new training behaviour is one hook class: registered hooks are called at every stage, in order, and can read
the trainer's state."""

from collections import Counter

from configs import load_config
from processor.hooks import EvalHook, HookBase, LRScheduler, MetricLogger, PeriodicCheckpointer, StopOnSignal
from processor.trainer import Trainer
from tests.helpers import register_toy_backbone, tiny_opts


class Recorder(HookBase):
    def __init__(self):
        self.calls = Counter()
        self.steps = []

    def before_train(self):
        self.calls["before_train"] += 1

    def before_epoch(self):
        self.calls["before_epoch"] += 1

    def after_step(self):
        self.calls["after_step"] += 1
        self.steps.append((self.trainer.epoch, self.trainer.iteration, self.trainer.global_step,
                           set(self.trainer.step_outputs)))

    def after_epoch(self):
        self.calls["after_epoch"] += 1

    def after_train(self):
        self.calls["after_train"] += 1


def test_a_registered_hook_sees_every_stage(demo_root, tmp_path):
    opts = tiny_opts(demo_root, str(tmp_path), **{"MODEL.TRANSFORMER_TYPE": register_toy_backbone(),
                                                  "SOLVER.MAX_EPOCHS": "2", "SOLVER.EVAL_PERIOD": "0"})
    trainer = Trainer(load_config(None, opts))
    assert [type(h) for h in trainer.hooks] == [LRScheduler, MetricLogger, EvalHook, PeriodicCheckpointer,
                                                StopOnSignal]
    recorder = Recorder()
    trainer.register_hooks([recorder])
    trainer.train()
    n = trainer.iters_per_epoch
    assert recorder.calls == {"before_train": 1, "before_epoch": 2, "after_step": 2 * n, "after_epoch": 2,
                              "after_train": 1}
    assert [s[:3] for s in recorder.steps] == [(e, i, (e - 1) * n + i) for e in (1, 2) for i in range(1, n + 1)]
    assert all({"loss", "crm"} <= terms for *_, terms in recorder.steps)
