"""A method's section of the GPU device check (``benchmarks/run.py --only demo editor``): the method's train step in
the precision modes of the ``cuda`` section, then its seven-setting table, as sections ``cuda`` and ``eval`` measure
TOP-ReID (see ``benchmarks/bench_gpu.py``). Used by ``bench_demo.bench_device_section`` (DeMo) and
``bench_editor.bench_device_section`` (EDITOR)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from configs import load_config
from loss import build_loss
from modeling import build_model
from solver import build_optimizer

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES, NUM_CAMERAS = 171, 4  # RGBNT201's training identities and cameras


def method_cfg(config: str, size: Sequence[int], *extra: str):
    """``config`` (relative to the repository) with no pretrained weights, at ``size`` for training and test."""
    h, w = size
    return load_config(str(ROOT / config), ["MODEL.PRETRAIN_CHOICE", "none", "INPUT.SIZE_TRAIN", f"[{h},{w}]",
                                            "INPUT.SIZE_TEST", f"[{h},{w}]", *extra])


def train_flops(model: torch.nn.Module, size: Sequence[int], device: torch.device) -> float:
    """Train FLOPs per sample, about three forwards (``bench_gpu._step_flops``); a method whose training forward takes
    the identities (``takes_labels``: EDITOR) gets a batch of one identity block. Counted on a copy of the model's
    state: the forward may update buffers (EDITOR's class centres)."""
    from benchmarks.bench_gpu import _step_flops

    if not getattr(model, "takes_labels", False):
        return _step_flops(model, size, device)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = {s: torch.randn(2, 3, *size, device=device) for s in model.spectra}
    cams, labels = (torch.zeros(2, dtype=torch.long, device=device) for _ in range(2))
    counter = FlopCounterMode(display=False)
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # as tools/count_params.count_flops
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model.train()(images, cams, labels=labels)
    finally:
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
        model.load_state_dict(state)
    return 3 * counter.get_total_flops() / 2


def time_device_step(config: str, mode: str, size: Sequence[int], batch: int, steps: int, warmup: int,
                     device: torch.device, peak: float | None, flops: float | None,
                     opts: Sequence[str] = ()) -> dict[str, Any]:
    """The method's train step (``config`` with the KEY VALUE ``opts``) in one precision mode, as
    ``bench_gpu._time_train_step`` times TOP-ReID's: ``warmup`` untimed steps, then ``steps`` timed ones; the batch
    is 8 identity blocks."""
    from benchmarks.bench_gpu import _compile_options, _sync
    from modeling.compile import compile_blocks
    from solver import optimizer_kernel

    torch.manual_seed(0)
    cfg = method_cfg(config, size, *opts)
    model = build_model(cfg, NUM_CLASSES, NUM_CAMERAS).to(device).train()
    if flops is None:
        try:
            flops = train_flops(model, size, device)
        except Exception as err:  # the timing goes on without MFU
            logger.warning("%s FLOP count failed (%s: %s); MFU not reported", cfg.MODEL.META_ARCHITECTURE,
                           type(err).__name__, err)
            flops = 0.0
        model.train()
    compiled = compile_blocks(model, **_compile_options(device)) if mode.endswith("compile") else 0
    loss_fn, opt = build_loss(cfg, NUM_CLASSES), build_optimizer(cfg, model)
    g = torch.Generator(device=device).manual_seed(0)
    images = {s: torch.randn(batch, 3, *size, device=device, generator=g) for s in model.spectra}
    pids = torch.arange(batch, device=device) // max(2, batch // 8)  # 8 identities per batch, in blocks
    cams = torch.arange(batch, device=device) % NUM_CAMERAS
    labels = {"labels": pids} if getattr(model, "takes_labels", False) else {}  # as the Trainer's step
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            first_steps_s, start = time.perf_counter() - start, time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode != "fp32"):
            loss, _ = loss_fn(model(images, cams, **labels), pids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    rate = batch * steps / (time.perf_counter() - start)
    return {"samples_per_s": rate, "flops_per_sample": flops, "mfu": rate * flops / peak if peak and flops else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "warmup_s": first_steps_s, "optimizer": optimizer_kernel(opt), "compiled_blocks": compiled,
            "loss": float(loss.detach())}


def device_eval(config: str, size: Sequence[int], num_query: int, num_gallery: int, batch: int,
                device: torch.device, opts: Sequence[str] = ()) -> dict[str, Any]:
    """The seven-setting table of the method on a synthetic test set held in memory, as ``bench_gpu.bench_eval``
    measures TOP-ReID's: feature extraction (bf16 on CUDA, compiled blocks) and the rank metrics, timed apart, after
    a warm-up pass that compiles."""
    from benchmarks.bench_gpu import time_table

    torch.manual_seed(0)
    model = build_model(method_cfg(config, size, *opts), num_classes=50, camera_num=8).to(device).eval()
    return time_table(model, device, size, num_query, num_gallery, batch)


def bench_method_section(method: str, config: str, smoke: bool = False, steps: int = 10, warmup: int = 3,
                         measured: Callable[[dict], None] | None = None, smoke_size: Sequence[int] | None = None,
                         opts: Sequence[str] = ()) -> dict[str, Any]:
    """``method`` (``config`` with the KEY VALUE ``opts``) on the device: the train step at batch 128, 256x128, in
    the precision modes of the ``cuda`` section, then the seven-setting table on a 1,715 x 8,575 synthetic test set
    (a part that fails is recorded with its error and the others go on). ``measured(results so far)`` is called
    after each part. ``smoke``: tiny sizes (``smoke_size``, default the ``cuda`` section's), any device."""
    from benchmarks.bench_gpu import MODES, SMOKE, _sync, bench_device, device_name, peak_bf16_flops

    device = bench_device()
    name = device_name(device)
    size, batch = (tuple(smoke_size or SMOKE["size"]), SMOKE["batch"]) if smoke else ((256, 128), 128)
    steps, warmup = (2, 1) if smoke else (steps, warmup)
    peak = peak_bf16_flops(name) if device.type == "cuda" else None
    backbone = method_cfg(config, size).MODEL.TRANSFORMER_TYPE
    out: dict[str, Any] = {"device": name, "method": method, "backbone": backbone, "config": config,
                           "opts": list(opts), "batch": batch, "size": list(size), "steps": steps,
                           "peak_bf16_flops": peak, "smoke": smoke, "train": {}}
    flops = None
    for mode in MODES:
        try:
            out["train"][mode] = time_device_step(config, mode, size, batch, steps, warmup, device, peak, flops,
                                                  opts)
            flops = out["train"][mode]["flops_per_sample"]
        except Exception as err:  # recorded in the results; the other modes still run
            out["train"][mode] = {"error": " ".join(f"{type(err).__name__}: {err}".split())[:500]}
        finally:
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if measured is not None:
            measured(out)
    try:
        out["eval"] = device_eval(config, size, *((24, 48, 8) if smoke else (1715, 8575, 256)), device, opts)
    except Exception as err:
        out["eval"] = {"error": " ".join(f"{type(err).__name__}: {err}".split())[:500]}
    _sync(device)
    if measured is not None:
        measured(out)
    return out


def method_section_lines(r: dict[str, Any]) -> list[str]:
    """The figure lines of :func:`bench_method_section`, worded as the ``cuda`` and ``eval`` sections' lines."""
    from benchmarks.bench_gpu import MODES

    what = f"{r['device']} {r['method']} {r['backbone']}"
    lines = []
    for mode in [m for m in MODES if m in r["train"]]:
        m = r["train"][mode]
        if "error" in m:
            lines.append(f"train step {what} {mode}: FAILED ({m['error']})")
            continue
        mfu = f"MFU {m['mfu']:.1%}" if m["mfu"] is not None else "MFU n/a"
        mem = f"peak {m['peak_memory_gib']:.1f} GiB" if m["peak_memory_gib"] is not None else "peak memory n/a"
        lines.append(f"train step {what} {mode}: {m['samples_per_s']:.1f} samples/s at batch {r['batch']} "
                     f"{r['size'][0]}x{r['size'][1]}, {mfu}, {mem}, warm-up {m['warmup_s']:.1f} s, "
                     f"{m['optimizer']} optimiser step")
    e = r.get("eval")
    if e is not None:
        lines.append(f"evaluation {what}: FAILED ({e['error']})" if "error" in e else
                     f"evaluation {what}: {e['settings']} settings on {e['query']} x {e['gallery']} (in-memory images, "
                     f"batch {e['batch']}, bf16={e['bf16']}, compiled blocks): features {e['features_s']:.1f} s + "
                     f"metrics {e['metrics_s']:.1f} s = {e['total_s']:.1f} s (compile warm-up {e['warmup_s']:.1f} s)")
    return lines
