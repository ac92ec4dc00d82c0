"""What the side-by-side benchmarks of a method against its original code share (``bench_demo.py``,
``bench_editor.py``): the original code imported and run in this process beside this project's, and both sides timed
over rounds that alternate which goes first, with the figures and their report.

- :func:`check_checkout`: ``--original PATH`` as a checkout of the original code; a one-line message otherwise (the
  benchmarks download nothing).
- :func:`original_import_path`: the original's packages share names with this project's (``modeling``, ``layers``,
  ``solver``...); while inside, they import by their own names with the project's modules set aside in
  ``sys.modules``, this folder off ``sys.path`` and the working directory in the checkout, and packages its imports
  name but the measured code never runs are stood in by empty modules. On leaving, the project's modules are back.
- :class:`CudaCalls`: while inside, ``Tensor.cuda`` / ``Module.cuda`` return their object and ``.to`` drops a CUDA
  device argument (the original's CUDA calls on a machine without CUDA); the calls are counted.
- :func:`alternate_rounds`, :func:`round_figures`, :func:`comparison_lines`: the timing and its report.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent

# Top-level packages of this project whose names the original codes use too.
SHARED_NAMES = ("config", "data", "engine", "layers", "modeling", "solver", "tools", "utils")


class MissingOriginal(SystemExit):
    """The original code is not where --original says (or was not given)."""


def check_checkout(path: str | None, needed: Sequence[str], script: str, what: str) -> Path:
    """``path`` as a checkout of the original code ``what`` (e.g. "DeMo code (github.com/924973292/DeMo)"), which
    must hold the files ``needed``; exits with a one-line message naming ``script`` otherwise."""
    if not path:
        raise MissingOriginal(f"{script}: --original PATH is required: a checkout of the original {what}; this "
                              "benchmark downloads nothing")
    root = Path(path).resolve()
    absent = [n for n in needed if not (root / n).is_file()]
    if absent:
        name = what.split(" (", 1)[0]
        raise MissingOriginal(f"{script}: --original {path} is not a checkout of the original {name} (no "
                              f"{', '.join(absent)})")
    return root


def stand_in(name: str, attributes: Mapping[str, Any], script: str) -> types.ModuleType:
    """An empty module ``name`` with ``attributes``; a None attribute is a function that raises if called."""
    module = types.ModuleType(name, f"stand-in for {name}, which the measured code never runs ({script})")

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{name} is not installed; {script} stands in an empty module for it")

    for key, value in attributes.items():
        setattr(module, key, unavailable if value is None else value)
    return module


@contextlib.contextmanager
def original_import_path(root: Path, stand_ins: Mapping[str, Mapping[str, Any]], script: str,
                         shared_names: Collection[str] = SHARED_NAMES,
                         always_stand_in: Collection[str] = ()) -> Iterator[None]:
    """While inside: the original's packages at ``root`` import by their own names (this project's modules of the
    ``shared_names`` set aside in ``sys.modules``), and each module of ``stand_ins`` (name -> attributes) whose
    top-level package is not installed, or that is in ``always_stand_in`` (a package the checkout bundles, whose own
    imports are missing), is an empty stand-in. On leaving, the project's modules are back; the original's stay
    reachable through the objects imported inside."""

    def is_shared(name: str) -> bool:
        return name.split(".", 1)[0] in shared_names

    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if is_shared(k)}
    names = [name for name in stand_ins if name.split(".", 1)[0] in always_stand_in
             or importlib.util.find_spec(name.split(".", 1)[0]) is None]
    replaced = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    for name in names:
        sys.modules[name] = stand_in(name, stand_ins[name], script)
    path, cwd = list(sys.path), os.getcwd()
    # The project's folder leaves the path too: an original's packages may lack an __init__.py, and a regular
    # package of the same name anywhere on the path would be found before them. The working directory is the
    # original's (modules of DeMo's append "." to the path).
    sys.path[:] = [str(root)] + [p for p in path if Path(p or ".").resolve() != ROOT]
    os.chdir(root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # timm's deprecated import paths in the original
            yield
    finally:
        os.chdir(cwd)
        sys.path[:] = path
        for name in [k for k in sys.modules if is_shared(k)] + names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
        sys.modules.update(replaced)


class CudaCalls:
    """While inside: ``Tensor.cuda`` and ``Module.cuda`` return their object, and ``Tensor.to`` / ``Module.to`` drop
    a CUDA device argument (the original's CUDA calls on a machine without CUDA). ``hits`` counts the neutralised calls
    by kind."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self._saved: dict[tuple[type, str], Any] = {}

    def _count(self, what: str) -> None:
        self.hits[what] = self.hits.get(what, 0) + 1

    @staticmethod
    def _is_cuda(value: Any) -> bool:
        return (isinstance(value, str) and value.startswith("cuda")) or (
            isinstance(value, torch.device) and value.type == "cuda")

    def __enter__(self) -> CudaCalls:
        tensor_to, module_to = torch.Tensor.to, nn.Module.to

        def tensor_cuda(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            self._count("Tensor.cuda()")
            return tensor

        def module_cuda(module: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
            self._count("Module.cuda()")
            return module

        def without_cuda(kind: str, call: Callable, obj: Any, args: tuple, kwargs: dict) -> Any:
            if any(self._is_cuda(a) for a in args) or self._is_cuda(kwargs.get("device")):
                self._count(f"{kind}.to(cuda)")
                args = tuple(a for a in args if not self._is_cuda(a))
                kwargs = {k: v for k, v in kwargs.items() if not (k == "device" and self._is_cuda(v))}
                if not args and not kwargs:
                    return obj
            return call(obj, *args, **kwargs)

        patches = {(torch.Tensor, "cuda"): tensor_cuda, (nn.Module, "cuda"): module_cuda,
                   (torch.Tensor, "to"): lambda t, *a, **k: without_cuda("Tensor", tensor_to, t, a, k),
                   (nn.Module, "to"): lambda m, *a, **k: without_cuda("Module", module_to, m, a, k)}
        for (owner, name), patch in patches.items():
            self._saved[(owner, name)] = owner.__dict__.get(name)  # None: inherited (Tensor.cuda is TensorBase's)
            setattr(owner, name, patch)
        return self

    def __exit__(self, *exc: Any) -> None:
        for (owner, name), original in self._saved.items():
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()


# ----------------------------------------------------------------------------------------------------------------------
# Measuring.

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synthetic_batch(batch: int, size: Sequence[int], spectra: Sequence[str], per_id: int, num_cameras: int,
                    seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Normalised-image-like inputs of the spectra, identities in P x K blocks (K = ``per_id``), cameras in turn."""
    g = torch.Generator().manual_seed(seed)
    images = {s: torch.randn(batch, 3, *size, generator=g) for s in spectra}
    return images, torch.arange(batch) // per_id, torch.arange(batch) % num_cameras


Timings = dict[str, dict[str, list[float]]]  # kind -> side -> seconds of each round


def alternate_rounds(sides: Sequence[Any], kinds: Mapping[str, Callable[[Any], Any]], repeats: int,
                     log: Callable[[str], None]) -> tuple[Timings, Timings, list[tuple[float, float, float]]]:
    """``repeats`` rounds; in each, every kind (``kinds[kind](side)`` runs it) for both sides, the first side first in
    even rounds and last in odd ones. Returns (wall seconds, process CPU seconds, the load average before every round
    and after the last). Each side has a ``name``."""
    wall: Timings = {k: {side.name: [] for side in sides} for k in kinds}
    cpu: Timings = {k: {side.name: [] for side in sides} for k in kinds}
    loads: list[tuple[float, float, float]] = []
    for r in range(repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        loads.append(os.getloadavg())
        for kind, run in kinds.items():
            for side in order:
                t, c = time.perf_counter(), time.process_time()
                run(side)
                wall[kind][side.name].append(time.perf_counter() - t)
                cpu[kind][side.name].append(time.process_time() - c)
        log(f"round {r + 1}/{repeats} (load {loads[-1][0]:.2f}): " + ", ".join(
            f"{kind} {name} {v[-1]:.2f} s" for kind, by_side in wall.items() for name, v in by_side.items()))
    loads.append(os.getloadavg())
    return wall, cpu, loads


def round_figures(wall: Timings, cpu: Timings, batch: int) -> dict[str, dict[str, Any]]:
    """Per kind: samples/s of each side (best and median of the rounds; the batch over the seconds) and the ratios of
    the project's rate over the original's (best, median, per round, median of the per-round ratios, best process
    CPU time)."""
    figures: dict[str, dict[str, Any]] = {}
    for kind, sides in wall.items():
        entry: dict[str, Any] = {}
        for name, seconds in sides.items():
            entry[name] = {"seconds": seconds, "cpu_seconds": cpu[kind][name],
                           "best_samples_per_s": batch / min(seconds),
                           "median_samples_per_s": batch / statistics.median(seconds)}
        entry["ratio_best"] = entry["project"]["best_samples_per_s"] / entry["original"]["best_samples_per_s"]
        entry["ratio_median"] = entry["project"]["median_samples_per_s"] / entry["original"]["median_samples_per_s"]
        # The two sides of a round ran one after the other, under about the same load: their ratio is the least
        # disturbed by other work on the machine.
        entry["ratio_per_round"] = [o / p for o, p in zip(sides["original"], sides["project"])]
        entry["ratio_median_of_rounds"] = statistics.median(entry["ratio_per_round"])
        entry["ratio_best_cpu_time"] = min(cpu[kind]["original"]) / min(cpu[kind]["project"])
        figures[kind] = entry
    return figures


def load_range(r: Mapping[str, Any]) -> str:
    """The 1-minute load averages of a run, lowest-highest."""
    ones = [x[0] for x in r["load_average_per_round"]]
    return f"{min(ones):.2f}-{max(ones):.2f}"


def comparison_lines(r: Mapping[str, Any], kinds: Mapping[str, str]) -> list[str]:
    """One line per kind (key of ``r`` -> what it measures): both sides' samples/s and the ratios."""
    lines = []
    for kind, what in kinds.items():
        f = r[kind]
        rounds = ", ".join(f"{x:.2f}" for x in f["ratio_per_round"])
        lines.append(f"  {what}: project {f['project']['best_samples_per_s']:.2f} samples/s (median "
                     f"{f['project']['median_samples_per_s']:.2f}), original {f['original']['best_samples_per_s']:.2f} "
                     f"(median {f['original']['median_samples_per_s']:.2f}): {f['ratio_best']:.2f}x best, "
                     f"{f['ratio_median']:.2f}x median; per round {rounds} (median "
                     f"{f['ratio_median_of_rounds']:.2f}x); process CPU time, best: {f['ratio_best_cpu_time']:.2f}x")
    return lines


def machine_figures() -> dict[str, Any]:
    """What a result records of the machine: torch's version, the CPU, its cores, the date."""
    return {"torch": torch.__version__, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}
