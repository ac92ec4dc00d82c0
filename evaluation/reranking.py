"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017), with torch.

With N(p, k) the k nearest neighbours of p (p itself included, so k + 1 items), the k-reciprocal set is
R(p, k) = {g in N(p, k) : p in N(g, k)}. It is expanded with R(q, k/2) of every q in R(p, k) whose set overlaps
R(p, k) in more than 2/3 of its items (the paper writes >=, the authors' released code >, which is used here as
the field's numbers come from it). Each item gets a vector V_p with V_p[g] = exp(-d(p, g)) on the expanded set,
normalised to sum 1, then averaged over its k2 nearest neighbours (local query expansion). The Jaccard distance is
1 - sum_j min(V_p[j], V_g[j]) / sum_j max(V_p[j], V_g[j]) and the result is (1 - lambda) Jaccard + lambda d.

d is the squared euclidean distance of all query and gallery items, each row divided by its maximum. The vectors
are kept sparse (a few hundred entries per item) and in float32 (the released code stores them dense, in float16);
the Jaccard sums only visit pairs of items that share an entry. The one dense [N, N] array is d itself, so memory
grows as (num_query + num_gallery)^2 x 4 bytes: 0.4 GB for the 10k test items of RGBNT100.
"""

from __future__ import annotations

import numpy as np
import torch

from evaluation.distance import squared_euclidean

_PAIRS_PER_STEP = 1 << 24  # bounds the temporaries of the Jaccard sums


def _reciprocal_mask(neighbours: torch.Tensor) -> torch.Tensor:
    """[n, k] -> [n, k]: whether p is also among the neighbours of its j-th neighbour."""
    p = torch.arange(len(neighbours))[:, None, None]
    return (neighbours[neighbours] == p).any(-1)


def _unique_rows(index: torch.Tensor, valid: torch.Tensor, sentinel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the distinct valid entries of ``index`` (sorted) and their mask."""
    index = torch.sort(torch.where(valid, index, sentinel), dim=1).values
    first = torch.ones_like(index, dtype=torch.bool)
    first[:, 1:] = index[:, 1:] != index[:, :-1]
    return index, first & (index != sentinel)


def _sparse_vectors(dist: torch.Tensor, nearest: torch.Tensor, k1: int, k_half: int) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """The k-reciprocal vectors V before query expansion, padded: column indices [n, M] and values [n, M] (zero
    where padded)."""
    n = len(dist)
    near = nearest[:, : k1 + 1]
    in_r = _reciprocal_mask(near)  # R(p): near[p][in_r[p]]
    half = nearest[:, : k_half + 1]
    in_half = _reciprocal_mask(half)  # R(q, k/2): half[q][in_half[q]]

    cand_half = half[near]  # [n, k1+1, k_half+1]: R(q, k/2) of every neighbour q of p (masked below)
    cand_in_half = in_half[near]
    shared = (cand_half[..., None] == near[:, None, None, :]) & in_r[:, None, None, :]
    overlap = (shared.any(-1) & cand_in_half).sum(-1)
    accepted = in_r & (overlap > 2.0 / 3.0 * cand_in_half.sum(-1))

    index = torch.cat([near, cand_half.reshape(n, -1)], dim=1)
    valid = torch.cat([in_r, (accepted[..., None] & cand_in_half).reshape(n, -1)], dim=1)
    index, valid = _unique_rows(index, valid, sentinel=n)
    weight = torch.exp(-dist.gather(1, index.clamp(max=n - 1))) * valid
    return index, weight / weight.sum(1, keepdim=True)


def _query_expansion(index: torch.Tensor, weight: torch.Tensor, nearest: torch.Tensor,
                     k2: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean of the vectors of each item's k2 nearest neighbours, as coalesced (row, column, value) triplets."""
    n = len(index)
    rows = torch.arange(n)[:, None, None].expand(n, k2, index.shape[1])
    cols = index[nearest[:, :k2]]
    vals = weight[nearest[:, :k2]] / k2
    keep = vals > 0
    keys, inverse = torch.unique(rows[keep] * n + cols[keep], return_inverse=True)  # sorted by (row, column)
    summed = torch.zeros(len(keys)).index_add_(0, inverse, vals[keep])
    return keys // n, keys % n, summed


def _jaccard(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, nq: int, n: int) -> torch.Tensor:
    """[nq, n - nq] Jaccard distances between the query vectors (rows < nq) and the gallery vectors, summing
    min(V_q[j], V_g[j]) over the columns j the two share."""
    ng = n - nq
    q, g = rows < nq, rows >= nq
    # Entries grouped by column: each query entry meets every gallery entry of its column.
    q_order = torch.argsort(cols[q], stable=True)
    q_row, q_col, q_val = rows[q][q_order], cols[q][q_order], vals[q][q_order]
    g_order = torch.argsort(cols[g], stable=True)
    g_row, g_val = rows[g][g_order] - nq, vals[g][g_order]
    g_count = torch.bincount(cols[g], minlength=n)
    g_start = torch.cumsum(g_count, 0) - g_count

    sim = torch.zeros(nq * ng)
    reps = g_count[q_col]
    ends = torch.cumsum(reps, 0)
    start = 0
    while start < len(q_col):
        # as many query entries as keep the number of pairs near _PAIRS_PER_STEP
        base = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(ends, base + _PAIRS_PER_STEP, right=True)))
        r = reps[start:stop]
        entry = torch.repeat_interleave(torch.arange(start, stop), r)
        offset = torch.arange(len(entry)) - torch.repeat_interleave(torch.cumsum(r, 0) - r, r)
        partner = g_start[q_col[entry]] + offset
        sim.index_add_(0, q_row[entry] * ng + g_row[partner], torch.minimum(q_val[entry], g_val[partner]))
        start = stop
    sim = sim.view(nq, ng)
    total = torch.zeros(n).index_add_(0, rows, vals)
    return 1.0 - sim / (total[:nq, None] + total[None, nq:] - sim)


def re_ranking(qf: torch.Tensor, gf: torch.Tensor, k1: int = 20, k2: int = 6,
               lambda_value: float = 0.3) -> np.ndarray:
    """Re-ranked [num_query, num_gallery] distances (float32) for query and gallery features. Neighbourhood sizes
    are capped at the number of items."""
    feats = torch.cat([torch.as_tensor(qf), torch.as_tensor(gf)]).detach().to("cpu", torch.float32)
    nq, n = len(qf), len(feats)
    k1 = min(k1, n - 1)
    k_half = min(int(np.around(k1 / 2)), n - 1)
    k2 = max(1, min(k2, n))

    dist = squared_euclidean(feats, feats)
    dist /= dist.max(dim=1, keepdim=True).values
    nearest = torch.topk(dist, max(k1 + 1, k2), dim=1, largest=False, sorted=True).indices  # self first
    index, weight = _sparse_vectors(dist, nearest, k1, k_half)
    rows, cols, vals = _query_expansion(index, weight, nearest, k2)
    jaccard = _jaccard(rows, cols, vals, nq, n)
    final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:nq, nq:]
    return final.numpy()
