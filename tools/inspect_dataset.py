"""Check a data set tree: read it with the configured reader, print its statistics, optionally dump every record.

    python tools/inspect_dataset.py --config_file configs/RGBNT201/TOP-ReID.yml [KEY VALUE ...] [--json records.json]

The JSON holds ``{"train" | "query" | "gallery": [{"paths": {spectrum: file}, "pid", "camid", "sceneid"}, ...]}``
with train pids relabelled to 0..N-1 (the training labels) and raw pids in query and gallery; under
``DATASETS.NI_AS_TI`` each record also has ``"copies": {"TI": "NI"}``. Exit code 2 for an invalid config, 1 for a
data set that cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import ConfigError, load_config  # noqa: E402
from data.datasets import DatasetError, Record, ReIDDataset, build_dataset  # noqa: E402
from utils.io import write_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Read a data set and print its statistics")
    parser.add_argument("--config_file", default="", help="path to a YAML config")
    parser.add_argument("--json", default="", help="write every record to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    args = parser.parse_args(argv)
    if "--json" in args.opts:  # also accepted after the KEY VALUE pairs
        at = args.opts.index("--json")
        if at + 1 >= len(args.opts):
            parser.error("--json needs a file name")
        args.json = args.opts[at + 1]
        args.opts = args.opts[:at] + args.opts[at + 2:]
    return args


def _record(r: Record) -> dict:
    copies = {"copies": dict(r.copies)} if r.copies else {}  # slot -> spectrum whose image fills it (DATASETS.NI_AS_TI)
    return {"paths": dict(r.paths), "pid": r.pid, "camid": r.camid, "sceneid": r.sceneid, **copies}


def records_json(dataset: ReIDDataset) -> dict[str, list[dict]]:
    return {"train": [_record(r) for r in dataset.train], "query": [_record(r) for r in dataset.query],
            "gallery": [_record(r) for r in dataset.gallery]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        dataset = build_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR, cfg.DATASETS.NI_AS_TI)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(dataset.statistics())
    print(f"training classes {dataset.num_train_pids}, cameras {dataset.num_train_cams}, "
          f"junk rule: same pid and same {dataset.junk_key}")
    if args.json:
        write_json(args.json, records_json(dataset))
        print(f"records written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
