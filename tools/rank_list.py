"""Rank lists: for chosen or random queries, the top-k gallery items, true matches framed green, false ones red.

    python tools/rank_list.py --config_file configs/demo/TOP-ReID.yml TEST.WEIGHT logs/demo/best.pth \\
        [--queries 0 12 40 | --num-queries 4 --seed 0] [--topk 8] [TEST.MISS r] [--tile-height 96] [--output x.png]

Features, distance and junk rule are the evaluation's: L2-normalised features (``TEST.FEAT_NORM``), squared
euclidean distance, gallery items with the query's identity and the same camera (or the same scene, by the data
set's ``junk_key``) left out, ties in gallery order. Each item shows all the model's spectra side by side; spectra
that ``TEST.MISS`` removes are shown grey. The query is framed blue.

Writes ``OUTPUT_DIR/rank_list_<setting>.png`` and, next to it, a ``.json`` listing per query its index, identity,
the ranked gallery indices (0-based within the gallery), their distances, whether each is a match, and the pixel box
``[x0, y0, x1, y1)`` of every frame in the picture.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from data.build import build_query_gallery  # noqa: E402
from data.datasets.base import Record  # noqa: E402
from evaluation.distance import squared_euclidean  # noqa: E402
from processor.predictor import Predictor  # noqa: E402
from tools.common import (  # noqa: E402
    ToolError,
    check_indices,
    dimmed,
    font,
    normalize_if,
    output_path,
    parse_tool_args,
    record_images,
    run_tool,
    save_png,
    single_setting,
    tile_size,
    tool_config,
    tool_parser,
)
from utils.io import write_json  # noqa: E402
from utils.spectra import missing_spectra  # noqa: E402

logger = logging.getLogger("tools.rank_list")

# Layout in pixels: frame width, caption height under each item, gaps, margins, header height.
FRAME, CAPTION, GAP, QUERY_GAP, MARGIN, HEADER, ROW_GAP = 4, 16, 6, 24, 8, 24, 6
COLOURS = {"query": (0, 90, 255), "match": (0, 170, 0), "false": (220, 0, 0)}
BACKGROUND = (255, 255, 255)
SETTING_LABELS = {"nothing": "all spectra", "r": "without RGB", "n": "without NI", "t": "without TI",
                  "rn": "without RGB, NI", "rt": "without RGB, TI", "nt": "without NI, TI"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("Top-k rank lists of test queries with true and false matches marked")
    parser.add_argument("--queries", type=int, nargs="+", default=None, help="query indices (within the query set)")
    parser.add_argument("--num-queries", type=int, default=4, help="random queries when --queries is not given")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random queries")
    parser.add_argument("--topk", type=int, default=8, help="gallery items shown per query")
    parser.add_argument("--tile-height", type=int, default=96, help="height of one image in the picture")
    parser.add_argument("--output", default="", help="PNG to write (default OUTPUT_DIR/rank_list_<setting>.png)")
    return parse_tool_args(parser, argv)


def choose_queries(given: Sequence[int] | None, num_query: int, how_many: int, seed: int) -> list[int]:
    if given is not None:
        check_indices(given, num_query, "query", "the query set")
        return list(given)
    if how_many < 1:
        raise ToolError(f"--num-queries {how_many}: must be 1 or more")
    drawn = np.random.default_rng(seed).choice(num_query, size=min(how_many, num_query), replace=False)
    return sorted(int(i) for i in drawn)


def rank_gallery(qf: torch.Tensor, gf: torch.Tensor, q_pid: int, q_group: int, g_pids: np.ndarray,
                 g_groups: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """(gallery indices, distances) of the ``topk`` nearest kept items of one query: ascending distance, ties in
    gallery order, junk (same pid and group) left out."""
    dist = squared_euclidean(qf[None], gf)[0].numpy()
    order = np.argsort(dist, kind="stable")
    junk = (g_pids[order] == q_pid) & (g_groups[order] == q_group)
    kept = order[~junk][:topk]
    return kept, dist[kept]


class Layout:
    """Where each item of each row goes: the query block, a gap, then the ranked gallery blocks."""

    def __init__(self, num_spectra: int, tile: tuple[int, int], topk: int, num_rows: int) -> None:
        self.tile = tile
        self.block = (num_spectra * tile[1] + 2 * FRAME, tile[0] + 2 * FRAME)  # (width, height) with the frame
        self.row_height = self.block[1] + CAPTION + ROW_GAP
        self.width = 2 * MARGIN + self.block[0] + QUERY_GAP + topk * (self.block[0] + GAP) - GAP
        self.height = HEADER + num_rows * self.row_height

    def box(self, row: int, column: int) -> list[int]:
        """Frame box [x0, y0, x1, y1) of an item; column 0 is the query, 1.. the ranked gallery items."""
        x = MARGIN if column == 0 else MARGIN + self.block[0] + QUERY_GAP + (column - 1) * (self.block[0] + GAP)
        y = HEADER + row * self.row_height
        return [x, y, x + self.block[0], y + self.block[1]]


def draw_item(picture: Image.Image, draw: ImageDraw.ImageDraw, box: Sequence[int], images: Sequence[np.ndarray],
              colour: tuple[int, int, int], caption: str) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    for k, image in enumerate(images):
        picture.paste(Image.fromarray(image), (x0 + FRAME + k * image.shape[1], y0 + FRAME))
    draw.text(((x0 + x1) / 2, y1 + CAPTION / 2 + 1), caption, fill=(0, 0, 0), font=font(10), anchor="mm")


def shown_images(record: Record, spectra: Sequence[str], missing: frozenset[str],
                 tile: tuple[int, int]) -> list[np.ndarray]:
    images = record_images(record, spectra, tile)
    return [dimmed(images[s]) if s in missing else images[s] for s in spectra]


def run(args: argparse.Namespace) -> str:
    cfg = tool_config(args)
    setting = single_setting(cfg)
    if args.topk < 1:
        raise ToolError(f"--topk {args.topk}: must be 1 or more")
    tile = tile_size(cfg, args.tile_height)
    split = build_query_gallery(cfg)
    records, num_query, junk_key = split.records, split.num_query, split.junk_key
    queries = choose_queries(args.queries, num_query, args.num_queries, args.seed)
    predictor = Predictor.from_config(cfg)
    feats = normalize_if(predictor.record_features(records, [setting])[setting], cfg.TEST.FEAT_NORM)
    qf, gf = feats[:num_query], feats[num_query:]
    gallery = records[num_query:]
    g_pids = np.array([r.pid for r in gallery])
    g_groups = np.array([getattr(r, junk_key) for r in gallery])

    spectra = list(predictor.spectra)
    missing = missing_spectra(setting) & set(spectra)
    layout = Layout(len(spectra), tile, args.topk, len(queries))
    picture = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    junk_rule = "same identity and camera" if junk_key == "camid" else "same identity and scene"
    draw.text((MARGIN, HEADER / 2), f"{cfg.DATASETS.NAMES}, {SETTING_LABELS[setting]}: query (blue), top-{args.topk} "
              f"gallery, green = same identity, red = other; junk ({junk_rule}) left out", fill=(0, 0, 0),
              font=font(11), anchor="lm")
    entries = []
    for row, qi in enumerate(queries):
        query = records[qi]
        ranked, dists = rank_gallery(qf[qi], gf, query.pid, getattr(query, junk_key), g_pids, g_groups, args.topk)
        match = g_pids[ranked] == query.pid
        query_box = layout.box(row, 0)
        draw_item(picture, draw, query_box, shown_images(query, spectra, missing, tile), COLOURS["query"],
                  f"query {qi}, id {query.pid}")
        boxes = []
        for rank, (gi, is_match) in enumerate(zip(ranked, match), start=1):
            box = layout.box(row, rank)
            boxes.append(box)
            draw_item(picture, draw, box, shown_images(gallery[gi], spectra, missing, tile),
                      COLOURS["match" if is_match else "false"], f"{rank}: id {gallery[gi].pid}")
        entries.append({"query": qi, "name": query.name, "pid": query.pid, "camid": query.camid,
                        "sceneid": query.sceneid, "query_box": query_box, "ranked": ranked.tolist(),
                        "ranked_names": [gallery[i].name for i in ranked], "pids": g_pids[ranked].tolist(),
                        "distances": [float(d) for d in dists], "match": match.tolist(), "boxes": boxes})
    path = output_path(cfg, args.output, f"rank_list_{setting}.png")
    save_png(picture, path)
    write_json(os.path.splitext(path)[0] + ".json", {
        "setting": setting, "checkpoint": cfg.TEST.WEIGHT, "dataset": cfg.DATASETS.NAMES, "topk": args.topk,
        "junk_key": junk_key, "spectra": spectra, "image": os.path.abspath(path),
        "colours": {k: list(v) for k, v in COLOURS.items()}, "queries": entries})
    logger.info("rank-1 correct for %d of %d queries", sum(bool(e["match"][:1] == [True]) for e in entries),
                len(entries))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
