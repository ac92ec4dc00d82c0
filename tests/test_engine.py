"""The training loop and test_net on the demo data: loss goes down, resume reproduces, failures are loud."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from configs import load_config
from processor.trainer import RunExistsError, Trainer, TrainingInterrupted
from tests.helpers import register_toy_backbone, stop_after_step, tiny_opts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESUME_OPTS = {"SOLVER.MAX_EPOCHS": "2", "SOLVER.EVAL_PERIOD": "0"}


def _trainer(demo_root, out, resume=False, **overrides):
    """A trainer of the toy backbone: what these tests check does not depend on the backbone's size."""
    opts = {"MODEL.TRANSFORMER_TYPE": register_toy_backbone(), **overrides}
    return Trainer(load_config(None, tiny_opts(demo_root, str(out), **opts)), resume=resume)


@pytest.fixture(scope="module")
def resume_reference(demo_root, tmp_path_factory):
    """The uninterrupted run every resume test compares against, trained once."""
    reference = _trainer(demo_root, tmp_path_factory.mktemp("resume_reference"), **RESUME_OPTS)
    reference.train()
    return reference


def _losses(history):
    return [(h["epoch"], h["iteration"], h["loss"]) for h in history]


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_outputs(trained_run):
    out, trainer, results = trained_run
    losses = [h["loss"] for h in trainer.history]
    k = max(2, len(losses) // 5)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k
    for name in ("config.yaml", "last.pth", "best.pth", "results.json", "train_log.txt"):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) >= {"settings", "checkpoint", "epoch", "config", "commit", "versions"}
    assert saved["epoch"] == 2 and 0.0 <= saved["settings"]["nothing"]["mAP"] <= 1.0
    assert set(saved["versions"]) >= {"torch", "timm", "numpy"}
    log = (out / "train_log.txt").read_text()
    for term in ("tpm.id", "tpm.triplet", "concat.id", "concat.triplet", "crm", "samples/s"):
        assert term in log, term
    assert os.listdir(out / "tb")


@pytest.mark.slow
def test_new_run_does_not_overwrite_an_existing_one(trained_run, demo_root):
    out, _, _ = trained_run
    before = (out / "last.pth").read_bytes()
    with pytest.raises(RunExistsError, match="--resume"):
        _trainer(demo_root, out)
    assert (out / "last.pth").read_bytes() == before




def _interrupt_at(trainer, step):
    stop_after_step(trainer, step)


@pytest.mark.slow
@pytest.mark.parametrize("stop_step", [3, None], ids=["mid-epoch", "epoch-end"])
def test_resume_reproduces_the_uninterrupted_losses(demo_root, tmp_path, stop_step, resume_reference):
    opts = RESUME_OPTS
    reference = resume_reference
    expected = _losses(reference.history)
    epoch_len = len(reference.data.train_loader)
    stop = stop_step if stop_step is not None else epoch_len

    first = _trainer(demo_root, tmp_path / "b", **opts)
    _interrupt_at(first, stop)
    with pytest.raises(TrainingInterrupted) as info:
        first.train()
    assert info.value.code == 128 + signal.SIGTERM
    resumed = _trainer(demo_root, tmp_path / "b", resume=True, **opts)
    resumed.train()
    assert _losses(first.history) + _losses(resumed.history) == expected


def test_nan_loss_stops_with_a_message(demo_root, tmp_path):
    trainer = _trainer(demo_root, tmp_path)
    loss_fn = trainer.loss_fn

    def poisoned(outputs, labels):
        total, terms = loss_fn(outputs, labels)
        return total * float("nan"), terms

    trainer.loss_fn = poisoned
    with pytest.raises(FloatingPointError, match="NaN"):
        trainer.train()


@pytest.mark.slow
def test_same_losses_for_zero_and_two_workers(demo_root, tmp_path):
    runs = []
    for workers in ("0", "2"):
        trainer = _trainer(demo_root, tmp_path / workers, **{"DATALOADER.NUM_WORKERS": workers,
                                                             "SOLVER.EVAL_PERIOD": "0"})
        trainer.train()
        runs.append(_losses(trainer.history))
    assert runs[0] == runs[1]


def _test_net(args, cwd=REPO):
    return subprocess.run([sys.executable, "test_net.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_test_net_all_settings_in_one_pass(vit_tiny_run, demo_root, tmp_path):
    out, _, _ = vit_tiny_run
    proc = _test_net(tiny_opts(demo_root, str(tmp_path), **{"TEST.WEIGHT": str(out / "best.pth"),
                                                            "TEST.MISS": "all", "TEST.SAVE_FEATURES": "True"}))
    assert proc.returncode == 0, proc.stderr + proc.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["settings"]) == ["nothing", "r", "n", "t", "rn", "rt", "nt"]
    for metrics in results["settings"].values():
        assert set(metrics) == {"mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert "-RGB-NI" in proc.stdout
    feats = np.load(tmp_path / "features.npz")
    n = len(feats["pids"])
    for setting in results["settings"]:
        assert feats[f"feat_{setting}"].shape[0] == n
    assert len(feats["names"]) == n == len(feats["camids"])


@pytest.mark.slow
def test_test_net_bad_weights_fail_cleanly(vit_tiny_run, demo_root, tmp_path):
    out, _, _ = vit_tiny_run
    results = tmp_path / "results.json"
    results.write_text("previous results")
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    other_arch = tmp_path / "other.pth"
    state = torch.load(out / "best.pth", weights_only=True)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("tpm")}
    torch.save(state, other_arch)
    for weight, expected in [(tmp_path / "missing.pth", "missing.pth"), (not_a_checkpoint, "notes.pth"),
                             (other_arch, "tpm")]:
        proc = _test_net(tiny_opts(demo_root, str(tmp_path), **{"TEST.WEIGHT": str(weight)}))
        assert proc.returncode != 0
        assert expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert results.read_text() == "previous results"


@pytest.mark.slow
def test_two_process_training_with_gloo(demo_root, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "train_net.py", *tiny_opts(demo_root, str(out), **{"SOLVER.IMS_PER_BATCH": "16"})]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoints = sorted(p.name for p in out.iterdir() if p.suffix == ".pth")
    assert checkpoints == ["best.pth", "last.pth"]
    assert json.loads((out / "results.json").read_text())["settings"]["nothing"]["mAP"] >= 0.0
