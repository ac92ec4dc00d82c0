"""What the sweep asks Slurm directly: the state of its jobs, whether a partition has GPUs, sbatch's own error.

Job states come from ``squeue`` first (it knows pending, running, requeued and recently ended jobs and needs no
accounting), then from ``sacct`` for jobs that have left the queue. Without accounting a job that has left the queue
is ``ENDED``: the sweep then reads the outcome from the run's folder, and never waits forever for a job that is gone.
submitit's own ``Job.done()`` is not used for Slurm jobs: it says done as soon as a result file exists, which a job
stopped by ``scontrol requeue`` writes before Slurm starts it again.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable

# States in which a job still owns its run: it is queued, running, or about to run again.
ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "COMPLETING",
                    "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"})
ENDED = "ENDED"  # left the queue, and no accounting to say how
TIMEOUT_S = 60


def _run(command: list[str]) -> subprocess.CompletedProcess | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None


def job_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Job id -> its Slurm state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``TIMEOUT``, ``CANCELLED``, ...;
    :data:`ENDED` for a job no longer known to the queue nor to accounting)."""
    ids = sorted({str(j) for j in job_ids})
    if not ids:
        return {}
    states: dict[str, str] = {}
    queue = _run(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T"])
    if queue is not None and queue.returncode == 0:
        for line in queue.stdout.splitlines():
            job, _, state = line.strip().partition("|")
            if job in ids and state:
                states[job] = state.split()[0]
    left = [j for j in ids if j not in states]
    if left:
        acct = _run(["sacct", "-n", "-X", "-P", "-j", ",".join(left), "-o", "JobID,State"])
        if acct is not None and acct.returncode == 0:
            for line in acct.stdout.splitlines():  # the last line of a job id is its latest incarnation
                job, _, state = line.strip().partition("|")
                if job in left and state:
                    states[job] = state.split()[0]
    return {j: states.get(j, ENDED) for j in ids}


def is_active(state: str) -> bool:
    return state in ACTIVE


def partition_has_gpus(partition: str | None) -> bool | None:
    """Whether the partition (the default one when ``None``) offers GPUs (a ``gpu`` generic resource on any of its
    nodes); ``None`` when ``sinfo`` cannot say."""
    command = ["sinfo", "-h", "-o", "%P|%G"] + (["-p", partition] if partition else [])
    info = _run(command)
    if info is None or info.returncode != 0 or not info.stdout.strip():
        return None
    rows = [line.strip().partition("|") for line in info.stdout.splitlines() if line.strip()]
    if not partition:
        rows = [r for r in rows if r[0].endswith("*")] or rows  # the default partition is starred
    return any("gpu" in gres for _, _, gres in rows)


def partitions() -> list[str] | None:
    """The partition names (``None`` when ``sinfo`` cannot say)."""
    info = _run(["sinfo", "-h", "-o", "%P"])
    if info is None or info.returncode != 0:
        return None
    return sorted({line.strip().rstrip("*") for line in info.stdout.splitlines() if line.strip()})


def sbatch_error(text: str) -> str:
    """sbatch's own message out of a failed submission's output (its ``error:`` lines, joined)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]
    return "; ".join(dict.fromkeys(errors)) or (lines[-1] if lines else "sbatch failed without a message")
