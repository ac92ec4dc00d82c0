"""The evaluator object (reset / process / compute) and the per-setting evaluation of extracted test features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.rank import ArrayLike, _as_features, _to_numpy, evaluate_features, evaluate_rank
from evaluation.reranking import re_ranking
from utils.spectra import SPECTRA, CrossPair, side_name, side_setting


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


SUMMARY = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")


def _summary(feats: torch.Tensor, pids: np.ndarray, groups: np.ndarray, num_query: int, feat_norm: bool,
             rerank: bool) -> dict[str, float]:
    evaluator = ReIDEvaluator(num_query, feat_norm=feat_norm, rerank=rerank)
    evaluator.process(feats, pids, groups)
    metrics = evaluator.compute()
    return {k: float(metrics[k]) for k in SUMMARY}


def evaluate_settings(extracted: SettingFeatures, num_query: int, junk_key: str, feat_norm: bool = True,
                      rerank: bool = False, settings: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """mAP / Rank-k / mINP per setting (``settings``, default every setting extracted). ``junk_key`` is "camid" or
    "sceneid" (the data set's junk rule)."""
    groups = extracted.camids if junk_key == "camid" else extracted.sceneids
    names = list(extracted.feats) if settings is None else list(settings)
    return {s: _summary(extracted.feats[s], extracted.pids, groups, num_query, feat_norm, rerank) for s in names}


def evaluate_cross(extracted: SettingFeatures, num_query: int, junk_key: str, pairs: Sequence[CrossPair],
                   feat_norm: bool = True, rerank: bool = False) -> dict[str, dict[str, float]]:
    """mAP / Rank-k / mINP per cross-spectral pair (``"RGB->TI"``): the query rows (the first ``num_query``) of the
    features of the pair's query-side setting against the gallery rows of its gallery-side setting; the same junk
    rule and metrics as :func:`evaluate_settings`. ``extracted.feats`` must hold both sides' settings."""
    groups = extracted.camids if junk_key == "camid" else extracted.sceneids
    results = {}
    for pair in pairs:
        absent = [s for s in (pair.query_setting, pair.gallery_setting) if s not in extracted.feats]
        if absent:
            raise ValueError(f"cross-spectral pair {pair.name}: no features of setting(s) {absent} were extracted")
        feats = torch.cat([extracted.feats[pair.query_setting][:num_query],
                           extracted.feats[pair.gallery_setting][num_query:]])
        results[pair.name] = _summary(feats, extracted.pids, groups, num_query, feat_norm, rerank)
    return results


def cross_matrix(cross: Mapping[str, Mapping[str, float]], pairs: Sequence[CrossPair],
                 settings: Mapping[str, Mapping[str, float]] | None = None, metric: str = "mAP"
                 ) -> tuple[list[str], list[str], np.ndarray]:
    """(query sides, gallery sides, ``metric`` [rows, cols] with NaN where not evaluated): rows are the pairs' query
    sides, columns their gallery sides, single spectra first, each group in spectrum order. A diagonal cell (the same
    spectra on both sides) not evaluated as a pair shows that missing-spectrum setting's result when ``settings``
    holds it."""
    def order(sides: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
        return sorted(sides, key=lambda s: (len(s), [SPECTRA.index(x) for x in s]))

    rows, cols = order({p.query for p in pairs}), order({p.gallery for p in pairs})
    values = np.full((len(rows), len(cols)), np.nan)
    for i, side in enumerate(rows):
        if side in cols and settings and side_setting(side) in settings:
            values[i, cols.index(side)] = settings[side_setting(side)][metric]
    for p in pairs:
        if p.name in cross:
            values[rows.index(p.query), cols.index(p.gallery)] = cross[p.name][metric]
    return [side_name(r) for r in rows], [side_name(c) for c in cols], values


def format_cross_matrix(cross: Mapping[str, Mapping[str, float]], pairs: Sequence[CrossPair],
                        settings: Mapping[str, Mapping[str, float]] | None = None, metric: str = "mAP") -> str:
    """:func:`cross_matrix` as text, in percent; cells not evaluated show "-"."""
    rows, cols, values = cross_matrix(cross, pairs, settings, metric)
    corner = "query \\ gallery"
    first = max(len(corner), *(len(r) for r in rows)) + 2
    width = max(8, *(len(c) + 2 for c in cols))
    lines = [f"{metric} (%), query spectra (rows) x gallery spectra (columns)",
             f"{corner:<{first}}" + "".join(f"{c:>{width}}" for c in cols)]
    for r, row in zip(rows, values):
        cells = ["-" if np.isnan(v) else f"{100 * v:.1f}" for v in row]
        lines.append(f"{r:<{first}}" + "".join(f"{v:>{width}}" for v in cells))
    return "\n".join(lines)


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A table like the paper's: one row per setting, percentages."""
    labels = {"nothing": "all spectra", "r": "-RGB", "n": "-NI", "t": "-TI", "rn": "-RGB-NI", "rt": "-RGB-TI",
              "nt": "-NI-TI"}
    lines = [f"{'setting':<14}{'mAP':>8}{'Rank-1':>8}{'Rank-5':>8}{'Rank-10':>9}{'mINP':>8}"]
    for setting, m in results.items():
        lines.append(f"{labels.get(setting, setting):<14}{100 * m['mAP']:8.1f}{100 * m['Rank-1']:8.1f}"
                     f"{100 * m['Rank-5']:8.1f}{100 * m['Rank-10']:9.1f}{100 * m['mINP']:8.1f}")
    return "\n".join(lines)
