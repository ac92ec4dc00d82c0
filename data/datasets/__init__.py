"""Readers of the multi-spectral ReID data sets in their published layouts, selected by name."""

from data.datasets import market1501mm, msvr310, rgbnt100, rgbnt201, rgbnt300, wmveid863  # noqa: F401  (registers)
from data.datasets.base import DatasetError, Record, ReIDDataset, relabel
from data.datasets.registry import build_dataset, dataset_names, dataset_spectra, register_dataset

__all__ = ["DatasetError", "Record", "ReIDDataset", "build_dataset", "dataset_names", "dataset_spectra",
           "register_dataset", "relabel"]
