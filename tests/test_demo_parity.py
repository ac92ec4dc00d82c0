"""DeMo computes what the original DeMo code computes (``../shared/reference``, see README_DeMo.md there): the
original checkpoint layout is mapped by ``convert_demo_state_dict`` and loaded strictly, then eval features of the
seven missing-spectrum settings, the backbone / HDM / gate intermediates (with the plain weights and with sharpened
HDM queries and gate), the training losses of every head and the CLIP position-table resize are compared with the
vectors the original code produced, for the CLIP and the ImageNet ViT-B/16 backbones and the vehicle variant."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from yacs.config import CfgNode

from configs.config import load_config
from loss.build import ReIDLoss
from loss.triplet import TripletLoss
from modeling.methods.demo import SPECTRUM_SETS, CLIPTower, DeMo, build_demo, load_backbone_weights
from modeling.methods.demo_convert import convert_demo_state_dict, is_demo_layout
from modeling.pretrained import ACTIVATION_METADATA, clip_to_timm, resize_pos_embed
from solver.optimizer import param_groups
from tests.helpers import load_reference_weights
from utils.checkpoint import CheckpointError
from utils.spectra import MISS_SETTINGS, SPECTRA, missing_spectra

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
if not (REFERENCE / "README_DeMo.md").is_file():
    pytest.skip(f"{REFERENCE} holds no DeMo reference vectors", allow_module_level=True)

pytestmark = pytest.mark.slow  # three ViT-B/16 models against the reference vectors

BACKBONES = {"clip": "vit_base_patch16_clip_quickgelu_224", "vit": "vit_base_patch16_224"}
FEATURE_ATOL = 1e-4
LOSS_RTOL = 1e-4
LABELS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
NUM_CLASSES = 171


REF = load_reference_weights(REFERENCE)


@dataclass
class Reference:
    model: DeMo
    state: dict[str, torch.Tensor]  # original layout
    expected: np.lib.npyio.NpzFile
    prefix: str  # of the expected arrays: "" or "vehicle_"
    size: tuple[int, int]

    def load(self, sharp: bool = False) -> DeMo:
        """The model with the reference weights (the HDM queries and the gate's q sharpened by the reference factors
        with ``sharp``), loaded strictly through the key map."""
        state = dict(self.state)
        if sharp:
            query_factor, gate_factor = self.expected[f"{self.prefix}sharp_factors"]
            for name in SPECTRUM_SETS:
                state[f"generalFusion.{name}_token"] = state[f"generalFusion.{name}_token"] * float(query_factor)
            gate = "generalFusion.moe.gating_network.gate.q_.weight"
            state[gate] = state[gate] * float(gate_factor)
        self.model.load_state_dict(convert_demo_state_dict(state), strict=True)
        return self.model


def _build(backbone: str, manifest: str, *, direct: bool = True, heads: int = 4, size=(256, 128),
           prefix: str = "") -> Reference:
    cfg = load_config(None, ["MODEL.TRANSFORMER_TYPE", BACKBONES[backbone], "MODEL.PRETRAIN_CHOICE", "none",
                             "MODEL.DIRECT", str(direct), "MODEL.STRIDE_SIZE", "[16,16]", "MODEL.SIE_CAMERA", "True",
                             "MODEL.SIE_COE", "1.0", "MODEL.DROP_PATH", "0.0", "MODEL.DROP_OUT", "0.0",
                             "MODEL.ATT_DROP_RATE", "0.0", "INPUT.SIZE_TRAIN", str(list(size))], freeze=False)
    if "DEMO" not in cfg.MODEL:
        cfg.MODEL.DEMO = CfgNode()
    cfg.MODEL.DEMO.HEAD = heads
    cfg.MODEL.DEMO.FEATURE = "cat"
    cfg.MODEL.DEMO.HDM_DROPOUT = 0.0  # the training references were computed without it (eval never uses it)
    cfg.freeze()
    model = build_demo(cfg, num_classes=NUM_CLASSES, num_cameras=4, pretrained=False)
    state = REF.reference_state_dict(json.loads((REFERENCE / "manifests" / f"{manifest}.json").read_text()), seed=0)
    expected = np.load(REFERENCE / f"expected_demo_{backbone}.npz")
    return Reference(model, state, expected, prefix, tuple(size))


@pytest.fixture(scope="module", params=list(BACKBONES))
def reference(request) -> Reference:
    return _build(request.param, f"demo_{request.param}")


@pytest.fixture(scope="module")
def vehicle() -> Reference:
    """The CLIP model with the RGBNT100 / MSVR310 flags: DIRECT False, 8 ATMoE heads, 128x256 input."""
    return _build("clip", "demo_clip_vehicle", direct=False, heads=8, size=(128, 256), prefix="vehicle_")


def _close(actual: torch.Tensor, want: np.ndarray, what: str) -> None:
    assert tuple(actual.shape) == want.shape, what
    np.testing.assert_allclose(actual.detach().numpy(), want, rtol=0, atol=FEATURE_ATOL, err_msg=what)


# ----------------------------------------------------------------------------------------------------------------------
# The key map.

def test_key_map_fills_every_parameter(reference):
    model = reference.model
    converted = convert_demo_state_dict(reference.state)
    assert is_demo_layout(reference.state)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert all(converted[k].shape == v.shape for k, v in own.items())
    assert len(converted) == len(reference.state)  # one to one (CLIP's proj becomes backbone.proj.weight)
    with_module = convert_demo_state_dict({f"module.{k}": v for k, v in reference.state.items()})
    assert with_module.keys() == converted.keys()


def test_key_map_refuses_other_layouts():
    topreid = json.loads((REFERENCE / "manifests" / "topreid_vit_base_patch16_224.json").read_text())
    assert not is_demo_layout(topreid)
    state = {"generalFusion.r_token": torch.zeros(1, 1, 8), "RGB.base.cls_token": torch.zeros(1, 1, 8)}
    with pytest.raises(CheckpointError, match="RGB.base.cls_token"):
        convert_demo_state_dict(state)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation.

def test_eval_features_all_missing_settings(reference):
    model, expected = reference.load().eval(), reference.expected
    images, cams = REF.reference_inputs(2)
    assert cams.tolist() == [0, 1]
    with torch.no_grad():
        tokens = model.backbone_tokens(images, cams)
        cache: dict = {}  # the zero-image tokens of a camera are computed once for all settings
        for setting in MISS_SETTINGS:
            missing = missing_spectra(setting)
            available = {s: t for s, t in tokens.items() if s not in missing}
            feat = model.features_from_tokens(available, missing, cache, cams=cams)
            assert feat.shape == (2, model.feat_dim) == (2, 10 * model.dim)
            _close(feat, expected[f"eval_feat_{setting}"], f"setting {setting}")
        for setting in ("nothing", "rt"):  # the single-call eval forward does the same
            _close(model(images, cams, missing=missing_spectra(setting)), expected[f"eval_feat_{setting}"], setting)


def test_eval_intermediates(reference):
    model, expected = reference.load().eval(), reference.expected
    images, cams = REF.reference_inputs(2)
    with torch.no_grad():
        tokens = model.backbone_tokens(images, cams)
        fused = model.fuse(tokens)
    for s in SPECTRA:
        _close(tokens[s][:, 0], expected[f"eval_nothing_backbone_global_{s}"], f"{s} token 0")
        _close(tokens[s][:, 1:].mean(1), expected[f"eval_nothing_backbone_local_{s}"], f"{s} patch mean")
    _close(fused.parts, expected["eval_nothing_hdm"], "HDM")
    _close(fused.gates, expected["eval_nothing_gates"], "gates")
    # The test-feature patterns: 1 = ori (3D), 2 = moe (7D), 3 = both (the default).
    three = expected["eval_feat_nothing"]
    _close(fused.ori, three[:, :3 * model.dim], "ori")
    _close(fused.moe, three[:, 3 * model.dim:], "moe")


@pytest.mark.parametrize("feature, columns", [("ori", slice(0, 3)), ("moe", slice(3, 10))])
def test_test_feature_option(reference, feature, columns):
    model = reference.load().eval()
    cameras = 0 if model.camera_embed is None else model.camera_embed.shape[0]
    other = DeMo(model.backbone, NUM_CLASSES, reference.size, cls_cameras=cameras, feature=feature, moe_heads=4)
    other.load_state_dict(model.state_dict(), strict=True)
    images, cams = REF.reference_inputs(2)
    with torch.no_grad():
        feat = other.eval()(images, cams, missing={"NI"})
    want = reference.expected["eval_feat_n"][:, columns.start * model.dim:columns.stop * model.dim]
    assert other.feat_dim == want.shape[1]
    _close(feat, want, feature)


def test_eval_sharp(reference):
    """With the plain weights HDM's attention and the gates are nearly uniform; sharpened, they are not."""
    model, expected = reference.load(sharp=True).eval(), reference.expected
    images, cams = REF.reference_inputs(2)
    with torch.no_grad():
        tokens = model.backbone_tokens(images, cams)
        fused = model.fuse(tokens)
        feat = model.features_from_tokens(tokens, cams=cams)
    assert expected["sharp_eval_nothing_gates"].max() > 0.3  # the reference is not uniform
    for s in SPECTRA:
        _close(tokens[s][:, 0], expected[f"sharp_eval_nothing_backbone_global_{s}"], f"{s} token 0")
    _close(fused.parts, expected["sharp_eval_nothing_hdm"], "HDM")
    _close(fused.gates, expected["sharp_eval_nothing_gates"], "gates")
    _close(feat, expected["sharp_eval_feat_nothing"], "feature")


def test_batch_of_one(reference):
    model, expected = reference.load().eval(), reference.expected
    images, cams = REF.reference_inputs(2)
    with torch.no_grad():
        for setting in ("nothing", "nt"):
            feat = model({s: x[1:] for s, x in images.items()}, cams[1:], missing=missing_spectra(setting))
            _close(feat, expected[f"eval_feat_{setting}"][1:], setting)


def test_missing_spectrum_backbone_runs_once_per_camera(reference):
    model = reference.load().eval()
    images, _ = REF.reference_inputs(3)
    cams = torch.tensor([2, 0, 2])
    calls: list[int] = []
    hook = model.backbone.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            tokens = model.backbone_tokens(images, cams)
            cache: dict = {}
            feats = {setting: model.features_from_tokens(tokens, missing_spectra(setting), cache, cams=cams)
                     for setting in ("r", "nt", "rn")}
            assert calls == [9, 2]  # the three spectra, then one zero image per distinct camera
            assert all(f.shape == (3, model.feat_dim) for f in feats.values())
            # The same tokens as zero images through the backbone.
            zeros = model.backbone_tokens({"NI": torch.zeros_like(images["NI"])}, cams)["NI"]
            torch.testing.assert_close(model.zero_image_tokens(3, cams, cache), zeros, rtol=0, atol=1e-5)
            assert calls == [9, 2, 3]
    finally:
        hook.remove()


# ----------------------------------------------------------------------------------------------------------------------
# Training.

def _check_train(ref: Reference, heads: list[str]) -> None:
    model, expected = ref.model, ref.expected
    key = f"{ref.prefix}train_direct{int(model.direct)}"
    images, _ = REF.reference_inputs(8, height=ref.size[0], width=ref.size[1], seed=7)
    cams = torch.arange(8) % 4
    criterion = ReIDLoss(nn.CrossEntropyLoss(label_smoothing=0.1), TripletLoss(margin=None), id_weight=0.25,
                         triplet_weight=1.0, aux_weights={"moe": 1.0}, num_classes=NUM_CLASSES)
    gates: list[torch.Tensor] = []
    hook = model.atmoe.gate.register_forward_hook(lambda module, args, output: gates.append(output))
    model.train()
    rng = torch.get_rng_state()
    try:
        with torch.no_grad():
            out = model(images, cams)
    finally:
        hook.remove()
        model.eval()
    assert torch.equal(torch.get_rng_state(), rng) == (not bool(expected[f"{key}_rng_consumed"]))
    total, terms = criterion(out, LABELS)
    assert list(out["heads"]) == heads
    ids = np.array([float(terms[f"{h}.id"]) for h in heads])
    triplets = np.array([float(terms[f"{h}.triplet"]) for h in heads])
    np.testing.assert_allclose(ids, expected[f"{key}_id_losses"], rtol=LOSS_RTOL, atol=0)
    np.testing.assert_allclose(triplets, expected[f"{key}_triplet_losses"], rtol=LOSS_RTOL, atol=0)
    assert float(out["losses"]["moe"]) == float(expected[f"{key}_moe_loss"]) == 0.0
    np.testing.assert_allclose(float(total), expected[f"{key}_total_loss"], rtol=LOSS_RTOL, atol=0)
    _close(out["heads"]["moe"][1], expected[f"{key}_feat_moe"], "moe feature")
    ori = out["heads"]["ori"][1] if model.direct else torch.cat([out["heads"][s][1] for s in SPECTRA], dim=-1)
    _close(ori, expected[f"{key}_feat_ori"], "ori feature")
    _close(gates[0], expected[f"{key}_gates"], "gates")


def test_train_losses(reference):
    reference.load()
    try:
        _check_train(reference, ["moe", "ori"])
    finally:
        reference.load()  # training updated the BatchNorm running statistics


def test_vehicle_eval(vehicle):
    model, expected = vehicle.load(sharp=True).eval(), vehicle.expected
    images, cams = REF.reference_inputs(2, height=128, width=256)
    with torch.no_grad():
        tokens = model.backbone_tokens(images, cams)
        fused = model.fuse(tokens)
        feat = model.features_from_tokens(tokens, cams=cams)
    assert model.atmoe.heads == 8 and list(model.heads) == ["moe", *SPECTRA]
    for s in SPECTRA:
        _close(tokens[s][:, 0], expected[f"vehicle_eval_nothing_backbone_global_{s}"], f"{s} token 0")
        _close(tokens[s][:, 1:].mean(1), expected[f"vehicle_eval_nothing_backbone_local_{s}"], f"{s} patch mean")
    _close(fused.parts, expected["vehicle_eval_nothing_hdm"], "HDM")
    _close(fused.gates, expected["vehicle_eval_nothing_gates"], "gates")
    _close(feat, expected["vehicle_eval_feat_nothing"], "feature")


def test_vehicle_train_losses(vehicle):
    vehicle.load(sharp=True)
    try:
        _check_train(vehicle, ["moe", *SPECTRA])
    finally:
        vehicle.load(sharp=True)


# ----------------------------------------------------------------------------------------------------------------------
# The optimiser.

def test_optimizer_groups(reference):
    """The original's lr and weight decay of every trainable parameter: 3.5e-4, biases 7e-4, the backbone (its
    ``base``) 5e-6 for CLIP or 0.8 x 3.5e-4 for ImageNet, replacing the bias rule; CLIP's camera embedding is not
    in the backbone. Weight decay 1e-4 everywhere."""
    model, expected = reference.model, reference.expected
    converted = convert_demo_state_dict(reference.state)  # views of the original tensors: matched by storage
    storage = {v.untyped_storage().data_ptr(): k for k, v in reference.state.items()}
    original_name = {new: storage[v.untyped_storage().data_ptr()] for new, v in converted.items()}
    backbone = {"backbone_lr": 5e-6} if reference.model.camera_embed is not None else {"backbone_lr_factor": 0.8}
    groups = param_groups(model, base_lr=3.5e-4, weight_decay=1e-4, bias_lr_factor=2.0, weight_decay_bias=1e-4,
                          backbone_prefix=model.backbone_prefix, bias_lr_factor_in_backbone=False, **backbone)
    got = {original_name[n]: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}
    want = {str(k): (lr, wd) for k, lr, wd in zip(expected["optim_keys"], expected["optim_lr"],
                                                   expected["optim_weight_decay"])}
    assert got.keys() == want.keys()
    for key, (lr, decay) in want.items():
        assert got[key][0] == pytest.approx(lr, rel=1e-9, abs=0) and got[key][1] == pytest.approx(decay), key


# ----------------------------------------------------------------------------------------------------------------------
# The CLIP position table.

@pytest.mark.parametrize("grid", [(16, 8), (8, 16), (8, 4)])
def test_clip_position_table_resize(grid):
    expected = np.load(REFERENCE / "expected_demo_clip.npz")
    table = torch.from_numpy(expected["clip_resize_in"]).unsqueeze(0)
    resized = resize_pos_embed(table, grid)[0]
    _close(resized, expected[f"clip_resize_out_{grid[0]}x{grid[1]}"], f"grid {grid}")


@pytest.mark.parametrize("layout", ["openai", "timm"])
def test_clip_weights_file_loads_into_the_tower(tmp_path, layout):
    """A CLIP file (OpenAI's layout with the text tower and a 14x14 table in fp16, or the safetensors file of
    tools/convert_clip.py) fills the whole tower, projection included, with the table resized as the original."""
    manifest = json.loads((REFERENCE / "manifests" / "demo_clip.json").read_text())
    shapes = {k[len("BACKBONE.base."):]: v for k, v in manifest.items()
              if k.startswith("BACKBONE.base.") and (".resblocks." not in k or ".resblocks.0." in k)}
    shapes["positional_embedding"] = [197, 768]
    visual = REF.reference_state_dict({f"visual.{k}": v for k, v in shapes.items()}, seed=1)
    state = {k: v.half() for k, v in visual.items()} | {"ln_final.weight": torch.ones(512)}
    if layout == "openai":
        path = tmp_path / "ViT-B-16.pth"
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "clip_vitb16.safetensors"
        save_file({k: v.contiguous() for k, v in clip_to_timm(state)[0].items()}, str(path),
                  metadata={ACTIVATION_METADATA: "quick_gelu"})
    tower = CLIPTower(BACKBONES["clip"], (256, 128), depth=1)
    load_backbone_weights(tower, str(path))
    trunk = tower.trunk

    def same(actual: torch.Tensor, key: str, transform=lambda v: v) -> None:
        torch.testing.assert_close(actual.detach(), transform(visual[key].half()).float(), rtol=0, atol=0)

    same(tower.proj.weight, "visual.proj", lambda v: v.t())
    same(trunk.cls_token, "visual.class_embedding", lambda v: v.view(1, 1, -1))
    same(trunk.patch_embed.proj.weight, "visual.conv1.weight")
    same(trunk.norm_pre.weight, "visual.ln_pre.weight")
    same(trunk.norm.bias, "visual.ln_post.bias")
    same(trunk.blocks[0].attn.qkv.weight, "visual.transformer.resblocks.0.attn.in_proj_weight")
    same(trunk.blocks[0].mlp.fc2.weight, "visual.transformer.resblocks.0.mlp.c_proj.weight")
    # resized in the file's precision, as the original resizes the fp16 table of ViT-B-16.pt
    same(trunk.pos_embed, "visual.positional_embedding", lambda v: resize_pos_embed(v.unsqueeze(0), (16, 8)))


@pytest.mark.parametrize("direct", [True, False])
def test_every_parameter_gets_a_gradient(direct):
    torch.manual_seed(0)
    tower = CLIPTower(BACKBONES["clip"], (64, 32), depth=1)
    model = DeMo(tower, 5, (64, 32), cls_cameras=2, direct=direct, moe_heads=8).train()
    images = {s: torch.randn(4, 3, 64, 32) for s in SPECTRA}
    labels, cams = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    criterion = ReIDLoss(nn.CrossEntropyLoss(label_smoothing=0.1), TripletLoss(margin=None), id_weight=0.25,
                         triplet_weight=1.0, aux_weights={"moe": 1.0})
    total, terms = criterion(model(images, cams), labels)
    total.backward()
    assert set(terms) == {f"{h}.{t}" for h in model.heads for t in ("id", "triplet")} | {"moe"}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"heads.{h}.bottleneck.bias" for h in model.heads}
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not no_grad
