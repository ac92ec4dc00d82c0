"""Evaluate a checkpoint: ``python test_net.py --config_file CFG TEST.WEIGHT path.pth [TEST.MISS all] [KEY VALUE ...]``.

``TEST.WEIGHT`` may be a checkpoint of this project or one trained by a method's original code (TOP-ReID, DeMo: a
plain state_dict, ``module.`` prefixes allowed), for the config's ``MODEL.META_ARCHITECTURE``. ``TEST.MISS all``
evaluates the seven missing-spectrum settings in one pass over the test set and prints the paper's table.
``TEST.CROSS all`` (or ``'RGB->TI, RGB+NI->TI'``) adds the cross-spectral pairs to the same pass and prints the query
x gallery mAP matrix. Results go to ``OUTPUT_DIR/results.json`` (and ``features.npz`` with
``TEST.SAVE_FEATURES True``). When ``OUTPUT_DIR`` holds a training run (its ``config.yaml`` and ``last.pth`` or
``train_log.txt``: the config's own OUTPUT_DIR), they go to ``OUTPUT_DIR/test_<checkpoint name>/`` instead, so the
run's own ``results.json`` (what sweeps and tables read) is never replaced.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from configs import ConfigError, load_config

logger = logging.getLogger("topreid")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint of a registered method")
    parser.add_argument("--config_file", default="", help="path to a YAML config")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser.parse_args(argv)


def evaluation_dir(output_dir: str, weight: str) -> str:
    """Where test_net.py writes: ``output_dir``, or ``output_dir/test_<checkpoint stem>`` when it holds a run."""
    from processor.trainer import holds_training_run

    if not holds_training_run(output_dir):
        return output_dir
    return os.path.join(output_dir, f"test_{os.path.splitext(os.path.basename(weight))[0]}")


def run(cfg) -> dict:
    import numpy as np

    from data.build import build_query_gallery
    from evaluation import format_cross_matrix, format_table
    from processor.inference import eval_pairs, eval_settings, extraction_settings, score, write_results
    from processor.predictor import Predictor
    from utils.env import device_description, git_commit, versions
    from utils.io import write_npz
    from utils.logger import setup_logger

    setup_logger(None)
    settings = eval_settings(cfg)
    predictor = Predictor.from_config(cfg)  # fails before anything is written
    pairs = eval_pairs(cfg, predictor.model)  # so does a pair this model cannot evaluate
    split = build_query_gallery(cfg)
    # Only now that the weights fit is anything written.
    out_dir = evaluation_dir(cfg.OUTPUT_DIR, cfg.TEST.WEIGHT)
    setup_logger(out_dir, 0, "test_log.txt")
    if out_dir != cfg.OUTPUT_DIR:
        logger.info("OUTPUT_DIR %s holds a training run: this evaluation is written to %s", cfg.OUTPUT_DIR, out_dir)
    logger.info("versions %s, device %s, commit %s", versions(), device_description(predictor.device), git_commit())
    logger.info("evaluating %s on %s, settings: %s", cfg.TEST.WEIGHT, cfg.DATASETS.NAMES, ", ".join(settings))
    extracted = predictor.extract(predictor.loader(split.records), extraction_settings(settings, pairs))
    results, cross = score(extracted, split.num_query, split.junk_key, cfg, settings, pairs)
    logger.info("features of %d images x %d settings in %.1f s\n%s", len(extracted.pids), len(extracted.feats),
                extracted.seconds, format_table(results))
    if cross:
        logger.info("cross-spectral evaluation (query side -> gallery side):\n%s\n%s", format_table(cross),
                    format_cross_matrix(cross, pairs, results))
    write_results(os.path.join(out_dir, "results.json"), results, cfg, cfg.TEST.WEIGHT, predictor.epoch,
                  predictor.device, cross)
    if cfg.TEST.SAVE_FEATURES:
        arrays = {f"feat_{s}": f.numpy() for s, f in extracted.feats.items()}
        write_npz(os.path.join(out_dir, "features.npz"), names=np.array(extracted.names), pids=extracted.pids,
                  camids=extracted.camids, sceneids=extracted.sceneids, num_query=np.array(split.num_query), **arrays)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts, freeze=False)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not cfg.TEST.WEIGHT:
        print("error: TEST.WEIGHT is not set; give the checkpoint to evaluate (TEST.WEIGHT path/to/best.pth)",
              file=sys.stderr)
        return 2
    cfg.freeze()
    from utils.checkpoint import CheckpointError

    try:
        run(cfg)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
