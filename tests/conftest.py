"""Session-wide settings and shared fixtures.

One thread per process for the whole run: on a 2-core machine shared with other jobs, PyTorch's default of one
intra-op thread per core oversubscribes the cores and a tiny training run takes several times longer. The
environment variables are set before any test runs, so the ``train_net.py``/tool subprocesses and data-loader
workers inherit them.
"""

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import register_toy_backbone, tiny_opts  # noqa: E402

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # already set, or inter-op work has started (another plugin imported and used torch)
    pass


@pytest.fixture
def two_threads():
    """Two intra-op threads for one test (code that sizes a thread pool from ``torch.get_num_threads()``),
    restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    from data.demo import ensure_demo_dataset

    root = tmp_path_factory.mktemp("demo_data")
    ensure_demo_dataset(str(root))
    return str(root)


def _train(demo_root: str, out, **overrides: str):
    from configs import load_config
    from processor.trainer import Trainer

    trainer = Trainer(load_config(None, tiny_opts(demo_root, str(out), **{"SOLVER.MAX_EPOCHS": "2", **overrides})))
    results = trainer.train()
    return out, trainer, results


@pytest.fixture(scope="session")
def trained_run(demo_root, tmp_path_factory):
    """One short training run of the toy backbone on the demo data (2 epochs), shared by the in-process tests that
    need a checkpoint.

    Returns (output_dir, trainer, results); ``output_dir`` holds config.yaml, last.pth, best.pth, results.json, tb/.
    """
    backbone = register_toy_backbone()
    return _train(demo_root, tmp_path_factory.mktemp("trained_run"), **{"MODEL.TRANSFORMER_TYPE": backbone})


@pytest.fixture(scope="session")
def vit_tiny_run(demo_root, tmp_path_factory):
    """``trained_run`` with vit_tiny_patch16_224: for tests that hand the checkpoint to a ``test_net.py`` or tool
    subprocess (which cannot build the toy backbone) or check vit_tiny's feature width (3 x 192)."""
    return _train(demo_root, tmp_path_factory.mktemp("vit_tiny_run"))
