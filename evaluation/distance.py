"""The distance of the evaluation, written once: squared euclidean in the expanded form |q|^2 + |g|^2 - 2 q.g.

It ranks like the euclidean distance and is the original evaluation's distance; the metrics, re-ranking, the triplet
loss, the search and rank-list tools and the benchmarks all take it from here, so they agree to the bit.
"""

from __future__ import annotations

import torch


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N]: the squared L2 norm of every row."""
    return x.pow(2).sum(1)


def squared_euclidean(q: torch.Tensor, g: torch.Tensor, q_norms: torch.Tensor | None = None,
                      g_norms: torch.Tensor | None = None) -> torch.Tensor:
    """[Q, D], [G, D] -> [Q, G]: |q - g|^2 for all pairs. A caller that compares chunks passes the squared norms
    (:func:`squared_norms`) it already has as ``q_norms`` / ``g_norms`` instead of having them recomputed."""
    qq = squared_norms(q) if q_norms is None else q_norms
    gg = squared_norms(g) if g_norms is None else g_norms
    return torch.addmm(qq[:, None] + gg, q, g.t(), beta=1.0, alpha=-2.0)
