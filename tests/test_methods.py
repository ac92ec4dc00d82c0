"""A new method is one registration: a toy method registered here, in the test file, trains, resumes, evaluates
every missing-spectrum setting and round-trips its checkpoint through the engine without an edit of the trainer,
hooks, predictor or evaluation; a checkpoint of one method is refused by another's config, naming the key."""

import pytest
import torch
from torch import nn

from configs import ConfigError, load_config
from layers.bnneck import BNNeckHead
from modeling.checkpoint import model_from_checkpoint
from modeling.methods import get_method, method_names, register_method
from processor.predictor import Predictor
from processor.trainer import Trainer, TrainingInterrupted
from tests.helpers import stop_after_step, tiny_opts
from utils.checkpoint import CheckpointError

TOY = "ToyMethod"


class ToyMethod(nn.Module):
    """Per-spectrum average-pooled patches through one shared linear map; a head on the concatenation; an auxiliary
    loss that pulls the spectra together. A missing spectrum's slot of the test feature is zeros."""

    spectra = ("RGB", "NI", "TI")
    backbone_prefix = "embed."

    def __init__(self, num_classes: int, dim: int = 16) -> None:
        super().__init__()
        self.dim = dim
        self.feat_dim = 3 * dim
        self.embed = nn.Sequential(nn.Conv2d(3, dim, 8, stride=8), nn.Flatten(2))
        self.head = BNNeckHead(self.feat_dim, num_classes)

    def backbone_tokens(self, images, cam_label=None):
        return {s: self.embed(images[s]).transpose(1, 2) for s in self.spectra if s in images}

    def features_from_tokens(self, tokens, missing=frozenset(), cache=None, cams=None):
        first = next(iter(tokens.values()))
        zeros = first.new_zeros(first.shape[0], self.dim)
        return torch.cat([tokens[s].mean(1) if s in tokens and s not in missing else zeros for s in self.spectra], 1)

    def forward(self, images, cam_label=None, missing=frozenset()):
        tokens = self.backbone_tokens(images, cam_label)
        if not self.training:
            return self.features_from_tokens(tokens, missing, cams=cam_label)
        pooled = [tokens[s].mean(1) for s in self.spectra]
        align = sum(((p - pooled[0]) ** 2).mean() for p in pooled[1:])
        return {"heads": {"all": self.head(torch.cat(pooled, 1))}, "losses": {"align": align}}


@pytest.fixture(scope="module", autouse=True)
def toy_method():
    if TOY not in method_names():
        register_method(TOY, aux_losses=lambda cfg: {"align": 0.5})(
            lambda cfg, num_classes, num_cameras, pretrained=True: ToyMethod(num_classes))
    yield


def _opts(demo_root, out, **overrides):
    return tiny_opts(demo_root, str(out), **{"MODEL.META_ARCHITECTURE": TOY, "SOLVER.MAX_EPOCHS": "2",
                                             "TEST.MISS": "all", **overrides})


def test_builtin_methods_are_registered():
    assert "TOPReID" in method_names()
    assert get_method("TOPReID").aux_losses(load_config(None, [])) == {"crm": 1.0}


def test_an_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match=r"MODEL\.META_ARCHITECTURE.*NoSuchMethod.*TOPReID"):
        load_config(None, ["MODEL.META_ARCHITECTURE", "NoSuchMethod"])


@pytest.mark.slow
def test_a_method_registered_in_a_test_file_trains_resumes_and_evaluates(demo_root, tmp_path):
    reference = Trainer(load_config(None, _opts(demo_root, tmp_path / "ref")))
    results = reference.train()
    assert list(results) == ["nothing", "r", "n", "t", "rn", "rt", "nt"]
    assert any(h.get("align") is not None for h in reference.history)  # the auxiliary loss is logged by name
    # stopped mid-run and resumed, the same losses
    first = stop_after_step(Trainer(load_config(None, _opts(demo_root, tmp_path / "run"))), 5)
    with pytest.raises(TrainingInterrupted):
        first.train()
    resumed = Trainer(load_config(None, _opts(demo_root, tmp_path / "run")), resume=True)
    resumed.train()
    losses = [(h["epoch"], h["iteration"], h["loss"]) for h in first.history + resumed.history]
    assert losses == [(h["epoch"], h["iteration"], h["loss"]) for h in reference.history]
    # its checkpoint evaluates through the predictor like any other
    cfg = load_config(None, _opts(demo_root, tmp_path / "test", **{"TEST.WEIGHT": str(tmp_path / "ref" / "best.pth")}))
    predictor = Predictor.from_config(cfg)
    assert isinstance(predictor.model, ToyMethod)
    # and another method's config refuses it, naming the key
    other = load_config(None, tiny_opts(demo_root, str(tmp_path / "other")))
    with pytest.raises(CheckpointError, match=r"MODEL\.META_ARCHITECTURE = 'ToyMethod'.*'TOPReID'"):
        model_from_checkpoint(other, str(tmp_path / "ref" / "best.pth"))


class ToyWithLabels(ToyMethod):
    """The toy method whose training forward takes the batch's identities (as EDITOR's class centres need)."""

    takes_labels = True

    def forward(self, images, cam_label=None, missing=frozenset(), labels=None):
        if self.training:
            self.seen_labels = labels
        return super().forward(images, cam_label, missing)


def test_a_method_that_takes_labels_gets_the_batch_identities(demo_root, tmp_path):
    name = "ToyWithLabels"
    if name not in method_names():
        register_method(name, aux_losses=lambda cfg: {"align": 0.5})(
            lambda cfg, num_classes, num_cameras, pretrained=True: ToyWithLabels(num_classes))
    trainer = Trainer(load_config(None, _opts(demo_root, tmp_path, **{"MODEL.META_ARCHITECTURE": name})))
    trainer.sampler_epoch()
    batch = next(iter(trainer.data.train_loader))
    trainer.model.train()
    trainer.run_step(batch)
    assert torch.equal(trainer.model.seen_labels, batch["pid"])
