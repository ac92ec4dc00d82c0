"""DeMo through everything the engine offers: test_net.py on original DeMo checkpoints (plain and ``module.``) with
the RGBNT201 config, their conversion, the refusal of another method's checkpoint; training with resume, every
missing-spectrum setting and cross-spectral pair, DeMo's optimiser and schedule; the research tools on a DeMo
checkpoint. One tiny DeMo (vit_tiny on the demo data, 2 epochs) is trained once and shared."""

from __future__ import annotations

import json

import pytest
import torch

from configs import load_config
from modeling.checkpoint import model_from_checkpoint
from processor.trainer import Trainer
from tests.helpers import (
    CROSS_PAIRS,
    REFERENCE,
    REPO,
    add_module_prefix,
    assert_metrics,
    assert_not_blank,
    assert_one_error_line,
    check_compiled_blocks_keep_features,
    check_conversion,
    check_extracted_gallery,
    check_grad_cam,
    check_onnx_export,
    check_rank_list,
    check_search,
    check_tsne,
    eval_args,
    evaluate_original_checkpoint,
    extract_gallery,
    interrupted_run,
    loss_steps,
    read_png,
    rgbnt201_names,
    run_cli,
    run_test_net,
    save_key_layout,
    save_original_checkpoint,
    save_topreid_checkpoint,
    tiny_opts,
    write_rgbnt201,
)
from utils.checkpoint import CheckpointError
from utils.spectra import MISS_SETTINGS

pytestmark = pytest.mark.slow  # trains DeMo, runs test_net.py and the tools, builds CLIP ViT-B/16

RGBNT201_DEMO = str(REPO / "configs" / "RGBNT201" / "DeMo.yml")
BASE_LR, BACKBONE_LR = 3.5e-4, 1e-4
# DeMo's training recipe (configs/Base-DeMo.yml) on the tiny model: Adam, the demo schedule, a backbone rate of its own
# with no bias factor inside the backbone; evaluated on every setting and cross-spectral pair.
DEMO_RUN = {"MODEL.META_ARCHITECTURE": "DeMo", "SOLVER.MAX_EPOCHS": "2", "TEST.MISS": "all", "TEST.CROSS": "all",
            "SOLVER.OPTIMIZER_NAME": "Adam", "SOLVER.SCHEDULER": "demo", "SOLVER.BASE_LR": str(BASE_LR),
            "SOLVER.BACKBONE_LR": str(BACKBONE_LR), "SOLVER.BIAS_LR_FACTOR": "2.0",
            "SOLVER.BIAS_LR_FACTOR_IN_BACKBONE": "False"}


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
        assert_metrics(metrics)
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
    first = interrupted_run(load_config(None, opts), stop)
    resumed = Trainer(load_config(None, opts), resume=True)
    assert resumed.train() == results
    assert loss_steps(first.history, resumed.history) == loss_steps(reference.history)
    assert resumed.cross_results == reference.cross_results


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints of the original DeMo code: test_net.py, conversion, another method's checkpoint.

@pytest.fixture(scope="module")
def original_demo(tmp_path_factory):
    """An RGBNT201 tree of 8 test images and an original DeMo checkpoint (CLIP ViT-B/16, 171 identities, 4
    cameras, 256x128: manifests/demo_clip.json) saved as the original saves it: (data root, checkpoint)."""
    if not (REFERENCE / "reference_weights.py").is_file():
        pytest.skip(f"{REFERENCE} holds no reference weights")
    root = tmp_path_factory.mktemp("original_demo")
    write_rgbnt201(str(root / "data"), rgbnt201_names([1, 2], [1, 2], 1), rgbnt201_names([5, 6], [1, 2], 1))
    path = save_original_checkpoint(root / "DeMo.pth", "demo_clip")
    yield root / "data", path
    path.unlink()  # 400 MB


@pytest.mark.parametrize("wrapping", ["plain", "module"])
def test_test_net_evaluates_an_original_checkpoint_on_all_settings(original_demo, tmp_path, wrapping):
    data, weight = original_demo
    if wrapping == "module":  # saved from DataParallel
        weight = add_module_prefix(weight, tmp_path / "DeMo_module.pth")
    try:
        evaluate_original_checkpoint(RGBNT201_DEMO, data, weight, tmp_path / "out", "original DeMo layout")
    finally:
        if wrapping == "module":
            weight.unlink()


def test_converted_checkpoint_gives_the_original_features(original_demo, tmp_path):
    _, weight = original_demo
    converted = tmp_path / "DeMo_converted.pth"
    try:
        check_conversion(RGBNT201_DEMO, weight, converted, (171, 4), "DeMo", 10 * 512)
    finally:
        converted.unlink(missing_ok=True)  # 400 MB


@pytest.fixture(scope="module")
def topreid_checkpoint(demo_root, tmp_path_factory):
    """A tiny TOP-ReID checkpoint of this project (untrained: only its method matters here)."""
    return save_topreid_checkpoint(demo_root, tmp_path_factory.mktemp("topreid_checkpoint"))


def test_another_methods_checkpoint_is_one_error_naming_the_method_key(topreid_checkpoint, tmp_path):
    (tmp_path / "data").mkdir()
    proc = run_test_net(eval_args(RGBNT201_DEMO, tmp_path / "data", tmp_path / "out", topreid_checkpoint))
    error = assert_one_error_line(proc, "MODEL.META_ARCHITECTURE", "'TOPReID'", "'DeMo'")
    assert str(topreid_checkpoint) in error
    assert not (tmp_path / "out" / "results.json").exists()


def test_an_original_topreid_checkpoint_is_refused_naming_the_method_key(tmp_path):
    """A checkpoint of the original TOP-ReID code records its method by its layout."""
    path = save_key_layout(tmp_path / "TOPReID.pth", "topreid_deit_small_patch16_224", 20)  # the keys are what counts
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
    check_tsne(_tool_opts(demo_run, demo_root, tmp_path, **{"TEST.MISS": "nt"}), tmp_path / "tsne.png")


def test_rank_list(demo_run, demo_root, tmp_path):
    check_rank_list(_tool_opts(demo_run, demo_root, tmp_path, **{"TEST.MISS": "r"}), tmp_path, [0, 7, 100], 4)


@pytest.fixture(scope="module")
def demo_gallery_npz(demo_run, demo_root, tmp_path_factory):
    return extract_gallery(_tool_opts(demo_run, demo_root, tmp_path_factory.mktemp("demo_features")))


def test_extract_features(demo_run, demo_root, demo_gallery_npz, tmp_path):
    # DeMo's cat[ori, moe]: 3 + 7 parts of vit_tiny's 192
    check_extracted_gallery(demo_gallery_npz, _tool_opts(demo_run, demo_root, tmp_path), 10 * 192)


def test_search(demo_gallery_npz, tmp_path):
    check_search(demo_gallery_npz, tmp_path / "matches.json", 240)


@pytest.mark.parametrize("setting", ["nothing", "r"])
def test_export_onnx_features_match_pytorch(demo_run, demo_root, tmp_path, setting):
    check_onnx_export(_tool_opts(demo_run, demo_root, tmp_path, **{"TEST.MISS": setting}),
                      tmp_path / f"demo_{setting}.onnx", 10 * 192)


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


def test_grad_cam(demo_run, demo_root, tmp_path):
    """On a missing setting DeMo runs its backbone twice (the given images, then zero images for the missing
    spectrum): the maps are those of the first pass."""
    check_grad_cam(_tool_opts(demo_run, demo_root, tmp_path, **{"TEST.MISS": "r"}), tmp_path, [0, 5, 130])


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
    model = demo_run[1].model
    assert len(model.backbone.blocks) == 12
    check_compiled_blocks_keep_features(model, 12)
