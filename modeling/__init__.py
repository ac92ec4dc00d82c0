"""The models: the method registry (``MODEL.META_ARCHITECTURE``, :mod:`modeling.methods`), backbones, TOP-ReID's TPM
and CRM; ``build_model(cfg, num_classes, camera_num)`` builds the configured method."""

from __future__ import annotations

from modeling.meta_arch import TOPReID
from modeling.methods import build_model, get_method, method_names, register_method

__all__ = ["TOPReID", "build_model", "get_method", "method_names", "register_method"]
