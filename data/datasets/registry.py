"""Data set readers by name: ``DATASETS.NAMES`` selects one."""

from __future__ import annotations

from collections.abc import Callable

from data.datasets.base import DatasetError, ReIDDataset, log_statistics

Reader = Callable[[str], ReIDDataset]
_READERS: dict[str, Reader] = {}


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    """Decorator: make ``reader(root) -> ReIDDataset`` available as ``name``."""

    def add(reader: Reader) -> Reader:
        if name in _READERS:
            raise ValueError(f"data set {name!r} is registered twice")
        _READERS[name] = reader
        return reader

    return add


def dataset_names() -> list[str]:
    return list(_READERS)


def build_dataset(name: str, root: str) -> ReIDDataset:
    """Read data set ``name`` under ``root`` (``DATASETS.ROOT_DIR``) and log its statistics."""
    if name not in _READERS:
        raise DatasetError(f"unknown data set {name!r}; known: {', '.join(_READERS)}")
    return log_statistics(_READERS[name](root))
