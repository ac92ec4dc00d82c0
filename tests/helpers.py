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


def write_rgbnt201(root: str, train: Iterable[str], test: Iterable[str], size: tuple[int, int] = (32, 64)) -> str:
    """Noise JPEGs of (width, height) ``size`` in the RGBNT201 layout."""
    base = os.path.join(root, "RGBNT201")
    for split, names in (("train_171", train), ("test", test)):
        for spectrum in SPECTRA:
            os.makedirs(os.path.join(base, split, spectrum), exist_ok=True)
            for name in names:
                save_image(os.path.join(base, split, spectrum, name), size=size)
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


# ----------------------------------------------------------------------------------------------------------------------
# Engine checks shared by the test files of the methods (test_demo_engine.py, test_editor_engine.py): original
# checkpoints through test_net.py and their conversion, training with resume, the research tools on a checkpoint.

REFERENCE = REPO.parent / "shared" / "reference"  # reference weights and vectors of the original codes
METRICS = {"mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"}
CROSS_PAIRS = ["RGB->NI", "RGB->TI", "NI->RGB", "NI->TI", "TI->RGB", "TI->NI"]


def config_of(args: Sequence[str]):
    """The config of a tool or script command line: ``[--config_file FILE] KEY VALUE ...``."""
    from configs import load_config

    args = list(args)
    if args[:1] == ["--config_file"]:
        return load_config(args[1], args[2:])
    return load_config(None, args)


def manifest(name: str) -> dict[str, list[int]]:
    """Keys and shapes of an original checkpoint layout (``REFERENCE/manifests/<name>.json``)."""
    import json

    return json.loads((REFERENCE / "manifests" / f"{name}.json").read_text())


def save_original_checkpoint(path, manifest_name: str, module: bool = False):
    """The reference weights of a manifest (``reference_state_dict(manifest, seed=0)``) saved as the original code
    saves them, ``torch.save(model.state_dict())``, with DataParallel's ``module.`` prefixes if ``module``."""
    import torch

    state = load_reference_weights(REFERENCE).reference_state_dict(manifest(manifest_name), seed=0)
    torch.save({f"module.{k}" if module else k: v for k, v in state.items()}, path)
    return path


def save_key_layout(path, manifest_name: str, count: int | None = None):
    """A file with the keys of an original layout (the first ``count``, ``module.``-prefixed) and one-element
    tensors: what tells a checkpoint's method, without its weights."""
    import torch

    keys = list(manifest(manifest_name))[:count]
    torch.save({f"module.{k}": torch.zeros(1) for k in keys}, path)
    return path


def add_module_prefix(source, target):
    """``target``: the state_dict of ``source`` as DataParallel saves it (``module.`` prefixes)."""
    import torch

    state = torch.load(source, weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, target)
    return target


def run_test_net(args: list[str]) -> subprocess.CompletedProcess:
    """``python test_net.py ARGS`` from the repository root."""
    return subprocess.run([sys.executable, "test_net.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def eval_args(config: str, data, out, weight, **overrides: str) -> list[str]:
    """test_net.py arguments for ``config`` on a written data tree, on CPU without loader workers."""
    opts = {"DATASETS.ROOT_DIR": str(data), "OUTPUT_DIR": str(out), "TEST.WEIGHT": str(weight), "MODEL.DEVICE": "cpu",
            "TEST.IMS_PER_BATCH": "4", "DATALOADER.NUM_WORKERS": "0", **overrides}
    return ["--config_file", config, *[x for kv in opts.items() for x in kv]]


def assert_metrics(metrics: dict) -> None:
    """The five metrics of an evaluation, each a fraction."""
    assert set(metrics) == METRICS
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics


def assert_results(results: dict, settings: Sequence[str], cross: Sequence[str] = ()) -> None:
    """results.json holds the metrics of exactly ``settings`` (in order) and of the ``cross`` pairs."""
    assert list(results["settings"]) == list(settings)
    assert list(results.get("cross") or {}) == list(cross)
    for metrics in [*results["settings"].values(), *(results.get("cross") or {}).values()]:
        assert_metrics(metrics)


def evaluate_original_checkpoint(config: str, data, weight, out, layout: str, *extra: str):
    """test_net.py on an original checkpoint with TEST.MISS all: it succeeds, says it read the ``layout`` (e.g.
    "original DeMo layout") and writes the seven settings. Returns the results."""
    import json

    from utils.spectra import MISS_SETTINGS

    proc = run_test_net([*eval_args(config, data, out, weight), "TEST.MISS", "all", *extra])
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert layout in proc.stdout + proc.stderr
    results = json.loads((Path(out) / "results.json").read_text())
    assert_results(results, MISS_SETTINGS)
    return results


def check_conversion(config: str, weight, converted, sizes: tuple[int, int], method: str, feat_dim: int,
                     input_size: tuple[int, int] = (256, 128), settings: Sequence[str] = ("nothing", "rt")) -> None:
    """tools/convert_checkpoint.py converts the original checkpoint ``weight`` for ``config``: the result records the
    method and the sizes, and the model holding it (one model, loaded strictly with each) has the very tensors and
    gives, on the reference inputs, the very features (of each setting, one backbone pass) of the original."""
    import torch

    from modeling.checkpoint import check_arch, load_model_weights, model_from_checkpoint
    from processor.inference import batch_features, missing_by_setting

    proc = run_cli("convert_checkpoint", ["--config_file", config, "--input", str(weight), "--output",
                                          str(converted)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = config_of(["--config_file", config, "MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu"])
    saved = torch.load(converted, weights_only=False)
    assert (saved["num_classes"], saved["num_cameras"]) == sizes
    assert saved["arch"]["MODEL.META_ARCHITECTURE"] == method
    check_arch(saved, cfg, str(converted))
    del saved
    images, cams = load_reference_weights(REFERENCE).reference_inputs(2, *input_size)
    model = model_from_checkpoint(cfg, str(weight), log=False).model
    missing = missing_by_setting(model, settings)
    states, features = [], []
    for path in (weight, converted):
        load_model_weights(model, str(path), log=False)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        with torch.no_grad():
            features.append(batch_features(model, {"images": images, "camid": cams}, torch.device("cpu"), missing))
    del model
    assert [k for k, v in states[0].items() if not torch.equal(v, states[1][k])] == []
    for setting in settings:
        assert features[0][setting].shape == (2, feat_dim)
        torch.testing.assert_close(features[1][setting], features[0][setting], rtol=0, atol=0)
    assert not torch.equal(features[0][settings[0]], features[0][settings[-1]])


def save_topreid_checkpoint(demo_root: str, out) -> Path:
    """A tiny TOP-ReID checkpoint of this project in ``out`` (untrained: only its method matters)."""
    from configs import load_config
    from modeling import build_model
    from modeling.checkpoint import model_payload
    from utils.checkpoint import save_checkpoint

    cfg = load_config(None, tiny_opts(demo_root, str(out)))
    path = Path(out) / "best.pth"
    save_checkpoint(str(path), model_payload(build_model(cfg, 40, 4), cfg, 40, 4))
    return path


def loss_steps(*histories: Sequence[dict], terms: Sequence[str] = ("loss",)) -> list[tuple]:
    """(epoch, iteration, the ``terms``) of each logged step of the given trainer histories, one after another."""
    return [(h["epoch"], h["iteration"], *(h[t] for t in terms)) for history in histories for h in history]


def interrupted_run(cfg, step: int, resume: bool = False):
    """A trainer of ``cfg`` (resuming its OUTPUT_DIR's last.pth if ``resume``) that trained until global step
    ``step`` and stopped there as on SIGTERM (last.pth written)."""
    import pytest

    from processor.trainer import Trainer, TrainingInterrupted

    trainer = stop_after_step(Trainer(cfg, resume=resume), step)
    with pytest.raises(TrainingInterrupted):
        trainer.train()
    return trainer


# The research tools on a checkpoint: ``args`` are the tool's config arguments ([--config_file FILE] KEY VALUE ...,
# TEST.WEIGHT included).

def check_tsne(args: list[str], out) -> None:
    from tools import tsne

    assert tsne.main([*args, "--max-ids", "4", "--size", "300", "--output", str(out)]) == 0
    image = read_png(out)
    assert image.shape == (300, 300, 3)
    assert_not_blank(image)


def check_rank_list(args: list[str], out_dir, queries: Sequence[int], topk: int) -> None:
    """The tool's ranking is the one the evaluation makes from the predictor's features (L2-normalised; same camera
    and identity = junk)."""
    import json

    import torch.nn.functional as F

    from data.build import build_query_gallery
    from evaluation import squared_euclidean
    from processor.predictor import Predictor
    from tools import rank_list

    out_dir = Path(out_dir)
    assert rank_list.main([*args, "--queries", *map(str, queries), "--topk", str(topk), "--tile-height", "32",
                           "--output", str(out_dir / "ranks.png")]) == 0
    assert_not_blank(read_png(out_dir / "ranks.png"))
    report = json.loads((out_dir / "ranks.json").read_text())
    cfg = config_of(args)
    setting = cfg.TEST.MISS
    split = build_query_gallery(cfg)
    feats = F.normalize(Predictor.from_config(cfg).record_features(split.records, [setting])[setting], dim=1)
    query, gallery = split.records[:split.num_query], split.records[split.num_query:]
    gf = feats[split.num_query:]
    for entry, q in zip(report["queries"], queries):
        assert entry["query"] == q
        # the evaluation's distance orders (near-equal distances, as of a barely trained model, keep its rounding)
        order = [int(i) for i in np.argsort(squared_euclidean(feats[q][None], gf)[0].numpy(), kind="stable")
                 if not (gallery[i].pid == query[q].pid and gallery[i].camid == query[q].camid)][:topk]
        assert entry["ranked"] == order
        dist = ((feats[q] - gf) ** 2).sum(1).numpy()
        np.testing.assert_allclose(entry["distances"], dist[order], atol=1e-5)


def extract_gallery(args: list[str]) -> Path:
    """tools/extract_features.py on the gallery: the npz of the ``nothing`` setting it writes to OUTPUT_DIR."""
    from tools import extract_features

    assert extract_features.main([*args, "--split", "gallery"]) == 0
    return Path(config_of(args).OUTPUT_DIR) / "features_gallery_nothing.npz"


def check_extracted_gallery(npz, args: list[str], feat_dim: int) -> None:
    """The npz holds the gallery's names and the predictor's L2-normalised features."""
    import torch.nn.functional as F

    from data.build import build_query_gallery
    from processor.predictor import Predictor

    z = np.load(npz)
    cfg = config_of(args)
    split = build_query_gallery(cfg)
    gallery = split.records[split.num_query:]
    assert z["features"].shape == (len(gallery), feat_dim)
    assert list(z["names"]) == [r.name for r in gallery]
    expected = F.normalize(Predictor.from_config(cfg).record_features(gallery[:5], ["nothing"])["nothing"], dim=1)
    np.testing.assert_allclose(z["features"][:5], expected.numpy(), atol=1e-5, rtol=0)


def check_search(npz, out, count: int) -> None:
    """tools/search.py with the gallery as its own query: each image finds itself first."""
    import json

    from tools import search

    assert search.main(["--gallery", str(npz), "--query-npz", str(npz), "--topk", "3", "--output", str(out)]) == 0
    found = json.loads(Path(out).read_text())["queries"]
    assert len(found) == count
    assert all(q["matches"][0]["index"] == q["index"] and abs(q["matches"][0]["distance"]) < 1e-5 for q in found)


def check_onnx_export(args: list[str], path, feat_dim: int) -> None:
    """tools/export_onnx.py for TEST.MISS's setting: its own check passes, and onnxruntime on 11 other test images
    (several cameras) gives the model's features (within the model's ``as_exported()`` context where it has one, as
    the tool compares)."""
    import contextlib
    import json

    import onnxruntime as ort
    import torch

    from data.build import build_dataloader
    from processor.predictor import Predictor
    from tools import export_onnx
    from utils.spectra import missing_spectra

    path = Path(path)
    assert export_onnx.main([*args, "--output", str(path), "--check-images", "5"]) == 0
    assert json.loads(path.with_suffix(".json").read_text())["max_abs_diff"] < 1e-4

    cfg = config_of(args)
    model = Predictor.from_config(cfg).model
    batch = next(iter(build_dataloader(cfg).test_loader))
    images = {s: x[-11:] for s, x in batch["images"].items()}  # not the images of the tool's trace and check
    cams = batch["camid"][-11:]
    assert len(set(cams.tolist())) > 1
    missing = missing_spectra(cfg.TEST.MISS)
    with torch.no_grad(), getattr(model, "as_exported", contextlib.nullcontext)():
        expected = model(images, cams, missing).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    available = [s for s in ("RGB", "NI", "TI") if s not in missing]
    assert [i.name for i in session.get_inputs()] == [*available, "camids"]
    feed = {**{s: images[s].numpy() for s in available}, "camids": cams.numpy()}
    got = session.run(["feature"], feed)[0]
    assert got.shape == expected.shape == (11, feat_dim)
    assert np.abs(got - expected).max() < 1e-4


def grad_cam_by_hand(model, images, cams, missing, size):
    """Grad-CAM maps of each available spectrum written out: the last backbone block's first call in the forward
    (the pass over the given images, spectra batched in model order), the gradient of f . f/|f| at its output,
    channel weights = mean gradient over the patches, ReLU of the weighted sum, min-max scaled at the input size as
    pytorch_grad_cam does."""
    import torch
    import torch.nn.functional as F
    from pytorch_grad_cam.utils.image import scale_cam_image

    block = model.backbone.blocks[-1]
    outputs = []
    handle = block.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    try:
        with torch.enable_grad():
            feature = model(images, cams, missing)
            target = (feature * F.normalize(feature.detach(), dim=1)).sum()
            grad = torch.autograd.grad(target, outputs[0])[0]
    finally:
        handle.remove()
    available = list(images)
    rows, cols = model.backbone.grid_size
    maps = {}
    for k, spectrum in enumerate(available):
        act = outputs[0].detach().chunk(len(available))[k][:, 1:]
        weights = grad.chunk(len(available))[k][:, 1:].mean(dim=1, keepdim=True)
        cam = torch.relu((act * weights).sum(-1)).reshape(-1, rows, cols).numpy()
        maps[spectrum] = scale_cam_image(scale_cam_image(cam, size))
    return maps


def check_grad_cam(args: list[str], out_dir, samples: Sequence[int]) -> None:
    """tools/grad_cam.py for TEST.MISS's setting (one missing spectrum): the maps of the available spectra are
    :func:`grad_cam_by_hand`'s, at the test size."""
    from data.build import build_query_gallery
    from processor.predictor import Predictor
    from tools import grad_cam
    from utils.spectra import missing_spectra

    out_dir = Path(out_dir)
    assert grad_cam.main([*args, "--samples", *map(str, samples), "--tile-height", "64",
                          "--output", str(out_dir / "cam.png")]) == 0
    assert_not_blank(read_png(out_dir / "cam.png"))
    cfg = config_of(args)
    missing = missing_spectra(cfg.TEST.MISS)
    available = [s for s in SPECTRA if s not in missing]
    height, width = cfg.INPUT.SIZE_TEST
    z = np.load(out_dir / "cam.npz")
    assert list(z["spectra"]) == available and z["maps"].shape == (len(samples), len(available), height, width)

    predictor = Predictor.from_config(cfg)
    records = build_query_gallery(cfg).records
    batch = next(iter(predictor.loader([records[i] for i in samples], available)))
    assert len(set(batch["camid"].tolist())) > 1
    expected = grad_cam_by_hand(predictor.model, batch["images"], batch["camid"], missing, (width, height))
    for k, spectrum in enumerate(available):
        assert all(np.ptp(m) > 0.5 for m in z["maps"][:, k])
        np.testing.assert_allclose(z["maps"][:, k], expected[spectrum], atol=1e-3, rtol=0)


def check_compiled_blocks_keep_features(model, num_blocks: int) -> None:
    """MODEL.COMPILE on a copy of ``model``: the backbone's blocks are found and compiled in place (eager backend),
    and the features of a missing-spectrum setting are unchanged."""
    import copy

    import torch

    from modeling.compile import compile_blocks, is_compiled, transformer_blocks

    model = copy.deepcopy(model).eval()  # the caller's model stays uncompiled
    blocks = transformer_blocks(model)
    assert len(blocks) == num_blocks
    height, width = model.backbone.patch_embed.img_size
    images = {s: torch.randn(2, 3, height, width) for s in model.spectra}
    cams = torch.tensor([0, 1])
    with torch.no_grad():
        before = model(images, cams, missing={"RGB"})
        assert compile_blocks(model, backend="eager") == num_blocks and all(is_compiled(b) for b in blocks)
        after = model(images, cams, missing={"RGB"})
    assert torch.allclose(before, after, atol=1e-5)
