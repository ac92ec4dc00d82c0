"""Test features of a data set split, or of a folder of tri-spectral images, written for search and analysis.

    python tools/extract_features.py --config_file configs/demo/TOP-ReID.yml TEST.WEIGHT logs/demo/best.pth \\
        (--split query|gallery|train | --folder DIR) [--output feats.npz | feats.npy] [--dtype float16] [TEST.MISS r]

``--folder DIR`` holds one sub-folder per spectrum of the model (``RGB/``, ``NI/``, ``TI/``) with the same
``.jpg`` names in each, as an RGBNT201 split. Identity and camera are parsed from RGBNT201-style names
(``000028_cam3_0_02.jpg``: pid 28, camid 2) and are -1 where a name does not parse; the model's camera embedding
then uses camera 0 (logged). ``--split train`` gives the training labels (pids relabelled to 0..N-1).

The features are the test features of ``TEST.MISS`` (one setting), L2-normalised when ``TEST.FEAT_NORM`` is on, as
the evaluation compares them. Output ``.npz`` (default ``OUTPUT_DIR/features_<split|folder>_<setting>.npz``):
``features`` [N, F], ``names``, ``pids``, ``camids``, ``setting``, ``normalized``. Output ``.npy``: the features
alone, written batch by batch into a memory-mapped file (nothing of size N x F is held in memory), and the labels
in ``<name>.labels.npz`` beside it; ``tools/search.py`` memory-maps such a gallery.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from yacs.config import CfgNode  # noqa: E402

from data.datasets.base import Record  # noqa: E402
from data.datasets.folder import folder_records  # noqa: E402
from processor.predictor import Predictor  # noqa: E402
from tools.common import (  # noqa: E402
    ToolError,
    normalize_if,
    output_path,
    parse_tool_args,
    run_tool,
    single_setting,
    tool_config,
    tool_parser,
)
from utils.io import write_npz  # noqa: E402

logger = logging.getLogger("tools.extract_features")

SPLITS = ("query", "gallery", "train")
DTYPES = {"float32": np.float32, "float16": np.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("Test features of a data set split or of a folder of RGB/NI/TI images")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--split", choices=SPLITS, default=None, help="a split of the configured data set")
    source.add_argument("--folder", default="", help="folder with one sub-folder per spectrum (RGB, NI, TI)")
    parser.add_argument("--output", default="", help=".npz, or .npy for a memory-mapped feature file "
                        "(default OUTPUT_DIR/features_<split|folder>_<setting>.npz)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="stored precision (float16 halves the file; ranking changes only among near ties)")
    return parse_tool_args(parser, argv)


@dataclass
class Samples:
    """Records to run and the labels to store (camids as parsed: -1 where unknown)."""

    records: list[Record]
    pids: np.ndarray
    camids: np.ndarray
    source: str


def split_samples(cfg: CfgNode, split: str) -> Samples:
    from data.build import read_dataset

    dataset = read_dataset(cfg)
    records = getattr(dataset, split)
    return Samples(records, np.array([r.pid for r in records]), np.array([r.camid for r in records]),
                   f"{cfg.DATASETS.NAMES}/{split}")


def folder_samples(folder: str, spectra: Sequence[str], num_cameras: int) -> Samples:
    """Records of a folder laid out like an RGBNT201 split (``<folder>/<spectrum>/<name>.jpg``)."""
    records, pids, camids = folder_records(folder, spectra, num_cameras)
    return Samples(records, pids, camids, os.path.abspath(folder))


def samples_of(args: argparse.Namespace, cfg: CfgNode, predictor: Predictor) -> Samples:
    if args.folder:
        return folder_samples(args.folder, predictor.spectra, predictor.num_cameras)
    return split_samples(cfg, args.split)


def features_in_memory(predictor: Predictor, records: Sequence[Record], setting: str,
                       dtype: type = np.float32) -> np.ndarray:
    """[N, F] features (normalised when TEST.FEAT_NORM) as a numpy array of ``dtype``."""
    parts = [normalize_if(f[setting], predictor.cfg.TEST.FEAT_NORM).numpy().astype(dtype) for f in
             predictor.feature_batches(records, [setting])]
    return np.concatenate(parts)


def write_npy_streaming(path: str, predictor: Predictor, records: Sequence[Record], setting: str,
                        dtype: type) -> tuple[int, int]:
    """Features batch by batch into a memory-mapped ``.npy`` (written to a temporary name, then renamed)."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp{os.getpid()}.npy")
    out = None
    try:
        start = 0
        for batch in predictor.feature_batches(records, [setting]):
            feats = normalize_if(batch[setting], predictor.cfg.TEST.FEAT_NORM).numpy()
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(records), feats.shape[1]))
            out[start:start + len(feats)] = feats
            start += len(feats)
        if out is None:
            raise ToolError("no samples to extract")
        shape = out.shape
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return shape


def labels_path(npy_path: str) -> str:
    """The labels file written beside a ``.npy`` feature file."""
    return os.path.splitext(npy_path)[0] + ".labels.npz"


def run(args: argparse.Namespace) -> str:
    cfg = tool_config(args)
    setting = single_setting(cfg)
    if not args.split and not args.folder:
        raise ToolError("give --split query|gallery|train or --folder DIR")
    predictor = Predictor.from_config(cfg)
    samples = samples_of(args, cfg, predictor)
    tag = args.split or os.path.basename(os.path.normpath(args.folder))
    path = output_path(cfg, args.output, f"features_{tag}_{setting}.npz")
    if not path.endswith((".npz", ".npy")):
        raise ToolError(f"--output {path}: give a .npz or .npy file name")
    dtype = DTYPES[args.dtype]
    names = np.array([r.name for r in samples.records])
    meta = {"names": names, "pids": samples.pids, "camids": samples.camids, "setting": np.array(setting),
            "normalized": np.array(bool(cfg.TEST.FEAT_NORM)), "source": np.array(samples.source),
            "checkpoint": np.array(predictor.checkpoint)}
    if path.endswith(".npy"):
        shape = write_npy_streaming(path, predictor, samples.records, setting, dtype)
        write_npz(labels_path(path), **meta)
    else:
        features = features_in_memory(predictor, samples.records, setting, dtype)
        shape = features.shape
        write_npz(path, features=features, **meta)
    logger.info("wrote %s: %d x %d %s features of %s (setting %s)", path, shape[0], shape[1], args.dtype,
                samples.source, setting)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
