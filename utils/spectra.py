"""The spectra and the missing-spectrum settings, as data.

A missing-spectrum setting is named by the letters of the spectra it removes (`TEST.MISS`): ``"r"`` removes RGB,
``"nt"`` removes NI and TI, ``"nothing"`` removes none. Everything else in the project works on the resolved
``frozenset`` of spectrum names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SPECTRA: tuple[str, ...] = ("RGB", "NI", "TI")
LETTERS: dict[str, str] = {"r": "RGB", "n": "NI", "t": "TI"}

# The seven settings of the paper, in the order of its tables.
MISS_SETTINGS: tuple[str, ...] = ("nothing", "r", "n", "t", "rn", "rt", "nt")


def missing_spectra(setting: str) -> frozenset[str]:
    """Return the set of spectra removed by a `TEST.MISS` setting (``"rn"`` -> {"RGB", "NI"})."""
    if setting == "nothing":
        return frozenset()
    if setting not in MISS_SETTINGS:
        raise ValueError(f"unknown missing-spectrum setting {setting!r}; allowed: {', '.join(MISS_SETTINGS)}")
    return frozenset(LETTERS[letter] for letter in setting)


def setting_name(missing: frozenset[str] | set[str]) -> str:
    """Inverse of :func:`missing_spectra`."""
    unknown = set(missing) - set(SPECTRA)
    if unknown:
        raise ValueError(f"unknown spectra {sorted(unknown)}; known: {', '.join(SPECTRA)}")
    letters = "".join(letter for letter, name in LETTERS.items() if name in missing)
    return letters or "nothing"


# ----------------------------------------------------------------------------------------------------------------------
# The settings that exist for a model and a data set. A model of MODEL.SPECTRA [RGB, NI] has three (nothing, r, n): a
# setting that removes a spectrum the model does not use, or every spectrum it uses, does not exist for it. A slot
# filled with a copy of another spectrum's image (``copies``, e.g. {"TI": "NI"}: RGBNT300 with DATASETS.NI_AS_TI)
# goes with its source: removing one of the two leaves the same image in the other.


def effective_copies(spectra: Sequence[str], copies: Mapping[str, str] | None) -> dict[str, str]:
    """The copied slots of ``copies`` (slot -> source) whose slot and source are both among ``spectra``."""
    return {slot: source for slot, source in (copies or {}).items() if slot in spectra and source in spectra}


def setting_problem(setting: str, spectra: Sequence[str] = SPECTRA, copies: Mapping[str, str] | None = None
                    ) -> str | None:
    """Why missing-spectrum ``setting`` does not exist for a model of ``spectra`` on data with ``copies``, or None."""
    removed = missing_spectra(setting)
    outside = sorted(removed - set(spectra), key=SPECTRA.index)
    if outside:
        return f"removes {', '.join(outside)}, which the spectra {', '.join(spectra)} do not hold"
    if removed >= set(spectra):
        return f"removes every spectrum of {', '.join(spectra)}"
    for slot, source in effective_copies(spectra, copies).items():
        if (slot in removed) != (source in removed):
            return (f"removes one of {source} and {slot}, but {slot} holds a copy of the {source} image: remove both "
                    f"or neither")
    return None


def existing_settings(spectra: Sequence[str] = SPECTRA, copies: Mapping[str, str] | None = None) -> list[str]:
    """The settings of :data:`MISS_SETTINGS` that exist for ``spectra`` and ``copies`` (`TEST.MISS all`), in order:
    seven for three spectra, three (nothing and one per spectrum) for two, three (nothing, r, nt) for RGB, NI and a
    copy of NI in TI."""
    return [s for s in MISS_SETTINGS if setting_problem(s, spectra, copies) is None]


# ----------------------------------------------------------------------------------------------------------------------
# Cross-spectral pairs (`TEST.CROSS`): the query seen in some spectra, the gallery in others.


@dataclass(frozen=True)
class CrossPair:
    """A cross-spectral setting: query features from ``query`` spectra only, gallery features from ``gallery``
    spectra only (each side a tuple in :data:`SPECTRA` order)."""

    query: tuple[str, ...]
    gallery: tuple[str, ...]

    @property
    def name(self) -> str:
        """``"RGB+NI->TI"``."""
        return f"{side_name(self.query)}->{side_name(self.gallery)}"

    @property
    def disjoint(self) -> bool:
        return not set(self.query) & set(self.gallery)

    @property
    def query_setting(self) -> str:
        """The missing-spectrum setting that keeps exactly the query side (the features of the query rows)."""
        return side_setting(self.query)

    @property
    def gallery_setting(self) -> str:
        return side_setting(self.gallery)


def side_name(side: tuple[str, ...] | list[str]) -> str:
    return "+".join(side)


def side_setting(side: tuple[str, ...] | list[str]) -> str:
    """The `TEST.MISS` setting whose kept spectra are ``side`` (``("RGB",)`` -> ``"nt"``)."""
    return setting_name(frozenset(SPECTRA) - set(side))


def _parse_side(text: str, item: str, spectra: tuple[str, ...], copies: Mapping[str, str]) -> tuple[str, ...]:
    names = text.split("+")
    if not text or any(not n for n in names):
        raise ValueError(f"pair {item!r} has an empty side; write spectra joined by '+', e.g. RGB+NI->TI")
    unknown = [n for n in names if n not in spectra]
    if unknown:
        raise ValueError(f"pair {item!r} names {', '.join(unknown)}, not among the spectra "
                         f"{', '.join(spectra)}")
    if len(set(names)) != len(names):
        raise ValueError(f"pair {item!r} lists a spectrum twice on one side")
    for slot, source in copies.items():
        if (slot in names) != (source in names):
            raise ValueError(f"pair {item!r}: {slot} holds a copy of the {source} image, so a side has both or "
                             f"neither (e.g. {source}+{slot})")
    return tuple(s for s in spectra if s in names)


def parse_cross(value: str | list[str] | tuple[str, ...], spectra: tuple[str, ...] | list[str] = SPECTRA,
                copies: Mapping[str, str] | None = None) -> list[CrossPair]:
    """`TEST.CROSS` value -> its pairs, each once, in the order given. ``""`` is none; ``"all"`` is every ordered
    pair of distinct single spectra of ``spectra`` (6 for three); otherwise pairs ``QUERY->GALLERY`` (sides are
    spectra joined by ``+``) separated by commas or spaces, or a list of them (``all`` among them adds its six).
    A slot holding a copy of another spectrum (``copies``: slot -> source) stays on the side of its source:
    ``all`` pairs RGB with NI+TI when TI is a copy of NI, and a side with one of them is an error.
    Raises ValueError naming the bad pair.
    """
    spectra = tuple(s for s in SPECTRA if s in spectra)
    copies = effective_copies(spectra, copies)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"expected strings such as 'RGB->TI', got {value!r}")
    # A list written on the command line ("[RGB->TI, 'NI->TI']") reads as its items; spaces around '->' and '+'
    # belong to the pair ("RGB -> TI"); other commas and spaces separate pairs.
    text = re.sub(r"[\[\]'\"]", " ", ",".join(items))
    text = re.sub(r"\s*(->|\+)\s*", r"\1", text)
    tokens = [t for t in re.split(r"[\s,]+", text) if t]
    groups = [tuple(x for x in spectra if x == s or copies.get(x) == s) for s in spectra if s not in copies]
    pairs: list[CrossPair] = []
    for item in tokens:
        if item == "all":
            new = [CrossPair(q, g) for q in groups for g in groups if q != g]
        else:
            sides = item.split("->")
            if len(sides) != 2:
                raise ValueError(f"pair {item!r} is not QUERY->GALLERY (e.g. RGB->TI, RGB+NI->TI) nor 'all'")
            new = [CrossPair(_parse_side(sides[0], item, spectra, copies),
                             _parse_side(sides[1], item, spectra, copies))]
        pairs += [p for p in new if p not in pairs]
    return pairs


def cross_sides(pairs: list[CrossPair]) -> list[str]:
    """The missing-spectrum settings of every pair's query and gallery sides, each once, in order."""
    out: list[str] = []
    for p in pairs:
        for s in (p.query_setting, p.gallery_setting):
            if s not in out:
                out.append(s)
    return out


def cross_refusal(pair: CrossPair, has_crm: bool) -> str | None:
    """Why a model cannot evaluate ``pair``, or None. Without CRM a missing spectrum's slot of the feature is zeros,
    so the features of two disjoint sides would share no non-zero slot: every distance would be the same."""
    if has_crm or not pair.disjoint:
        return None
    return (f"cross-spectral pair {pair.name} has disjoint sides and the model has no CRM: without reconstruction "
            "each side's feature is zero in the other side's slots, so query and gallery features share no non-zero "
            "slot and their distances say nothing; use a model with CRM (MODEL.RE True, MODEL.BASE False) or sides "
            f"that share a spectrum (e.g. {side_name(pair.query)}+{pair.gallery[0]}->{side_name(pair.gallery)})")
