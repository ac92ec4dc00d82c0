"""What the research tools share: the command line, the one-line error exit, the picture helpers and where a
method's backbone is. Models and features come from :class:`processor.predictor.Predictor` (the checkpoint in
``TEST.WEIGHT``, with the number of identities and cameras it records, so a tool that works on a folder of images
needs no data set on disk).

Command line: ``python tools/X.py --config_file CFG [--options] [KEY VALUE ...]``; the config's KEY VALUE pairs may
stand anywhere on the line. A failure the user can fix (checkpoint of another architecture, unknown sample index,
unreadable file) ends the tool with one ``error: ...`` line on stderr and exit code 1 (2 for an invalid config
value, as ``test_net.py``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from yacs.config import CfgNode

from configs import ConfigError, get_cfg_defaults, load_config
from data.datasets.base import DatasetError, Record
from utils.checkpoint import CheckpointError
from utils.spectra import MISS_SETTINGS

logger = logging.getLogger(__name__)


class ToolError(Exception):
    """A failure a tool reports as one ``error:`` line (bad option, unknown sample index, unreadable file)."""


# Failures reported as one line; anything else is a bug and keeps its traceback.
REPORTED_ERRORS = (ToolError, CheckpointError, DatasetError, ValueError, OSError)

# ----------------------------------------------------------------------------------------------------------------------
# Command line.

_TOP_LEVEL_KEYS = frozenset(k for k, v in get_cfg_defaults().items() if not isinstance(v, CfgNode))
_DOTTED_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def is_config_key(token: str) -> bool:
    """``TEST.WEIGHT``-like tokens (any dotted upper-case name, so that a mistyped key is reported by the config)
    and the top-level keys of the defaults (``OUTPUT_DIR``)."""
    return token in _TOP_LEVEL_KEYS or bool(_DOTTED_KEY.match(token))


def tool_parser(description: str, config: bool = True) -> argparse.ArgumentParser:
    """An argument parser with ``--config_file`` when the tool reads a config."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog="KEY VALUE pairs (TEST.WEIGHT path.pth, TEST.MISS r, OUTPUT_DIR dir, ...) override the config; they "
               "may stand anywhere on the line.")
    if config:
        parser.add_argument("--config_file", default="", help="YAML config of the model (as for test_net.py)")
    return parser


def parse_tool_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a tool's command line. The config's ``KEY VALUE`` pairs are taken out first (into ``args.opts``), so
    they may come before, between or after the tool's options, also right after a list such as ``--samples 0 5 7``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tool_args: list[str] = []
    opts: list[str] = []
    i = 0
    while i < len(argv):
        if is_config_key(argv[i]):
            opts.extend(argv[i:i + 2])  # a key without a value is reported by the config (odd list)
            i += 2
        else:
            tool_args.append(argv[i])
            i += 1
    args = parser.parse_args(tool_args)
    args.opts = opts
    return args


def tool_config(args: argparse.Namespace) -> CfgNode:
    """The config of ``--config_file`` and the KEY VALUE pairs, with ``MODEL.PRETRAIN_CHOICE none``."""
    return load_config(getattr(args, "config_file", "") or None, [*args.opts, "MODEL.PRETRAIN_CHOICE", "none"])


def run_tool(body: Callable[[], object]) -> int:
    """Run a tool's body and return its exit code: reported failures print one ``error:`` line on stderr (code 2
    for an invalid config, 1 otherwise) instead of a traceback."""
    from utils.logger import setup_logger

    setup_logger(None)  # console only: a tool writes nothing into OUTPUT_DIR but its outputs
    try:
        body()
    except ConfigError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    except REPORTED_ERRORS as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 1
    return 0


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def output_path(cfg: CfgNode, given: str, default_name: str) -> str:
    """``given``, or ``OUTPUT_DIR/default_name``; its folder is created."""
    path = given or os.path.join(cfg.OUTPUT_DIR, default_name)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


# ----------------------------------------------------------------------------------------------------------------------
# The setting.

def single_setting(cfg: CfgNode) -> str:
    """``TEST.MISS`` as one setting (the tools show one at a time; ``all`` is refused with the choices)."""
    setting = cfg.TEST.MISS
    if setting not in MISS_SETTINGS:
        raise ToolError(f"TEST.MISS {setting!r}: this tool works on one missing-spectrum setting; choose one of "
                        f"{', '.join(MISS_SETTINGS)}")
    return setting


# ----------------------------------------------------------------------------------------------------------------------
# The model's backbone.

@dataclass(frozen=True)
class Backbones:
    """Where a method's backbone is (the module under its declared ``backbone_prefix``): per spectrum, the module path
    (relative to the model) and the module that turns its images into tokens; ``shared`` when one module serves every
    spectrum (it then runs the spectra's images as one batch, in the model's spectrum order)."""

    root: str  # the path of the module under ``backbone_prefix``
    paths: dict[str, str]
    modules: dict[str, nn.Module]
    shared: bool


def model_backbones(model: nn.Module) -> Backbones:
    """The backbone of ``model``: the module at its ``backbone_prefix``, split per spectrum when it holds a module
    named after each spectrum, one shared module otherwise."""
    path = getattr(model, "backbone_prefix", "backbones.").rstrip(".")
    try:
        root = model.get_submodule(path)
    except AttributeError:
        raise ToolError(f"the model declares backbone_prefix {path + '.'!r} but has no module {path!r}") from None
    children = dict(root.named_children())
    if all(s in children for s in model.spectra):
        return Backbones(path, {s: f"{path}.{s}" for s in model.spectra}, {s: children[s] for s in model.spectra},
                         False)
    return Backbones(path, {s: path for s in model.spectra}, {s: root for s in model.spectra}, len(model.spectra) > 1)


# ----------------------------------------------------------------------------------------------------------------------
# Features and indices.

def normalize_if(feats: torch.Tensor, enabled: bool) -> torch.Tensor:
    """L2-normalised rows when ``enabled`` (TEST.FEAT_NORM), as the evaluation compares features."""
    return torch.nn.functional.normalize(feats, dim=1) if enabled else feats


def check_indices(indices: Sequence[int], size: int, what: str, where: str) -> None:
    """Every index in 0..size-1, else one error naming the first bad one (``what`` index, ``where`` it points)."""
    for index in indices:
        if not 0 <= index < size:
            raise ToolError(f"{what} index {index} is out of range: {where} has {size} entries (0..{size - 1})")


# ----------------------------------------------------------------------------------------------------------------------
# Pictures.

def tile_size(cfg: CfgNode, height: int) -> tuple[int, int]:
    """(height, width) of one image tile: ``height`` rows, the width from the aspect ratio of INPUT.SIZE_TEST."""
    if height < 8:
        raise ToolError(f"tile height {height} is too small (8 pixels or more)")
    test_h, test_w = cfg.INPUT.SIZE_TEST
    return height, max(1, round(height * test_w / test_h))


def record_images(record: Record, spectra: Sequence[str], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The images of ``spectra`` of a record as uint8 [H, W, 3] arrays resized to ``size`` (height, width)."""
    from data.loader import decode_record
    from data.transforms import resize

    return {s: resize(img, size, Image.BILINEAR) for s, img in decode_record(record, spectra).items()}


def dimmed(image: np.ndarray) -> np.ndarray:
    """A grey, darkened copy: a spectrum that the setting leaves out."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True) * 0.35 + 20
    return np.repeat(grey, 3, axis=2).astype(np.uint8)


def font(size: int = 12):
    """PIL's built-in font at ``size`` pixels."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def save_png(image: np.ndarray | Image.Image, path: str) -> str:
    """Write an RGB picture as an optimised PNG and return the path."""
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    picture.save(path, optimize=True)
    logger.info("wrote %s (%dx%d)", path, picture.width, picture.height)
    return path
