"""Loading, merging and validating configurations.

`load_config(config_file, opts)` is the one way the entry points build a config: defaults, then the YAML file (after
the file it names as ``_BASE_``, recursively), then ``KEY VALUE`` pairs from the command line, then validation.
Spellings of the original code are accepted while merging: ``'yes'``/``'no'``/``'on'``/``'off'`` and 0/1 for booleans,
integers for floats.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from configs.compat import REMOVED_KEYS
from configs.defaults import LIST_STRINGS, RULES, get_cfg_defaults
from utils.errors import ConfigError
from utils.spectra import cross_refusal, existing_settings, parse_cross, setting_problem

logger = logging.getLogger("configs")

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


def _merge_tree(cfg: CN, node: dict, ignored: list[str], prefix: str = "") -> None:
    """Merge ``node`` into ``cfg``: unknown keys and type mismatches are errors naming the key; removed keys
    (:data:`configs.compat.REMOVED_KEYS`) are skipped and appended to ``ignored``.

    yacs' own merge re-parses every string with ``literal_eval``, which turns a string value such as ``'0'`` for a
    string key into an int; here strings stay strings where the default is a string.
    """
    for name, value in node.items():
        key = f"{prefix}{name}"
        if key in REMOVED_KEYS:
            ignored.append(key)
            continue
        if name not in cfg:
            raise ConfigError(f"unknown config key {key}")
        default = cfg[name]
        if isinstance(default, CN):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key} is a section; got {value!r}")
            _merge_tree(default, value, ignored, key + ".")
            continue
        if isinstance(value, str) and not isinstance(default, str):
            value = CN._decode_cfg_value(value)
        if key in LIST_STRINGS and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = ", ".join(value)
        value = _coerce(key, value, default)
        if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
            value = type(default)(value)
        elif isinstance(default, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. OUTPUT_DIR: 123 in a YAML file
        if type(value) is not type(default):
            raise ConfigError(f"config key {key} = {value!r} has type {_type_name(value)}, expected "
                              f"{_type_name(default)}")
        cfg[name] = value


def _merge(cfg: CN, tree: dict, source: str) -> list[str]:
    ignored: list[str] = []
    try:
        _merge_tree(cfg, tree, ignored)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return [f"{key} ({source}; {REMOVED_KEYS[key]})" for key in ignored]


BASE_KEY = "_BASE_"


def _read_yaml(config_file: str) -> dict:
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: {config_file}")
    with open(config_file) as f:
        try:
            tree = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{config_file}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{config_file}: expected a mapping of config sections")
    return tree


def merge_file(cfg: CN, config_file: str, _chain: tuple[str, ...] = ()) -> list[str]:
    """Merge a YAML file; a top-level ``_BASE_: path`` (relative to the file) is merged first, recursively.
    Returns the removed keys that were skipped, each with the file that set it."""
    tree = _read_yaml(config_file)
    base = tree.pop(BASE_KEY, None)
    ignored: list[str] = []
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{config_file}: {BASE_KEY} must be the path of a YAML file; got {base!r}")
        chain = (*_chain, os.path.realpath(config_file))
        base_file = os.path.normpath(os.path.join(os.path.dirname(config_file), base))
        if not os.path.isfile(base_file):
            raise ConfigError(f"{config_file}: {BASE_KEY} file not found: {base_file}")
        if os.path.realpath(base_file) in chain:
            raise ConfigError(f"{config_file}: {BASE_KEY} cycle: {base_file} is already being merged")
        ignored += merge_file(cfg, base_file, chain)
    return ignored + _merge(cfg, tree, config_file)


def merge_opts(cfg: CN, opts: Sequence[str]) -> list[str]:
    """Merge ``KEY VALUE`` pairs; returns the removed keys that were skipped."""
    if len(opts) % 2:
        raise ConfigError(f"command-line options must be KEY VALUE pairs; got an odd list: {list(opts)}")
    tree: dict = {}
    for key, value in zip(opts[0::2], opts[1::2]):
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return _merge(cfg, tree, "command line")


# ----------------------------------------------------------------------------------------------------------------------
# Validation: the rule of each key stands beside its default (configs/defaults.py); the checks that relate two keys
# are in validate(). Every error names the key.

_RULES = RULES  # the name tests/test_config.py imports
VALIDATED_KEYS: tuple[str, ...] = tuple(RULES)


def _get(cfg: CN, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate(cfg: CN) -> None:
    """Raise ConfigError naming the first invalid key."""
    for key, rule in RULES.items():
        value = _get(cfg, key)
        problem = rule(value)
        if problem:
            raise ConfigError(f"config key {key} = {value!r} {problem}")
    if cfg.DATALOADER.SAMPLER == "softmax_triplet" and cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE:
        raise ConfigError(f"config key SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} must be divisible by "
                          f"DATALOADER.NUM_INSTANCE = {cfg.DATALOADER.NUM_INSTANCE}")
    copies = _validate_spectra(cfg)
    _validate_cross(cfg, copies)
    if len(cfg.MODEL.SPECTRA) == 1 and not cfg.MODEL.BASE:
        raise ConfigError(f"config key MODEL.SPECTRA = {list(cfg.MODEL.SPECTRA)} holds one spectrum; TPM and CRM need "
                          "two or more, so set MODEL.BASE True for a single-spectrum baseline")


def _validate_spectra(cfg: CN) -> dict[str, str]:
    """MODEL.SPECTRA against the spectra the data set has (DATASETS.NAMES, DATASETS.NI_AS_TI), and a single TEST.MISS
    setting against both. Returns the data set's copied slots (slot -> source)."""
    from data.datasets import DatasetError, dataset_spectra

    name, ni_as_ti = cfg.DATASETS.NAMES, cfg.DATASETS.NI_AS_TI
    try:
        available, copies = dataset_spectra(name, ni_as_ti)
    except DatasetError as err:
        raise ConfigError(f"config key DATASETS.NI_AS_TI = {ni_as_ti} with DATASETS.NAMES = {name!r}: {err}") from None
    spectra = list(cfg.MODEL.SPECTRA)
    lacking = [s for s in spectra if s not in available]
    if lacking:
        hint = " (or DATASETS.NI_AS_TI True: the NI image in the TI slot, as EDITOR)" if "TI" in lacking and \
            "NI" in available and not ni_as_ti else ""
        raise ConfigError(f"config key MODEL.SPECTRA = {spectra} holds {', '.join(lacking)}, which data set {name} "
                          f"(DATASETS.NAMES) does not have: use spectra among {', '.join(available)}{hint}")
    if cfg.TEST.MISS != "all":
        problem = setting_problem(cfg.TEST.MISS, spectra, copies)
        if problem:
            raise ConfigError(f"config key TEST.MISS = {cfg.TEST.MISS!r} {problem} (MODEL.SPECTRA = {spectra}, "
                              f"DATASETS.NAMES = {name!r}); the settings that exist: "
                              f"{', '.join(existing_settings(spectra, copies))}, all")
    return copies


def _validate_cross(cfg: CN, copies: dict[str, str] | None = None) -> None:
    """`TEST.CROSS` against the model: its spectra among MODEL.SPECTRA (a copied slot on its source's side), and a
    model without CRM refused for a pair of disjoint sides (see :func:`utils.spectra.cross_refusal`)."""
    if not cfg.TEST.CROSS:
        return
    spectra = list(cfg.MODEL.SPECTRA)
    try:
        pairs = parse_cross(cfg.TEST.CROSS, spectra, copies)
    except ValueError as err:
        raise ConfigError(f"config key TEST.CROSS = {cfg.TEST.CROSS!r} with MODEL.SPECTRA = {spectra}: {err}") from None
    if not pairs:
        raise ConfigError(f"config key TEST.CROSS = {cfg.TEST.CROSS!r}: MODEL.SPECTRA = {spectra} has no two spectra "
                          "to pair")
    if cfg.MODEL.META_ARCHITECTURE != "TOPReID":
        return  # MODEL.RE / BASE are TOP-ReID's keys; other methods' models are checked when built (fills_missing)
    has_crm = cfg.MODEL.RE and not cfg.MODEL.BASE
    for pair in pairs:
        problem = cross_refusal(pair, has_crm)
        if problem:
            raise ConfigError(f"config key TEST.CROSS = {cfg.TEST.CROSS!r}: {problem} (MODEL.RE = {cfg.MODEL.RE}, "
                              f"MODEL.BASE = {cfg.MODEL.BASE})")


def load_config(config_file: str | None = None, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Defaults <- YAML file <- command-line pairs, validated."""
    cfg = get_cfg_defaults()
    ignored: list[str] = []
    if config_file:
        ignored += merge_file(cfg, config_file)
    if opts:
        ignored += merge_opts(cfg, opts)
    if ignored:
        logger.warning("ignored config keys that no longer exist, as nothing read them: %s", ", ".join(ignored))
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
