"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
CVPR 2017), vectorised with torch.

With N(p, k) the k nearest neighbours of p (p itself included, so k + 1 items), the k-reciprocal set is
R(p, k) = {g in N(p, k) : p in N(g, k)}. It is expanded with R(q, k/2) of every q in R(p, k) whose set overlaps
R(p, k) in more than 2/3 of its items (the paper writes >=, the authors' released code >, which is used here as
the field's numbers come from it). Each item gets a vector V_p with V_p[g] = exp(-d(p, g)) on the expanded set,
normalised to sum 1, then averaged over its k2 nearest neighbours (local query expansion). The Jaccard distance is
1 - sum_j min(V_p[j], V_g[j]) / sum_j max(V_p[j], V_g[j]) and the result is (1 - lambda) Jaccard + lambda d.

d is the squared euclidean distance of all query and gallery items, each row divided by its maximum. The vectors
are float32 here (the released code stores them in float16). Memory grows as (num_query + num_gallery)^2: fine for
the data sets of this project (about 10k test items at most), not for very large galleries.
"""

from __future__ import annotations

import numpy as np
import torch

from utils.metrics import squared_euclidean


def _reciprocal(neighbours: torch.Tensor, n: int) -> torch.Tensor:
    """Dense [n, n] mask of R(p): j is among p's neighbours and p among j's."""
    member = torch.zeros(n, n, dtype=torch.bool)
    member.scatter_(1, neighbours, True)
    return member & member.t()


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

    # k-reciprocal sets, and the k/2-reciprocal sets of the candidates as padded index lists.
    recip = _reciprocal(nearest[:, : k1 + 1], n)
    half = nearest[:, : k_half + 1]
    half_valid = _reciprocal(half, n).gather(1, half)
    half_size = half_valid.sum(1)

    cand = nearest[:, : k1 + 1]  # [n, k1+1]; candidates are those of them in R(p)
    cand_ok = recip.gather(1, cand)
    cand_lists = half[cand]  # [n, k1+1, k_half+1]
    cand_valid = half_valid[cand]
    in_recip = recip.gather(1, cand_lists.reshape(n, -1)).view_as(cand_lists)
    overlap = (in_recip & cand_valid).sum(2)
    accepted = cand_ok & (overlap > 2.0 / 3.0 * half_size[cand])
    expanded = recip
    add = accepted[:, :, None] & cand_valid
    rows = torch.arange(n)[:, None, None].expand_as(cand_lists)
    expanded[rows[add], cand_lists[add]] = True
    del cand_lists, cand_valid, in_recip, rows, add

    weights = torch.where(expanded, torch.exp(-dist), torch.zeros(()))
    del expanded
    weights /= weights.sum(1, keepdim=True)
    if k2 > 1:
        expanded_v = torch.zeros_like(weights)
        for j in range(k2):
            expanded_v += weights[nearest[:, j]]
        weights = expanded_v / k2

    # Jaccard distance between each query vector and every gallery vector, over the query's non-zero entries.
    gallery_t = weights[nq:].t().contiguous()  # [n, G]
    gallery_sum = weights[nq:].sum(1)
    sim = torch.empty(nq, n - nq)
    for i in range(nq):
        cols = torch.nonzero(weights[i]).squeeze(1)
        sim[i] = torch.minimum(gallery_t[cols], weights[i, cols, None]).sum(0)
    union = weights[:nq].sum(1, keepdim=True) + gallery_sum[None, :] - sim
    jaccard = 1.0 - sim / union
    final = (1.0 - lambda_value) * jaccard + lambda_value * dist[:nq, nq:]
    return final.numpy()
