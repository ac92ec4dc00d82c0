"""The one inference path: a model with its device and precision, computing test features of a loader or of data
set records for any set of missing-spectrum settings. ``test_net.py`` and every research tool build their model
and features through it."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from yacs.config import CfgNode

from data.build import build_test_loader
from data.datasets import Record
from data.datasets.base import record_key
from modeling.checkpoint import model_from_checkpoint
from modeling.compile import compile_blocks
from processor.inference import (
    ExtractedFeatures,
    batch_features,
    eval_amp,
    extract_features,
    missing_by_setting,
    needed_spectra,
)
from utils.checkpoint import CheckpointError
from utils.env import amp_dtype, resolve_device
from utils.spectra import missing_spectra

logger = logging.getLogger(__name__)


class Predictor:
    """Features of a model in eval mode on ``device``; autocast in ``SOLVER.AMP_DTYPE`` on CUDA when ``amp`` (default:
    ``TEST.AMP``; fp32 otherwise, as the original evaluates); its transformer blocks compiled in place with
    ``compile`` (default MODEL.COMPILE).
    ``cfg`` supplies the test transform, batch size and workers of :meth:`record_features`."""

    def __init__(self, model: nn.Module, cfg: CfgNode, device: torch.device | None = None, amp: bool | None = None,
                 num_classes: int = 0, num_cameras: int = 0, checkpoint: str = "", compile: bool | None = None,
                 ) -> None:
        self.device = device or resolve_device(cfg.MODEL.DEVICE)
        self.model = getattr(model, "module", model).to(self.device).eval()
        self.cfg = cfg
        self.amp = eval_amp(cfg, self.device) if amp is None else amp and self.device.type == "cuda"
        if cfg.MODEL.COMPILE if compile is None else compile:
            compile_blocks(self.model)
        self.amp_dtype = amp_dtype(cfg.SOLVER.AMP_DTYPE)
        self.num_classes, self.num_cameras, self.checkpoint = num_classes, num_cameras, checkpoint
        self.epoch: int | None = None  # the checkpoint's epoch, when it records one

    @classmethod
    def from_config(cls, cfg: CfgNode, device: str | None = None, log: bool = True) -> Predictor:
        """The model of ``cfg`` with the weights of ``TEST.WEIGHT`` (strict; sizes from the checkpoint), on
        ``MODEL.DEVICE`` (or ``device``)."""
        path = cfg.TEST.WEIGHT
        if not path:
            raise CheckpointError("TEST.WEIGHT is not set; give the checkpoint (TEST.WEIGHT path/to/best.pth)")
        loaded = model_from_checkpoint(cfg, path, log=log)
        predictor = cls(loaded.model, cfg, resolve_device(device or cfg.MODEL.DEVICE),
                        num_classes=loaded.num_classes, num_cameras=loaded.num_cameras, checkpoint=path)
        predictor.epoch = loaded.checkpoint.get("epoch") if isinstance(loaded.checkpoint.get("epoch"), int) else None
        logger.info("loaded %s: %s, %d identities, %d cameras, on %s", path, cfg.MODEL.TRANSFORMER_TYPE,
                    loaded.num_classes, loaded.num_cameras, predictor.device)
        return predictor

    @property
    def spectra(self) -> tuple[str, ...]:
        return tuple(self.model.spectra)

    def available_spectra(self, setting: str) -> list[str]:
        """The model's spectra that ``setting`` keeps, in model order."""
        missing = missing_spectra(setting)
        return [s for s in self.spectra if s not in missing]

    def loader(self, records: Sequence[Record], spectra: Sequence[str] | None = None) -> DataLoader:
        """Test-transform batches of ``records`` in order, decoding ``spectra`` (default: all of the model's)."""
        return build_test_loader(self.cfg, records, spectra or self.spectra)

    def extract(self, loader: DataLoader, settings: Sequence[str]) -> ExtractedFeatures:
        """Features of every setting for a whole loader, in one pass (see :func:`extract_features`)."""
        return extract_features(self.model, loader, self.device, settings, self.amp, self.amp_dtype)

    @torch.no_grad()
    def feature_batches(self, records: Sequence[Record], settings: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Per batch of ``records`` (in order): setting -> features (float32, CPU, as the model returns them: not
        normalised). Only the spectra some setting keeps are decoded and run."""
        missing = missing_by_setting(self.model, settings)
        for batch in self.loader(records, needed_spectra(self.model, missing)):
            yield batch_features(self.model, batch, self.device, missing, self.amp, self.amp_dtype)

    def record_features(self, records: Sequence[Record], settings: Sequence[str]) -> dict[str, torch.Tensor]:
        """Setting -> features [len(records), F] of ``records``; a sample listed twice is run once."""
        keys = [record_key(r) for r in records]
        position: dict[tuple, int] = {}
        unique: list[Record] = []
        for record, key in zip(records, keys):
            if key not in position:
                position[key] = len(unique)
                unique.append(record)
        batches = list(self.feature_batches(unique, settings))
        index = [position[k] for k in keys]
        out = {s: torch.cat([b[s] for b in batches])[index] for s in settings}
        logger.info("features of %d samples, settings %s: %s", len(unique), ", ".join(settings),
                    list(next(iter(out.values())).shape))
        return out
