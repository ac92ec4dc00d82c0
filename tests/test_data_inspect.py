"""tools/inspect_dataset.py as a command: statistics on stdout, every record in the JSON, errors as exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import rgbnt201_names, write_msvr310, write_rgbnt201
from tools.inspect_dataset import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/inspect_dataset.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_inspect_writes_every_record(tmp_path):
    write_rgbnt201(str(tmp_path), rgbnt201_names([3, 8], [1, 2], 2), rgbnt201_names([40], [1, 3], 1))
    out = tmp_path / "records.json"
    proc = _run("--config_file", "configs/RGBNT201/TOP-ReID.yml", "DATASETS.ROOT_DIR", str(tmp_path), "--json",
                str(out))
    assert proc.returncode == 0, proc.stderr
    assert "RGBNT201 statistics" in proc.stdout and "# cameras" in proc.stdout
    records = json.loads(out.read_text())
    assert set(records) == {"train", "query", "gallery"}
    assert len(records["train"]) == 8 and len(records["query"]) == len(records["gallery"]) == 2
    first = records["train"][0]
    assert first == {"paths": {s: str(tmp_path / "RGBNT201" / "train_171" / s / "000003_cam1_0_01.jpg")
                               for s in ("RGB", "NI", "TI")}, "pid": 0, "camid": 0, "sceneid": -1}
    assert sorted({r["pid"] for r in records["train"]}) == [0, 1]  # relabelled
    assert [(r["pid"], r["camid"]) for r in records["query"]] == [(40, 0), (40, 2)]  # raw


def test_inspect_msvr310_scenes(tmp_path, capsys):
    write_msvr310(str(tmp_path), {"bounding_box_train": ["0004_s001_v0_000.jpg"], "query3": ["0009_s003_v2_000.jpg"],
                                  "bounding_box_test": ["0009_s004_v1_000.jpg"]})
    out = tmp_path / "r.json"
    assert main(["--config_file", os.path.join(REPO, "configs/MSVR310/TOP-ReID.yml"), "--json", str(out),
                 "DATASETS.ROOT_DIR", str(tmp_path)]) == 0
    assert "# scenes" in capsys.readouterr().out
    records = json.loads(out.read_text())
    assert records["query"][0]["sceneid"] == 3 and records["gallery"][0]["camid"] == 1


def test_inspect_reports_errors(tmp_path, capsys):
    config = os.path.join(REPO, "configs/RGBNT201/TOP-ReID.yml")
    assert main(["--config_file", config, "DATASETS.ROOT_DIR", str(tmp_path / "none")]) == 1
    assert str(tmp_path / "none") in capsys.readouterr().err
    assert main(["--config_file", config, "DATASETS.NAMES", "Market1501"]) == 2
    assert "DATASETS.NAMES" in capsys.readouterr().err
