"""A sweep's results as a table: per row and protocol, the mean and the sample standard deviation (ddof=1) over the
finished seeds of the last epoch's metrics, the published figure and the difference.

The rows are grouped by data set, then method (labels from the sweep file, else the resolved config's
``DATASETS.NAMES`` and ``MODEL.META_ARCHITECTURE``; each group in the order its first row appears in the file). The
columns come in one group per protocol the runs evaluated or a row has published figures for:

- **all spectra**: the ``nothing`` setting;
- **missing spectra** (``TEST.MISS``): the six settings that remove spectra from query and gallery alike; a setting
  that does not exist for the row's spectra (``-TI`` for RGB and NI; ``-NI`` where TI holds NI's copy) is ``—``;
- **cross-spectral** (``TEST.CROSS``): query seen in some spectra, gallery in others, from the ``"cross"`` section of
  each results.json (``processor.inference.write_results``); a pair that does not exist for the row's spectra is
  ``—``. The specs publish no cross-spectral figures.

Written to ``ROOT/table.md`` (one Markdown table per protocol), ``ROOT/table.csv`` (one line per row, the protocols
as column groups ``<setting>/<metric>/...`` and ``cross/<pair>/<metric>/...``) and ``ROOT/table.png`` (a row of
panels per data set and metric, one panel per protocol, one bar per row). Runs that are not finished are listed as
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
from utils.spectra import MISS_SETTINGS, SPECTRA, existing_settings, parse_cross

logger = logging.getLogger(__name__)

SHOWN_METRICS = ("mAP", "Rank-1")  # the paper's columns: the markdown table and the chart
CSV_METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")
SETTING_LABELS = {"nothing": "all", "r": "-RGB", "n": "-NI", "t": "-TI", "rn": "-RGB-NI", "rt": "-RGB-TI",
                  "nt": "-NI-TI"}
PROTOCOLS = ("all", "missing", "cross")
PROTOCOL_TITLES = {
    "all": "All spectra",
    "missing": "Missing spectra at test time (TEST.MISS: the spectra removed from query and gallery)",
    "cross": "Cross-spectral pairs (TEST.CROSS: query spectra -> gallery spectra)",
}
PANEL_TITLES = {"all": "all spectra", "missing": "missing spectra", "cross": "cross-spectral (query->gallery)"}
METHOD_LABELS = {"TOPReID": "TOP-ReID"}  # MODEL.META_ARCHITECTURE -> the method's name in a table
# The cross-spectral pairs in the order of `TEST.CROSS all` for the three spectra; other pairs follow as they appear.
CANONICAL_PAIRS = tuple(p.name for p in parse_cross("all", SPECTRA))
NOT_EXISTING = "—"
STD_NOTE = "sample standard deviation (ddof=1), shown where two or more seeds finished"
BEST_NOTE = ("epoch of the highest mAP on the test set (best.pth): the test set chose it, so it is optimistic; the "
             "published RGBNT201 figures of the original were picked this way")
DPI = 100
CHART_SIZE = (1200, 500)  # pixels of one data set's two panel rows with a single protocol (the chart grows with more)


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
    dataset: str = ""
    method: str = ""
    cross: dict[str, dict[str, Stat]] = field(default_factory=dict)  # pair ("RGB->TI") -> metric -> Stat
    settings_exist: list[str] | None = None  # the settings that exist for the row's spectra; None: unknown (all)
    pairs_exist: list[str] | None = None  # the single-spectrum pairs that exist for them; None: unknown (all)

    def setting_exists(self, setting: str) -> bool:
        return self.settings_exist is None or setting in self.settings_exist or setting in self.stats

    def pair_exists(self, pair: str) -> bool:
        """A pair the row evaluated exists; one it did not is known not to exist when its spectra are known and
        it is not among the row's `TEST.CROSS all` pairs (a pair of two-spectrum sides, "RGB+NI->TI", exists
        wherever its spectra are single pairs' spectra)."""
        if pair in self.cross or self.pairs_exist is None:
            return True
        spectra = {s for p in self.pairs_exist for side in p.split("->") for s in side.split("+")}
        sides = pair.split("->")
        return pair in self.pairs_exist or (pair not in CANONICAL_PAIRS and
                                            all(set(side.split("+")) <= spectra for side in sides))


@dataclass
class Table:
    title: str
    sweep_path: str
    root: str
    rows: list[RowResult]
    settings: list[str]
    pairs: list[str] = field(default_factory=list)  # cross-spectral pairs some row evaluated, in column order

    @property
    def runs_finished(self) -> int:
        return sum(len(r.finished) for r in self.rows)

    @property
    def runs_expected(self) -> int:
        return sum(len(r.seeds) for r in self.rows)

    def protocols(self) -> list[tuple[str, list[str]]]:
        """(protocol, its columns: settings or pair names) of every protocol that has a column."""
        out = [("all", [s for s in self.settings if s == "nothing"]),
               ("missing", [s for s in self.settings if s != "nothing"]), ("cross", list(self.pairs))]
        return [(p, cols) for p, cols in out if cols]


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


def row_spectra(config: Mapping[str, Any]) -> tuple[tuple[str, ...], dict[str, str]] | None:
    """(spectra of the model, copied slots of the data set) of a resolved, flattened config, or None when it does
    not say (a run built without its config)."""
    spectra = config.get("MODEL.SPECTRA")
    if not spectra:
        return None
    from data.datasets import dataset_spectra

    try:
        copies = dataset_spectra(str(config.get("DATASETS.NAMES")), bool(config.get("DATASETS.NI_AS_TI", False)))[1]
    except Exception:  # an unknown data set name: no copies (load_config has already refused a wrong convention)
        copies = {}
    return tuple(spectra), copies


def _labels(spec_dataset: str, spec_method: str, config: Mapping[str, Any]) -> tuple[str, str]:
    dataset = spec_dataset or str(config.get("DATASETS.NAMES") or "")
    arch = str(config.get("MODEL.META_ARCHITECTURE") or "")
    return dataset, spec_method or METHOD_LABELS.get(arch, arch)


def _add(target: dict[str, dict[str, Stat]], section: Mapping[str, Mapping[str, float]]) -> None:
    for key, metrics in section.items():
        for metric, value in metrics.items():
            target.setdefault(key, {}).setdefault(metric, Stat([])).values.append(100.0 * value)


def collect(sweep: Sweep, runs: Sequence[Run], root: str) -> Table:
    """Read every finished run's last results.json (and best.pth) into a :class:`Table`."""
    rows: dict[str, RowResult] = {}
    records = load_state(root)["runs"]
    for run in runs:
        spec = sweep.rows[run.row]
        row = rows.get(run.row)
        if row is None:
            dataset, method = _labels(getattr(spec, "dataset", ""), getattr(spec, "method", ""), run.config)
            row = rows[run.row] = RowResult(run.row, spec.note, [], published=spec.published, dataset=dataset,
                                            method=method)
            known = row_spectra(run.config)
            if known is not None:
                row.settings_exist = existing_settings(*known)
                row.pairs_exist = [p.name for p in parse_cross("all", *known)]
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
        results = _read_json(os.path.join(run.output_dir, "results.json"))
        _add(row.stats, results["settings"])
        _add(row.cross, results.get("cross") or {})
        best = best_on_test(run.output_dir)
        if best is not None:
            epoch, metrics = best
            row.best_setting = "nothing" if "nothing" in metrics else next(iter(metrics))
            row.best_epochs.append(epoch)
            for metric in SHOWN_METRICS:
                row.best.setdefault(metric, Stat([])).values.append(100.0 * metrics[row.best_setting][metric])
    ordered = grouped(list(rows.values()))
    present = {s for r in ordered for s in (*r.stats, *r.published)}
    settings = [s for s in MISS_SETTINGS if s in present]
    return Table(sweep.title, sweep.path, root, ordered, settings, pair_order([p for r in ordered for p in r.cross]))


def grouped(rows: Sequence[RowResult]) -> list[RowResult]:
    """The rows grouped by data set, then method, each group where its first row stands (a stable sort)."""
    datasets = list(dict.fromkeys(r.dataset for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    return sorted(rows, key=lambda r: (datasets.index(r.dataset), methods.index(r.method)))


def pair_order(pairs: Sequence[str]) -> list[str]:
    """The cross-spectral pairs in column order, each once: those of `TEST.CROSS all` for three spectra first, in its
    order, then the others in the order given (the rows' own `TEST.CROSS` order)."""
    others = dict.fromkeys(p for p in pairs if p not in CANONICAL_PAIRS)
    return [p for p in CANONICAL_PAIRS if p in pairs] + list(others)


def column_label(protocol: str, column: str) -> str:
    return SETTING_LABELS[column] if protocol != "cross" else column


def cell_stat(row: RowResult, protocol: str, column: str, metric: str) -> Stat | None:
    section = row.cross if protocol == "cross" else row.stats
    return section.get(column, {}).get(metric)


def exists(row: RowResult, protocol: str, column: str) -> bool:
    return row.pair_exists(column) if protocol == "cross" else row.setting_exists(column)


# ----------------------------------------------------------------------------------------------------------------------
# Writers.

def _fmt(stat: Stat | None, published: float | None = None) -> str:
    """``mean ± std`` (no ± below two seeds; empty without a finished seed), then ``(pub P, Δ D)``."""
    text = "" if stat is None or not stat.n else \
        f"{stat.mean:.1f}" + (f" ± {stat.std:.1f}" if stat.std is not None else "")
    if published is not None:
        diff = f", Δ {stat.mean - published:+.1f}" if stat is not None and stat.n else ""
        text += f"{' ' if text else ''}(pub {published:.1f}{diff})"
    return text


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(table: Table) -> str:
    lines = [f"# {table.title}", "",
             f"Sweep `{table.sweep_path}`, {table.runs_finished} of {table.runs_expected} runs finished. Each cell: "
             f"mean ± {STD_NOTE}, over the finished seeds, of the **last epoch**, in percent; `pub` is the published "
             f"figure and `Δ` = mean − published; `{NOT_EXISTING}`: the setting or pair does not exist for the row's "
             "spectra; an empty cell: no finished seed evaluated it. One table per protocol."]
    for protocol, columns in table.protocols():
        header = ["data set", "method", "row", "seeds"] + \
            [(f"{column_label(protocol, c)} " if protocol != "all" else "") + m for c in columns for m in SHOWN_METRICS]
        lines += ["", f"## {PROTOCOL_TITLES[protocol]}", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in table.rows:
            cells = [_escape(row.dataset), _escape(row.method), row.name, f"{len(row.finished)}/{len(row.seeds)}"]
            for column in columns:
                for metric in SHOWN_METRICS:
                    if not exists(row, protocol, column):
                        cells.append(NOT_EXISTING)
                        continue
                    published = row.published.get(column, {}).get(metric) if protocol != "cross" else None
                    cells.append(_fmt(cell_stat(row, protocol, column, metric), published))
            lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- `{r.name}`: {r.note}" for r in table.rows if r.note]
    if notes:
        lines += ["", "Notes:", "", *notes]
    if any(r.best for r in table.rows):
        lines += ["", "## Best epoch on the test set (separate from the tables above)", "",
                  f"The {BEST_NOTE}. Mean ± {STD_NOTE}.", "",
                  "| data set | method | row | seeds | setting | epochs | mAP | Rank-1 |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in table.rows:
            if row.best:
                pub = row.published.get(row.best_setting, {})
                cells = [_escape(row.dataset), _escape(row.method), row.name, str(row.best["mAP"].n),
                         SETTING_LABELS[row.best_setting], ", ".join(map(str, row.best_epochs)),
                         _fmt(row.best["mAP"], pub.get("mAP")), _fmt(row.best["Rank-1"], pub.get("Rank-1"))]
                lines.append("| " + " | ".join(cells) + " |")
    missing = [f"- `{r.name}` seed {seed}: {state}" for r in table.rows for seed, state in r.missing]
    lines += ["", "## Missing runs", ""] + (missing or ["None: every run finished."])
    return "\n".join(lines) + "\n"


def _num(x: float | None) -> str:
    return "" if x is None or x != x else f"{x:.6f}"


def write_csv(table: Table, path: str) -> None:
    """One line per row. Per setting and metric: mean, std (empty below two seeds), n, published, difference; per
    cross-spectral pair and metric (``cross/<pair>/<metric>/...``): mean, std, n. Every field of a setting or pair
    that does not exist for the row is empty (n too; n is 0 where it exists but no seed finished). ``settings`` and
    ``cross_pairs`` list what exists for the row's spectra (empty: not known)."""
    header = ["row", "dataset", "method", "seeds_finished", "seeds_expected"]
    for setting in table.settings:
        for metric in CSV_METRICS:
            header += [f"{setting}/{metric}/{k}" for k in ("mean", "std", "n", "published", "diff")]
    for pair in table.pairs:
        for metric in CSV_METRICS:
            header += [f"cross/{pair}/{metric}/{k}" for k in ("mean", "std", "n")]
    header += ["best_on_test/setting", "best_on_test/epochs", "best_on_test/mAP/mean", "best_on_test/mAP/std",
               "best_on_test/Rank-1/mean", "best_on_test/Rank-1/std", "settings", "cross_pairs"]

    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in table.rows:
            line = [row.name, row.dataset, row.method, len(row.finished), len(row.seeds)]
            for setting in table.settings:
                for metric in CSV_METRICS:
                    if not row.setting_exists(setting):
                        line += [""] * 5
                        continue
                    stat = row.stats.get(setting, {}).get(metric)
                    pub = row.published.get(setting, {}).get(metric)
                    mean = stat.mean if stat and stat.n else None
                    line += [_num(mean), _num(stat.std if stat else None), stat.n if stat else 0, _num(pub),
                             _num(mean - pub if mean is not None and pub is not None else None)]
            for pair in table.pairs:
                for metric in CSV_METRICS:
                    if not row.pair_exists(pair):
                        line += [""] * 3
                        continue
                    stat = row.cross.get(pair, {}).get(metric)
                    line += [_num(stat.mean if stat and stat.n else None), _num(stat.std if stat else None),
                             stat.n if stat else 0]
            best_map, best_r1 = row.best.get("mAP"), row.best.get("Rank-1")
            line += [row.best_setting, " ".join(map(str, row.best_epochs)),
                     _num(best_map.mean if best_map else None), _num(best_map.std if best_map else None),
                     _num(best_r1.mean if best_r1 else None), _num(best_r1.std if best_r1 else None),
                     " ".join(row.settings_exist or []), " ".join(row.pairs_exist or [])]
            writer.writerow(line)
    os.replace(tmp, path)


def _series_labels(rows: Sequence[RowResult]) -> dict[str, str]:
    """Row name -> its label in a chart of one data set: the method where it names one row of that data set, else
    the row's name."""
    methods = [r.method for r in rows]
    return {r.name: r.method if r.method and methods.count(r.method) == 1 else r.name for r in rows}


def plot(table: Table, path: str) -> None:
    """Bars of mAP and Rank-1: per data set a row of panels per metric, one panel per protocol (its settings or pairs
    on the x axis), one bar per row of the table, error bars = std over seeds (none below two seeds), published as
    black ticks; a setting or pair that does not exist for a row is marked with a dash at the foot of its place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    groups: dict[str, list[RowResult]] = {}
    for row in table.rows:
        groups.setdefault(row.dataset, []).append(row)
    layout = []  # (data set, its rows, [(protocol, columns)])
    for dataset, rows in groups.items():
        present = {s for r in rows for s in (*r.stats, *r.published)}
        pairs = {p for r in rows for p in r.cross}
        protocols = [(p, [c for c in cols if (c in pairs if p == "cross" else c in present)])
                     for p, cols in table.protocols()]
        layout.append((dataset, rows, [(p, cols) for p, cols in protocols if cols] or [("all", ["nothing"])]))
    colours = {}
    cycle = plt.get_cmap("tab10" if len({lab for _, rows, _ in layout for lab in _series_labels(rows).values()})
                         <= 10 else "tab20").colors
    widest = max((sum(max(len(cols), 1) * max(len(rows), 1) for _, cols in protocols)
                  for _, rows, protocols in layout), default=1)
    width = max(CHART_SIZE[0] / DPI, min(40.0, 2.0 + 0.16 * widest))
    height = CHART_SIZE[1] / DPI * max(1, len(layout))
    fig = plt.figure(figsize=(width, height), dpi=DPI)
    try:
        outer = fig.add_gridspec(max(1, len(layout)) * len(SHOWN_METRICS), 1)
        for g, (dataset, rows, protocols) in enumerate(layout):
            labels = _series_labels(rows)
            width_bar = 0.8 / max(1, len(rows))
            for m, metric in enumerate(SHOWN_METRICS):
                inner = outer[g * len(SHOWN_METRICS) + m].subgridspec(
                    1, len(protocols), width_ratios=[max(1.5, len(cols)) for _, cols in protocols], wspace=0.08)
                for p, (protocol, columns) in enumerate(protocols):
                    ax = fig.add_subplot(inner[0, p])
                    x = np.arange(len(columns))
                    for k, row in enumerate(rows):
                        stats = [cell_stat(row, protocol, c, metric) for c in columns]
                        means = np.array([st.mean if st and st.n else np.nan for st in stats])
                        offset = x + (k - (len(rows) - 1) / 2) * width_bar
                        label = labels[row.name]
                        colour = colours.setdefault(label, cycle[len(colours) % len(cycle)])
                        ax.bar(offset, means, width_bar, label=f"{label} (n={len(row.finished)})", color=colour)
                        spread = [i for i, st in enumerate(stats) if st and st.std is not None]  # one seed: no bar
                        if spread:
                            ax.errorbar(offset[spread], means[spread], yerr=[stats[i].std for i in spread],
                                        fmt="none", ecolor="black", capsize=2)
                        for i, column in enumerate(columns):
                            if not exists(row, protocol, column):
                                ax.text(offset[i], 1, NOT_EXISTING, ha="center", va="bottom", fontsize=7,
                                        color=colour)
                        if protocol != "cross":
                            pubs = [row.published.get(c, {}).get(metric, np.nan) for c in columns]
                            if not np.all(np.isnan(pubs)):
                                ax.scatter(offset, pubs, marker="_", s=200, color="black", zorder=3,
                                           label="published")
                    ax.set_xticks(x, [column_label(protocol, c) for c in columns],
                                  fontsize=8 if protocol == "cross" else None)
                    ax.set_ylim(0, 105)
                    ax.grid(axis="y", alpha=0.3)
                    if p == 0:
                        ax.set_ylabel(f"{metric} (%)")
                    else:
                        ax.tick_params(labelleft=False)
                    if m == 0:
                        ax.set_title(f"{dataset + ': ' if dataset else ''}{PANEL_TITLES[protocol]}", fontsize=9)
                    if m == 0 and p == 0:
                        handles = dict(zip(*reversed(ax.get_legend_handles_labels())))  # label -> one handle
                    if m == 0 and p == len(protocols) - 1:  # the data set's legend, right of its first panel row
                        if any(r.published for r in rows):
                            handles.setdefault("published", Line2D([], [], color="black", marker="_", ls="",
                                                                   markersize=14))
                        ax.legend(list(handles.values()), list(handles), fontsize=7, loc="upper left",
                                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        fig.suptitle(f"{table.title}\nlast epoch: mean ± std over seeds", fontsize=10)
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
