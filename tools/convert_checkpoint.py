"""Convert a checkpoint trained by the original code of a method (TOP-ReID, DeMo) to this project's format.

    python tools/convert_checkpoint.py --config_file configs/RGBNT201/TOP-ReID.yml --input TOPReID.pth \\
        --output topreid_rgbnt201.pth [--force] [KEY VALUE ...]

The original keys are mapped to this project's names (the method's key map), the checkpoint's method (known from its
layout) must be the config's MODEL.META_ARCHITECTURE, the model is built from the config (number of identities and
cameras read from the checkpoint) and must load the result strictly; then
``{"format": "topreid", "model": state_dict, "config": ..., "source": input}`` is written. An existing output is
kept unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import ConfigError, load_config  # noqa: E402
from utils.checkpoint import FORMAT, CheckpointError, safe_load, save_checkpoint  # noqa: E402

logger = logging.getLogger("tools.convert_checkpoint")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Convert a checkpoint of a method's original code (TOP-ReID, DeMo) to this project's format")
    parser.add_argument("--config_file", default="", help="YAML config of the model the checkpoint was trained as")
    parser.add_argument("--input", required=True, help="checkpoint written by the original code")
    parser.add_argument("--output", required=True, help="converted checkpoint to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser.parse_args(argv)


def convert(config_file: str, opts: list[str], source: str, output: str) -> None:
    from modeling import build_model
    from modeling.checkpoint import (
        PROJECT_LAYOUT,
        check_arch,
        load_model_weights,
        model_payload,
        project_state_dict,
        sizes_from_state,
    )

    cfg = load_config(config_file, [*opts, "MODEL.PRETRAIN_CHOICE", "none"])
    raw = safe_load(source)
    check_arch(raw, cfg, source)
    converted, _, layout = project_state_dict(raw, source)
    if raw.get("format") == FORMAT or layout == PROJECT_LAYOUT:
        raise CheckpointError(f"{source}: not a checkpoint of a method's original code (TOP-ReID, DeMo; already "
                              "converted, or another model?)")
    num_classes, cameras = sizes_from_state(converted, source)
    model = build_model(cfg, num_classes, cameras)
    load_model_weights(model, raw, source=source)  # strict: raises when the config does not match
    save_checkpoint(output, model_payload(model, cfg, num_classes, cameras, source=os.path.abspath(source)))
    logger.info("wrote %s from the %s layout (%d identities, %d cameras, heads %s)", output, layout, num_classes,
                cameras, ", ".join(model.heads))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if os.path.exists(args.output) and not args.force:
        print(f"error: {args.output} exists; give --force to overwrite it", file=sys.stderr)
        return 1
    try:
        convert(args.config_file, list(args.opts), args.input, args.output)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
