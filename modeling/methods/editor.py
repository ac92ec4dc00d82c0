"""EDITOR (CVPR 2024, "Magic Tokens: Select Diverse Tokens for Multi-modal Object Re-Identification").

One ImageNet ViT shared by RGB, NI and TI (a registry backbone that also returns its attention maps), then:

- SFTS (spatial-frequency token selection), one mask M over the N patch tokens per sample, shared by the spectra:
  per spectrum and per backbone attention head, the k patches with the largest attention rollout (the CLS row of
  A_L @ ... @ A_1 @ A_0, no head mean, no identity added; k = int(N / num_patches * HEAD_KEEP), as the original),
  united over heads and spectra, with the FREQUENCY_KEEP patches holding the most positive pixels of the spectral mean
  image (x_RGB + x_NI + x_TI) / 3 (the original's Haar transform, band-averaged and inverted, reconstructs exactly
  that mean). Dropped patch tokens are zeroed, not removed.
- HMA (hierarchical masked aggregation): a masked transformer block per spectrum (X_s), then one over the three
  spectra's tokens together, a final LayerNorm; attention between a dropped token and any other is filled with
  -65504 before the softmax, and dropped tokens stay zero.
- v_s = reduce_s(cat[CLS of s, mean of its kept patch tokens]); the test feature is f = cat[v_RGB, v_NI, v_TI].
- Heads (BNNeck with a trainable bias): ``fuse`` on f, and ``al`` on the concatenated backbone CLS tokens
  (MODEL.EDITOR.AL True, the original's AL 1) or one BNNeck shared by the three per-spectrum backbone CLS tokens,
  returned as the heads ``RGB``, ``NI``, ``TI`` (AL 0).
- Auxiliary losses: BCC (background consistency: the backbone's dropped patch tokens agree across spectra) and
  OCFR (object-centric feature refinement: the normalised CLS of X_s is pulled to its identity's centre, a class
  memory updated in the training forward before the loss; the centres are buffers, saved in checkpoints; under
  torchrun the update is the global batch's, so every rank holds the same centres).

Missing spectra at test time (``TEST.MISS``; the original has no such mode): the field's zero-fill, as DeMo's. A
missing spectrum's normalised image is all zeros: it goes through the backbone (tokens and attention; computed once
per camera of a batch) and counts as zeros in the spectral mean of the frequency score.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from yacs.config import CfgNode

from layers.bnneck import BNNeckHead
from modeling.backbones import build_backbone
from modeling.methods.editor_convert import convert_editor_state_dict, is_editor_layout
from modeling.methods.registry import OriginalLayout, register_method
from modeling.methods.zero_fill import resolve_missing, zero_image_passes
from modeling.pretrained import load_imagenet_weights
from utils import distributed as du
from utils.spectra import SPECTRA

logger = logging.getLogger("modeling")

FREQUENCY_WINDOW = 16  # the original counts positive pixels in 16 x 16 windows at the backbone's stride
HMA_HEADS = 12  # HMA's attention heads, fixed in the original
MASK_FILL = -65504.0  # the original's fill of masked attention logits (fp16's lowest); -inf would give NaN rows
OCFR_MOMENTUM = 0.8  # weight of the batch's mean in the update of a class centre, as the original


# ----------------------------------------------------------------------------------------------------------------------
# SFTS: spatial-frequency token selection.

class SpectrumTokens(NamedTuple):
    """What EDITOR keeps of one spectrum's backbone pass (the value of each spectrum in ``backbone_tokens``)."""

    tokens: torch.Tensor  # backbone output [B, 1 + N, D]
    rollout: torch.Tensor  # CLS row of the per-head attention product over the patches [B, heads, N]
    image: torch.Tensor | None  # the normalised image [B, 3, H, W]; None for a missing spectrum's zero image


class Selection(NamedTuple):
    """SFTS's choices for a batch (indices sorted, masks [B, N] over the patch tokens)."""

    head_topk: dict[str, torch.Tensor]  # per spectrum, each attention head's k patches [B, heads, k]
    spatial: dict[str, torch.Tensor]  # per spectrum, their union over heads
    frequency_score: torch.Tensor  # positive pixels of the spectral mean image per patch, int32 [B, N]
    frequency_topk: torch.Tensor  # the FREQUENCY_KEEP patches of highest score [B, keep]
    frequency: torch.Tensor  # their mask
    mask: torch.Tensor  # M: the union of the spatial masks and the frequency mask


def attention_rollout(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """CLS row over the patches of A_L @ ... @ A_1 @ A_0 for each head: maps [B, heads, 1 + N, 1 + N] in block order
    -> [B, heads, N]. The product is taken per head, without a head mean or an identity term, as the original."""
    product = maps[0]
    for attn in maps[1:]:
        product = attn @ product
    return product[:, :, 0, 1:]


def head_keep_k(num_tokens: int, head_keep: int) -> int:
    """Tokens kept per attention head: the original's int(N * ((1 / num_patches) * HEAD_KEEP)) with num_patches = N
    at stride 16. The float product truncates: 196 tokens (224 x 224) give 1 for HEAD_KEEP 2, 128 tokens give 2."""
    return int(num_tokens * ((1 / num_tokens) * head_keep))


def topk_mask(scores: torch.Tensor, k: int, lowest_index_ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted indices [B, k], mask [B, N]) of the k largest of ``scores`` [B, N] per row. ``torch.topk`` on the
    [B, N] tensor, as the original: its choice among equal scores (frequency counts tie often) is the original's.
    ``lowest_index_ties``: of equal scores the lowest index first, as ONNX TopK (an exported graph) keeps them."""
    if lowest_index_ties:
        indices = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k].sort(dim=1).values
    else:
        indices = torch.topk(scores, k, dim=1).indices.sort(dim=1).values
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    mask = mask.scatter(1, indices, torch.ones_like(indices, dtype=torch.bool))
    return indices, mask


def spectral_mean(images: Sequence[torch.Tensor], num_spectra: int) -> torch.Tensor:
    """(x_1 + x_2 + ...) / num_spectra in spectrum order; a missing spectrum's zero image is left out of the sum,
    which changes no bit of it."""
    total = images[0]
    for image in images[1:]:
        total = total + image
    return total / num_spectra


def frequency_score(mean_image: torch.Tensor, grid: Sequence[int], window: int = FREQUENCY_WINDOW) -> torch.Tensor:
    """Per patch of the token ``grid`` (rows, cols) the number of pixels whose channel mean is above 0 in the
    ``window`` x ``window`` square under it: [B, 3, H, W] -> int32 [B, rows * cols]."""
    rows, cols = grid
    positive = mean_image.mean(dim=1)[:, :rows * window, :cols * window] > 0
    patches = positive.reshape(positive.shape[0], rows, window, cols, window)
    return patches.sum(dim=(2, 4), dtype=torch.int32).flatten(1)


class SFTS(nn.Module):
    """Spatial-frequency token selection (no parameters): ``head_k`` patches per spectrum and attention head by
    attention rollout, ``frequency_keep`` patches by :func:`frequency_score`, united into one mask.
    ``lowest_index_ties`` (see :meth:`EDITOR.as_exported`): ties broken as an exported ONNX graph breaks them."""

    def __init__(self, head_k: int, frequency_keep: int, grid: Sequence[int]) -> None:
        super().__init__()
        self.head_k, self.frequency_keep, self.grid = head_k, frequency_keep, tuple(grid)
        self.lowest_index_ties = False

    def forward(self, rollouts: Mapping[str, torch.Tensor], mean_image: torch.Tensor) -> Selection:
        head_topk, spatial = {}, {}
        for s, rollout in rollouts.items():
            picks = [topk_mask(rollout[:, h], self.head_k, self.lowest_index_ties) for h in range(rollout.shape[1])]
            head_topk[s] = torch.stack([indices for indices, _ in picks], dim=1)
            spatial[s] = torch.stack([mask for _, mask in picks]).any(dim=0)
        score = frequency_score(mean_image, self.grid)
        frequency_topk, frequency = topk_mask(score, self.frequency_keep, self.lowest_index_ties)
        mask = torch.stack([*spatial.values(), frequency]).any(dim=0)
        return Selection(head_topk, spatial, score, frequency_topk, frequency, mask)


# ----------------------------------------------------------------------------------------------------------------------
# HMA: hierarchical masked aggregation.

class MaskedAttention(nn.Module):
    """Multi-head self-attention restricted to kept tokens (no biases): dropped tokens are zeroed, a logit between a
    dropped token and any token is :data:`MASK_FILL`, and a dropped token's attention row is zeroed after the
    softmax, so its output is zero."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        rows = keep.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
        q, k, v = self.qkv(x * rows).reshape(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        pairs = keep[:, None, :, None] & keep[:, None, None, :]
        attn = logits.masked_fill(~pairs, MASK_FILL).softmax(dim=-1) * rows.unsqueeze(1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, length, dim))


class MaskedMlp(nn.Module):
    """fc2(GELU(fc1(x * kept))) without biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x * keep.unsqueeze(-1).to(x.dtype))))


class MaskedBlock(nn.Module):
    """Pre-norm transformer block of :class:`MaskedAttention` and :class:`MaskedMlp` (LayerNorm eps 1e-5)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MaskedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MaskedMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x), keep)


class HMA(nn.Module):
    """A :class:`MaskedBlock` per spectrum, then one over the spectra's tokens concatenated, then ``out_norm`` with
    the dropped tokens zeroed. ``forward(tokens, keep)`` with ``keep`` [B, 1 + N] (the CLS token always kept) ->
    (X_s per spectrum, Z_s per spectrum), each [B, 1 + N, D]."""

    def __init__(self, spectra: Sequence[str], dim: int, heads: int = HMA_HEADS) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"EDITOR's HMA has {heads} attention heads, which must divide the backbone width {dim}")
        self.spectra = nn.ModuleDict({s: MaskedBlock(dim, heads) for s in spectra})
        self.joint = MaskedBlock(dim, heads)
        self.out_norm = nn.LayerNorm(dim)
        for module in self.modules():  # as the original: truncated normal linear weights, unit LayerNorms
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)

    def forward(self, tokens: Mapping[str, torch.Tensor], keep: torch.Tensor,
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        own = {s: block(tokens[s], keep) for s, block in self.spectra.items()}
        joint_keep = keep.repeat(1, len(own))
        joint = self.out_norm(self.joint(torch.cat(list(own.values()), dim=1), joint_keep))
        joint = joint * joint_keep.unsqueeze(-1).to(joint.dtype)
        return own, dict(zip(own, joint.split(keep.shape[1], dim=1)))


# ----------------------------------------------------------------------------------------------------------------------
# The auxiliary losses.

def background_consistency(patches: Mapping[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """BCC: sum over pairs of spectra of the mean squared difference of their backbone patch tokens [B, N, D] where
    ``mask`` [B, N] dropped them (kept tokens count as zeros in the mean, as the original)."""
    background = (~mask).unsqueeze(-1)
    dropped = [tokens * background for tokens in patches.values()]
    return sum(F.mse_loss(a, b) for a, b in itertools.combinations(dropped, 2))


def identity_blocks(labels: torch.Tensor) -> torch.Tensor:
    """The identities of a batch that is P contiguous blocks of K samples of one identity each (the P x K sampler), in
    increasing order; raises otherwise, as OCFR pairs a centre with a block."""
    identities = labels.unique()
    count = identities.numel()
    blocks = labels.view(count, -1) if labels.numel() % count == 0 else None
    if blocks is None or bool((blocks != blocks[:, :1]).any()):
        raise ValueError("EDITOR's OCFR needs training batches of contiguous, equal-size blocks of one identity each "
                         "(DATALOADER.SAMPLER 'softmax_triplet'); got the identities "
                         f"{labels.tolist()}")
    return identities


class OCFR(nn.Module):
    """Object-centric feature refinement: a class memory per spectrum (``<S>_centers`` [classes, D], buffers saved
    with the model). ``forward(cls, labels)`` L2-normalises each spectrum's CLS feature, first sets the centre of
    every identity y of the batch to 0.8 * (mean of its features) + 0.2 * (its centre), in place and without
    gradient, then returns the sum over spectra of the mean squared distance of the features to their centres.

    Under torchrun the update is the global batch's (:meth:`update_across_ranks`): every rank applies the same one,
    so the ranks' centres stay equal. (The original's centres are parameters without gradient, which
    DistributedDataParallel never synchronises: each rank kept its own and rank 0's were saved. As buffers, DDP's
    broadcast of rank 0's buffers before each forward would discard the other ranks' updates.)"""

    def __init__(self, spectra: Sequence[str], num_classes: int, dim: int, momentum: float = OCFR_MOMENTUM) -> None:
        super().__init__()
        self.spectra = tuple(spectra)
        # A float32 tensor, as the original: 1 - momentum is then taken in float32.
        self.momentum = torch.tensor(momentum, dtype=torch.float32)
        for s in self.spectra:
            self.register_buffer(f"{s}_centers", torch.zeros(num_classes, dim))

    def centers(self, spectrum: str) -> torch.Tensor:
        return getattr(self, f"{spectrum}_centers")

    def forward(self, cls: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        identities = identity_blocks(labels)
        features = {s: F.normalize(cls[s], dim=1) for s in self.spectra}
        with torch.no_grad():
            if du.is_distributed():
                self.update_across_ranks(features, labels)
            else:
                for s in self.spectra:
                    centers = self.centers(s)
                    means = torch.stack([features[s][labels == y].mean(dim=0) for y in identities]).to(centers.dtype)
                    momentum = self.momentum.to(centers.device)
                    centers[identities] = momentum * means + (1 - momentum) * centers[identities]
        loss = None
        for s in self.spectra:
            term = F.mse_loss(self.centers(s)[labels], features[s])
            loss = term if loss is None else loss + term
        return loss

    def update_across_ranks(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor) -> None:
        """The update from the global batch of all ranks: each rank sums its normalised features per identity and
        counts them, one all-reduce adds the ranks' sums, and every rank sets each identity of the global batch to
        0.8 * (mean over all its images in the global batch) + 0.2 * (its centre)."""
        first = self.centers(self.spectra[0])
        dim = first.shape[1]
        rows = torch.cat([*(features[s].to(first.dtype) for s in self.spectra), first.new_ones(len(labels), 1)], dim=1)
        sums = first.new_zeros(first.shape[0], rows.shape[1]).index_add_(0, labels, rows)  # [classes, S * D + 1]
        torch.distributed.all_reduce(sums)
        present = sums[:, -1].nonzero().squeeze(1)
        means = sums[present, :-1] / sums[present, -1:]
        momentum = self.momentum.to(first.device)
        for k, s in enumerate(self.spectra):
            centers = self.centers(s)
            centers[present] = momentum * means[:, k * dim:(k + 1) * dim] + (1 - momentum) * centers[present]


# ----------------------------------------------------------------------------------------------------------------------
# The model.

class EditorFeatures(NamedTuple):
    """What EDITOR computes from the backbone passes of the three spectra."""

    selection: Selection
    spectra: dict[str, torch.Tensor]  # X_s: after the spectrum's own masked block [B, 1 + N, D]
    reduce_in: dict[str, torch.Tensor]  # cat[CLS of Z_s, mean of its kept patch tokens] [B, 2D]
    feature: torch.Tensor  # f = cat[v_RGB, v_NI, v_TI] [B, 3D]


class EDITOR(nn.Module):
    """EDITOR over RGB, NI and TI with one shared ``backbone`` (a registry ViT with ``forward_with_attention``).

    Train mode: ``forward(images, cam_label, labels=pids)`` -> ``{"heads": {"fuse": (logits, f), "al": ...} (or
    "fuse", "RGB", "NI", "TI" without ``al``), "losses": {"bcc": ..., "ocfr": ...}}``; features before the BNNeck.
    The batch must be contiguous equal-size identity blocks (OCFR). Eval mode: ``forward(images, cam_label, missing)``
    = ``features_from_tokens(backbone_tokens(images without the missing spectra, cam_label), missing,
    cams=cam_label)`` -> f [B, 3D] (``neck_feat`` "after": the fuse head's BNNeck of it), not normalised.
    """

    spectra: tuple[str, ...] = SPECTRA
    backbone_prefix = "backbone."
    fills_missing = True  # a missing spectrum is a zero image through the backbone: every part of the feature is set
    takes_labels = True  # OCFR's class centres need the identities of the training batch

    def __init__(self, backbone: nn.Module, num_classes: int, img_size: Sequence[int], *, al: bool = True,
                 head_keep: int = 2, frequency_keep: int = 10, neck_feat: str = "before") -> None:
        super().__init__()
        if not callable(getattr(backbone, "forward_with_attention", None)):
            raise ValueError(f"MODEL.TRANSFORMER_TYPE {getattr(backbone, 'name', backbone)!r}: EDITOR needs a ViT "
                             "backbone that returns its attention maps")
        patch = tuple(backbone.patch_embed.patch_size)
        stride = tuple(backbone.patch_embed.stride)
        if patch != (FREQUENCY_WINDOW, FREQUENCY_WINDOW) or stride != patch:
            raise ValueError(f"MODEL.STRIDE_SIZE {list(stride)} (patch {list(patch)}): EDITOR's frequency score counts "
                             f"pixels per {FREQUENCY_WINDOW}x{FREQUENCY_WINDOW} patch and needs 16x16 patches at "
                             "stride 16 (the original fails on any other stride)")
        if neck_feat not in ("before", "after"):
            raise ValueError(f"TEST.NECK_FEAT {neck_feat!r} is not one of: before, after")
        self.dim = int(backbone.embed_dim)
        self.img_size = tuple(img_size)
        self.grid = tuple(backbone.grid_size)
        num_tokens = self.grid[0] * self.grid[1]
        self.head_k = head_keep_k(num_tokens, head_keep)
        if not 0 <= self.head_k <= num_tokens:
            raise ValueError(f"MODEL.EDITOR.HEAD_KEEP {head_keep} keeps {self.head_k} tokens per attention head, more "
                             f"than the {num_tokens} patch tokens of INPUT.SIZE_TRAIN {list(img_size)}")
        if not 1 <= frequency_keep <= num_tokens:
            raise ValueError(f"MODEL.EDITOR.FREQUENCY_KEEP {frequency_keep} must be between 1 and the {num_tokens} "
                             f"patch tokens of INPUT.SIZE_TRAIN {list(img_size)}")
        if self.head_k != head_keep:
            logger.warning("EDITOR keeps %d tokens per attention head for MODEL.EDITOR.HEAD_KEEP %d at %d tokens (the "
                           "original's truncating formula)", self.head_k, head_keep, num_tokens)
        self.al, self.neck_feat = al, neck_feat
        self.feat_dim = len(self.spectra) * self.dim
        self.backbone = backbone
        self.sfts = SFTS(self.head_k, frequency_keep, self.grid)
        self.hma = HMA(self.spectra, self.dim)
        self.ocfr = OCFR(self.spectra, num_classes, self.dim)
        self.reduce = nn.ModuleDict({s: nn.Linear(2 * self.dim, self.dim) for s in self.spectra})
        for layer in self.reduce.values():  # the original's kaiming init (fan out), zero bias
            nn.init.kaiming_normal_(layer.weight, a=0, mode="fan_out")
            nn.init.zeros_(layer.bias)
        heads = {"fuse": BNNeckHead(self.feat_dim, num_classes, freeze_bias=False)}
        if al:
            heads["al"] = BNNeckHead(self.feat_dim, num_classes, freeze_bias=False)
        else:  # one head shared by the spectra's CLS tokens
            heads["backbone"] = BNNeckHead(self.dim, num_classes, freeze_bias=False)
        self.heads = nn.ModuleDict(heads)

    # ------------------------------------------------------------------------------------------------------------
    def run_backbone(self, images: torch.Tensor, cams: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, 1 + N, D], attention rollout [B, heads, N]) of a batch of images of any spectrum."""
        tokens, maps = self.backbone.forward_with_attention(images, cams)
        with torch.no_grad():  # only the rollout's order is used
            rollout = attention_rollout([m.detach() for m in maps])
        return tokens, rollout

    def backbone_tokens(self, images: Mapping[str, torch.Tensor], cam_label: torch.Tensor | None = None,
                        ) -> dict[str, SpectrumTokens]:
        """:class:`SpectrumTokens` of each spectrum in ``images``: the spectra go through the backbone as one
        batch."""
        unknown = sorted(set(images) - set(self.spectra))
        if unknown:
            raise ValueError(f"unknown spectra {unknown} in images; known: {', '.join(self.spectra)}")
        present = [s for s in self.spectra if s in images]
        if not present:
            return {}
        sizes = [images[s].shape[0] for s in present]
        cams = None if cam_label is None else cam_label.repeat(len(present))
        tokens, rollout = self.run_backbone(torch.cat([images[s] for s in present]), cams)
        return {s: SpectrumTokens(t, r, images[s])
                for s, t, r in zip(present, tokens.split(sizes), rollout.split(sizes))}

    def fuse(self, tokens: Mapping[str, SpectrumTokens]) -> EditorFeatures:
        """SFTS, HMA and the reductions on the backbone passes of the three spectra."""
        images = [tokens[s].image for s in self.spectra if tokens[s].image is not None]
        selection = self.sfts({s: tokens[s].rollout for s in self.spectra}, spectral_mean(images, len(self.spectra)))
        mask = selection.mask
        keep = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        selected = {s: torch.cat([t.tokens[:, :1], t.tokens[:, 1:] * mask.unsqueeze(-1)], dim=1)
                    for s, t in tokens.items()}
        own, joint = self.hma(selected, keep)
        kept = mask.sum(dim=1, keepdim=True)
        reduce_in = {s: torch.cat([joint[s][:, 0], joint[s][:, 1:].sum(dim=1) / kept], dim=-1) for s in self.spectra}
        feature = torch.cat([self.reduce[s](reduce_in[s]) for s in self.spectra], dim=-1)
        return EditorFeatures(selection, own, reduce_in, feature)

    def resolve_missing(self, missing: Collection[str]) -> frozenset[str]:
        """``missing`` as a set of the model's spectra; raises for unknown names or when all are missing."""
        return resolve_missing(self.spectra, missing)

    def zero_image_tokens(self, batch: int, cams: torch.Tensor | None, cache: dict | None = None) -> SpectrumTokens:
        """The backbone pass of an all-zero normalised image (a missing spectrum) for each sample, once per camera
        of a batch (:func:`modeling.methods.zero_fill.zero_image_passes`)."""
        tokens, rollout = zero_image_passes(self.run_backbone, next(self.backbone.parameters()), self.img_size, batch,
                                            cams, cache, "editor_zero_image")
        return SpectrumTokens(tokens, rollout, None)

    @contextlib.contextmanager
    def as_exported(self) -> Iterator[None]:
        """Within it the model computes what its ONNX export computes: SFTS keeps, of equal scores, the lowest
        index (ONNX TopK's rule; ``torch.topk`` on CPU picks among ties its own way). The exported graph differs from
        the model only on samples whose scores tie at the k-th place; ``tools/export_onnx.py`` checks the graph against
        the model in this context."""
        before = self.sfts.lowest_index_ties
        self.sfts.lowest_index_ties = True
        try:
            yield
        finally:
            self.sfts.lowest_index_ties = before

    def test_feature(self, fused: EditorFeatures) -> torch.Tensor:
        return fused.feature if self.neck_feat == "before" else self.heads["fuse"].neck(fused.feature)

    def features_from_tokens(self, tokens: Mapping[str, SpectrumTokens], missing: Collection[str] = frozenset(),
                             cache: dict | None = None, cams: torch.Tensor | None = None) -> torch.Tensor:
        """Test feature [B, feat_dim] from backbone passes; a missing spectrum (its entry, if given, is ignored) is
        the zero image with the sample's camera (``cams``, needed with a camera embedding)."""
        missing = self.resolve_missing(missing)
        absent = [s for s in self.spectra if s not in missing and s not in tokens]
        if absent:
            raise ValueError(f"no tokens for {absent}, which are not in missing={sorted(missing)}")
        full = {s: tokens[s] for s in self.spectra if s not in missing}
        if missing:
            zero = self.zero_image_tokens(next(iter(full.values())).tokens.shape[0], cams, cache)
            full.update({s: zero for s in missing})
        return self.test_feature(self.fuse({s: full[s] for s in self.spectra}))

    def forward(self, images: Mapping[str, torch.Tensor], cam_label: torch.Tensor | None = None,
                missing: Collection[str] = frozenset(), labels: torch.Tensor | None = None,
                ) -> dict[str, dict[str, Any]] | torch.Tensor:
        # ``missing`` third, as every method's forward (the tools call ``model(images, cams, missing)``).
        if not self.training:
            missing = self.resolve_missing(missing)
            tokens = self.backbone_tokens({s: x for s, x in images.items() if s not in missing}, cam_label)
            return self.features_from_tokens(tokens, missing, cams=cam_label)
        if missing:
            raise ValueError("missing spectra are an evaluation setting; the model is in train mode")
        absent = [s for s in self.spectra if s not in images]
        if absent:
            raise ValueError(f"training needs images of every spectrum of the model; missing {absent}")
        if labels is None:
            raise ValueError("EDITOR's training forward needs the identities of the batch (labels=...) for OCFR")
        tokens = self.backbone_tokens(images, cam_label)
        fused = self.fuse(tokens)
        cls = {s: tokens[s].tokens[:, 0] for s in self.spectra}
        heads = {"fuse": self.heads["fuse"](fused.feature)}
        if self.al:
            heads["al"] = self.heads["al"](torch.cat(list(cls.values()), dim=-1))
        else:
            heads.update({s: self.heads["backbone"](cls[s]) for s in self.spectra})
        losses = {
            "bcc": background_consistency({s: tokens[s].tokens[:, 1:] for s in self.spectra}, fused.selection.mask),
            "ocfr": self.ocfr({s: fused.spectra[s][:, 0] for s in self.spectra}, labels),
        }
        return {"heads": heads, "losses": losses}


# ----------------------------------------------------------------------------------------------------------------------
# Building from the config.

@dataclass(frozen=True)
class EditorOptions:
    al: bool  # MODEL.EDITOR.AL: one head on the concatenated backbone CLS tokens (True) or one per spectrum
    head_keep: int  # MODEL.EDITOR.HEAD_KEEP
    frequency_keep: int  # MODEL.EDITOR.FREQUENCY_KEEP
    bcc_weight: float  # MODEL.EDITOR.BCC_LOSS_WEIGHT
    ocfr_weight: float  # MODEL.EDITOR.OCFR_LOSS_WEIGHT


def editor_options(cfg: CfgNode) -> EditorOptions:
    """MODEL.EDITOR.* (defaults AL True, HEAD_KEEP 2, FREQUENCY_KEEP 10, loss weights 1 where the config has no such
    key); raises naming the key for an invalid value."""
    node = cfg.MODEL.get("EDITOR", None) or {}
    al = node.get("AL", True)
    head_keep, frequency_keep = node.get("HEAD_KEEP", 2), node.get("FREQUENCY_KEEP", 10)
    weights = {key: node.get(key, 1.0) for key in ("BCC_LOSS_WEIGHT", "OCFR_LOSS_WEIGHT")}
    if not isinstance(al, bool):
        raise ValueError(f"MODEL.EDITOR.AL {al!r} must be True or False")
    for key, value in (("HEAD_KEEP", head_keep), ("FREQUENCY_KEEP", frequency_keep)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"MODEL.EDITOR.{key} {value!r} must be an integer >= 1")
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"MODEL.EDITOR.{key} {value!r} must be a number >= 0")
    return EditorOptions(al, head_keep, frequency_keep, float(weights["BCC_LOSS_WEIGHT"]),
                         float(weights["OCFR_LOSS_WEIGHT"]))


def _aux_losses(cfg: CfgNode) -> dict[str, float]:
    options = editor_options(cfg)
    return {"bcc": options.bcc_weight, "ocfr": options.ocfr_weight}


@register_method("EDITOR", aux_losses=_aux_losses,
                 original=OriginalLayout("original EDITOR", is_editor_layout, convert_editor_state_dict))
def build_editor(cfg: CfgNode, num_classes: int, num_cameras: int, pretrained: bool = True) -> EDITOR:
    """EDITOR from MODEL.TRANSFORMER_TYPE (a timm ViT), INPUT.SIZE_TRAIN, MODEL.STRIDE_SIZE (16), MODEL.SIE_CAMERA,
    MODEL.SIE_COE, MODEL.DROP_PATH / DROP_OUT / ATT_DROP_RATE, MODEL.GRAD_CHECKPOINT, TEST.NECK_FEAT and
    MODEL.EDITOR.*. With MODEL.PRETRAIN_CHOICE 'imagenet' (and ``pretrained``) the backbone is initialised from
    MODEL.PRETRAIN_PATH_T; nothing is downloaded."""
    m = cfg.MODEL
    if tuple(m.SPECTRA) != SPECTRA:
        raise ValueError(f"MODEL.SPECTRA {list(m.SPECTRA)}: EDITOR uses all of {', '.join(SPECTRA)}")
    options = editor_options(cfg)
    size = tuple(cfg.INPUT.SIZE_TRAIN)
    backbone = build_backbone(m.TRANSFORMER_TYPE, size, tuple(m.STRIDE_SIZE),
                              num_cameras=num_cameras if m.SIE_CAMERA else 0, sie_coe=m.SIE_COE,
                              drop_path=m.DROP_PATH, drop_out=m.DROP_OUT, attn_drop=m.ATT_DROP_RATE,
                              grad_checkpoint=m.GRAD_CHECKPOINT)
    if pretrained and m.PRETRAIN_CHOICE == "imagenet":
        load_imagenet_weights({s: backbone for s in SPECTRA}, m.PRETRAIN_PATH_T)
    model = EDITOR(backbone, num_classes, size, al=options.al, head_keep=options.head_keep,
                   frequency_keep=options.frequency_keep, neck_feat=cfg.TEST.NECK_FEAT)
    logger.info("model: EDITOR, %s backbone (one, shared; D=%d), %d tokens per head and %d by frequency of %d, heads "
                "%s, %.1fM parameters", m.TRANSFORMER_TYPE, model.dim, model.head_k, options.frequency_keep,
                model.grid[0] * model.grid[1], ", ".join(model.heads),
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model
