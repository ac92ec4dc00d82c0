"""The evaluator object (reset / process / compute) and the per-setting evaluation of extracted test features."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.rank import ArrayLike, _as_features, _to_numpy, evaluate_features, evaluate_rank
from evaluation.reranking import re_ranking


class ReIDEvaluator:
    """Accumulates test features and labels (query items first, as the test loader yields them) and computes
    mAP, CMC and mINP. ``groups`` are the junk-rule ids: camera ids, or scene ids for MSVR310."""

    def __init__(self, num_query: int, feat_norm: bool = True, rerank: bool = False, max_rank: int = 50) -> None:
        if max_rank < 10:
            raise ValueError(f"max_rank must be >= 10 to report Rank-10, got {max_rank}")
        self.num_query = num_query
        self.feat_norm = feat_norm
        self.rerank = rerank
        self.max_rank = max_rank
        self.reset()

    def reset(self) -> None:
        self._feats: list[torch.Tensor] = []
        self._pids: list[np.ndarray] = []
        self._groups: list[np.ndarray] = []

    def process(self, feats: ArrayLike, pids: ArrayLike, groups: ArrayLike) -> None:
        """Add a batch: features [B, F], pids [B], groups [B]."""
        feats = _as_features(feats, "feats")
        pids, groups = _to_numpy(pids, "pids"), _to_numpy(groups, "groups")
        if not len(feats) == len(pids) == len(groups):
            raise ValueError(f"batch of {len(feats)} features with {len(pids)} pids and {len(groups)} groups")
        self._feats.append(feats)
        self._pids.append(pids)
        self._groups.append(groups)

    def compute(self) -> dict[str, float | list[float]]:
        """mAP, Rank-1/5/10 and mINP as fractions in [0, 1], and the whole CMC curve."""
        if not self._feats:
            raise ValueError("ReIDEvaluator.compute called before any process()")
        feats = torch.cat(self._feats)
        pids, groups = np.concatenate(self._pids), np.concatenate(self._groups)
        nq = self.num_query
        if not 0 < nq < len(feats):
            raise ValueError(f"num_query={nq} but {len(feats)} items were processed: need at least one query and "
                             "one gallery item")
        if self.feat_norm:
            feats = F.normalize(feats, dim=1)
        qf, gf = feats[:nq], feats[nq:]
        if self.rerank:
            distmat = re_ranking(qf, gf)
            cmc, m_ap, m_inp = evaluate_rank(distmat, pids[:nq], pids[nq:], groups[:nq], groups[nq:],
                                             self.max_rank)
        else:
            cmc, m_ap, m_inp = evaluate_features(qf, gf, pids[:nq], pids[nq:], groups[:nq], groups[nq:],
                                                 self.max_rank)
        return {"mAP": m_ap, "Rank-1": float(cmc[0]), "Rank-5": float(cmc[4]), "Rank-10": float(cmc[9]),
                "mINP": m_inp, "cmc": cmc.tolist()}


class SettingFeatures(Protocol):
    """Test features per missing-spectrum setting with their labels, in loader order (query items first), such as
    ``processor.inference.ExtractedFeatures``."""

    @property
    def feats(self) -> Mapping[str, torch.Tensor]: ...

    @property
    def pids(self) -> np.ndarray: ...

    @property
    def camids(self) -> np.ndarray: ...

    @property
    def sceneids(self) -> np.ndarray: ...


def evaluate_settings(extracted: SettingFeatures, num_query: int, junk_key: str, feat_norm: bool = True,
                      rerank: bool = False) -> dict[str, dict[str, float]]:
    """mAP / Rank-k / mINP per setting. ``junk_key`` is "camid" or "sceneid" (the data set's junk rule)."""
    groups = extracted.camids if junk_key == "camid" else extracted.sceneids
    results = {}
    for setting, feats in extracted.feats.items():
        evaluator = ReIDEvaluator(num_query, feat_norm=feat_norm, rerank=rerank)
        evaluator.process(feats, extracted.pids, groups)
        metrics = evaluator.compute()
        results[setting] = {k: float(metrics[k]) for k in ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")}
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A table like the paper's: one row per setting, percentages."""
    labels = {"nothing": "all spectra", "r": "-RGB", "n": "-NI", "t": "-TI", "rn": "-RGB-NI", "rt": "-RGB-TI",
              "nt": "-NI-TI"}
    lines = [f"{'setting':<14}{'mAP':>8}{'Rank-1':>8}{'Rank-5':>8}{'Rank-10':>9}{'mINP':>8}"]
    for setting, m in results.items():
        lines.append(f"{labels.get(setting, setting):<14}{100 * m['mAP']:8.1f}{100 * m['Rank-1']:8.1f}"
                     f"{100 * m['Rank-5']:8.1f}{100 * m['Rank-10']:9.1f}{100 * m['mINP']:8.1f}")
    return "\n".join(lines)
