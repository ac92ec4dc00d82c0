"""Train TOP-ReID: ``python train_net.py --config_file configs/RGBNT201/TOP-ReID.yml [KEY VALUE ...] [--resume]``.

Under torchrun (``torchrun --nproc_per_node N train_net.py ...``) it trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import logging
import sys

from configs import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train TOP-ReID")
    parser.add_argument("--config_file", default="", help="path to a YAML config")
    parser.add_argument("--resume", action="store_true", help="continue the run in OUTPUT_DIR from last.pth")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    args = parser.parse_args(argv)
    if "--resume" in args.opts:  # also accepted among or after the KEY VALUE pairs
        args.opts.remove("--resume")
        args.resume = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from processor.trainer import RunExistsError, Trainer, TrainingInterrupted
    from utils import distributed as du
    from utils.checkpoint import CheckpointError

    try:
        trainer = Trainer(cfg, resume=args.resume)
        trainer.train()
    except TrainingInterrupted as stop:
        return int(stop.code)
    except (RunExistsError, CheckpointError, FileNotFoundError, FloatingPointError, ValueError) as err:
        logging.getLogger("topreid").error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        du.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
