"""Grad-CAM of the test feature with respect to each spectrum's last backbone block, for chosen test samples.

    python tools/grad_cam.py --config_file configs/demo/TOP-ReID.yml TEST.WEIGHT logs/demo/best.pth \\
        --samples 0 5 7 [--reference 3] [TEST.MISS r] [--tile-height 128] [--output grad_cam.png]

``--samples`` are indices into query + gallery (the evaluation's order). The maps come from the ``grad-cam``
package (``pytorch_grad_cam.GradCAM``): the target layer is the last transformer block of the spectrum's backbone
(the module under the method's ``backbone_prefix``: one per spectrum, or one shared by the spectra, which then run
through it as one batch), its patch tokens are reshaped to the patch grid (the CLS token dropped), and the target
is a scalar of the method's test feature f (before normalisation): its projection f . u on a fixed unit vector u.
Only the block's first call in a forward is used: the pass over the given images (a method may run its backbone
again, e.g. on zero images standing in for a missing spectrum). By default u is the sample's own feature direction,
so the map shows where the feature gets its strength (at f, the gradient of f . u is the gradient of |f|); with
``--reference R`` u is sample R's normalised feature, so the map shows what makes the sample similar to R (a cosine
similarity up to the norm of f). Spectra that ``TEST.MISS`` removes are not shown.

Writes ``OUTPUT_DIR/grad_cam_<setting>.png`` (one row per sample: each spectrum's image and its overlay) and, next
to it, a ``.npz`` with the maps (``maps`` [samples, spectra, H, W] in [0, 1] at the input size, ``samples``,
``spectra``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from torch import nn  # noqa: E402

from data.build import build_query_gallery  # noqa: E402
from processor.predictor import Predictor  # noqa: E402
from tools.common import (  # noqa: E402
    ToolError,
    check_indices,
    font,
    model_backbones,
    output_path,
    parse_tool_args,
    record_images,
    run_tool,
    save_png,
    single_setting,
    tile_size,
    tool_config,
    tool_parser,
)
from utils.io import write_npz  # noqa: E402
from utils.spectra import missing_spectra  # noqa: E402

logger = logging.getLogger("tools.grad_cam")

# Picture layout in pixels: a label column on the left, a header row on top, tiles separated by GAP.
LEFT, TOP, GAP = 96, 22, 4
BACKGROUND = (255, 255, 255)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("Grad-CAM of the test feature on each spectrum's last backbone block")
    parser.add_argument("--samples", type=int, nargs="+", default=[0],
                        help="indices into query + gallery (the evaluation's order)")
    parser.add_argument("--reference", type=int, default=None,
                        help="explain the similarity to this sample's feature (index into query + gallery) instead "
                             "of each sample's own feature")
    parser.add_argument("--tile-height", type=int, default=128, help="height of one image in the picture")
    parser.add_argument("--output", default="", help="PNG to write (default OUTPUT_DIR/grad_cam_<setting>.png)")
    return parse_tool_args(parser, argv)


class FeatureDirectionTarget:
    """Grad-CAM target: the projection of the test feature on a fixed unit vector (see the module docstring)."""

    def __init__(self, direction: torch.Tensor) -> None:
        self.direction = direction

    def __call__(self, feature: torch.Tensor) -> torch.Tensor:
        return (feature * self.direction).sum(-1)


class StackedSpectra(nn.Module):
    """The model's test feature from its available spectra stacked along the channels, [B, 3 x S, H, W]: the one
    image tensor that pytorch_grad_cam feeds to a model (and whose last two sizes it upsamples the maps to)."""

    def __init__(self, model: nn.Module, spectra: Sequence[str], missing: frozenset[str], cams: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.spectra = tuple(spectra)
        self.missing = missing
        self.cams = cams

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        images = dict(zip(self.spectra, stacked.split(3, dim=1)))
        return self.model(images, self.cams, self.missing)


def tokens_to_map(grid: tuple[int, int], part: tuple[int, int] = (0, 1)) -> Callable[[torch.Tensor], torch.Tensor]:
    """reshape_transform for ViT tokens: [B, 1 + N, D] -> [B, D, rows, cols] (CLS dropped, patches on the grid).

    ``part`` = (index, count): the block's batch holds ``count`` spectra one after the other (a shared backbone runs
    them together) and the map is of the ``index``-th."""
    rows, cols = grid
    index, count = part

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[0] % count:
            raise ValueError(f"the backbone block's batch of {tokens.shape[0]} does not hold {count} spectra")
        tokens = tokens.chunk(count)[index] if count > 1 else tokens
        patches = tokens[:, 1:]
        if patches.shape[1] != rows * cols:
            raise ValueError(f"{patches.shape[1]} patch tokens do not fill the {rows}x{cols} patch grid")
        return patches.reshape(patches.shape[0], rows, cols, patches.shape[2]).permute(0, 3, 1, 2)

    return reshape


def last_block(backbone: nn.Module) -> tuple[nn.Module, tuple[int, int]]:
    """(last transformer block, patch grid) of a backbone: the last entry of its ``blocks`` and its ``grid_size``
    (timm's ViT names, which the project's backbones keep)."""
    blocks = [m for name, m in backbone.named_modules() if name.rsplit(".", 1)[-1] == "blocks"
              and isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m)]
    grids = [m.grid_size for m in backbone.modules() if hasattr(m, "grid_size")]
    if len(blocks) != 1 or not grids:
        raise ToolError(f"Grad-CAM needs a transformer backbone with one list of blocks and a patch grid; "
                        f"{type(backbone).__name__} has {len(blocks)} 'blocks' lists and "
                        f"{'a' if grids else 'no'} grid_size")
    return blocks[0][-1], tuple(grids[0])


def first_call_recorder(model: nn.Module, layer: nn.Module, reshape: Callable[[torch.Tensor], torch.Tensor]):
    """pytorch_grad_cam's recorder of activations and gradients, keeping only ``layer``'s first call in each forward
    (a later call of the same block, such as a method's backbone pass on stand-in images for a missing spectrum, is
    not the spectrum's own map)."""
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

    class FirstCall(ActivationsAndGradients):
        calls = 0

        def __call__(self, x):
            self.calls = 0
            return super().__call__(x)

        def save_activation(self, module, input, output):
            if self.calls == 0:
                super().save_activation(module, input, output)

        def save_gradient(self, module, input, output):  # registered after save_activation: ends the call
            if self.calls == 0:
                super().save_gradient(module, input, output)
            self.calls += 1

    return FirstCall(model, [layer], reshape)


def grad_cam_maps(model: nn.Module, images: dict[str, torch.Tensor], cams: torch.Tensor, missing: frozenset[str],
                  directions: torch.Tensor) -> dict[str, np.ndarray]:
    """Grad-CAM maps [B, H, W] in [0, 1] (input size) of each available spectrum, for the targets f . directions[i]."""
    from pytorch_grad_cam import GradCAM

    spectra = list(images)
    wrapper = StackedSpectra(model, spectra, missing, cams)
    stacked = torch.cat([images[s] for s in spectra], dim=1)
    targets = [FeatureDirectionTarget(d) for d in directions]
    backbones = model_backbones(model)
    # a shared backbone runs the available spectra as one batch, in the model's spectrum order
    batched = [s for s in model.spectra if s in images] if backbones.shared else []
    maps = {}
    for spectrum in spectra:
        block, grid = last_block(backbones.modules[spectrum])
        part = (batched.index(spectrum), len(batched)) if len(batched) > 1 else (0, 1)
        reshape = tokens_to_map(grid, part)
        cam = GradCAM(model=wrapper, target_layers=[block], reshape_transform=reshape)
        cam.activations_and_grads.release()
        cam.activations_and_grads = first_call_recorder(wrapper, block, reshape)
        try:
            with torch.enable_grad():
                maps[spectrum] = cam(input_tensor=stacked, targets=targets)
        finally:
            cam.activations_and_grads.release()
    return maps


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The map (resized to the image) as a jet heat map over the image, half and half."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    h, w = image.shape[:2]
    resized = np.asarray(Image.fromarray(np.float32(mask), mode="F").resize((w, h), Image.BILINEAR))
    return show_cam_on_image(image.astype(np.float32) / 255, np.clip(resized, 0, 1), use_rgb=True, image_weight=0.5)


def picture_size(num_samples: int, num_spectra: int, tile: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the picture: per spectrum two tiles (image, overlay), one row per sample."""
    return LEFT + 2 * num_spectra * (tile[1] + GAP), TOP + num_samples * (tile[0] + GAP)


def compose(rows: list[tuple[str, list[np.ndarray]]], spectra: Sequence[str], tile: tuple[int, int]) -> Image.Image:
    """Grid of tiles (per spectrum: image, overlay) with a label per row and the spectrum's name over its pair."""
    width, height = picture_size(len(rows), len(spectra), tile)
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)
    text_font = font(11)
    pair = 2 * (tile[1] + GAP) - GAP
    for c, spectrum in enumerate(spectra):
        x = LEFT + 2 * c * (tile[1] + GAP)
        draw.text((x + pair / 2, TOP / 2), spectrum, fill=(0, 0, 0), font=text_font, anchor="mm")
    for r, (label, tiles) in enumerate(rows):
        y = TOP + r * (tile[0] + GAP)
        draw.multiline_text((4, y + 2), label, fill=(0, 0, 0), font=text_font, spacing=2)
        for c, tile_image in enumerate(tiles):
            picture.paste(Image.fromarray(tile_image), (LEFT + c * (tile[1] + GAP), y))
    return picture


def run(args: argparse.Namespace) -> str:
    cfg = tool_config(args)
    setting = single_setting(cfg)
    tile = tile_size(cfg, args.tile_height)
    split = build_query_gallery(cfg)
    records, num_query = split.records, split.num_query
    where = f"query + gallery of {cfg.DATASETS.NAMES}"
    check_indices(args.samples, len(records), "sample", where)
    if args.reference is not None:
        check_indices([args.reference], len(records), "reference", where)
    predictor = Predictor.from_config(cfg)
    spectra = predictor.available_spectra(setting)
    missing = missing_spectra(setting) & set(predictor.spectra)
    chosen = [records[i] for i in args.samples]
    batches = list(predictor.loader(chosen, spectra))
    images = {s: torch.cat([b["images"][s] for b in batches]).to(predictor.device) for s in spectra}
    cams = torch.cat([b["camid"] for b in batches]).to(predictor.device)
    with torch.no_grad():
        if args.reference is None:
            reference = predictor.model(images, cams, missing)
        else:
            ref = next(iter(predictor.loader([records[args.reference]], spectra)))
            reference = predictor.model({s: x.to(predictor.device) for s, x in ref["images"].items()},
                                        ref["camid"].to(predictor.device), missing).expand(len(chosen), -1)
    directions = torch.nn.functional.normalize(reference.float(), dim=1)
    maps = grad_cam_maps(predictor.model, images, cams, missing, directions)

    rows = []
    for k, (index, record) in enumerate(zip(args.samples, chosen)):
        shown = record_images(record, spectra, tile)
        tiles = [t for s in spectra for t in (shown[s], overlay(shown[s], maps[s][k]))]
        split = "query" if index < num_query else "gallery"
        label = f"sample {index}\n{split}\nid {record.pid}\ncam {record.camid + 1}"
        rows.append((label, tiles))
    path = output_path(cfg, args.output, f"grad_cam_{setting}.png")
    save_png(compose(rows, spectra, tile), path)
    write_npz(os.path.splitext(path)[0] + ".npz", maps=np.stack([maps[s] for s in spectra], axis=1),
              samples=np.array(args.samples), spectra=np.array(spectra), setting=np.array(setting),
              reference=np.array(-1 if args.reference is None else args.reference))
    for s in spectra:
        flat = [k for k in range(len(chosen)) if np.ptp(maps[s][k]) == 0]
        if flat:
            logger.warning("%s: the Grad-CAM map of sample(s) %s is flat (no positive evidence in this block)", s,
                           [args.samples[k] for k in flat])
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
