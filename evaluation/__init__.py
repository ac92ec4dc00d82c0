"""Evaluation: the squared-euclidean distance, rank metrics (CMC, mAP, mINP), k-reciprocal re-ranking and the
evaluator, side by side; nothing here imports the trainer or the data pipeline."""

from evaluation.distance import squared_euclidean, squared_norms
from evaluation.evaluator import (
    ReIDEvaluator,
    SettingFeatures,
    cross_matrix,
    evaluate_cross,
    evaluate_settings,
    format_cross_matrix,
    format_table,
)
from evaluation.rank import evaluate_features, evaluate_rank
from evaluation.reranking import re_ranking

__all__ = [
    "ReIDEvaluator",
    "SettingFeatures",
    "cross_matrix",
    "evaluate_cross",
    "evaluate_features",
    "evaluate_rank",
    "evaluate_settings",
    "format_cross_matrix",
    "format_table",
    "re_ranking",
    "squared_euclidean",
    "squared_norms",
]
