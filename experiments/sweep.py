"""Sweep files and their runs: validation, the state of each run read from its folder, and launching through submitit.

A sweep file (YAML) is one table of the paper::

    title: Multi-spectral ReID on RGBNT201        # optional
    base: configs/RGBNT201/TOP-ReID.yml           # config of every row, unless the row names its own
    seeds: [0, 1, 2]                              # optional, default [0, 1, 2]
    overrides: ["SOLVER.MAX_EPOCHS 8"]            # optional, before every row's own
    rows:
      per_spectrum_head:
        base: configs/RGBNT201/TOP-ReID.yml       # optional
        overrides: ["MODEL.DIRECT False"]         # KEY VALUE pairs as typed after train_net.py
        published: {nothing: {mAP: 72.3, Rank-1: 76.6}}   # percent, per missing-spectrum setting; optional
        note: where the published figure comes from      # optional
        dataset: RGBNT201                         # optional table labels (default: the resolved config's
        method: TOP-ReID                          # DATASETS.NAMES and MODEL.META_ARCHITECTURE)

The collected table (:mod:`experiments.collect`) groups its rows by data set, then method (each data set and each
method in the order of its first row in the file; rows of the same data set and method keep the file's order), and
has one column group per protocol the runs evaluated or ``published`` quotes: all spectra (``nothing``), the
missing-spectrum settings (``TEST.MISS all``; ``—`` where a setting does not exist for the row's spectra) and the
cross-spectral pairs (``TEST.CROSS``, the ``"cross"`` section of results.json; no published figures). A comparison of
methods is one row per method and data set, each with its own ``base`` (``configs/paper/methods.yml``). ``dataset``
and ``method`` only label a row: they change nothing that is trained.

Each run is ``train_net.py --config_file BASE OUTPUT_DIR ROOT/<row>/seed<k> SOLVER.SEED <k> <row overrides>
<trailing overrides>``, started as a subprocess by a :class:`TrainRun` submitted through submitit (local processes
or Slurm). Its state is read from its folder, so re-running a sweep does only what is left:

- **done**: ``results.json`` holds ``"epoch"`` equal to the run's ``SOLVER.MAX_EPOCHS``;
- **partial**: ``last.pth`` exists, not done: continued with ``--resume``;
- **to do**: no checkpoint (a folder holding only the config and log of a start that failed before its first
  checkpoint is started again over them with ``OVERWRITE True``: there is nothing in it to lose);
- **running**: a ``train_net.py`` process of this machine is writing the folder (``.sweep_run.json``);
- **failed**: (from ``sweep_state.json``) its process ended with an error; retried once per invocation.

A folder whose ``config.yaml`` differs from the row's resolved config (apart from :data:`IDENTITY_IGNORED`) is an
error, never overwritten.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml
from submitit.core.utils import FailedJobError
from submitit.helpers import Checkpointable, DelayedSubmission

from configs.resume import flat, flatten_config
from experiments import slurm
from utils.io import write_json
from utils.spectra import MISS_SETTINGS

logger = logging.getLogger(__name__)

REPO_ROOT = str(Path(__file__).resolve().parents[1])
DEFAULT_SEEDS = (0, 1, 2)
SWEEP_KEYS = ("title", "base", "seeds", "overrides", "rows")
ROW_KEYS = ("base", "overrides", "published", "note", "dataset", "method")
PUBLISHED_METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")
# Keys the sweep sets itself (or refuses): a row or a trailing override naming them is an error.
RESERVED_KEYS = {
    "OUTPUT_DIR": "the sweep sets it to ROOT/<row>/seed<k>",
    "SOLVER.SEED": "the sweep sets it from the seeds",
    "OVERWRITE": "a sweep never overwrites a run",
    "SOLVER.RESUME": "the sweep passes --resume itself where a run is partial",
}
# Keys that may differ between a run folder's config.yaml and the row's config: they say where things are or how
# fast they go, not what is computed (a sweep may be continued on another machine, with the data elsewhere).
IDENTITY_IGNORED = frozenset({
    "OUTPUT_DIR", "OVERWRITE", "SOLVER.RESUME", "MODEL.DIST_TRAIN", "MODEL.DEVICE", "MODEL.DEVICE_ID",
    "DATASETS.ROOT_DIR", "MODEL.PRETRAIN_PATH_T", "DATALOADER.NUM_WORKERS", "SOLVER.LOG_PERIOD", "TEST.IMS_PER_BATCH",
})
STATE_FILE = "sweep_state.json"
PID_FILE = ".sweep_run.json"
MAX_ATTEMPTS = 2  # per run and invocation: the first try and one retry
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # LocalExecutor's default is 2 minutes
JOB_SETUP = f"export PYTHONPATH={shlex.quote(REPO_ROOT)}${{PYTHONPATH:+:$PYTHONPATH}}"  # first shell line of a job
JOB_FILE = ".sweep_job.json"  # the Slurm job that owns a run folder: no other invocation, on any node, starts it
# How long a stopped run may take to write last.pth: within the 90 s submitit asks Slurm to give between its
# time-limit warning (SIGUSR2) and the kill, leaving time to requeue the job.
STOP_WAIT_S = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
INTERRUPT_CODES = tuple(128 + s for s in STOP_SIGNALS) + tuple(-s for s in STOP_SIGNALS)
SLURM_POLL_S = 10.0  # between two queries of the queue
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*$")
_ROW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SweepError(ValueError):
    """An invalid sweep file, row or run folder; the message names the file, the row and the key."""


# ----------------------------------------------------------------------------------------------------------------------
# The sweep file.

@dataclass(frozen=True)
class Row:
    name: str
    base: str
    overrides: tuple[str, ...]
    published: Mapping[str, Mapping[str, float]]  # setting -> metric -> percent
    note: str = ""
    dataset: str = ""  # table label; "" = the resolved config's DATASETS.NAMES
    method: str = ""  # table label; "" = the resolved config's MODEL.META_ARCHITECTURE


@dataclass(frozen=True)
class Sweep:
    path: str
    title: str
    seeds: tuple[int, ...]
    rows: Mapping[str, Row]

    @property
    def stem(self) -> str:
        return Path(self.path).stem


def parse_overrides(value: Any, where: str) -> tuple[str, ...]:
    """``KEY VALUE`` tokens from a list (each item one token, or ``"KEY VALUE"`` split as a shell would) or from one
    string; an odd list or a token that is not a config key where a key belongs is an error naming ``where``."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise SweepError(f"{where}: overrides must be a list of KEY VALUE strings, got {type(value).__name__}")
    tokens: list[str] = []
    for item in items:
        if isinstance(item, bool | int | float):
            item = str(item)
        if not isinstance(item, str):
            raise SweepError(f"{where}: override {item!r} is not a string")
        first = item.split(maxsplit=1)[0] if item.strip() else ""
        tokens.extend(shlex.split(item) if _KEY.match(first) and " " in item.strip() else [item])
    if len(tokens) % 2:
        raise SweepError(f"{where}: overrides must be KEY VALUE pairs; got an odd list {tokens}")
    for key in tokens[0::2]:
        if not _KEY.match(key):
            raise SweepError(f"{where}: {key!r} stands where a config key (e.g. MODEL.DIRECT) belongs")
    return tuple(tokens)


def check_reserved(tokens: Sequence[str], where: str) -> None:
    for key in tokens[0::2]:
        if key in RESERVED_KEYS:
            raise SweepError(f"{where}: key {key} may not be set here: {RESERVED_KEYS[key]}")


def _published(value: Any, where: str) -> dict[str, dict[str, float]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepError(f"{where}: published must map settings ({', '.join(MISS_SETTINGS)}) to metrics")
    out: dict[str, dict[str, float]] = {}
    for setting, metrics in value.items():
        if setting not in MISS_SETTINGS:
            raise SweepError(f"{where}: published setting {setting!r} is not one of {', '.join(MISS_SETTINGS)}")
        if not isinstance(metrics, dict) or not metrics:
            raise SweepError(f"{where}: published.{setting} must map metrics ({', '.join(PUBLISHED_METRICS)}) to "
                             "percentages")
        for metric, number in metrics.items():
            if metric not in PUBLISHED_METRICS:
                raise SweepError(f"{where}: published.{setting}.{metric} is not one of {', '.join(PUBLISHED_METRICS)}")
            if isinstance(number, bool) or not isinstance(number, int | float) or not 0 <= number <= 100:
                raise SweepError(f"{where}: published.{setting}.{metric} = {number!r} is not a percentage")
        out[setting] = {m: float(v) for m, v in metrics.items()}
    return out


def load_sweep(path: str) -> Sweep:
    """Read and check the structure of a sweep file (the configs are checked by :func:`plan_runs`)."""
    if not os.path.isfile(path):
        raise SweepError(f"sweep file not found: {path}")
    with open(path) as f:
        try:
            tree = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise SweepError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise SweepError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = [k for k in tree if k not in SWEEP_KEYS]
    if unknown:
        raise SweepError(f"{path}: unknown top-level key(s) {unknown}; allowed: {', '.join(SWEEP_KEYS)}")
    seeds = tree.get("seeds", list(DEFAULT_SEEDS))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds) or len(set(seeds)) != len(seeds):
        raise SweepError(f"{path}: seeds must be a list of distinct non-negative integers, got {seeds!r}")
    base = tree.get("base")
    common = parse_overrides(tree.get("overrides"), f"{path}: overrides")
    check_reserved(common, f"{path}: overrides")
    rows_tree = tree.get("rows")
    if not isinstance(rows_tree, dict) or not rows_tree:
        raise SweepError(f"{path}: rows must be a non-empty mapping of row names to their overrides")
    rows: dict[str, Row] = {}
    for name, spec in rows_tree.items():
        where = f"{path}: row {name!r}"
        if not isinstance(name, str) or not _ROW_NAME.match(name):
            raise SweepError(f"{where}: a row name must be letters, digits, '_', '-' or '.' (it names a folder)")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise SweepError(f"{where}: expected a mapping with keys {', '.join(ROW_KEYS)}")
        bad = [k for k in spec if k not in ROW_KEYS]
        if bad:
            raise SweepError(f"{where}: unknown key(s) {bad}; allowed: {', '.join(ROW_KEYS)}")
        row_base = spec.get("base", base)
        if not isinstance(row_base, str) or not row_base:
            raise SweepError(f"{where}: no base config (set base at the top or in the row)")
        overrides = parse_overrides(spec.get("overrides"), where)
        check_reserved(overrides, where)
        note = spec.get("note", "")
        labels = {}
        for key in ("dataset", "method"):
            value = spec.get(key, "")
            if not isinstance(value, str) or (key in spec and not value.strip()):
                raise SweepError(f"{where}: {key} must be a non-empty string (a label of the table), got {value!r}")
            labels[key] = " ".join(value.split())
        rows[name] = Row(name, row_base, common + overrides, _published(spec.get("published"), where),
                         " ".join(str(note).split()), **labels)
    title = str(tree.get("title") or Path(path).stem)
    return Sweep(path=path, title=title, seeds=tuple(seeds), rows=rows)


# ----------------------------------------------------------------------------------------------------------------------
# Runs.

@dataclass(frozen=True)
class Run:
    """One training of a sweep: a row at a seed, in its own folder."""

    row: str
    seed: int
    output_dir: str
    base: str
    opts: tuple[str, ...]  # everything after --config_file BASE
    max_epochs: int
    config: Mapping[str, Any] = field(repr=False, compare=False)  # the resolved config, flattened
    gpus: int = 0

    @property
    def key(self) -> str:
        return f"{self.row}/seed{self.seed}"

    def command(self, resume: bool = False, overwrite: bool = False, python: str | None = None) -> list[str]:
        """The command line (from the repository root); ``resume`` stands before the pairs, as train_net.py's
        argument parser reads everything after the first pair as pairs."""
        python = python or sys.executable
        launcher = [python, "train_net.py"] if self.gpus <= 1 else \
            [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(self.gpus), "train_net.py"]
        return [*launcher, "--config_file", self.base, *(["--resume"] if resume else []), *self.opts,
                *(["OVERWRITE", "True"] if overwrite else [])]


def plan_runs(sweep: Sweep, root: str, rows: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
              trailing: Sequence[str] = (), gpus_per_run: int = 0) -> list[Run]:
    """Every run of the selected rows and seeds, each row's config resolved and validated by ``load_config`` (as
    train_net.py does); an invalid value is an error naming the sweep file, the row and the key."""
    from configs import ConfigError, load_config

    root = os.path.abspath(root)  # the trainings run from the repository root, whatever the caller's folder
    trailing = parse_overrides(list(trailing), "command line")
    check_reserved(trailing, "command line")
    unknown = [r for r in rows or () if r not in sweep.rows]
    if unknown:
        raise SweepError(f"{sweep.path}: no row(s) {unknown}; rows: {', '.join(sweep.rows)}")
    selected = [sweep.rows[r] for r in rows] if rows else list(sweep.rows.values())
    if trailing:  # an invalid trailing pair is the command line's, not the first row's
        first = selected[0].base
        try:
            load_config(first if os.path.isabs(first) else os.path.join(REPO_ROOT, first), list(trailing))
        except ConfigError as err:
            raise SweepError(f"command line: {_without_source(err)}") from None
    runs = []
    for row in selected:
        for seed in seeds if seeds is not None else sweep.seeds:
            output_dir = os.path.join(root, row.name, f"seed{seed}")
            opts = ("OUTPUT_DIR", output_dir, "SOLVER.SEED", str(seed), *row.overrides, *trailing)
            base = row.base if os.path.isabs(row.base) else os.path.join(REPO_ROOT, row.base)
            try:
                cfg = load_config(base, list(opts))
            except ConfigError as err:
                raise SweepError(f"{sweep.path}: row {row.name!r}: {_without_source(err)}") from None
            runs.append(Run(row.name, seed, output_dir, row.base, opts, int(cfg.SOLVER.MAX_EPOCHS),
                            flat(cfg), gpus_per_run))
    return runs


def _without_source(err: Exception) -> str:
    """A config error without load_config's "command line: " (every pair a sweep passes is on train_net.py's command
    line; the sweep names the real source: the row or the sweep's own command line)."""
    return str(err).removeprefix("command line: ")


# ----------------------------------------------------------------------------------------------------------------------
# The state of a run, from its folder.

@dataclass(frozen=True)
class RunStatus:
    state: str  # done | partial | to do | running
    epoch: int | None = None  # epoch of results.json, if any
    restart: bool = False  # a folder of a failed start (config, no checkpoint): started again with OVERWRITE True
    pid: int | None = None


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def running_pid(output_dir: str) -> int | None:
    """The pid of the train_net.py process writing ``output_dir`` on this machine, if it is alive."""
    info = _read_json(os.path.join(output_dir, PID_FILE))
    if not info or info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return None
    try:
        with open(f"/proc/{info['pid']}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
    except OSError:
        return None
    return info["pid"] if "train_net.py" in cmdline and output_dir in cmdline else None


def folder_config(output_dir: str) -> dict[str, Any] | None:
    """The resolved config stored in a run folder (config.yaml, else results.json's copy), flattened."""
    tree = None
    path = os.path.join(output_dir, "config.yaml")
    if os.path.isfile(path):
        with open(path) as f:
            tree = yaml.safe_load(f)
    else:
        results = _read_json(os.path.join(output_dir, "results.json"))
        if results and isinstance(results.get("config"), str):
            tree = yaml.safe_load(results["config"])
    return flatten_config(tree) if isinstance(tree, dict) else None


def config_differences(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    keys = sorted((set(expected) | set(found)) - IDENTITY_IGNORED)
    return [f"{k}: folder {found.get(k, '<absent>')!r}, row {expected.get(k, '<absent>')!r}"
            for k in keys if expected.get(k) != found.get(k)]


def run_state(run: Run) -> RunStatus:
    """done / partial / to do / running, read from the run's folder. A folder holding another config is an error."""
    folder = run.output_dir
    pid = running_pid(folder)
    if pid is not None:
        return RunStatus("running", pid=pid)
    found = folder_config(folder)
    if found is not None:
        diffs = config_differences(run.config, found)
        if diffs:
            raise SweepError(f"run {run.key}: {folder} holds a run of another config ({'; '.join(diffs[:5])}"
                             f"{'; ...' if len(diffs) > 5 else ''}); move it away or choose another --output")
    results = _read_json(os.path.join(folder, "results.json"))
    epoch = results.get("epoch") if results else None
    epoch = epoch if isinstance(epoch, int) else None
    if epoch is not None and epoch >= run.max_epochs and isinstance(results.get("settings"), dict):
        return RunStatus("done", epoch)
    if os.path.isfile(os.path.join(folder, "last.pth")):
        return RunStatus("partial", epoch)
    return RunStatus("to do", epoch, restart=found is not None)


# ----------------------------------------------------------------------------------------------------------------------
# The job: one train_net.py process, resumable after a Slurm pre-emption or time-out.

def owning_job(output_dir: str) -> dict[str, Any] | None:
    """The Slurm job recorded as owning ``output_dir`` (job id, submitit folder), if it is still queued or running."""
    info = _read_json(os.path.join(output_dir, JOB_FILE))
    if not info or not info.get("job_id"):
        return None
    job_id = str(info["job_id"])
    return info if slurm.is_active(slurm.job_states([job_id])[job_id]) else None


def _child_exited(proc: subprocess.Popen) -> bool:
    """Whether the child has exited, without reaping it nor taking Popen's lock (which the job's main thread may
    hold in its own wait when a signal handler asks)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped meanwhile
        return True


class TrainRun(Checkpointable):
    """Runs ``train_net.py`` for one run (resuming it if its folder holds ``last.pth``) and returns its exit code.

    On pre-emption or time-out (SIGUSR2 from Slurm, which ``train_net.py`` receives too and answers by finishing the
    step, or leaving the evaluation, and writing ``last.pth``) submitit calls :meth:`checkpoint`: it waits for the
    process to stop (at most :data:`STOP_WAIT_S`) and the same run is requeued; the requeued job resumes from the
    folder. A job that received SIGTERM (``scancel``, or ``scontrol requeue`` by someone else) is not requeued again
    by itself. A folder owned by another live Slurm job is left alone.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self._proc: subprocess.Popen | None = None
        self._terminated = False

    def __getstate__(self) -> dict[str, Any]:
        return {"run": self.run, "_proc": None, "_terminated": False}

    def __call__(self) -> dict[str, Any]:
        status = run_state(self.run)
        if status.state == "done":
            return {"returncode": 0, "skipped": True, "resumed": False, "seconds": 0.0}
        if status.state == "running":
            return {"returncode": None, "skipped": True, "resumed": False, "seconds": 0.0,
                    "running": f"pid {status.pid}"}
        owner = owning_job(self.run.output_dir)
        if owner is not None and str(owner["job_id"]) != os.environ.get("SLURM_JOB_ID"):
            return {"returncode": None, "skipped": True, "resumed": False, "seconds": 0.0,
                    "running": f"Slurm job {owner['job_id']}"}
        resume = status.state == "partial"
        command = self.run.command(resume=resume, overwrite=status.restart)
        start = time.time()
        os.makedirs(self.run.output_dir, exist_ok=True)
        pid_file = os.path.join(self.run.output_dir, PID_FILE)
        self._watch_sigterm()
        self._proc = subprocess.Popen(command, cwd=REPO_ROOT)
        write_json(pid_file, {"host": socket.gethostname(), "pid": self._proc.pid, "command": command})
        try:
            # Polled, not wait(): a signal handler (submitit's checkpoint) must be able to wait for the child too.
            while (returncode := self._proc.poll()) is None:
                time.sleep(0.5)
        except KeyboardInterrupt:  # the job was cancelled: let the run write last.pth before leaving
            self._stop()
            raise
        finally:
            if self._proc.poll() is not None and os.path.exists(pid_file):
                os.remove(pid_file)
        return {"returncode": returncode, "skipped": False, "resumed": resume, "seconds": time.time() - start,
                "command": command}

    def _watch_sigterm(self) -> None:
        """Remember a SIGTERM (then do what the handler before did: submitit's logs and ignores it)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            self._terminated = True
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _stop(self) -> None:
        """Ask the process to write last.pth and stop; wait for it at most STOP_WAIT_S."""
        proc = self._proc
        if proc is None or _child_exited(proc):
            return
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_WAIT_S
        while not _child_exited(proc):
            if time.monotonic() > deadline:
                logger.warning("run %s did not stop within %.0f s", self.run.key, STOP_WAIT_S)
                return
            time.sleep(0.2)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission | None:
        self._stop()
        if self._terminated:  # being cancelled or requeued already: a requeue here would revive or duplicate it
            logger.warning("run %s: the job received SIGTERM (scancel or scontrol requeue); not requeuing it",
                           self.run.key)
            return None
        return DelayedSubmission(TrainRun(self.run), *args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# The sweep state file.

def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def load_state(root: str) -> dict[str, Any]:
    state = _read_json(os.path.join(root, STATE_FILE))
    if state is None or not isinstance(state.get("runs"), dict):
        return {"runs": {}}
    return state


def save_state(root: str, state: dict[str, Any]) -> None:
    state["updated"] = _now()
    write_json(os.path.join(root, STATE_FILE), state)  # atomic: temp file + fsync + os.replace


def describe(run: Run, status: RunStatus, record: Mapping[str, Any] | None) -> str:
    """The state shown by --dry-run and in progress lines: done / partial / to do / running / failed."""
    if status.state == "done":
        return f"done (epoch {status.epoch})"
    if status.state == "running":
        return f"running (pid {status.pid})"
    if record and record.get("state") == "failed":
        left = "resume" if status.state == "partial" else "start again"
        return f"failed ({record.get('attempts', 0)} attempts, exit {record.get('returncode')}; will {left})"
    if status.state == "partial":
        return f"partial (last.pth{f', results of epoch {status.epoch}' if status.epoch else ''}; --resume)"
    return "to do (failed start: OVERWRITE True)" if status.restart else "to do"


def dry_run(runs: Sequence[Run], root: str) -> list[dict[str, Any]]:
    """Each run with its folder, command and state; starts nothing and writes nothing."""
    records = load_state(root)["runs"]
    listing = []
    for run in runs:
        status = run_state(run)
        owner = owning_job(run.output_dir) if status.state not in ("done", "running") else None
        listing.append({"row": run.row, "seed": run.seed, "output_dir": run.output_dir,
                        "state": f"owned by Slurm job {owner['job_id']} (queued or running)" if owner else
                        describe(run, status, records.get(run.key)),
                        "command": run.command(resume=status.state == "partial", overwrite=status.restart)})
    return listing


# ----------------------------------------------------------------------------------------------------------------------
# Launching.

@dataclass
class LaunchOptions:
    executor: str = "local"  # local | slurm
    max_parallel: int | None = None  # default: one run per free GPU slot locally (1 on CPU); unlimited on Slurm
    gpus_per_run: int | None = None  # default: 1 where a GPU is visible, else 0
    time_min: int | None = None  # job time limit (Slurm; locally default 7 days)
    partition: str | None = None
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    poll_s: float | None = None  # between two looks at the jobs (default 1 s locally, SLURM_POLL_S on Slurm)
    max_timeouts: int = 20  # Slurm: requeues after a time limit per job (submitit's own default, 3, ends long runs)


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out, as CUDA_VISIBLE_DEVICES names them (indices, ``GPU-<uuid>``, ``MIG-...``),
    else every device torch sees by index. As CUDA does, the list ends at the first entry that names no device (empty,
    ``-1``, ...): ``""`` and ``"-1"`` mean no GPU."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        gpus = []
        for entry in (x.strip() for x in env.split(",")):
            if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
                break
            gpus.append(entry)
        return gpus
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def default_gpus_per_run(options: LaunchOptions) -> int:
    """--gpus-per-run, else: on Slurm one where the partition has GPUs and none where it has not (a CPU partition
    refuses a GPU request); locally one where a GPU is visible."""
    if options.gpus_per_run is not None:
        return options.gpus_per_run
    if options.executor == "slurm":
        has_gpus = slurm.partition_has_gpus(options.partition)
        if has_gpus is None:
            logger.warning("sinfo cannot say whether partition %s has GPUs: asking for 1 GPU per run (set "
                           "--gpus-per-run 0 for a CPU partition)", options.partition or "(default)")
            return 1
        return 1 if has_gpus else 0
    return 1 if visible_gpus() else 0


def check_slurm_options(options: LaunchOptions) -> None:
    """Errors before anything is submitted: no --time (submitit would ask for 5 minutes), an unknown partition."""
    if options.time_min is None:
        raise SweepError("--executor slurm needs --time MINUTES, the job time limit (without it submitit asks Slurm "
                         "for 5 minutes). A run longer than the limit is stopped, saved and requeued: --time "
                         "may be shorter than a run, at the cost of a restart per requeue")
    if options.time_min < 2:
        raise SweepError(f"--time {options.time_min}: at least 2 minutes (Slurm's time-limit warning comes 90 s "
                         f"before the limit)")
    if options.partition:
        known = slurm.partitions()
        if known is not None and options.partition not in known:
            raise SweepError(f"--partition {options.partition}: no such Slurm partition (sinfo lists: "
                             f"{', '.join(known) or 'none'})")


def make_executor(options: LaunchOptions, folder: str, name: str) -> Any:
    """submitit's LocalExecutor or its Slurm executor, parameterised for one run per job."""
    gpus = default_gpus_per_run(options)
    setup = [JOB_SETUP]
    if options.executor == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=options.time_min or LOCAL_TIMEOUT_MIN, **local_slot_parameters(()))
        return executor
    if options.executor != "slurm":
        raise SweepError(f"--executor {options.executor!r}: use local or slurm")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=options.max_timeouts)
    check_slurm_options(options)
    params: dict[str, Any] = {"name": name, "nodes": 1, "tasks_per_node": 1, "gpus_per_node": gpus,
                              "slurm_setup": setup, "timeout_min": options.time_min}
    if options.cpus_per_run:
        params["cpus_per_task"] = options.cpus_per_run
    if options.mem_gb:
        params["mem_gb"] = options.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(options, key):
            params[f"slurm_{key}"] = getattr(options, key)
    executor.update_parameters(**params)
    return executor


def local_slot_parameters(slot: tuple[str, ...]) -> dict[str, Any]:
    """LocalExecutor parameters that give a job the GPUs of ``slot`` (none for an empty slot), named as in the
    sweep's own CUDA_VISIBLE_DEVICES. submitit's ``visible_gpus`` takes integer indices only, so the names (UUIDs and
    MIG names included) are exported by the job's setup as they are, over the empty list submitit sets for
    ``gpus_per_node=0``."""
    return {"gpus_per_node": 0, "setup": [JOB_SETUP, f"export CUDA_VISIBLE_DEVICES={shlex.quote(','.join(slot))}"]}


def _slots(options: LaunchOptions, gpus_per_run: int) -> list[tuple[str, ...]]:
    """Local GPU sets, one per run at a time (CPU: one empty set, or --max-parallel of them)."""
    gpus = visible_gpus() if gpus_per_run else []
    slots = [tuple(gpus[i:i + gpus_per_run]) for i in range(0, len(gpus) - gpus_per_run + 1, gpus_per_run)] \
        if gpus_per_run else []
    if gpus_per_run and not slots:
        raise SweepError(f"--gpus-per-run {gpus_per_run}: only {len(gpus)} GPU(s) visible")
    count = options.max_parallel or max(1, len(slots))
    return [slots[i % len(slots)] if slots else () for i in range(count)]


def _metrics_line(run: Run) -> str:
    results = _read_json(os.path.join(run.output_dir, "results.json")) or {}
    settings = results.get("settings") or {}
    first = settings.get("nothing") or next(iter(settings.values()), None)
    if not isinstance(first, dict):
        return ""
    return f", mAP {100 * first.get('mAP', float('nan')):.1f} Rank-1 {100 * first.get('Rank-1', float('nan')):.1f}"


class _StopFlag:
    """SIGTERM/SIGINT to the sweep: start nothing more, ask the running trainings to write last.pth and stop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.handled = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum


@dataclass
class _Active:
    job: Any  # a submitit job
    run: Run
    slot: int | None  # local GPU slot
    start: float
    on_slurm: bool  # watched through Slurm's own state (a requeued job comes back under the same id)


def _owner_job(run: Run) -> Any | None:
    """A job object for the live Slurm job that owns the run's folder (of this invocation or an earlier one)."""
    info = owning_job(run.output_dir)
    if info is None:
        return None
    return submitit.SlurmJob(folder=info.get("folder") or os.path.join(os.path.dirname(run.output_dir), ".submitit"),
                             job_id=str(info["job_id"]))


def launch(sweep: Sweep, runs: Sequence[Run], root: str, options: LaunchOptions) -> dict[str, Any]:
    """Train every run not done yet, at most ``max_parallel`` at a time; return the sweep state.

    A run whose folder a live Slurm job owns (submitted by this sweep or an earlier invocation, on any node) is
    watched, never started again. Slurm jobs are watched through Slurm's state until they end: a job requeued
    (pre-emption, time limit, ``scontrol requeue``) is followed through its next start. A failed run is retried once
    (resuming if it wrote last.pth) and then reported failed; the others go on. Progress is logged per finished run
    and kept in ``ROOT/sweep_state.json``. SIGTERM/SIGINT: nothing more is started; local runs are asked to write
    last.pth and stop (resumable); Slurm jobs are left running and picked up by the next invocation.
    """
    os.makedirs(root, exist_ok=True)
    folder = os.path.join(root, ".submitit")
    on_slurm = options.executor == "slurm"
    poll_s = options.poll_s if options.poll_s is not None else (SLURM_POLL_S if on_slurm else 1.0)
    state = load_state(root)
    state.update({"sweep": sweep.path, "title": sweep.title, "executor": options.executor, "started": _now()})
    records: dict[str, dict[str, Any]] = state["runs"]
    queue: list[Run] = []
    active: dict[str, _Active] = {}
    for run in runs:
        status = run_state(run)
        record = records.setdefault(run.key, {"row": run.row, "seed": run.seed, "attempts": 0})
        record["output_dir"] = run.output_dir
        if status.state == "done":
            record["state"] = "done"
        elif (job := _owner_job(run)) is not None:
            record.update(state="running", job_id=str(job.job_id), executor="slurm")
            active[run.key] = _Active(job, run, None, time.time(), True)
            logger.info("%s: Slurm job %s owns it; watching it", run.key, job.job_id)
        elif status.state == "running":
            record["state"] = "running"
            logger.warning("%s: already running here (pid %d); left alone", run.key, status.pid)
        else:
            queue.append(run)
    save_state(root, state)
    total = len(queue) + len(active)
    logger.info("%s: %d run(s), %d to train (%s executor), output %s", sweep.path, len(runs), total,
                options.executor, root)
    if not total:
        return state
    executor = make_executor(options, folder, f"sweep-{sweep.stem}") if queue else None
    gpus_per_run = default_gpus_per_run(options) if queue else 0
    slots = _slots(options, gpus_per_run) if not on_slurm else [()] * (options.max_parallel or total)
    free = list(range(len(slots)))
    tries: dict[str, int] = {}
    finished = 0
    with _StopFlag() as stop:
        while queue or active:
            while queue and free and stop.signum is None:
                run, slot = queue.pop(0), free.pop(0)
                if not on_slurm:
                    executor.update_parameters(**local_slot_parameters(slots[slot]))
                resume = run_state(run).state == "partial"
                job = _submit(executor, run, folder, on_slurm)
                tries[run.key] = tries.get(run.key, 0) + 1
                record = records[run.key]
                record.update(state="running", attempts=record.get("attempts", 0) + 1, job_id=str(job.job_id),
                              executor=options.executor, command=run.command(resume=resume))
                active[run.key] = _Active(job, run, slot, time.time(), on_slurm)
                logger.info("started %s (attempt %d%s) as job %s", run.key, tries[run.key],
                            ", --resume" if resume else "", job.job_id)
                save_state(root, state)
            if stop.signum is not None and not stop.handled:
                stop.handled = True
                queue.clear()
                if on_slurm:
                    logger.warning("stopped by %s: Slurm jobs %s keep running; run the same command again to wait "
                                   "for them", signal.Signals(stop.signum).name,
                                   " ".join(str(a.job.job_id) for a in active.values()))
                    break
                logger.warning("stopped by %s: asking %d running run(s) to write last.pth and stop",
                               signal.Signals(stop.signum).name, len(active))
                _stop_runs(a.run for a in active.values())
            time.sleep(poll_s)
            states = slurm.job_states(a.job.job_id for a in active.values() if a.on_slurm)
            for key, entry in list(active.items()):
                slurm_state = states.get(str(entry.job.job_id)) if entry.on_slurm else None
                if (slurm.is_active(slurm_state) if entry.on_slurm else not entry.job.done()):
                    continue
                del active[key]
                if entry.slot is not None:
                    free.append(entry.slot)
                outcome = _outcome(entry.job, entry.run, slurm_state)
                record = records[key]
                record.update(outcome, seconds=round(time.time() - entry.start, 1))
                if outcome["state"] == "failed" and tries.get(key, 1) < MAX_ATTEMPTS and stop.signum is None:
                    logger.warning("%s failed (%s); retrying once", key, outcome["error"])
                    queue.append(entry.run)
                    save_state(root, state)
                    continue
                finished += 1
                run = entry.run
                detail = _metrics_line(run) if outcome["state"] == "done" else f" ({outcome['error']})"
                logger.info("[%d/%d] %s seed %d: %s in %.0f s%s -> %s", finished, total, run.row, run.seed,
                            outcome["state"], time.time() - entry.start, detail, run.output_dir)
                save_state(root, state)
    state["interrupted"] = stop.signum is not None
    save_state(root, state)
    return state


def _submit(executor: Any, run: Run, folder: str, on_slurm: bool) -> Any:
    """Submit the run's job; on Slurm, record in its folder that the job owns it. sbatch's refusal (an unknown
    partition, an invalid GPU request) is one error with sbatch's own message."""
    try:
        job = executor.submit(TrainRun(run))
    except FailedJobError as err:
        raise SweepError(f"Slurm refused the job of run {run.key}: {slurm.sbatch_error(str(err))} (check --partition, "
                         f"--gpus-per-run, --time, --mem, --account, --qos, --constraint)") from None
    if on_slurm:
        os.makedirs(run.output_dir, exist_ok=True)
        write_json(os.path.join(run.output_dir, JOB_FILE), {"job_id": str(job.job_id), "folder": folder,
                                                            "submitted": _now(), "host": socket.gethostname()})
    return job


# Slurm end states after which a partial run is resumable but is not retried at once: cancelled by someone.
SLURM_STOPPED = ("CANCELLED",)


def _outcome(job: Any, run: Run, slurm_state: str | None = None) -> dict[str, Any]:
    """What a finished job left: done, interrupted (stopped, resumable), running (another process owns the run) or
    failed. The run's folder decides whether it is done; ``slurm_state`` (the job's end state on Slurm) and the
    job's result say why not."""
    result: dict[str, Any] = {}
    returncode, error = None, ""
    if not job_has_result(job):
        error = f"job {job.job_id} ended{' ' + slurm_state if slurm_state else ''} without a result"
    else:
        try:
            result = job.result()
            returncode = result.get("returncode")
        except Exception as err:  # submitit re-raises the job's exception with its traceback; keep its last line
            error = (str(err).strip().splitlines() or [type(err).__name__])[-1]
    if result.get("running"):
        return {"state": "running", "returncode": None, "error": f"already running ({result['running']})"}
    status = run_state(run)
    if status.state == "done" and returncode in (0, None):
        return {"state": "done", "returncode": 0, "resumed": bool(result.get("resumed")), "error": ""}
    if slurm_state in SLURM_STOPPED:
        return {"state": "interrupted" if status.state == "partial" else "failed", "returncode": returncode,
                "error": f"Slurm job {job.job_id} ended {slurm_state}; resumable"}
    if slurm_state in ("TIMEOUT", "DEADLINE"):  # killed at its limit before it requeued itself: retried (resumes)
        return {"state": "failed", "returncode": returncode,
                "error": f"Slurm job {job.job_id} ended {slurm_state} (killed at its time limit before it could "
                         f"requeue; raise --time or --max-timeouts if this repeats)"}
    if returncode in INTERRUPT_CODES:
        return {"state": "interrupted", "returncode": returncode, "error": "stopped by a signal; resumable"}
    if not error:
        error = f"exit code {returncode}"
        reason = _last_error_line(str(job.paths.stderr))
        error += f": {reason}" if reason else f" (see {os.path.join(run.output_dir, 'train_log.txt')})"
    elif slurm_state and slurm_state != "COMPLETED":
        error = f"Slurm job {job.job_id} ended {slurm_state}: {error}"
    return {"state": "failed", "returncode": returncode, "error": error, "log": str(job.paths.stderr)}


def job_has_result(job: Any) -> bool:
    """Whether the job wrote its result file (a Slurm job killed at its limit writes none; ``job.result()`` would
    then wait for one)."""
    return job.paths.result_pickle.exists()


def _last_error_line(path: str) -> str:
    """The last ``error: ...`` line train_net.py wrote to the job's stderr, without the prefix."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.startswith("error: ")]
    except OSError:
        return ""
    return lines[-1].removeprefix("error: ") if lines else ""


def _stop_runs(runs: Iterable[Run]) -> None:
    """Ask each running train_net.py (of this machine) to write last.pth and stop."""
    for run in runs:
        pid = running_pid(run.output_dir)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
