"""Validation rules for config values, used beside each default in :mod:`configs.defaults`.

A rule takes a value and returns ``None`` when it is valid, otherwise the rest of a sentence that starts with the key
and its value (``"is not one of: SGD, AdamW"``). This module imports nothing from ``configs`` so that the defaults and
the loader can both import it; the backbone and data-set rules import their registries only when they run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from utils.spectra import SPECTRA, parse_cross

Rule = Callable[[Any], str | None]


def one_of(*allowed: str) -> Rule:
    def check(v: Any) -> str | None:
        return None if isinstance(v, str) and v in allowed else f"is not one of: {', '.join(allowed)}"

    check.allowed = allowed  # type: ignore[attr-defined]
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False) -> Rule:
    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            return f"must be {'an integer' if integer else 'a number'}"
        if v != v:  # NaN
            return "must not be NaN"
        if lo is not None and (v < lo or (lo_open and v == lo)):
            return f"must be {'>' if lo_open else '>='} {lo}"
        if hi is not None and (v > hi or (hi_open and v == hi)):
            return f"must be {'<' if hi_open else '<='} {hi}"
        return None

    check.bounds = (lo, hi, lo_open, hi_open, integer)  # type: ignore[attr-defined]
    return check


def pair(lo: int, hi: int | None = None) -> Rule:
    """Two integers, each in [lo, hi]."""
    def check(v: Any) -> str | None:
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                        for x in v)):
            return "must be a list of two integers"
        if any(x < lo or (hi is not None and x > hi) for x in v):
            return f"values must be in [{lo}, {hi if hi is not None else 'inf'}]"
        return None

    return check


def triple(positive: bool = False) -> Rule:
    """Three numbers (one per colour channel)."""
    def check(v: Any) -> str | None:
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            return "must be a list of three numbers"
        if positive and any(x <= 0 for x in v):
            return "must be positive"
        return None

    return check


def spectra(v: Any) -> str | None:
    if not isinstance(v, (list, tuple)) or not v:
        return f"must be a non-empty list of spectra from: {', '.join(SPECTRA)}"
    bad = [s for s in v if s not in SPECTRA]
    if bad:
        return f"has unknown spectra {bad}; allowed: {', '.join(SPECTRA)}"
    if len(set(v)) != len(v):
        return "lists a spectrum twice"
    return None


def device(v: Any) -> str | None:
    return None if isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else \
        "is not one of: auto, cpu, cuda, cuda:N"


def backbone(v: Any) -> str | None:
    from modeling.backbones import backbone_names_hint, is_known_backbone

    return None if is_known_backbone(v) else f"is not a known backbone ({backbone_names_hint()})"


def method(v: Any) -> str | None:
    from modeling.methods import method_names

    return None if v in method_names() else f"is not a registered method ({', '.join(method_names())})"


def dataset(v: Any) -> str | None:
    from data.datasets import dataset_names

    return None if v in dataset_names() else f"is not one of: {', '.join(dataset_names())}"


def cross(v: Any) -> str | None:
    """`TEST.CROSS`: "" (off), "all", or QUERY->GALLERY pairs; spectra against MODEL.SPECTRA in validate()."""
    if not isinstance(v, str):
        return "must be a string such as 'RGB->TI, RGB+NI->TI' or 'all'"
    try:
        parse_cross(v)
    except ValueError as err:
        return f"is not valid: {err}"
    return None
