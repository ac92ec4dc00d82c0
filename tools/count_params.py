"""Parameters and GFLOPs per part of the model at the configured input size, for any registered method.

    python tools/count_params.py --config_file configs/RGBNT201/TOP-ReID.yml [KEY VALUE ...]

The parts are the model's top-level modules by name (TOP-ReID: ``tpm``, ``crm``, ``heads``) and the parameters the
model holds itself, each a row of its own; the backbone (the module under the method's ``backbone_prefix``) is one row
per spectrum, or one row when the spectra share it.
The model is built with MODEL.PRETRAIN_CHOICE none (no weights file needed) unless the command line sets it.
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` per image (one multiply-add = 2 FLOPs) for a
training forward (all parts, TOP-ReID's CRM included) and for the test forward with every spectrum present (CRM
idle); attention products are counted through PyTorch's math attention kernel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from configs import ConfigError, load_config  # noqa: E402
from tools.common import ToolError, model_backbones  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Parameters and GFLOPs per part of the model")
    parser.add_argument("--config_file", default="", help="path to a YAML config")
    parser.add_argument("--num_classes", type=int, default=171, help="identities of the classifiers (RGBNT201: 171)")
    parser.add_argument("--cameras", type=int, default=4, help="training cameras of the camera embedding")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser.parse_args(argv)


def parts_of(model: nn.Module) -> dict[str, str]:
    """Display name -> path (relative to the model) of each part: the backbone (per spectrum, or shared), then every
    other top-level module and every parameter the model holds itself, by name."""
    backbones = model_backbones(model)
    if backbones.shared:
        parts = {f"backbone (shared by {'/'.join(model.spectra)})": backbones.root}
    else:
        parts = {f"backbone {s}": p for s, p in backbones.paths.items()}
    parts.update({name: name for name, _ in model.named_children() if name != backbones.root})
    parts.update({name: name for name, _ in model.named_parameters(recurse=False)})
    return parts


def part_parameters(model: nn.Module, path: str) -> list[nn.Parameter]:
    """The parameters of a part: those of the module at ``path``, or the parameter of that name."""
    try:
        return list(model.get_submodule(path).parameters())
    except AttributeError:
        return [model.get_parameter(path)]


def count_flops(model: nn.Module, images: dict[str, torch.Tensor], cams: torch.Tensor, train: bool) -> dict[str, int]:
    """FLOPs per module path for one forward of the batch."""
    model.train(train)
    counter = FlopCounterMode(display=False, depth=None)
    # A view of a parameter taken under no_grad (a learned query expanded to the batch) still requires grad but has
    # no grad_fn, which the counter's module tracker cannot hook: nothing requires grad while counting.
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model(images, cams)
    finally:
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
    root = type(model).__name__
    return {name[len(root) + 1:] if name.startswith(root + ".") else name: sum(ops.values())
            for name, ops in counter.get_flop_counts().items()}


def part_flops(flops: dict[str, int], path: str) -> int:
    """FLOPs of a part: its own entry, or (for parts used through methods other than forward, like CRM's loss, or
    containers that are never called, like a ModuleList) the sum of the outermost entries below it."""
    if path in flops:
        return flops[path]
    depth = path.count(".") + 1

    def outermost(key: str) -> bool:
        names = key.split(".")
        return not any(".".join(names[:i]) in flops for i in range(depth + 1, len(names)))

    return sum(v for k, v in flops.items() if k.startswith(path + ".") and outermost(k))


def table(model: nn.Module, height: int, width: int) -> str:
    batch = 2  # BatchNorm in train mode needs more than one sample
    images = {s: torch.randn(batch, 3, height, width) for s in model.spectra}
    cams = torch.zeros(batch, dtype=torch.long)
    flops = {"train": count_flops(model, images, cams, True), "test": count_flops(model, images, cams, False)}
    rows = []
    for display, path in parts_of(model).items():
        params = part_parameters(model, path)
        rows.append((display, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad),
                     part_flops(flops["train"], path) / batch, part_flops(flops["test"], path) / batch))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows), flops["train"]["Global"] / batch,
                 flops["test"]["Global"] / batch))
    column = max(14, 2 + max(len(r[0]) for r in rows))
    lines = [f"{'part':<{column}}{'params (M)':>12}{'trainable (M)':>15}{'GFLOPs train':>14}{'GFLOPs test':>13}"]
    for name, params, trainable, train, test in rows:
        lines.append(f"{name:<{column}}{params / 1e6:>12.2f}{trainable / 1e6:>15.2f}{train / 1e9:>14.3f}"
                     f"{test / 1e9:>13.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = list(args.opts)
    if "MODEL.PRETRAIN_CHOICE" not in opts[0::2]:
        opts += ["MODEL.PRETRAIN_CHOICE", "none"]
    try:
        cfg = load_config(args.config_file, opts)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from modeling import build_model

    model = build_model(cfg, args.num_classes, args.cameras)
    height, width = cfg.INPUT.SIZE_TRAIN
    try:
        rows = table(model, height, width)
    except ToolError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{cfg.MODEL.META_ARCHITECTURE}, {cfg.MODEL.TRANSFORMER_TYPE}, spectra {'/'.join(model.spectra)}, input "
          f"{height}x{width}, {args.num_classes} classes, {args.cameras} cameras; GFLOPs per image")
    print(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
