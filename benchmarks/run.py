"""All performance measurements of the project, each next to its target; writes benchmarks/results.json.

    .venv/bin/python benchmarks/run.py            # full sizes (several minutes on a 2-core CPU)
    .venv/bin/python benchmarks/run.py --quick    # small sizes, a smoke run (figures are not the targets)
    .venv/bin/python benchmarks/run.py --only input train   # some sections; prints, writes only with --output

Sections: (1) metrics, see benchmarks/bench_metrics.py; (2) the missing-spectral table: `TEST.MISS all` in one pass
against the full-spectrum evaluation alone, and a single missing setting; the cross-spectral table: `TEST.CROSS all`
(six pairs, one pass) against one full-spectrum evaluation; (3) the train step (eager, activation
checkpointing: time and peak memory in a fresh process); (4) the input pipeline: images/s of one worker, decoding
per sample and with DATALOADER.CACHE_IMAGES, against a plain per-spectrum PIL + torchvision pipeline, on RGBNT201
(three files) and RGBNT100 (one stitched file) layouts, with camera-like pictures and with uniform noise (the
decoder's worst case);
(5) `loader`: the training loader's samples/s per worker with DATALOADER.CACHE_IMAGES on a synthetic RGBNT201-like set,
and the workers needed for 1,500 samples/s (extrapolated); (6) `cuda`: the train step of ViT-B/16, DeiT-S/16 and
T2T-ViT-24 at batch 128 in fp32, bf16 and bf16 with compiled blocks (samples/s, MFU, peak memory); `demo` and
`editor`: the same train step and the seven-setting table (as `eval`) for DeMo with CLIP ViT-B/16
(benchmarks/bench_demo.py) and for EDITOR with ViT-B/16 (benchmarks/bench_editor.py); (7) `epoch`: an epoch of a
synthetic RGBNT201-sized set through the real Trainer and loader; (8) `eval`: the seven-setting table on a 1,715 x
8,575 test set. (6)-(8), `demo` and `editor` need a GPU, or `--smoke` (tiny sizes, any device; see
benchmarks/bench_gpu.py).
DeMo and EDITOR against their original code on CPU are benchmarks/bench_demo.py and benchmarks/bench_editor.py, run
on their own (each needs a checkout of that code).

    bash benchmarks/device_check.sh   # on a GPU machine: CUDA tests, (6)-(8), demo, editor, into ${OUT:-bench_out}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import bench_demo, bench_editor, bench_gpu  # noqa: E402
from benchmarks.synthetic import pixels  # noqa: E402
from configs import load_config  # noqa: E402


def _cfg(backbone: str, size: tuple[int, int], *extra: str):
    return load_config(None, ["MODEL.TRANSFORMER_TYPE", backbone, "MODEL.PRETRAIN_CHOICE", "none",
                              "INPUT.SIZE_TRAIN", f"[{size[0]},{size[1]}]", "INPUT.SIZE_TEST", f"[{size[0]},{size[1]}]",
                              "MODEL.DROP_PATH", "0.0", *extra])


def _images(batch: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {s: torch.randn(batch, 3, *size, generator=g) for s in ("RGB", "NI", "TI")}


class _Loader(list):
    """A list of batches in the loader's format (inference needs only iteration)."""


def bench_missing_table(backbone: str, size: tuple[int, int], batch: int, batches: int, repeats: int) -> dict:
    from modeling import build_model
    from processor.inference import extract_features
    from utils.spectra import MISS_SETTINGS

    torch.manual_seed(0)
    model = build_model(_cfg(backbone, size), num_classes=171, camera_num=4).eval()
    images = _images(batch, size)
    loader = _Loader({"images": images, "camid": torch.arange(batch) % 4, "pid": torch.arange(batch),
                      "sceneid": torch.full((batch,), -1), "name": [str(i) for i in range(batch)]}
                     for _ in range(batches))

    def timed(settings: list[str]) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            extract_features(model, loader, torch.device("cpu"), settings)
            best = min(best, time.perf_counter() - start)
        return best

    timed(["nothing"])  # warm-up
    full, all_settings, single = timed(["nothing"]), timed(list(MISS_SETTINGS)), timed(["r"])
    return {"backbone": backbone, "size": list(size), "images": batch * batches, "full_s": full, "all_s": all_settings,
            "all_over_full": all_settings / full, "single_r_s": single, "single_over_full": single / full}


def bench_cross_table(backbone: str, size: tuple[int, int], batch: int, batches: int, repeats: int) -> dict:
    """The whole `TEST.CROSS all` table (one pass over the three single-spectrum sides, then the six pairs scored)
    against one full-spectrum evaluation (extraction + metrics), as test_net runs them. Batch b has cameras b % 4,
    so an identity is seen by other cameras in the other batches; the first batch is the query."""
    from evaluation import evaluate_cross, evaluate_settings
    from modeling import build_model
    from processor.inference import extract_features, extraction_settings
    from utils.spectra import parse_cross

    torch.manual_seed(0)
    model = build_model(_cfg(backbone, size), num_classes=171, camera_num=4).eval()
    images = _images(batch, size)
    loader = _Loader({"images": images, "camid": torch.full((batch,), b % 4), "pid": torch.arange(batch) // 2,
                      "sceneid": torch.full((batch,), -1), "name": [f"{b}_{i}" for i in range(batch)]}
                     for b in range(batches))
    pairs = parse_cross("all")
    cpu = torch.device("cpu")

    def full() -> None:
        evaluate_settings(extract_features(model, loader, cpu, ["nothing"]), batch, "camid")

    def cross() -> None:
        evaluate_cross(extract_features(model, loader, cpu, extraction_settings([], pairs)), batch, "camid", pairs)

    full()  # warm-up
    best = {full: float("inf"), cross: float("inf")}
    for _ in range(repeats):  # alternated, so that a change in the machine's load hits both alike
        for fn in best:
            start = time.perf_counter()
            fn()
            best[fn] = min(best[fn], time.perf_counter() - start)
    full_s, cross_s = best[full], best[cross]
    return {"backbone": backbone, "size": list(size), "images": batch * batches, "pairs": len(pairs),
            "full_s": full_s, "cross_s": cross_s, "cross_over_full": cross_s / full_s}


_STEP_CHILD = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
from configs import load_config
from modeling import build_model
from loss import build_loss
from solver import build_optimizer
opts = {opts!r}
cfg = load_config(None, opts)
torch.manual_seed(0)
model = build_model(cfg, num_classes=171, camera_num=4).train()
loss_fn, opt = build_loss(cfg, 171), build_optimizer(cfg, model)
g = torch.Generator().manual_seed(0)
h, w = cfg.INPUT.SIZE_TRAIN
images = {{s: torch.randn({batch}, 3, h, w, generator=g) for s in ("RGB", "NI", "TI")}}
pids = torch.arange({batch}) // 4
cams = torch.arange({batch}) % 4
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for i in range({steps} + 1):
    start = time.perf_counter()
    loss, _ = loss_fn(model(images, cams), pids)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"step_s": min(times[1:]), "peak_rss_mb": peak / 1024, "rss_before_mb": before / 1024}}))
"""


def bench_train_step(backbone: str, size: tuple[int, int], batch: int, steps: int) -> dict:
    out = {"backbone": backbone, "size": list(size), "batch": batch}
    for name, flag in (("eager", "False"), ("checkpointing", "True")):
        opts = ["MODEL.TRANSFORMER_TYPE", backbone, "MODEL.PRETRAIN_CHOICE", "none", "INPUT.SIZE_TRAIN",
                f"[{size[0]},{size[1]}]", "MODEL.DROP_PATH", "0.0", "MODEL.GRAD_CHECKPOINT", flag]
        code = _STEP_CHILD.format(root=str(ROOT), opts=opts, batch=batch, steps=steps)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        out[name]["samples_per_s"] = batch / out[name]["step_s"]
    out["checkpointing_memory_saving_mb"] = out["eager"]["peak_rss_mb"] - out["checkpointing"]["peak_rss_mb"]
    return out


def _write_tree(root: Path, layout: str, n: int, content: str) -> list:
    """A synthetic tree of real-sized JPEGs in one data set layout; returns its records."""
    from PIL import Image

    from data.datasets import build_dataset

    rng = np.random.default_rng(0)
    if layout == "RGBNT201":
        for s in ("RGB", "NI", "TI"):
            folder = root / "RGBNT201" / "train_171" / s
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(pixels(rng, 256, 128, content)).save(
                    folder / f"{i // 4 + 1:06d}_cam{i % 4 + 1}_0_{i:02d}.jpg", quality=90)
        for s in ("RGB", "NI", "TI"):
            d = root / "RGBNT201" / "test" / s
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels(rng, 256, 128, content)).save(d / "000001_cam1_0_00.jpg")
    else:
        base = root / "RGBNT100" / "rgbir"
        for split in ("bounding_box_train", "query", "bounding_box_test"):
            (base / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(pixels(rng, 128, 768, content)).save(
                base / "bounding_box_train" / f"{i // 4 + 1:04d}_c{i % 4 + 1:04d}_{i:03d}.jpg")
        for split in ("query", "bounding_box_test"):
            Image.fromarray(pixels(rng, 128, 768, content)).save(base / split / "0001_c0001_000.jpg")
    return build_dataset(layout, str(root)).train


def bench_input_pipeline(n: int, repeats: int) -> dict:
    """Samples/s of one worker (main process, one thread, no DataLoader): this project's dataset, decoding per
    sample and with ``DATALOADER.CACHE_IMAGES`` (built before timing; its build time is reported), against plain
    PIL + torchvision per spectrum (open each spectrum's file, crop stitched files after a full decode per
    spectrum), for both layouts and both picture contents (see :func:`benchmarks.synthetic.pixels`)."""
    from PIL import Image
    from torchvision import transforms as T

    from data.loader import ImageCache, MultiSpectralDataset, decode_record
    from data.transforms import build_transforms
    from utils.spectra import SPECTRA

    cfg = load_config("configs/RGBNT201/TOP-ReID.yml")
    train_tf = build_transforms(cfg, is_train=True)
    plain_tf = T.Compose([T.Resize((256, 128), interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(0.5),
                          T.Pad(10), T.RandomCrop((256, 128)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3),
                          T.RandomErasing(p=0.5, value="random")])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for content in ("photo", "noise"):
            for layout in ("RGBNT201", "RGBNT100"):
                records = _write_tree(Path(tmp) / content / layout, layout, n, content)
                dataset = MultiSpectralDataset(records, SPECTRA, train_tf)
                torch.set_num_threads(1)
                start = time.perf_counter()
                cache = ImageCache(records, SPECTRA, train_tf, threads=1)
                cache_build_s = time.perf_counter() - start
                cached = MultiSpectralDataset(records, SPECTRA, train_tf, cache=cache)

                def ours(dataset: MultiSpectralDataset = dataset) -> None:
                    for i in range(len(dataset)):
                        dataset[(i, i)]

                def ours_cached(dataset: MultiSpectralDataset = cached) -> None:
                    for i in range(len(dataset)):
                        dataset[(i, i)]

                def plain(records: list = records) -> None:
                    for r in records:
                        for k, s in enumerate(SPECTRA):
                            img = Image.open(r.paths[s]).convert("RGB")
                            if r.stitched:
                                w = img.width // 3
                                img = img.crop((k * w, 0, (k + 1) * w, img.height))
                            plain_tf(img)

                # The parts on their own: decoding, and the transforms on decoded images.
                arrays = [image for r in records for image in decode_record(r, SPECTRA).values()]
                pictures = [Image.fromarray(a) for a in arrays]

                def ours_decode(records: list = records) -> None:
                    for r in records:
                        decode_record(r, SPECTRA)

                def plain_decode(records: list = records) -> None:
                    for r in records:
                        for s in SPECTRA:
                            Image.open(r.paths[s]).convert("RGB")

                def ours_transform(arrays: list = arrays) -> None:
                    for a in arrays:
                        train_tf(a)

                def plain_transform(pictures: list = pictures) -> None:
                    for p in pictures:
                        plain_tf(p)

                files = sorted({p for r in records for p in r.paths.values()})
                torch.set_num_threads(1)  # one worker = one thread
                best = dict.fromkeys([ours, ours_cached, plain, ours_decode, plain_decode, ours_transform,
                                      plain_transform], float("inf"))
                for _ in range(repeats):  # interleaved, so that both see the same machine load
                    for fn in best:
                        start = time.perf_counter()
                        fn()
                        best[fn] = min(best[fn], time.perf_counter() - start)
                torch.set_num_threads(os.cpu_count() or 1)
                ours_rate, plain_rate = len(records) / best[ours], len(records) / best[plain]
                cached_rate = len(records) / best[ours_cached]
                results[f"{layout} {content}"] = {
                    "layout": layout, "content": content, "samples": len(records),
                    "mean_file_kb": sum(os.path.getsize(f) for f in files) / len(files) / 1024,
                    "ours_samples_per_s": ours_rate, "plain_samples_per_s": plain_rate,
                    "speedup": ours_rate / plain_rate, "cached_samples_per_s": cached_rate,
                    "cached_speedup": cached_rate / plain_rate,
                    "cache_build_ms_per_sample": cache_build_s / len(records) * 1e3,
                    "us_per_image": {fn.__name__: best[fn] / len(arrays) * 1e6
                                     for fn in (ours_decode, plain_decode, ours_transform, plain_transform)}}
    return results


SECTIONS = ("metrics", "missing", "cross", "train", "input", "loader", "cuda", "demo", "editor", "epoch", "eval")
# Measured only on a GPU, or with --smoke (tiny sizes, any device).
GPU_SECTIONS = ("cuda", "demo", "editor", "epoch", "eval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not the targets")
    parser.add_argument("--smoke", action="store_true", help="the GPU sections (and the loader) with tiny sizes on "
                        "any device: shows the code runs; the figures are not measurements")
    parser.add_argument("--skip-metrics", action="store_true", help="leave out the (slow) metrics section")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections (results.json is then "
                        "left alone unless --output is given)")
    parser.add_argument("--output", help="where to write the figures (default: benchmarks/results.json for a run of "
                        "every section)")
    args = parser.parse_args()
    q = args.quick
    sections = set(args.only or SECTIONS) - ({"metrics"} if args.skip_metrics else set())
    output = args.output or (None if args.only else str(ROOT / "benchmarks" / "results.json"))
    results: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                 "cpu_count": os.cpu_count(), "torch": torch.__version__,
                                 "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                     "quick": q, "smoke": args.smoke}
    lines = []

    def save() -> None:
        """Write what is measured so far (a run cut short keeps its finished sections)."""
        results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if output:
            Path(output).write_text(json.dumps(results, indent=2, default=float))
    if "metrics" in sections:
        from benchmarks.bench_metrics import _report
        from benchmarks.bench_metrics import run as run_metrics

        results["metrics"] = run_metrics(q)
        lines.append(_report(results["metrics"]))
    if "missing" in sections:
        m = results["missing_table"] = bench_missing_table("vit_base_patch16_224", (256, 128), 4 if q else 8,
                                                           1 if q else 2, 1 if q else 2)
        lines.append(f"missing table ({m['backbone']}, {m['images']} images): full {m['full_s']:.2f} s, all seven "
                     f"{m['all_s']:.2f} s = {m['all_over_full']:.2f}x (target <= 1.5x: "
                     f"{'met' if m['all_over_full'] <= 1.5 else 'NOT met'}); single '-RGB' {m['single_r_s']:.2f} s = "
                     f"{m['single_over_full']:.2f}x (target < 1: {'met' if m['single_over_full'] < 1 else 'NOT met'})")
    if "cross" in sections:
        c = results["cross_table"] = bench_cross_table("vit_base_patch16_224", (256, 128), 4 if q else 8,
                                                       2 if q else 3, 1 if q else 3)
        lines.append(f"cross table ({c['backbone']}, {c['images']} images): full-spectrum evaluation "
                     f"{c['full_s']:.2f} s, `TEST.CROSS all` ({c['pairs']} pairs) {c['cross_s']:.2f} s = "
                     f"{c['cross_over_full']:.2f}x (target <= 1.5x: "
                     f"{'met' if c['cross_over_full'] <= 1.5 else 'NOT met'})")
    if "train" in sections:
        t = results["train_step"] = bench_train_step("vit_base_patch16_224", (256, 128), 4 if q else 8, 1 if q else 3)
        lines.append(f"train step ({t['backbone']}, batch {t['batch']}, CPU fp32): eager {t['eager']['step_s']:.2f} s "
                     f"({t['eager']['samples_per_s']:.1f} samples/s, peak RSS {t['eager']['peak_rss_mb']:.0f} MB); "
                     f"checkpointing {t['checkpointing']['step_s']:.2f} s (peak RSS "
                     f"{t['checkpointing']['peak_rss_mb']:.0f} MB, saves {t['checkpointing_memory_saving_mb']:.0f} MB)")
    if "input" in sections:
        p = results["input_pipeline"] = bench_input_pipeline(16 if q else 96, 1 if q else 5)
        for name, r in p.items():
            lines.append(f"input pipeline {name} ({r['mean_file_kb']:.0f} KB files): {r['ours_samples_per_s']:.1f} "
                         f"samples/s per worker vs plain "
                         f"{r['plain_samples_per_s']:.1f} = {r['speedup']:.2f}x (target >= 1.5x: "
                         f"{'met' if r['speedup'] >= 1.5 else 'NOT met'}); with CACHE_IMAGES "
                         f"{r['cached_samples_per_s']:.1f} = {r['cached_speedup']:.2f}x "
                         f"({'met' if r['cached_speedup'] >= 1.5 else 'NOT met'}; cache built in "
                         f"{r['cache_build_ms_per_sample']:.2f} ms per sample)")
            lines.append("  us per image: " + ", ".join(f"{k} {v:.0f}" for k, v in r["us_per_image"].items()))
    if "loader" in sections:
        r = results["loader"] = bench_gpu.bench_loader((32, 8) if q or args.smoke else (171, 23),
                                                       (1,) if q or args.smoke else (1, 2), 1 if args.smoke else 2)
        lines.extend(bench_gpu.loader_lines(r))
        save()
    for name, bench, report in (("cuda", bench_gpu.bench_train_step, bench_gpu.train_step_lines),
                                ("demo", bench_demo.bench_device_section, bench_demo.device_section_lines),
                                ("editor", bench_editor.bench_device_section, bench_editor.device_section_lines),
                                ("epoch", bench_gpu.bench_epoch, bench_gpu.epoch_lines),
                                ("eval", bench_gpu.bench_eval, bench_gpu.eval_lines)):
        if name not in sections:
            continue
        if not (torch.cuda.is_available() or args.smoke):
            lines.append(f"{name}: no GPU on this machine; section not measured (--smoke runs it with tiny sizes)")
            continue
        key = f"{name}_smoke" if args.smoke else name
        # Written after each measurement: a section cut short keeps what it measured.
        if name in ("cuda", "demo", "editor"):
            def measured(partial: dict, key: str = key, report: Callable[[dict], list[str]] = report) -> None:
                results[key] = partial
                save()
                print(report(partial)[-1], flush=True)

            results[key] = bench(smoke=args.smoke, measured=measured)
        else:
            results[key] = bench(smoke=args.smoke)
            print("\n".join(report(results[key])), flush=True)
        lines.extend(report(results[key]))
        save()
    save()
    print("\n".join(lines))
    if output:
        print(f"written {output}")


if __name__ == "__main__":
    main()
