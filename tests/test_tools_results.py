"""plot_results: bar chart of results.json files and training curves from the TensorBoard log of the demo run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import assert_not_blank, assert_one_error_line, read_png, run_cli
from tools import plot_results
from utils.spectra import MISS_SETTINGS


def _bar_colour_pixels(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((np.abs(image.astype(int) - np.array(colour)).sum(axis=2) <= 3).sum())


@pytest.mark.slow
def test_bars_of_two_runs_and_curves(trained_run, tmp_path):
    run_dir = trained_run[0]
    other = tmp_path / "other" / "results.json"
    other.parent.mkdir()
    values = {s: {"mAP": 0.1 + 0.1 * i, "Rank-1": 0.9 - 0.1 * i} for i, s in enumerate(MISS_SETTINGS)}
    other.write_text(json.dumps({"settings": values}))
    assert plot_results.main(["--results", str(run_dir / "results.json"), str(other), "--labels", "demo", "made up",
                              "--tb", str(run_dir), "--out", str(tmp_path / "plots")]) == 0
    bars = read_png(tmp_path / "plots" / "results_bars.png")
    curves = read_png(tmp_path / "plots" / "training_curves.png")
    assert bars.shape == (500, 1200, 3) and curves.shape == (800, 1200, 3)
    assert_not_blank(bars)
    assert_not_blank(curves)
    # both runs are drawn: matplotlib's first two default colours fill bars
    assert _bar_colour_pixels(bars, (31, 119, 180)) > 200 and _bar_colour_pixels(bars, (255, 127, 14)) > 200


@pytest.mark.slow
def test_curves_read_the_trainers_scalars(trained_run):
    scalars = plot_results.read_scalars(str(trained_run[0]))
    assert {"train/loss", "lr", "eval/nothing/mAP", "eval/nothing/Rank-1"} <= set(scalars)
    steps, values = scalars["eval/nothing/mAP"]
    assert list(steps) == [1, 2]  # EVAL_PERIOD 1, two epochs
    assert values[-1] == pytest.approx(trained_run[2]["nothing"]["mAP"], abs=1e-6)


@pytest.mark.slow
def test_results_without_settings_is_one_error_line(tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"epoch": 3, "checkpoint": "x.pth"}))
    assert_one_error_line(run_cli("plot_results", ["--results", str(bad), "--out", str(tmp_path)]), str(bad),
                          "settings")
    assert not list(tmp_path.glob("*.png"))


def test_other_bad_inputs(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(plot_results.ToolError, match="not a JSON file"):
        plot_results.read_results(str(bad))
    bad.write_text(json.dumps({"settings": {"nothing": {"mAP": 0.5}}}))
    with pytest.raises(plot_results.ToolError, match="Rank-1"):
        plot_results.read_results(str(bad))
    with pytest.raises(plot_results.ToolError, match="no TensorBoard event files"):
        plot_results.read_scalars(str(tmp_path))
    bad.write_text(json.dumps({"settings": {"nothing": {"mAP": 0.5, "Rank-1": 0.6}}}))
    assert plot_results.main(["--results", str(bad), "--labels", "a", "b", "--out", str(tmp_path)]) == 1
    assert plot_results.main(["--out", str(tmp_path)]) == 1
    assert not list(tmp_path.glob("*.png"))
