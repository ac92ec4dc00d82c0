"""GPU-side measurements of ``benchmarks/run.py`` (sections ``loader``, ``cuda``, ``epoch``, ``eval``).

- ``loader``: training samples/s (three spectra each) of the real DataLoader with ``DATALOADER.CACHE_IMAGES``, per
  worker, on a synthetic RGBNT201-like set of 256x128 JPEGs, with the loader's normalisation (``GPU_AUGMENT``
  False) and with uint8 output (True); the workers needed for a target rate, extrapolated linearly from the
  one-worker rate.
- ``cuda``: the train step (forward, losses, backward, optimiser step) of TOP-ReID at batch 128, 256x128, for
  ViT-B/16, DeiT-S/16 and T2T-ViT-24 in fp32, bf16 and bf16 with compiled blocks: samples/s, MFU, peak memory.
- ``epoch``: one training epoch of a synthetic RGBNT201-sized set (171 identities x 23 samples, three 256x128 JPEGs
  each) through the real Trainer and loader (image cache, batched device augmentation, bf16, compiled blocks).
- ``eval``: the seven-setting table (features of every setting in one pass, then the rank metrics) on a
  1,715-query x 8,575-gallery synthetic test set, the images in memory (no decoding).

``smoke=True`` runs every path with tiny sizes on whatever device there is (CPU here): the figures mean nothing,
they show that the code runs.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.synthetic import write_rgbnt201
from configs import load_config

BACKBONES = ("vit_base_patch16_224", "deit_small_patch16_224", "t2t_vit_t_24")
MODES = ("fp32", "bf16", "bf16+compile")
# Dense bf16 tensor-core peak of current data-centre GPUs (vendor data sheets), for model FLOP utilisation.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
SMOKE = {"backbone": "vit_tiny_patch16_224", "size": (64, 32), "batch": 4}


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of the named GPU (the most specific entry of PEAK_BF16_FLOPS in its name), or None."""
    found = [k for k in PEAK_BF16_FLOPS if k in device_name]
    return PEAK_BF16_FLOPS[max(found, key=len)] if found else None


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cfg(backbone: str, size: tuple[int, int], *extra: str):
    h, w = size
    return load_config(None, ["MODEL.TRANSFORMER_TYPE", backbone, "MODEL.PRETRAIN_CHOICE", "none",
                              "INPUT.SIZE_TRAIN", f"[{h},{w}]", "INPUT.SIZE_TEST", f"[{h},{w}]", *extra])


def _compile_options(device: torch.device) -> dict[str, Any]:
    """Inductor on CUDA; on CPU (smoke runs) the eager backend, which traces the same blocks without C++ codegen."""
    return {} if device.type == "cuda" else {"backend": "eager"}


# ----------------------------------------------------------------------------------------------------------------------
def bench_loader(samples: tuple[int, int], workers: tuple[int, ...], epochs: int, target: float = 1500.0) -> dict:
    """Loader samples/s with DATALOADER.CACHE_IMAGES for each number of workers and GPU_AUGMENT False/True;
    ``samples`` = (identities, samples per identity)."""
    from data.build import build_dataloader

    ids, per_id = samples
    out: dict[str, Any] = {"identities": ids, "samples_per_identity": per_id, "target_samples_per_s": target,
                           "epochs_timed": epochs, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = write_rgbnt201(Path(tmp), ids, per_id)
        out["write_s"] = time.perf_counter() - start
        for gpu_augment in (False, True):
            for n in workers:
                cfg = load_config("configs/RGBNT201/TOP-ReID.yml", [
                    "DATASETS.ROOT_DIR", str(root), "DATALOADER.CACHE_IMAGES", "True", "DATALOADER.NUM_WORKERS", str(n),
                    "INPUT.GPU_AUGMENT", str(gpu_augment), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_INSTANCE", "4",
                    "SOLVER.IMS_PER_BATCH", "64"])
                start = time.perf_counter()
                data = build_dataloader(cfg)
                build_s = time.perf_counter() - start
                loader, sampler = data.train_loader, data.train_sampler
                sampler.set_epoch(0)
                for _ in loader:  # starts the persistent workers
                    pass
                count, start = 0, time.perf_counter()
                for epoch in range(1, epochs + 1):
                    sampler.set_epoch(epoch)
                    for batch in loader:
                        count += len(batch["pid"])
                rate = count / (time.perf_counter() - start)
                out["runs"].append({"workers": n, "gpu_augment": gpu_augment, "samples_per_s": rate,
                                    "per_worker": rate / max(1, n), "cache_and_loader_build_s": build_s,
                                    "dtype": str(batch["images"]["RGB"].dtype)})
                del data, loader
    one = {r["gpu_augment"]: r["per_worker"] for r in out["runs"] if r["workers"] == min(workers)}
    out["workers_for_target_extrapolated"] = {str(k): math.ceil(target / v) for k, v in one.items()}
    return out


def loader_lines(r: dict) -> list[str]:
    lines = [f"loader ({r['identities']} ids x {r['samples_per_identity']} samples, three 256x128 JPEGs each, "
             f"CACHE_IMAGES, {r['epochs_timed']} epochs timed after a first one):"]
    for run in r["runs"]:
        lines.append(f"  {run['workers']} worker(s), GPU_AUGMENT {run['gpu_augment']} ({run['dtype']} batches): "
                     f"{run['samples_per_s']:.0f} samples/s = {run['per_worker']:.0f} per worker")
    for k, v in r["workers_for_target_extrapolated"].items():
        lines.append(f"  workers for {r['target_samples_per_s']:.0f} samples/s, GPU_AUGMENT {k}: {v} (extrapolated "
                     "linearly from the one-worker rate, not measured)")
    return lines


# ----------------------------------------------------------------------------------------------------------------------
def _step_flops(model: torch.nn.Module, size: tuple[int, int], device: torch.device) -> float:
    """Train FLOPs per sample: about three forwards (the backward pass costs twice the forward)."""
    from tools.count_params import count_flops

    images = {s: torch.randn(2, 3, *size, device=device) for s in model.spectra}
    return 3 * count_flops(model, images, torch.zeros(2, dtype=torch.long, device=device), True)["Global"] / 2


def _time_train_step(backbone: str, mode: str, size: tuple[int, int], batch: int, steps: int, warmup: int,
                     device: torch.device, peak: float | None, flops: float | None) -> dict:
    """One backbone in one precision mode: ``warmup`` untimed steps, then ``steps`` timed ones."""
    from loss import build_loss
    from modeling import build_model
    from modeling.compile import compile_blocks
    from solver import build_optimizer, optimizer_kernel

    torch.manual_seed(0)
    cfg = _cfg(backbone, size, "MODEL.DROP_PATH", "0.0")
    model = build_model(cfg, 171, 4).to(device).train()
    if flops is None:
        flops = _step_flops(model, size, device)
        model.train()
    if mode.endswith("compile"):
        compile_blocks(model, **_compile_options(device))
    loss_fn, opt = build_loss(cfg, 171), build_optimizer(cfg, model)
    g = torch.Generator(device=device).manual_seed(0)
    images = {s: torch.randn(batch, 3, *size, device=device, generator=g) for s in model.spectra}
    pids = torch.arange(batch, device=device) // max(2, batch // 8)  # 8 identities per batch
    cams = torch.arange(batch, device=device) % 4
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    bf16 = mode != "fp32"
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            first_steps_s, start = time.perf_counter() - start, time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = loss_fn(model(images, cams), pids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    rate = batch * steps / (time.perf_counter() - start)
    return {"samples_per_s": rate, "flops_per_sample": flops, "mfu": rate * flops / peak if peak else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "warmup_s": first_steps_s, "optimizer": optimizer_kernel(opt), "loss": float(loss.detach())}


def bench_train_step(smoke: bool = False, steps: int = 10, warmup: int = 3,
                     measured: Callable[[dict], None] | None = None) -> dict:
    """samples/s, MFU and peak memory of the train step per backbone and precision mode; ``measured(results so
    far)`` is called after each mode (a run cut short keeps what it measured). A mode that fails (out of memory, a
    compiler error) is recorded with its error and the others go on."""
    device = bench_device()
    name = device_name(device)
    backbones = (SMOKE["backbone"],) if smoke else BACKBONES
    size, batch = (SMOKE["size"], SMOKE["batch"]) if smoke else ((256, 128), 128)
    steps, warmup = (2, 1) if smoke else (steps, warmup)
    peak = peak_bf16_flops(name) if device.type == "cuda" else None
    out: dict[str, Any] = {"device": name, "batch": batch, "size": list(size), "steps": steps,
                           "peak_bf16_flops": peak, "smoke": smoke}
    for backbone in backbones:
        out[backbone] = {}
        flops = None
        for mode in MODES:
            try:
                out[backbone][mode] = _time_train_step(backbone, mode, size, batch, steps, warmup, device, peak, flops)
                flops = out[backbone][mode]["flops_per_sample"]
            except Exception as err:  # recorded in the results; the other modes still run
                out[backbone][mode] = {"error": " ".join(f"{type(err).__name__}: {err}".split())[:500]}
            finally:
                torch._dynamo.reset()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if measured is not None:
                measured(out)
    return out


def train_step_lines(r: dict) -> list[str]:
    lines = []
    for backbone in [k for k in r if isinstance(r[k], dict)]:
        for mode in [m for m in MODES if m in r[backbone]]:
            m = r[backbone][mode]
            if "error" in m:
                lines.append(f"train step {r['device']} {backbone} {mode}: FAILED ({m['error']})")
                continue
            mfu = f"MFU {m['mfu']:.1%}" if m["mfu"] is not None else "MFU n/a"
            mem = f"peak {m['peak_memory_gib']:.1f} GiB" if m["peak_memory_gib"] is not None else "peak memory n/a"
            lines.append(f"train step {r['device']} {backbone} {mode}: {m['samples_per_s']:.1f} samples/s at batch "
                         f"{r['batch']} {r['size'][0]}x{r['size'][1]}, {mfu}, {mem}, warm-up {m['warmup_s']:.1f} s, "
                         f"{m['optimizer']} optimiser step")
    return lines


# ----------------------------------------------------------------------------------------------------------------------
def bench_epoch(smoke: bool = False, workers: int = 8, backbone: str = "vit_base_patch16_224",
                compile_blocks: bool = True) -> dict:
    """Two epochs of the real Trainer on a synthetic RGBNT201-sized set; the second epoch's time is the figure (the
    first includes compilation and worker start)."""
    from processor.hooks import EvalHook, HookBase
    from processor.trainer import Trainer

    device = bench_device()
    ids, per_id = (6, 4) if smoke else (171, 23)
    backbone = SMOKE["backbone"] if smoke else backbone
    size = SMOKE["size"] if smoke else (256, 128)
    epochs: list[dict[str, float]] = []

    class EpochTimer(HookBase):
        def before_epoch(self) -> None:
            _sync(device)
            self.start, self.steps = time.perf_counter(), 0

        def after_step(self) -> None:
            self.steps += 1

        def after_epoch(self) -> None:  # runs first: before the checkpoint is written
            _sync(device)
            epochs.append({"seconds": time.perf_counter() - self.start, "steps": self.steps})

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = write_rgbnt201(Path(tmp) / "data", ids, per_id)
        write_s = time.perf_counter() - start
        opts = ["DATASETS.ROOT_DIR", str(root), "OUTPUT_DIR", str(Path(tmp) / "run"),
                "MODEL.TRANSFORMER_TYPE", backbone, "MODEL.PRETRAIN_CHOICE", "none",
                "INPUT.SIZE_TRAIN", f"[{size[0]},{size[1]}]", "INPUT.SIZE_TEST", f"[{size[0]},{size[1]}]",
                "DATALOADER.CACHE_IMAGES", "True", "INPUT.GPU_AUGMENT", "True",
                "DATALOADER.NUM_WORKERS", str(0 if smoke else workers), "SOLVER.MAX_EPOCHS", "2",
                "SOLVER.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.LOG_PERIOD", "20",
                "MODEL.COMPILE", str(compile_blocks and device.type == "cuda"), "MODEL.DEVICE", device.type]
        if smoke:
            opts += ["SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "4"]
        cfg = load_config("configs/RGBNT201/TOP-ReID.yml", opts)
        start = time.perf_counter()
        trainer = Trainer(cfg)
        setup_s = time.perf_counter() - start
        trainer.hooks = [h for h in trainer.hooks if not isinstance(h, EvalHook)]
        timer = EpochTimer()
        timer.trainer = trainer
        trainer.hooks.insert(0, timer)
        trainer.train()
        samples = len(trainer.data.dataset.train)
        batch = cfg.SOLVER.IMS_PER_BATCH
        result = {"device": device_name(device), "backbone": backbone, "samples": samples, "identities": ids,
                  "batch": batch, "workers": cfg.DATALOADER.NUM_WORKERS, "compile": cfg.MODEL.COMPILE,
                  "amp": trainer.amp, "optimizer": trainer.optimizer_kernel, "write_s": write_s,
                  "setup_s": setup_s, "epochs": epochs, "smoke": smoke,
                  "samples_per_s": epochs[-1]["steps"] * batch / epochs[-1]["seconds"]}
        del trainer
    return result


def epoch_lines(r: dict) -> list[str]:
    e1, e2 = r["epochs"]
    return [f"epoch {r['device']} {r['backbone']}: {r['samples']} samples ({r['identities']} ids), batch {r['batch']}, "
            f"{r['workers']} workers, cache + GPU augmentation, bf16={r['amp']}, compiled blocks={r['compile']}: "
            f"epoch 1 {e1['seconds']:.1f} s (with compilation), epoch 2 {e2['seconds']:.1f} s "
            f"({e2['steps']} steps, {r['samples_per_s']:.0f} samples/s); setup (cache build, model) "
            f"{r['setup_s']:.1f} s"]


# ----------------------------------------------------------------------------------------------------------------------
class _MemoryLoader:
    """Test batches of synthetic images held in memory (one pinned batch reused), in the test loader's format."""

    def __init__(self, num: int, batch: int, size: tuple[int, int], num_ids: int, num_cams: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.num, self.batch = num, batch
        self.images = {s: torch.randn(batch, 3, *size, generator=g) for s in ("RGB", "NI", "TI")}
        if torch.cuda.is_available():
            self.images = {s: x.pin_memory() for s, x in self.images.items()}
        self.pids = torch.randint(0, num_ids, (num,), generator=g)
        self.camids = torch.randint(0, num_cams, (num,), generator=g)

    def __len__(self) -> int:
        return math.ceil(self.num / self.batch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, self.num, self.batch):
            n = min(self.batch, self.num - start)
            yield {"images": {s: x[:n] for s, x in self.images.items()}, "pid": self.pids[start:start + n],
                   "camid": self.camids[start:start + n], "sceneid": torch.full((n,), -1),
                   "name": [str(i) for i in range(start, start + n)]}


def bench_eval(smoke: bool = False, backbone: str = "vit_base_patch16_224", batch: int = 256) -> dict:
    """The seven-setting table on a 1,715 x 8,575 synthetic test set: feature extraction (bf16 on CUDA, compiled
    blocks) and the rank metrics, timed apart; a warm-up pass on a few batches compiles first."""
    from modeling import build_model

    device = bench_device()
    num_query, num_gallery = (24, 48) if smoke else (1715, 8575)
    backbone = SMOKE["backbone"] if smoke else backbone
    size = SMOKE["size"] if smoke else (256, 128)
    batch = 8 if smoke else batch
    torch.manual_seed(0)
    model = build_model(_cfg(backbone, size), num_classes=50, camera_num=8).to(device).eval()
    return {"device": device_name(device), "backbone": backbone,
            **time_table(model, device, size, num_query, num_gallery, batch), "smoke": smoke}


def time_table(model: torch.nn.Module, device: torch.device, size: tuple[int, int], num_query: int,
               num_gallery: int, batch: int) -> dict:
    """The seven-setting table of ``model`` (in eval mode, on ``device``) on in-memory synthetic images: its blocks
    compiled, a warm-up pass, then feature extraction (bf16 on CUDA) and the rank metrics timed apart."""
    from evaluation.evaluator import evaluate_settings
    from modeling.compile import compile_blocks
    from processor.inference import extract_features
    from utils.spectra import MISS_SETTINGS

    compile_blocks(model, **_compile_options(device))
    amp = device.type == "cuda"
    settings = list(MISS_SETTINGS)
    warm = _MemoryLoader(2 * batch - 1, batch, size, 50, 8)  # a full and a partial batch: both shapes compiled
    start = time.perf_counter()
    extract_features(model, warm, device, settings, amp, torch.bfloat16)
    warmup_s = time.perf_counter() - start
    loader = _MemoryLoader(num_query + num_gallery, batch, size, 50, 8)
    _sync(device)
    start = time.perf_counter()
    extracted = extract_features(model, loader, device, settings, amp, torch.bfloat16)
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    results = evaluate_settings(extracted, num_query, "camid")
    metrics_s = time.perf_counter() - start
    return {"query": num_query, "gallery": num_gallery, "batch": batch, "bf16": amp, "settings": len(results),
            "warmup_s": warmup_s, "features_s": features_s, "metrics_s": metrics_s, "total_s": features_s + metrics_s}


def eval_lines(r: dict) -> list[str]:
    return [f"evaluation {r['device']} {r['backbone']}: {r['settings']} settings on {r['query']} x {r['gallery']} "
            f"(in-memory images, batch {r['batch']}, bf16={r['bf16']}, compiled blocks): features "
            f"{r['features_s']:.1f} s + metrics {r['metrics_s']:.1f} s = {r['total_s']:.1f} s (compile warm-up "
            f"{r['warmup_s']:.1f} s)"]
