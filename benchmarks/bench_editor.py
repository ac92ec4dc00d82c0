"""EDITOR (``MODEL.META_ARCHITECTURE EDITOR``) against the original EDITOR code on CPU, side by side in one process.

    .venv/bin/python benchmarks/bench_editor.py --original PATH [--backbone vit] [--batch 8] [--repeats 3]
                                                [--threads 2] [--output FILE.json]

``--original`` is a checkout of the original code (github.com/924973292/EDITOR, e.g. ``git clone``); nothing is
downloaded. The original's wavelet transform (its bundled ``pytorch_wavelets``) needs PyWavelets, which this project
does not: install it beside the benchmark (``.venv/bin/python -m pip install PyWavelets``); the benchmark stops with a
one-line message without it.

Both models are built at 256x128 with the architecture of ``configs/RGBNT201/EDITOR.yml`` (ViT-B/16, the only backbone
of the original's configs) and of the original's ``configs/RGBNT201/EDITOR.yml`` over its config defaults, without
pretrained weights, and hold the same weights: the original's random initial weights, loaded into this project's model
through its key map for original checkpoints (strictly), except that the original's final HMA LayerNorm gets random
affine parameters (see :func:`build_original`). The features of the seven settings are compared once before timing
(the largest difference is reported), on normal noise as inputs: with 8-bit images (normalised with mean and std
0.5), a setting that misses one spectrum gives pixels whose spectral mean is zero but for rounding, and the
frequency score counts those by the sign of the rounding error, which differs between the original's wavelet round
trip and this project's sum (the features of those settings then differ by about 2e-2 on these weights). Then, after a
warm-up, over ``--repeats`` rounds that alternate which side goes first:

- train: one training step, forward, losses, backward and optimiser step, on one batch (P x K = batch / 4 x 4). The
  original: its model (its training forward writes a scalar to a TensorBoard writer: it is given one that only
  counts), the loss of its ``layers/make_loss.py`` on each (score, feature) pair plus its BCC + OCFR loss, and the
  SGD of its ``solver/make_optimizer.py`` (one parameter group per parameter), as its train loop steps them on a
  machine without CUDA (its CUDA autocast and gradient scaler do nothing there). This project: the Trainer's step
  (the model with the batch's identities, ``loss.build_loss``, ``solver.build_optimizer``; autocast off on CPU).
- test_full: the test features of one batch with every spectrum (setting ``nothing``): the original's one forward;
  this project's ``processor.inference.batch_features`` with that setting.
- test: the test features of one batch for all seven missing-spectrum settings. The original has no missing-spectrum
  mode: it runs once per setting with the missing spectra's normalised images set to zeros (the field's zero-fill,
  which this project computes: ``eval_zerofill_*`` of the reference vectors); this project runs
  ``processor.inference.batch_features`` (the backbone once over the three spectra, a zero image once per camera).

samples/s = batch / seconds of the step (train), of the one setting (test_full) or of the seven settings (test), best
and median of the rounds; the ratio is this project's rate over the original's. The load average is recorded with
every round.

What the original needs that a CPU machine lacks (``benchmarks/original_code.py``, shared with ``bench_demo.py``):
its CUDA calls (``.cuda()`` on its wavelet modules at build, on the frequency counts, the token masks and the label
smoothing's targets in every forward) are neutralised and counted. Packages its imports name but the measured code
never runs are stood in by empty modules: its bundled ``seaborn`` (which needs pandas; the ViT file imports it for
plots) always, and ``pkg_resources`` (the wavelets' dual-tree part, unused) and matplotlib when they are not
installed. The original's packages share names with this project's (``modeling``, ``layers``, ``solver``...): they
are imported with the project's set aside in ``sys.modules``, then the project's are put back.

:func:`bench_device_section` is section ``editor`` of ``benchmarks/run.py`` (run by ``benchmarks/device_check.sh``):
EDITOR alone on the GPU, as section ``demo`` measures DeMo (see ``benchmarks/method_device.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import sys
import time
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import method_device  # noqa: E402
from benchmarks.original_code import (  # noqa: E402
    CudaCalls,
    MissingOriginal,
    alternate_rounds,
    check_checkout,
    comparison_lines,
    load_range,
    machine_figures,
    original_import_path,
    round_figures,
    synthetic_batch,
)
from configs import load_config  # noqa: E402
from loss import build_loss  # noqa: E402
from modeling import build_model  # noqa: E402
from modeling.methods.editor_convert import convert_editor_state_dict  # noqa: E402
from processor.inference import batch_features, missing_by_setting  # noqa: E402
from solver import build_optimizer  # noqa: E402
from utils.spectra import MISS_SETTINGS, SPECTRA, missing_spectra  # noqa: E402

CONFIGS = {"vit": "configs/RGBNT201/EDITOR.yml"}
ORIGINAL_CONFIG = "configs/RGBNT201/EDITOR.yml"
SIZE = (256, 128)
SMOKE_SIZE = (64, 48)  # the device section's smoke run: 12 tokens, enough for FREQUENCY_KEEP 10
# The device section's change to the config. Drop path's rate differs per block, and torch.compile specialises each
# compiled block on it (also in eval mode, where drop path does nothing): with the config's 0.1 the twelve blocks are
# twelve compilations, past dynamo's limit of 8 (the others then run uncompiled). The cuda section does the same.
DEVICE_OPTS = ("MODEL.DROP_PATH", "0.0")
NUM_CLASSES, NUM_CAMERAS, PER_ID = 171, 4, 4  # RGBNT201's training identities and cameras; K of the P x K batch
# Imported by the original's modules at import time but never run by the measured code.
STAND_INS = {"seaborn": {}, "pkg_resources": {"resource_stream": None}, "matplotlib": {}, "matplotlib.pyplot": {}}
ALWAYS_STAND_IN = ("seaborn",)  # bundled in the checkout, but it needs pandas
SCRIPT = "bench_editor.py"


# ----------------------------------------------------------------------------------------------------------------------
# The original code in this process.

def check_original(path: str | None) -> Path:
    """``path`` as a checkout of the original EDITOR code, with PyWavelets installed; exits with a one-line message
    otherwise."""
    root = check_checkout(path, ("modeling/make_model.py", "modeling/fusion_part/Frequency.py", "layers/make_loss.py",
                                 "solver/make_optimizer.py", "config/defaults.py", ORIGINAL_CONFIG),
                          SCRIPT, "EDITOR code (github.com/924973292/EDITOR)")
    if importlib.util.find_spec("pywt") is None:
        raise MissingOriginal(f"{SCRIPT}: the original's wavelet transform needs PyWavelets, which is not installed "
                              "(.venv/bin/python -m pip install PyWavelets; the project does not depend on it)")
    return root


def import_original(root: Path) -> types.SimpleNamespace:
    """The original's config defaults, ``make_model``, ``make_loss`` and ``make_optimizer``."""
    with original_import_path(root, STAND_INS, SCRIPT, always_stand_in=ALWAYS_STAND_IN), \
            contextlib.redirect_stdout(io.StringIO()):
        config = importlib.import_module("config")
        make_model = importlib.import_module("modeling.make_model")
        make_loss = importlib.import_module("layers.make_loss")
        make_optimizer = importlib.import_module("solver.make_optimizer")
    return types.SimpleNamespace(root=root, cfg=config.cfg, make_model=make_model.make_model,
                                 make_loss=make_loss.make_loss, make_optimizer=make_optimizer.make_optimizer)


def original_cfg(original: types.SimpleNamespace, batch: int) -> Any:
    """The original's config: its defaults, its configs/RGBNT201/EDITOR.yml, no pretrained weights, the batch and the
    CPU."""
    cfg = original.cfg.clone()
    cfg.defrost()
    cfg.merge_from_file(str(original.root / ORIGINAL_CONFIG))
    cfg.merge_from_list(["MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", batch,
                         "DATALOADER.NUM_INSTANCE", PER_ID])
    cfg.freeze()
    return cfg


def build_original(original: types.SimpleNamespace, cfg: Any, cuda: CudaCalls) -> nn.Module:
    """The original's EDITOR from ``make_model`` (random initial weights: MODEL.PRETRAIN_CHOICE none), its HMA's
    final LayerNorm (``FUSE_block.out_norm``) given random affine parameters.

    At its initial weight 1 and bias 0 every kept token's output row sums to zero up to rounding, and the original
    divides the sum of the patch tokens by the number of rows whose sum is not exactly zero (this project: by the
    number of kept tokens, |M|): rounding would decide that count, and the features would be compared on noise. Any
    other affine parameters (a trained model's) put the row sums far from zero, where the two counts are equal."""
    with cuda, contextlib.redirect_stdout(io.StringIO()):
        torch.manual_seed(0)
        model = original.make_model(cfg, num_class=NUM_CLASSES, camera_num=NUM_CAMERAS)
    norm = model.FUSE_block.out_norm
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(norm.weight.shape, generator=g))
        norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=g))
    return model


class CountingWriter:
    """Stands in for the TensorBoard ``SummaryWriter`` the original's training forward writes to; counts the
    scalars."""

    def __init__(self) -> None:
        self.scalars = 0

    def add_scalar(self, tag: str, value: Any, step: Any = None) -> None:
        self.scalars += 1


# ----------------------------------------------------------------------------------------------------------------------
# The two sides: one training step, the test features of one batch.

class OriginalSide:
    name = "original"

    def __init__(self, original: types.SimpleNamespace, cfg: Any, cuda: CudaCalls) -> None:
        self.cuda = cuda
        self.writer = CountingWriter()
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
            output = self.model(dict(images), label=pids, cam_label=cams, view_label=views, img_path=None,
                                writer=self.writer, epoch=1)
            pairs = len(output) - len(output) % 2  # (score, feature) pairs, then BCC + OCFR when the length is odd
            loss = sum(self.loss_fn(score=output[i], feat=output[i + 1], target=pids, target_cam=cams)
                       for i in range(0, pairs, 2))
            if len(output) % 2:
                loss = loss + output[-1]
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def features(self, inputs: Mapping[str, dict[str, torch.Tensor]], cams: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward per setting of ``inputs`` (setting -> the images, the missing spectra's zero images)."""
        self.model.eval()
        views = torch.zeros_like(cams)
        with self.cuda:
            return {setting: self.model(dict(images), cam_label=cams, view_label=views)
                    for setting, images in inputs.items()}


class ProjectSide:
    name = "project"

    def __init__(self, backbone: str, original_model: nn.Module) -> None:
        self.cfg = load_config(str(ROOT / CONFIGS[backbone]), ["MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu"])
        self.model = build_model(self.cfg, NUM_CLASSES, NUM_CAMERAS)
        state, self.dropped = convert_editor_state_dict(original_model.state_dict(), self.model)
        self.model.load_state_dict(state, strict=True)
        self.loss_fn = build_loss(self.cfg, NUM_CLASSES)
        self.optimizer = build_optimizer(self.cfg, self.model)

    def train_step(self, images: dict[str, torch.Tensor], pids: torch.Tensor, cams: torch.Tensor) -> float:
        """``processor.trainer.Trainer.run_step`` on CPU (no autocast, the gradient scaler disabled; EDITOR takes
        the batch's identities)."""
        self.model.train()
        loss, _ = self.loss_fn(self.model(images, cams, labels=pids), pids)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.SOLVER.GRAD_CLIP > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.SOLVER.GRAD_CLIP)
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def features(self, images: dict[str, torch.Tensor], cams: torch.Tensor,
                 missing: dict[str, frozenset[str]]) -> dict[str, torch.Tensor]:
        """``batch_features`` of the settings of ``missing``, under ``no_grad`` as ``extract_features`` runs it."""
        self.model.eval()
        return batch_features(self.model, {"images": images, "camid": cams}, torch.device("cpu"), missing)


# ----------------------------------------------------------------------------------------------------------------------
# Measuring.

def zero_filled(images: Mapping[str, torch.Tensor], settings: tuple[str, ...]) -> dict[str, dict[str, torch.Tensor]]:
    """Setting -> the images with that setting's missing spectra as zero images (the original's input)."""
    return {setting: {s: torch.zeros_like(x) if s in missing_spectra(setting) else x for s, x in images.items()}
            for setting in settings}


def run(original_root: Path, backbone: str = "vit", batch: int = 8, repeats: int = 3, threads: int = 2,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build both sides, compare their features, then time them alternately; the figures as a dict."""
    log = log or (lambda line: print(line, flush=True))
    if batch % PER_ID or batch < 2 * PER_ID:
        raise ValueError(f"--batch {batch}: needs a multiple of {PER_ID}, at least {2 * PER_ID} (P x K, K = {PER_ID})")
    torch.set_num_threads(threads)
    cuda = CudaCalls()
    start = time.perf_counter()
    code = import_original(original_root)
    original = OriginalSide(code, original_cfg(code, batch), cuda)
    project = ProjectSide(backbone, original.model)
    build_s = time.perf_counter() - start
    images, pids, cams = synthetic_batch(batch, SIZE, SPECTRA, PER_ID, NUM_CAMERAS)
    params = {s.name: sum(p.numel() for p in s.model.parameters() if p.requires_grad) for s in (original, project)}
    log(f"built both models in {build_s:.1f} s ({params['original'] / 1e6:.2f}M / {params['project'] / 1e6:.2f}M "
        f"trainable parameters; original keys not mapped, unused: {len(project.dropped)}); original's CUDA calls "
        f"neutralised so far: {cuda.hits}")

    full, seven = {"nothing": frozenset()}, missing_by_setting(project.model, MISS_SETTINGS)
    inputs = zero_filled(images, MISS_SETTINGS)
    # The same weights compute the same features (also the test side's warm-up).
    ours, theirs = project.features(images, cams, seven), original.features(inputs, cams)
    difference = {s: float((ours[s] - theirs[s]).abs().max()) for s in MISS_SETTINGS}
    log(f"features of the seven settings, largest difference from the original: {max(difference.values()):.2e}")
    warm = {side.name: side.train_step(images, pids, cams) for side in (original, project)}
    log(f"warm-up training step: loss original {warm['original']:.4f}, project {warm['project']:.4f}")

    def test(side: OriginalSide | ProjectSide, settings: dict[str, frozenset[str]]) -> Any:
        if side is original:
            return original.features({s: inputs[s] for s in settings}, cams)
        return project.features(images, cams, settings)

    wall, cpu, loads = alternate_rounds(
        (original, project), {"train": lambda side: side.train_step(images, pids, cams),
                              "test_full": lambda side: test(side, full),
                              "test": lambda side: test(side, seven)}, repeats, log)
    return {"method": "EDITOR", "backbone": backbone, "config": CONFIGS[backbone],
            "original_config": ORIGINAL_CONFIG, "batch": batch, "size": list(SIZE), "repeats": repeats,
            "threads": threads, "settings": len(MISS_SETTINGS), "trainable_parameters": params,
            "max_feature_difference": max(difference.values()), "feature_difference": difference,
            "warmup_loss": warm, "neutralised_cuda_calls": dict(cuda.hits),
            "writer_scalars": original.writer.scalars, "load_average_per_round": loads, "build_s": build_s,
            **machine_figures(), **round_figures(wall, cpu, batch)}


def report_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"EDITOR vs the original code, CPU ({r['cpu']}, {r['threads']} threads, torch {r['torch']}), "
             f"{r['backbone']} backbone, batch {r['batch']} at {r['size'][0]}x{r['size'][1]}, {r['repeats']} "
             f"alternated rounds; load average {load_range(r)}"]
    lines += comparison_lines(r, {"train": "training step", "test_full": "test features, all spectra",
                                  "test": f"test features, {r['settings']} settings"})
    lines.append(f"  features equal to the original's within {r['max_feature_difference']:.1e}; original's CUDA calls "
                 f"neutralised: {r['neutralised_cuda_calls']}")
    return lines


# ----------------------------------------------------------------------------------------------------------------------
# On the device (section ``editor`` of benchmarks/run.py).

def bench_device_section(smoke: bool = False, steps: int = 10, warmup: int = 3,
                         measured: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """EDITOR with ViT-B/16 (configs/RGBNT201/EDITOR.yml) on the device: the train step at batch 128 (8 identities x
    16), 256x128, in the precision modes of the ``cuda`` section, then the seven-setting table on a 1,715 x 8,575
    synthetic test set (a part that fails is recorded with its error and the others go on), with MODEL.DROP_PATH 0
    (see ``DEVICE_OPTS``). ``measured(results so far)`` is called after each part. ``smoke``: tiny sizes (64x48:
    EDITOR keeps 10 tokens by frequency), any device."""
    return method_device.bench_method_section("EDITOR", CONFIGS["vit"], smoke, steps, warmup, measured,
                                              smoke_size=SMOKE_SIZE, opts=DEVICE_OPTS)


def device_section_lines(r: dict[str, Any]) -> list[str]:
    """The figure lines of :func:`bench_device_section`, worded as the ``cuda`` and ``eval`` sections' lines."""
    return method_device.method_section_lines(r)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", metavar="PATH",
                        help="a checkout of the original EDITOR code (required; nothing is downloaded)")
    parser.add_argument("--backbone", choices=sorted(CONFIGS), default="vit",
                        help="ViT-B/16, the only backbone of the original's configs")
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
