"""t-SNE map of the test features under one missing-spectrum setting: colour = identity, marker = camera.

    python tools/tsne.py --config_file configs/demo/TOP-ReID.yml TEST.WEIGHT logs/demo/best.pth \\
        [TEST.MISS r] [--max-ids 10] [--seed 0] [--perplexity 30] [--output tsne.png]

Every test sample is one point (RGBNT201's query and gallery are the same images, so each appears once). Features
are L2-normalised first when ``TEST.FEAT_NORM`` is on, as the evaluation compares them. ``--max-ids N`` keeps N
identities drawn with ``--seed``. The PNG (``OUTPUT_DIR/tsne_<setting>.png`` by default) is
``--size`` x ``--size`` pixels.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data.build import build_query_gallery  # noqa: E402
from data.datasets.base import unique_records  # noqa: E402
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

logger = logging.getLogger("tools.tsne")

MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p")
SETTING_LABELS = {"nothing": "all spectra", "r": "without RGB", "n": "without NI", "t": "without TI",
                  "rn": "without RGB and NI", "rt": "without RGB and TI", "nt": "without NI and TI"}
DPI = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("t-SNE of the test features, coloured by identity, marker by camera")
    parser.add_argument("--max-ids", type=int, default=0, help="plot at most this many identities (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the identity draw and of t-SNE")
    parser.add_argument("--perplexity", type=float, default=30.0,
                        help="t-SNE perplexity (lowered to (samples - 1) / 3 for small sets)")
    parser.add_argument("--size", type=int, default=800, help="width and height of the PNG in pixels")
    parser.add_argument("--output", default="", help="PNG to write (default OUTPUT_DIR/tsne_<setting>.png)")
    return parse_tool_args(parser, argv)


def choose_identities(pids: np.ndarray, max_ids: int, seed: int) -> np.ndarray:
    """Sorted identities to plot: all, or ``max_ids`` of them drawn with ``seed``."""
    unique = np.unique(pids)
    if max_ids < 0:
        raise ToolError(f"--max-ids {max_ids}: give a positive number, or 0 for all identities")
    if max_ids == 0 or max_ids >= len(unique):
        return unique
    return np.sort(np.random.default_rng(seed).choice(unique, size=max_ids, replace=False))


def embed(feats: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """2-D t-SNE coordinates of ``feats`` [N, F]."""
    from sklearn.manifold import TSNE

    n = len(feats)
    if n < 4:
        raise ToolError(f"t-SNE needs 4 or more samples, got {n} (raise --max-ids)")
    if perplexity <= 0:
        raise ToolError(f"--perplexity {perplexity}: must be positive")
    perplexity = min(perplexity, (n - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats)


def plot(points: np.ndarray, pids: np.ndarray, camids: np.ndarray, title: str, path: str, size: int) -> None:
    """Scatter plot: one colour per identity, one marker per camera; a ``size`` x ``size`` pixel PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    identities = np.unique(pids)
    cmap = plt.get_cmap("tab20" if len(identities) <= 20 else "turbo")
    colours = {p: cmap(i / max(len(identities) - 1, 1) if len(identities) > 20 else i)
               for i, p in enumerate(identities)}
    cameras = np.unique(camids)
    fig, ax = plt.subplots(figsize=(size / DPI, size / DPI), dpi=DPI)
    try:
        for k, cam in enumerate(cameras):
            at = camids == cam
            ax.scatter(points[at, 0], points[at, 1], c=[colours[p] for p in pids[at]], marker=MARKERS[k % len(MARKERS)],
                       s=36, edgecolors="black", linewidths=0.4)
        handles = [Line2D([], [], linestyle="", marker=MARKERS[k % len(MARKERS)], color="grey",
                          markeredgecolor="black", label=f"camera {cam + 1}") for k, cam in enumerate(cameras)]
        legend = ax.legend(handles=handles, loc="upper right", fontsize=8, title="marker", title_fontsize=8)
        if len(identities) <= 20:
            ax.add_artist(legend)
            id_handles = [Line2D([], [], linestyle="", marker="o", color=colours[p], label=f"id {p}")
                          for p in identities]
            ax.legend(handles=id_handles, loc="lower right", fontsize=7, ncols=2, title="colour", title_fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    logger.info("wrote %s", path)


def run(args: argparse.Namespace) -> str:
    cfg = tool_config(args)
    setting = single_setting(cfg)
    if args.size < 200:
        raise ToolError(f"--size {args.size}: 200 pixels or more")
    records = unique_records(build_query_gallery(cfg).records)
    keep = choose_identities(np.array([r.pid for r in records]), args.max_ids, args.seed)
    kept = set(keep.tolist())
    records = [r for r in records if r.pid in kept]
    predictor = Predictor.from_config(cfg)
    feats = normalize_if(predictor.record_features(records, [setting])[setting], cfg.TEST.FEAT_NORM).numpy()
    points = embed(feats, args.perplexity, args.seed)
    path = output_path(cfg, args.output, f"tsne_{setting}.png")
    title = (f"t-SNE of {len(records)} test samples of {len(keep)} identities, {SETTING_LABELS[setting]} "
             f"({cfg.DATASETS.NAMES})")
    plot(points, np.array([r.pid for r in records]), np.array([r.camid for r in records]), title, path, args.size)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
