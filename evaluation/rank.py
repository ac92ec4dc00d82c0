"""Rank metrics of re-identification: CMC, mAP and mINP under the junk rules of the multi-spectral benchmarks.

For a query, gallery items with the query's pid AND group are junk (left out): the group is the camera id for
RGBNT201 / RGBNT100 and the scene id for MSVR310. The remaining items with the query's pid are its matches; a query
with no match is skipped.

Everything follows from the ranks of a query's matches among the kept gallery items: the rank of a match is one
plus the number of kept items before it. Items farther than the query's farthest match cannot change any rank, so
each row is first cut down to the items not farther than it (one comparison per item); only those are sorted, and
the matches' distances are located in them by binary search. With a good model that is a small part of the row; at
worst (a match at the very end) it is the whole row; what is left is sorted (see benchmarks/RESULTS.md for why not
binned). The rows of a chunk are split among threads (numpy releases the GIL in these loops). Labels are never
gathered for the whole row: a query's matches and junk are looked up among the gallery items of its pid.

Ties are broken by gallery index (a stable order): an item at the same distance as a match comes before it when its
gallery index is smaller. The original code uses numpy's unstable argsort, so its order among exactly equal
distances is arbitrary; for distinct distances the two agree exactly.

Differences from the original evaluation: it crashes when fewer than ``max_rank`` gallery items remain for a query;
here the CMC is padded with its last value (no query can have its first match beyond the kept gallery).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from evaluation.distance import squared_euclidean, squared_norms

logger = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor

# Elements of a distance block held at once (float32: 256 MB); bounds the memory of evaluate_features.
_BLOCK_ELEMENTS = 1 << 26


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    return x


def _num_workers() -> int:
    """Threads for the per-row work: torch's intra-op setting, so OMP_NUM_THREADS / torch.set_num_threads apply."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


@dataclass(frozen=True)
class _Gallery:
    """Gallery labels with the items of each pid contiguous (in gallery-index order within a pid)."""

    pids: np.ndarray
    groups: np.ndarray
    order: np.ndarray  # gallery indices sorted by pid, stable
    sorted_pids: np.ndarray

    @classmethod
    def build(cls, pids: np.ndarray, groups: np.ndarray) -> _Gallery:
        order = np.argsort(pids, kind="stable")
        return cls(pids, groups, order, pids[order])


@dataclass
class _QueryStats:
    """Per-query results of one chunk; ``valid`` marks queries with at least one match."""

    valid: np.ndarray
    first_rank: np.ndarray  # 1-based rank of the first match
    ap: np.ndarray
    inp: np.ndarray


def _count_before(dist: np.ndarray, thresholds: np.ndarray, num_match: np.ndarray, rows: np.ndarray,
                  out: np.ndarray) -> None:
    """For each listed row r and match j < num_match[r]: the number of gallery items (junk included) at a distance
    below thresholds[r, j], and (in ``out[..., 1]``) the number at a distance <= it."""
    for r in rows:
        m = num_match[r]
        t = thresholds[r, :m]
        row = dist[r]
        near = row[row <= t[-1]]  # NaN distances never pass: like argsort, they go last
        near.sort()
        out[r, :m, 0] = np.searchsorted(near, t, side="left")
        out[r, :m, 1] = np.searchsorted(near, t, side="right")


def _chunk_stats(dist: np.ndarray, q_pids: np.ndarray, q_groups: np.ndarray, gallery: _Gallery,
                 workers: int) -> _QueryStats:
    """Ranks of the matches of a chunk of queries ([c, G] distances) and the per-query AP, INP and first rank."""
    c, num_g = dist.shape
    start = np.searchsorted(gallery.sorted_pids, q_pids, side="left")
    count = np.searchsorted(gallery.sorted_pids, q_pids, side="right") - start
    width = int(count.max()) if c else 0
    empty = _QueryStats(np.zeros(c, bool), np.zeros(c, np.int64), np.zeros(c), np.zeros(c))
    if width == 0:
        return empty
    # Same-pid gallery items of every query, padded to `width`: junk if in the query's group, otherwise matches.
    slots = np.arange(width)
    same = slots[None, :] < count[:, None]
    gidx = gallery.order[np.where(same, start[:, None] + slots[None, :], 0)]
    in_group = gallery.groups[gidx] == q_groups[:, None]
    is_match = same & ~in_group
    is_junk = same & in_group
    num_match = is_match.sum(1)
    valid = num_match > 0
    if not valid.any():
        return empty
    d_same = np.take_along_axis(dist, gidx, axis=1)
    if np.isnan(d_same[is_match]).any():
        bad = int(np.flatnonzero((np.isnan(d_same) & is_match).any(1))[0])
        raise ValueError(f"distance matrix holds NaN between query row {bad} of this chunk and one of its matches")

    # Same-pid items in ranking order, (distance, gallery index), padding last as (+inf, num_g); the junk items
    # ahead of each are counted, then the matches are moved to the front, keeping that order.
    key_d = np.where(same, d_same, np.inf)
    key_i = np.where(same, gidx, num_g)
    order = np.lexsort((key_i, key_d), axis=-1)
    sorted_junk = np.take_along_axis(is_junk, order, axis=1)
    junk_ahead = np.cumsum(sorted_junk, axis=1) - sorted_junk
    front = np.argsort(~np.take_along_axis(is_match, order, axis=1), axis=1, kind="stable")
    order = np.take_along_axis(order, front, axis=1)
    junk_ahead = np.take_along_axis(junk_ahead, front, axis=1)
    t_d = np.take_along_axis(key_d, order, axis=1)  # [c, width]: the matches' distances first, ascending
    t_i = np.take_along_axis(key_i, order, axis=1)

    counts = np.zeros((c, width, 2), np.int64)
    rows = np.flatnonzero(valid)
    blocks = [b for b in np.array_split(rows, min(workers, len(rows))) if len(b)]
    if len(blocks) > 1:
        with ThreadPoolExecutor(len(blocks)) as pool:
            list(pool.map(lambda b: _count_before(dist, t_d, num_match, b, counts), blocks))
    else:
        _count_before(dist, t_d, num_match, rows, counts)
    before = counts[..., 0]
    # A match is counted once in its own `<=`; more means items at exactly its distance: those with a smaller
    # gallery index come first (stable order).
    for r, j in np.argwhere(counts[..., 1] - counts[..., 0] > 1):
        before[r, j] += np.count_nonzero(dist[r, : t_i[r, j]] == t_d[r, j])
    before -= junk_ahead  # junk items are not part of the ranking

    live = slots[None, :] < num_match[:, None]
    rank = np.where(live, before + 1, 1)  # 1-based rank among kept items of the j-th match (j < num_match)
    precision = np.where(live, (slots[None, :] + 1) / rank, 0.0)
    m = np.maximum(num_match, 1)
    ap = precision.sum(1) / m
    last = np.take_along_axis(rank, (m - 1)[:, None], axis=1)[:, 0]
    inp = num_match / last
    return _QueryStats(valid, rank[:, 0], ap, inp)


def _summarise(stats: list[_QueryStats], max_rank: int) -> tuple[np.ndarray, float, float]:
    valid = np.concatenate([s.valid for s in stats])
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a match in the gallery once same-pid/same-group items are left out: check "
                         "the query/gallery split, the pids and the group ids (camera or scene)")
    skipped = len(valid) - num_valid
    if skipped:
        logger.warning("%d of %d queries have no match in the gallery and are skipped", skipped, len(valid))
    first = np.concatenate([s.first_rank[s.valid] for s in stats])
    ap = np.concatenate([s.ap[s.valid] for s in stats])
    inp = np.concatenate([s.inp[s.valid] for s in stats])
    hist = np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(hist).astype(np.float32) / np.float32(num_valid)
    return cmc, float(ap.mean()), float(inp.mean())


def _check_labels(num_q: int, num_g: int, q_pids: np.ndarray, g_pids: np.ndarray, q_groups: np.ndarray,
                  g_groups: np.ndarray, max_rank: int) -> None:
    if len(q_pids) != num_q or len(q_groups) != num_q:
        raise ValueError(f"{num_q} queries but {len(q_pids)} query pids and {len(q_groups)} query groups")
    if len(g_pids) != num_g or len(g_groups) != num_g:
        raise ValueError(f"{num_g} gallery items but {len(g_pids)} gallery pids and {len(g_groups)} gallery groups")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")


def _rows_per_chunk(num_g: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, _BLOCK_ELEMENTS // max(num_g, 1))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size


def evaluate_rank(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_groups: ArrayLike,
                  g_groups: ArrayLike, max_rank: int = 50) -> tuple[np.ndarray, float, float]:
    """CMC (float32, length ``max_rank``), mAP and mINP of a [num_query, num_gallery] distance matrix (smaller is
    closer). Gallery items with the query's pid and group are left out; queries without a match are skipped."""
    if isinstance(distmat, torch.Tensor):
        distmat = distmat.detach().cpu().numpy()
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be [num_query, num_gallery], got shape {distmat.shape}")
    if not np.issubdtype(distmat.dtype, np.floating):
        distmat = distmat.astype(np.float64)
    elif distmat.dtype.itemsize < 4:
        distmat = distmat.astype(np.float32)
    q_pids, g_pids = _to_numpy(q_pids, "q_pids"), _to_numpy(g_pids, "g_pids")
    q_groups, g_groups = _to_numpy(q_groups, "q_groups"), _to_numpy(g_groups, "g_groups")
    num_q, num_g = distmat.shape
    _check_labels(num_q, num_g, q_pids, g_pids, q_groups, g_groups, max_rank)
    gallery = _Gallery.build(g_pids, g_groups)
    step = _rows_per_chunk(num_g, None)
    workers = _num_workers()
    stats = [_chunk_stats(distmat[i:i + step], q_pids[i:i + step], q_groups[i:i + step], gallery, workers)
             for i in range(0, num_q, step)]
    return _summarise(stats, max_rank)


def _as_features(x: ArrayLike, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{name} must be [num_items, dim], got shape {tuple(t.shape)}")
    return t


def evaluate_features(qf: ArrayLike, gf: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_groups: ArrayLike,
                      g_groups: ArrayLike, max_rank: int = 50,
                      chunk_size: int | None = None) -> tuple[np.ndarray, float, float]:
    """:func:`evaluate_rank` on the squared euclidean distances of query and gallery features (float32, CPU),
    computed ``chunk_size`` queries at a time so the full distance matrix is never held. ``None`` picks a chunk of
    about 2**26 distances."""
    qf, gf = _as_features(qf, "qf"), _as_features(gf, "gf")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"query features have dim {qf.shape[1]} but gallery features {gf.shape[1]}")
    q_pids, g_pids = _to_numpy(q_pids, "q_pids"), _to_numpy(g_pids, "g_pids")
    q_groups, g_groups = _to_numpy(q_groups, "q_groups"), _to_numpy(g_groups, "g_groups")
    num_q, num_g = len(qf), len(gf)
    _check_labels(num_q, num_g, q_pids, g_pids, q_groups, g_groups, max_rank)
    gallery = _Gallery.build(g_pids, g_groups)
    step = _rows_per_chunk(num_g, chunk_size)
    workers = _num_workers()
    gg = squared_norms(gf)
    stats = []
    for i in range(0, num_q, step):
        dist = squared_euclidean(qf[i:i + step], gf, g_norms=gg)
        stats.append(_chunk_stats(dist.numpy(), q_pids[i:i + step], q_groups[i:i + step], gallery, workers))
    return _summarise(stats, max_rank)
