"""Data set readers by name: ``DATASETS.NAMES`` selects one. Each declares the spectra its samples have, so that the
config is checked against them before anything is read."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from data.datasets.base import DatasetError, ReIDDataset, log_statistics
from utils.spectra import SPECTRA

Reader = Callable[[str], ReIDDataset]
_READERS: dict[str, Reader] = {}
_SPECTRA: dict[str, tuple[str, ...]] = {}

# DATASETS.NI_AS_TI: the field's convention for a data set without TI (EDITOR's collate for RGBNT300): the TI slot
# holds the NI image.
NI_AS_TI = {"TI": "NI"}


def register_dataset(name: str, spectra: Sequence[str] = SPECTRA) -> Callable[[Reader], Reader]:
    """Decorator: make ``reader(root) -> ReIDDataset`` available as ``name``; its samples have ``spectra``."""

    def add(reader: Reader) -> Reader:
        if name in _READERS:
            raise ValueError(f"data set {name!r} is registered twice")
        _READERS[name] = reader
        _SPECTRA[name] = tuple(s for s in SPECTRA if s in spectra)
        return reader

    return add


def dataset_names() -> list[str]:
    return list(_READERS)


def _known(name: str) -> None:
    if name not in _READERS:
        raise DatasetError(f"unknown data set {name!r}; known: {', '.join(_READERS)}")


def dataset_spectra(name: str, ni_as_ti: bool = False) -> tuple[tuple[str, ...], dict[str, str]]:
    """(spectra, copies) of data set ``name`` as read with ``DATASETS.NI_AS_TI = ni_as_ti``: the spectra its samples
    offer, in :data:`SPECTRA` order, and the slots among them filled with another spectrum's image. Known without
    reading the data; ``ni_as_ti`` with a data set that has TI, or no NI, is a DatasetError."""
    _known(name)
    spectra = _SPECTRA[name]
    if not ni_as_ti:
        return spectra, {}
    if "TI" in spectra or "NI" not in spectra:
        raise DatasetError(f"{name} has {', '.join(spectra)}: the NI image copied into the TI slot is for a data "
                           "set with NI and no TI (RGBNT300)")
    return tuple(s for s in SPECTRA if s in spectra or s in NI_AS_TI), dict(NI_AS_TI)


def build_dataset(name: str, root: str, ni_as_ti: bool = False) -> ReIDDataset:
    """Read data set ``name`` under ``root`` (``DATASETS.ROOT_DIR``) and log its statistics; with ``ni_as_ti``
    (``DATASETS.NI_AS_TI``) every sample's TI slot holds its NI image."""
    dataset_spectra(name, ni_as_ti)  # an unknown name or a convention the data set cannot take fails before reading
    dataset = _READERS[name](root)
    if dataset.spectra != _SPECTRA[name]:
        raise ValueError(f"reader of {name} returned samples of {dataset.spectra}, registered with {_SPECTRA[name]}")
    for slot, source in (NI_AS_TI if ni_as_ti else {}).items():
        dataset = dataset.with_copy(slot, source)
    return log_statistics(dataset)
