"""The field's missing-spectrum protocol, shared by the methods that follow it (DeMo, EDITOR): a missing spectrum's
normalised image is all zeros and goes through the shared backbone. Its backbone pass depends only on the camera id,
so it is computed once per camera of a batch and expanded to the samples."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

Outputs = tuple[torch.Tensor, ...]


def resolve_missing(spectra: Sequence[str], missing: Collection[str]) -> frozenset[str]:
    """``missing`` as a set of ``spectra``; raises for unknown names or when all are missing."""
    missing = frozenset(missing)
    unknown = sorted(missing - set(spectra))
    if unknown:
        raise ValueError(f"unknown spectra {unknown} in missing; known: {', '.join(spectra)}")
    if len(missing) == len(spectra):
        raise ValueError(f"every spectrum the model uses ({', '.join(spectra)}) is missing")
    return missing


def zero_image_passes(run: Callable[[torch.Tensor, torch.Tensor | None], Outputs], like: torch.Tensor,
                      img_size: Sequence[int], batch: int, cams: torch.Tensor | None, cache: dict | None,
                      key: str) -> Outputs:
    """``run(zero images, camera ids)`` -> a tuple of per-sample tensors, for ``batch`` samples of cameras ``cams``.

    ``run`` sees one zero image per camera not yet in ``cache[key]`` (``cache``: a dict shared by the settings of one
    batch; ``None``: nothing kept); the zero images have the dtype and device of ``like``. A traced graph (ONNX)
    follows the batch's size and cameras, so under tracing ``run`` gets the whole batch and nothing is cached.
    """
    if torch.jit.is_tracing():
        return run(like.new_zeros(batch, 3, *img_size), cams)
    store: dict[Any, Outputs] = cache.setdefault(key, {}) if cache is not None else {}
    ids = [None] * batch if cams is None else [int(c) for c in cams.tolist()]
    todo = sorted({c for c in ids if c not in store}, key=lambda c: -1 if c is None else c)
    if todo:
        zeros = torch.zeros(len(todo), 3, *img_size, device=like.device, dtype=like.dtype)
        run_cams = None if cams is None else torch.tensor(todo, device=cams.device, dtype=cams.dtype)
        outputs = run(zeros, run_cams)
        store.update({c: tuple(o[i:i + 1] for o in outputs) for i, c in enumerate(todo)})
    return tuple(torch.cat([store[c][k] for c in ids]) for k in range(len(store[ids[0]])))
