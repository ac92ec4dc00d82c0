"""Feature extraction over the seven missing-spectrum settings in one pass (``evaluation.evaluate_settings``
scores them).

Each batch's backbones run once; CRM completion, TPM and the neck then run per setting on those tokens. A setting
that removes spectra never runs their backbones; with a single setting only the available backbones run.

A cross-spectral pair (`TEST.CROSS`, ``utils.spectra.CrossPair``) is two such settings: the one that keeps its query
spectra and the one that keeps its gallery spectra. They join the settings of the same pass
(:func:`extraction_settings`), so every backbone still runs once per batch and each CRM reconstruction is shared;
``evaluation.evaluate_cross`` then scores the query rows of one against the gallery rows of the other.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from yacs.config import CfgNode

from data.datasets import dataset_spectra
from evaluation import evaluate_cross, evaluate_settings
from utils import distributed as du
from utils.env import device_description, git_commit, versions
from utils.io import write_json
from utils.spectra import (
    SPECTRA,
    CrossPair,
    cross_refusal,
    cross_sides,
    existing_settings,
    missing_spectra,
    parse_cross,
    setting_problem,
)

logger = logging.getLogger(__name__)


def settings_for(miss: str, spectra: Sequence[str] = SPECTRA, copies: Mapping[str, str] | None = None) -> list[str]:
    """`TEST.MISS` value -> the list of settings to evaluate for a model of ``spectra`` on data whose ``copies``
    slots hold another spectrum's image: ``all`` is the settings that exist for them (seven for three spectra, three
    for two, see :func:`utils.spectra.existing_settings`); a single setting that does not exist is an error."""
    if miss == "all":
        return existing_settings(spectra, copies)
    problem = setting_problem(miss, spectra, copies)  # raises on an unknown setting
    if problem:
        raise ValueError(f"TEST.MISS {miss!r} {problem}")
    return [miss]


def spectrum_copies(cfg: CfgNode) -> dict[str, str]:
    """The data set's copied slots (slot -> source: {"TI": "NI"} under DATASETS.NI_AS_TI), known from the config."""
    return dataset_spectra(cfg.DATASETS.NAMES, cfg.DATASETS.NI_AS_TI)[1]


def eval_settings(cfg: CfgNode) -> list[str]:
    """The settings that training's evaluation and test_net.py score: `TEST.MISS` for MODEL.SPECTRA and the data set."""
    return settings_for(cfg.TEST.MISS, cfg.MODEL.SPECTRA, spectrum_copies(cfg))


def eval_pairs(cfg: CfgNode, model: nn.Module | None = None) -> list[CrossPair]:
    """The `TEST.CROSS` pairs of ``model`` (default: of MODEL.SPECTRA, unchecked) on the configured data set (see
    :func:`cross_pairs`)."""
    if model is None:
        return parse_cross(cfg.TEST.CROSS, cfg.MODEL.SPECTRA, spectrum_copies(cfg)) if cfg.TEST.CROSS else []
    return cross_pairs(cfg.TEST.CROSS, model, spectrum_copies(cfg))


def cross_pairs(cross: str | Sequence[str], model: nn.Module | None = None, copies: Mapping[str, str] | None = None
                ) -> list[CrossPair]:
    """`TEST.CROSS` value -> its pairs ([] when off). With ``model``: spectra outside ``model.spectra`` and, for a
    model without CRM, pairs of disjoint sides are errors (see :func:`utils.spectra.cross_refusal`). A slot holding a
    copy (``copies``) stays on its source's side."""
    if not cross:
        return []
    if model is None:
        return parse_cross(cross, SPECTRA, copies)
    model = getattr(model, "module", model)
    try:
        pairs = parse_cross(cross, model.spectra, copies)
    except ValueError as err:
        raise ValueError(f"TEST.CROSS = {cross!r} for a model of spectra {list(model.spectra)}: {err}") from None
    for pair in pairs:
        problem = cross_refusal(pair, has_crm=bool(getattr(model, "fills_missing", False)))
        if problem:
            raise ValueError(f"TEST.CROSS: {problem}")
    return pairs


def extraction_settings(settings: Sequence[str], pairs: Sequence[CrossPair] = ()) -> list[str]:
    """The settings one pass extracts: ``settings`` (the `TEST.MISS` ones, first, in order), then each cross side's
    setting not among them."""
    out = list(settings)
    out += [s for s in cross_sides(list(pairs)) if s not in out]
    return out


@dataclass
class ExtractedFeatures:
    feats: dict[str, torch.Tensor]  # setting -> [N, F] float32 on CPU, in loader order (query then gallery)
    pids: np.ndarray
    camids: np.ndarray
    sceneids: np.ndarray
    names: list[str]
    seconds: float


def eval_amp(cfg: CfgNode, device: torch.device) -> bool:
    """Whether test features are computed under autocast: ``TEST.AMP`` on a CUDA device (``SOLVER.AMP`` is for
    training only; the original evaluates in fp32)."""
    return bool(cfg.TEST.AMP) and device.type == "cuda"


def _autocast(device: torch.device, amp: bool, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=amp)  # the callers decide for CPU (SOLVER.AMP_CPU)


def _rank_batches(loader: DataLoader, rank: int, world: int):
    """(batch index, batch) of every world-th batch starting at ``rank``; only those samples are decoded."""
    if world == 1:
        yield from enumerate(loader)
        return
    n, size = len(loader.dataset), loader.batch_size
    mine = list(range(rank, math.ceil(n / size), world))
    sharded = DataLoader(loader.dataset, batch_sampler=[list(range(b * size, min((b + 1) * size, n))) for b in mine],
                         num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
    yield from zip(mine, sharded)


def missing_by_setting(model: nn.Module, settings: Sequence[str]) -> dict[str, frozenset[str]]:
    """Setting -> the model's spectra it removes; a setting that removes all of them is an error."""
    used = set(model.spectra)
    missing = {s: frozenset(missing_spectra(s) & used) for s in settings}
    for name, m in missing.items():
        if used <= m:
            raise ValueError(f"TEST.MISS setting {name!r} removes every spectrum the model uses ({sorted(used)})")
    return missing


def needed_spectra(model: nn.Module, missing: dict[str, frozenset[str]]) -> list[str]:
    """Spectra whose backbone some setting needs, in model order; the others are never decoded nor run."""
    return [s for s in model.spectra if any(s not in m for m in missing.values())]


def batch_features(model: nn.Module, batch: dict, device: torch.device, missing: dict[str, frozenset[str]],
                   amp: bool = False, amp_dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Test features (float32, CPU) of one batch for every setting: each needed backbone runs once, CRM
    reconstructions are shared by the settings."""
    images = {s: batch["images"][s].to(device, non_blocking=True) for s in needed_spectra(model, missing)}
    cams = batch["camid"].to(device, non_blocking=True)
    out = {}
    with _autocast(device, amp, amp_dtype):
        tokens = model.backbone_tokens(images, cams)
        cache: dict = {}  # CRM reconstructions shared by the settings of this batch
        for name, m in missing.items():
            available = {s: t for s, t in tokens.items() if s not in m}
            out[name] = model.features_from_tokens(available, set(m), cache, cams=cams).float().cpu()
    return out


@torch.no_grad()
def extract_features(model: nn.Module, loader: DataLoader, device: torch.device, settings: Sequence[str],
                     amp: bool = False, amp_dtype: torch.dtype = torch.float16,
                     check_stop: Callable[[], None] | None = None) -> ExtractedFeatures:
    """Test features of every setting for the whole loader. Under torchrun each rank takes every world-th batch
    and rank 0 receives everything, in loader order. ``check_stop`` is called before each batch that every rank
    has (it may raise to abandon the extraction, as training's stop does; under torchrun it must agree across
    ranks)."""
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    missing = missing_by_setting(model, settings)
    rank, world = du.get_rank(), du.get_world_size()
    start = time.perf_counter()
    feats: dict[str, list[torch.Tensor]] = {s: [] for s in settings}
    order: list[int] = []
    pids, camids, sceneids, names = [], [], [], []
    common = len(loader) // world  # batches every rank takes: a collective in check_stop never waits on a rank
    for k, (batch_index, batch) in enumerate(_rank_batches(loader, rank, world)):
        if check_stop is not None and k < common:
            check_stop()
        order.append(batch_index)
        for name, f in batch_features(model, batch, device, missing, amp, amp_dtype).items():
            feats[name].append(f)
        pids.append(batch["pid"].numpy())
        camids.append(batch["camid"].numpy())
        sceneids.append(batch["sceneid"].numpy())
        names.extend(batch["name"])
    if was_training:
        model.train()
    local = (order, {s: torch.cat(v) if v else torch.empty(0) for s, v in feats.items()}, pids, camids, sceneids, names)
    if du.is_distributed():
        gathered = du.all_gather_object(local)
        by_batch: dict[int, tuple] = {}
        for o, f, p, c, sc, n in gathered:
            sizes = [len(x) for x in p]
            offsets = np.cumsum([0] + sizes)
            for k, b in enumerate(o):
                by_batch[b] = ({s: f[s][offsets[k]:offsets[k + 1]] for s in settings}, p[k], c[k], sc[k],
                               n[offsets[k]:offsets[k + 1]])
        ordered = [by_batch[b] for b in sorted(by_batch)]
        out_feats = {s: torch.cat([x[0][s] for x in ordered]) for s in settings}
        pids = [x[1] for x in ordered]
        camids = [x[2] for x in ordered]
        sceneids = [x[3] for x in ordered]
        names = [name for x in ordered for name in x[4]]
    else:
        out_feats = local[1]
    return ExtractedFeatures(out_feats, np.concatenate(pids), np.concatenate(camids), np.concatenate(sceneids),
                             names, time.perf_counter() - start)


def score(extracted: ExtractedFeatures, num_query: int, junk_key: str, cfg: CfgNode, settings: Sequence[str],
          pairs: Sequence[CrossPair] = ()) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """(metrics per `TEST.MISS` setting, metrics per `TEST.CROSS` pair; {} without pairs) of one extraction, with
    ``TEST.FEAT_NORM`` and ``TEST.RE_RANKING``: what training's evaluation and test_net.py report."""
    results = evaluate_settings(extracted, num_query, junk_key, cfg.TEST.FEAT_NORM, cfg.TEST.RE_RANKING, settings)
    cross = evaluate_cross(extracted, num_query, junk_key, pairs, cfg.TEST.FEAT_NORM,
                           cfg.TEST.RE_RANKING) if pairs else {}
    return results, cross


def write_results(path: str, results: dict[str, dict[str, float]], cfg: CfgNode, checkpoint: str, epoch: int | None,
                  device: torch.device, cross: dict[str, dict[str, float]] | None = None,
                  source: str = "test") -> None:
    """``results.json``: metrics per setting (``"settings"``) and, when given, per cross-spectral pair
    (``"cross"``: ``{"RGB->TI": {"mAP", "Rank-1", ...}}``), with what produced them (``"source"``: ``training``
    for a run's own evaluation, ``test`` for test_net.py; checkpoint, epoch, config, commit, versions, device)."""
    obj: dict = {"settings": results, "source": source}
    if cross:
        obj["cross"] = cross
    obj.update({"checkpoint": checkpoint, "epoch": epoch, "config": cfg.dump(), "commit": git_commit(),
                "versions": versions(), "device": device_description(device)})
    write_json(path, obj)
