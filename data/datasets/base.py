"""What every reader returns: records of one sample seen in several spectra, grouped into train / query / gallery."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from utils.spectra import SPECTRA

logger = logging.getLogger(__name__)

IMAGE_SUFFIX = ".jpg"


class DatasetError(ValueError):
    """A data set on disk that cannot be read as its published layout; the message names the path or name."""


@dataclass(frozen=True)
class Record:
    """One sample: the file of each spectrum and its labels.

    ``stitched`` marks files holding all spectra side by side (RGBNT100, RGBNT300): every entry of ``paths`` is the
    same file, and the i-th spectrum of ``paths`` is its i-th equal-width vertical strip (RGBNT100: RGB x 0-256, NI
    256-512, TI 512-768; RGBNT300: RGB x 0-256, NI 256-512).

    ``copies`` maps a slot the sample has no image for to the spectrum whose image fills it (``{"TI": "NI"}``:
    RGBNT300 under ``DATASETS.NI_AS_TI``); the loader gives the slot the very tensor of its source.
    """

    paths: dict[str, str]
    pid: int
    camid: int
    sceneid: int = -1
    stitched: bool = False
    copies: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Base name of the RGB file (of the first listed spectrum when there is no RGB)."""
        return os.path.basename(self.paths.get("RGB") or next(iter(self.paths.values())))

    @property
    def spectra(self) -> tuple[str, ...]:
        """The spectra the sample offers: those with a file, then the copied slots."""
        return (*self.paths, *self.copies)


def relabel(records: Iterable[Record]) -> list[Record]:
    """Map the pids of a training split to 0..N-1 in sorted pid order (class labels for the ID loss)."""
    records = list(records)
    mapping = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [replace(r, pid=mapping[r.pid]) for r in records]


@dataclass
class ReIDDataset:
    """The three splits of a data set. ``train`` pids are relabelled to 0..N-1; query and gallery keep raw pids.

    ``junk_key`` names the record field of the evaluation junk rule: gallery items sharing the query's pid and this
    field are left out ("camid" for RGBNT201/RGBNT100, "sceneid" for MSVR310).

    ``spectra`` are the spectra every sample offers, in :data:`SPECTRA` order (RGBNT300: RGB and NI); ``copies`` the
    slots among them filled with another spectrum's image (see :meth:`with_copy`).
    """

    name: str
    train: list[Record] = field(repr=False)
    query: list[Record] = field(repr=False)
    gallery: list[Record] = field(repr=False)
    junk_key: str = "camid"
    spectra: tuple[str, ...] = SPECTRA
    copies: dict[str, str] = field(default_factory=dict)
    num_train_pids: int = field(init=False)
    num_train_cams: int = field(init=False)

    def __post_init__(self) -> None:
        if self.junk_key not in ("camid", "sceneid"):
            raise ValueError(f"junk_key must be 'camid' or 'sceneid', got {self.junk_key!r}")
        if not self.spectra or list(self.spectra) != [s for s in SPECTRA if s in self.spectra]:
            raise ValueError(f"{self.name}: spectra must be distinct names of {SPECTRA} in that order, got "
                             f"{self.spectra}")
        pids = sorted({r.pid for r in self.train})
        if pids != list(range(len(pids))):
            raise ValueError(f"{self.name}: train pids must be relabelled to 0..N-1 (see relabel())")
        for record in (*self.train, *self.query, *self.gallery):
            if set(record.spectra) != set(self.spectra) or record.copies != self.copies:
                raise ValueError(f"{self.name}: sample {record.name} offers {', '.join(record.spectra)}, the data set "
                                 f"declares {', '.join(self.spectra)}")
        self.num_train_pids = len(pids)
        self.num_train_cams = len({r.camid for r in self.train})

    @classmethod
    def from_raw(cls, name: str, train: Sequence[Record], query: Sequence[Record], gallery: Sequence[Record],
                 junk_key: str = "camid", spectra: Sequence[str] = SPECTRA) -> ReIDDataset:
        """Build from records with raw pids everywhere (train is relabelled here)."""
        return cls(name, relabel(train), list(query), list(gallery), junk_key, tuple(spectra))

    def with_copy(self, slot: str, source: str) -> ReIDDataset:
        """The data set with slot ``slot``, which it has no images for, filled in every sample by the ``source``
        image: the very tensor of ``source``, augmentation included (EDITOR's convention for RGBNT300, whose collate
        puts the NI tensor in the TI slot). Raises DatasetError when it has ``slot`` or lacks ``source``."""
        if slot in self.spectra:
            raise DatasetError(f"{self.name} has its own {slot} images; a copy of {source} cannot take their place")
        if source not in self.spectra or source in self.copies:
            raise DatasetError(f"{self.name} has no {source} images to copy into {slot} (it has "
                               f"{', '.join(self.spectra)})")
        copies = {**self.copies, slot: source}

        def copied(records: list[Record]) -> list[Record]:
            return [replace(r, copies=copies) for r in records]

        spectra = tuple(s for s in SPECTRA if s in self.spectra or s == slot)
        return ReIDDataset(self.name, copied(self.train), copied(self.query), copied(self.gallery), self.junk_key,
                           spectra, copies)

    def statistics(self) -> str:
        """The usual ReID table: ids, images (samples), cameras (and scenes where the junk rule uses them)."""
        scenes = self.junk_key == "sceneid"
        header = ["subset", "# ids", "# images", "# cameras"] + (["# scenes"] if scenes else [])
        rows = []
        for subset, records in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            row = [subset, len({r.pid for r in records}), len(records), len({r.camid for r in records})]
            if scenes:
                row.append(len({r.sceneid for r in records}))
            rows.append(row)
        widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]

        def line(cells: Sequence[object]) -> str:
            first, *rest = cells
            return " | ".join([f"{first!s:<{widths[0]}}"] + [f"{c!s:>{w}}" for c, w in zip(rest, widths[1:])])

        rule = "-+-".join("-" * w for w in widths)
        spectra = ", ".join(f"{s} (the {self.copies[s]} image)" if s in self.copies else s for s in self.spectra)
        return "\n".join([f"{self.name} statistics:", line(header), rule, *(line(r) for r in rows),
                          f"spectra: {spectra}"])


# ----------------------------------------------------------------------------------------------------------------------
# Helpers shared by the readers: every failure names the path.

def record_key(record: Record) -> tuple:
    """Identity of a sample on disk (RGBNT201's query and gallery list the same files)."""
    return tuple(sorted(record.paths.items())), record.stitched, tuple(sorted(record.copies.items()))


def unique_records(records: Sequence[Record]) -> list[Record]:
    """``records`` without repeats of the same sample, in first-seen order."""
    seen: set[tuple] = set()
    out = []
    for record in records:
        key = record_key(record)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise DatasetError(f"{what} not found: {path}")
    return path


def list_images(folder: str) -> list[str]:
    """Sorted base names of the ``.jpg`` files in ``folder`` (other files are not samples and are ignored)."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIX) and not e.is_dir())
    return names


def require_nonempty(records: Sequence[Record], folder: str) -> None:
    if not records:
        raise DatasetError(f"empty split: no {IMAGE_SUFFIX} images in {folder}")


def paired_names(folders: dict[str, str]) -> list[str]:
    """Names present in every spectrum folder; a name missing from one folder is an error naming that file."""
    listed = {spectrum: list_images(folder) for spectrum, folder in folders.items()}
    present = {spectrum: set(names) for spectrum, names in listed.items()}
    union = sorted(set().union(*present.values()))
    for name in union:
        for spectrum, folder in folders.items():
            if name not in present[spectrum]:
                others = [s for s in folders if name in present[s]]
                raise DatasetError(f"missing {spectrum} file {os.path.join(folder, name)} "
                                   f"(the sample exists in {', '.join(others)})")
    return union


def log_statistics(dataset: ReIDDataset) -> ReIDDataset:
    logger.info("%s", dataset.statistics())
    return dataset
