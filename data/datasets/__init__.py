"""Readers of the multi-spectral ReID data sets in their published layouts, selected by name."""

from data.datasets import msvr310, rgbnt100, rgbnt201  # noqa: F401  (registers the readers)
from data.datasets.base import DatasetError, Record, ReIDDataset, relabel
from data.datasets.registry import build_dataset, dataset_names, register_dataset

__all__ = ["DatasetError", "Record", "ReIDDataset", "build_dataset", "dataset_names", "register_dataset", "relabel"]
