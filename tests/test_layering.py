"""The package layers as the README draws them: model and inference never need the training code, and the component
packages (data, encoders, decoders) do not import each other in a cycle (offline jobs that combine them live in
nextgpt/jobs)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nextgpt"


def _imports(path: Path) -> set[str]:
    """Top-level nextgpt subpackage/module names imported anywhere in a file (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nextgpt."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("nextgpt."))
    return names


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        graph.setdefault(unit, set()).update(_imports(path) - {unit})
    return graph


def test_model_and_inference_do_not_import_training() -> None:
    graph = _graph()
    for unit in ("model", "inference", "checkpoints", "parameters", "losses", "serving", "eval", "compat"):
        assert "training" not in graph[unit], f"nextgpt/{unit} imports nextgpt/training"


def test_component_packages_form_no_cycle() -> None:
    graph = _graph()
    components = ("data", "encoders", "decoders")
    edges = {a: graph[a] & set(components) for a in components}

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in edges[start])

    assert not [a for a in components if reaches(a, a)], edges
    assert "jobs" not in set().union(*(graph[a] for a in components))
