"""The backbone registry: a backbone family is one factory, registered under its names or a name predicate.

A factory is called as ``factory(name, img_size, stride=..., num_cameras=..., sie_coe=..., drop_path=...,
drop_out=..., attn_drop=..., grad_checkpoint=...)`` and returns a module mapping images [B, 3, H, W] (and camera
ids) to every token of its last layer, [B, 1 + N, D] with the CLS token first, exposing ``name``, ``embed_dim``,
``grid_size`` and ``default_heads`` (see :mod:`modeling.backbones`). Adding a family::

    @register_backbone("my_vit_s", "my_vit_b")
    def build_my_vit(name, img_size, **options):
        return MyViT(name, img_size, **options)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

BackboneFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class BackboneFamily:
    factory: BackboneFactory
    names: tuple[str, ...]  # exact names
    matches: Callable[[str], bool] | None  # or a predicate over names (timm's model names, say)
    hint: str  # how the family's names read, for error messages

    def accepts(self, name: str) -> bool:
        return name in self.names or (self.matches is not None and self.matches(name))


_FAMILIES: list[BackboneFamily] = []


def register_backbone(*names: str, matches: Callable[[str], bool] | None = None,
                      hint: str = "") -> Callable[[BackboneFactory], BackboneFactory]:
    """Register a factory for ``names`` (exact) and/or every name ``matches`` accepts. Families are tried in
    registration order; an exact name already registered is an error."""
    if not names and matches is None:
        raise ValueError("register_backbone needs names or a matches predicate")
    taken = [n for n in names if find_family(n) is not None]
    if taken:
        raise ValueError(f"backbone names already registered: {', '.join(taken)}")

    def add(factory: BackboneFactory) -> BackboneFactory:
        _FAMILIES.append(BackboneFamily(factory, tuple(names), matches, hint or ", ".join(names)))
        return factory

    return add


def unregister_backbone(name: str) -> None:
    """Remove the family registered under exactly ``name`` (tests that register a toy backbone clean up)."""
    _FAMILIES[:] = [f for f in _FAMILIES if name not in f.names]


def find_family(name: object) -> BackboneFamily | None:
    if not isinstance(name, str):
        return None
    return next((f for f in _FAMILIES if f.accepts(name)), None)


def is_known_backbone(name: object) -> bool:
    """True when a registered family builds ``name`` (a name lookup, nothing is built)."""
    return find_family(name) is not None


def backbone_names_hint() -> str:
    """Short text for error messages."""
    return "; ".join(f.hint for f in _FAMILIES)


def build_backbone(name: str, img_size: Sequence[int], stride: Sequence[int] = (16, 16), num_cameras: int = 0,
                   sie_coe: float = 3.0, drop_path: float = 0.0, drop_out: float = 0.0, attn_drop: float = 0.0,
                   grad_checkpoint: bool = False) -> nn.Module:
    """One backbone of a registered family. ``num_cameras`` is 0 when the camera embedding is off."""
    family = find_family(name)
    if family is None:
        raise ValueError(f"MODEL.TRANSFORMER_TYPE {name!r} is not a known backbone ({backbone_names_hint()})")
    return family.factory(name, tuple(img_size), stride=tuple(stride), num_cameras=num_cameras, sie_coe=sie_coe,
                          drop_path=drop_path, drop_out=drop_out, attn_drop=attn_drop,
                          grad_checkpoint=grad_checkpoint)
