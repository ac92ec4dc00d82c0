"""The method registry (see :mod:`modeling.methods`)."""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn
from yacs.config import CfgNode

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Method:
    name: str
    build: Builder
    aux_losses: Callable[[CfgNode], dict[str, float]]


_METHODS: dict[str, Method] = {}


def register_method(name: str, aux_losses: Callable[[CfgNode], dict[str, float]] = lambda cfg: {}
                    ) -> Callable[[Builder], Builder]:
    """Decorator registering ``build(cfg, num_classes, num_cameras, pretrained=True)`` as method ``name``."""

    def add(build: Builder) -> Builder:
        if name in _METHODS and _METHODS[name].build is not build:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = Method(name, build, aux_losses)
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


def method_of(cfg: CfgNode) -> Method:
    return get_method(cfg.MODEL.META_ARCHITECTURE)


def build_model(cfg: CfgNode, num_classes: int, camera_num: int, pretrained: bool = True) -> Any:
    """The model of ``MODEL.META_ARCHITECTURE`` built from the config (``camera_num``: training cameras; with
    ``pretrained`` False no ImageNet/CLIP weights are read, as for a model about to receive a checkpoint)."""
    return method_of(cfg).build(cfg, num_classes, camera_num, pretrained)
