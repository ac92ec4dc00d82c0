"""The spectra and the missing-spectrum settings, as data.

A missing-spectrum setting is named by the letters of the spectra it removes (`TEST.MISS`): ``"r"`` removes RGB,
``"nt"`` removes NI and TI, ``"nothing"`` removes none. Everything else in the project works on the resolved
``frozenset`` of spectrum names.
"""

from __future__ import annotations

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

