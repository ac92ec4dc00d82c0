"""Plain helpers shared by the test modules: tiny-run options, tool command lines and output checks, dataset tree
writers, the toy backbone. Fixtures live in conftest.py; no test module imports another one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from modeling.backbones import ViTBackbone, is_known_backbone, register_backbone
from processor.hooks import HookBase, StopOnSignal

REPO = Path(__file__).resolve().parents[1]
SPECTRA = ("RGB", "NI", "TI")
TOY_BACKBONE = "toy_vit"


def load_reference_weights(folder: Path):
    """``reference_weights.py`` of a reference folder (deterministic weights in an original layout), as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference_weights", folder / "reference_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def register_toy_backbone() -> str:
    """A 2-block ViT (width 96, 3 heads) registered as ``toy_vit``: engine and tool tests train on it in seconds.

    In-process only: a ``train_net.py`` or tool subprocess does not know it."""
    if not is_known_backbone(TOY_BACKBONE):

        @register_backbone(TOY_BACKBONE, hint=f"{TOY_BACKBONE} (tests)")
        def build_toy(name: str, img_size: Sequence[int], **options) -> ViTBackbone:
            backbone = ViTBackbone("vit_tiny_patch16_224", img_size, depth=2, embed_dim=96, num_heads=3, **options)
            backbone.name = name
            return backbone

    return TOY_BACKBONE


# ----------------------------------------------------------------------------------------------------------------------
# Tiny runs on the demo data and the tools on their checkpoints.

def tiny_opts(demo_root: str, output_dir: str, **overrides) -> list[str]:
    """KEY VALUE pairs for a small, fast CPU run on the demo data (vit_tiny unless MODEL.TRANSFORMER_TYPE is given)."""
    opts = {
        "DATASETS.NAMES": "demo", "DATASETS.ROOT_DIR": demo_root, "OUTPUT_DIR": output_dir,
        "MODEL.DEVICE": "cpu", "MODEL.TRANSFORMER_TYPE": "vit_tiny_patch16_224", "MODEL.PRETRAIN_CHOICE": "none",
        "MODEL.DROP_PATH": "0.1", "INPUT.SIZE_TRAIN": "[64,32]", "INPUT.SIZE_TEST": "[64,32]", "INPUT.PADDING": "4",
        "SOLVER.IMS_PER_BATCH": "16", "DATALOADER.NUM_INSTANCE": "4", "DATALOADER.NUM_WORKERS": "0",
        "SOLVER.MAX_EPOCHS": "1", "SOLVER.WARMUP_ITERS": "0", "SOLVER.BASE_LR": "0.01", "SOLVER.EVAL_PERIOD": "1",
        "SOLVER.LOG_PERIOD": "1", "SOLVER.CHECKPOINT_PERIOD": "0", "TEST.IMS_PER_BATCH": "64",
    }
    opts.update(overrides)
    return [x for kv in opts.items() for x in kv]


def tool_opts(run, demo_root: str, output_dir, **overrides: str) -> list[str]:
    """KEY VALUE pairs for a tool on the best checkpoint of a session run (``trained_run`` or ``vit_tiny_run``),
    with that run's backbone."""
    run_dir, trainer, _ = run
    return tiny_opts(demo_root, str(output_dir), **{"MODEL.TRANSFORMER_TYPE": trainer.cfg.MODEL.TRANSFORMER_TYPE,
                                                    "TEST.WEIGHT": str(Path(run_dir) / "best.pth"), **overrides})


def run_cli(tool: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python tools/<tool>.py ARGS`` from the repository root (the environment, thread settings included, is
    inherited)."""
    return subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def assert_one_error_line(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 1, no traceback, exactly one ``error:`` line on stderr (the last), holding ``words``."""
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def assert_not_blank(image: np.ndarray) -> None:
    """More than a handful of colours and real contrast."""
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 16, len(colours)
    assert image.std() > 10


# ----------------------------------------------------------------------------------------------------------------------
# Tiny dataset trees in the published layouts.

def save_image(path: str, pixels: np.ndarray | None = None, size: tuple[int, int] = (32, 64)) -> None:
    """A JPEG at ``path``: the given HxWx3 uint8 pixels, or noise seeded by the path (width, height = ``size``)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if pixels is None:
        rng = np.random.default_rng(zlib.crc32(path.encode()))
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_rgbnt201(root: str, train: Iterable[str], test: Iterable[str]) -> str:
    base = os.path.join(root, "RGBNT201")
    for split, names in (("train_171", train), ("test", test)):
        for spectrum in SPECTRA:
            os.makedirs(os.path.join(base, split, spectrum), exist_ok=True)
            for name in names:
                save_image(os.path.join(base, split, spectrum, name))
    return base


def rgbnt201_names(pids: Sequence[int], cams: Sequence[int], per_cam: int) -> list[str]:
    return [f"{pid:06d}_cam{cam}_0_{n:02d}.jpg" for pid in pids for cam in cams for n in range(1, per_cam + 1)]


def stitched_pixels(colours: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """768x128 image whose three 256-wide parts have the given colours."""
    return np.concatenate([np.full((128, 256, 3), c, dtype=np.uint8) for c in colours], axis=1)


def write_rgbnt100(root: str, splits: dict[str, Iterable[str]]) -> str:
    base = os.path.join(root, "RGBNT100", "rgbir")
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        os.makedirs(os.path.join(base, split), exist_ok=True)
        for name in splits.get(split, ()):
            save_image(os.path.join(base, split, name), stitched_pixels([(250, 0, 0), (0, 250, 0), (0, 0, 250)]))
    return base


def write_msvr310(root: str, splits: dict[str, Iterable[str]]) -> str:
    base = os.path.join(root, "MSVR310")
    for split in ("bounding_box_train", "query3", "bounding_box_test"):
        os.makedirs(os.path.join(base, split), exist_ok=True)
        for name in splits.get(split, ()):
            for folder in ("vis", "ni", "th"):
                save_image(os.path.join(base, split, name[:4], folder, name))
    return base


class StopAt(HookBase):
    """Asks the trainer to stop after global step ``step``, as a SIGTERM would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self) -> None:
        if self.trainer.global_step == self.step:
            self.trainer.request_stop(signal.SIGTERM)


def stop_after_step(trainer, step: int):
    """Make ``trainer`` stop after global step ``step``: the request comes before the stop hook looks for one."""
    hook = StopAt(step)
    hook.trainer = trainer
    trainer.hooks.insert(next(i for i, h in enumerate(trainer.hooks) if isinstance(h, StopOnSignal)), hook)
    return trainer
