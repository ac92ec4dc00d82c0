"""DeMo (AAAI 2025, "DeMo: Decoupled Feature-Based Mixture of Experts for Multi-Modal Object Re-Identification").

One backbone shared by the three spectra, then:

- PIFE (per spectrum): f_s = QuickGELU(Linear 2D->D(LayerNorm(cat[token 0, mean of the patch tokens]))).
- HDM: seven learned queries, one per non-empty set of spectra (r, n, t, rn, rt, nt, rnt), each attending with its
  own multi-head attention over the tokens [f_s; patch tokens of s] of the spectra in its set; seven [B, D] parts.
- ATMoE: a dense gate (per head h, a softmax over the seven parts of q_h . k_{e,h} / sqrt(d)) weighting one expert
  MLP per (head, part); the output is the weighted concatenation [B, 7D], not a sum. Its auxiliary loss is zero.
- BNNeck heads: ``"moe"`` on the ATMoE output and ``"ori"`` on cat[f_R, f_N, f_T] (``direct``), or one head per
  spectrum on f_s.

Backbones: a timm CLIP image tower (``vit_*_clip_*``, width D = its projection, 512 for ViT-B/16) with DeMo's
forward (:class:`CLIPTower`: camera embedding on the CLS token only, every token normalised and projected), or any
backbone of the registry (``vit_base_patch16_224``: D = 768, camera embedding on every token, as TOP-ReID).

Missing spectra at test time (``TEST.MISS``): the spectrum's normalised image is replaced by zeros and goes through
the backbone like any other; its tokens depend only on the camera id, so they are computed once per camera of a
batch. The test feature is cat[ori, moe] (10D) by default, or ``ori`` (3D) or ``moe`` (7D).
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import timm
import torch
from timm.layers import QuickGELU, trunc_normal_
from torch import nn
from yacs.config import CfgNode

from layers.bnneck import BNNeckHead
from modeling.backbones import build_backbone
from modeling.backbones.vit import ViTBackbone, is_timm_vit, run_blocks
from modeling.methods.demo_convert import convert_demo_state_dict, is_demo_layout
from modeling.methods.registry import OriginalLayout, register_method
from modeling.methods.zero_fill import resolve_missing, zero_image_passes
from modeling.pretrained import clip_to_timm, load_imagenet_weights
from utils.checkpoint import CheckpointError, safe_load, unwrap_state_dict
from utils.spectra import LETTERS, SPECTRA

logger = logging.getLogger("modeling")

_SPECTRUM_LETTER = {name: letter for letter, name in LETTERS.items()}
# HDM's sets of spectra, in the order of its outputs and of the ATMoE experts: r, n, t, rn, rt, nt, rnt.
SPECTRUM_SETS: dict[str, tuple[str, ...]] = {
    "".join(_SPECTRUM_LETTER[s] for s in subset): subset
    for size in range(1, len(SPECTRA) + 1) for subset in itertools.combinations(SPECTRA, size)}
FEATURES = ("cat", "ori", "moe")  # MODEL.DEMO.FEATURE: the test feature (the original's return_pattern 3, 1, 2)
_HDM_HEAD_WIDTH = 64  # HDM's attention heads are D / 64, as the original


# ----------------------------------------------------------------------------------------------------------------------
# Backbone: the CLIP image tower with DeMo's forward.

def is_clip_tower(name: str) -> bool:
    """timm's CLIP image towers (``vit_base_patch16_clip_quickgelu_224``, ``vit_*_clip_*``), which DeMo uses with
    their projection and its camera embedding on the CLS token (a name lookup, nothing is built)."""
    return is_timm_vit(name) and "_clip_" in name


def clip_projection_width(name: str) -> int:
    """Width of the CLIP embedding that ``name``'s projection maps to (512 for ViT-B/16), as timm records it for the
    tower's CLIP weights (its tags other than the ImageNet fine-tuned ones)."""
    widths = {timm.models.get_pretrained_cfg(tag).num_classes for tag in timm.list_pretrained(f"{name}.*")
              if not re.search(r"(^|_)ft(_|$)", tag.split(".", 1)[1])}
    if len(widths) != 1:
        raise ValueError(f"MODEL.TRANSFORMER_TYPE {name!r}: timm does not record one CLIP embedding width for it "
                         f"(found {sorted(widths)}); DeMo needs the width of its projection")
    return widths.pop()


class CLIPTower(nn.Module):
    """A timm CLIP image tower run as DeMo runs OpenAI's: ``forward(x, cls_offset) -> [B, 1 + N, out_dim]``.

    Tokens = [CLS (+ ``cls_offset``, DeMo's camera embedding), patches] + position table, ``norm_pre`` (CLIP's
    ln_pre), the blocks, ``norm`` (ln_post) on every token, and the bias-free projection ``proj`` on every token.
    ``trunk`` is the project's :class:`ViTBackbone` of the same name (timm's parameter names, no camera embedding of
    its own), so ImageNet/CLIP files load into it as into any backbone; ``proj`` holds CLIP's projection.
    ``timm_kwargs`` go to ``timm.create_model`` (``depth`` for a smaller tower).
    """

    def __init__(self, name: str, img_size: Sequence[int], stride: Sequence[int] = (16, 16), drop_path: float = 0.0,
                 drop_out: float = 0.0, attn_drop: float = 0.0, grad_checkpoint: bool = False,
                 out_dim: int | None = None, **timm_kwargs) -> None:
        super().__init__()
        self.trunk = ViTBackbone(name, img_size, stride, num_cameras=0, drop_path=drop_path, drop_out=drop_out,
                                 attn_drop=attn_drop, grad_checkpoint=grad_checkpoint, **timm_kwargs)
        self.name = name
        self.width = self.trunk.embed_dim
        self.embed_dim: int = int(out_dim or clip_projection_width(name))
        self.grid_size = self.trunk.grid_size
        self.proj = nn.Linear(self.width, self.embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=self.width ** -0.5)

    def forward(self, x: torch.Tensor, cls_offset: torch.Tensor | None = None) -> torch.Tensor:
        t = self.trunk
        x = t.patch_embed(x)
        cls = t.cls_token.expand(x.shape[0], -1, -1)
        if cls_offset is not None:
            cls = cls + cls_offset
        x = torch.cat([cls, x], dim=1) + t.pos_embed
        x = t.norm_pre(t.pos_drop(x))
        x = run_blocks(t.blocks, x, t.grad_checkpoint and self.training)
        return self.proj(t.norm(x))


def load_clip_projection(tower: CLIPTower, path: str) -> None:
    """Copy CLIP's projection from the file of MODEL.PRETRAIN_PATH_T into ``tower.proj`` (the ImageNet loader fills
    the trunk and leaves projections and classifiers out). OpenAI-layout files hold it as ``proj`` [width, out],
    timm-layout files (tools/convert_clip.py) as ``head.weight`` [out, width]."""
    state = unwrap_state_dict(safe_load(path), f"{path} (MODEL.PRETRAIN_PATH_T)",
                              wrappers=("state_dict_ema", "state_dict", "model"), tensors_only=True)
    state, _, _ = clip_to_timm(state)
    weight = state.get("head.weight")
    if weight is None or tuple(weight.shape) != tuple(tower.proj.weight.shape):
        found = "none" if weight is None else f"head.weight {list(weight.shape)}"
        raise CheckpointError(f"{path} (MODEL.PRETRAIN_PATH_T) holds no CLIP projection for the {tower.name} tower "
                              f"(expected {list(tower.proj.weight.shape)} as head.weight or visual.proj; found "
                              f"{found})")
    with torch.no_grad():
        tower.proj.weight.copy_(weight)
    logger.info("CLIP projection %s -> %s", path, list(weight.shape))


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Initialise DeMo's shared backbone from MODEL.PRETRAIN_PATH_T with the project's ImageNet loader (position
    table resized to the grid; OpenAI-layout CLIP files renamed), plus CLIP's projection for a :class:`CLIPTower`."""
    trunk = backbone.trunk if isinstance(backbone, CLIPTower) else backbone
    load_imagenet_weights({s: trunk for s in SPECTRA}, path)
    if isinstance(backbone, CLIPTower):
        load_clip_projection(backbone, path)


# ----------------------------------------------------------------------------------------------------------------------
# PIFE, HDM, ATMoE.

class SpectrumFeature(nn.Module):
    """PIFE of one spectrum: tokens [B, 1 + N, D] -> QuickGELU(fc(norm(cat[token 0, mean of patch tokens]))) [B, D]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.fc = nn.Linear(2 * dim, dim)
        self.act = QuickGELU()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)
        return self.act(self.fc(self.norm(pooled)))


class HDM(nn.Module):
    """Hierarchical decoupling: for each set of spectra (:data:`SPECTRUM_SETS`), a learned query [1, 1, D] attends
    with its own ``nn.MultiheadAttention`` (D / 64 heads; key = value) over the concatenated tokens
    [f_s; patch tokens of s] of the spectra of the set. Output [B, 7, D] in the order of :data:`SPECTRUM_SETS`: the
    attention output as it is (no residual, norm or feed-forward). ``dropout`` acts on the attention weights in
    training (0.1 in the original)."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % _HDM_HEAD_WIDTH:
            raise ValueError(f"DeMo's HDM needs a feature width divisible by {_HDM_HEAD_WIDTH}; the backbone gives "
                             f"{dim}")
        self.queries = nn.ParameterDict({name: nn.Parameter(dim ** -0.5 * torch.randn(1, 1, dim))
                                         for name in SPECTRUM_SETS})
        self.attn = nn.ModuleDict({name: nn.MultiheadAttention(dim, dim // _HDM_HEAD_WIDTH, dropout=dropout,
                                                               batch_first=True) for name in SPECTRUM_SETS})

    def forward(self, features: Mapping[str, torch.Tensor], tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        keys = {s: torch.cat([features[s].unsqueeze(1), tokens[s][:, 1:]], dim=1) for s in SPECTRA}
        parts = []
        for name, subset in SPECTRUM_SETS.items():
            kv = torch.cat([keys[s] for s in subset], dim=1)
            query = self.queries[name].expand(kv.shape[0], -1, -1)
            parts.append(self.attn[name](query, kv, kv, need_weights=False)[0][:, 0])
        return torch.stack(parts, dim=1)


class ExpertMLP(nn.Module):
    """x -> BatchNorm1d(QuickGELU(fc(x))): one ATMoE expert, and the gate's reduction of its input."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.act = QuickGELU()
        self.norm = nn.BatchNorm1d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.fc(x)))


class ATMoEGate(nn.Module):
    """Dense attention gate: x = reduce(cat of the parts) [B, D]; q = W_q x, k_e = W_k part_e (no biases); per head h
    the softmax over the parts of q_h . k_{e,h} / sqrt(d). Returns [B, heads, parts] (no top-k, no noise)."""

    def __init__(self, dim: int, num_parts: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.reduce = ExpertMLP(num_parts * dim, dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)

    def forward(self, parts: torch.Tensor) -> torch.Tensor:
        batch, num_parts, dim = parts.shape
        head_dim = dim // self.heads
        q = self.q(self.reduce(parts.flatten(1))).view(batch, self.heads, head_dim)
        k = self.k(parts).view(batch, num_parts, self.heads, head_dim)
        return (torch.einsum("bhd,behd->bhe", q, k) * head_dim ** -0.5).softmax(dim=-1)


class ATMoE(nn.Module):
    """Attention-triggered mixture of experts over the HDM parts [B, E, D]: chunk h (width d = D / heads) of part e
    goes through expert (h, e), weighted by the gate G[:, h, e]; the output [B, E * D] keeps every weighted expert
    output, part-major (columns e*D + h*d ... e*D + (h+1)*d). Returns (output, gates [B, heads, E])."""

    def __init__(self, dim: int, num_parts: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"MODEL.DEMO.HEAD {heads}: ATMoE heads must divide the feature width {dim}")
        self.heads = heads
        self.gate = ATMoEGate(dim, num_parts, heads)
        self.experts = nn.ModuleList(nn.ModuleList(ExpertMLP(dim // heads, dim // heads) for _ in range(num_parts))
                                     for _ in range(heads))

    def forward(self, parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num_parts, dim = parts.shape
        gates = self.gate(parts)
        chunks = parts.view(batch, num_parts, self.heads, dim // self.heads)
        experts = torch.stack([torch.stack([expert(chunks[:, e, h]) for e, expert in enumerate(head_experts)], dim=1)
                               for h, head_experts in enumerate(self.experts)], dim=2)  # [B, E, heads, d]
        weighted = experts * gates.transpose(1, 2).unsqueeze(-1)
        return weighted.reshape(batch, num_parts * dim), gates


# ----------------------------------------------------------------------------------------------------------------------
# The model.

class DeMoFeatures(NamedTuple):
    """What DeMo computes from the backbone tokens of the three spectra (``None`` for a part switched off)."""

    spectra: dict[str, torch.Tensor]  # PIFE feature f_s [B, D] per spectrum (token 0 without PIFE)
    ori: torch.Tensor  # cat[f_R, f_N, f_T] [B, 3D]
    parts: torch.Tensor | None  # HDM outputs [B, 7, D] (order of SPECTRUM_SETS)
    gates: torch.Tensor | None  # ATMoE gates [B, heads, 7]
    moe: torch.Tensor | None  # ATMoE output [B, 7D] (without ATMoE: the HDM parts concatenated, as the original)


class DeMo(nn.Module):
    """DeMo over RGB, NI and TI with one shared ``backbone`` (a :class:`CLIPTower`, or a registry backbone mapping
    (images, camera ids) to tokens [B, 1 + N, D]).

    ``pife``, ``hdm``, ``atmoe``: the paper's ablation switches (the original's GLOBAL_LOCAL, HDM, ATM). Without
    PIFE, f_s is the backbone's token 0; without ATMoE the "moe" feature is the seven HDM parts concatenated; without
    HDM there is no "moe" head and the test feature is ``ori``. ATMoE needs HDM's parts (the original crashes
    without them), so ``atmoe`` without ``hdm`` is an error.

    ``cls_cameras`` (CLIP tower only): rows of DeMo's camera embedding ``camera_embed``, added (times ``sie_coe``)
    to the CLS token before the position table; it is not part of ``backbone`` (so it does not take the backbone's
    learning rate, as in the original). A registry backbone carries its own camera embedding (SIE).

    Train mode: ``forward(images, cam_label)`` -> ``{"heads": {"moe": (logits, feature), "ori": ...} (or "moe",
    "RGB", "NI", "TI" without ``direct``), "losses": {"moe": 0}}``; features are those before the BNNeck.
    Eval mode: ``forward(images, cam_label, missing)`` = ``features_from_tokens(backbone_tokens(images without the
    missing spectra, cam_label), missing, cams=cam_label)`` -> the test feature [B, feat_dim] (not normalised).
    """

    spectra: tuple[str, ...] = SPECTRA
    backbone_prefix = "backbone."
    fills_missing = True  # a missing spectrum is a zero image through the backbone: every part of the feature is set

    def __init__(self, backbone: nn.Module, num_classes: int, img_size: Sequence[int], *, cls_cameras: int = 0,
                 sie_coe: float = 1.0, direct: bool = True, moe_heads: int = 4, feature: str = "cat",
                 hdm_dropout: float = 0.1, pife: bool = True, hdm: bool = True, atmoe: bool = True) -> None:
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"MODEL.DEMO.FEATURE {feature!r} is not one of: {', '.join(FEATURES)}")
        if atmoe and not hdm:
            raise ValueError("MODEL.DEMO.ATMOE True needs MODEL.DEMO.HDM True: ATMoE mixes HDM's seven parts (the "
                             "original code crashes in this setting, so the paper's +PIFE+ATMoE row has no code)")
        if feature == "moe" and not hdm:
            raise ValueError("MODEL.DEMO.FEATURE 'moe' needs MODEL.DEMO.HDM True: without HDM there is no moe feature")
        if cls_cameras and not isinstance(backbone, CLIPTower):
            raise ValueError("a CLS-token camera embedding belongs to a CLIP tower; other backbones carry their own")
        self.dim = int(backbone.embed_dim)
        self.img_size = tuple(img_size)
        self.direct, self.sie_coe = direct, float(sie_coe)
        self.feature = feature if hdm else "ori"  # cat[ori, moe] without a moe part is ori, as the original returns
        widths = {"ori": len(self.spectra), "moe": len(SPECTRUM_SETS)}
        self.feat_dim = (widths[self.feature] if self.feature in widths else sum(widths.values())) * self.dim
        self.backbone = backbone
        self.camera_embed = nn.Parameter(torch.zeros(cls_cameras, 1, backbone.width)) if cls_cameras else None
        if self.camera_embed is not None:
            trunc_normal_(self.camera_embed, std=0.02)
        self.pife = nn.ModuleDict({s: SpectrumFeature(self.dim) for s in self.spectra}) if pife else None
        self.hdm = HDM(self.dim, hdm_dropout) if hdm else None
        self.atmoe = ATMoE(self.dim, len(SPECTRUM_SETS), moe_heads) if atmoe else None
        heads = {"moe": BNNeckHead(len(SPECTRUM_SETS) * self.dim, num_classes)} if hdm else {}
        if direct:
            heads["ori"] = BNNeckHead(len(self.spectra) * self.dim, num_classes)
        else:
            heads.update({s: BNNeckHead(self.dim, num_classes) for s in self.spectra})
        self.heads = nn.ModuleDict(heads)

    # ------------------------------------------------------------------------------------------------------------
    def run_backbone(self, images: torch.Tensor, cams: torch.Tensor | None) -> torch.Tensor:
        """Tokens [B, 1 + N, D] of a batch of images of any spectrum."""
        if isinstance(self.backbone, CLIPTower):
            if self.camera_embed is None:
                return self.backbone(images)
            if cams is None:
                raise ValueError("DeMo has a camera embedding (MODEL.SIE_CAMERA) and needs the camera ids")
            return self.backbone(images, self.sie_coe * self.camera_embed[cams])
        return self.backbone(images, cams)

    def backbone_tokens(self, images: Mapping[str, torch.Tensor], cam_label: torch.Tensor | None = None,
                        ) -> dict[str, torch.Tensor]:
        """[B, 1 + N, D] tokens of each spectrum in ``images``: the spectra go through the backbone as one batch."""
        unknown = sorted(set(images) - set(self.spectra))
        if unknown:
            raise ValueError(f"unknown spectra {unknown} in images; known: {', '.join(self.spectra)}")
        present = [s for s in self.spectra if s in images]
        if not present:
            return {}
        sizes = [images[s].shape[0] for s in present]
        cams = None if cam_label is None else cam_label.repeat(len(present))
        tokens = self.run_backbone(torch.cat([images[s] for s in present]), cams)
        return dict(zip(present, tokens.split(sizes)))

    def fuse(self, tokens: Mapping[str, torch.Tensor]) -> DeMoFeatures:
        """PIFE, HDM and ATMoE on the tokens of the three spectra."""
        if self.pife is not None:
            features = {s: self.pife[s](tokens[s]) for s in self.spectra}
        else:
            features = {s: tokens[s][:, 0] for s in self.spectra}
        ori = torch.cat([features[s] for s in self.spectra], dim=-1)
        if self.hdm is None:
            return DeMoFeatures(features, ori, None, None, None)
        parts = self.hdm(features, tokens)
        moe, gates = self.atmoe(parts) if self.atmoe is not None else (parts.flatten(1), None)
        return DeMoFeatures(features, ori, parts, gates, moe)

    def resolve_missing(self, missing: Collection[str]) -> frozenset[str]:
        """``missing`` as a set of the model's spectra; raises for unknown names or when all are missing."""
        return resolve_missing(self.spectra, missing)

    def zero_image_tokens(self, batch: int, cams: torch.Tensor | None, cache: dict | None = None) -> torch.Tensor:
        """Backbone tokens [batch, 1 + N, D] of an all-zero normalised image (a missing spectrum) for each sample,
        once per camera of a batch (:func:`modeling.methods.zero_fill.zero_image_passes`)."""
        (tokens,) = zero_image_passes(lambda x, c: (self.run_backbone(x, c),), next(self.backbone.parameters()),
                                      self.img_size, batch, cams, cache, "demo_zero_image")
        return tokens

    def test_feature(self, fused: DeMoFeatures) -> torch.Tensor:
        if self.feature == "ori":
            return fused.ori
        if self.feature == "moe":
            return fused.moe
        return torch.cat([fused.ori, fused.moe], dim=-1)

    def features_from_tokens(self, tokens: Mapping[str, torch.Tensor], missing: Collection[str] = frozenset(),
                             cache: dict | None = None, cams: torch.Tensor | None = None) -> torch.Tensor:
        """Test feature [B, feat_dim] from backbone tokens; a missing spectrum (its tokens, if given, are ignored)
        gets the tokens of a zero image with the sample's camera (``cams``, needed with a camera embedding)."""
        missing = self.resolve_missing(missing)
        absent = [s for s in self.spectra if s not in missing and s not in tokens]
        if absent:
            raise ValueError(f"no tokens for {absent}, which are not in missing={sorted(missing)}")
        full = {s: tokens[s] for s in self.spectra if s not in missing}
        if missing:
            zero = self.zero_image_tokens(next(iter(full.values())).shape[0], cams, cache)
            full.update({s: zero for s in missing})
        return self.test_feature(self.fuse(full))

    def forward(self, images: Mapping[str, torch.Tensor], cam_label: torch.Tensor | None = None,
                missing: Collection[str] = frozenset()) -> dict[str, dict[str, Any]] | torch.Tensor:
        if not self.training:
            missing = self.resolve_missing(missing)
            tokens = self.backbone_tokens({s: x for s, x in images.items() if s not in missing}, cam_label)
            return self.features_from_tokens(tokens, missing, cams=cam_label)
        if missing:
            raise ValueError("missing spectra are an evaluation setting; the model is in train mode")
        absent = [s for s in self.spectra if s not in images]
        if absent:
            raise ValueError(f"training needs images of every spectrum of the model; missing {absent}")
        fused = self.fuse(self.backbone_tokens(images, cam_label))
        heads = {"moe": self.heads["moe"](fused.moe)} if fused.moe is not None else {}
        if self.direct:
            heads["ori"] = self.heads["ori"](fused.ori)
        else:
            heads.update({s: self.heads[s](fused.spectra[s]) for s in self.spectra})
        # The original's ATMoE has no auxiliary (balance) loss: it returns 0, which the engine adds.
        losses = {"moe": torch.zeros((), device=fused.ori.device)} if fused.moe is not None else {}
        return {"heads": heads, "losses": losses}


# ----------------------------------------------------------------------------------------------------------------------
# Building from the config.

@dataclass(frozen=True)
class DeMoOptions:
    heads: int  # MODEL.DEMO.HEAD: ATMoE heads
    feature: str  # MODEL.DEMO.FEATURE: cat | ori | moe
    hdm_dropout: float  # MODEL.DEMO.HDM_DROPOUT: HDM's attention dropout in training
    pife: bool = True  # MODEL.DEMO.PIFE / HDM / ATMOE: the ablation switches (the original's GLOBAL_LOCAL, HDM, ATM)
    hdm: bool = True
    atmoe: bool = True


def demo_options(cfg: CfgNode) -> DeMoOptions:
    """MODEL.DEMO.* with their defaults (HEAD 4, FEATURE "cat", HDM_DROPOUT 0.1, PIFE / HDM / ATMOE True) where the
    config has no such key; raises naming the key for an invalid value."""
    node = cfg.MODEL.get("DEMO", None) or {}
    switches = {key: node.get(key, True) for key in ("PIFE", "HDM", "ATMOE")}
    for key, value in switches.items():
        if not isinstance(value, bool):
            raise ValueError(f"MODEL.DEMO.{key} {value!r} must be True or False")
    heads, feature, dropout = node.get("HEAD", 4), node.get("FEATURE", "cat"), node.get("HDM_DROPOUT", 0.1)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"MODEL.DEMO.HEAD {heads!r} must be an integer >= 1")
    if feature not in FEATURES:
        raise ValueError(f"MODEL.DEMO.FEATURE {feature!r} is not one of: {', '.join(FEATURES)}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"MODEL.DEMO.HDM_DROPOUT {dropout!r} must be a number in [0, 1)")
    return DeMoOptions(heads, feature, float(dropout), switches["PIFE"], switches["HDM"], switches["ATMOE"])


@register_method("DeMo", aux_losses=lambda cfg: {"moe": 1.0} if demo_options(cfg).hdm else {},
                 original=OriginalLayout("original DeMo", is_demo_layout,
                                         lambda state, model: (convert_demo_state_dict(state), [])))
def build_demo(cfg: CfgNode, num_classes: int, num_cameras: int, pretrained: bool = True) -> DeMo:
    """DeMo from MODEL.TRANSFORMER_TYPE, INPUT.SIZE_TRAIN, MODEL.STRIDE_SIZE, MODEL.SIE_CAMERA, MODEL.SIE_COE,
    MODEL.DROP_PATH / DROP_OUT / ATT_DROP_RATE, MODEL.GRAD_CHECKPOINT, MODEL.DIRECT and MODEL.DEMO.*.

    A timm CLIP tower name (``vit_base_patch16_clip_quickgelu_224``) builds :class:`CLIPTower` with DeMo's camera
    embedding on the CLS token; any other backbone name builds that registry backbone (``vit_base_patch16_224``:
    camera embedding on every token). The original's CLIP tower has no drop path whatever MODEL.DROP_PATH says: a
    config reproducing it sets MODEL.DROP_PATH 0. With MODEL.PRETRAIN_CHOICE 'imagenet' (and ``pretrained``) the
    backbone is initialised from MODEL.PRETRAIN_PATH_T (a CLIP tower's projection too); nothing is downloaded.
    """
    m = cfg.MODEL
    if tuple(m.SPECTRA) != SPECTRA:
        raise ValueError(f"MODEL.SPECTRA {list(m.SPECTRA)}: DeMo uses all of {', '.join(SPECTRA)}")
    options = demo_options(cfg)
    cameras = num_cameras if m.SIE_CAMERA else 0
    size, stride = tuple(cfg.INPUT.SIZE_TRAIN), tuple(m.STRIDE_SIZE)
    drops = {"drop_path": m.DROP_PATH, "drop_out": m.DROP_OUT, "attn_drop": m.ATT_DROP_RATE,
             "grad_checkpoint": m.GRAD_CHECKPOINT}
    clip = is_clip_tower(m.TRANSFORMER_TYPE)
    if clip:
        backbone = CLIPTower(m.TRANSFORMER_TYPE, size, stride, **drops)
    else:
        backbone = build_backbone(m.TRANSFORMER_TYPE, size, stride, num_cameras=cameras, sie_coe=m.SIE_COE, **drops)
    if pretrained and m.PRETRAIN_CHOICE == "imagenet":
        load_backbone_weights(backbone, m.PRETRAIN_PATH_T)
    model = DeMo(backbone, num_classes, size, cls_cameras=cameras if clip else 0, sie_coe=m.SIE_COE,
                 direct=m.DIRECT, moe_heads=options.heads, feature=options.feature, hdm_dropout=options.hdm_dropout,
                 pife=options.pife, hdm=options.hdm, atmoe=options.atmoe)
    parts = ", ".join(name for name, on in (("PIFE", options.pife), ("HDM", options.hdm),
                                              (f"ATMoE {options.heads} heads", options.atmoe)) if on) or "baseline"
    logger.info("model: DeMo (%s), %s backbone (one, shared; D=%d), heads %s, test feature %s (%d), %.1fM parameters",
                parts, m.TRANSFORMER_TYPE, model.dim, ", ".join(model.heads), model.feature, model.feat_dim,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model

