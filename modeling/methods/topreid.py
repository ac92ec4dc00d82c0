"""TOP-ReID (AAAI 2024): a backbone per spectrum (or one shared), the Token Permutation Module, the Complementary
Reconstruction Module and BNNeck heads (:class:`modeling.meta_arch.TOPReID`)."""

from __future__ import annotations

import logging

from torch import nn
from yacs.config import CfgNode

from modeling.backbones import build_backbone
from modeling.convert import convert_original_state_dict, is_original_layout
from modeling.meta_arch import TOPReID
from modeling.methods.registry import OriginalLayout, register_method
from modeling.pretrained import load_imagenet_weights
from utils.checkpoint import CheckpointError

logger = logging.getLogger("modeling")


def _convert_original(state, model):
    heads = model.heads.keys() if isinstance(getattr(model, "heads", None), nn.ModuleDict) else None
    if getattr(getattr(model, "backbones", None), "is_shared", False):
        raise CheckpointError("a checkpoint of the original TOP-ReID code has one backbone per spectrum; it cannot be "
                              "converted into a model with MODEL.SHARED_BACKBONE True (set MODEL.SHARED_BACKBONE "
                              "False)")
    return convert_original_state_dict(state, heads)


@register_method("TOPReID", aux_losses=lambda cfg: {"crm": float(cfg.MODEL.CRM_LOSS_WEIGHT)},
                 original=OriginalLayout("original TOP-ReID", is_original_layout, _convert_original))
def build_topreid(cfg: CfgNode, num_classes: int, camera_num: int, pretrained: bool = True) -> TOPReID:
    """TOP-ReID from MODEL.*, INPUT.SIZE_TRAIN and TEST.NECK_FEAT.

    ``camera_num`` is the number of training cameras; the camera embedding is used when MODEL.SIE_CAMERA is on.
    MODEL.SHARED_BACKBONE builds one backbone for all spectra instead of one per spectrum.
    With MODEL.PRETRAIN_CHOICE 'imagenet' (and ``pretrained``) every backbone is initialised from
    MODEL.PRETRAIN_PATH_T; a model about to receive a checkpoint's weights passes ``pretrained=False``.
    """
    m = cfg.MODEL
    num_cameras = camera_num if m.SIE_CAMERA else 0

    def backbone():
        return build_backbone(m.TRANSFORMER_TYPE, tuple(cfg.INPUT.SIZE_TRAIN), tuple(m.STRIDE_SIZE),
                              num_cameras=num_cameras, sie_coe=m.SIE_COE, drop_path=m.DROP_PATH, drop_out=m.DROP_OUT,
                              attn_drop=m.ATT_DROP_RATE, grad_checkpoint=m.GRAD_CHECKPOINT)

    if m.SHARED_BACKBONE:  # one module for every spectrum: TOPReID stores it once and batches the spectra through it
        shared = backbone()
        backbones = {s: shared for s in m.SPECTRA}
    else:
        backbones = {s: backbone() for s in m.SPECTRA}
    if pretrained and m.PRETRAIN_CHOICE == "imagenet":
        load_imagenet_weights(backbones, m.PRETRAIN_PATH_T)
    model = TOPReID(backbones, num_classes, base=m.BASE, use_crm=m.RE, direct=m.DIRECT,
                    num_heads=m.TPM_HEADS or None, crm_depth=m.RE_LAYER, neck_feat=cfg.TEST.NECK_FEAT)
    logger.info("model: %s backbone%s for %s, %s, heads %s, %.1fM parameters", m.TRANSFORMER_TYPE,
                " (one, shared)" if model.backbones.is_shared else "s", "/".join(model.spectra),
                "baseline" if m.BASE else ("TPM + CRM" if m.RE else "TPM"),
                ", ".join(model.heads), sum(p.numel() for p in model.parameters()) / 1e6)
    return model
