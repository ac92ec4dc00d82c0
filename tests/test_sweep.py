"""Sweeps: validation of sweep files (the shipped ones against SPEC.md), run states read from folders, the launcher
through submitit's LocalExecutor (interrupted and re-run, a failing row), and the aggregated table.

The trainings share one session sweep of tiny baseline runs (2 rows x 2 seeds x 1 epoch on the demo data, plus a
row that fails), interrupted once after its first run and then re-run.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from configs import load_config
from experiments import LaunchOptions, Sweep, SweepError, collect, launch, load_sweep, plan_runs, run_state
from experiments import sweep as sweep_module
from experiments.collect import RowResult, Stat, Table, markdown, plot
from experiments.sweep import PID_FILE, Run, TrainRun, dry_run, make_executor
from tests.helpers import tiny_opts
from utils.spectra import MISS_SETTINGS

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO.parent / "shared" / "SPEC.md"
PAPER = REPO / "configs" / "paper"
SWEEP_TIMEOUT_S = 900


# ----------------------------------------------------------------------------------------------------------------------
# Helpers.

def write_base_config(path: Path, demo_root: str, **overrides: str) -> Path:
    """A tiny CPU config as a YAML file (tiny_opts without OUTPUT_DIR)."""
    pairs = tiny_opts(demo_root, "unused", **overrides)
    tree: dict = {}
    for key, value in zip(pairs[0::2], pairs[1::2]):
        if key == "OUTPUT_DIR":
            continue
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(tree))
    return path


def write_sweep(path: Path, base: Path, rows: dict, seeds=(0, 1), **top) -> Path:
    path.write_text(yaml.safe_dump({"base": str(base), "seeds": list(seeds), **top, "rows": rows}, sort_keys=False))
    return path


def sweep_command(sweep_file: Path, root: Path, *extra: str) -> list[str]:
    return [sys.executable, "tools/sweep.py", str(sweep_file), "--output", str(root), *extra]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of every file of a run folder (TensorBoard events included)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def results_epoch(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / "results.json").read_text()).get("epoch")
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------------------------------------------------
# The shared session sweep: interrupted after its first run, then run again to the end.

GOOD_ROWS = ("concat", "per_spectrum")


@pytest.fixture(scope="session")
def session_sweep(demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    base = write_base_config(folder / "tiny.yml", demo_root)
    rows = {
        "concat": {"overrides": ["MODEL.BASE True", "MODEL.RE False", "MODEL.DIRECT True"]},
        "per_spectrum": {"overrides": ["MODEL.BASE True", "MODEL.RE False", "MODEL.DIRECT False"]},
        # fails at run time only: the data set root does not exist (train_net.py exits 1)
        "broken": {"overrides": ["MODEL.BASE True", "MODEL.RE False", "DATASETS.NAMES RGBNT201",
                                 f"DATASETS.ROOT_DIR {folder / 'no_such_data'}"]},
    }
    sweep_file = write_sweep(folder / "tiny_sweep.yml", base, rows)
    root = folder / "root"
    command = sweep_command(sweep_file, root)
    first, second = root / "concat" / "seed0", root / "concat" / "seed1"

    # 1. Start the sweep; stop it (SIGTERM) once its first run is done and the second is training.
    with open(folder / "first.log", "w") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: results_epoch(first) == 1, SWEEP_TIMEOUT_S, "the first run to finish", proc)
            wait_for(lambda: (second / "train_log.txt").is_file() and " iter " in
                     (second / "train_log.txt").read_text(), SWEEP_TIMEOUT_S, "the second run to train", proc)
            proc.send_signal(signal.SIGTERM)
            first_code = proc.wait(timeout=SWEEP_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
    interrupted = {"code": first_code, "first": snapshot(first), "second_has_last": (second / "last.pth").is_file(),
                   "second_epoch": results_epoch(second), "log": (folder / "first.log").read_text()}

    # 2. The same command again.
    second_run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    return {"folder": folder, "root": root, "sweep_file": sweep_file, "interrupted": interrupted,
            "rerun": second_run, "first_dir": first, "second_dir": second}


@pytest.mark.slow
def test_interrupted_sweep_completes_without_retraining(session_sweep):
    interrupted, rerun = session_sweep["interrupted"], session_sweep["rerun"]
    assert interrupted["code"] == 130, interrupted["log"]
    # the interrupted run wrote last.pth and no final results: partial
    assert interrupted["second_has_last"] and interrupted["second_epoch"] is None, interrupted["log"]
    # the finished run is untouched by the second invocation (every file: same mtime, same bytes)
    assert snapshot(session_sweep["first_dir"]) == interrupted["first"]
    # the interrupted run was resumed, not restarted
    state = json.loads((session_sweep["root"] / "sweep_state.json").read_text())
    record = state["runs"]["concat/seed1"]
    assert record["state"] == "done" and record["resumed"] is True
    assert "--resume" in record["command"]
    assert "resumed from" in (session_sweep["second_dir"] / "train_log.txt").read_text()
    assert state["runs"]["concat/seed0"]["attempts"] == 1  # started once, in the first invocation
    for row in GOOD_ROWS:
        for seed in (0, 1):
            assert results_epoch(session_sweep["root"] / row / f"seed{seed}") == 1, rerun.stdout + rerun.stderr


@pytest.mark.slow
def test_failing_row_reported_while_the_others_finish(session_sweep):
    rerun = session_sweep["rerun"]
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    state = json.loads((session_sweep["root"] / "sweep_state.json").read_text())
    for seed in (0, 1):
        record = state["runs"][f"broken/seed{seed}"]
        assert record["state"] == "failed" and record["attempts"] == 2 and record["returncode"] == 1
        assert state["runs"][f"per_spectrum/seed{seed}"]["state"] == "done"
    assert re.search(r"broken seed 0: failed", rerun.stdout)
    table = (session_sweep["root"] / "table.md").read_text()
    assert "| broken | 0/2 |" in table
    assert "`broken` seed 1: failed after 2 attempts: exit code 1: data set root" in table


@pytest.mark.slow
def test_table_is_mean_and_sample_std_of_the_last_epoch(session_sweep):
    root = session_sweep["root"]
    with open(root / "table.csv") as f:
        lines = {line["row"]: line for line in csv.DictReader(f)}
    for row in GOOD_ROWS:
        results = [json.loads((root / row / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
        assert lines[row]["seeds_finished"] == "2"
        for metric in ("mAP", "Rank-1", "Rank-5", "mINP"):
            values = 100 * np.array([r["settings"]["nothing"][metric] for r in results])
            assert float(lines[row][f"nothing/{metric}/mean"]) == pytest.approx(values.mean(), abs=1e-6)
            assert float(lines[row][f"nothing/{metric}/std"]) == pytest.approx(values.std(ddof=1), abs=1e-6)
        values = 100 * np.array([r["settings"]["nothing"]["mAP"] for r in results])
        assert f"{values.mean():.1f} ± {values.std(ddof=1):.1f}" in (root / "table.md").read_text()
    assert lines["broken"]["seeds_finished"] == "0" and lines["broken"]["nothing/mAP/mean"] == ""
    assert "ddof=1" in (root / "table.md").read_text()
    assert (root / "table.png").stat().st_size > 10_000
    # --collect alone rewrites the same table from the folders
    before = (root / "table.csv").read_bytes()
    (root / "table.csv").unlink()
    out = subprocess.run(sweep_command(session_sweep["sweep_file"], root, "--collect"), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (root / "table.csv").read_bytes() == before


def test_one_seed_has_no_error_bar_and_no_plus_minus(tmp_path, monkeypatch):
    import matplotlib.figure
    from matplotlib.container import BarContainer, ErrorbarContainer

    rows = [RowResult("one", "", [0, 1], finished=[0],
                      stats={"nothing": {"mAP": Stat([50.0]), "Rank-1": Stat([60.0])}}),
            RowResult("two", "", [0, 1], finished=[0, 1],
                      stats={"nothing": {"mAP": Stat([50.0, 54.0]), "Rank-1": Stat([60.0, 62.0])}})]
    table = Table("t", "s.yml", str(tmp_path), rows, ["nothing"])
    text = markdown(table)
    assert "| one | 1/2 | 50.0 | 60.0 |" in text and "| two | 2/2 | 52.0 ± 2.8 | 61.0 ± 1.4 |" in text

    figures = []  # the chart's figure, kept when it is saved
    savefig = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    plot(table, str(tmp_path / "table.png"))
    assert (tmp_path / "table.png").stat().st_size > 0
    for ax, two_seeds in zip(figures[0].axes, ([50.0, 54.0], [60.0, 62.0])):  # mAP, Rank-1
        centres = {c.get_label(): c.patches[0].get_x() + c.patches[0].get_width() / 2
                   for c in ax.containers if isinstance(c, BarContainer)}
        assert set(centres) == {"one (n=1)", "two (n=2)"}
        bars = [segment for c in ax.containers if isinstance(c, ErrorbarContainer)
                for lines in c.lines[2] for segment in lines.get_segments()]
        assert len(bars) == 1, "an error bar is drawn for the one-seed row"
        (x0, y0), (x1, y1) = bars[0]
        assert x0 == x1 == pytest.approx(centres["two (n=2)"])
        assert (y0 + y1) / 2 == pytest.approx(np.mean(two_seeds))
        assert y1 - y0 == pytest.approx(2 * np.std(two_seeds, ddof=1))


# ----------------------------------------------------------------------------------------------------------------------
# Validation (no training).

def test_invalid_override_refused_before_anything_runs(demo_root, tmp_path):
    base = write_base_config(tmp_path / "tiny.yml", demo_root)
    sweep_file = write_sweep(tmp_path / "bad.yml", base, {"good": {"overrides": []},
                                                          "typo": {"overrides": ["MODEL.DIRECT maybe"]}})
    with pytest.raises(SweepError, match=r"bad\.yml: row 'typo': .*MODEL\.DIRECT"):
        plan_runs(load_sweep(str(sweep_file)), str(tmp_path / "root"))
    out = subprocess.run(sweep_command(sweep_file, tmp_path / "root"), cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 1
    assert re.search(r"error: .*bad\.yml: row 'typo': .*MODEL\.DIRECT", out.stderr), out.stderr
    assert not (tmp_path / "root").exists()  # nothing started, nothing written

    unknown_key = write_sweep(tmp_path / "unknown_key.yml", base, {"a": {"overrides": ["MODEL.NOPE 1"]}})
    with pytest.raises(SweepError, match=r"unknown_key\.yml: row 'a': .*unknown config key MODEL\.NOPE"):
        plan_runs(load_sweep(str(unknown_key)), str(tmp_path / "root"))
    top = write_sweep(tmp_path / "top.yml", base, {"a": {}}, epochs=3)
    with pytest.raises(SweepError, match=r"top\.yml: unknown top-level key\(s\) \['epochs'\]"):
        load_sweep(str(top))
    reserved = write_sweep(tmp_path / "reserved.yml", base, {"a": {"overrides": ["OUTPUT_DIR /tmp/x"]}})
    with pytest.raises(SweepError, match=r"reserved\.yml: row 'a': key OUTPUT_DIR"):
        load_sweep(str(reserved))
    with pytest.raises(SweepError, match="command line: key SOLVER.SEED"):
        plan_runs(load_sweep(str(sweep_file)), str(tmp_path / "root"), rows=["good"], trailing=["SOLVER.SEED", "3"])


def _fabricate(run: Run, files: dict[str, object]) -> None:
    """A run folder: config.yaml (the run's own config unless given), results.json, last.pth."""
    folder = Path(run.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name == "config.yaml":
            content = content or load_config(run.base, list(run.opts)).dump()
        elif name == "results.json":
            content = json.dumps({"settings": {"nothing": {"mAP": 0.5, "Rank-1": 0.6}}, "epoch": content,
                                  "config": load_config(run.base, list(run.opts)).dump()})
        (folder / name).write_text(str(content))


def test_dry_run_lists_states_of_a_half_finished_root(demo_root, tmp_path):
    base = write_base_config(tmp_path / "tiny.yml", demo_root, **{"SOLVER.MAX_EPOCHS": "3"})
    sweep_file = write_sweep(tmp_path / "s.yml", base, {"a": {}, "b": {"overrides": ["MODEL.DIRECT False"]}})
    root = tmp_path / "root"
    runs = {r.key: r for r in plan_runs(load_sweep(str(sweep_file)), str(root))}
    _fabricate(runs["a/seed0"], {"config.yaml": "", "results.json": 3, "last.pth": "x"})  # done
    _fabricate(runs["a/seed1"], {"config.yaml": "", "results.json": 2, "last.pth": "x"})  # partial
    _fabricate(runs["b/seed0"], {"config.yaml": ""})  # a start that failed before its first checkpoint
    (root / "sweep_state.json").write_text(json.dumps({"runs": {"b/seed0": {"state": "failed", "attempts": 2,
                                                                            "returncode": 1}}}))
    listing = {f"{e['row']}/seed{e['seed']}": e for e in dry_run(list(runs.values()), str(root))}
    assert listing["a/seed0"]["state"] == "done (epoch 3)"
    assert listing["a/seed1"]["state"].startswith("partial") and "--resume" in listing["a/seed1"]["command"]
    assert listing["b/seed0"]["state"].startswith("failed (2 attempts, exit 1")
    assert listing["b/seed0"]["command"][-2:] == ["OVERWRITE", "True"]
    assert listing["b/seed1"]["state"] == "to do" and "--resume" not in listing["b/seed1"]["command"]
    command = listing["b/seed1"]["command"]
    assert command[1:] == ["train_net.py", "--config_file", str(base), "OUTPUT_DIR", str(root / "b" / "seed1"),
                           "SOLVER.SEED", "1", "MODEL.DIRECT", "False"]
    assert [run_state(runs[k]).state for k in ("a/seed0", "a/seed1", "b/seed0", "b/seed1")] == \
        ["done", "partial", "to do", "to do"]
    # the command line prints the same, starts nothing
    out = subprocess.run(sweep_command(sweep_file, root, "--dry-run"), cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "a  seed 0  done (epoch 3)" in out.stdout and "b  seed 1  to do" in out.stdout
    assert not (root / "b" / "seed1").exists() and not (root / "table.md").exists()
    # a folder holding another config is an error, not overwritten
    _fabricate(runs["b/seed1"], {"config.yaml": load_config(str(base), ["MODEL.DIRECT", "True"]).dump()})
    with pytest.raises(SweepError, match=r"b/seed1: .* another config \(MODEL\.DIRECT: folder True, row False"):
        run_state(runs["b/seed1"])
    # a partial sweep aggregates what is there and lists the rest
    table = collect(load_sweep(str(sweep_file)), list(runs.values()), str(root))
    assert [len(r.finished) for r in table.rows] == [1, 0]
    assert table.rows[0].stats["nothing"]["mAP"].std is None
    assert any("another config" in state for _, state in table.rows[1].missing)


def test_run_is_requeued_after_preemption_and_pickles_without_its_process(tmp_path):
    run = Run("a", 0, str(tmp_path / "a" / "seed0"), "base.yml", ("OUTPUT_DIR", "x"), 1, {}, 0)
    job = TrainRun(run)
    job._proc = subprocess.Popen(["sleep", "60"])
    delayed = job.checkpoint()  # what submitit calls on pre-emption / time-out
    assert job._proc.wait(timeout=0.5) == -signal.SIGTERM  # asked to stop (it writes last.pth), and waited for
    assert isinstance(delayed.function, TrainRun) and delayed.function.run == run
    assert pickle.loads(pickle.dumps(delayed.function))._proc is None
    assert not (tmp_path / "a" / "seed0" / PID_FILE).exists()


def test_checkpoint_waits_for_the_run_while_the_job_holds_its_own_wait(tmp_path):
    """submitit calls checkpoint() in a signal handler, while the job's main thread is inside its wait for the
    training process: the stop must not wait on that (Python's Popen lock) but on the process itself."""
    import threading

    run = Run("a", 0, str(tmp_path / "a" / "seed0"), "base.yml", ("OUTPUT_DIR", "x"), 1, {}, 0)
    job = TrainRun(run)
    job._proc = subprocess.Popen(["sleep", "60"])
    assert job._proc._waitpid_lock.acquire()  # as the main thread's wait() holds it when the signal arrives
    done = []
    stopper = threading.Thread(target=lambda: done.append(job.checkpoint()), daemon=True)
    start = time.monotonic()
    stopper.start()
    stopper.join(timeout=10)
    job._proc._waitpid_lock.release()
    assert done and time.monotonic() - start < 10, "checkpoint() waited on the lock instead of the process"
    assert job._proc.wait(timeout=0.5) == -signal.SIGTERM


def test_a_job_that_received_sigterm_is_not_requeued_by_itself(tmp_path):
    """scancel (or someone's scontrol requeue) sends SIGTERM first: a time-limit warning handled afterwards must not
    requeue the job again (that revived cancelled jobs)."""
    run = Run("a", 0, str(tmp_path / "a" / "seed0"), "base.yml", ("OUTPUT_DIR", "x"), 1, {}, 0)
    job = TrainRun(run)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        job._watch_sigterm()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    job._proc = subprocess.Popen(["sleep", "60"])
    assert job.checkpoint() is None
    assert job._proc.wait(timeout=0.5) == -signal.SIGTERM


def test_slurm_executor_and_multi_gpu_command(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"  # submitit refuses to build a Slurm executor where no srun is on PATH
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sweep_module.slurm, "partitions", lambda: ["cpu", "gpu"])
    options = LaunchOptions("slurm", partition="gpu", time_min=240, gpus_per_run=4, cpus_per_run=32, mem_gb=128)
    executor = make_executor(options, str(tmp_path), "sweep-x")
    params = executor._executor.parameters
    assert (params["partition"], params["time"], params["gpus_per_node"], params["cpus_per_task"]) == \
        ("gpu", 240, 4, 32)
    sbatch = executor._executor._make_submission_file_text("python -m x", "uid")
    assert "#SBATCH --partition=gpu" in sbatch and "#SBATCH --time=240" in sbatch
    assert "#SBATCH --gpus-per-node=4" in sbatch and "#SBATCH --signal=USR2@" in sbatch
    assert "export PYTHONPATH=" in sbatch
    run = Run("a", 0, "out", "cfg.yml", ("OUTPUT_DIR", "out"), 1, {}, gpus=4)
    assert run.command(resume=True, python="py")[:8] == ["py", "-m", "torch.distributed.run", "--standalone",
                                                         "--nproc_per_node", "4", "train_net.py", "--config_file"]
    assert run.command(resume=True, python="py")[9] == "--resume"


# ----------------------------------------------------------------------------------------------------------------------
# Local GPU slots: CUDA_VISIBLE_DEVICES by index, GPU UUID or MIG name.

UUID_A = "GPU-5c9a7e3e-1b2c-4d5e-8f90-0123456789ab"
UUID_B = "GPU-0d1e2f3a-4b5c-6d7e-8f90-abcdef012345"
MIG_NEW = "MIG-4f2a9c1e-7b6d-5e4f-a3b2-c1d0e9f8a7b6"
MIG_OLD = f"MIG-{UUID_A}/1/0"


@pytest.mark.parametrize("env, gpus", [
    (f"{UUID_A},{UUID_B}", [UUID_A, UUID_B]),
    (f"{MIG_NEW},{MIG_OLD}", [MIG_NEW, MIG_OLD]),
    ("0, 2", ["0", "2"]),
    ("1,-1,2", ["1"]),  # CUDA stops at the first entry that names no device
    ("", []),
    ("-1", []),
])
def test_visible_gpus_keep_uuids_and_mig_names(monkeypatch, env, gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert sweep_module.visible_gpus() == gpus
    options = LaunchOptions("local")
    assert sweep_module.default_gpus_per_run(options) == (1 if gpus else 0)
    assert sweep_module._slots(options, sweep_module.default_gpus_per_run(options)) == ([(g,) for g in gpus] or [()])
    if len(gpus) == 2:
        assert sweep_module._slots(LaunchOptions("local", gpus_per_run=2), 2) == [tuple(gpus)]
    else:
        with pytest.raises(SweepError, match=f"--gpus-per-run 2: only {len(gpus)} GPU"):
            sweep_module._slots(LaunchOptions("local", gpus_per_run=2), 2)


class _EnvProbe:
    """Stands for TrainRun in a launched job: records the job's CUDA_VISIBLE_DEVICES and finishes the run."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __call__(self) -> dict:
        folder = Path(self.run.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cuda_visible_devices").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
        (folder / "results.json").write_text(json.dumps({"epoch": self.run.max_epochs, "settings": {}}))
        return {"returncode": 0, "skipped": False, "resumed": False, "seconds": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("env, expected", [(f"{UUID_A},{MIG_OLD}", [UUID_A, MIG_OLD]), ("", [""])])
def test_local_runs_get_their_slot_as_cuda_visible_devices(tmp_path, monkeypatch, env, expected):
    """Through launch and submitit's LocalExecutor: one run per slot at a time, each given its GPU as named."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    monkeypatch.setattr(sweep_module, "TrainRun", _EnvProbe)
    root = tmp_path / "root"
    gpus = sweep_module.default_gpus_per_run(LaunchOptions("local"))
    runs = [Run("a", seed, str(root / "a" / f"seed{seed}"), "base.yml", (), 1, {}, gpus)
            for seed in range(len(expected))]
    options = LaunchOptions("local", poll_s=0.05)
    state = launch(Sweep(str(tmp_path / "s.yml"), "s", (0, 1), {}), runs, str(root), options)
    assert [state["runs"][r.key]["state"] for r in runs] == ["done"] * len(runs)
    assert [(Path(r.output_dir) / "cuda_visible_devices").read_text() for r in runs] == expected


# ----------------------------------------------------------------------------------------------------------------------
# The shipped sweep files.

def spec_numbers() -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """The published figures of SPEC.md, parsed: file stem -> row -> setting -> metric -> percent."""
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} not found")
    text = " ".join(SPEC.read_text().split("## Published results", 1)[1].split())
    n = r"(\d+(?:\.\d+)?)"  # a number, without the full stop that may follow it
    main = {m.group(1): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(rf"(RGBNT201|RGBNT100|MSVR310) mAP {n} / R-1 {n}", text)}
    r5, r10 = map(float, re.search(rf"RGBNT201 mAP {n} / R-1 {n} / R-5 {n} / R-10 {n}", text).groups()[2:])
    labels = {"-RGB": "r", "-NI": "n", "-TI": "t", "-RGB-NI": "rn", "-RGB-TI": "rt", "-NI-TI": "nt"}

    def missing(section: str) -> dict[str, dict[str, float]]:
        pairs = re.findall(rf"(-[A-Z-]+) {n}/{n}", section)
        return {labels[name]: {"mAP": float(a), "Rank-1": float(b)} for name, a, b in pairs}

    on201 = text.split("Missing spectra on RGBNT201", 1)[1].split("On RGBNT100", 1)[0]
    on100 = text.split("On RGBNT100", 1)[1].split("Backbones", 1)[0]
    backbones = {name: (float(a), float(b)) for name, a, b in
                 re.findall(rf"(ViT-B/16|DeiT-S/16|T2T-ViT-24) {n}/{n}", text.split("Backbones", 1)[1])}
    ablation = text.split("Ablation on RGBNT201", 1)[1]
    concat_base, per_base = map(float, re.search(rf"concat baseline {n}, per-spectrum baseline {n}",
                                                 ablation).groups())
    tpm = list(map(float, re.search(rf"\+TPM {n} / {n}", ablation).groups()))
    full = list(map(float, re.search(rf"\+TPM\+CRM {n} / {n}", ablation).groups()))
    single = dict(re.findall(rf"(RGB|NI|TI) {n}", ablation.split("single spectrum", 1)[1]))

    def fig(m: float, r: float | None = None) -> dict[str, dict[str, float]]:
        return {"nothing": {"mAP": m, **({"Rank-1": r} if r is not None else {})}}

    return {
        "multispectral": {
            "RGBNT201_direct_false": {"nothing": {"mAP": main["RGBNT201"][0], "Rank-1": main["RGBNT201"][1],
                                                  "Rank-5": r5, "Rank-10": r10}},
            "RGBNT201_direct_true": {}, "RGBNT100": fig(*main["RGBNT100"]), "MSVR310": fig(*main["MSVR310"])},
        "missing": {"RGBNT201": {"nothing": fig(*main["RGBNT201"])["nothing"], **missing(on201)},
                    "RGBNT100": {"nothing": fig(*main["RGBNT100"])["nothing"], **missing(on100)}},
        "backbones": {"vit_base_patch16_224": fig(*backbones["ViT-B/16"]),
                      "deit_small_patch16_224": fig(*backbones["DeiT-S/16"]),
                      "t2t_vit_t_24": fig(*backbones["T2T-ViT-24"])},
        "ablation": {"baseline_concat": fig(concat_base), "baseline_per_spectrum": fig(per_base),
                     "tpm_concat": fig(tpm[0]), "tpm_per_spectrum": fig(tpm[1]), "tpm_crm_concat": fig(full[0]),
                     "tpm_crm_per_spectrum": fig(full[1]), "single_RGB": fig(float(single["RGB"])),
                     "single_NI": fig(float(single["NI"])), "single_TI": fig(float(single["TI"]))},
        "learning_rate": {"lr_0.008": {}, "lr_0.009": {}, "lr_0.010": {}},  # SPEC has no figure for these
        "demo_ablation": {"tpm_crm": {}, "tpm": {}, "baseline_concat": {}},
    }


def demo_spec_numbers() -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """DeMo's published figures in SPEC_DeMo.md, parsed: file stem -> row -> setting -> metric -> percent."""
    spec = SPEC.parent / "SPEC_DeMo.md"
    if not spec.is_file():
        pytest.skip(f"{spec} not found")
    text = " ".join(spec.read_text().split("## Published numbers", 1)[1].split("## ", 1)[0].split())
    n = r"(\d+(?:\.\d+)?)"
    metrics = ("mAP", "Rank-1", "Rank-5", "Rank-10")
    rows = {}
    for dataset, vit, clip in re.findall(r"(RGBNT201|RGBNT100|MSVR310) \*([\d./]+), †([\d./]+)", text):
        for backbone, figures in (("vit", vit), ("clip", clip)):
            rows[f"{dataset}_{backbone}"] = {"nothing": dict(zip(metrics, map(float, figures.strip(".").split("/"))))}
    missing_text = text.split("Missing spectra", 1)[1].split("Ablation", 1)[0]
    missing = {}
    for dataset in ("RGBNT201", "RGBNT100"):
        section = missing_text.split(dataset, 1)[1].split("(", 1)[0]
        pairs = re.findall(rf"{n}/{n}", section)
        missing[dataset] = {"nothing": {m: rows[f"{dataset}_clip"]["nothing"][m] for m in ("mAP", "Rank-1")},
                            **{s: {"mAP": float(a), "Rank-1": float(b)}
                               for s, (a, b) in zip(("r", "n", "t", "rn", "rt", "nt"), pairs)}}
    # "Ablation RGBNT201: baseline 70.7/72.4; +PIFE 73.0/75.8; +PIFE+HDM 74.4/77.5; +PIFE+ATMoE ...; all 79.0/82.3"
    ablation_text = text.split("Ablation RGBNT201:", 1)[1]
    figures = {name: (float(a), float(b)) for name, a, b in
               re.findall(rf"(baseline|\+PIFE\+HDM|\+PIFE\+ATMoE|\+PIFE|all) {n}/{n}", ablation_text)}
    ablation = {row: {"nothing": {"mAP": figures[name][0], "Rank-1": figures[name][1]}}
                for row, name in (("baseline", "baseline"), ("pife", "+PIFE"), ("pife_hdm", "+PIFE+HDM"),
                                  ("pife_hdm_atmoe", "all"))}
    assert "+PIFE+ATMoE" in figures  # in the paper, with no code: not a row
    return {"DeMo_multispectral": rows, "DeMo_missing": missing, "DeMo_ablation": ablation}


def editor_spec_numbers() -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """EDITOR's published figures in SPEC_EDITOR.md ("Published": A = the AL setting, B = the BL setting), parsed:
    file stem -> row -> setting -> metric -> percent."""
    spec = SPEC.parent / "SPEC_EDITOR.md"
    if not spec.is_file():
        pytest.skip(f"{spec} not found")
    text = " ".join(spec.read_text().split("## Published", 1)[1].split("## ", 1)[0].split())
    metrics = ("mAP", "Rank-1", "Rank-5", "Rank-10")
    rows = {}
    for dataset, a, b in re.findall(r"(RGBNT201|RGBNT100|MSVR310)[^:]*: A ([\d./]+), B ([\d./]+)", text):
        for setting, figures in (("A", a), ("B", b)):
            rows[f"{dataset}_{setting}"] = {"nothing": dict(zip(metrics, map(float, figures.strip(".").split("/"))))}
    assert len(rows) == 6, text
    return {"EDITOR_multispectral": rows}


METHOD_SETS = ("RGBNT201", "RGBNT100", "MSVR310", "RGBNT300", "Market1501-MM", "WMVEID863")


def methods_spec_numbers(tmp_path: Path) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """The published figures configs/paper/methods.yml must quote, from the three specs: TOP-ReID's ViT-B/16 rows (all
    spectra and missing), DeMo's CLIP rows (all spectra and missing) and ViT rows, EDITOR's rows the figure of the
    setting (A = AL, B = BL) that the row's config trains; nothing for the other data sets and TOP-ReID with CLIP."""
    top, demo, editor = spec_numbers(), demo_spec_numbers(), editor_spec_numbers()["EDITOR_multispectral"]
    al = {r.row: r.config["MODEL.EDITOR.AL"]
          for r in plan_runs(load_sweep(str(PAPER / "methods.yml")), str(tmp_path / "al"), seeds=[0])}
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for dataset in METHOD_SETS:
        rows[f"{dataset}_TOP-ReID"] = {}
        rows[f"{dataset}_DeMo-CLIP"] = {}
        rows[f"{dataset}_EDITOR"] = {}
    for dataset in ("RGBNT201", "RGBNT100", "MSVR310"):
        main = top["multispectral"]["RGBNT201_direct_false" if dataset == "RGBNT201" else dataset]
        missing = {s: m for s, m in top["missing"].get(dataset, {}).items() if s != "nothing"}
        rows[f"{dataset}_TOP-ReID"] = {**main, **missing}
        rows[f"{dataset}_TOP-ReID-CLIP"] = {}
        demo_missing = {s: m for s, m in demo["DeMo_missing"].get(dataset, {}).items() if s != "nothing"}
        rows[f"{dataset}_DeMo-CLIP"] = {**demo["DeMo_multispectral"][f"{dataset}_clip"], **demo_missing}
        rows[f"{dataset}_DeMo-ViT"] = demo["DeMo_multispectral"][f"{dataset}_vit"]
        rows[f"{dataset}_EDITOR"] = editor[f"{dataset}_{'A' if al[f'{dataset}_EDITOR'] else 'B'}"]
    return {"methods": rows, "demo_methods": {"TOP-ReID": {}, "DeMo": {}, "EDITOR": {}}}


def test_shipped_sweep_files_validate_and_quote_spec(tmp_path):
    expected = {**spec_numbers(), **demo_spec_numbers(), **editor_spec_numbers(), **methods_spec_numbers(tmp_path)}
    files = sorted(PAPER.glob("*.yml"))
    assert {f.stem for f in files} == set(expected)
    for path in files:
        sweep = load_sweep(str(path.relative_to(REPO)))
        runs = plan_runs(sweep, str(tmp_path / path.stem), trailing=["MODEL.PRETRAIN_CHOICE", "none"])
        assert len(runs) == len(sweep.rows) * len(sweep.seeds)
        assert {name: {s: dict(m) for s, m in row.published.items()} for name, row in sweep.rows.items()} == \
            expected[path.stem], path
    by_key = {r.key: r for r in plan_runs(load_sweep(str(PAPER / "multispectral.yml")), str(tmp_path / "m"))}
    assert by_key["RGBNT201_direct_false/seed0"].config["MODEL.DIRECT"] is False
    assert by_key["RGBNT201_direct_true/seed0"].config["MODEL.DIRECT"] is True
    missing = plan_runs(load_sweep(str(PAPER / "missing.yml")), str(tmp_path / "x"))
    assert all(r.config["TEST.MISS"] == "all" for r in missing)
    ablation = {r.row: r.config for r in plan_runs(load_sweep(str(PAPER / "ablation.yml")), str(tmp_path / "y"))}
    assert ablation["single_NI"]["MODEL.SPECTRA"] == ["NI"] and ablation["single_NI"]["MODEL.BASE"] is True
    demo = plan_runs(load_sweep(str(PAPER / "demo_ablation.yml")), str(tmp_path / "d"))
    assert len(demo) <= 6 and all(r.max_epochs <= 10 and r.config["MODEL.DEVICE"] != "cuda" for r in demo)
    assert set(MISS_SETTINGS) >= {s for rows in expected.values() for row in rows.values() for s in row}
    editor_sweep = load_sweep(str(PAPER / "EDITOR_multispectral.yml"))
    editor = {r.row: r.config for r in plan_runs(editor_sweep, str(tmp_path / "e"), seeds=[0])}
    assert all(config["MODEL.META_ARCHITECTURE"] == "EDITOR" and config["MODEL.EDITOR.AL"] is row.endswith("_A")
               for row, config in editor.items())
    demo_ablation = {r.row: r.config for r in plan_runs(load_sweep(str(PAPER / "DeMo_ablation.yml")),
                                                         str(tmp_path / "da"), seeds=[0])}
    switches = {row: tuple(c[f"MODEL.DEMO.{k}"] for k in ("PIFE", "HDM", "ATMOE")) for row, c in demo_ablation.items()}
    assert switches == {"baseline": (False, False, False), "pife": (True, False, False),
                        "pife_hdm": (True, True, False), "pife_hdm_atmoe": (True, True, True)}


def test_methods_sweep_has_every_method_config_of_every_data_set(tmp_path):
    """methods.yml: a row per configs/<data set>/<method>.yml of the six data sets, every protocol evaluated, the
    rows of a data set together, its labels those of the config."""
    sweep = load_sweep(str(PAPER / "methods.yml"))
    shipped = {f"configs/{d}/{p.name}" for d in METHOD_SETS for p in (REPO / "configs" / d).glob("*.yml")}
    assert {row.base for row in sweep.rows.values()} == shipped
    assert {p.split("/")[2].split(".")[0].split("-")[0] for p in shipped} == {"TOP", "DeMo", "EDITOR"}
    runs = plan_runs(sweep, str(tmp_path / "m"), seeds=[0])
    for run in runs:
        assert (run.config["TEST.MISS"], run.config["TEST.CROSS"]) == ("all", "all"), run.row
        assert run.config["DATASETS.NAMES"] == run.row.split("_")[0]
        method = {"TOPReID": "TOP-ReID", "DeMo": "DeMo", "EDITOR": "EDITOR"}[run.config["MODEL.META_ARCHITECTURE"]]
        assert sweep.rows[run.row].method.startswith(method), run.row
    datasets = [run.config["DATASETS.NAMES"] for run in runs]
    assert datasets == sorted(datasets, key=datasets.index)  # each data set's rows together


# ----------------------------------------------------------------------------------------------------------------------
# What the sweep asks Slurm, against stand-in commands (the real cluster is in tests/test_slurm.py).

def _fake_commands(tmp_path, monkeypatch, **scripts):
    """Put shell scripts named after Slurm commands first on PATH."""
    fake_bin = tmp_path / "fake_bin"
    fake_bin.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake_bin / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")


def test_job_states_come_from_the_queue_then_accounting(tmp_path, monkeypatch):
    from experiments import slurm

    _fake_commands(tmp_path, monkeypatch, squeue='echo "12|REQUEUED"; echo "13|RUNNING"',
                   sacct='echo "14|RUNNING"; echo "14|CANCELLED by 0"')
    assert slurm.job_states(["12", "13", "14"]) == {"12": "REQUEUED", "13": "RUNNING", "14": "CANCELLED"}
    assert slurm.is_active("REQUEUED") and slurm.is_active("PENDING") and not slurm.is_active("CANCELLED")


def test_without_accounting_a_job_gone_from_the_queue_has_ended(tmp_path, monkeypatch):
    """Without sacct a job killed at its time limit used to leave the sweep waiting forever."""
    from experiments import slurm

    _fake_commands(tmp_path, monkeypatch, squeue='echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1',
                   sacct='echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1')
    assert slurm.job_states(["21"]) == {"21": slurm.ENDED}
    assert not slurm.is_active(slurm.ENDED)


def test_slurm_needs_a_time_limit_and_a_known_partition(tmp_path, monkeypatch):
    _fake_commands(tmp_path, monkeypatch, sinfo='echo "cpu*"; echo "gpu"', srun="exit 1")
    with pytest.raises(SweepError, match=r"--time MINUTES.*5 minutes"):
        make_executor(LaunchOptions("slurm", gpus_per_run=0), str(tmp_path), "x")
    with pytest.raises(SweepError, match=r"--partition gpux: no such Slurm partition \(sinfo lists: cpu, gpu\)"):
        make_executor(LaunchOptions("slurm", partition="gpux", time_min=60, gpus_per_run=0), str(tmp_path), "x")


def test_gpus_per_run_follow_the_partition(tmp_path, monkeypatch):
    """The default of one GPU per run was refused by a CPU partition."""
    sinfo = 'case "$*" in *"-p gpu"*) echo "gpu|gpu:a100:4";; *"-p cpu"*) echo "cpu*|(null)";; ' \
            '*) echo "cpu*|(null)"; echo "gpu|gpu:a100:4";; esac'
    _fake_commands(tmp_path, monkeypatch, sinfo=sinfo)
    assert sweep_module.default_gpus_per_run(LaunchOptions("slurm", partition="gpu")) == 1
    assert sweep_module.default_gpus_per_run(LaunchOptions("slurm", partition="cpu")) == 0
    assert sweep_module.default_gpus_per_run(LaunchOptions("slurm")) == 0  # the default partition (starred) is cpu
    assert sweep_module.default_gpus_per_run(LaunchOptions("slurm", partition="cpu", gpus_per_run=2)) == 2


def test_sbatch_refusal_is_one_error_line(tmp_path, monkeypatch, capsys):
    _fake_commands(tmp_path, monkeypatch, sinfo='echo "cpu*"', srun="exit 1",
                   sbatch='echo "sbatch: error: Batch job submission failed: Invalid generic resource (gres) '
                          'specification" >&2; exit 1')
    sweep_file = tmp_path / "s.yml"
    sweep_file.write_text(yaml.safe_dump({"base": "configs/demo/TOP-ReID.yml", "seeds": [0], "rows": {"a": {}}}))
    out = subprocess.run([sys.executable, "tools/sweep.py", str(sweep_file), "--executor", "slurm", "--time", "10",
                          "--partition", "cpu", "--gpus-per-run", "1", "--output", str(tmp_path / "root")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: Slurm refused the job of run a/seed0: Batch job submission failed: Invalid generic "
                      "resource (gres) specification (check --partition, --gpus-per-run, --time, --mem, --account, "
                      "--qos, --constraint)"], out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_trailing_key_is_blamed_on_the_command_line(tmp_path):
    sweep_file = tmp_path / "s.yml"
    sweep_file.write_text(yaml.safe_dump({"base": "configs/demo/TOP-ReID.yml", "seeds": [0],
                                          "rows": {"first_row": {}, "second": {}}}))
    with pytest.raises(SweepError, match=r"^command line: .*SOLVER\.BASE_LRR"):
        plan_runs(load_sweep(str(sweep_file)), str(tmp_path / "root"), trailing=["SOLVER.BASE_LRR", "0.1"])


def test_a_folder_owned_by_a_live_slurm_job_is_never_started_again(tmp_path, monkeypatch):
    """A second invocation (any node) while a requeued job is pending used to submit a duplicate."""
    _fake_commands(tmp_path, monkeypatch, squeue='echo "77|PENDING"')
    run = Run("a", 0, str(tmp_path / "a" / "seed0"), "configs/demo/TOP-ReID.yml", ("OUTPUT_DIR", "x"), 1, {}, 0)
    os.makedirs(run.output_dir)
    with open(os.path.join(run.output_dir, sweep_module.JOB_FILE), "w") as f:
        json.dump({"job_id": "77", "folder": str(tmp_path / ".submitit")}, f)
    assert sweep_module.owning_job(run.output_dir)["job_id"] == "77"
    assert "owned by Slurm job 77" in dry_run([run], str(tmp_path))[0]["state"]
    result = TrainRun(run)()  # a duplicate job that started anyway leaves the folder alone
    assert result["skipped"] and result["running"] == "Slurm job 77"
