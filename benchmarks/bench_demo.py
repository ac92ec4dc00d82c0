"""DeMo (``MODEL.META_ARCHITECTURE DeMo``) against the original DeMo code on CPU, side by side in one process.

    .venv/bin/python benchmarks/bench_demo.py --original PATH [--backbone clip|vit] [--batch 8] [--repeats 3]
                                              [--threads 2] [--output FILE.json]

``--original`` is a checkout of the original code (github.com/924973292/DeMo, e.g. ``git clone``); nothing is
downloaded. Both models are built at 256x128 with the architecture of ``configs/RGBNT201/DeMo.yml`` (``--backbone
clip``; ``vit``: ``DeMo-ViT.yml``) and of the original's ``configs/RGBNT201/DeMo.yml`` over its config defaults, and
hold the same weights: the original's random initial weights, loaded into this project's model through its key map for
original checkpoints. The features of the seven settings are compared once before timing (the largest difference is
reported). Then, after a warm-up, over ``--repeats`` rounds that alternate which side goes first:

- train: one training step, forward, losses, backward and optimiser step, on one batch (P x K = batch / 4 x 4). The
  original: its model, the loss of its ``layers/make_loss.py`` on each (score, feature) pair plus its MoE loss, and
  the Adam of its ``solver/make_optimizer.py`` (one parameter group per parameter), as its train loop steps them on a
  machine without CUDA (its CUDA autocast and gradient scaler do nothing there). This project: the Trainer's step
  (the model, ``loss.build_loss``, ``solver.build_optimizer``; autocast off on CPU).
- test: the test features of one batch for all seven missing-spectrum settings. The original runs its model once per
  setting (the missing spectra as zero images; ``return_pattern`` 3, as its test script); this project runs
  ``processor.inference.batch_features`` (the backbone once over the three spectra, a zero image once per camera).

samples/s = batch / seconds of the step (train) or of the seven settings (test), best and median of the rounds; the
ratio is this project's rate over the original's. The load average is recorded with every round.

What the original needs that a CPU machine lacks: while it is built and run, ``Tensor.cuda`` and ``Module.cuda``
return their object and ``.to`` leaves a tensor or module on the CPU when asked for CUDA (its ``clip_model.to("cuda")``
and the ``targets.cuda()`` of its label-smoothing loss; the calls are counted and reported). Its CLIP loader reads a
fixed path to OpenAI's ``ViT-B-16.pt``: it is given a state dict of ViT-B/16's shapes and random values instead (the
text tower, which DeMo drops, at the smallest size its builder accepts), and its ImageNet ViT's ``load_param`` (for
``vit``) keeps the random initialisation. Packages its imports name but the measured code never runs (fvcore's FLOP
counter; ftfy and regex of the CLIP text tokenizer) are stood in by empty modules when they are not installed. The
original's packages share names with this project's (``modeling``, ``layers``, ``solver``...): they are imported with
the project's set aside in ``sys.modules``, then the project's are put back (``benchmarks/original_code.py``, shared
with ``bench_editor.py``).

:func:`bench_device_section` is section ``demo`` of ``benchmarks/run.py`` (run by ``benchmarks/device_check.sh``):
DeMo alone on the GPU, as sections ``cuda`` and ``eval`` measure TOP-ReID (see ``benchmarks/method_device.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import method_device  # noqa: E402
from benchmarks.original_code import (  # noqa: E402, F401 (CudaCalls, MissingOriginal, cpu_model: this module's API)
    CudaCalls,
    MissingOriginal,
    alternate_rounds,
    check_checkout,
    comparison_lines,
    cpu_model,
    load_range,
    machine_figures,
    round_figures,
)
from benchmarks.original_code import original_import_path as _original_import_path  # noqa: E402
from benchmarks.original_code import synthetic_batch as _synthetic_batch  # noqa: E402
from configs import load_config  # noqa: E402
from loss import build_loss  # noqa: E402
from modeling import build_model  # noqa: E402
from modeling.methods.demo_convert import convert_demo_state_dict  # noqa: E402
from processor.inference import batch_features, missing_by_setting  # noqa: E402
from solver import build_optimizer  # noqa: E402
from utils.spectra import MISS_SETTINGS, SPECTRA  # noqa: E402

CONFIGS = {"clip": "configs/RGBNT201/DeMo.yml", "vit": "configs/RGBNT201/DeMo-ViT.yml"}
ORIGINAL_TYPES = {"clip": "ViT-B-16", "vit": "vit_base_patch16_224"}  # the original's MODEL.TRANSFORMER_TYPE
SIZE = (256, 128)
NUM_CLASSES, NUM_CAMERAS, PER_ID = 171, 4, 4  # RGBNT201's training identities and cameras; K of the P x K batch
# Top-level packages of the original code whose names this project uses too.
SHARED_NAMES = ("config", "data", "engine", "layers", "modeling", "solver", "utils")
# Imported by the original's modules at import time but never run by the measured code.
STAND_INS = {"fvcore": {}, "fvcore.nn": {"flop_count": None},
             "fvcore.nn.jit_handles": {"elementwise_flop_counter": None},
             "ftfy": {}, "regex": {"IGNORECASE": 2, "compile": lambda pattern, flags=0: None}}


# ----------------------------------------------------------------------------------------------------------------------
# The original code in this process.

def check_original(path: str | None) -> Path:
    """``path`` as a checkout of the original DeMo code; exits with a one-line message otherwise."""
    return check_checkout(path, ("modeling/make_model.py", "layers/make_loss.py", "solver/make_optimizer.py",
                                 "config/defaults.py", "configs/RGBNT201/DeMo.yml"),
                          "bench_demo.py", "DeMo code (github.com/924973292/DeMo)")


@contextlib.contextmanager
def original_import_path(root: Path) -> Iterator[None]:
    """While inside: the original's packages import by their own names (the project's modules of the same names set
    aside in ``sys.modules``, stand-ins for the uninstalled packages the original only imports). On leaving, the
    project's modules are back; the original's stay reachable through the objects imported inside."""
    with _original_import_path(root, STAND_INS, "bench_demo.py", SHARED_NAMES):
        yield


def import_original(root: Path) -> types.SimpleNamespace:
    """The original's config defaults, ``make_model``, ``make_loss``, ``make_optimizer`` and the modules whose
    loaders get a stand-in (the CLIP builder, the ImageNet ViT)."""
    with original_import_path(root), contextlib.redirect_stdout(io.StringIO()):
        config = importlib.import_module("config")
        make_model = importlib.import_module("modeling.make_model")
        meta_arch = importlib.import_module("modeling.meta_arch")
        clip_model = importlib.import_module("modeling.clip.model")
        vit = importlib.import_module("modeling.backbones.vit_pytorch")
        make_loss = importlib.import_module("layers.make_loss")
        make_optimizer = importlib.import_module("solver.make_optimizer")
    return types.SimpleNamespace(root=root, cfg=config.cfg, make_model=make_model.make_model, meta_arch=meta_arch,
                                 clip_model=clip_model, vit=vit, make_loss=make_loss.make_loss,
                                 make_optimizer=make_optimizer.make_optimizer)


def clip_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """What the original's CLIP builder reads from OpenAI's ViT-B-16.pt, with random values: the shapes that size the
    image tower (width 768, 12 layers, 16x16 patches, 14x14 position table, projection to 512) and the text tower at the
    smallest size the builder accepts (one layer, one-token vocabulary), which DeMo drops."""
    g = torch.Generator().manual_seed(seed)
    width, layers, embed, text_width = 768, 12, 512, 512

    def rand(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    state = {"visual.conv1.weight": rand(width, 3, 16, 16), "visual.class_embedding": rand(width, std=width ** -0.5),
             "visual.positional_embedding": rand(14 * 14 + 1, width, std=width ** -0.5),
             "visual.proj": rand(width, embed, std=width ** -0.5),
             "text_projection": rand(text_width, embed), "positional_embedding": rand(77, text_width),
             "token_embedding.weight": rand(1, text_width), "ln_final.weight": torch.ones(text_width),
             "transformer.resblocks.0.attn.in_proj_weight": rand(3 * text_width, text_width)}
    for i in range(layers):
        state[f"visual.transformer.resblocks.{i}.attn.in_proj_weight"] = rand(3 * width, width, std=width ** -0.5)
    return state


def original_cfg(original: types.SimpleNamespace, backbone: str, batch: int) -> Any:
    """The original's config: its defaults, its configs/RGBNT201/DeMo.yml, the backbone, the batch and the CPU."""
    cfg = original.cfg.clone()
    cfg.defrost()
    cfg.merge_from_file(str(original.root / "configs" / "RGBNT201" / "DeMo.yml"))
    cfg.merge_from_list(["MODEL.TRANSFORMER_TYPE", ORIGINAL_TYPES[backbone], "MODEL.DEVICE", "cpu",
                         "SOLVER.IMS_PER_BATCH", batch, "DATALOADER.NUM_INSTANCE", PER_ID])
    cfg.freeze()
    return cfg


def build_original(original: types.SimpleNamespace, cfg: Any, cuda: CudaCalls) -> nn.Module:
    """The original's DeMo from ``make_model``; its pretrained-weight loaders replaced as the module docstring says."""

    def load_clip_to_cpu(cfg: Any, backbone_name: str, h_resolution: int, w_resolution: int,
                         vision_stride_size: Any) -> nn.Module:
        return original.clip_model.build_model(cfg, clip_state_dict(), h_resolution, w_resolution, vision_stride_size)

    saved = original.meta_arch.load_clip_to_cpu, original.vit.Trans.load_param
    original.meta_arch.load_clip_to_cpu = load_clip_to_cpu
    original.vit.Trans.load_param = lambda self, path: None
    try:
        with cuda, contextlib.redirect_stdout(io.StringIO()):
            torch.manual_seed(0)
            return original.make_model(cfg, num_class=NUM_CLASSES, camera_num=NUM_CAMERAS, view_num=0)
    finally:
        original.meta_arch.load_clip_to_cpu, original.vit.Trans.load_param = saved


# ----------------------------------------------------------------------------------------------------------------------
# The two sides: one training step, the seven settings of one batch.

class OriginalSide:
    name = "original"

    def __init__(self, original: types.SimpleNamespace, cfg: Any, cuda: CudaCalls) -> None:
        self.cuda = cuda
        self.model = build_original(original, cfg, cuda)
        with cuda, contextlib.redirect_stdout(io.StringIO()):
            self.loss_fn, center = original.make_loss(cfg, num_classes=NUM_CLASSES)
            self.optimizer, self.optimizer_center = original.make_optimizer(cfg, self.model, center)

    def train_step(self, images: dict[str, torch.Tensor], pids: torch.Tensor, cams: torch.Tensor) -> float:
        """The body of the original's training loop for one batch, without its meters and logging."""
        self.model.train()
        with self.cuda:
            self.optimizer.zero_grad()
            self.optimizer_center.zero_grad()
            views = torch.zeros_like(cams)
            output = self.model(dict(images), label=pids, cam_label=cams, view_label=views)
            pairs = len(output) - len(output) % 2  # (score, feature) pairs, then the MoE loss when the length is odd
            loss = sum(self.loss_fn(score=output[i], feat=output[i + 1], target=pids, target_cam=cams)
                       for i in range(0, pairs, 2))
            if len(output) % 2:
                loss = loss + output[-1]
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def features(self, images: dict[str, torch.Tensor], cams: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward per setting, the missing spectra zero-filled by the model (its ``miss_type``)."""
        self.model.eval()
        views = torch.zeros_like(cams)
        out = {}
        with self.cuda:
            for setting in MISS_SETTINGS:
                self.model.miss_type = setting
                out[setting] = self.model(dict(images), cam_label=cams, view_label=views, return_pattern=3)
        return out


class ProjectSide:
    name = "project"

    def __init__(self, backbone: str, original_model: nn.Module) -> None:
        self.cfg = load_config(str(ROOT / CONFIGS[backbone]), ["MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu"])
        self.model = build_model(self.cfg, NUM_CLASSES, NUM_CAMERAS)
        self.model.load_state_dict(convert_demo_state_dict(original_model.state_dict()), strict=True)
        self.loss_fn = build_loss(self.cfg, NUM_CLASSES)
        self.optimizer = build_optimizer(self.cfg, self.model)
        self.missing = missing_by_setting(self.model, MISS_SETTINGS)

    def train_step(self, images: dict[str, torch.Tensor], pids: torch.Tensor, cams: torch.Tensor) -> float:
        """``processor.trainer.Trainer.run_step`` on CPU (no autocast, the gradient scaler disabled)."""
        self.model.train()
        loss, _ = self.loss_fn(self.model(images, cams), pids)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.SOLVER.GRAD_CLIP > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.SOLVER.GRAD_CLIP)
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def features(self, images: dict[str, torch.Tensor], cams: torch.Tensor) -> dict[str, torch.Tensor]:
        """``batch_features`` of the seven settings, under ``no_grad`` as ``extract_features`` runs it."""
        self.model.eval()
        return batch_features(self.model, {"images": images, "camid": cams}, torch.device("cpu"), self.missing)


# ----------------------------------------------------------------------------------------------------------------------
# Measuring.

def synthetic_batch(batch: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Normalised-image-like inputs of the three spectra, identities in P x K (K = 4), cameras in turn."""
    return _synthetic_batch(batch, SIZE, SPECTRA, PER_ID, NUM_CAMERAS, seed)


def run(original_root: Path, backbone: str = "clip", batch: int = 8, repeats: int = 3, threads: int = 2,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build both sides, compare their features, then time them alternately; the figures as a dict."""
    log = log or (lambda line: print(line, flush=True))
    if batch % PER_ID or batch < 2 * PER_ID:
        raise ValueError(f"--batch {batch}: needs a multiple of {PER_ID}, at least {2 * PER_ID} (P x K, K = {PER_ID})")
    torch.set_num_threads(threads)
    cuda = CudaCalls()
    start = time.perf_counter()
    code = import_original(original_root)
    original = OriginalSide(code, original_cfg(code, backbone, batch), cuda)
    project = ProjectSide(backbone, original.model)
    build_s = time.perf_counter() - start
    images, pids, cams = synthetic_batch(batch)
    params = {s.name: sum(p.numel() for p in s.model.parameters()) for s in (original, project)}
    log(f"built both models in {build_s:.1f} s ({params['original'] / 1e6:.2f}M / {params['project'] / 1e6:.2f}M "
        f"parameters); original's CUDA calls neutralised so far: {cuda.hits}")

    # The same weights compute the same features (also the test side's warm-up).
    ours, theirs = project.features(images, cams), original.features(images, cams)
    difference = {s: float((ours[s] - theirs[s]).abs().max()) for s in MISS_SETTINGS}
    log(f"features of the seven settings, largest difference from the original: {max(difference.values()):.2e}")
    warm = {side.name: side.train_step(images, pids, cams) for side in (original, project)}
    log(f"warm-up training step: loss original {warm['original']:.4f}, project {warm['project']:.4f}")

    wall, cpu, loads = alternate_rounds(
        (original, project), {"train": lambda side: side.train_step(images, pids, cams),
                              "test": lambda side: side.features(images, cams)}, repeats, log)
    return {"backbone": backbone, "original_transformer_type": ORIGINAL_TYPES[backbone], "config": CONFIGS[backbone],
            "batch": batch, "size": list(SIZE), "repeats": repeats, "threads": threads, "settings": len(MISS_SETTINGS),
            "parameters": params, "max_feature_difference": max(difference.values()),
            "feature_difference": difference, "neutralised_cuda_calls": dict(cuda.hits),
            "load_average_per_round": loads, "build_s": build_s, **machine_figures(),
            **round_figures(wall, cpu, batch)}


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"DeMo vs the original code, CPU ({r['cpu']}, {r['threads']} threads, torch {r['torch']}), "
             f"{r['backbone']} backbone, batch {r['batch']} at {r['size'][0]}x{r['size'][1]}, {r['repeats']} "
             f"alternated rounds; load average {load_range(r)}"]
    lines += comparison_lines(r, {"train": "training step", "test": f"test features, {r['settings']} settings"})
    lines.append(f"  features equal to the original's within {r['max_feature_difference']:.1e}; original's CUDA calls "
                 f"neutralised: {r['neutralised_cuda_calls']}")
    return lines


# ----------------------------------------------------------------------------------------------------------------------
# On the device (section ``demo`` of benchmarks/run.py).

def bench_device_section(smoke: bool = False, steps: int = 10, warmup: int = 3,
                         measured: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """DeMo with CLIP ViT-B/16 (configs/RGBNT201/DeMo.yml) on the device: the train step at batch 128, 256x128, in
    the precision modes of the ``cuda`` section, then the seven-setting table on a 1,715 x 8,575 synthetic test set
    (a part that fails is recorded with its error and the others go on). ``measured(results so far)`` is called
    after each part. ``smoke``: tiny sizes, any device."""
    return method_device.bench_method_section("DeMo", CONFIGS["clip"], smoke, steps, warmup, measured)


def device_section_lines(r: dict[str, Any]) -> list[str]:
    """The figure lines of :func:`bench_device_section`, worded as the ``cuda`` and ``eval`` sections' lines."""
    return method_device.method_section_lines(r)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", metavar="PATH",
                        help="a checkout of the original DeMo code (required; nothing is downloaded)")
    parser.add_argument("--backbone", choices=sorted(CONFIGS), default="clip")
    parser.add_argument("--batch", type=int, default=8, help="samples per batch, a multiple of 4 (P x K, K = 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides")
    parser.add_argument("--output", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    root = check_original(args.original)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    result = run(root, args.backbone, args.batch, args.repeats, args.threads)
    print("\n".join(report_lines(result)))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))
        print(f"written {args.output}")


if __name__ == "__main__":
    main()
