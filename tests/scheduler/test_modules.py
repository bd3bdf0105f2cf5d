"""The scheduler's modules form no import cycle, not even one hidden behind
``TYPE_CHECKING``: a part gets what it needs through its constructor."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "batchops" / "scheduler"


def imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            if node.module == "batchops.scheduler":
                found |= {a.name for a in node.names}
            elif node.module.startswith("batchops.scheduler."):
                found.add(node.module.split(".")[2])
        graph[path.stem] = found
    return graph


def test_no_module_of_the_scheduler_imports_itself_back() -> None:
    graph = imports()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(" -> ".join([*path[path.index(module) :], module]))
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []
