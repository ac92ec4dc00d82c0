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
the project's set aside in ``sys.modules``, then the project's are put back.

:func:`bench_device_section` is section ``demo`` of ``benchmarks/run.py`` (run by ``benchmarks/device_check.sh``):
DeMo alone on the GPU, as sections ``cuda`` and ``eval`` measure TOP-ReID (see ``benchmarks/bench_gpu.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import logging
import os
import platform
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from configs import load_config  # noqa: E402
from loss import build_loss  # noqa: E402
from modeling import build_model  # noqa: E402
from modeling.methods.demo_convert import convert_demo_state_dict  # noqa: E402
from processor.inference import batch_features, missing_by_setting  # noqa: E402
from solver import build_optimizer  # noqa: E402
from utils.spectra import MISS_SETTINGS, SPECTRA  # noqa: E402

logger = logging.getLogger(__name__)

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


class MissingOriginal(SystemExit):
    """The original code is not where --original says (or was not given)."""


# ----------------------------------------------------------------------------------------------------------------------
# The original code in this process.

def check_original(path: str | None) -> Path:
    """``path`` as a checkout of the original DeMo code; exits with a one-line message otherwise."""
    if not path:
        raise MissingOriginal("bench_demo.py: --original PATH is required: a checkout of the original DeMo code "
                              "(github.com/924973292/DeMo); this benchmark downloads nothing")
    root = Path(path).resolve()
    needed = ("modeling/make_model.py", "layers/make_loss.py", "solver/make_optimizer.py", "config/defaults.py",
              "configs/RGBNT201/DeMo.yml")
    absent = [n for n in needed if not (root / n).is_file()]
    if absent:
        raise MissingOriginal(f"bench_demo.py: --original {path} is not a checkout of the original DeMo code (no "
                              f"{', '.join(absent)})")
    return root


def _is_shared(name: str) -> bool:
    return name.split(".", 1)[0] in SHARED_NAMES


def _stand_in(name: str, attributes: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType(name, f"stand-in for {name}, which is not installed (bench_demo.py)")

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{name} is not installed; bench_demo.py stands in an empty module for it")

    for key, value in attributes.items():
        setattr(module, key, unavailable if value is None else value)
    return module


@contextlib.contextmanager
def original_import_path(root: Path) -> Iterator[None]:
    """While inside: the original's packages import by their own names (the project's modules of the same names set
    aside in ``sys.modules``, stand-ins for the uninstalled packages the original only imports). On leaving, the
    project's modules are back; the original's stay reachable through the objects imported inside."""
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _is_shared(k)}
    stand_ins = [name for name in STAND_INS if importlib.util.find_spec(name.split(".", 1)[0]) is None]
    for name in stand_ins:
        sys.modules[name] = _stand_in(name, STAND_INS[name])
    path, cwd = list(sys.path), os.getcwd()
    # The project's folder leaves the path too: the original's solver/ and utils/ have no __init__.py, and a regular
    # package of the same name anywhere on the path would be found before them. The working directory is the
    # original's (one of its modules appends "." to the path).
    sys.path[:] = [str(root)] + [p for p in path if Path(p or ".").resolve() != ROOT]
    os.chdir(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's deprecated import paths in the original
            yield
    finally:
        os.chdir(cwd)
        sys.path[:] = path
        for name in [k for k in sys.modules if _is_shared(k)] + stand_ins:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


class CudaCalls:
    """While inside: ``Tensor.cuda`` and ``Module.cuda`` return their object, and ``Tensor.to`` / ``Module.to`` drop
    a CUDA device argument (the original's CUDA calls on a machine without CUDA). ``hits`` counts the neutralised calls
    by kind."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self._saved: dict[tuple[type, str], Any] = {}

    def _count(self, what: str) -> None:
        self.hits[what] = self.hits.get(what, 0) + 1

    @staticmethod
    def _is_cuda(value: Any) -> bool:
        return (isinstance(value, str) and value.startswith("cuda")) or (
            isinstance(value, torch.device) and value.type == "cuda")

    def __enter__(self) -> CudaCalls:
        tensor_to, module_to = torch.Tensor.to, nn.Module.to

        def tensor_cuda(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            self._count("Tensor.cuda()")
            return tensor

        def module_cuda(module: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
            self._count("Module.cuda()")
            return module

        def without_cuda(kind: str, call: Callable, obj: Any, args: tuple, kwargs: dict) -> Any:
            if any(self._is_cuda(a) for a in args) or self._is_cuda(kwargs.get("device")):
                self._count(f"{kind}.to(cuda)")
                args = tuple(a for a in args if not self._is_cuda(a))
                kwargs = {k: v for k, v in kwargs.items() if not (k == "device" and self._is_cuda(v))}
                if not args and not kwargs:
                    return obj
            return call(obj, *args, **kwargs)

        patches = {(torch.Tensor, "cuda"): tensor_cuda, (nn.Module, "cuda"): module_cuda,
                   (torch.Tensor, "to"): lambda t, *a, **k: without_cuda("Tensor", tensor_to, t, a, k),
                   (nn.Module, "to"): lambda m, *a, **k: without_cuda("Module", module_to, m, a, k)}
        for (owner, name), patch in patches.items():
            self._saved[(owner, name)] = owner.__dict__.get(name)  # None: inherited (Tensor.cuda is TensorBase's)
            setattr(owner, name, patch)
        return self

    def __exit__(self, *exc: Any) -> None:
        for (owner, name), original in self._saved.items():
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()


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

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synthetic_batch(batch: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Normalised-image-like inputs of the three spectra, identities in P x K (K = 4), cameras in turn."""
    g = torch.Generator().manual_seed(seed)
    images = {s: torch.randn(batch, 3, *SIZE, generator=g) for s in SPECTRA}
    return images, torch.arange(batch) // PER_ID, torch.arange(batch) % NUM_CAMERAS


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

    wall: dict[str, dict[str, list[float]]] = {k: {"original": [], "project": []} for k in ("train", "test")}
    cpu: dict[str, dict[str, list[float]]] = {k: {"original": [], "project": []} for k in ("train", "test")}
    loads: list[tuple[float, float, float]] = []
    for r in range(repeats):
        order = (original, project) if r % 2 == 0 else (project, original)
        loads.append(os.getloadavg())
        for kind in ("train", "test"):
            for side in order:
                t, c = time.perf_counter(), time.process_time()
                if kind == "train":
                    side.train_step(images, pids, cams)
                else:
                    side.features(images, cams)
                wall[kind][side.name].append(time.perf_counter() - t)
                cpu[kind][side.name].append(time.process_time() - c)
        log(f"round {r + 1}/{repeats} (load {loads[-1][0]:.2f}): " + ", ".join(
            f"{kind} {name} {v[-1]:.2f} s" for kind, sides in wall.items() for name, v in sides.items()))
    loads.append(os.getloadavg())

    figures: dict[str, Any] = {}
    for kind, sides in wall.items():
        entry: dict[str, Any] = {}
        for name, seconds in sides.items():
            entry[name] = {"seconds": seconds, "cpu_seconds": cpu[kind][name],
                           "best_samples_per_s": batch / min(seconds),
                           "median_samples_per_s": batch / statistics.median(seconds)}
        entry["ratio_best"] = entry["project"]["best_samples_per_s"] / entry["original"]["best_samples_per_s"]
        entry["ratio_median"] = entry["project"]["median_samples_per_s"] / entry["original"]["median_samples_per_s"]
        # The two sides of a round ran one after the other, under about the same load: their ratio is the least
        # disturbed by other work on the machine.
        entry["ratio_per_round"] = [o / p for o, p in zip(sides["original"], sides["project"])]
        entry["ratio_median_of_rounds"] = statistics.median(entry["ratio_per_round"])
        entry["ratio_best_cpu_time"] = min(cpu[kind]["original"]) / min(cpu[kind]["project"])
        figures[kind] = entry
    return {"backbone": backbone, "original_transformer_type": ORIGINAL_TYPES[backbone], "config": CONFIGS[backbone],
            "batch": batch, "size": list(SIZE), "repeats": repeats, "threads": threads, "settings": len(MISS_SETTINGS),
            "parameters": params, "max_feature_difference": max(difference.values()),
            "feature_difference": difference, "neutralised_cuda_calls": dict(cuda.hits),
            "load_average_per_round": loads, "build_s": build_s, "torch": torch.__version__, "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), **figures}


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"DeMo vs the original code, CPU ({r['cpu']}, {r['threads']} threads, torch {r['torch']}), "
             f"{r['backbone']} backbone, batch {r['batch']} at {r['size'][0]}x{r['size'][1]}, {r['repeats']} "
             f"alternated rounds; load average {min(x[0] for x in r['load_average_per_round']):.2f}-"
             f"{max(x[0] for x in r['load_average_per_round']):.2f}"]
    for kind, what in (("train", "training step"), ("test", f"test features, {r['settings']} settings")):
        f = r[kind]
        rounds = ", ".join(f"{x:.2f}" for x in f["ratio_per_round"])
        lines.append(f"  {what}: project {f['project']['best_samples_per_s']:.2f} samples/s (median "
                     f"{f['project']['median_samples_per_s']:.2f}), original {f['original']['best_samples_per_s']:.2f} "
                     f"(median {f['original']['median_samples_per_s']:.2f}): {f['ratio_best']:.2f}x best, "
                     f"{f['ratio_median']:.2f}x median; per round {rounds} (median "
                     f"{f['ratio_median_of_rounds']:.2f}x); process CPU time, best: {f['ratio_best_cpu_time']:.2f}x")
    lines.append(f"  features equal to the original's within {r['max_feature_difference']:.1e}; original's CUDA calls "
                 f"neutralised: {r['neutralised_cuda_calls']}")
    return lines


# ----------------------------------------------------------------------------------------------------------------------
# On the device (section ``demo`` of benchmarks/run.py).

def _demo_cfg(size: tuple[int, int], *extra: str):
    h, w = size
    return load_config(str(ROOT / CONFIGS["clip"]), ["MODEL.PRETRAIN_CHOICE", "none", "INPUT.SIZE_TRAIN", f"[{h},{w}]",
                                                     "INPUT.SIZE_TEST", f"[{h},{w}]", *extra])


def _time_device_step(mode: str, size: tuple[int, int], batch: int, steps: int, warmup: int, device: torch.device,
                      peak: float | None, flops: float | None) -> dict[str, Any]:
    """DeMo's train step (configs/RGBNT201/DeMo.yml, CLIP ViT-B/16) in one precision mode, as
    ``bench_gpu._time_train_step`` times TOP-ReID's: ``warmup`` untimed steps, then ``steps`` timed ones."""
    from benchmarks.bench_gpu import _compile_options, _step_flops, _sync
    from modeling.compile import compile_blocks
    from solver import optimizer_kernel

    torch.manual_seed(0)
    cfg = _demo_cfg(size)
    model = build_model(cfg, NUM_CLASSES, NUM_CAMERAS).to(device).train()
    if flops is None:
        try:
            flops = _step_flops(model, size, device)
        except Exception as err:  # the timing goes on without MFU
            logger.warning("DeMo FLOP count failed (%s: %s); MFU not reported", type(err).__name__, err)
            flops = 0.0
        model.train()
    compiled = compile_blocks(model, **_compile_options(device)) if mode.endswith("compile") else 0
    loss_fn, opt = build_loss(cfg, NUM_CLASSES), build_optimizer(cfg, model)
    g = torch.Generator(device=device).manual_seed(0)
    images = {s: torch.randn(batch, 3, *size, device=device, generator=g) for s in model.spectra}
    pids = torch.arange(batch, device=device) // max(2, batch // 8)  # 8 identities per batch
    cams = torch.arange(batch, device=device) % NUM_CAMERAS
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            first_steps_s, start = time.perf_counter() - start, time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode != "fp32"):
            loss, _ = loss_fn(model(images, cams), pids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    rate = batch * steps / (time.perf_counter() - start)
    return {"samples_per_s": rate, "flops_per_sample": flops, "mfu": rate * flops / peak if peak and flops else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "warmup_s": first_steps_s, "optimizer": optimizer_kernel(opt), "compiled_blocks": compiled,
            "loss": float(loss.detach())}


def _device_eval(size: tuple[int, int], num_query: int, num_gallery: int, batch: int,
                 device: torch.device) -> dict[str, Any]:
    """The seven-setting table of DeMo on a synthetic test set held in memory, as ``bench_gpu.bench_eval`` measures
    TOP-ReID's: feature extraction (bf16 on CUDA, compiled blocks) and the rank metrics, timed apart, after a
    warm-up pass that compiles."""
    from benchmarks.bench_gpu import time_table

    torch.manual_seed(0)
    model = build_model(_demo_cfg(size), num_classes=50, camera_num=8).to(device).eval()
    return time_table(model, device, size, num_query, num_gallery, batch)


def bench_device_section(smoke: bool = False, steps: int = 10, warmup: int = 3,
                         measured: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """DeMo with CLIP ViT-B/16 (configs/RGBNT201/DeMo.yml) on the device: the train step at batch 128, 256x128, in
    the precision modes of the ``cuda`` section, then the seven-setting table on a 1,715 x 8,575 synthetic test set
    (a part that fails is recorded with its error and the others go on). ``measured(results so far)`` is called
    after each part. ``smoke``: tiny sizes, any device."""
    from benchmarks.bench_gpu import MODES, SMOKE, _sync, bench_device, device_name, peak_bf16_flops

    device = bench_device()
    name = device_name(device)
    size, batch = (SMOKE["size"], SMOKE["batch"]) if smoke else ((256, 128), 128)
    steps, warmup = (2, 1) if smoke else (steps, warmup)
    peak = peak_bf16_flops(name) if device.type == "cuda" else None
    backbone = _demo_cfg(size).MODEL.TRANSFORMER_TYPE
    out: dict[str, Any] = {"device": name, "method": "DeMo", "backbone": backbone, "config": CONFIGS["clip"],
                           "batch": batch, "size": list(size), "steps": steps, "peak_bf16_flops": peak, "smoke": smoke,
                           "train": {}}
    flops = None
    for mode in MODES:
        try:
            out["train"][mode] = _time_device_step(mode, size, batch, steps, warmup, device, peak, flops)
            flops = out["train"][mode]["flops_per_sample"]
        except Exception as err:  # recorded in the results; the other modes still run
            out["train"][mode] = {"error": " ".join(f"{type(err).__name__}: {err}".split())[:500]}
        finally:
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if measured is not None:
            measured(out)
    try:
        out["eval"] = _device_eval(size, *((24, 48, 8) if smoke else (1715, 8575, 256)), device)
    except Exception as err:
        out["eval"] = {"error": " ".join(f"{type(err).__name__}: {err}".split())[:500]}
    _sync(device)
    if measured is not None:
        measured(out)
    return out


def device_section_lines(r: dict[str, Any]) -> list[str]:
    """The figure lines of :func:`bench_device_section`, worded as the ``cuda`` and ``eval`` sections' lines."""
    from benchmarks.bench_gpu import MODES

    what = f"{r['device']} DeMo {r['backbone']}"
    lines = []
    for mode in [m for m in MODES if m in r["train"]]:
        m = r["train"][mode]
        if "error" in m:
            lines.append(f"train step {what} {mode}: FAILED ({m['error']})")
            continue
        mfu = f"MFU {m['mfu']:.1%}" if m["mfu"] is not None else "MFU n/a"
        mem = f"peak {m['peak_memory_gib']:.1f} GiB" if m["peak_memory_gib"] is not None else "peak memory n/a"
        lines.append(f"train step {what} {mode}: {m['samples_per_s']:.1f} samples/s at batch {r['batch']} "
                     f"{r['size'][0]}x{r['size'][1]}, {mfu}, {mem}, warm-up {m['warmup_s']:.1f} s, "
                     f"{m['optimizer']} optimiser step")
    e = r.get("eval")
    if e is not None:
        lines.append(f"evaluation {what}: FAILED ({e['error']})" if "error" in e else
                     f"evaluation {what}: {e['settings']} settings on {e['query']} x {e['gallery']} (in-memory images, "
                     f"batch {e['batch']}, bf16={e['bf16']}, compiled blocks): features {e['features_s']:.1f} s + "
                     f"metrics {e['metrics_s']:.1f} s = {e['total_s']:.1f} s (compile warm-up {e['warmup_s']:.1f} s)")
    return lines


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
