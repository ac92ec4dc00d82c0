"""The method registry (see :mod:`modeling.methods`)."""


from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn
from yacs.config import CfgNode

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class OriginalLayout:
    """The checkpoint layout of a method's original code: ``matches(state)`` recognises a state_dict of it (with or
    without ``module.``), ``convert(state, model)`` maps it to the project's names -> (state_dict, dropped keys)."""

    name: str  # "original TOP-ReID", in messages
    matches: Callable[[Mapping[str, Any]], bool]
    convert: Callable[[Mapping[str, Any], nn.Module], tuple[dict[str, Any], list[str]]]


@dataclass(frozen=True)
class Method:
    name: str
    build: Builder
    aux_losses: Callable[[CfgNode], dict[str, float]]
    original: OriginalLayout | None = None


_METHODS: dict[str, Method] = {}


def register_method(name: str, aux_losses: Callable[[CfgNode], dict[str, float]] = lambda cfg: {},
                    original: OriginalLayout | None = None) -> Callable[[Builder], Builder]:
    """Decorator registering ``build(cfg, num_classes, num_cameras, pretrained=True)`` as method ``name``, with the
    weights of its auxiliary losses and the checkpoint layout of its original code (loaded by ``TEST.WEIGHT``)."""

    def add(build: Builder) -> Builder:
        if name in _METHODS and _METHODS[name].build is not build:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = Method(name, build, aux_losses, original)
        return build

    return add


def unregister_method(name: str) -> None:
    _METHODS.pop(name, None)


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"MODEL.META_ARCHITECTURE {name!r} is not a registered method; known: "
                         f"{', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def original_layouts() -> list[OriginalLayout]:
    """The original-code checkpoint layouts of the registered methods."""
    return [m.original for m in _METHODS.values() if m.original is not None]


def method_of(cfg: CfgNode) -> Method:
    return get_method(cfg.MODEL.META_ARCHITECTURE)


def build_model(cfg: CfgNode, num_classes: int, camera_num: int, pretrained: bool = True) -> Any:
    """The model of ``MODEL.META_ARCHITECTURE`` built from the config (``camera_num``: training cameras; with
    ``pretrained`` False no ImageNet/CLIP weights are read, as for a model about to receive a checkpoint)."""
    return method_of(cfg).build(cfg, num_classes, camera_num, pretrained)
