"""Shared fixtures: the demo data set generated once per session, and options for tiny CPU runs."""

import pytest


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    from data.demo import ensure_demo_dataset

    root = tmp_path_factory.mktemp("demo_data")
    ensure_demo_dataset(str(root))
    return str(root)


def tiny_opts(demo_root: str, output_dir: str, **overrides) -> list[str]:
    """KEY VALUE pairs for a small, fast CPU run on the demo data."""
    opts = {
        "DATASETS.NAMES": "demo", "DATASETS.ROOT_DIR": demo_root, "OUTPUT_DIR": output_dir,
        "MODEL.DEVICE": "cpu", "MODEL.TRANSFORMER_TYPE": "vit_tiny_patch16_224", "MODEL.PRETRAIN_CHOICE": "none",
        "MODEL.DROP_PATH": "0.1", "INPUT.SIZE_TRAIN": "[64,32]", "INPUT.SIZE_TEST": "[64,32]", "INPUT.PADDING": "4",
        "SOLVER.IMS_PER_BATCH": "16", "DATALOADER.NUM_INSTANCE": "4", "DATALOADER.NUM_WORKERS": "0",
        "SOLVER.MAX_EPOCHS": "1", "SOLVER.WARMUP_ITERS": "0", "SOLVER.BASE_LR": "0.01", "SOLVER.EVAL_PERIOD": "1",
        "SOLVER.LOG_PERIOD": "1", "SOLVER.CHECKPOINT_PERIOD": "0", "TEST.IMS_PER_BATCH": "64",
    }
    opts.update(overrides)
    return [x for kv in opts.items() for x in kv]


@pytest.fixture(scope="session")
def trained_run(demo_root, tmp_path_factory):
    """One short training run on the demo data (2 epochs), shared by the tests that need a checkpoint.

    Returns (output_dir, trainer, results); ``output_dir`` holds config.yaml, last.pth, best.pth, results.json, tb/.
    """
    from configs import load_config
    from processor.trainer import Trainer

    out = tmp_path_factory.mktemp("trained_run")
    trainer = Trainer(load_config(None, tiny_opts(demo_root, str(out), **{"SOLVER.MAX_EPOCHS": "2"})))
    results = trainer.train()
    return out, trainer, results
