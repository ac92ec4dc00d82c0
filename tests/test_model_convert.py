"""Checkpoints of the original TOP-ReID code: key mapping, loading, the conversion command, and clear errors for
weights of another architecture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from configs.config import load_config
from modeling import build_model
from modeling.checkpoint import load_model_weights
from modeling.convert import convert_original_state_dict, is_original_layout
from utils.checkpoint import CheckpointError, safe_load, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "tests" / "data" / "reference" / "manifests"
DEMO_CONFIG = str(ROOT / "configs" / "demo" / "TOP-ReID.yml")  # vit_tiny_patch16_224 at 64x32, DIRECT True

# The original layout, written out independently of modeling.convert (the CRM targets of re1/re2 are the other
# spectra in RGB, NI, TI order).
_CRM_SLOT = {("RGB", "NI"): "re1", ("RGB", "TI"): "re2", ("NI", "RGB"): "re1", ("NI", "TI"): "re2",
             ("TI", "RGB"): "re1", ("TI", "NI"): "re2"}
_TPM_NAMES = {"attn.norm_y.": "attn.normy.", "attn.q.": "attn.q_.", "attn.k.": "attn.k_.", "attn.v.": "attn.v_."}


def to_original_layout(state: dict[str, torch.Tensor], num_classes: int) -> dict[str, torch.Tensor]:
    """A project state_dict of a DIRECT True model as the original code would save it (with ``module.``, the
    backbones' ImageNet ``fc`` and the per-spectrum heads it always builds)."""
    out = {}
    for key, value in state.items():
        part, *rest = key.split(".")
        if part == "backbones":
            new = f"{rest[0]}.base.{'.'.join(rest[1:])}"
        elif part == "heads":
            suffix = {"tpm": "TPM", "concat": "ViT"}[rest[0]]
            new = f"{rest[1]}_{suffix}.{'.'.join(rest[2:])}"
        elif part == "tpm":
            tail = ".".join(rest[1:])
            for mine, theirs in _TPM_NAMES.items():
                tail = theirs + tail[len(mine):] if tail.startswith(mine) else tail
            new = f"TPM.Ro_{rest[0]}.Rotation.{tail}"
        else:
            assert part == "crm" and rest[0] == "recon"
            new = f"CRM.{rest[1]}RE.{_CRM_SLOT[rest[1], rest[2]]}.blocks.{'.'.join(rest[3:])}"
        out[f"module.{new}"] = value
    dim = state["backbones.RGB.cls_token"].shape[-1]
    for s in ("RGB", "NI", "TI"):
        out[f"module.{s}.base.fc.weight"], out[f"module.{s}.base.fc.bias"] = torch.randn(1000, dim), torch.zeros(1000)
        out[f"module.{s}.classifier.weight"] = torch.randn(num_classes, dim)
        for name, value in {"weight": torch.ones(dim), "bias": torch.zeros(dim), "running_mean": torch.zeros(dim),
                            "running_var": torch.ones(dim), "num_batches_tracked": torch.tensor(0)}.items():
            out[f"module.{s}.bottleneck.{name}"] = value
    return out


def demo_model(**opts: str):
    cfg = load_config(DEMO_CONFIG, [x for kv in opts.items() for x in kv])
    torch.manual_seed(0)
    return build_model(cfg, 10, 4)


@pytest.mark.parametrize("backbone", ["vit_base_patch16_224", "deit_small_patch16_224", "t2t_vit_t_24"])
def test_manifest_maps_onto_the_model(backbone):
    """Every key of the original checkpoint lands on a parameter of the same shape (or is dropped as unused)."""
    manifest = json.loads((MANIFESTS / f"topreid_{backbone}.json").read_text())
    placeholders = {k: torch.empty(0) for k in manifest}
    assert is_original_layout(placeholders)
    assert is_original_layout({f"module.{k}": v for k, v in placeholders.items()})
    with torch.device("meta"):
        model = build_model(load_config(None, ["MODEL.TRANSFORMER_TYPE", backbone, "MODEL.PRETRAIN_CHOICE", "none"]),
                           171, 4)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert not is_original_layout(expected)
    converted, dropped = convert_original_state_dict(placeholders, heads=model.heads.keys())
    by_new = dict(zip(converted, (k for k in manifest if k not in dropped)))
    assert set(converted) == set(expected)
    assert all(tuple(manifest[by_new[k]]) == shape for k, shape in expected.items())
    assert all(".base.fc." in k or ".base.head." in k or k.split(".")[1] in ("classifier", "bottleneck")
               for k in dropped)
    _, dropped_all_heads_kept = convert_original_state_dict(placeholders)
    assert all(".base." in k for k in dropped_all_heads_kept)


def test_project_checkpoints_round_trip(tmp_path):
    source = demo_model()
    target = demo_model()
    torch.manual_seed(5)
    for p in source.parameters():  # make the two differ everywhere
        p.data.normal_()
    path = tmp_path / "best.pth"
    save_checkpoint(str(path), {"format": "topreid", "model": source.state_dict(), "epoch": 3})
    load_model_weights(target, str(path))
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    bare = {f"module.{k}": v for k, v in source.state_dict().items()}
    assert load_model_weights(demo_model(), bare) == []


def test_original_checkpoint_loads_and_drops_the_unused_keys(caplog):
    source = demo_model()
    original = to_original_layout(source.state_dict(), num_classes=10)
    target = demo_model()
    with caplog.at_level("INFO", logger="modeling.checkpoint"):
        dropped = load_model_weights(target, original, source="TOPReID_60.pth")
    assert sorted(dropped) == sorted(k[len("module."):] for k in original
                                     if ".base.fc." in k or ".classifier." in k or ".bottleneck." in k)
    assert any("TOPReID_60.pth" in r.getMessage() and "dropped 24" in r.getMessage() for r in caplog.records)
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_weights_of_another_architecture_raise_naming_the_file(tmp_path):
    path = tmp_path / "other.pth"
    save_checkpoint(str(path), {"format": "topreid", "model": demo_model().state_dict()})
    with pytest.raises(CheckpointError, match="other.pth") as err:
        load_model_weights(demo_model(**{"MODEL.RE": "False", "MODEL.DIRECT": "False"}), str(path))
    message = str(err.value)
    assert "missing" in message and "heads.RGB.classifier.weight" in message
    assert "unexpected" in message and "crm.recon" in message
    with pytest.raises(CheckpointError, match=r"other.pth.*shape mismatch"):
        load_model_weights(demo_model(**{"MODEL.TRANSFORMER_TYPE": "vit_small_patch16_224"}), str(path))
    original = tmp_path / "original.pth"
    torch.save(to_original_layout(demo_model().state_dict(), 10), original)
    with pytest.raises(CheckpointError, match=r"original.pth.*original TOP-ReID layout.*shape mismatch"):
        load_model_weights(demo_model(**{"MODEL.TRANSFORMER_TYPE": "vit_small_patch16_224"}), str(original))


@pytest.mark.slow
def test_convert_checkpoint_command(tmp_path):
    source = demo_model()
    original = tmp_path / "TOPReID_120.pth"
    torch.save(to_original_layout(source.state_dict(), num_classes=10), original)
    output = tmp_path / "converted.pth"
    command = [sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"), "--config_file", DEMO_CONFIG,
               "--input", str(original), "--output", str(output)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    saved = safe_load(str(output))
    assert saved["format"] == "topreid" and saved["source"] == str(original)
    assert "vit_tiny_patch16_224" in saved["config"]
    target = demo_model()
    assert load_model_weights(target, str(output)) == []
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    from tools.convert_checkpoint import main

    before = output.stat().st_mtime_ns
    assert main(["--config_file", DEMO_CONFIG, "--input", str(original), "--output", str(output)]) == 1
    assert output.stat().st_mtime_ns == before
    # A config that does not match the checkpoint: refused, nothing written.
    other = tmp_path / "other.pth"
    assert main(["--config_file", DEMO_CONFIG, "--input", str(original), "--output", str(other),
                 "MODEL.TRANSFORMER_TYPE", "vit_small_patch16_224"]) == 1
    assert not other.exists()
    assert main(["--config_file", DEMO_CONFIG, "--input", str(output), "--output", str(other)]) == 1
    assert main(["--config_file", DEMO_CONFIG, "--input", str(original), "--output", str(output), "--force"]) == 0
    assert output.stat().st_mtime_ns != before


def test_count_params_command(capsys):
    from tools.count_params import main

    assert main(["--config_file", DEMO_CONFIG, "--num_classes", "10", "--cameras", "4"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0] + (" " + line.split()[1] if line.startswith("backbone") else ""): line.split()
            for line in out.splitlines()[2:]}
    assert set(rows) == {"backbone RGB", "backbone NI", "backbone TI", "tpm", "crm", "heads", "total"}
    model = demo_model()
    assert float(rows["total"][1]) == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.01)
    assert float(rows["crm"][-2]) > 0 and float(rows["crm"][-1]) == 0  # CRM runs in training only
    assert float(rows["backbone RGB"][-1]) > float(rows["tpm"][-1]) > 0


def test_backbone_flops_equal_the_vit_formula():
    """The FLOP count behind count_params and the benchmark's MFU: a ViT backbone's forward is the patch projection
    plus, per block, 24 N D^2 (qkv, projection, 4x MLP) + 4 N^2 D (scores and weighted sum), at 2 FLOPs a
    multiply-add; N tokens (patches + class token), width D."""
    from tools.count_params import count_flops, part_flops

    model = demo_model()
    backbone = model.backbones.RGB
    (height, width), patch = (64, 32), 16
    patches, dim, depth = (height // patch) * (width // patch), backbone.embed_dim, len(backbone.blocks)
    tokens = patches + 1
    expected = 2 * patches * (3 * patch * patch) * dim + depth * (24 * tokens * dim**2 + 4 * tokens**2 * dim)
    batch = 2
    images = {s: torch.randn(batch, 3, height, width) for s in model.spectra}
    for train in (True, False):
        flops = count_flops(model, images, torch.zeros(batch, dtype=torch.long), train)
        for spectrum in model.spectra:
            assert part_flops(flops, f"backbones.{spectrum}") == batch * expected
