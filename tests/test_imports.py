"""The import graph of the repository: no cycles (between packages or between modules) and no upward imports.

Every ``.py`` file is parsed with ``ast`` and every import counted, also those inside functions (a lazy import
still couples two packages, and a cycle made lazy only fails later, at call time). An import is an edge to the
most specific first-party module it names: ``from a.b import c`` points at ``a.b.c`` when that is a module, else
at ``a.b``; third-party imports are ignored. A module's package is its top-level folder; the entry scripts are
packages of their own.

Layers, lowest first; a package may import only packages of a strictly lower layer, so packages of one layer never
import each other (``data`` and ``modeling`` in particular):

    0 utils                 logging, checkpoints, errors, spectra: depends on nothing of ours
    1 layers                small reusable blocks
    2 modeling, data        the model and the input pipeline, independent of each other
    3 configs               validates against the data set and backbone registries, so above both
    4 evaluation            distance, rank metrics, re-ranking, the evaluator
    5 loss, solver          loss/triplet.py takes its distance from evaluation/distance.py (written once), so
                            evaluation sits one layer below the losses rather than beside them
    6 processor             training loop and feature extraction
    7 experiments           sweeps: many runs of train_net.py, their states and tables
    8 tools                 command-line tools (tools/sweep.py drives experiments/); a tool imports
                            tools/common.py, not another tool
    9 benchmarks            benchmarks/run.py times tools/count_params.count_flops, so above the tools
    9 train_net, test_net   thin entry points
   10 tests                 may import anything
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".cache", "logs", "build", "dist"}

LAYERS: dict[str, int] = {
    "utils": 0,
    "layers": 1,
    "modeling": 2,
    "data": 2,
    "configs": 3,
    "evaluation": 4,
    "loss": 5,
    "solver": 5,
    "processor": 6,
    "experiments": 7,
    "tools": 8,
    "benchmarks": 9,
    "train_net": 9,
    "test_net": 9,
    "tests": 10,
}

Edge = tuple[str, str]



def find_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the repository (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts:
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a first-party module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def module_imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported first-party module, line) for every import statement of a module, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                       for alias in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != name:
                found.append((resolved, node.lineno))
    return found


def import_graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[Edge, str]]:
    """Module graph and, for every edge, the first place it occurs (``path:line``)."""
    modules = find_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    where: dict[Edge, str] = {}
    for name, path in modules.items():
        for target, line in module_imports(name, path, modules):
            graph[name].add(target)
            where.setdefault((name, target), f"{path.relative_to(root)}:{line}")
    return graph, where


def package_of(module: str) -> str:
    return module.split(".")[0]


def package_graph(graph: dict[str, set[str]], where: dict[Edge, str]) -> tuple[dict[str, set[str]], dict[Edge, str]]:
    packages: dict[str, set[str]] = defaultdict(set)
    pwhere: dict[Edge, str] = {}
    for src, targets in graph.items():
        packages[package_of(src)]
        for dst in targets:
            a, b = package_of(src), package_of(dst)
            if a != b:
                packages[a].add(b)
                pwhere.setdefault((a, b), f"{src} -> {dst} ({where[(src, dst)]})")
    return dict(packages), pwhere


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _cycle_report(graph: dict[str, set[str]], where: dict[Edge, str], kind: str) -> str:
    lines = []
    for component in cycles(graph):
        members = set(component)
        lines.append(f"{kind} cycle among {', '.join(component)}:")
        lines += [f"  {src} -> {dst}: {where[(src, dst)]}" for src in component for dst in sorted(graph[src])
                  if dst in members]
    return "\n".join(lines)


def upward_edges(packages: dict[str, set[str]]) -> list[Edge]:
    return sorted((a, b) for a, targets in packages.items() for b in targets if LAYERS[b] >= LAYERS[a])


@pytest.fixture(scope="module")
def repo_graph() -> tuple[dict[str, set[str]], dict[Edge, str]]:
    return import_graph()


def test_every_package_has_a_layer(repo_graph):
    packages, _ = package_graph(*repo_graph)
    unknown = sorted(set(packages) - set(LAYERS))
    assert not unknown, f"packages missing from the layer table of tests/test_imports.py: {unknown}"


def test_the_graph_sees_function_level_imports(repo_graph):
    graph, _ = repo_graph
    assert "data.datasets" in graph["configs.rules"]  # imported inside a validation function


def test_no_cycles_between_packages(repo_graph):
    packages, pwhere = package_graph(*repo_graph)
    report = _cycle_report(packages, pwhere, "package")
    assert not report, "import cycles between packages:\n" + report


def test_no_cycles_between_modules(repo_graph):
    graph, where = repo_graph
    report = _cycle_report(graph, where, "module")
    assert not report, "import cycles between modules:\n" + report


def test_no_upward_imports(repo_graph):
    packages, pwhere = package_graph(*repo_graph)
    bad = [edge for edge in upward_edges(packages) if edge[0] in LAYERS and edge[1] in LAYERS]
    message = "\n".join(f"  {a} (layer {LAYERS[a]}) -> {b} (layer {LAYERS[b]}): {pwhere[(a, b)]}" for a, b in bad)
    assert not bad, "imports from a package to one of the same or a higher layer:\n" + message


def test_tools_import_no_other_tool_than_common(repo_graph):
    """Tools share code through tools/common.py (and the library packages), never through another tool."""
    graph, where = repo_graph
    edges = {(src, dst) for src, targets in graph.items() if package_of(src) == "tools" for dst in targets
             if package_of(dst) == "tools" and dst not in {"tools", "tools.common"}}
    new = sorted(edges)
    assert not new, "tools importing other tools:\n" + "\n".join(f"  {a} -> {b}: {where[(a, b)]}" for a, b in new)
