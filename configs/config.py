"""Loading, merging and validating configurations.

`load_config(config_file, opts)` is the one way the entry points build a config: defaults, then the YAML file, then
``KEY VALUE`` pairs from the command line, then validation. Spellings of the original code are accepted while
merging: ``'yes'``/``'no'``/``'on'``/``'off'`` and 0/1 for booleans, integers for floats.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from configs.defaults import get_cfg_defaults
from utils.errors import ConfigError
from utils.spectra import MISS_SETTINGS, SPECTRA

_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0"}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Bring an old-style value to the type of its default (bool from 'yes'/0/1, float from int)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"config key {key} = {value!r} is not a boolean (use True/False, yes/no, 1/0)")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, list) and isinstance(value, list) and default and isinstance(default[0], float):
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


def _type_name(v: Any) -> str:
    return type(v).__name__


def _merge_tree(cfg: CN, node: dict, prefix: str = "") -> None:
    """Merge ``node`` into ``cfg``: unknown keys and type mismatches are errors naming the key.

    yacs' own merge re-parses every string with ``literal_eval``, which turns a string value such as ``'0'`` for a
    string key into an int; here strings stay strings where the default is a string.
    """
    for name, value in node.items():
        key = f"{prefix}{name}"
        if name not in cfg:
            raise ConfigError(f"unknown config key {key}")
        default = cfg[name]
        if isinstance(default, CN):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key} is a section; got {value!r}")
            _merge_tree(default, value, key + ".")
            continue
        if isinstance(value, str) and not isinstance(default, str):
            value = CN._decode_cfg_value(value)
        value = _coerce(key, value, default)
        if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
            value = type(default)(value)
        elif isinstance(default, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. MODEL.DEVICE_ID 0
        if type(value) is not type(default):
            raise ConfigError(f"config key {key} = {value!r} has type {_type_name(value)}, expected "
                              f"{_type_name(default)}")
        cfg[name] = value


def _merge(cfg: CN, tree: dict, source: str) -> None:
    try:
        _merge_tree(cfg, tree)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def merge_file(cfg: CN, config_file: str) -> None:
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: {config_file}")
    with open(config_file) as f:
        try:
            tree = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{config_file}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{config_file}: expected a mapping of config sections")
    _merge(cfg, tree, config_file)


def merge_opts(cfg: CN, opts: Sequence[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(f"command-line options must be KEY VALUE pairs; got an odd list: {list(opts)}")
    tree: dict = {}
    for key, value in zip(opts[0::2], opts[1::2]):
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    _merge(cfg, tree, "command line")


# ----------------------------------------------------------------------------------------------------------------------
# Validation: every enumerated value and numeric range, each error naming the key.

def _one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in allowed else f"is not one of: {', '.join(allowed)}"

    check.allowed = allowed  # type: ignore[attr-defined]
    return check


def _number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
            integer: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            return f"must be {'an integer' if integer else 'a number'}"
        if v != v:  # NaN
            return "must not be NaN"
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return f"must be {'<' if hi_open else '<='} {hi}"
        return None

    check.bounds = (lo, hi, lo_open, hi_open, integer)  # type: ignore[attr-defined]
    return check


def _pair(lo: int, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                        for x in v)):
            return "must be a list of two integers"
        if any(x < lo or (hi is not None and x > hi) for x in v):
            return f"values must be in [{lo}, {hi if hi is not None else 'inf'}]"
        return None

    return check


def _triple_positive(v: Any) -> str | None:
    if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
        return "must be a list of three numbers"
    return None


def _spectra(v: Any) -> str | None:
    if not isinstance(v, (list, tuple)) or not v:
        return f"must be a non-empty list of spectra from: {', '.join(SPECTRA)}"
    bad = [s for s in v if s not in SPECTRA]
    if bad:
        return f"has unknown spectra {bad}; allowed: {', '.join(SPECTRA)}"
    if len(set(v)) != len(v):
        return "lists a spectrum twice"
    return None


def _device(v: Any) -> str | None:
    return None if isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else \
        "is not one of: auto, cpu, cuda, cuda:N"


def _backbone(v: Any) -> str | None:
    from modeling.backbones import backbone_names_hint, is_known_backbone

    return None if is_known_backbone(v) else f"is not a known backbone ({backbone_names_hint()})"


def _dataset(v: Any) -> str | None:
    from data.datasets import dataset_names

    return None if v in dataset_names() else f"is not one of: {', '.join(dataset_names())}"


_RULES: dict[str, Callable[[Any], str | None]] = {
    "MODEL.DEVICE": _device,
    "MODEL.TRANSFORMER_TYPE": _backbone,
    "MODEL.PRETRAIN_CHOICE": _one_of("imagenet", "none"),
    "MODEL.STRIDE_SIZE": _pair(1, 16),
    "MODEL.SIE_COE": _number(0.0),
    "MODEL.DROP_PATH": _number(0.0, 1.0, hi_open=True),
    "MODEL.DROP_OUT": _number(0.0, 1.0, hi_open=True),
    "MODEL.ATT_DROP_RATE": _number(0.0, 1.0, hi_open=True),
    "MODEL.SPECTRA": _spectra,
    "MODEL.RE_LAYER": _number(1, integer=True),
    "MODEL.TPM_HEADS": _number(0, integer=True),
    "MODEL.NECK": _one_of("bnneck"),
    "MODEL.ID_LOSS_TYPE": _one_of("softmax"),
    "MODEL.METRIC_LOSS_TYPE": _one_of("triplet"),
    "MODEL.ID_LOSS_WEIGHT": _number(0.0),
    "MODEL.TRIPLET_LOSS_WEIGHT": _number(0.0),
    "MODEL.CRM_LOSS_WEIGHT": _number(0.0),
    "MODEL.LABEL_SMOOTH": _number(0.0, 1.0, hi_open=True),
    "INPUT.SIZE_TRAIN": _pair(16),
    "INPUT.SIZE_TEST": _pair(16),
    "INPUT.PROB": _number(0.0, 1.0),
    "INPUT.RE_PROB": _number(0.0, 1.0),
    "INPUT.PIXEL_MEAN": _triple_positive,
    "INPUT.PIXEL_STD": _triple_positive,
    "INPUT.PADDING": _number(0, integer=True),
    "DATASETS.NAMES": _dataset,
    "DATALOADER.SAMPLER": _one_of("softmax_triplet", "softmax"),
    "DATALOADER.NUM_INSTANCE": _number(1, integer=True),
    "DATALOADER.NUM_WORKERS": _number(0, integer=True),
    "SOLVER.OPTIMIZER_NAME": _one_of("SGD", "AdamW"),
    "SOLVER.MAX_EPOCHS": _number(1, integer=True),
    "SOLVER.BASE_LR": _number(0.0, lo_open=True),
    "SOLVER.BIAS_LR_FACTOR": _number(0.0, lo_open=True),
    "SOLVER.MOMENTUM": _number(0.0, 1.0, hi_open=True),
    "SOLVER.MARGIN": _number(0.0),
    "SOLVER.WEIGHT_DECAY": _number(0.0),
    "SOLVER.WEIGHT_DECAY_BIAS": _number(0.0),
    "SOLVER.SCHEDULER": _one_of("cosine"),
    "SOLVER.WARMUP_ITERS": _number(0, integer=True),
    "SOLVER.WARMUP_FACTOR": _number(0.0, 1.0, lo_open=True),
    "SOLVER.WARMUP_METHOD": _one_of("linear"),
    "SOLVER.MIN_LR_FACTOR": _number(0.0, 1.0),
    "SOLVER.SEED": _number(0, integer=True),
    "SOLVER.IMS_PER_BATCH": _number(1, integer=True),
    "SOLVER.CHECKPOINT_PERIOD": _number(0, integer=True),
    "SOLVER.LOG_PERIOD": _number(1, integer=True),
    "SOLVER.EVAL_PERIOD": _number(0, integer=True),
    "SOLVER.AMP_DTYPE": _one_of("fp16", "bf16"),
    "SOLVER.GRAD_CLIP": _number(0.0),
    "TEST.IMS_PER_BATCH": _number(1, integer=True),
    "TEST.NECK_FEAT": _one_of("before", "after"),
    "TEST.MISS": _one_of(*MISS_SETTINGS, "all"),
}

VALIDATED_KEYS: tuple[str, ...] = tuple(_RULES)


def _get(cfg: CN, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate(cfg: CN) -> None:
    """Raise ConfigError naming the first invalid key."""
    for key, rule in _RULES.items():
        value = _get(cfg, key)
        problem = rule(value)
        if problem:
            raise ConfigError(f"config key {key} = {value!r} {problem}")
    for key in ("INPUT.PIXEL_STD",):
        if any(x <= 0 for x in _get(cfg, key)):
            raise ConfigError(f"config key {key} = {_get(cfg, key)!r} must be positive")
    if cfg.DATALOADER.SAMPLER == "softmax_triplet" and cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE:
        raise ConfigError(f"config key SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} must be divisible by "
                          f"DATALOADER.NUM_INSTANCE = {cfg.DATALOADER.NUM_INSTANCE}")
    if len(cfg.MODEL.SPECTRA) == 1 and not cfg.MODEL.BASE:
        raise ConfigError(f"config key MODEL.SPECTRA = {list(cfg.MODEL.SPECTRA)} holds one spectrum; TPM and CRM need "
                          "two or more, so set MODEL.BASE True for a single-spectrum baseline")


def load_config(config_file: str | None = None, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Defaults <- YAML file <- command-line pairs, validated."""
    cfg = get_cfg_defaults()
    if config_file:
        merge_file(cfg, config_file)
    if opts:
        merge_opts(cfg, opts)
    validate(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def save_config(cfg: CN, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(cfg.dump())
    os.replace(tmp, path)
