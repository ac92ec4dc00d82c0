"""tools/sweep.py --executor slurm on a real Slurm cluster (``bash tools/slurm/local_cluster.sh start``; .ci/run
starts it): two runs of the demo data, each with a two-minute time limit (Slurm's SIGUSR2 warning stops, saves and
requeues them), one also requeued by hand with ``scontrol requeue``, and a second sweep invocation started while
the jobs run. Both runs must end with the results of an uninterrupted run, train no step twice, and the sweeps must
submit no job twice and exit 0 with the table."""

import json
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from tests.helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CLUSTER_SCRIPT = "tools/slurm/local_cluster.sh"
_ITER = re.compile(r"epoch (\d+) iter (\d+)/\d+: loss (\S+),")
# What every run trains: the demo config, shortened (about a minute of training on one core, more than the time
# before Slurm's warning, so that every run is stopped at least once).
OVERRIDES = ["SOLVER.MAX_EPOCHS 4", "SOLVER.EVAL_PERIOD 2", "SOLVER.LOG_PERIOD 1", "SOLVER.CHECKPOINT_PERIOD 0",
             "DATALOADER.NUM_WORKERS 0"]
DEADLINE_S = 900


def _cluster_problem() -> str:
    """Why the cluster cannot run the test ('' when it can)."""
    if shutil.which("sinfo") is None:
        return "no sinfo on PATH"
    info = subprocess.run(["sinfo", "-h", "-p", "cpu", "-o", "%T"], capture_output=True, text=True)
    states = info.stdout.split()
    if info.returncode or not any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        return f"partition cpu not usable: {info.stdout.strip() or info.stderr.strip()}"
    acct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, text=True)
    if acct.returncode:
        return f"no Slurm accounting (sacct: {acct.stderr.strip()})"
    return ""


@pytest.fixture(scope="module")
def slurm_cluster():
    problem = _cluster_problem()
    if problem:
        pytest.fail(f"this test needs the single-node Slurm cluster: {problem}. Start it with "
                    f"`bash {CLUSTER_SCRIPT} start` (root; .ci/run does), or leave the test out with -m 'not slurm'")


def _iterations(path):
    return [m.groups() for m in _ITER.finditer(path.read_text())] if path.exists() else []


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _incarnation(log) -> str:
    """The log of the run's latest start (from its last "versions" line)."""
    text = log.read_text() if log.exists() else ""
    return text.rsplit("processor.trainer INFO: versions", 1)[-1] if "versions" in text else ""


def _requeue_while_training(log, job_id: str, deadline: float) -> bool:
    """``scontrol requeue`` the job once its current start is training, until one requeue stops the run (its
    SIGTERM; the time-limit warning may stop a start first, then the next start is tried)."""
    while time.time() < deadline:
        current = _incarnation(log)
        if len(_ITER.findall(current)) >= 2 and "interrupted by" not in current:
            subprocess.run(["scontrol", "requeue", job_id], capture_output=True)
            _wait_for(lambda: "interrupted by" in _incarnation(log), 120, "the requeued run to stop")
            if "interrupted by SIGTERM" in _incarnation(log):
                return True
        time.sleep(0.3)
    return False


def test_sweep_on_slurm_survives_requeue_and_time_limits(slurm_cluster, demo_root, tmp_path):
    sweep_file = tmp_path / "slurm_lifecycle.yml"
    sweep_file.write_text(yaml.safe_dump({
        "base": "configs/demo/TOP-ReID.yml", "seeds": [0], "overrides": OVERRIDES,
        "rows": {"requeued": {}, "timed": {}}}))  # two runs of one config: both must equal one reference
    root = tmp_path / "sweep"
    trailing = ["DATASETS.ROOT_DIR", demo_root]
    command = [sys.executable, "tools/sweep.py", str(sweep_file), "--executor", "slurm", "--partition", "cpu",
               "--time", "2", "--cpus-per-run", "1", "--poll", "2", "--output", str(root), *trailing]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # The uninterrupted reference, outside Slurm, while the jobs run.
    reference_dir = tmp_path / "reference"
    pairs = [token for item in OVERRIDES for token in item.split()]
    reference = subprocess.Popen([sys.executable, "train_net.py", "--config_file", "configs/demo/TOP-ReID.yml",
                                  "OUTPUT_DIR", str(reference_dir), "SOLVER.SEED", "0", *pairs, *trailing], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    requeued_dir, timed_dir = root / "requeued" / "seed0", root / "timed" / "seed0"
    _wait_for(lambda: (requeued_dir / ".sweep_job.json").exists() and (timed_dir / ".sweep_job.json").exists(),
              120, "both jobs submitted")
    # A second invocation while the jobs are queued or running: it must watch them, never submit them again.
    second = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job_id = json.loads((requeued_dir / ".sweep_job.json").read_text())["job_id"]
    assert _requeue_while_training(requeued_dir / "train_log.txt", job_id, deadline=time.time() + 600), \
        "no scontrol requeue landed while the run was training"

    try:
        first_out, _ = first.communicate(timeout=DEADLINE_S)
        second_out, _ = second.communicate(timeout=120)
        reference_out, _ = reference.communicate(timeout=300)
    finally:
        for proc in (first, second, reference):
            proc.kill()
        subprocess.run(["scancel", "--name", "sweep-slurm_lifecycle"], capture_output=True)
    assert reference.returncode == 0, reference_out
    assert first.returncode == 0, first_out
    assert second.returncode == 0, second_out

    expected_steps = _iterations(reference_dir / "train_log.txt")
    expected = json.loads((reference_dir / "results.json").read_text())["settings"]
    logs = {}
    for run_dir in (requeued_dir, timed_dir):
        logs[run_dir.parent.name] = (run_dir / "train_log.txt").read_text()
        assert _iterations(run_dir / "train_log.txt") == expected_steps, f"{run_dir}: a step trained twice or lost"
        results = json.loads((run_dir / "results.json").read_text())
        assert results["epoch"] == 4 and results["source"] == "training"
        assert results["settings"] == expected, run_dir
    assert "interrupted by SIGTERM" in logs["requeued"]  # scontrol requeue
    assert "interrupted by SIGUSR2" in logs["timed"]  # the time-limit warning
    assert logs["timed"].count("resumed from") >= 1 and logs["requeued"].count("resumed from") >= 1

    jobs = sorted(p.name.split("_")[0] for p in (root / ".submitit").glob("*_submission.sh"))
    assert len(jobs) == 2, f"jobs submitted: {jobs}"
    state = json.loads((root / "sweep_state.json").read_text())
    assert {k: v["state"] for k, v in state["runs"].items()} == {"requeued/seed0": "done", "timed/seed0": "done"}
    table = (root / "table.md").read_text()
    assert re.search(r"\| requeued \| 1/1 \|", table) and re.search(r"\| timed \| 1/1 \|", table), table
