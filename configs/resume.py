"""Which settings a resumed run may change, and what a change means.

A run is resumed (``train_net.py --resume``) with the config given on the command line, compared key by key with the
config stored in ``last.pth``. Three kinds of keys:

- :data:`RESUME_FREE`: where things are and how fast they go (paths, devices, workers, compilation, log and
  checkpoint periods, evaluation settings). They change nothing the run trains; a change is logged.
- :data:`RESUME_HONOURED`: the length of the run, the learning rates and the optimiser's hyperparameters. The new
  value holds from the resumed epoch on, exactly as if the run had been started with it: the schedule is a function
  of the epoch and the config, so after extending ``SOLVER.MAX_EPOCHS`` from 10 to 20 epoch 11 runs at the lr that a
  20-epoch run has at epoch 11 (the cosine is the 20-epoch one, not the old one stretched from its floor); a new
  ``BASE_LR`` or ``BACKBONE_LR_FACTOR`` scales every later epoch; a new weight decay or momentum applies from the
  next step. The optimiser's per-parameter state (momentum buffers) is kept. A change is logged as a warning.
- every other key (architecture, data, sampler, augmentation, losses, seed, optimiser type): a change would make the
  result a different run that is neither the old one nor the new one, so resuming is refused with an error naming
  each changed key and its two values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from yacs.config import CfgNode

from utils.errors import ConfigError

RESUME_FREE = frozenset({
    "OUTPUT_DIR", "OVERWRITE", "SOLVER.RESUME", "MODEL.DEVICE", "MODEL.DEVICE_ID", "MODEL.DIST_TRAIN",
    "DATASETS.ROOT_DIR", "MODEL.PRETRAIN_PATH_T", "MODEL.PRETRAIN_CHOICE", "DATALOADER.NUM_WORKERS",
    "DATALOADER.CACHE_IMAGES", "MODEL.COMPILE", "MODEL.GRAD_CHECKPOINT", "SOLVER.LOG_PERIOD",
    "SOLVER.CHECKPOINT_PERIOD", "SOLVER.EVAL_PERIOD", "SOLVER.AMP", "SOLVER.AMP_DTYPE", "SOLVER.AMP_CPU",
    "SOLVER.DETERMINISTIC", "TEST.IMS_PER_BATCH", "TEST.RE_RANKING", "TEST.WEIGHT", "TEST.FEAT_NORM", "TEST.MISS",
    "TEST.CROSS", "TEST.SAVE_FEATURES", "TEST.AMP",
})
RESUME_HONOURED = frozenset({
    "SOLVER.MAX_EPOCHS", "SOLVER.BASE_LR", "SOLVER.BACKBONE_LR_FACTOR", "SOLVER.BACKBONE_LR", "SOLVER.BIAS_LR_FACTOR",
    "SOLVER.BIAS_LR_FACTOR_IN_BACKBONE", "SOLVER.LARGE_FC_LR",
    "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_BIAS", "SOLVER.MOMENTUM", "SOLVER.WARMUP_ITERS",
    "SOLVER.WARMUP_FACTOR", "SOLVER.MIN_LR_FACTOR", "SOLVER.GRAD_CLIP",
})


def flatten_config(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"MODEL": {"DIRECT": True}}`` -> ``{"MODEL.DIRECT": True}`` (tuples as lists, so YAML and yacs agree)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def flat(cfg: CfgNode | str) -> dict[str, Any]:
    """A config (or its YAML dump) as ``KEY: value`` pairs."""
    tree = yaml.safe_load(cfg if isinstance(cfg, str) else cfg.dump())
    return flatten_config(tree) if isinstance(tree, dict) else {}


def resume_changes(saved: CfgNode | str, cfg: CfgNode, path: str) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) of every key that differs, free keys included. Raises :class:`ConfigError`
    naming every changed key that a resume cannot honour, with both values."""
    before, now = flat(saved), flat(cfg)
    changes = [(k, before.get(k, "<absent>"), now.get(k, "<absent>")) for k in sorted(set(before) | set(now))
               if before.get(k, "<absent>") != now.get(k, "<absent>")]
    refused = [c for c in changes if c[0] not in RESUME_FREE | RESUME_HONOURED]
    if refused:
        listing = "; ".join(f"{k}: {old!r} in the run, {new!r} now" for k, old, new in refused)
        raise ConfigError(
            f"cannot resume {path} with changed settings ({listing}): they change what the run computes. Resume "
            f"with the values it was started with, or start a new run in another OUTPUT_DIR. A resume may change "
            f"the schedule and optimiser keys ({', '.join(sorted(RESUME_HONOURED))}) and where/how fast it runs.")
    return changes
