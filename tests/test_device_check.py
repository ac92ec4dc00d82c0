"""benchmarks/device_check.sh, the one script run on a GPU machine, run here end to end with tiny sizes
(``DEVICE_CHECK_SMOKE=1``): the packages check, the CUDA tests (skipped without a GPU), the five benchmark sections
(TOP-ReID's train step, DeMo's and EDITOR's sections, TOP-ReID's evaluation, the epoch), the merged results and the
folder it leaves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _device_check(out: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "DEVICE_CHECK_SMOKE": "1", **env}
    return subprocess.run(["bash", "benchmarks/device_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_device_check_runs_through_and_leaves_four_files(tmp_path):
    out = tmp_path / "out"
    # The sections' GPU time limits, stretched: on this CPU, shared with other test processes, a smoke section of
    # DeMo or EDITOR (ViT-B/16) can take minutes.
    result = _device_check(out, DEVICE_CHECK_STRETCH="5")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # The device tool brings back at most 8 files: the script leaves 4.
    assert sorted(p.name for p in out.iterdir()) == ["detail.tar.gz", "device_check.log", "results.json",
                                                     "summary.txt"]
    merged = json.loads((out / "results.json").read_text())
    assert set(merged) == {"machine", "cuda_smoke", "demo_smoke", "editor_smoke", "eval_smoke", "epoch_smoke"}
    train = merged["cuda_smoke"]
    (backbone,) = [k for k in train if isinstance(train[k], dict)]
    assert set(train[backbone]) == {"fp32", "bf16", "bf16+compile"}
    assert all(m["samples_per_s"] > 0 and m["flops_per_sample"] > 0 for m in train[backbone].values())
    assert merged["eval_smoke"]["settings"] == 7
    demo = merged["demo_smoke"]
    assert demo["method"] == "DeMo" and demo["config"] == "configs/RGBNT201/DeMo.yml"
    assert set(demo["train"]) == {"fp32", "bf16", "bf16+compile"}
    assert all(demo["train"][m]["samples_per_s"] > 0 for m in ("fp32", "bf16"))
    assert demo["eval"]["settings"] == 7
    editor = merged["editor_smoke"]
    assert editor["method"] == "EDITOR" and editor["config"] == "configs/RGBNT201/EDITOR.yml"
    assert editor["backbone"] == "vit_base_patch16_224" and editor["size"] == [64, 48]
    assert set(editor["train"]) == {"fp32", "bf16", "bf16+compile"}
    assert all(m["samples_per_s"] > 0 and m["flops_per_sample"] > 0 for m in editor["train"].values())
    assert editor["train"]["bf16+compile"]["compiled_blocks"] == 12
    assert editor["eval"]["settings"] == 7
    assert len(merged["epoch_smoke"]["epochs"]) == 2

    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[0] == ("sections measured: ['cuda_smoke', 'demo_smoke', 'editor_smoke', 'eval_smoke', "
                          "'epoch_smoke']")
    figures = summary[1:]
    # three train-step modes of TOP-ReID; DeMo's three and its evaluation; EDITOR's likewise; TOP-ReID's evaluation,
    # the epoch; once each
    assert len(figures) == len(set(figures)) == 13, figures
    assert [line.split()[0] for line in figures] == (["train"] * 6 + ["evaluation"] + ["train"] * 3
                                                     + ["evaluation"] * 2 + ["epoch"])
    assert all(" DeMo " in line for line in figures[3:7])
    assert all(" EDITOR " in line for line in figures[7:11])

    with tarfile.open(out / "detail.tar.gz") as tar:
        names = set(tar.getnames())
        report = tar.extractfile("detail/pytest_cuda.txt").read().decode()
    assert {f"detail/{n}" for n in ("env.json", "pytest_cuda.xml", "results_cuda.json", "bench_epoch.txt")} <= names
    cuda_tests = (ROOT / "tests" / "test_cuda.py").read_text().count("\ndef test_")
    assert re.search(rf"\b{cuda_tests} (skipped|passed)\b", report) and report.rstrip().endswith("pytest exit 0")
    assert "done in" in (out / "device_check.log").read_text()


@pytest.mark.slow
def test_device_check_out_of_time_names_the_steps_and_fails(tmp_path):
    """Every step is capped by what is left of DEVICE_CHECK_SECONDS; a step cut short is reported by name and the
    script exits 1, with the files it has."""
    out = tmp_path / "out"
    result = _device_check(out, DEVICE_CHECK_SECONDS="1")
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("failed: ")]
    # The CUDA tests (torch import and four skips) could end within their second on a fast machine.
    assert failed[-5:] == [f"failed: benchmark section {name} (out of time)"
                           for name in ("cuda", "demo", "editor", "eval", "epoch")]
    assert failed[:-5] in ([], ["failed: CUDA tests (out of time)"])
    assert (out / "summary.txt").exists() and (out / "detail.tar.gz").exists()


def test_a_failing_train_step_mode_is_recorded_and_the_others_run(monkeypatch):
    from benchmarks import bench_gpu

    def fake(backbone, mode, size, batch, steps, warmup, device, peak, flops):
        if mode == "bf16":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"samples_per_s": 10.0, "flops_per_sample": flops or 1e9, "mfu": None, "peak_memory_gib": None,
                "warmup_s": 0.1, "optimizer": "foreach", "loss": 1.0}

    monkeypatch.setattr(bench_gpu, "_time_train_step", fake)
    seen = []
    result = bench_gpu.bench_train_step(smoke=True, measured=lambda r: seen.append(sum(map(len, (
        v for v in r.values() if isinstance(v, dict))))))
    modes = result[bench_gpu.SMOKE["backbone"]]
    assert modes["bf16"] == {"error": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"}
    assert modes["fp32"]["samples_per_s"] == modes["bf16+compile"]["samples_per_s"] == 10.0
    assert seen == [1, 2, 3]  # saved after every mode
    lines = bench_gpu.train_step_lines(result)
    assert len(lines) == 3 and "bf16: FAILED (OutOfMemoryError: CUDA out of memory" in lines[1]
