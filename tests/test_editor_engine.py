"""EDITOR through everything the engine offers: test_net.py on original EDITOR checkpoints (plain and ``module.``)
with the RGBNT201 config, their conversion (AL 1 and AL 0), the refusal of another method's checkpoint and of an
EDITOR checkpoint for another method; training with resume (the OCFR class centres are checkpoint state), every
missing-spectrum setting and cross-spectral pair, a bf16 autocast step, two-process (gloo) training; the research
tools on an EDITOR checkpoint. One tiny EDITOR (configs/demo/EDITOR.yml on the demo data, 2 epochs) is trained once
and shared. The DeMo counterparts of the engine tests are in test_demo_engine.py; its bf16 step and two-process run
are here, beside EDITOR's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from configs import load_config
from modeling import build_model
from modeling.checkpoint import model_from_checkpoint
from modeling.methods.editor import MASK_FILL, MaskedAttention, topk_mask
from modeling.methods.editor_convert import convert_editor_state_dict
from processor.trainer import Trainer
from tests.helpers import (
    CROSS_PAIRS,
    REFERENCE,
    REPO,
    SPECTRA,
    add_module_prefix,
    assert_one_error_line,
    assert_results,
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
    rgbnt201_names,
    run_test_net,
    save_key_layout,
    save_original_checkpoint,
    save_topreid_checkpoint,
    write_rgbnt201,
)
from utils.checkpoint import CheckpointError
from utils.spectra import MISS_SETTINGS

pytestmark = pytest.mark.slow  # trains EDITOR, runs test_net.py, torchrun and the tools, builds EDITOR's ViT-B/16

CONFIGS = REPO / "configs"
DEMO_CONFIG = {"EDITOR": str(CONFIGS / "demo" / "EDITOR.yml"), "DeMo": str(CONFIGS / "demo" / "DeMo.yml")}
EDITOR_DEMO = DEMO_CONFIG["EDITOR"]
RGBNT201_EDITOR = str(CONFIGS / "RGBNT201" / "EDITOR.yml")
RGBNT100_EDITOR = str(CONFIGS / "RGBNT100" / "EDITOR.yml")  # MODEL.EDITOR.AL False, 128x256
RGBNT201_DEMO = str(CONFIGS / "RGBNT201" / "DeMo.yml")
RGBNT201_TOPREID = str(CONFIGS / "RGBNT201" / "TOP-ReID.yml")
TINY_FEAT_DIM = 3 * 192  # f = cat[v_RGB, v_NI, v_TI] of vit_tiny's width
TRAIN_IDS = 40  # identities of the demo data's training split
TERMS = ("loss", "fuse.id", "fuse.triplet", "al.id", "al.triplet", "bcc", "ocfr")


def _opts(root, out, **overrides: str) -> list[str]:
    """KEY VALUE pairs over a demo config (configs/demo/*.yml: its recipe, 64x32, P x K batches of 8 x 4) for a CPU
    run of 2 epochs, evaluated after the last on every setting and cross-spectral pair."""
    opts = {"DATASETS.ROOT_DIR": str(root), "OUTPUT_DIR": str(out), "MODEL.DEVICE": "cpu",
            "DATALOADER.NUM_WORKERS": "0", "SOLVER.MAX_EPOCHS": "2", "SOLVER.EVAL_PERIOD": "2",
            "SOLVER.LOG_PERIOD": "1", "TEST.MISS": "all", "TEST.CROSS": "all", **overrides}
    return [x for kv in opts.items() for x in kv]


def _centres(state: dict) -> dict[str, torch.Tensor]:
    """The OCFR class centres of a model state_dict, per spectrum."""
    return {s: state[f"ocfr.{s}_centers"] for s in SPECTRA}


def _assert_centres_set(centres: dict[str, torch.Tensor], count: int) -> None:
    """``count`` identities have a centre (a non-zero row): convex combinations of unit vectors, of norm <= 1."""
    for s, c in centres.items():
        norms = c.norm(dim=1)
        assert c.dtype == torch.float32 and torch.isfinite(c).all(), s
        assert int((norms > 0).sum()) == count, (s, int((norms > 0).sum()))
        assert float(norms.max()) <= 1 + 1e-5, s


@pytest.fixture(scope="module")
def editor_run(demo_root, tmp_path_factory):
    """A tiny EDITOR (configs/demo/EDITOR.yml: vit_tiny, AL 1, one token per head and one by frequency of 8) trained
    for 2 epochs on the demo data: (output_dir, trainer, results)."""
    out = tmp_path_factory.mktemp("editor_run")
    trainer = Trainer(load_config(EDITOR_DEMO, _opts(demo_root, out)))
    return out, trainer, trainer.train()


def _tool_args(editor_run, demo_root, out, **overrides: str) -> list[str]:
    """A tool's arguments for the EDITOR run's best.pth (one setting, TEST.MISS)."""
    return ["--config_file", EDITOR_DEMO, *_opts(demo_root, out, **{
        "TEST.WEIGHT": str(editor_run[0] / "best.pth"), "TEST.MISS": "nothing", "TEST.CROSS": "", **overrides})]


# ----------------------------------------------------------------------------------------------------------------------
# Training.

def test_training_evaluates_every_setting_and_cross_pair(editor_run):
    out, trainer, results = editor_run
    assert list(results) == list(MISS_SETTINGS)
    saved = json.loads((out / "results.json").read_text())
    assert_results(saved, MISS_SETTINGS, CROSS_PAIRS)  # EDITOR fills a missing spectrum: every pair is evaluated
    assert saved["settings"] == results
    assert list(trainer.cross_results) == CROSS_PAIRS
    assert len({round(m["mAP"], 6) for m in saved["cross"].values()}) > 1  # the pairs differ
    log = (out / "train_log.txt").read_text()
    for term in (*TERMS[1:], "query \\ gallery"):
        assert term in log, term
    # The class centres are checkpoint state: every training identity has one, the model's.
    best = torch.load(out / "best.pth", weights_only=False)
    assert best["epoch"] == 2
    _assert_centres_set(_centres(best["model"]), TRAIN_IDS)
    for s, c in _centres(best["model"]).items():
        assert torch.equal(c, trainer.model.ocfr.centers(s))
    assert (out / "last.pth").exists()


def test_resume_keeps_the_ocfr_centres_and_reproduces_the_run(editor_run, demo_root, tmp_path):
    """Stopped in epoch 2 and resumed: the centres are in last.pth and loaded back, and the resumed run's losses
    (each term, OCFR's included) and evaluation are the uninterrupted run's. Resumed with the centres zeroed, the
    next step's OCFR loss differs (and only it): the check sees the centres."""
    _, reference, results = editor_run
    stop = len(reference.data.train_loader) + 3  # epoch 2, after every identity has a centre
    run, control = tmp_path / "run", tmp_path / "zeroed"
    first = interrupted_run(load_config(EDITOR_DEMO, _opts(demo_root, run)), stop)
    centres = {s: first.model.ocfr.centers(s).clone() for s in SPECTRA}
    _assert_centres_set(centres, TRAIN_IDS)
    last = torch.load(run / "last.pth", weights_only=False)
    assert all(torch.equal(c, centres[s]) for s, c in _centres(last["model"]).items())

    shutil.copytree(run, control)
    for s in SPECTRA:
        last["model"][f"ocfr.{s}_centers"].zero_()
    torch.save(last, control / "last.pth")
    del last

    resumed = Trainer(load_config(EDITOR_DEMO, _opts(demo_root, run)), resume=True)
    assert all(torch.equal(resumed.model.ocfr.centers(s), centres[s]) for s in SPECTRA)
    assert resumed.train() == results
    assert loss_steps(first.history, resumed.history, terms=TERMS) == loss_steps(reference.history, terms=TERMS)
    assert resumed.cross_results == reference.cross_results

    zeroed = interrupted_run(load_config(EDITOR_DEMO, _opts(demo_root, control)), stop + 1, resume=True)
    (step,) = zeroed.history
    (want,) = [h for h in reference.history if (h["epoch"], h["iteration"]) == (step["epoch"], step["iteration"])]
    assert step["ocfr"] != want["ocfr"]
    assert all(step[t] == want[t] for t in TERMS if t not in ("loss", "ocfr"))


# ----------------------------------------------------------------------------------------------------------------------
# Mixed precision: a bf16 autocast training step on CPU (SOLVER.AMP_CPU), EDITOR's masked attention in it.

class SoftmaxRecorder(TorchDispatchMode):
    """Records the softmax outputs (as computed, after autocast) of the calls of the given modules, with the ``keep``
    mask each call was given (its second argument)."""

    def __init__(self, modules) -> None:
        super().__init__()
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.keep: torch.Tensor | None = None
        self.handles = [h for m in modules for h in (m.register_forward_pre_hook(self.enter),
                                                     m.register_forward_hook(self.leave))]

    def enter(self, module, args) -> None:
        self.keep = args[1]

    def leave(self, module, args, output) -> None:
        self.keep = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.keep is not None and func.overloadpacket in (torch.ops.aten._softmax, torch.ops.aten.softmax):
            self.records.append((out.detach().clone(), self.keep.clone()))
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _assert_masked_weights(weights: torch.Tensor, keep: torch.Tensor, dtype: torch.dtype) -> None:
    """Attention weights [B, heads, T, T] of a masked attention with ``keep`` [B, T]: computed in ``dtype``; a kept
    token gives a dropped one exactly zero weight, and its weights sum to 1."""
    assert weights.dtype == dtype
    kept_rows = keep[:, None, :, None].expand_as(weights)
    dropped_keys = ~keep[:, None, None, :].expand_as(weights)
    assert (~keep).any()  # there is something to mask
    assert weights[kept_rows & dropped_keys].eq(0).all()
    sums = weights.float().sum(-1)[keep[:, None, :].expand(-1, weights.shape[1], -1)]
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masked_attention_under_autocast(dtype):
    """The -65504 fill in reduced precision: fp16's lowest value; bf16 rounds it to -65536, also finite. Masked
    tokens get zero weight, and a kept token's output is that of the attention over the kept tokens alone."""
    fill = torch.tensor(MASK_FILL, dtype=dtype)
    assert torch.isfinite(fill) and fill <= -65504
    torch.manual_seed(0)
    attention = MaskedAttention(96, 12).eval()
    x = 4 * torch.randn(2, 9, 96)
    keep = torch.tensor([[1, 1, 0, 1, 0, 0, 1, 1, 0], [1, 0, 0, 0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    recorder = SoftmaxRecorder([attention])
    try:
        with torch.no_grad(), recorder, torch.autocast("cpu", dtype=dtype):
            out = attention(x, keep)
    finally:
        recorder.remove()
    ((weights, _),) = recorder.records
    _assert_masked_weights(weights, keep, dtype)
    assert out.dtype == dtype and out[~keep].eq(0).all()
    for b in range(2):
        with torch.no_grad():
            alone = attention(x[b:b + 1, keep[b]], torch.ones(1, int(keep[b].sum()), dtype=torch.bool))
        torch.testing.assert_close(out[b, keep[b]].float(), alone[0], rtol=0, atol=5e-2)


@pytest.mark.parametrize("method", ["EDITOR", "DeMo"])
def test_bf16_autocast_training_step(demo_root, tmp_path, method):
    trainer = Trainer(load_config(DEMO_CONFIG[method], _opts(demo_root, tmp_path, **{
        "SOLVER.AMP_CPU": "True", "SOLVER.EVAL_PERIOD": "0"})))
    assert trainer.cfg.SOLVER.AMP_DTYPE == "bf16" and trainer.cfg.SOLVER.AMP  # the defaults
    assert trainer.amp and trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    model = trainer.model
    dtypes = []
    head = model.heads["fuse"] if method == "EDITOR" else next(iter(model.heads.values()))
    handles = [head.classifier.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))]
    attention = [m for m in model.modules() if isinstance(m, MaskedAttention)]
    recorder = SoftmaxRecorder(attention)
    joint = []
    if method == "EDITOR":
        assert len(attention) == 4  # HMA: one block per spectrum, one over the three
        handles.append(model.hma.register_forward_hook(lambda m, args, out: joint.append((out[1], args[1]))))
    labels = []
    model.train()
    try:
        for _, batch in zip(range(2), trainer.data.train_loader):
            labels.append(batch["pid"])
            with recorder:
                trainer.run_step(batch)
            assert all(torch.isfinite(v) for v in trainer.step_outputs.values()), trainer.step_outputs
    finally:
        recorder.remove()
        for handle in handles:
            handle.remove()
    assert dtypes == [torch.bfloat16] * 2 and not trainer.nonfinite_loss()
    if method == "DeMo":
        assert not recorder.records
        return
    assert set(trainer.step_outputs) == set(TERMS)
    assert len(recorder.records) == 2 * 4
    for weights, keep in recorder.records:
        _assert_masked_weights(weights, keep, torch.bfloat16)
    for spectra, keep in joint:  # HMA's output: dropped tokens stay zero
        assert all(z[~keep].eq(0).all() for z in spectra.values())
    # the centres stay float32 and hold the batches' identities
    _assert_centres_set({s: model.ocfr.centers(s) for s in SPECTRA}, len(torch.cat(labels).unique()))


# ----------------------------------------------------------------------------------------------------------------------
# Two processes (torchrun, gloo).

DDP_DRIVER = textwrap.dedent('''\
    """train_net.py, and then each rank's model state in OUTPUT_DIR/rank<r>.pt."""
    import os
    import sys

    sys.path.insert(0, {repo!r})
    import torch  # noqa: E402

    import train_net  # noqa: E402
    from processor.trainer import Trainer  # noqa: E402

    train = Trainer.train


    def train_and_save(self):
        try:
            return train(self)
        finally:
            torch.save(self.model.state_dict(), os.path.join(self.output_dir, f"rank{{self.rank}}.pt"))


    Trainer.train = train_and_save
    sys.exit(train_net.main(sys.argv[1:]))
    ''')


@pytest.mark.parametrize("method", ["EDITOR", "DeMo"])
def test_two_process_training_with_gloo(tmp_path, method):
    """One epoch of two global batches of 16 (4 identities x 4; each process takes 2 identities) on 8 training
    identities. The processes end with the same parameters. EDITOR's class centres: the update is the global batch's
    (summed over the processes), so both processes hold the same centres, and every identity drawn by either
    process has its centre in the checkpoint (with DDP's broadcast of rank 0's buffers alone, the identities of
    rank 1 would have none)."""
    data = tmp_path / "data"
    write_rgbnt201(str(data), rgbnt201_names(range(1, 9), [1, 2], 2), rgbnt201_names([20, 21, 22, 23], [1, 2], 1))
    out = tmp_path / "ddp"
    driver = tmp_path / "ddp_driver.py"
    driver.write_text(DDP_DRIVER.format(repo=str(REPO)))
    opts = _opts(tmp_path / "data", out, **{"DATASETS.NAMES": "RGBNT201", "SOLVER.MAX_EPOCHS": "1",
                                            "SOLVER.EVAL_PERIOD": "1", "SOLVER.IMS_PER_BATCH": "16", "TEST.CROSS": ""})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
           "--config_file", DEMO_CONFIG[method], *opts]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pth") == ["best.pth", "last.pth"]
    assert_results(json.loads((out / "results.json").read_text()), MISS_SETTINGS)
    assert "world size 2" in (out / "train_log.txt").read_text()

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    last = torch.load(out / "last.pth", weights_only=False)["model"]
    statistics = ("running_mean", "running_var", "num_batches_tracked")  # each process's own last batch
    shared = [k for k in last if not k.endswith(statistics)]
    assert [k for k in shared if not torch.equal(ranks[0][k], ranks[1][k])] == []
    assert [k for k in shared if not torch.equal(ranks[0][k], last[k])] == []
    if method == "EDITOR":
        assert len(_centres(last)) == 3
        _assert_centres_set(_centres(last), 8)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints of the original EDITOR code: test_net.py, conversion, other methods' checkpoints.

@pytest.fixture(scope="module")
def original_editor(tmp_path_factory):
    """An RGBNT201 tree of 2 test images at the input size (128x256: no resize) and an original EDITOR checkpoint
    (ViT-B/16, MODEL.AL 1, 171 identities, 4 cameras, 256x128: manifests/editor_vit.json) saved as the original
    saves it: (data root, checkpoint)."""
    if not (REFERENCE / "README_EDITOR.md").is_file():
        pytest.skip(f"{REFERENCE} holds no EDITOR reference weights")
    root = tmp_path_factory.mktemp("original_editor")
    write_rgbnt201(str(root / "data"), rgbnt201_names([1, 2], [1, 2], 1), rgbnt201_names([5], [1, 2], 1),
                   size=(128, 256))
    path = save_original_checkpoint(root / "EDITOR.pth", "editor_vit")
    yield root / "data", path
    path.unlink()  # 470 MB


@pytest.fixture(scope="module")
def direct_features(original_editor) -> dict[str, np.ndarray]:
    """Test image name -> the feature of the original's function (the reference weights through the key map, loaded
    strictly, as tests/test_editor_parity.py proves it) applied directly to the test images, read and normalised
    here."""
    data, weight = original_editor
    cfg = load_config(RGBNT201_EDITOR, ["MODEL.PRETRAIN_CHOICE", "none"])
    model = build_model(cfg, 171, 4, pretrained=False)
    converted, _ = convert_editor_state_dict(torch.load(weight, weights_only=True), model)
    model.load_state_dict(converted, strict=True)
    folder = data / "RGBNT201" / "test"
    names = sorted(p.name for p in (folder / "RGB").iterdir())
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD))
    images = {}
    for s in SPECTRA:
        pixels = np.stack([np.asarray(Image.open(folder / s / n).convert("RGB")) for n in names])
        images[s] = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    assert images["RGB"].shape == (2, 3, 256, 128)
    cams = torch.tensor([int(n.split("_cam")[1].split("_")[0]) - 1 for n in names])
    with torch.no_grad():
        features = model.eval()(images, cams).numpy()
    return dict(zip(names, features))


@pytest.mark.parametrize("wrapping", ["plain", "module"])
def test_test_net_evaluates_an_original_checkpoint_on_all_settings(original_editor, direct_features, tmp_path,
                                                                   wrapping):
    """test_net.py reads the checkpoint (sizes from it), evaluates the seven settings, and its ``nothing`` features
    of the test images through the data pipeline are the original's function of them."""
    data, weight = original_editor
    if wrapping == "module":  # saved from DataParallel
        weight = add_module_prefix(weight, tmp_path / "EDITOR_module.pth")
    try:
        evaluate_original_checkpoint(RGBNT201_EDITOR, data, weight, tmp_path / "out", "original EDITOR layout",
                                     "TEST.SAVE_FEATURES", "True")
    finally:
        if wrapping == "module":
            weight.unlink()
    z = np.load(tmp_path / "out" / "features.npz")
    assert sorted(k for k in z.files if k.startswith("feat_")) == sorted(f"feat_{s}" for s in MISS_SETTINGS)
    assert sorted(set(z["names"])) == sorted(direct_features)  # query and gallery: the test set, twice
    assert z["feat_nothing"].shape == (4, 3 * 768)
    for name, feature in zip(z["names"], z["feat_nothing"]):
        np.testing.assert_allclose(feature, direct_features[name], rtol=0, atol=1e-4)
    assert not np.allclose(z["feat_nothing"], z["feat_r"], atol=1e-3)


@pytest.mark.parametrize("manifest, config, size", [("editor_vit", RGBNT201_EDITOR, (256, 128)),
                                                    ("editor_vit_al0", RGBNT100_EDITOR, (128, 256))])
def test_converted_checkpoint_gives_the_original_features(tmp_path, manifest, config, size):
    """MODEL.AL 1 (RGBNT201) and AL 0 (RGBNT100: one head shared by the spectra, 128x256)."""
    if not (REFERENCE / "README_EDITOR.md").is_file():
        pytest.skip(f"{REFERENCE} holds no EDITOR reference weights")
    weight = save_original_checkpoint(tmp_path / "EDITOR.pth", manifest)
    converted = tmp_path / "EDITOR_converted.pth"
    try:
        check_conversion(config, weight, converted, (171, 4), "EDITOR", 3 * 768, input_size=size)
        heads = {k.split(".")[1] for k in torch.load(converted, weights_only=False)["model"] if k.startswith("heads.")}
        assert heads == ({"fuse", "al"} if manifest == "editor_vit" else {"fuse", "backbone"})
    finally:
        weight.unlink()
        converted.unlink(missing_ok=True)  # 470 MB each


@pytest.fixture(scope="module")
def topreid_checkpoint(demo_root, tmp_path_factory):
    """A tiny TOP-ReID checkpoint of this project (untrained: only its method matters here)."""
    return save_topreid_checkpoint(demo_root, tmp_path_factory.mktemp("topreid_checkpoint"))


@pytest.mark.parametrize("case", ["TOP-ReID checkpoint, EDITOR config", "EDITOR checkpoint, DeMo config"])
def test_another_methods_checkpoint_is_one_error_naming_the_method_key(topreid_checkpoint, tmp_path, case):
    (tmp_path / "data").mkdir()
    if case.startswith("TOP-ReID"):
        weight, config, words = topreid_checkpoint, RGBNT201_EDITOR, ("'TOPReID'", "'EDITOR'")
    else:  # the keys of an original EDITOR checkpoint
        weight, config, words = save_key_layout(tmp_path / "EDITOR.pth", "editor_vit"), RGBNT201_DEMO, ("'EDITOR'",
                                                                                                      "'DeMo'")
    proc = run_test_net(eval_args(config, tmp_path / "data", tmp_path / "out", weight))
    error = assert_one_error_line(proc, "MODEL.META_ARCHITECTURE", *words)
    assert str(weight) in error
    assert not (tmp_path / "out" / "results.json").exists()


def test_converting_for_another_method_is_refused(tmp_path, capsys):
    from tools import convert_checkpoint

    weight, output = save_key_layout(tmp_path / "EDITOR.pth", "editor_vit"), tmp_path / "x.pth"
    code = convert_checkpoint.main(["--config_file", RGBNT201_DEMO, "--input", str(weight), "--output", str(output)])
    captured = capsys.readouterr()
    proc = subprocess.CompletedProcess([], code, captured.out, captured.err)
    error = assert_one_error_line(proc, "MODEL.META_ARCHITECTURE = 'EDITOR'", "'DeMo'")
    assert str(weight) in error and not output.exists()


@pytest.mark.parametrize("manifest, config, saved, wanted", [
    ("demo_clip", RGBNT201_EDITOR, "DeMo", "EDITOR"),
    ("topreid_deit_small_patch16_224", RGBNT201_EDITOR, "TOPReID", "EDITOR"),
    ("editor_vit", RGBNT201_DEMO, "EDITOR", "DeMo"),
    ("editor_vit_al0", RGBNT201_TOPREID, "EDITOR", "TOPReID"),
])
def test_an_original_checkpoint_of_another_method_is_refused(tmp_path, manifest, config, saved, wanted):
    """An original code's checkpoint records its method by its layout (the keys are what counts)."""
    path = save_key_layout(tmp_path / "original.pth", manifest)
    cfg = load_config(config, ["MODEL.PRETRAIN_CHOICE", "none"])
    with pytest.raises(CheckpointError, match=rf"MODEL\.META_ARCHITECTURE = '{saved}', the config says '{wanted}'"):
        model_from_checkpoint(cfg, str(path))


# ----------------------------------------------------------------------------------------------------------------------
# The research tools on the EDITOR checkpoint.

def test_tsne(editor_run, demo_root, tmp_path):
    check_tsne(_tool_args(editor_run, demo_root, tmp_path, **{"TEST.MISS": "nt"}), tmp_path / "tsne.png")


def test_rank_list(editor_run, demo_root, tmp_path):
    check_rank_list(_tool_args(editor_run, demo_root, tmp_path, **{"TEST.MISS": "r"}), tmp_path, [0, 7, 100], 4)


def test_extract_features_and_search(editor_run, demo_root, tmp_path):
    args = _tool_args(editor_run, demo_root, tmp_path)
    npz = extract_gallery(args)
    check_extracted_gallery(npz, args, TINY_FEAT_DIM)
    check_search(npz, tmp_path / "matches.json", 240)


def test_grad_cam(editor_run, demo_root, tmp_path):
    """On a missing setting EDITOR runs its backbone on the given images, then on a zero image per camera for the
    missing spectrum: the maps are those of the first pass."""
    check_grad_cam(_tool_args(editor_run, demo_root, tmp_path, **{"TEST.MISS": "r"}), tmp_path, [0, 5, 130])


def test_lowest_index_ties_as_exported(editor_run):
    """ONNX TopK keeps, of equal scores, the lowest index; torch.topk on CPU picks its own way (EDITOR's selections
    tie often: frequency counts, saturated attention). Within ``as_exported()`` the model breaks ties as its graph."""
    scores = torch.tensor([[1, 5, 3, 5, 5, 0], [2, 2, 2, 2, 2, 2]])
    indices, mask = topk_mask(scores, 2, lowest_index_ties=True)
    assert indices.tolist() == [[1, 3], [0, 1]] and mask.sum(1).tolist() == [2, 2]
    assert topk_mask(scores.float(), 2)[0][0].tolist() in ([1, 3], [1, 4], [3, 4])
    model = editor_run[1].model
    with model.as_exported():
        assert model.sfts.lowest_index_ties
    assert not model.sfts.lowest_index_ties


@pytest.mark.parametrize("setting", ["nothing", "r"])
def test_export_onnx_features_match_pytorch(editor_run, demo_root, tmp_path, setting):
    check_onnx_export(_tool_args(editor_run, demo_root, tmp_path, **{"TEST.MISS": setting}),
                      tmp_path / f"editor_{setting}.onnx", TINY_FEAT_DIM)


def test_compile_finds_editor_backbone_blocks_and_keeps_the_features(editor_run):
    """MODEL.COMPILE compiles the shared backbone's 12 blocks (HMA's masked blocks stay eager); the attention maps
    that SFTS reads are still recorded, the features unchanged."""
    model = editor_run[1].model
    assert len(model.backbone.blocks) == 12
    check_compiled_blocks_keep_features(model, 12)
