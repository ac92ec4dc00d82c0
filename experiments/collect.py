"""A sweep's results as a table: per row and missing-spectrum setting, the mean and the sample standard deviation
(ddof=1) over the finished seeds of the last epoch's metrics, the published figure and the difference.

Written to ``ROOT/table.md``, ``ROOT/table.csv`` and ``ROOT/table.png``. Runs that are not finished are listed as
missing; a partial sweep gives a table of what is there. The best epoch selected on the test set (``best.pth``'s
``metrics``, what the original reports) is shown separately and labelled, never mixed with the last epoch.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from experiments.sweep import Run, Sweep, SweepError, load_state, run_state
from utils.spectra import MISS_SETTINGS

logger = logging.getLogger(__name__)

SHOWN_METRICS = ("mAP", "Rank-1")  # the paper's columns: the markdown table and the chart
CSV_METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")
SETTING_LABELS = {"nothing": "all", "r": "-RGB", "n": "-NI", "t": "-TI", "rn": "-RGB-NI", "rt": "-RGB-TI",
                  "nt": "-NI-TI"}
STD_NOTE = "sample standard deviation (ddof=1), shown where two or more seeds finished"
BEST_NOTE = ("epoch of the highest mAP on the test set (best.pth): the test set chose it, so it is optimistic; the "
             "published RGBNT201 figures of the original were picked this way")
DPI = 100
CHART_SIZE = (1200, 500)


@dataclass
class Stat:
    """One metric of one row and setting over the finished seeds (percent)."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else None


@dataclass
class RowResult:
    name: str
    note: str
    seeds: list[int]
    finished: list[int] = field(default_factory=list)
    missing: list[tuple[int, str]] = field(default_factory=list)  # (seed, state)
    stats: dict[str, dict[str, Stat]] = field(default_factory=dict)  # setting -> metric -> Stat
    published: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    best: dict[str, Stat] = field(default_factory=dict)  # metric -> Stat, best-on-test epoch
    best_epochs: list[int] = field(default_factory=list)
    best_setting: str = ""


@dataclass
class Table:
    title: str
    sweep_path: str
    root: str
    rows: list[RowResult]
    settings: list[str]

    @property
    def runs_finished(self) -> int:
        return sum(len(r.finished) for r in self.rows)

    @property
    def runs_expected(self) -> int:
        return sum(len(r.seeds) for r in self.rows)


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def best_on_test(run_dir: str) -> tuple[int, dict[str, dict[str, float]]] | None:
    """Epoch and metrics stored in ``best.pth`` (memory-mapped: the weights are not read), or None."""
    path = os.path.join(run_dir, "best.pth")
    if not os.path.isfile(path):
        return None
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a foreign or truncated file: leave the best-on-test column out for this run
        logger.warning("%s: not readable (%s); its best-on-test figures are left out", path, err)
        return None
    metrics, epoch = payload.get("metrics"), payload.get("epoch")
    return (int(epoch), metrics) if isinstance(metrics, dict) and isinstance(epoch, int) else None


def collect(sweep: Sweep, runs: Sequence[Run], root: str) -> Table:
    """Read every finished run's last results.json (and best.pth) into a :class:`Table`."""
    rows: dict[str, RowResult] = {}
    records = load_state(root)["runs"]
    for run in runs:
        spec = sweep.rows[run.row]
        row = rows.setdefault(run.row, RowResult(run.row, spec.note, [], published=spec.published))
        row.seeds.append(run.seed)
        try:
            status = run_state(run)
        except SweepError as err:
            row.missing.append((run.seed, f"conflict: {err}"))
            continue
        record = records.get(run.key, {})
        if status.state != "done" and record.get("state") == "failed":
            row.missing.append((run.seed, f"failed after {record.get('attempts')} attempts: {record.get('error', '')}"))
            continue
        if status.state != "done":
            epoch = f", results of epoch {status.epoch} of {run.max_epochs}" if status.epoch else ""
            row.missing.append((run.seed, f"{status.state}{epoch}"))
            continue
        row.finished.append(run.seed)
        settings = _read_json(os.path.join(run.output_dir, "results.json"))["settings"]
        for setting, metrics in settings.items():
            for metric, value in metrics.items():
                row.stats.setdefault(setting, {}).setdefault(metric, Stat([])).values.append(100.0 * value)
        best = best_on_test(run.output_dir)
        if best is not None:
            epoch, metrics = best
            row.best_setting = "nothing" if "nothing" in metrics else next(iter(metrics))
            row.best_epochs.append(epoch)
            for metric in SHOWN_METRICS:
                row.best.setdefault(metric, Stat([])).values.append(100.0 * metrics[row.best_setting][metric])
    present = {s for r in rows.values() for s in (*r.stats, *r.published)}
    settings = [s for s in MISS_SETTINGS if s in present]
    return Table(sweep.title, sweep.path, root, list(rows.values()), settings)


# ----------------------------------------------------------------------------------------------------------------------
# Writers.

def _fmt(stat: Stat | None, published: float | None = None) -> str:
    if stat is None or not stat.n:
        text = "—"
    else:
        text = f"{stat.mean:.1f}" + (f" ± {stat.std:.1f}" if stat.std is not None else "")
    if published is not None:
        diff = f", Δ {stat.mean - published:+.1f}" if stat is not None and stat.n else ""
        text += f" (pub {published:.1f}{diff})"
    return text


def markdown(table: Table) -> str:
    lines = [f"# {table.title}", "",
             f"Sweep `{table.sweep_path}`, {table.runs_finished} of {table.runs_expected} runs finished. Each cell: "
             f"mean ± {STD_NOTE}, over the finished seeds, of the **last epoch**, in percent; `pub` is the published "
             "figure and `Δ` = mean − published.", ""]
    header = ["row", "seeds"] + [f"{SETTING_LABELS[s]} {m}" for s in table.settings for m in SHOWN_METRICS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [row.name, f"{len(row.finished)}/{len(row.seeds)}"]
        for setting in table.settings:
            for metric in SHOWN_METRICS:
                cells.append(_fmt(row.stats.get(setting, {}).get(metric),
                                  row.published.get(setting, {}).get(metric)))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- `{r.name}`: {r.note}" for r in table.rows if r.note]
    if notes:
        lines += ["", "Notes:", "", *notes]
    if any(r.best for r in table.rows):
        lines += ["", "## Best epoch on the test set (separate from the table above)", "",
                  f"The {BEST_NOTE}. Mean ± {STD_NOTE}.", "",
                  "| row | seeds | setting | epochs | mAP | Rank-1 |", "|---|---|---|---|---|---|"]
        for row in table.rows:
            if row.best:
                pub = row.published.get(row.best_setting, {})
                lines.append(f"| {row.name} | {row.best['mAP'].n} | {SETTING_LABELS[row.best_setting]} | "
                             f"{', '.join(map(str, row.best_epochs))} | {_fmt(row.best['mAP'], pub.get('mAP'))} | "
                             f"{_fmt(row.best['Rank-1'], pub.get('Rank-1'))} |")
    missing = [f"- `{r.name}` seed {seed}: {state}" for r in table.rows for seed, state in r.missing]
    lines += ["", "## Missing runs", ""] + (missing or ["None: every run finished."])
    return "\n".join(lines) + "\n"


def write_csv(table: Table, path: str) -> None:
    """One line per row; per setting and metric: mean, std (empty below two seeds), n, published, difference."""
    header = ["row", "seeds_finished", "seeds_expected"]
    for setting in table.settings:
        for metric in CSV_METRICS:
            header += [f"{setting}/{metric}/{k}" for k in ("mean", "std", "n", "published", "diff")]
    header += ["best_on_test/setting", "best_on_test/epochs", "best_on_test/mAP/mean", "best_on_test/mAP/std",
               "best_on_test/Rank-1/mean", "best_on_test/Rank-1/std"]

    def num(x: float | None) -> str:
        return "" if x is None or x != x else f"{x:.6f}"

    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in table.rows:
            line = [row.name, len(row.finished), len(row.seeds)]
            for setting in table.settings:
                for metric in CSV_METRICS:
                    stat = row.stats.get(setting, {}).get(metric)
                    pub = row.published.get(setting, {}).get(metric)
                    mean = stat.mean if stat and stat.n else None
                    line += [num(mean), num(stat.std if stat else None), stat.n if stat else 0, num(pub),
                             num(mean - pub if mean is not None and pub is not None else None)]
            best_map, best_r1 = row.best.get("mAP"), row.best.get("Rank-1")
            line += [row.best_setting, " ".join(map(str, row.best_epochs)),
                     num(best_map.mean if best_map else None), num(best_map.std if best_map else None),
                     num(best_r1.mean if best_r1 else None), num(best_r1.std if best_r1 else None)]
            writer.writerow(line)
    os.replace(tmp, path)


def plot(table: Table, path: str) -> None:
    """Bars of mAP and Rank-1 per setting, one bar per row, error bars = std over seeds (none below two seeds),
    published as black ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(table.settings))
    width = 0.8 / max(1, len(table.rows))
    fig, axes = plt.subplots(1, 2, figsize=(CHART_SIZE[0] / DPI, CHART_SIZE[1] / DPI), dpi=DPI)
    try:
        for ax, metric in zip(axes, SHOWN_METRICS):
            for k, row in enumerate(table.rows):
                stats = [row.stats.get(s, {}).get(metric) for s in table.settings]
                means = np.array([st.mean if st and st.n else np.nan for st in stats])
                offset = x + (k - (len(table.rows) - 1) / 2) * width
                ax.bar(offset, means, width, label=f"{row.name} (n={len(row.finished)})")
                spread = [i for i, st in enumerate(stats) if st and st.std is not None]  # one seed: no error bar
                if spread:
                    ax.errorbar(offset[spread], means[spread], yerr=[stats[i].std for i in spread], fmt="none",
                                ecolor="black", capsize=2)
                pubs = [row.published.get(s, {}).get(metric, np.nan) for s in table.settings]
                if not np.all(np.isnan(pubs)):
                    ax.scatter(offset, pubs, marker="_", s=200, color="black", zorder=3,
                               label="published" if k == 0 or "published" not in
                               ax.get_legend_handles_labels()[1] else None)
            ax.set_xticks(x, [SETTING_LABELS[s] for s in table.settings])
            ax.set_ylabel(f"{metric} (%)")
            ax.set_ylim(0, 105)
            ax.set_title(f"{metric}, last epoch: mean ± std over seeds")
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(table.title, fontsize=10)
        fig.tight_layout()
        tmp = f"{path}.tmp{os.getpid()}"
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)


def write_tables(table: Table, root: str) -> list[str]:
    """table.md, table.csv and table.png in ``root``; returns their paths."""
    os.makedirs(root, exist_ok=True)
    paths = [os.path.join(root, name) for name in ("table.md", "table.csv", "table.png")]
    tmp = f"{paths[0]}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(markdown(table))
    os.replace(tmp, paths[0])
    write_csv(table, paths[1])
    plot(table, paths[2])
    logger.info("%d of %d runs finished; wrote %s", table.runs_finished, table.runs_expected, ", ".join(paths))
    return paths
