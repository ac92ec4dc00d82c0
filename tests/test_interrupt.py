"""A real SIGTERM during training: the step finishes, last.pth is written, and resuming gives the same losses."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import tiny_opts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ITER = re.compile(r"epoch (\d+) iter (\d+)/\d+: loss (\S+),")
pytestmark = pytest.mark.slow  # train_net.py subprocesses


def _iterations(log_text):
    return [m.groups() for m in _ITER.finditer(log_text)]


def _train(opts, extra=()):
    return subprocess.Popen([sys.executable, "train_net.py", *extra, *opts], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


OVERRIDES = {"SOLVER.MAX_EPOCHS": "2", "SOLVER.EVAL_PERIOD": "0"}


@pytest.fixture(scope="module")
def reference_iterations(demo_root, tmp_path_factory):
    """(epoch, iteration, loss) of the uninterrupted train_net.py run, trained once for the module."""
    out = tmp_path_factory.mktemp("interrupt_reference")
    reference = _train(tiny_opts(demo_root, str(out), **OVERRIDES))
    assert reference.wait(timeout=600) == 0, reference.stdout.read()
    return _iterations((out / "train_log.txt").read_text())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_a_stop_signal_saves_and_resume_continues_identically(demo_root, tmp_path, reference_iterations, signum):
    """SIGTERM (pre-emption, scancel, scontrol requeue) and SIGUSR2 (Slurm's time-limit warning as submitit asks
    for it; its default action would kill the process at once)."""
    overrides = OVERRIDES
    expected = reference_iterations

    out = tmp_path / "run"
    proc = _train(tiny_opts(demo_root, str(out), **overrides))
    log = out / "train_log.txt"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.exists() and len(_iterations(log.read_text())) >= 2):
        time.sleep(0.2)
    proc.send_signal(signum)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 128 + signum, output
    assert "--resume" in output and (out / "last.pth").exists()
    done = _iterations(log.read_text())
    assert 2 <= len(done) < len(expected)

    resumed = _train(tiny_opts(demo_root, str(out), **overrides), extra=["--resume"])
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    assert _iterations(log.read_text()) == expected
