"""Regional compilation (``MODEL.COMPILE``): ``torch.compile`` each transformer block of the model in place.

The blocks of one backbone are identical in structure, so the compiler traces one and reuses the code for the others
(one compilation per kind of block instead of one of the whole model: seconds instead of minutes); the glue between
them (patch embedding, TPM's concatenations, the heads, the losses) stays eager. ``nn.Module.compile`` compiles in
place, so parameter names, ``state_dict`` and checkpoints are unchanged, and the same model serves training and
evaluation (the trainer, the evaluation hook and the predictor all call the compiled blocks).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: what its method lists (``model.transformer_blocks()``: TOP-ReID adds TPM's
    and CRM's blocks), else every entry of every ``blocks`` list of its backbones (timm's name), each once."""
    if callable(getattr(model, "transformer_blocks", None)):
        return list(model.transformer_blocks())
    blocks: list[nn.Module] = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "blocks" and isinstance(module, (nn.Sequential, nn.ModuleList)):
            blocks.extend(b for b in module if all(b is not seen for seen in blocks))
    return blocks


def compile_blocks(model: nn.Module, **options: Any) -> int:
    """``block.compile(**options)`` for every :func:`transformer_blocks` entry, in place; returns how many.
    ``options`` go to ``torch.compile`` (tests pass ``backend="eager"`` to check tracing without a C++ compiler)."""
    model = getattr(model, "module", model)
    blocks = transformer_blocks(model)
    for block in blocks:
        block.compile(**options)
    logger.info("compiled %d transformer blocks in place (regional compilation%s)", len(blocks),
                f", {options}" if options else "")
    return len(blocks)


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place by ``nn.Module.compile``."""
    return getattr(module, "_compiled_call_impl", None) is not None
