"""Plots of results: mAP and Rank-1 over the missing-spectrum settings for one or more runs side by side, and the
training curves of a run from its TensorBoard log, and the cross-spectral mAP matrix of a results file that has one.

    python tools/plot_results.py --results logs/a/results.json logs/b/results.json [--labels A B] \\
        [--tb logs/a] [--out DIR]

``--results`` files are the ``results.json`` of ``test_net.py`` or ``train_net.py`` (``{"settings": {setting:
{"mAP", "Rank-1", ...}}, ...}``); the bar chart (``results_bars.png``, 1200x500 pixels) shows the seven settings in
the paper's order, those a file lacks left empty. A file with a ``"cross"`` section (``TEST.CROSS``) also gets a heat
map of its mAP, query spectra in rows and gallery spectra in columns (``cross_<label>.png``; the diagonal holds the
single-spectrum setting when the file has it). ``--tb`` is a run's OUTPUT_DIR (or its ``tb/`` folder); its curves
(``training_curves.png``, 1200x800 pixels) show the training loss and its terms per iteration, the learning rate
and the evaluation's mAP and Rank-1 per setting per epoch. Pictures go to ``--out`` (default ``OUTPUT_DIR`` of the
config, set with ``--config_file`` or ``OUTPUT_DIR dir``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import evaluation  # noqa: E402
from tools.common import ToolError, parse_tool_args, run_tool, tool_config, tool_parser  # noqa: E402
from utils.spectra import MISS_SETTINGS, parse_cross  # noqa: E402

logger = logging.getLogger("tools.plot_results")

SETTING_LABELS = {"nothing": "all", "r": "-RGB", "n": "-NI", "t": "-TI", "rn": "-RGB-NI", "rt": "-RGB-TI",
                  "nt": "-NI-TI"}
METRICS = ("mAP", "Rank-1")
DPI = 100
BARS_SIZE = (1200, 500)
CURVES_SIZE = (1200, 800)
CROSS_SIZE = (600, 500)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("Bar chart of results over the missing-spectrum settings; training curves of a run")
    parser.add_argument("--results", nargs="+", default=[], help="results.json files (one bar group entry each)")
    parser.add_argument("--labels", nargs="+", default=None, help="a name per results file (default: its folder)")
    parser.add_argument("--tb", default="", help="run folder (OUTPUT_DIR) or its tb/ folder: plot training curves")
    parser.add_argument("--out", default="", help="folder of the pictures (default OUTPUT_DIR of the config)")
    return parse_tool_args(parser, argv)


def read_results(path: str) -> dict[str, dict[str, float]]:
    """``settings`` of a results.json; a file without them is an error naming the file."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise ToolError(f"results file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ToolError(f"{path}: not a JSON file ({err})") from None
    settings = obj.get("settings") if isinstance(obj, dict) else None
    if not isinstance(settings, dict) or not settings:
        raise ToolError(f"{path}: no \"settings\" entry; expected a results.json written by test_net.py or "
                        "train_net.py ({\"settings\": {setting: {\"mAP\": ..., \"Rank-1\": ...}}})")
    for setting, metrics in settings.items():
        if setting not in MISS_SETTINGS:
            raise ToolError(f"{path}: unknown setting {setting!r} under \"settings\" (known: "
                            f"{', '.join(MISS_SETTINGS)})")
        if not isinstance(metrics, dict) or not all(isinstance(metrics.get(m), (int, float)) for m in METRICS):
            raise ToolError(f"{path}: setting {setting!r} lacks numeric {' and '.join(METRICS)}")
    return settings


def read_cross(path: str) -> dict[str, dict[str, float]]:
    """The ``"cross"`` section of a results.json ({} when it has none); pairs or metrics that do not parse are an
    error naming the file."""
    with open(path) as f:
        obj = json.load(f)
    cross = obj.get("cross") or {}
    if not isinstance(cross, dict):
        raise ToolError(f"{path}: \"cross\" is not a mapping of pairs such as \"RGB->TI\"")
    for name, metrics in cross.items():
        try:
            parse_cross(name)
        except ValueError as err:
            raise ToolError(f"{path}: \"cross\" entry {name!r}: {err}") from None
        if not isinstance(metrics, dict) or not isinstance(metrics.get("mAP"), (int, float)):
            raise ToolError(f"{path}: \"cross\" entry {name!r} lacks a numeric mAP")
    return cross


def cross_matrix(cross: Mapping[str, Mapping[str, float]], settings: Mapping[str, Mapping[str, float]]
                 ) -> tuple[list[str], list[str], np.ndarray]:
    """(query sides, gallery sides, mAP in percent [rows, cols], NaN where not evaluated) of a results file's
    ``"cross"`` section: :func:`evaluation.cross_matrix` of its pairs."""
    rows, cols, values = evaluation.cross_matrix(cross, [p for name in cross for p in parse_cross(name)], settings)
    return rows, cols, 100 * values


def plot_cross(cross: Mapping[str, Mapping[str, float]], settings: Mapping[str, Mapping[str, float]], title: str,
               path: str) -> None:
    """Heat map of the cross-spectral mAP: query spectra in rows, gallery spectra in columns, values written in."""
    plt = _pyplot()
    rows, cols, values = cross_matrix(cross, settings)
    fig, ax = plt.subplots(figsize=(CROSS_SIZE[0] / DPI, CROSS_SIZE[1] / DPI), dpi=DPI)
    try:
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100)
        for i in range(len(rows)):
            for j in range(len(cols)):
                v = values[i, j]
                ax.text(j, i, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=10,
                        color="white" if np.isnan(v) or v < 60 else "black")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("gallery spectra")
        ax.set_ylabel("query spectra")
        ax.set_title(title, fontsize=10)
        fig.colorbar(image, ax=ax, label="mAP (%)")
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    logger.info("wrote %s", path)


def default_labels(paths: Sequence[str]) -> list[str]:
    """Each file's folder name, or its path where folder names repeat."""
    names = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(runs: Mapping[str, Mapping[str, Mapping[str, float]]], path: str) -> None:
    """mAP and Rank-1 (percent) per setting, one bar per run in each setting's group."""
    plt = _pyplot()
    settings = [s for s in MISS_SETTINGS if any(s in r for r in runs.values())]
    x = np.arange(len(settings))
    width = 0.8 / len(runs)
    fig, axes = plt.subplots(1, 2, figsize=(BARS_SIZE[0] / DPI, BARS_SIZE[1] / DPI), dpi=DPI)
    try:
        for ax, metric in zip(axes, METRICS):
            for k, (label, results) in enumerate(runs.items()):
                values = [100 * results[s][metric] if s in results else np.nan for s in settings]
                bars = ax.bar(x + (k - (len(runs) - 1) / 2) * width, values, width, label=label)
                if len(runs) <= 3:
                    ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
            ax.set_xticks(x, [SETTING_LABELS[s] for s in settings])
            ax.set_ylabel(f"{metric} (%)")
            ax.set_ylim(0, 105)
            ax.set_title(metric)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    logger.info("wrote %s", path)


def event_folder(run_dir: str) -> str:
    """The folder holding the event files: ``run_dir/tb`` or ``run_dir`` itself."""
    for folder in (os.path.join(run_dir, "tb"), run_dir):
        if os.path.isdir(folder) and any(name.startswith("events.out.tfevents") for name in os.listdir(folder)):
            return folder
    if not os.path.isdir(run_dir):
        raise ToolError(f"--tb {run_dir}: no such folder")
    raise ToolError(f"--tb {run_dir}: no TensorBoard event files in it or in {os.path.join(run_dir, 'tb')}")


def read_scalars(run_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar of a run's TensorBoard log: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = event_folder(run_dir)
    accumulator = EventAccumulator(folder, size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    tags = accumulator.Tags().get("scalars", [])
    if not tags:
        raise ToolError(f"--tb {run_dir}: the event files in {folder} hold no scalars")
    scalars = {}
    for tag in tags:
        events = accumulator.Scalars(tag)
        scalars[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return scalars


def plot_curves(scalars: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str, path: str) -> None:
    """Training loss and terms per iteration, learning rate per epoch, evaluation mAP and Rank-1 per epoch."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(CURVES_SIZE[0] / DPI, CURVES_SIZE[1] / DPI), dpi=DPI)
    panels = [
        (axes[0, 0], "training loss", "iteration",
         [t for t in scalars if t.startswith("train/") and t != "train/samples_per_s"]),
        (axes[0, 1], "learning rate", "epoch", [t for t in scalars if t == "lr"]),
        (axes[1, 0], "evaluation mAP (%)", "epoch", [t for t in scalars if t.startswith("eval/") and
                                                     t.endswith("/mAP")]),
        (axes[1, 1], "evaluation Rank-1 (%)", "epoch", [t for t in scalars if t.startswith("eval/") and
                                                        t.endswith("/Rank-1")]),
    ]
    try:
        for ax, name, xlabel, tags in panels:
            for tag in tags:
                steps, values = scalars[tag]
                if tag.startswith("eval/"):
                    setting = tag.split("/")[1]
                    ax.plot(steps, 100 * values, marker="o", markersize=3, label=SETTING_LABELS.get(setting, setting))
                else:
                    ax.plot(steps, values, label=tag.removeprefix("train/"), linewidth=1.5 if tag.endswith("loss")
                            else 1.0)
            ax.set_title(name if tags else f"{name}: not in the log")
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
            if len(tags) > 1 or (tags and tags[0].startswith("eval/")):
                ax.legend(fontsize=7)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    logger.info("wrote %s", path)


def run(args: argparse.Namespace) -> list[str]:
    if not args.results and not args.tb:
        raise ToolError("nothing to plot: give --results FILE [FILE ...] and/or --tb RUN_DIR")
    labels = args.labels or default_labels(args.results)
    if len(labels) != len(args.results):
        raise ToolError(f"{len(labels)} --labels for {len(args.results)} --results files")
    if len(set(labels)) != len(labels):
        raise ToolError(f"--labels must differ from each other: {labels}")
    runs = {label: read_results(path) for label, path in zip(labels, args.results)}
    scalars = read_scalars(args.tb) if args.tb else None
    out = args.out or tool_config(args).OUTPUT_DIR
    os.makedirs(out, exist_ok=True)
    written = []
    if runs:
        written.append(os.path.join(out, "results_bars.png"))
        plot_bars(runs, written[-1])
    for (label, settings), path in zip(runs.items(), args.results):
        cross = read_cross(path)
        if cross:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
            written.append(os.path.join(out, f"cross_{safe}.png"))
            plot_cross(cross, settings, f"cross-spectral mAP (%), {label}", written[-1])
    if scalars is not None:
        written.append(os.path.join(out, "training_curves.png"))
        plot_curves(scalars, f"training of {os.path.normpath(args.tb)}", written[-1])
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
