"""DeMo through everything the engine offers: test_net.py on original DeMo checkpoints (plain and ``module.``) with
the RGBNT201 config, their conversion, the refusal of another method's checkpoint; training with resume, every
missing-spectrum setting and cross-spectral pair, DeMo's optimiser and schedule; the research tools on a DeMo
checkpoint. One tiny DeMo (vit_tiny on the demo data, 2 epochs) is trained once and shared."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configs import load_config
from data.build import build_query_gallery
from modeling.checkpoint import model_from_checkpoint
from processor.predictor import Predictor
from processor.trainer import Trainer, TrainingInterrupted
from tests.helpers import (
    REPO,
    assert_not_blank,
    assert_one_error_line,
    read_png,
    rgbnt201_names,
    run_cli,
    stop_after_step,
    tiny_opts,
    write_rgbnt201,
)
from utils.checkpoint import CheckpointError
from utils.spectra import MISS_SETTINGS, missing_spectra

pytestmark = pytest.mark.slow  # trains DeMo, runs test_net.py and the tools, builds CLIP ViT-B/16

RGBNT201_DEMO = str(REPO / "configs" / "RGBNT201" / "DeMo.yml")
REFERENCE = REPO.parent / "shared" / "reference"
CROSS_PAIRS = ["RGB->NI", "RGB->TI", "NI->RGB", "NI->TI", "TI->RGB", "TI->NI"]
BASE_LR, BACKBONE_LR = 3.5e-4, 1e-4
# DeMo's training recipe (configs/Base-DeMo.yml) on the tiny model: Adam, the demo schedule, a backbone rate of its own
# with no bias factor inside the backbone; evaluated on every setting and cross-spectral pair.
DEMO_RUN = {"MODEL.META_ARCHITECTURE": "DeMo", "SOLVER.MAX_EPOCHS": "2", "TEST.MISS": "all", "TEST.CROSS": "all",
            "SOLVER.OPTIMIZER_NAME": "Adam", "SOLVER.SCHEDULER": "demo", "SOLVER.BASE_LR": str(BASE_LR),
            "SOLVER.BACKBONE_LR": str(BACKBONE_LR), "SOLVER.BIAS_LR_FACTOR": "2.0",
            "SOLVER.BIAS_LR_FACTOR_IN_BACKBONE": "False"}


def _losses(history):
    return [(h["epoch"], h["iteration"], h["loss"]) for h in history]


@pytest.fixture(scope="session")
def demo_run(demo_root, tmp_path_factory):
    """A tiny DeMo trained for 2 epochs with DEMO_RUN: (output_dir, trainer, results)."""
    out = tmp_path_factory.mktemp("demo_run")
    trainer = Trainer(load_config(None, tiny_opts(demo_root, str(out), **DEMO_RUN)))
    return out, trainer, trainer.train()


def _tool_opts(demo_run, demo_root: str, output_dir, **overrides: str) -> list[str]:
    """KEY VALUE pairs for a tool on the DeMo run's best.pth."""
    return tiny_opts(demo_root, str(output_dir), **{"MODEL.META_ARCHITECTURE": "DeMo",
                                                    "TEST.WEIGHT": str(demo_run[0] / "best.pth"), **overrides})


# ----------------------------------------------------------------------------------------------------------------------
# Training.

def test_training_evaluates_every_setting_and_cross_pair(demo_run):
    out, trainer, results = demo_run
    assert list(results) == list(MISS_SETTINGS)
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["settings"]) == list(MISS_SETTINGS)
    assert list(saved["cross"]) == CROSS_PAIRS == list(trainer.cross_results)  # DeMo fills the other side's spectra
    for metrics in [*saved["settings"].values(), *saved["cross"].values()]:
        assert set(metrics) == {"mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert len({round(m["mAP"], 6) for m in saved["cross"].values()}) > 1  # the pairs differ
    log = (out / "train_log.txt").read_text()
    for term in ("moe.id", "moe.triplet", "ori.id", "ori.triplet", "query \\ gallery"):
        assert term in log, term
    assert (out / "best.pth").exists() and (out / "last.pth").exists()


def test_adam_demo_schedule_and_backbone_groups(demo_run):
    from solver import build_optimizer, build_scheduler
    from solver.scheduler import NoisyCosineLR

    _, trainer, _ = demo_run
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    optimizer = build_optimizer(trainer.cfg, trainer.model)  # a fresh one: the run's keeps its state
    groups = {g["name"]: g for g in optimizer.param_groups}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert sorted(n for g in groups.values() for n in g["param_names"]) == sorted(trainable)
    backbone = [name for name, g in groups.items() if g["param_names"][0].startswith("backbone.")]
    assert len(backbone) == 1  # BIAS_LR_FACTOR_IN_BACKBONE False: the backbone's weights and biases in one group
    names = groups[backbone[0]]["param_names"]
    assert all(n.startswith("backbone.") for n in names)
    assert any(n.endswith(".bias") for n in names) and any(n.endswith(".weight") for n in names)
    assert {n for n in trainable if n.startswith("backbone.")} == set(names)
    others = {name: g for name, g in groups.items() if name not in backbone}
    weights = [g for name, g in others.items() if not name.endswith("biases")]
    biases = [g for name, g in others.items() if name.endswith("biases")]
    assert len(weights) == 1 and len(biases) == 1
    assert not any(n.startswith("backbone.") for g in others.values() for n in g["param_names"])
    scheduler = build_scheduler(trainer.cfg, optimizer)
    assert isinstance(scheduler, NoisyCosineLR)
    lr0 = dict(zip([g["name"] for g in optimizer.param_groups], scheduler.base_lrs))
    assert lr0[backbone[0]] == pytest.approx(BACKBONE_LR)  # backbone biases without the bias factor
    assert (lr0[weights[0]["name"]], lr0[biases[0]["name"]]) == pytest.approx((BASE_LR, 2 * BASE_LR))
    scheduler.step(2)  # the run's optimiser ended on the same schedule
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]


def test_resume_reproduces_the_uninterrupted_run(demo_run, demo_root, tmp_path):
    _, reference, results = demo_run
    stop = len(reference.data.train_loader) + 5  # in epoch 2: after an evaluation, with Adam's moments under way
    opts = tiny_opts(demo_root, str(tmp_path), **DEMO_RUN)
    first = stop_after_step(Trainer(load_config(None, opts)), stop)
    with pytest.raises(TrainingInterrupted):
        first.train()
    resumed = Trainer(load_config(None, opts), resume=True)
    assert resumed.train() == results
    assert _losses(first.history) + _losses(resumed.history) == _losses(reference.history)
    assert resumed.cross_results == reference.cross_results


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints of the original DeMo code: test_net.py, conversion, another method's checkpoint.

def _reference_weights():
    spec = importlib.util.spec_from_file_location("reference_weights", REFERENCE / "reference_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def original_demo(tmp_path_factory):
    """An RGBNT201 tree of 8 test images and an original DeMo checkpoint (CLIP ViT-B/16, 171 identities, 4
    cameras, 256x128: manifests/demo_clip.json) saved as the original saves it: (data root, checkpoint)."""
    if not (REFERENCE / "reference_weights.py").is_file():
        pytest.skip(f"{REFERENCE} holds no reference weights")
    root = tmp_path_factory.mktemp("original_demo")
    write_rgbnt201(str(root / "data"), rgbnt201_names([1, 2], [1, 2], 1), rgbnt201_names([5, 6], [1, 2], 1))
    manifest = json.loads((REFERENCE / "manifests" / "demo_clip.json").read_text())
    path = root / "DeMo.pth"
    torch.save(_reference_weights().reference_state_dict(manifest, seed=0), path)
    yield root / "data", path
    path.unlink()  # 400 MB


def _test_net(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "test_net.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def _rgbnt201_opts(data, out, weight) -> list[str]:
    return ["--config_file", RGBNT201_DEMO, "DATASETS.ROOT_DIR", str(data), "OUTPUT_DIR", str(out), "TEST.WEIGHT",
            str(weight), "MODEL.DEVICE", "cpu", "TEST.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0"]


@pytest.mark.parametrize("wrapping", ["plain", "module"])
def test_test_net_evaluates_an_original_checkpoint_on_all_settings(original_demo, tmp_path, wrapping):
    data, weight = original_demo
    if wrapping == "module":  # saved from DataParallel
        state = torch.load(weight, weights_only=True)
        weight = tmp_path / "DeMo_module.pth"
        torch.save({f"module.{k}": v for k, v in state.items()}, weight)
        del state
    proc = _test_net([*_rgbnt201_opts(data, tmp_path / "out", weight), "TEST.MISS", "all"])
    if wrapping == "module":
        weight.unlink()
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "original DeMo layout" in proc.stdout + proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["settings"]) == list(MISS_SETTINGS)
    for metrics in results["settings"].values():
        assert set(metrics) == {"mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_converted_checkpoint_gives_the_original_features(original_demo, tmp_path):
    _, weight = original_demo
    converted = tmp_path / "DeMo_converted.pth"
    proc = run_cli("convert_checkpoint", ["--config_file", RGBNT201_DEMO, "--input", str(weight), "--output",
                                          str(converted)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(RGBNT201_DEMO, ["MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu"])
    saved = torch.load(converted, weights_only=False)
    assert (saved["num_classes"], saved["num_cameras"]) == (171, 4)
    assert saved["arch"]["MODEL.META_ARCHITECTURE"] == "DeMo"
    images, cams = _reference_weights().reference_inputs(2)
    features = []
    for path in (weight, converted):
        model = model_from_checkpoint(cfg, str(path), log=False).model
        with torch.no_grad():
            features.append({s: model(images, cams, missing_spectra(s)) for s in ("nothing", "rt")})
        del model
    converted.unlink()  # 400 MB
    for setting in ("nothing", "rt"):
        assert features[0][setting].shape == (2, 10 * 512)
        torch.testing.assert_close(features[1][setting], features[0][setting], rtol=0, atol=0)
    assert not torch.equal(features[0]["nothing"], features[0]["rt"])


@pytest.fixture(scope="module")
def topreid_checkpoint(demo_root, tmp_path_factory):
    """A tiny TOP-ReID checkpoint of this project (untrained: only its method matters here)."""
    from modeling import build_model
    from modeling.checkpoint import model_payload
    from utils.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("topreid_checkpoint")
    cfg = load_config(None, tiny_opts(demo_root, str(out)))
    path = out / "best.pth"
    save_checkpoint(str(path), model_payload(build_model(cfg, 40, 4), cfg, 40, 4))
    return path


def test_another_methods_checkpoint_is_one_error_naming_the_method_key(topreid_checkpoint, tmp_path):
    (tmp_path / "data").mkdir()
    proc = _test_net(_rgbnt201_opts(tmp_path / "data", tmp_path / "out", topreid_checkpoint))
    error = assert_one_error_line(proc, "MODEL.META_ARCHITECTURE", "'TOPReID'", "'DeMo'")
    assert str(topreid_checkpoint) in error
    assert not (tmp_path / "out" / "results.json").exists()


def test_an_original_topreid_checkpoint_is_refused_naming_the_method_key(tmp_path):
    """A checkpoint of the original TOP-ReID code records its method by its layout."""
    manifest = json.loads((REFERENCE / "manifests" / "topreid_deit_small_patch16_224.json").read_text())
    path = tmp_path / "TOPReID.pth"
    torch.save({f"module.{k}": torch.zeros(1) for k in list(manifest)[:20]}, path)  # the keys are what counts
    cfg = load_config(RGBNT201_DEMO, ["MODEL.PRETRAIN_CHOICE", "none"])
    with pytest.raises(CheckpointError, match=r"MODEL\.META_ARCHITECTURE = 'TOPReID', the config says 'DeMo'"):
        model_from_checkpoint(cfg, str(path))


def test_converting_for_another_method_is_refused(original_demo, tmp_path):
    _, weight = original_demo
    output = tmp_path / "x.pth"
    proc = run_cli("convert_checkpoint", ["--config_file", str(REPO / "configs" / "RGBNT201" / "TOP-ReID.yml"),
                                          "--input", str(weight), "--output", str(output)])
    error = assert_one_error_line(proc, "MODEL.META_ARCHITECTURE = 'DeMo'", "'TOPReID'")
    assert str(weight) in error and not output.exists()


# ----------------------------------------------------------------------------------------------------------------------
# The research tools on the DeMo checkpoint.

def test_tsne(demo_run, demo_root, tmp_path):
    from tools import tsne

    out = tmp_path / "tsne.png"
    assert tsne.main([*_tool_opts(demo_run, demo_root, tmp_path, **{"TEST.MISS": "nt"}), "--max-ids", "4",
                      "--size", "300", "--output", str(out)]) == 0
    image = read_png(out)
    assert image.shape == (300, 300, 3)
    assert_not_blank(image)


def test_rank_list(demo_run, demo_root, tmp_path):
    from tools import rank_list

    opts = _tool_opts(demo_run, demo_root, tmp_path, **{"TEST.MISS": "r"})
    queries, topk = [0, 7, 100], 4
    assert rank_list.main([*opts, "--queries", *map(str, queries), "--topk", str(topk), "--tile-height", "32",
                           "--output", str(tmp_path / "ranks.png")]) == 0
    assert_not_blank(read_png(tmp_path / "ranks.png"))
    report = json.loads((tmp_path / "ranks.json").read_text())
    # the ranking the evaluation makes from the predictor's features (L2-normalised, same camera and id = junk)
    cfg = load_config(None, opts)
    split = build_query_gallery(cfg)
    feats = F.normalize(Predictor.from_config(cfg).record_features(split.records, ["r"])["r"], dim=1)
    query, gallery = split.records[:split.num_query], split.records[split.num_query:]
    gf = feats[split.num_query:]
    for entry, q in zip(report["queries"], queries):
        assert entry["query"] == q
        dist = ((feats[q] - gf) ** 2).sum(1).numpy()
        order = [int(i) for i in np.argsort(dist, kind="stable")
                 if not (gallery[i].pid == query[q].pid and gallery[i].camid == query[q].camid)][:topk]
        assert entry["ranked"] == order
        np.testing.assert_allclose(entry["distances"], dist[order], atol=1e-5)


@pytest.fixture(scope="module")
def demo_gallery_npz(demo_run, demo_root, tmp_path_factory):
    from tools import extract_features

    out = tmp_path_factory.mktemp("demo_features")
    assert extract_features.main([*_tool_opts(demo_run, demo_root, out), "--split", "gallery"]) == 0
    return out / "features_gallery_nothing.npz"


def test_extract_features(demo_run, demo_root, demo_gallery_npz, tmp_path):
    z = np.load(demo_gallery_npz)
    cfg = load_config(None, _tool_opts(demo_run, demo_root, tmp_path))
    split = build_query_gallery(cfg)
    gallery = split.records[split.num_query:]
    assert z["features"].shape == (len(gallery), 10 * 192)  # DeMo's cat[ori, moe]: 3 + 7 parts of vit_tiny's 192
    assert list(z["names"]) == [r.name for r in gallery]
    expected = F.normalize(Predictor.from_config(cfg).record_features(gallery[:5], ["nothing"])["nothing"], dim=1)
    np.testing.assert_allclose(z["features"][:5], expected.numpy(), atol=1e-5, rtol=0)


def test_search(demo_gallery_npz, tmp_path):
    from tools import search

    out = tmp_path / "matches.json"
    assert search.main(["--gallery", str(demo_gallery_npz), "--query-npz", str(demo_gallery_npz), "--topk", "3",
                        "--output", str(out)]) == 0
    found = json.loads(out.read_text())["queries"]
    assert len(found) == 240
    assert all(q["matches"][0]["index"] == q["index"] and abs(q["matches"][0]["distance"]) < 1e-5 for q in found)


@pytest.mark.parametrize("setting", ["nothing", "r"])
def test_export_onnx_features_match_pytorch(demo_run, demo_root, tmp_path, setting):
    import onnxruntime as ort

    from data.build import build_dataloader
    from tools import export_onnx

    path = tmp_path / f"demo_{setting}.onnx"
    opts = _tool_opts(demo_run, demo_root, tmp_path, **{"TEST.MISS": setting})
    assert export_onnx.main([*opts, "--output", str(path), "--check-images", "5"]) == 0
    assert json.loads(path.with_suffix(".json").read_text())["max_abs_diff"] < 1e-4

    cfg = load_config(None, opts)
    model = Predictor.from_config(cfg).model
    batch = next(iter(build_dataloader(cfg).test_loader))
    images = {s: x[-11:] for s, x in batch["images"].items()}  # not the images of the tool's trace and check
    cams = batch["camid"][-11:]
    assert len(set(cams.tolist())) > 1
    missing = missing_spectra(setting)
    with torch.no_grad():
        expected = model(images, cams, missing).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    available = [s for s in ("RGB", "NI", "TI") if s not in missing]
    assert [i.name for i in session.get_inputs()] == [*available, "camids"]
    feed = {**{s: images[s].numpy() for s in available}, "camids": cams.numpy()}
    got = session.run(["feature"], feed)[0]
    assert got.shape == expected.shape == (11, 10 * 192)
    assert np.abs(got - expected).max() < 1e-4


def _flops_add_up(model, count_params) -> dict[str, tuple[int, int]]:
    """Part name -> (training, test) FLOPs of a batch of 2; the parts' FLOPs add up to the model's."""
    images = {s: torch.randn(2, 3, 64, 32) for s in model.spectra}
    cams = torch.tensor([0, 1])
    flops = [count_params.count_flops(model, images, cams, train) for train in (True, False)]
    parts = {name: tuple(count_params.part_flops(f, path) for f in flops)
             for name, path in count_params.parts_of(model).items()}
    for k in (0, 1):  # each FLOP counted once
        assert sum(v[k] for v in parts.values()) == flops[k]["Global"]
    return parts


def test_count_params(capsys):
    from modeling import build_model
    from tools import count_params

    opts = ["MODEL.META_ARCHITECTURE", "DeMo", "MODEL.TRANSFORMER_TYPE", "vit_tiny_patch16_224", "INPUT.SIZE_TRAIN",
            "[64,32]"]
    assert count_params.main(["--num_classes", "40", "--cameras", "4", *opts]) == 0
    out = capsys.readouterr().out
    rows = {line.rsplit(None, 4)[0]: [float(v) for v in line.rsplit(None, 4)[1:]] for line in out.splitlines()[2:]}
    assert list(rows) == ["backbone (shared by RGB/NI/TI)", "pife", "hdm", "atmoe", "heads", "total"]
    cfg = load_config(None, [*opts, "MODEL.PRETRAIN_CHOICE", "none"])
    model = build_model(cfg, 40, 4)
    assert rows["total"][0] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.01)
    assert rows["backbone (shared by RGB/NI/TI)"][0] == pytest.approx(
        sum(p.numel() for p in model.backbone.parameters()) / 1e6, abs=0.01)
    flops = _flops_add_up(model, count_params)
    assert min(flops["hdm"]) > 0 and min(flops["atmoe"]) > 0
    assert flops["heads"][0] > 0 and flops["heads"][1] == 0  # the BNNeck heads run in training only
    # a backbone shared by the spectra of another method: counted once too
    shared = build_model(load_config(None, ["MODEL.TRANSFORMER_TYPE", "vit_tiny_patch16_224", "INPUT.SIZE_TRAIN",
                                            "[64,32]", "MODEL.SHARED_BACKBONE", "True", "MODEL.PRETRAIN_CHOICE",
                                            "none"]), 40, 4)
    assert _flops_add_up(shared, count_params)["backbone (shared by RGB/NI/TI)"][1] == flops[
        "backbone (shared by RGB/NI/TI)"][1]  # the same three vit_tiny passes
    # a parameter the model holds itself (the CLIP tower's CLS camera embedding) is a part of its own
    clip = build_model(load_config(RGBNT201_DEMO, ["MODEL.PRETRAIN_CHOICE", "none"]), 171, 4, pretrained=False)
    parts = count_params.parts_of(clip)
    assert list(parts) == ["backbone (shared by RGB/NI/TI)", "pife", "hdm", "atmoe", "heads", "camera_embed"]
    assert sum(p.numel() for path in parts.values() for p in count_params.part_parameters(clip, path)) == \
        sum(p.numel() for p in clip.parameters())


def _grad_cam_by_hand(model, images, cams, missing, size):
    """Grad-CAM maps of each available spectrum written out: the last backbone block's first call in the forward
    (the pass over the given images, spectra batched in model order), the gradient of f . f/|f| at its output,
    channel weights = mean gradient over the patches, ReLU of the weighted sum, min-max scaled at the input size as
    pytorch_grad_cam does."""
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


def test_grad_cam(demo_run, demo_root, tmp_path):
    """On a missing setting DeMo runs its backbone twice (the given images, then zero images for the missing
    spectrum): the maps are those of the first pass."""
    from tools import grad_cam

    samples = [0, 5, 130]
    opts = _tool_opts(demo_run, demo_root, tmp_path, **{"TEST.MISS": "r"})
    assert grad_cam.main([*opts, "--samples", *map(str, samples), "--tile-height", "64",
                          "--output", str(tmp_path / "cam.png")]) == 0
    assert_not_blank(read_png(tmp_path / "cam.png"))
    z = np.load(tmp_path / "cam.npz")
    assert list(z["spectra"]) == ["NI", "TI"] and z["maps"].shape == (3, 2, 64, 32)

    cfg = load_config(None, opts)
    predictor = Predictor.from_config(cfg)
    records = build_query_gallery(cfg).records
    batch = next(iter(predictor.loader([records[i] for i in samples], ["NI", "TI"])))
    assert len(set(batch["camid"].tolist())) > 1
    expected = _grad_cam_by_hand(predictor.model, batch["images"], batch["camid"], missing_spectra("r"), (32, 64))
    for k, spectrum in enumerate(["NI", "TI"]):
        assert all(np.ptp(m) > 0.5 for m in z["maps"][:, k])
        np.testing.assert_allclose(z["maps"][:, k], expected[spectrum], atol=1e-3, rtol=0)


def test_plot_results(demo_run, tmp_path):
    from tools import plot_results

    out, _, results = demo_run
    assert plot_results.main(["--results", str(out / "results.json"), "--labels", "DeMo", "--tb", str(out), "--out",
                              str(tmp_path)]) == 0
    for name in ("results_bars.png", "training_curves.png", "cross_DeMo.png"):
        assert_not_blank(read_png(tmp_path / name))
    scalars = plot_results.read_scalars(str(out))
    steps, values = scalars["eval/nothing/mAP"]
    assert list(steps) == [1, 2] and values[-1] == pytest.approx(results["nothing"]["mAP"], abs=1e-6)
    assert {"train/loss", "lr"} <= set(scalars)


def test_compile_finds_demo_backbone_blocks_and_keeps_the_features(demo_run, demo_root):
    """MODEL.COMPILE compiles the blocks a method has (before, only TOP-ReID's named parts were found: 0 for DeMo)."""
    import copy

    from modeling.compile import compile_blocks, is_compiled, transformer_blocks

    model = copy.deepcopy(demo_run[1].model).eval()  # the shared run's model stays uncompiled
    blocks = transformer_blocks(model)
    assert len(blocks) == len(model.backbone.blocks) == 12
    images = {s: torch.randn(2, 3, 64, 32) for s in model.spectra}
    cams = torch.tensor([0, 1])
    with torch.no_grad():
        before = model(images, cams, missing={"RGB"})
        assert compile_blocks(model, backend="eager") == 12 and all(is_compiled(b) for b in blocks)
        after = model(images, cams, missing={"RGB"})
    assert torch.allclose(before, after, atol=1e-5)
