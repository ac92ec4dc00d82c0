"""EDITOR computes what the original EDITOR code computes (``../shared/reference``, see README_EDITOR.md there).

The reference weights are in the original checkpoint layout and reach the model through its key map
(``convert_editor_state_dict``, loaded strictly; the engine's ``TEST.WEIGHT`` path in one test). Compared with the
vectors the original code produced: the eval feature, every stage of SFTS (per-head rollout top-k, the frequency
score and its top-k, the masks) exactly, the backbone CLS tokens and the REDUCE inputs, the 128x256 ``MODEL.AL 0``
variant, every training loss term of both head layouts with the OCFR centres after the forward, and the zero-filled
missing-spectrum settings. Also: the key map and the layouts of the three methods' original checkpoints, the
optimiser's groups and the cosine schedule against the original's rule, the configurations the original fails on."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from yacs.config import CfgNode

from configs.config import load_config
from loss.build import build_loss
from modeling.methods import build_model, get_method, method_names
from modeling.methods.editor import EDITOR, OCFR, SpectrumTokens, frequency_score, head_keep_k
from modeling.methods.editor_convert import convert_editor_state_dict, is_editor_layout
from processor.inference import batch_features, missing_by_setting
from processor.predictor import Predictor
from solver import build_optimizer, build_scheduler
from tests.helpers import load_reference_weights, register_toy_backbone
from utils.checkpoint import CheckpointError
from utils.spectra import SPECTRA, missing_spectra

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
if not (REFERENCE / "README_EDITOR.md").is_file():
    pytest.skip(f"{REFERENCE} holds no EDITOR reference vectors", allow_module_level=True)

FEATURE_ATOL = 1e-4
LOSS_RTOL = 1e-4
NUM_CLASSES, NUM_CAMERAS = 171, 4
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
NAME = {"RGB": "rgb", "NI": "ni", "TI": "ti"}  # spectrum -> the reference's name
ZERO_FILL = ("r", "n", "t", "rn", "rt", "nt")
# What the key map drops: the ImageNet classifier of the ViT and the Haar filters (both unused), and the per-spectrum
# head the original builds but never uses with MODEL.AL 1.
UNUSED = {f"BACKBONE.base.fc.{p}" for p in ("weight", "bias")} | {
    f"FREQ_INDEX.{t}.{f}{i}_{d}" for t, f in (("DWT", "h"), ("IDWT", "g")) for i in (0, 1) for d in ("col", "row")}
UNUSED_AL1 = {"BACKBONE_HEAD.weight"} | {f"BACKBONE_BN.{p}" for p in ("weight", "bias", "running_mean", "running_var",
                                                                      "num_batches_tracked")}

REF = load_reference_weights(REFERENCE)
EXPECTED = np.load(REFERENCE / "expected_editor_vit.npz")


def _manifest(name: str) -> dict[str, list[int]]:
    return json.loads((REFERENCE / "manifests" / f"{name}.json").read_text())


def _cfg(al: bool, size=(256, 128), *opts: str) -> CfgNode:
    return load_config(None, ["MODEL.META_ARCHITECTURE", "EDITOR", "MODEL.PRETRAIN_CHOICE", "none",
                              "MODEL.EDITOR.AL", str(al), "MODEL.DROP_PATH", "0.0", "MODEL.DROP_OUT", "0.0",
                              "MODEL.ATT_DROP_RATE", "0.0", "INPUT.SIZE_TRAIN", str(list(size)), *opts])


@dataclass
class Reference:
    model: EDITOR
    cfg: CfgNode
    state: dict[str, torch.Tensor]  # the original layout

    def load(self) -> EDITOR:
        """The model with the reference weights, through the key map, strictly."""
        converted, _ = convert_editor_state_dict(self.state, self.model)
        self.model.load_state_dict(converted, strict=True)
        return self.model.eval()


def _reference(manifest: str, al: bool, size=(256, 128)) -> Reference:
    cfg = _cfg(al, size)
    model = build_model(cfg, NUM_CLASSES, NUM_CAMERAS, pretrained=False)
    reference = Reference(model, cfg, REF.reference_state_dict(_manifest(manifest), seed=0))
    reference.load()
    return reference


@pytest.fixture(scope="module")
def al1() -> Reference:
    """The shipped RGBNT201 configuration: MODEL.AL 1, 256x128."""
    return _reference("editor_vit", al=True)


@pytest.fixture(scope="module")
def al0() -> Reference:
    """MODEL.AL 0 at 256x128 (the training reference of the per-spectrum heads)."""
    return _reference("editor_vit_al0", al=False)


def _close(actual: torch.Tensor, key: str, what: str = "") -> None:
    want = EXPECTED[key]
    actual = actual.detach()
    assert tuple(actual.shape) == want.shape, (key, tuple(actual.shape), want.shape)
    if want.dtype == np.bool_ or np.issubdtype(want.dtype, np.integer):
        np.testing.assert_array_equal(actual.numpy(), want, err_msg=f"{key} {what}")
    else:
        np.testing.assert_allclose(actual.numpy(), want, rtol=0, atol=FEATURE_ATOL, err_msg=f"{key} {what}")


def _check_selection_and_stages(model: EDITOR, prefix: str, size=(256, 128)) -> None:
    images, cams = REF.reference_inputs(2, *size)
    assert cams.tolist() == [0, 1]
    with torch.no_grad():
        tokens = model.backbone_tokens(images, cams)
        fused = model.fuse(tokens)
    selection = fused.selection
    for s in SPECTRA:
        _close(tokens[s].rollout, f"{prefix}rollout_{NAME[s]}")
        _close(selection.head_topk[s], f"{prefix}sel_topk_{NAME[s]}")
        _close(selection.spatial[s], f"{prefix}sel_mask_{NAME[s]}")
    _close(selection.frequency_score, f"{prefix}freq_score")
    assert selection.frequency_score.dtype == torch.int32
    _close(selection.frequency_topk, f"{prefix}freq_topk")
    _close(selection.frequency, f"{prefix}freq_mask")
    _close(selection.mask, f"{prefix}sel_mask")
    _close(selection.mask.sum(dim=1), f"{prefix}num_selected")
    # The frequency scores tie at the FREQUENCY_KEEP-th place in the reference: the kept set is torch.topk's choice.
    ranked = selection.frequency_score.sort(dim=1, descending=True).values
    tie = ranked[:, model.sfts.frequency_keep - 1] == ranked[:, model.sfts.frequency_keep]
    np.testing.assert_array_equal(tie.numpy(), EXPECTED[f"{prefix}freq_tie_at_k"])
    _close(fused.feature, f"{prefix}feat_nothing")
    if prefix == "eval_":  # the stage outputs the reference holds for 256x128
        for s in SPECTRA:
            _close(tokens[s].tokens[:, 0], f"eval_backbone_cls_{NAME[s]}")
            _close(fused.reduce_in[s], f"eval_reduce_in_{NAME[s]}")


# ----------------------------------------------------------------------------------------------------------------------
# The key map and the original layouts.

@pytest.mark.parametrize("manifest, al", [("editor_vit", True), ("editor_vit_al0", False)])
def test_key_map_fills_every_tensor(manifest, al):
    """Every tensor of the model comes from the original checkpoint (shapes equal); the original's unused tensors,
    and only those, are dropped; ``module.`` prefixes are accepted."""
    with torch.device("meta"):
        model = build_model(_cfg(al), NUM_CLASSES, NUM_CAMERAS, pretrained=False)
    state = {k: torch.empty(shape, device="meta") for k, shape in _manifest(manifest).items()}
    assert is_editor_layout(state)
    converted, dropped = convert_editor_state_dict(state, model)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(tuple(converted[k].shape) == tuple(v.shape) for k, v in own.items())
    assert set(dropped) == UNUSED | (UNUSED_AL1 if al else set())
    assert {k for k in converted if k.startswith("ocfr.")} == {f"ocfr.{s}_centers" for s in SPECTRA}  # state, kept
    with_module, _ = convert_editor_state_dict({f"module.{k}": v for k, v in state.items()}, model)
    assert with_module.keys() == converted.keys()
    # Without a model (reading the sizes of a checkpoint) every head is kept.
    assert set(convert_editor_state_dict(state)[0]) - set(converted) == (
        {"heads.backbone.classifier.weight"} | {f"heads.backbone.bottleneck.{p}" for p in
                                                ("weight", "bias", "running_mean", "running_var",
                                                 "num_batches_tracked")} if al else set())


def test_key_map_refuses_unknown_keys():
    state = {"FUSE_block.out_norm.weight": torch.zeros(4), "RGB.base.cls_token": torch.zeros(1, 1, 4),
             "FUSE_block.attnX.qkv.weight": torch.zeros(12, 4)}
    with pytest.raises(CheckpointError, match=r"RGB\.base\.cls_token.*FUSE_block\.attnX\.qkv\.weight"):
        convert_editor_state_dict(state)


def test_original_layouts_are_told_apart():
    """Each original layout (TOP-ReID, DeMo, EDITOR; every reference manifest) is claimed by its own method only, so
    ``TEST.WEIGHT``, the tools and tools/convert_checkpoint.py pick the right key map."""
    owner = {"topreid": "TOPReID", "demo": "DeMo", "editor": "EDITOR"}
    for path in sorted((REFERENCE / "manifests").glob("*.json")):
        keys = json.loads(path.read_text())
        claims = [n for n in method_names() if get_method(n).original and get_method(n).original.matches(keys)]
        assert claims == [owner[path.stem.split("_")[0]]], f"{path.name} is claimed by {claims}"


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation.

@pytest.mark.slow
def test_eval_selection_stages_and_feature(al1):
    _check_selection_and_stages(al1.load(), "eval_")


@pytest.mark.slow
def test_eval_forward_and_batch_of_one(al1):
    model = al1.load()
    images, cams = REF.reference_inputs(2)
    with torch.no_grad():
        _close(model(images, cams), "eval_feat_nothing", "single-call eval forward")
        one = model({s: x[1:] for s, x in images.items()}, cams[1:])
    np.testing.assert_allclose(one.numpy(), EXPECTED["eval_feat_nothing"][1:], rtol=0, atol=FEATURE_ATOL)


@pytest.mark.slow
def test_eval_zero_filled_missing_spectra(al1):
    """A missing spectrum's normalised image is zeros: through the backbone once per camera (shared by the settings
    of a batch), zeros in the spectral mean of the frequency score."""
    model = al1.load()
    images, cams = REF.reference_inputs(2)
    calls: list[int] = []
    hook = model.backbone.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            tokens = model.backbone_tokens(images, cams)
            cache: dict = {}
            for setting in ZERO_FILL:
                missing = missing_spectra(setting)
                available = {s: t for s, t in tokens.items() if s not in missing}
                _close(model.features_from_tokens(available, missing, cache, cams=cams),
                       f"eval_zerofill_feat_{setting}")
                zero = model.zero_image_tokens(2, cams, cache)
                full = {s: zero if s in missing else tokens[s] for s in SPECTRA}
                _close(model.fuse(full).selection.mask, f"eval_zerofill_sel_mask_{setting}")
    finally:
        hook.remove()
    assert calls == [6, 2]  # the three spectra of the batch, then one zero image per camera (0 and 1)
    assert isinstance(zero, SpectrumTokens) and zero.image is None


@pytest.mark.slow
def test_eval_128x256_al0():
    """The RGBNT100 / MSVR310 configuration: MODEL.AL 0, 128x256 input (8 x 16 tokens)."""
    reference = _reference("editor_vit_al0", al=False, size=(128, 256))
    _check_selection_and_stages(reference.model, "eval_128x256_", size=(128, 256))


@pytest.mark.slow
def test_test_weight_path_gives_the_reference_feature(tmp_path):
    """An original EDITOR checkpoint (DataParallel's ``module.`` prefixes) as TEST.WEIGHT of the shipped RGBNT201
    config: the predictor builds the model (sizes read from the checkpoint) and its batch features are the
    reference's, zero-filled settings included."""
    path = tmp_path / "EDITOR_70.pth"
    state = REF.reference_state_dict(_manifest("editor_vit"), seed=0)
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    del state
    cfg = load_config(str(REPO / "configs" / "RGBNT201" / "EDITOR.yml"),
                      ["MODEL.DEVICE", "cpu", "MODEL.PRETRAIN_CHOICE", "none", "TEST.WEIGHT", str(path)])
    predictor = Predictor.from_config(cfg, log=False)
    assert isinstance(predictor.model, EDITOR) and (predictor.num_classes, predictor.num_cameras) == (171, 4)
    images, cams = REF.reference_inputs(2)
    settings = missing_by_setting(predictor.model, ["nothing", "r", "nt"])
    with torch.no_grad():
        feats = batch_features(predictor.model, {"images": images, "camid": cams}, predictor.device, settings)
    _close(feats["nothing"], "eval_feat_nothing")
    _close(feats["r"], "eval_zerofill_feat_r")
    _close(feats["nt"], "eval_zerofill_feat_nt")


# ----------------------------------------------------------------------------------------------------------------------
# Training.

def _check_train(reference: Reference, key: str, heads: list[str]) -> None:
    model = reference.load()
    images, _ = REF.reference_inputs(8, seed=7)
    cams = torch.arange(8) % 4
    criterion = build_loss(reference.cfg, NUM_CLASSES)  # the engine's: label smoothing 0.1, soft margin, weights 1
    selections: list = []
    hook = model.sfts.register_forward_hook(lambda module, args, out: selections.append(out))
    model.train()
    try:
        with torch.no_grad():
            out = model(images, cams, labels=LABELS)
            total, terms = criterion(out, LABELS)
    finally:
        hook.remove()
        model.eval()
    assert list(out["heads"]) == heads and list(out["losses"]) == ["bcc", "ocfr"]
    for head in heads:
        name = NAME.get(head, head)
        for term, short in (("id", "id"), ("triplet", "tri")):
            np.testing.assert_allclose(float(terms[f"{head}.{term}"]), EXPECTED[f"{key}{short}_{name}"],
                                       rtol=LOSS_RTOL, atol=0, err_msg=f"{head}.{term}")
    for name in ("bcc", "ocfr"):
        np.testing.assert_allclose(float(terms[name]), EXPECTED[f"{key}{name}"], rtol=LOSS_RTOL, atol=0, err_msg=name)
    np.testing.assert_allclose(float(total), EXPECTED[f"{key}total"], rtol=LOSS_RTOL, atol=0)
    _close(out["heads"]["fuse"][1], f"{key}feat_fuse")
    _close(out["heads"]["fuse"][0], f"{key}score_fuse")
    # The selection of the training batch, and the OCFR centres of labels 0 and 1 after the in-place update.
    (selection,) = selections
    _close(selection.mask, f"{key}sel_mask")
    _close(selection.mask.sum(dim=1), f"{key}num_selected")
    _close(selection.frequency_score, f"{key}freq_score")
    centers = torch.stack([model.ocfr.centers(s)[:2] for s in SPECTRA])
    _close(centers, f"{key}ocfr_centers_after")


@pytest.mark.slow
def test_train_losses_al1(al1):
    try:
        _check_train(al1, "train_al1_", ["fuse", "al"])
    finally:
        al1.load()  # training updated the BatchNorm statistics and the OCFR centres


@pytest.mark.slow
def test_train_losses_al0(al0):
    try:
        _check_train(al0, "train_al0_", ["fuse", *SPECTRA])
    finally:
        al0.load()


def test_training_needs_the_labels_in_identity_blocks():
    """OCFR pairs a class centre with each contiguous block of one identity (labels[::B/P] in the original): other
    batches are refused, as is a training forward without the labels."""
    ocfr = OCFR(SPECTRA, num_classes=5, dim=4)
    cls = {s: torch.randn(6, 4) for s in SPECTRA}
    assert ocfr(cls, torch.tensor([3, 3, 3, 1, 1, 1])).ndim == 0
    for labels in ([0, 1, 0, 1, 0, 1], [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]):
        with pytest.raises(ValueError, match="contiguous, equal-size blocks"):
            ocfr(cls, torch.tensor(labels))
    register_toy_backbone()
    model = build_model(_cfg(True, (32, 32), "MODEL.TRANSFORMER_TYPE", "toy_vit", "MODEL.EDITOR.FREQUENCY_KEEP", "2"),
                        NUM_CLASSES, NUM_CAMERAS, pretrained=False).train()
    with pytest.raises(ValueError, match="labels"):
        model({s: torch.zeros(2, 3, 32, 32) for s in SPECTRA}, torch.tensor([0, 1]))


def test_ocfr_updates_the_centres_before_the_loss():
    """C[y] <- 0.8 mean of the batch's normalised features of y + 0.2 C[y], then the loss against the new centres."""
    ocfr = OCFR(("RGB",), num_classes=3, dim=2)
    ocfr.RGB_centers[2] = torch.tensor([1.0, 0.0])
    features = torch.tensor([[0.0, 2.0], [0.0, 3.0]])
    loss = ocfr({"RGB": features}, torch.tensor([2, 2]))
    want = 0.8 * torch.tensor([0.0, 1.0]) + 0.2 * torch.tensor([1.0, 0.0])
    torch.testing.assert_close(ocfr.RGB_centers[2], want)
    torch.testing.assert_close(loss, ((want - torch.tensor([0.0, 1.0])) ** 2).mean())
    assert ocfr.RGB_centers[:2].eq(0).all() and "RGB_centers" in ocfr.state_dict()


@pytest.mark.parametrize("al", [True, False])
def test_every_parameter_gets_a_gradient(al):
    """With activation checkpointing too (the attention maps are recorded in the forward only)."""
    register_toy_backbone()
    torch.manual_seed(0)
    cfg = _cfg(al, (32, 32), "MODEL.TRANSFORMER_TYPE", "toy_vit", "MODEL.EDITOR.FREQUENCY_KEEP", "2",
               "MODEL.GRAD_CHECKPOINT", "True")
    model = build_model(cfg, 5, 2, pretrained=False).train()
    images = {s: torch.randn(4, 3, 32, 32) for s in SPECTRA}
    labels, cams = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    total, terms = build_loss(cfg, 5)(model(images, cams, labels=labels), labels)
    total.backward()
    assert set(terms) == {f"{h}.{t}" for h in (["fuse", "al"] if al else ["fuse", *SPECTRA])
                          for t in ("id", "triplet")} | {"bcc", "ocfr"}
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad and all(p.requires_grad for p in model.parameters())  # BNNeck biases train
    assert all(tap.last is None for tap in model.backbone.attention_taps())


# ----------------------------------------------------------------------------------------------------------------------
# Configuration, optimiser and schedule.

@pytest.mark.parametrize("opts, key", [
    (["MODEL.STRIDE_SIZE", "[12,12]"], "MODEL.STRIDE_SIZE"),
    (["MODEL.EDITOR.FREQUENCY_KEEP", "5"], "MODEL.EDITOR.FREQUENCY_KEEP"),
    (["MODEL.EDITOR.HEAD_KEEP", "5"], "MODEL.EDITOR.HEAD_KEEP"),
    (["MODEL.SPECTRA", "['RGB','NI']", "MODEL.BASE", "True"], "MODEL.SPECTRA"),
])
def test_settings_the_original_fails_on_are_refused(opts, key):
    """Stride 16 only (the original's frequency mask fails with a view error otherwise); no more tokens kept than the
    image has (the original's topk fails). A 32x32 input has 4 tokens."""
    register_toy_backbone()
    cfg = _cfg(True, (32, 32), "MODEL.TRANSFORMER_TYPE", "toy_vit", "MODEL.EDITOR.FREQUENCY_KEEP", "2", *opts)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(cfg, 5, 2, pretrained=False)


def test_head_keep_truncates_as_the_original():
    assert head_keep_k(128, 2) == 2 and head_keep_k(196, 2) == 1 and head_keep_k(8, 1) == 1


def test_frequency_score_counts_positive_pixels_per_patch():
    image = torch.full((1, 3, 32, 48), -1.0)
    image[0, :, :16, :16] = 1.0  # patch 0: all 256 pixels
    image[0, 0, 16:20, 32:48] = 9.0  # patch 5: 4 rows whose channel mean is positive
    score = frequency_score(image, (2, 3))
    assert score.dtype == torch.int32 and score.tolist() == [[256, 0, 0, 0, 0, 64]]


def test_shipped_configs():
    """The original's settings: SGD lr 1e-3 (biases 2e-3), wd 1e-4, batch 8 x 16, test batch 64, AL 1 / 256x128 /
    70 epochs for RGBNT201, AL 0 / 128x256 for RGBNT100 and MSVR310 (1000 epochs, 100 warm-up)."""
    expected = {"RGBNT201": (True, [256, 128], 70, 10), "RGBNT100": (False, [128, 256], 70, 10),
                "MSVR310": (False, [128, 256], 1000, 100)}
    for name, (al, size, epochs, warmup) in expected.items():
        cfg = load_config(str(REPO / "configs" / name / "EDITOR.yml"))
        s = cfg.SOLVER
        assert (cfg.MODEL.META_ARCHITECTURE, cfg.DATASETS.NAMES, cfg.MODEL.EDITOR.AL) == ("EDITOR", name, al)
        assert cfg.INPUT.SIZE_TRAIN == cfg.INPUT.SIZE_TEST == size and cfg.MODEL.STRIDE_SIZE == [16, 16]
        assert (s.MAX_EPOCHS, s.WARMUP_ITERS, s.SCHEDULER, s.WARMUP_FACTOR, s.MIN_LR_FACTOR) == (
            epochs, warmup, "cosine", 0.01, 0.001)
        assert (s.OPTIMIZER_NAME, s.MOMENTUM, s.BASE_LR, s.BIAS_LR_FACTOR, s.WEIGHT_DECAY, s.WEIGHT_DECAY_BIAS) == (
            "SGD", 0.9, 0.001, 2.0, 1e-4, 1e-4)
        assert (s.IMS_PER_BATCH, cfg.DATALOADER.NUM_INSTANCE, cfg.TEST.IMS_PER_BATCH) == (128, 16, 64)
        assert (cfg.MODEL.EDITOR.HEAD_KEEP, cfg.MODEL.EDITOR.FREQUENCY_KEEP, cfg.MODEL.SIE_COE) == (2, 10, 3.0)
        assert get_method("EDITOR").aux_losses(cfg) == {"bcc": 1.0, "ocfr": 1.0}


@pytest.mark.parametrize("config", ["RGBNT201", "MSVR310"])
def test_cosine_schedule_is_the_originals(config):
    """Per epoch t = 1..T (step before the epoch) each group gets, as the original's timm scheduler: t < W:
    1e-5 + t (lr - 1e-5) / W; else 1e-6 + (lr - 1e-6)(1 + cos(pi t / T)) / 2, t not shifted by the warm-up."""
    cfg = load_config(str(REPO / "configs" / config / "EDITOR.yml"))
    weights, biases = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [weights], "lr": 1e-3}, {"params": [biases], "lr": 2e-3}], lr=1e-3)
    scheduler = build_scheduler(cfg, optimizer)
    total, warmup = cfg.SOLVER.MAX_EPOCHS, cfg.SOLVER.WARMUP_ITERS
    for epoch in range(1, total + 1):
        scheduler.step(epoch)
        for group, lr in zip(optimizer.param_groups, (1e-3, 2e-3)):
            want = 1e-5 + epoch * (lr - 1e-5) / warmup if epoch < warmup else \
                1e-6 + (lr - 1e-6) * (1 + math.cos(math.pi * epoch / total)) / 2
            assert group["lr"] == pytest.approx(want, rel=1e-12, abs=1e-18), (epoch, lr)


@pytest.mark.slow
def test_optimizer_groups(al1):
    """Every trainable tensor as the original's make_optimizer sets it: lr 1e-3, 2e-3 for a name holding "bias",
    weight decay 1e-4; the tensors the original trains but never uses (its ImageNet classifier and, with AL 1, the
    per-spectrum head) are not in the model; the OCFR centres are not trained."""
    cfg = load_config(str(REPO / "configs" / "RGBNT201" / "EDITOR.yml"), ["MODEL.PRETRAIN_CHOICE", "none"])
    original_name, dropped = convert_editor_state_dict({k: k for k in _manifest("editor_vit")}, al1.model)
    optimizer = build_optimizer(cfg, al1.model)
    got = {original_name[n]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for n in g["param_names"]}
    buffers = {k for k in _manifest("editor_vit") if k.endswith(("running_mean", "running_var", "num_batches_tracked",
                                                                 "_centers"))}
    assert got.keys() == set(_manifest("editor_vit")) - set(dropped) - buffers
    for key, (lr, decay) in got.items():
        assert lr == pytest.approx(2e-3 if "bias" in key else 1e-3, rel=1e-12) and decay == 1e-4, key
