"""DeMo's ablation switches against the original code's flags, side by side in one process (CPU, fp32).

    .venv/bin/python benchmarks/check_demo_ablations.py --original PATH [--backbone clip|vit] [--batch 8]

``--original`` is a checkout of the original DeMo code (github.com/924973292/DeMo); nothing is downloaded. For each
combination of ``MODEL.DEMO.PIFE / HDM / ATMOE`` that the original can run (its ``MODEL.GLOBAL_LOCAL / HDM / ATM``;
ATM without HDM crashes there), both models are built as in ``benchmarks/bench_demo.py`` and hold the same weights
(the original's initialisation through this project's key map for original checkpoints, loaded strictly, so an
ablated model has exactly the original's parameters). Compared: the test features of the seven missing-spectrum
settings (the original's ``return_pattern`` 3; the project's ``processor.inference.batch_features``) and the training
loss of one batch (the original's ``make_loss`` on each (score, feature) pair plus its MoE loss; the project's
``loss.build_loss`` on the model's heads), with every dropout at 0 so that the two draw no random numbers
(HDM's attention dropout 0.1 is hard-coded in the original; ``--backbone vit`` also sets drop path 0).

The reference vectors in ``../shared/reference`` cover the full model only; this script is how the switches were
checked (results in ``benchmarks/RESULTS.md``). It needs the original's checkout, so it is not part of the test suite;
tests/test_demo_ablations.py tests the switches' structure without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import bench_demo as bd  # noqa: E402
from configs import load_config  # noqa: E402
from loss import build_loss  # noqa: E402
from modeling import build_model  # noqa: E402
from modeling.methods.demo_convert import convert_demo_state_dict  # noqa: E402
from processor.inference import batch_features, missing_by_setting  # noqa: E402

# (PIFE, HDM, ATMoE): the paper's ablation rows that have code (baseline, +PIFE, +PIFE+HDM, all) and the other two
# combinations the original runs.
COMBINATIONS = [(False, False, False), (True, False, False), (True, True, False), (True, True, True),
                (False, True, False), (False, True, True)]


def no_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.MultiheadAttention):
            module.dropout = 0.0
        elif isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def check(original: object, backbone: str, batch: int, pife: bool, hdm: bool, atmoe: bool) -> dict[str, float]:
    cfg = original.cfg.clone()
    cfg.defrost()
    cfg.merge_from_file(str(original.root / "configs" / "RGBNT201" / "DeMo.yml"))
    cfg.merge_from_list(["MODEL.TRANSFORMER_TYPE", bd.ORIGINAL_TYPES[backbone], "MODEL.DEVICE", "cpu",
                         "SOLVER.IMS_PER_BATCH", batch, "DATALOADER.NUM_INSTANCE", bd.PER_ID, "MODEL.DROP_PATH", 0.0,
                         "MODEL.GLOBAL_LOCAL", pife, "MODEL.HDM", hdm, "MODEL.ATM", atmoe])
    cfg.freeze()
    cuda = bd.CudaCalls()
    theirs = bd.build_original(original, cfg, cuda)
    ours_cfg = load_config(str(ROOT / bd.CONFIGS[backbone]), [
        "MODEL.PRETRAIN_CHOICE", "none", "MODEL.DEVICE", "cpu", "MODEL.DROP_PATH", "0.0",
        "MODEL.DEMO.PIFE", str(pife), "MODEL.DEMO.HDM", str(hdm), "MODEL.DEMO.ATMOE", str(atmoe)])
    ours = build_model(ours_cfg, bd.NUM_CLASSES, bd.NUM_CAMERAS)
    ours.load_state_dict(convert_demo_state_dict(theirs.state_dict()), strict=True)
    images, pids, cams = bd.synthetic_batch(batch)
    views = torch.zeros_like(cams)

    theirs.eval()
    ours.eval()
    with torch.no_grad():
        mine = batch_features(ours, {"images": images, "camid": cams}, torch.device("cpu"),
                              missing_by_setting(ours, bd.MISS_SETTINGS))
        worst = 0.0
        with cuda:
            for setting in bd.MISS_SETTINGS:
                theirs.miss_type = setting
                ref = theirs(dict(images), cam_label=cams, view_label=views, return_pattern=3)
                worst = max(worst, float((ref - mine[setting]).abs().max()))

    theirs.train()
    ours.train()
    no_dropout(theirs)
    no_dropout(ours)
    with torch.no_grad(), cuda:
        loss_fn, _ = original.make_loss(cfg, num_classes=bd.NUM_CLASSES)
        out = theirs(dict(images), label=pids, cam_label=cams, view_label=views)
        pairs = len(out) - len(out) % 2
        ref_loss = sum(loss_fn(score=out[i], feat=out[i + 1], target=pids, target_cam=cams) for i in range(0, pairs, 2))
        if len(out) % 2:
            ref_loss = ref_loss + out[-1]
        loss, _ = build_loss(ours_cfg, bd.NUM_CLASSES)(ours(images, cams), pids)
    return {"feature_width": int(mine["nothing"].shape[1]), "max_feature_difference": worst,
            "loss": float(loss), "original_loss": float(ref_loss),
            "loss_relative_difference": abs(float(loss) - float(ref_loss)) / abs(float(ref_loss))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", required=True, help="checkout of github.com/924973292/DeMo")
    parser.add_argument("--backbone", choices=sorted(bd.CONFIGS), default="clip")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    original = bd.import_original(bd.check_original(args.original))
    print(f"DeMo ablation switches vs the original's flags, {args.backbone} backbone, batch {args.batch}, CPU fp32")
    for pife, hdm, atmoe in COMBINATIONS:
        r = check(original, args.backbone, args.batch, pife, hdm, atmoe)
        print(f"  PIFE {pife!s:5} HDM {hdm!s:5} ATMOE {atmoe!s:5}: feature {r['feature_width']}, seven settings "
              f"within {r['max_feature_difference']:.1e}; training loss {r['loss']:.6f} vs {r['original_loss']:.6f} "
              f"(relative {r['loss_relative_difference']:.1e})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
