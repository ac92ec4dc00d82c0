"""Export the evaluation feature extractor for one missing-spectrum setting to ONNX, and check it with onnxruntime.

    python tools/export_onnx.py --config_file configs/demo/TOP-ReID.yml TEST.WEIGHT logs/demo/best.pth \\
        [TEST.MISS r] [--output model.onnx] [--check-images 16] [--atol 1e-4]

Inputs of the graph: one image batch per available spectrum, named after it (``RGB``, ``NI``, ``TI``: float32
[B, 3, H, W], normalised as the test transform does), then ``camids`` (int64 [B]; absent from the graph when the
model has no camera embedding). Output ``feature``: the test feature [B, F] as ``model(images, camids, missing)``
returns it, before the L2 normalisation of the evaluation (``tools/search.py`` normalises). The batch size is
dynamic. The spectra the setting removes are no inputs: the method's handling of a missing spectrum (TOP-ReID's
CRM reconstruction, say) is inside the graph. The default file name is ``<method>_<setting>.onnx``, the method's
MODEL.META_ARCHITECTURE in lower case (``topreid_r.onnx``).

The check runs the exported file with onnxruntime (CPU) on ``--check-images`` real test images (a batch size other
than the one traced) and compares with PyTorch; the maximum absolute difference is logged and written with the
inputs to ``<output>.json``, and above ``--atol`` the tool fails, as it does when onnxruntime cannot run the graph on
that batch (a model whose test path branches on the batch's values, which the trace fixes). A model with an
``as_exported()`` context is compared within it: EDITOR's graph keeps, of tied selection scores, the lowest index
(ONNX TopK's rule) where ``torch.topk`` on CPU picks its own way, so the graph and the eager model differ on samples
with such ties. The graph is made by the TorchScript-based exporter (``dynamo=False``): the torch.export-based one
needs the onnxscript package and, on the demo model, took about 15 times longer (14 s against 0.8 s) and did not keep
the batch size dynamic.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from data.build import build_query_gallery  # noqa: E402
from processor.predictor import Predictor  # noqa: E402
from tools.common import (  # noqa: E402
    ToolError,
    first_line,
    output_path,
    parse_tool_args,
    run_tool,
    single_setting,
    tool_config,
    tool_parser,
)
from utils.io import write_json  # noqa: E402
from utils.spectra import missing_spectra  # noqa: E402

logger = logging.getLogger("tools.export_onnx")

TRACE_BATCH = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("Export the test feature extractor of one missing-spectrum setting to ONNX")
    parser.add_argument("--output", default="", help="ONNX file (default OUTPUT_DIR/<method>_<setting>.onnx)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--check-images", type=int, default=16, help="test images of the onnxruntime check")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed |ONNX - PyTorch| of the check")
    return parse_tool_args(parser, argv)


class FeatureExtractor(nn.Module):
    """``forward(*images, camids)`` -> test feature, images in the order of ``spectra`` (the available ones)."""

    def __init__(self, model: nn.Module, spectra: Sequence[str], missing: frozenset[str]) -> None:
        super().__init__()
        self.model = model
        self.spectra = tuple(spectra)
        self.missing = missing

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *images, camids = inputs
        tokens = self.model.backbone_tokens(dict(zip(self.spectra, images)), camids)
        return self.model.features_from_tokens(tokens, self.missing, cams=camids)


def export(extractor: FeatureExtractor, example: Sequence[torch.Tensor], path: str, opset: int) -> None:
    names = [*extractor.spectra, "camids"]
    with warnings.catch_warnings():
        # The TorchScript-based exporter announces its deprecation and warns about traced Python values.
        warnings.simplefilter("ignore")
        torch.onnx.export(extractor, tuple(example), path, dynamo=False, input_names=names, output_names=["feature"],
                          dynamic_axes={n: {0: "batch"} for n in [*names, "feature"]}, opset_version=opset)


def onnx_features(path: str, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """(features, input names of the graph): the ONNX file run with onnxruntime on CPU; inputs the graph does not
    have (unused camids) are left out."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(["feature"], {n: inputs[n] for n in names})[0], names


def onnxruntime_errors() -> tuple[type[Exception], ...]:
    """What onnxruntime raises when a graph cannot run on its inputs (its exception types derive from Exception)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "RuntimeException")
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def run(args: argparse.Namespace) -> float:
    cfg = tool_config(args)
    setting = single_setting(cfg)
    if args.check_images < 1:
        raise ToolError(f"--check-images {args.check_images}: must be 1 or more")
    predictor = Predictor.from_config(cfg, device="cpu")  # exported and checked on CPU
    spectra = predictor.available_spectra(setting)
    missing = missing_spectra(setting) & set(predictor.spectra)
    extractor = FeatureExtractor(predictor.model, spectra, missing).eval()

    check = build_query_gallery(cfg).records[:args.check_images]
    batches = list(predictor.loader(check, spectra))
    images = {s: torch.cat([b["images"][s] for b in batches]) for s in spectra}
    camids = torch.cat([b["camid"] for b in batches])
    example = [images[s][:TRACE_BATCH] for s in spectra] + [camids[:TRACE_BATCH]]

    path = output_path(cfg, args.output, f"{cfg.MODEL.META_ARCHITECTURE.lower()}_{setting}.onnx")
    export(extractor, example, path, args.opset)
    # A method whose graph breaks ties otherwise than eager PyTorch (EDITOR's top-k selections) is compared in the
    # context in which it computes what the graph computes.
    with torch.no_grad(), getattr(predictor.model, "as_exported", contextlib.nullcontext)():
        reference = extractor(*[images[s] for s in spectra], camids).numpy()
    try:
        result, graph_inputs = onnx_features(path, {**{s: images[s].numpy() for s in spectra},
                                                    "camids": camids.numpy()})
    except onnxruntime_errors() as err:
        raise ToolError(f"{path}: onnxruntime cannot run the exported graph on {len(check)} test images (traced on "
                        f"{TRACE_BATCH}): {first_line(err)}") from None
    diff = float(np.abs(result - reference).max())
    logger.info("wrote %s; onnxruntime vs PyTorch on %d test images: max abs difference %.3e (feature values up "
                "to %.3g)", path, len(check), diff, float(np.abs(reference).max()))
    write_json(os.path.splitext(path)[0] + ".json", {
        "onnx": os.path.abspath(path), "checkpoint": predictor.checkpoint, "setting": setting, "inputs": graph_inputs,
        "output": "feature", "feature_dim": int(reference.shape[1]), "input_size": list(cfg.INPUT.SIZE_TEST),
        "check_images": len(check), "max_abs_diff": diff, "opset": args.opset})
    if not diff <= args.atol:
        raise ToolError(f"{path}: ONNX and PyTorch features differ by up to {diff:.3e} (> --atol {args.atol:g})")
    return diff


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
