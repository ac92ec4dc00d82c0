"""Parameters and GFLOPs per part of the model (each backbone, TPM, CRM, heads) at the configured input size.

    python tools/count_params.py --config_file configs/RGBNT201/TOP-ReID.yml [KEY VALUE ...]

The model is built with MODEL.PRETRAIN_CHOICE none (no weights file needed) unless the command line sets it.
FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` per image (one multiply-add = 2 FLOPs) for a
training forward (all parts, CRM included) and for the test forward with every spectrum present (CRM idle);
attention products are counted through PyTorch's math attention kernel.
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Parameters and GFLOPs per part of the TOP-ReID model")
    parser.add_argument("--config_file", default="", help="path to a YAML config")
    parser.add_argument("--num_classes", type=int, default=171, help="identities of the classifiers (RGBNT201: 171)")
    parser.add_argument("--cameras", type=int, default=4, help="training cameras of the camera embedding")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser.parse_args(argv)


def parts_of(model: nn.Module) -> dict[str, str]:
    """Display name -> module path (relative to the model) of each part."""
    if model.backbones.is_shared:
        parts = {f"backbone (shared by {'/'.join(model.spectra)})": "backbones.shared"}
    else:
        parts = {f"backbone {s}": f"backbones.{s}" for s in model.spectra}
    if model.tpm is not None:
        parts["TPM"] = "tpm"
    if model.crm is not None:
        parts["CRM"] = "crm"
    parts["heads"] = "heads"
    return parts


def count_flops(model: nn.Module, images: dict[str, torch.Tensor], cams: torch.Tensor, train: bool) -> dict[str, int]:
    """FLOPs per module path for one forward of the batch."""
    model.train(train)
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(images, cams)
    root = type(model).__name__
    return {name[len(root) + 1:] if name.startswith(root + ".") else name: sum(ops.values())
            for name, ops in counter.get_flop_counts().items()}


def part_flops(flops: dict[str, int], path: str) -> int:
    """FLOPs of a part: its own entry, or (for parts used through methods other than forward, like CRM's loss) the
    sum of the outermost entries below it."""
    if path in flops:
        return flops[path]
    below = [k for k in flops if k.startswith(path + ".")]
    return sum(flops[k] for k in below if k.rsplit(".", 1)[0] not in flops)


def table(model: nn.Module, height: int, width: int) -> str:
    batch = 2  # BatchNorm in train mode needs more than one sample
    images = {s: torch.randn(batch, 3, height, width) for s in model.spectra}
    cams = torch.zeros(batch, dtype=torch.long)
    flops = {"train": count_flops(model, images, cams, True), "test": count_flops(model, images, cams, False)}
    rows = []
    for display, path in parts_of(model).items():
        module = model.get_submodule(path)
        params = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        rows.append((display, params, trainable, part_flops(flops["train"], path) / batch,
                     part_flops(flops["test"], path) / batch))
    rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows), flops["train"]["Global"] / batch,
                 flops["test"]["Global"] / batch))
    lines = [f"{'part':<14}{'params (M)':>12}{'trainable (M)':>15}{'GFLOPs train':>14}{'GFLOPs test':>13}"]
    for name, params, trainable, train, test in rows:
        lines.append(f"{name:<14}{params / 1e6:>12.2f}{trainable / 1e6:>15.2f}{train / 1e9:>14.3f}{test / 1e9:>13.3f}")
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
    print(f"{cfg.MODEL.TRANSFORMER_TYPE}, spectra {'/'.join(model.spectra)}, input {height}x{width}, "
          f"{args.num_classes} classes, {args.cameras} cameras; GFLOPs per image")
    print(table(model, height, width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
