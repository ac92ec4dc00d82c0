"""Convert OpenAI's CLIP file (``ViT-B-16.pt``, a TorchScript archive) into a safetensors file that training reads.

    python tools/convert_clip.py --input ViT-B-16.pt --output clip_vitb16.safetensors [--force]

OpenAI distributes CLIP as TorchScript: a zip holding compiled code as well as the weights. Training never loads
such a file (``MODEL.PRETRAIN_PATH_T`` is read with ``torch.load(weights_only=True)`` or safetensors). This tool is the
one place that runs ``torch.jit.load``, on a file you name and trust, for this explicit conversion: it takes the
state_dict of the archive, keeps the image tower (``visual.*``; the text tower is left out), renames it to timm's
names with timm's own conversion (``_convert_openai_clip``; CLIP's projection ``proj`` becomes ``head.weight``,
which training drops), and writes the tensors as safetensors with metadata ``activation=quick_gelu``: OpenAI's CLIP
was trained with QuickGELU, so train with ``MODEL.TRANSFORMER_TYPE vit_base_patch16_clip_quickgelu_224`` (the
loader warns when the backbone uses GELU). A plain state_dict file in the OpenAI layout (not TorchScript) is read
safely and converted the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from modeling.pretrained import ACTIVATION_METADATA, OPENAI_LAYOUT, clip_to_timm  # noqa: E402
from utils.checkpoint import CheckpointError, is_torchscript_archive, safe_load, summarize_keys  # noqa: E402

logger = logging.getLogger("tools.convert_clip")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Convert OpenAI's CLIP ViT file (e.g. ViT-B-16.pt) into a safetensors file for "
                    "MODEL.PRETRAIN_PATH_T. WARNING: the input is loaded with torch.jit.load, which runs the "
                    "TorchScript code stored in it: only convert a file you trust (OpenAI's own download).")
    parser.add_argument("--input", required=True, help="OpenAI CLIP file (TorchScript archive, or a state_dict)")
    parser.add_argument("--output", required=True, help=".safetensors file to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    return parser.parse_args(argv)


def read_clip_state(path: str) -> dict[str, torch.Tensor]:
    """The state_dict of a CLIP file: ``torch.jit.load`` for a TorchScript archive (the only place it is used),
    :func:`utils.checkpoint.safe_load` otherwise."""
    if not os.path.isfile(path):
        raise CheckpointError(f"CLIP file not found: {path}")
    if is_torchscript_archive(path):
        logger.info("%s is a TorchScript archive: loading it with torch.jit.load (this runs code stored in the file; "
                    "done only for this explicit conversion of a file you trust)", path)
        return {k: v.detach() for k, v in torch.jit.load(path, map_location="cpu").state_dict().items()}
    return {k: v for k, v in safe_load(path).items() if isinstance(v, torch.Tensor)}


def convert(source: str, output: str) -> dict[str, torch.Tensor]:
    """Write the image tower of ``source`` in timm's names to ``output`` (safetensors) and return it."""
    from safetensors.torch import save_file

    state, left_out, layout = clip_to_timm(read_clip_state(source))
    if layout != OPENAI_LAYOUT:
        raise CheckpointError(f"{source}: not a CLIP model in the OpenAI layout (no visual.class_embedding); timm and "
                              "open_clip files need no conversion, give them to MODEL.PRETRAIN_PATH_T directly")
    tensors = {k: v.contiguous().clone() for k, v in state.items()}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = f"{output}.tmp{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata={ACTIVATION_METADATA: "quick_gelu", "source": os.path.basename(source),
                                          "converted_by": "tools/convert_clip.py"})
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    pos = tensors.get("pos_embed")
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in tensors.values()})
    logger.info("wrote %s: %d tensors of the image tower (%s)%s, %s; left out %d keys (text tower and the rest: "
                "%s); CLIP's projection kept as head.weight, dropped when training loads the file. Train with "
                "MODEL.TRANSFORMER_TYPE vit_base_patch16_clip_quickgelu_224 (QuickGELU, as OpenAI's CLIP) and "
                "MODEL.PRETRAIN_PATH_T %s", output, len(tensors),
                f"{sum(v.numel() for v in tensors.values()):,} values",
                f", position table {list(pos.shape)}" if pos is not None else "", "/".join(dtypes), len(left_out),
                summarize_keys(left_out, limit=6, depth=1) or "none", output)
    return tensors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if os.path.exists(args.output) and not args.force:
        print(f"error: {args.output} exists; give --force to overwrite it", file=sys.stderr)
        return 1
    if not args.output.endswith(".safetensors"):
        print(f"error: --output {args.output} must end with .safetensors", file=sys.stderr)
        return 1
    try:
        convert(args.input, args.output)
    except (CheckpointError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
