"""The comparison table of methods (experiments.collect): one column group per protocol (all spectra, the missing
settings that exist for the row, the cross-spectral pairs), rows grouped by data set then method, published figures
and differences. Every number of table.md and table.csv is recomputed here from the runs' results.json files and the
sweep file's YAML, independently of the collector: once from results files this test writes (three methods, a
two-spectrum row and an RGBNT300 row with NI copied into TI, a missing seed), once from a real sweep of the three
methods on (part of) the demo data through the one command ``tools/sweep.py configs/paper/demo_methods.yml``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from configs import load_config
from experiments import collect, load_sweep, plan_runs, write_tables

REPO = Path(__file__).resolve().parents[1]
DEMO_METHODS = REPO / "configs" / "paper" / "demo_methods.yml"
METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")
LABELS = {"nothing": "all", "r": "-RGB", "n": "-NI", "t": "-TI", "rn": "-RGB-NI", "rt": "-RGB-TI", "nt": "-NI-TI"}
SEVEN = list(LABELS)
SIX_PAIRS = ["RGB->NI", "RGB->TI", "NI->RGB", "NI->TI", "TI->RGB", "TI->NI"]
SECTIONS = {"all": "All spectra", "missing": "Missing spectra", "cross": "Cross-spectral"}


# ----------------------------------------------------------------------------------------------------------------------
# The recomputation: from the results files and the sweep file's YAML only.

def recompute(root: Path, sweep_file: Path) -> dict[str, dict]:
    """Row -> {"n": finished seeds, "settings"/"cross": key -> metric -> (mean, std or None, n), "published": ...}."""
    tree = yaml.safe_load(sweep_file.read_text())
    out = {}
    for row, spec in tree["rows"].items():
        results = [json.loads(p.read_text()) for p in sorted((root / row).glob("seed*/results.json"))]
        entry = {"n": len(results), "published": (spec or {}).get("published") or {}}
        for section in ("settings", "cross"):
            values: dict[str, dict[str, list[float]]] = {}
            for result in results:
                for key, metrics in (result.get(section) or {}).items():
                    for metric, value in metrics.items():
                        values.setdefault(key, {}).setdefault(metric, []).append(100 * value)
            entry[section] = {key: {m: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))
                                    for m, v in metrics.items()} for key, metrics in values.items()}
        out[row] = entry
    return out


def expected_cell(stat: tuple | None, published: float | None) -> str:
    text = "" if stat is None else f"{stat[0]:.1f}" + (f" ± {stat[1]:.1f}" if stat[1] is not None else "")
    if published is not None:
        text += (" " if text else "") + f"(pub {published:.1f}" + \
            (f", Δ {stat[0] - published:+.1f})" if stat is not None else ")")
    return text


def markdown_tables(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """Protocol -> row -> column header -> cell, from the sections of table.md."""
    tables = {}
    for section in text.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        protocol = next((p for p, start in SECTIONS.items() if title.startswith(start)), None)
        if protocol is None:
            continue
        lines = [line for line in body.splitlines() if line.startswith("|")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]
        tables[protocol] = {cells[2]: dict(zip(header, cells)) for cells in rows}
    return tables


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {line["row"]: line for line in csv.DictReader(f)}


def check_table(root: Path, sweep_file: Path, existing: dict[str, tuple[list[str], list[str]]]) -> None:
    """table.md and table.csv of ``root`` against the recomputation; ``existing``: row -> (settings, pairs) that exist
    for its spectra (every other column of the row is "—" / empty)."""
    expected = recompute(root, sweep_file)
    lines = read_csv(root / "table.csv")
    tables = markdown_tables((root / "table.md").read_text())
    assert set(lines) == set(expected)
    all_settings = [s for s in SEVEN if any(s in e["settings"] or s in e["published"] for e in expected.values())]
    all_pairs = {p for e in expected.values() for p in e["cross"]}
    assert set(tables) == {"all", "missing", "cross"} if all_pairs else {"all", "missing"}
    for row, entry in expected.items():
        line = lines[row]
        settings, pairs = existing[row]
        assert line["seeds_finished"] == str(entry["n"])
        for setting in all_settings:
            for metric in METRICS:
                stat = entry["settings"].get(setting, {}).get(metric)
                published = entry["published"].get(setting, {}).get(metric)
                fields = [line[f"{setting}/{metric}/{k}"] for k in ("mean", "std", "n", "published", "diff")]
                if setting not in settings:
                    assert stat is None and fields == [""] * 5, (row, setting, metric)
                    continue
                mean, std, n = stat if stat else (None, None, 0)
                assert fields[2] == str(n)
                assert (float(fields[0]) if fields[0] else None) == pytest.approx(mean, abs=1e-5)
                assert (float(fields[1]) if fields[1] else None) == pytest.approx(std, abs=1e-5)
                assert (float(fields[3]) if fields[3] else None) == published
                diff = mean - published if mean is not None and published is not None else None
                assert (float(fields[4]) if fields[4] else None) == pytest.approx(diff, abs=1e-5)
            protocol = "all" if setting == "nothing" else "missing"
            for metric in ("mAP", "Rank-1"):
                column = metric if protocol == "all" else f"{LABELS[setting]} {metric}"
                cell = tables[protocol][row][column]
                if setting not in settings:
                    assert cell == "—", (row, column)
                else:
                    assert cell == expected_cell(entry["settings"].get(setting, {}).get(metric),
                                                 entry["published"].get(setting, {}).get(metric)), (row, column)
        for pair in all_pairs:
            for metric in METRICS:
                stat = entry["cross"].get(pair, {}).get(metric)
                fields = [line[f"cross/{pair}/{metric}/{k}"] for k in ("mean", "std", "n")]
                if pair not in pairs:
                    assert stat is None and fields == [""] * 3, (row, pair, metric)
                    continue
                mean, std, n = stat if stat else (None, None, 0)
                assert fields[2] == str(n)
                assert (float(fields[0]) if fields[0] else None) == pytest.approx(mean, abs=1e-5)
                assert (float(fields[1]) if fields[1] else None) == pytest.approx(std, abs=1e-5)
            for metric in ("mAP", "Rank-1"):
                cell = tables["cross"][row][f"{pair} {metric}"]
                assert cell == ("—" if pair not in pairs else
                                expected_cell(entry["cross"].get(pair, {}).get(metric), None)), (row, pair, metric)
    with Image.open(root / "table.png") as image:
        assert image.format == "PNG" and image.size[0] >= 1200


# ----------------------------------------------------------------------------------------------------------------------
# From results files the test writes: no training.

FABRICATED = {
    "rows": {
        "TOP-ReID": {"base": "configs/demo/TOP-ReID.yml",
                     "published": {"nothing": {"mAP": 50.0, "Rank-1": 60.0, "Rank-5": 70.0}, "r": {"mAP": 20.0},
                                   "nt": {"Rank-1": 10.0}}},
        "DeMo": {"base": "configs/demo/DeMo.yml"},
        "EDITOR": {"base": "configs/demo/EDITOR.yml", "published": {"nothing": {"mAP": 40.0}}},
        "RGBNT300-DeMo": {"base": "configs/RGBNT300/DeMo.yml", "overrides": ["MODEL.PRETRAIN_CHOICE none"],
                          "published": {"nothing": {"mAP": 55.5}}},
        "TOP-ReID-RGB-NI": {"base": "configs/demo/TOP-ReID.yml", "overrides": ["MODEL.SPECTRA", "['RGB','NI']"]},
    },
}
FABRICATED_EVALUATED = {  # TEST.MISS all and TEST.CROSS all for each row's spectra, by the spectra's rules
    "TOP-ReID": (SEVEN, SIX_PAIRS), "DeMo": (SEVEN, SIX_PAIRS), "EDITOR": (SEVEN, SIX_PAIRS),
    "TOP-ReID-RGB-NI": (["nothing", "r", "n"], ["RGB->NI", "NI->RGB"]),
    "RGBNT300-DeMo": (["nothing", "r", "nt"], ["RGB->NI+TI", "NI+TI->RGB"]),
}
# What exists: the same, and for three spectra also the pairs with two spectra on a side (RGBNT300's pair of RGB and
# NI+TI is a pair of three spectra too: only its rows evaluated it, the other rows leave it empty, not "—").
FABRICATED_EXISTING = {row: (settings, pairs + (["RGB->NI+TI", "NI+TI->RGB"] if len(settings) == 7 else []))
                       for row, (settings, pairs) in FABRICATED_EVALUATED.items()}


def _fabricated_sweep(tmp_path: Path) -> Path:
    path = tmp_path / "methods.yml"
    path.write_text(yaml.safe_dump({"title": "methods", "seeds": [0, 1, 2], "overrides": ["TEST.MISS all",
                                                                                       "TEST.CROSS all"],
                                    **FABRICATED}, sort_keys=False))
    return path


def test_table_equals_a_recomputation_from_the_results_files(tmp_path):
    sweep_file = _fabricated_sweep(tmp_path)
    sweep = load_sweep(str(sweep_file))
    root = tmp_path / "root"
    runs = plan_runs(sweep, str(root))
    rng = np.random.default_rng(0)
    for run in runs:
        if run.row == "EDITOR" and run.seed == 2:
            continue  # not run: two of three seeds finished
        settings, pairs = FABRICATED_EVALUATED[run.row]
        config = load_config(str(REPO / run.base), list(run.opts)).dump()
        folder = Path(run.output_dir)
        folder.mkdir(parents=True)
        metrics = lambda: {m: float(rng.uniform(0.05, 0.95)) for m in METRICS}  # noqa: E731
        (folder / "results.json").write_text(json.dumps({
            "settings": {s: metrics() for s in settings}, "cross": {p: metrics() for p in pairs},
            "epoch": run.max_epochs, "config": config}))
    table = collect(sweep, runs, str(root))
    write_tables(table, str(root))
    check_table(root, sweep_file, FABRICATED_EXISTING)

    # grouped by data set, then method: the two-spectrum TOP-ReID row beside the other TOP-ReID row, RGBNT300 last
    assert [r.name for r in table.rows] == ["TOP-ReID", "TOP-ReID-RGB-NI", "DeMo", "EDITOR", "RGBNT300-DeMo"]
    lines = read_csv(root / "table.csv")
    assert [(lines[r]["dataset"], lines[r]["method"]) for r in ("TOP-ReID", "EDITOR", "RGBNT300-DeMo")] == \
        [("demo", "TOP-ReID"), ("demo", "EDITOR"), ("RGBNT300", "DeMo")]
    assert lines["EDITOR"]["seeds_finished"] == "2" and lines["EDITOR"]["nothing/mAP/n"] == "2"
    assert lines["TOP-ReID-RGB-NI"]["settings"] == "nothing r n"
    assert lines["RGBNT300-DeMo"]["cross_pairs"] == "RGB->NI+TI NI+TI->RGB"
    text = (root / "table.md").read_text()
    tables = markdown_tables(text)
    # the two-spectrum row: its three settings and two pairs, "—" for the rest
    assert [c for c, v in tables["missing"]["TOP-ReID-RGB-NI"].items() if v == "—"] == \
        [f"{LABELS[s]} {m}" for s in ("t", "rn", "rt", "nt") for m in ("mAP", "Rank-1")]
    assert [c for c, v in tables["cross"]["TOP-ReID-RGB-NI"].items() if v == "—"] == \
        [f"{p} {m}" for p in ("RGB->TI", "NI->TI", "TI->RGB", "TI->NI", "RGB->NI+TI", "NI+TI->RGB")
         for m in ("mAP", "Rank-1")]
    # the pairs of a copied slot: only RGBNT300's, the three-spectrum rows did not evaluate them (empty, not "—")
    assert list(tables["cross"]["TOP-ReID"])[-4:] == ["RGB->NI+TI mAP", "RGB->NI+TI Rank-1", "NI+TI->RGB mAP",
                                                      "NI+TI->RGB Rank-1"]
    assert tables["cross"]["TOP-ReID"]["RGB->NI+TI mAP"] == ""
    assert tables["cross"]["RGBNT300-DeMo"]["RGB->NI mAP"] == "—"
    assert "`EDITOR` seed 2: to do" in text
    # a published figure for a metric only the CSV shows, and one without a result
    assert lines["TOP-ReID"]["nothing/Rank-5/published"] == "70.000000"
    assert "(pub 10.0, Δ " in tables["missing"]["TOP-ReID"]["-NI-TI Rank-1"]


def test_a_sweep_file_labels_rows_and_refuses_an_empty_label(tmp_path):
    from experiments import SweepError

    path = tmp_path / "s.yml"
    path.write_text(yaml.safe_dump({"base": "configs/demo/TOP-ReID.yml",
                                    "rows": {"a": {"dataset": "RGBNT201 (real)", "method": "TOP-ReID, ViT-B/16"}}}))
    row = load_sweep(str(path)).rows["a"]
    assert (row.dataset, row.method) == ("RGBNT201 (real)", "TOP-ReID, ViT-B/16")
    path.write_text(yaml.safe_dump({"base": "configs/demo/TOP-ReID.yml", "rows": {"a": {"method": " "}}}))
    with pytest.raises(SweepError, match=r"row 'a': method must be a non-empty string"):
        load_sweep(str(path))


# ----------------------------------------------------------------------------------------------------------------------
# The demo comparison: one command, then the recomputation.

def demo_subset(demo_root: str, folder: Path, train_ids: int = 10, test_ids: int = 8) -> str:
    """A root holding the first identities of the demo data (the same files and marker, so the demo reader takes it
    as it is): a sweep of six trainings in about a minute."""
    source, target = Path(demo_root) / "RGBNT201", folder / "RGBNT201"
    for split, count in (("train_171", train_ids), ("test", test_ids)):
        pids = sorted({p.name[:6] for p in (source / split / "RGB").glob("*.jpg")})[:count]
        for spectrum in ("RGB", "NI", "TI"):
            (target / split / spectrum).mkdir(parents=True)
            for pid in pids:
                for image in (source / split / spectrum).glob(f"{pid}_*.jpg"):
                    shutil.copy(image, target / split / spectrum / image.name)
    for marker in source.glob("*.txt"):
        shutil.copy(marker, target / marker.name)
    return str(folder)


@pytest.mark.slow
def test_demo_methods_table_is_one_command_and_matches_its_results(demo_root, tmp_path):
    data = demo_subset(demo_root, tmp_path / "data")
    root = tmp_path / "root"
    # the shipped sweep file as it is, one epoch on the subset (two runs at a time: one core each)
    command = [sys.executable, "tools/sweep.py", str(DEMO_METHODS), "--output", str(root), "--max-parallel", "2",
               "SOLVER.MAX_EPOCHS", "1", "SOLVER.EVAL_PERIOD", "1", "DATASETS.ROOT_DIR", data,
               "DATALOADER.NUM_WORKERS", "0"]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = yaml.safe_load(DEMO_METHODS.read_text())["rows"]
    for row in rows:
        for seed in (0, 1):
            result = json.loads((root / row / f"seed{seed}" / "results.json").read_text())
            assert list(result["settings"]) == SEVEN and list(result["cross"]) == SIX_PAIRS
            assert result["epoch"] == 1
    check_table(root, DEMO_METHODS, {row: (SEVEN, SIX_PAIRS) for row in rows})
    lines = read_csv(root / "table.csv")
    assert [lines[r]["method"] for r in lines] == ["TOP-ReID", "DeMo", "EDITOR"]
    assert all(lines[r]["seeds_finished"] == "2" and lines[r]["dataset"] == "demo" for r in lines)


# ----------------------------------------------------------------------------------------------------------------------
# EDITOR's configs of the three further data sets (the methods table's rows).

@pytest.mark.parametrize("name, al, size, ni_as_ti, settings, pairs", [
    ("RGBNT300", False, [128, 256], True, ["nothing", "r", "nt"], ["RGB->NI+TI", "NI+TI->RGB"]),
    ("Market1501-MM", True, [256, 128], False, SEVEN, SIX_PAIRS),
    ("WMVEID863", False, [128, 256], False, SEVEN, SIX_PAIRS),
])
def test_editor_configs_of_the_further_data_sets(name, al, size, ni_as_ti, settings, pairs):
    """As the original: Market1501-MM its shipped config (AL 1, 256x128, 70 epochs); the vehicle sets RGBNT100's
    settings, RGBNT300 with the NI image in the TI slot (the original's collate): its settings and pairs those of RGB
    and NI+TI."""
    from processor.inference import eval_pairs, eval_settings

    cfg = load_config(str(REPO / "configs" / name / "EDITOR.yml"), ["TEST.MISS", "all", "TEST.CROSS", "all"])
    vehicles = load_config(str(REPO / "configs" / "RGBNT100" / "EDITOR.yml"))
    persons = load_config(str(REPO / "configs" / "RGBNT201" / "EDITOR.yml"))
    assert (cfg.MODEL.META_ARCHITECTURE, cfg.DATASETS.NAMES, cfg.MODEL.EDITOR.AL, list(cfg.INPUT.SIZE_TRAIN),
            cfg.DATASETS.NI_AS_TI) == ("EDITOR", name, al, size, ni_as_ti)
    like = persons if name == "Market1501-MM" else vehicles
    assert (cfg.SOLVER.MAX_EPOCHS, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH) == \
        (like.SOLVER.MAX_EPOCHS, like.SOLVER.WARMUP_ITERS, like.SOLVER.BASE_LR, like.SOLVER.IMS_PER_BATCH) == \
        (70, 10, 0.001, 128)
    assert eval_settings(cfg) == settings and [p.name for p in eval_pairs(cfg)] == pairs
