"""Keys that old configs and command lines may still set (the idea of detectron2's ``config/compat.py``).

A removed key is one that nothing in the code read; setting it changed nothing, so while merging it is skipped and
:func:`configs.config.load_config` logs one warning naming every such key it met. Any other unknown key stays an error.
"""

# key -> why nothing needs it
REMOVED_KEYS: dict[str, str] = {
    "MODEL.DEVICE_ID": "MODEL.DEVICE picks the device, CUDA_VISIBLE_DEVICES the GPUs",
    "MODEL.NAME": "there is one model",
    "MODEL.SIE_VIEW": "these data sets have no view labels",
    "MODEL.NECK": "the head is always a BNNeck",
    "MODEL.ID_LOSS_TYPE": "the ID loss is always cross-entropy",
    "MODEL.METRIC_LOSS_TYPE": "the metric loss is always the triplet loss",
    "MODEL.DIST_TRAIN": "distributed training follows the torchrun environment",
    "SOLVER.WARMUP_METHOD": "the warm-up is always linear",
}
