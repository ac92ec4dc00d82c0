"""Top-k search of query features in a gallery of features, in bounded memory.

    python tools/search.py --gallery G.npz | G.npy [--gallery-labels G.labels.npz] \\
        (--query-npz Q.npz | --folder DIR --config_file CFG TEST.WEIGHT w.pth [TEST.MISS r]) --topk 10 \\
        [--output matches.json | matches.csv] [--query-chunk 1024] [--gallery-chunk 65536] [--no-normalize]

Feature files come from ``tools/extract_features.py``. With ``--folder`` the query features are computed here with
the model of the config (``TEST.WEIGHT``). Distances are squared euclidean on L2-normalised features (as the
evaluation; ``--no-normalize`` keeps the stored features as they are); smaller is closer. Output (default
``OUTPUT_DIR/search_top<k>.json``): per query its name and the k nearest gallery items (rank, gallery index, name,
distance); a ``.csv`` output has one row per (query, rank).

Memory: the gallery is read ``--gallery-chunk`` rows at a time (G_c) and every chunk is compared with the queries
``--query-chunk`` rows at a time (Q_c); a running top-k per query is merged with each chunk's ``torch.topk``. The
peak is about ``4 F G_c`` (a gallery chunk as float32) + ``8 Q_c G_c`` (a distance block and its addend) +
``4 F Q`` (all query features) bytes, plus the gallery itself when it is not memory-mapped: for F = 1536,
G_c = 65536, Q_c = 1024 that is 0.4 + 0.5 GB + 6 MB per 1000 queries. A ``.npy`` gallery is memory-mapped, so a
gallery of a million 1536-d float32 features (6.1 GB on disk) is searched in about 1 GB. An ``.npz`` gallery is
loaded whole (numpy cannot memory-map inside a zip): a million float16 features take 3.1 GB there, float32 6.1 GB.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data.datasets.folder import folder_records  # noqa: E402
from evaluation.distance import squared_euclidean, squared_norms  # noqa: E402
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
from utils.io import write_json  # noqa: E402

logger = logging.getLogger("tools.search")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("Top-k gallery matches of query features (chunked, memory-mapped gallery)")
    parser.add_argument("--gallery", default="", help="gallery features: .npz (features, names) or .npy")
    parser.add_argument("--gallery-labels", default="", help="names of a .npy gallery: .labels.npz or a text file "
                        "with one name per line (default <gallery>.labels.npz when it exists)")
    query = parser.add_mutually_exclusive_group()
    query.add_argument("--query-npz", default="", help="query features (.npz of tools/extract_features.py)")
    query.add_argument("--folder", default="", help="folder of query images (RGB/NI/TI sub-folders); needs the "
                       "config and TEST.WEIGHT")
    parser.add_argument("--topk", type=int, default=10, help="matches per query")
    parser.add_argument("--query-chunk", type=int, default=1024, help="queries compared at once")
    parser.add_argument("--gallery-chunk", type=int, default=65536, help="gallery rows read at once")
    parser.add_argument("--no-normalize", action="store_true", help="compare the features as stored")
    parser.add_argument("--output", default="", help=".json or .csv (default OUTPUT_DIR/search_top<k>.json)")
    return parse_tool_args(parser, argv)


@dataclass
class FeatureSet:
    features: np.ndarray  # [N, F]; a read-only memory map for .npy files
    names: list[str]


def _names(z: np.lib.npyio.NpzFile, count: int, path: str) -> list[str]:
    if "names" not in z.files:
        return [str(i) for i in range(count)]
    names = [str(n) for n in z["names"]]
    if len(names) != count:
        raise ToolError(f"{path}: {len(names)} names for {count} features")
    return names


def load_npz(path: str) -> FeatureSet:
    """Features and names of an ``.npz`` of extract_features.py (loaded into memory)."""
    if not os.path.isfile(path):
        raise ToolError(f"feature file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "features" not in z.files:
                raise ToolError(f"{path}: no \"features\" array (found {', '.join(z.files) or 'nothing'})")
            features = z["features"]
            return FeatureSet(check_matrix(features, path), _names(z, len(features), path))
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ToolError(f"{path}: not a readable .npz file ({err})") from None


def load_npy(path: str, labels: str) -> FeatureSet:
    """A memory-mapped ``.npy`` feature matrix and its names (labels file, text file, or row numbers)."""
    if not os.path.isfile(path):
        raise ToolError(f"feature file not found: {path}")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ToolError(f"{path}: not a readable .npy file ({err})") from None
    check_matrix(features, path)
    default = os.path.splitext(path)[0] + ".labels.npz"
    labels = labels or (default if os.path.isfile(default) else "")
    if not labels:
        names = [str(i) for i in range(len(features))]
    elif labels.endswith(".npz"):
        with np.load(labels, allow_pickle=False) as z:
            names = _names(z, len(features), labels)
    else:
        with open(labels) as f:
            names = [line.rstrip("\n") for line in f]
        if len(names) != len(features):
            raise ToolError(f"{labels}: {len(names)} names for {len(features)} features in {path}")
    return FeatureSet(features, names)


def check_matrix(features: np.ndarray, path: str) -> np.ndarray:
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating) or len(features) == 0:
        raise ToolError(f"{path}: features must be a non-empty [N, F] float array, got {features.dtype} "
                        f"{list(features.shape)}")
    return features


def load_features(path: str, labels: str = "") -> FeatureSet:
    if path.endswith(".npy"):
        return load_npy(path, labels)
    if path.endswith(".npz"):
        return load_npz(path)
    raise ToolError(f"{path}: give a .npz or .npy feature file")


def topk_search(queries: torch.Tensor, gallery: np.ndarray, k: int, query_chunk: int = 1024,
                gallery_chunk: int = 65536, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, gallery indices), both [Q, min(k, G)], ascending, of the k nearest gallery rows of every query
    (squared euclidean). The gallery (numpy array or memory map) is read one chunk at a time, each chunk once."""
    if k < 1 or query_chunk < 1 or gallery_chunk < 1:
        raise ToolError(f"--topk, --query-chunk and --gallery-chunk must be 1 or more (got {k}, {query_chunk}, "
                        f"{gallery_chunk})")
    queries = queries.float()
    if normalize:
        queries = F.normalize(queries, dim=1)
    num_q, k = len(queries), min(k, len(gallery))
    best_d = torch.full((num_q, k), float("inf"))
    best_i = torch.full((num_q, k), -1, dtype=torch.long)
    qq = squared_norms(queries)
    for g0 in range(0, len(gallery), gallery_chunk):
        g = torch.from_numpy(np.array(gallery[g0:g0 + gallery_chunk], dtype=np.float32))  # one chunk read (a copy)
        if normalize:
            g = F.normalize(g, dim=1)
        gg = squared_norms(g)
        kk = min(k, len(g))
        for q0 in range(0, num_q, query_chunk):
            q1 = min(q0 + query_chunk, num_q)
            dist = squared_euclidean(queries[q0:q1], g, q_norms=qq[q0:q1], g_norms=gg)
            chunk_d, chunk_i = torch.topk(dist, kk, dim=1, largest=False, sorted=True)
            merged_d = torch.cat([best_d[q0:q1], chunk_d], dim=1)
            merged_i = torch.cat([best_i[q0:q1], chunk_i + g0], dim=1)
            top_d, at = torch.topk(merged_d, k, dim=1, largest=False, sorted=True)
            best_d[q0:q1], best_i[q0:q1] = top_d, torch.gather(merged_i, 1, at)
    return best_d, best_i


def query_features(args: argparse.Namespace) -> tuple[torch.Tensor, list[str]]:
    if args.query_npz:
        query = load_npz(args.query_npz)
        return torch.from_numpy(np.asarray(query.features, dtype=np.float32)), query.names
    cfg = tool_config(args)
    setting = single_setting(cfg)
    predictor = Predictor.from_config(cfg)
    records, _, _ = folder_records(args.folder, predictor.spectra, predictor.num_cameras)
    features = predictor.record_features(records, [setting])[setting]
    return normalize_if(features, cfg.TEST.FEAT_NORM), [r.name for r in records]


def write_matches(path: str, query_names: list[str], gallery: FeatureSet, dist: torch.Tensor, index: torch.Tensor,
                  meta: dict) -> None:
    if path.endswith(".csv"):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["query_index", "query_name", "rank", "gallery_index", "gallery_name", "distance"])
            for qi, name in enumerate(query_names):
                for rank, (d, gi) in enumerate(zip(dist[qi].tolist(), index[qi].tolist()), start=1):
                    writer.writerow([qi, name, rank, gi, gallery.names[gi], f"{d:.6g}"])
        os.replace(tmp, path)
        return
    queries = [{"index": qi, "name": name, "matches": [
        {"rank": rank, "index": gi, "name": gallery.names[gi], "distance": d}
        for rank, (d, gi) in enumerate(zip(dist[qi].tolist(), index[qi].tolist()), start=1)]}
        for qi, name in enumerate(query_names)]
    write_json(path, {**meta, "queries": queries})


def run(args: argparse.Namespace) -> str:
    if not args.gallery:
        raise ToolError("give the gallery features: --gallery G.npz or G.npy")
    if not args.query_npz and not args.folder:
        raise ToolError("give the queries: --query-npz Q.npz or --folder DIR")
    gallery = load_features(args.gallery, args.gallery_labels)
    queries, query_names = query_features(args)
    if queries.shape[1] != gallery.features.shape[1]:
        raise ToolError(f"query features have {queries.shape[1]} dimensions, the gallery {args.gallery} "
                        f"{gallery.features.shape[1]}: extracted with different models?")
    dist, index = topk_search(queries, gallery.features, args.topk, args.query_chunk, args.gallery_chunk,
                              normalize=not args.no_normalize)
    if args.output:
        path = args.output
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    else:
        path = output_path(tool_config(args), "", f"search_top{args.topk}.json")
    if not path.endswith((".json", ".csv")):
        raise ToolError(f"--output {path}: give a .json or .csv file name")
    write_matches(path, query_names, gallery, dist, index,
                  {"gallery": os.path.abspath(args.gallery), "topk": int(dist.shape[1]),
                   "normalized": not args.no_normalize, "distance": "squared euclidean"})
    logger.info("wrote %s: top-%d of %d queries among %d gallery items", path, dist.shape[1], len(queries),
                len(gallery.features))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
