"""The method registry: ``MODEL.META_ARCHITECTURE`` names a method, and a method is one file that registers itself.

A method declares what the engine needs from it, and nothing in the trainer, hooks, predictor, evaluation, sweeps or
tools names a method:

- ``build(cfg, num_classes, num_cameras, pretrained)`` -> the model (an ``nn.Module``) with
  ``spectra`` (the spectra it reads, in order), ``feat_dim`` (width of its test feature) and
  * in train mode ``forward(images, cam_label)`` -> ``{"heads": {name: (logits, feature before the BNNeck)},
    "losses": {name: scalar}}``: its named training heads (an ID and a triplet loss each) and auxiliary losses;
  * in eval mode ``backbone_tokens(images, cam_label)`` and ``features_from_tokens(tokens, missing, cache,
    cams=...)``: the test feature, one backbone pass serving every missing-spectrum setting of a batch, each method
    handling a missing spectrum its own way (TOP-ReID reconstructs it with CRM; DeMo zero-fills its image);
  * ``takes_labels`` (optional, default False): the training forward is called as ``forward(images, cam_label,
    labels=pids)``, for a method whose training forward uses the identities of the batch;
  * ``as_exported()`` (optional): a context in which the model computes what its ONNX export computes, where the
    two can differ (EDITOR: ties of its top-k selections); ``tools/export_onnx.py`` checks the graph within it;
  * ``backbone_prefix``: the parameter-name prefix of its backbone, for the backbone's learning rate;
  * ``fills_missing``: whether a missing spectrum's part of the feature is filled (reconstructed, or computed from a
    zero image) rather than zero, which cross-spectral pairs without a common spectrum need;
- ``aux_losses(cfg)`` -> the weight of each auxiliary loss the model returns;
- ``original``: the checkpoint layout of its original code and the key map from it (:class:`OriginalLayout`), so
  that ``TEST.WEIGHT``, the tools and ``tools/convert_checkpoint.py`` take the original's checkpoints.

Register one with::

    @register_method("MyMethod", aux_losses=lambda cfg: {"align": cfg.MODEL.ALIGN_WEIGHT})
    def build_my_method(cfg, num_classes, num_cameras, pretrained=True):
        return MyMethod(...)

after which ``MODEL.META_ARCHITECTURE MyMethod`` validates, trains, evaluates and sweeps.
"""

from modeling.methods import demo, editor, topreid  # noqa: F401  (each registers itself)
from modeling.methods.registry import (
    Method,
    OriginalLayout,
    build_model,
    get_method,
    method_names,
    method_of,
    original_layouts,
    register_method,
    unregister_method,
)

__all__ = ["Method", "OriginalLayout", "build_model", "get_method", "method_names", "method_of", "original_layouts",
           "register_method", "unregister_method"]
