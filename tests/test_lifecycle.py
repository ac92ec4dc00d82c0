"""A run survives its whole life: a stop in an epoch's last step or during its evaluation resumes into that epoch's
end, a resume with changed settings honours or refuses each change by name, test_net.py leaves a run's results
alone, and the stop check under torchrun never waits for the device."""

import json
import signal
import subprocess
import sys

import pytest
import torch

from configs import ConfigError, load_config
from processor.hooks import EvalHook, HookBase, StopOnSignal
from processor.trainer import Trainer, TrainingInterrupted
from solver import build_optimizer, build_scheduler
from tests.helpers import REPO, register_toy_backbone, stop_after_step, tiny_opts
from utils import distributed as du
from utils.checkpoint import safe_load

# Evaluation and epoch checkpoints after every epoch: what the end of an epoch does must happen exactly once.
END_OPTS = {"SOLVER.MAX_EPOCHS": "2", "SOLVER.EVAL_PERIOD": "1", "SOLVER.CHECKPOINT_PERIOD": "1"}


def _trainer(demo_root, out, resume=False, **overrides):
    opts = {"MODEL.TRANSFORMER_TYPE": register_toy_backbone(), **END_OPTS, **overrides}
    return Trainer(load_config(None, tiny_opts(demo_root, str(out), **opts)), resume=resume)


def _losses(history):
    return [(h["epoch"], h["iteration"], h["loss"]) for h in history]


class EvalRecorder(HookBase):
    """The epochs at which results were produced, and the results."""

    def __init__(self):
        self.evaluations = []

    def after_epoch(self):
        if self.trainer.results and self.trainer.results is not getattr(self, "_last", None):
            self._last = self.trainer.results
            self.evaluations.append((self.trainer.epoch, json.dumps(self.trainer.results, sort_keys=True)))


def _record(trainer):
    recorder = EvalRecorder()
    trainer.register_hooks([recorder])
    return recorder


@pytest.fixture(scope="module")
def end_reference(demo_root, tmp_path_factory):
    """The uninterrupted run (evaluation and epoch checkpoint every epoch)."""
    out = tmp_path_factory.mktemp("end_reference")
    trainer = _trainer(demo_root, out)
    recorder = _record(trainer)
    trainer.train()
    return out, trainer, recorder.evaluations


def _weights(path):
    return safe_load(str(path))["model"]


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("epoch", [1, 2], ids=["first-epoch", "last-epoch"])
def test_stop_in_the_last_step_of_an_epoch_resumes_into_its_end(demo_root, tmp_path, end_reference, epoch):
    ref_out, reference, ref_evaluations = end_reference
    epoch_len = len(reference.data.train_loader)
    first = _trainer(demo_root, tmp_path)
    first_evaluations = _record(first)
    stop_after_step(first, epoch * epoch_len)
    with pytest.raises(TrainingInterrupted):
        first.train()
    saved = safe_load(str(tmp_path / "last.pth"))
    assert (saved["epoch"], saved["iteration"], saved["epoch_finished"]) == (epoch, epoch_len, False)
    assert not (tmp_path / f"epoch_{epoch}.pth").exists()

    resumed = _trainer(demo_root, tmp_path, resume=True)
    resumed_evaluations = _record(resumed)
    results = resumed.train()
    assert results == reference.results and results
    assert first_evaluations.evaluations + resumed_evaluations.evaluations == ref_evaluations
    assert _losses(first.history) + _losses(resumed.history) == _losses(reference.history)
    for k in (1, 2):
        assert _same_weights(_weights(tmp_path / f"epoch_{k}.pth"), _weights(ref_out / f"epoch_{k}.pth"))
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["epoch"] == 2 and written["source"] == "training"
    assert written["settings"] == json.loads((ref_out / "results.json").read_text())["settings"]


class StopBeforeEvaluation(HookBase):
    """Asks for a stop at the end of ``epoch``, before the evaluation hook runs (as a signal arriving then)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def after_epoch(self):
        if self.trainer.epoch == self.epoch:
            self.trainer.request_stop(signal.SIGUSR2)


@pytest.mark.slow
def test_stop_during_evaluation_is_honoured_and_the_evaluation_runs_on_resume(demo_root, tmp_path, end_reference):
    _, reference, ref_evaluations = end_reference
    first = _trainer(demo_root, tmp_path)
    first_evaluations = _record(first)
    hook = StopBeforeEvaluation(1)
    hook.trainer = first
    first.hooks.insert(next(i for i, h in enumerate(first.hooks) if isinstance(h, EvalHook)), hook)
    with pytest.raises(TrainingInterrupted) as info:
        first.train()
    assert info.value.code == 128 + signal.SIGUSR2
    assert first.epoch == 1 and first_evaluations.evaluations == []  # stopped inside the evaluation
    assert not (tmp_path / "results.json").exists()
    saved = safe_load(str(tmp_path / "last.pth"))
    assert (saved["epoch"], saved["epoch_finished"]) == (1, False)

    resumed = _trainer(demo_root, tmp_path, resume=True)
    resumed_evaluations = _record(resumed)
    assert resumed.train() == reference.results
    assert resumed_evaluations.evaluations == ref_evaluations
    assert _losses(first.history) + _losses(resumed.history) == _losses(reference.history)


@pytest.mark.slow
def test_a_stop_after_the_last_epoch_ends_the_run_normally(demo_root, tmp_path, end_reference):
    _, reference, _ = end_reference
    trainer = _trainer(demo_root, tmp_path)
    hook = StopBeforeEvaluation(2)  # placed after the evaluation and checkpoints: the run is complete
    hook.trainer = trainer
    trainer.hooks.insert(next(i for i, h in enumerate(trainer.hooks) if isinstance(h, StopOnSignal)), hook)
    assert trainer.train() == reference.results
    assert safe_load(str(tmp_path / "last.pth"))["epoch_finished"] is True


# ----------------------------------------------------------------------------------------------------------------------
# Resuming with changed settings.

class LrRecorder(HookBase):
    """Every group's lr and weight decay at the start of each epoch (after the schedule has set them)."""

    def __init__(self):
        self.epochs = {}

    def before_epoch(self):
        groups = self.trainer.optimizer.param_groups
        self.epochs[self.trainer.epoch] = [(g["name"], g["lr"], g["weight_decay"]) for g in groups]


def _recorded(trainer):
    recorder = LrRecorder()
    trainer.register_hooks([recorder])
    return recorder


NO_EVAL = {"SOLVER.EVAL_PERIOD": "0", "SOLVER.CHECKPOINT_PERIOD": "0"}


@pytest.fixture(scope="module")
def finished_short_run(demo_root, tmp_path_factory):
    """A finished 2-epoch run whose folder the resume tests copy."""
    out = tmp_path_factory.mktemp("short_run")
    _trainer(demo_root, out, **NO_EVAL).train()
    return out


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tb"))
    return dst


@pytest.mark.slow
def test_resume_with_more_epochs_follows_the_schedule_of_the_new_length(demo_root, tmp_path, finished_short_run):
    out = _copy_run(finished_short_run, tmp_path / "run")
    resumed = _trainer(demo_root, out, resume=True, **NO_EVAL, **{"SOLVER.MAX_EPOCHS": "4"})
    lrs = _recorded(resumed)
    resumed.train()
    assert sorted(lrs.epochs) == [3, 4]
    # The lr a 4-epoch run has at epochs 3 and 4 (the schedule is a function of the epoch and the config).
    cfg = load_config(None, tiny_opts(demo_root, str(tmp_path / "fresh"), **{
        "MODEL.TRANSFORMER_TYPE": register_toy_backbone(), **END_OPTS, **NO_EVAL, "SOLVER.MAX_EPOCHS": "4"}))
    optimizer = build_optimizer(cfg, resumed.model)
    scheduler = build_scheduler(cfg, optimizer)
    for epoch in (3, 4):
        scheduler.step(epoch)
        assert [lr for _, lr, _ in lrs.epochs[epoch]] == pytest.approx([g["lr"] for g in optimizer.param_groups],
                                                                     rel=1e-12)
    floor = cfg.SOLVER.MIN_LR_FACTOR * cfg.SOLVER.BASE_LR
    assert lrs.epochs[3][0][1] > 10 * floor  # not left at the 2-epoch schedule's floor
    config_now = (out / "config.yaml").read_text()
    assert "MAX_EPOCHS: 4" in config_now and "MAX_EPOCHS: 2" in (out / "config.until_epoch2.yaml").read_text()
    assert json.loads((out / "results.json").read_text())["epoch"] == 4


@pytest.mark.slow
def test_resume_applies_a_new_backbone_factor_and_weight_decay(demo_root, tmp_path, finished_short_run):
    out = _copy_run(finished_short_run, tmp_path / "run")
    resumed = _trainer(demo_root, out, resume=True, **NO_EVAL, **{
        "SOLVER.MAX_EPOCHS": "3", "SOLVER.BACKBONE_LR_FACTOR": "0.1", "SOLVER.WEIGHT_DECAY": "0.001"})
    lrs = _recorded(resumed)
    resumed.train()
    groups = {name: (lr, decay) for name, lr, decay in lrs.epochs[3]}
    backbone = [v for k, v in groups.items() if k.startswith("backbones ") and "weights" in k]
    heads = [v for k, v in groups.items() if not k.startswith("backbones") and "weights" in k]
    assert backbone and heads
    assert backbone[0][0] == pytest.approx(0.1 * heads[0][0], rel=1e-12)
    assert backbone[0][1] == heads[0][1] == 0.001
    assert all(decay == 0.001 for name, _, decay in lrs.epochs[3] if "weights" in name)


@pytest.mark.slow
def test_momentum_buffers_survive_a_regrouping(demo_root, tmp_path, finished_short_run):
    out = _copy_run(finished_short_run, tmp_path / "run")
    saved = safe_load(str(out / "last.pth"))["optimizer"]
    trainer = _trainer(demo_root, out, resume=True, **NO_EVAL, **{"SOLVER.MAX_EPOCHS": "3",
                                                                  "SOLVER.BACKBONE_LR_FACTOR": "0.1"})
    expected = {n: saved["state"][i]["momentum_buffer"] for g in saved["param_groups"]
                for i, n in zip(g["params"], g["param_names"]) if i in saved["state"]}
    params = dict(trainer.model.named_parameters())
    assert len(trainer.optimizer.param_groups) > len(saved["param_groups"])  # the backbone has groups of its own
    assert len(trainer.optimizer.state) == len(expected) > 0.9 * len(params)
    for name, buffer in expected.items():
        assert torch.equal(trainer.optimizer.state[params[name]]["momentum_buffer"], buffer), name


@pytest.mark.slow
def test_resume_with_a_changed_loss_weight_is_refused_naming_key_and_values(demo_root, tmp_path, finished_short_run):
    out = _copy_run(finished_short_run, tmp_path / "run")
    before = (out / "last.pth").read_bytes()
    with pytest.raises(ConfigError) as info:
        _trainer(demo_root, out, resume=True, **NO_EVAL, **{"SOLVER.MAX_EPOCHS": "3", "MODEL.ID_LOSS_WEIGHT": "0.5",
                                                            "SOLVER.SEED": "7"})
    message = str(info.value)
    for part in ("MODEL.ID_LOSS_WEIGHT", "1.0", "0.5", "SOLVER.SEED", "7", str(out / "last.pth")):
        assert part in message, part
    assert "SOLVER.MAX_EPOCHS" not in message.split("):")[0]  # an honoured change is not refused
    assert (out / "last.pth").read_bytes() == before
    assert "MAX_EPOCHS: 2" in (out / "config.yaml").read_text()


def test_resume_changes_refuse_a_changed_augmentation_and_list_allowed_ones(demo_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    trainer_opts = tiny_opts(demo_root, str(out), **{"SOLVER.MAX_EPOCHS": "1", **NO_EVAL})
    cfg = load_config(None, trainer_opts)
    from configs.resume import resume_changes

    changed = load_config(None, [*trainer_opts, "INPUT.RE_PROB", "0.1"])
    with pytest.raises(ConfigError, match=r"INPUT\.RE_PROB: 0\.5 in the run, 0\.1 now"):
        resume_changes(cfg, changed, "last.pth")
    assert [k for k, _, _ in resume_changes(cfg, load_config(None, [*trainer_opts, "SOLVER.BASE_LR", "0.02",
                                                                     "DATALOADER.NUM_WORKERS", "2"]),
                                            "last.pth")] == ["DATALOADER.NUM_WORKERS", "SOLVER.BASE_LR"]


# ----------------------------------------------------------------------------------------------------------------------
# test_net.py on a checkpoint inside a run's folder.

@pytest.mark.slow
def test_test_net_in_a_run_folder_leaves_the_runs_results(vit_tiny_run, demo_root, tmp_path):
    import shutil

    run_dir, _, _ = vit_tiny_run
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "train_log.txt", "results.json", "best.pth"):
        shutil.copy(run_dir / name, out / name)
    before = (out / "results.json").read_bytes()
    proc = subprocess.run([sys.executable, "test_net.py", *tiny_opts(demo_root, str(out), **{
        "TEST.WEIGHT": str(out / "best.pth"), "TEST.MISS": "all"})], cwd=REPO, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (out / "results.json").read_bytes() == before
    written = json.loads((out / "test_best" / "results.json").read_text())
    assert written["source"] == "test" and len(written["settings"]) == 7
    assert str(out / "test_best") in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------------------------------
# Under torchrun the ranks agree on a stop without a device synchronisation.

def test_the_stop_flag_is_reduced_on_the_cpu_control_group(monkeypatch):
    calls = []

    def all_reduce(tensor, op=None, group=None):
        calls.append((tensor.device.type, group))

    control = object()
    monkeypatch.setattr(du, "is_distributed", lambda: True)
    monkeypatch.setattr(du, "_CONTROL_GROUP", control)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    trainer = object.__new__(Trainer)
    trainer.stop_signal = None
    trainer.device = torch.device("meta")  # a device tensor could not be read back at all
    hook = StopOnSignal()
    hook.trainer = trainer
    hook.after_step()
    assert calls == [("cpu", control)]
