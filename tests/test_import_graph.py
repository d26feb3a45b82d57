"""The modules of ``orchestrator/`` import one another without a circle.

A circle means no module of it can be read (or changed) without the others: the engine's
transition once lived in ``engine.py`` and ``kinds``/``fanout``/``control`` imported it
back. Every import counts, also those only for the type checker and those inside a
function, since a reader has to follow them all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "orchestrator"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the modules of the package it imports (relative or absolute)."""
    modules = {p.stem for p in root.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level == 1 or (node.level == 0 and base.split(".")[0] == PACKAGE):
                    sub = base.split(".")[1:] if node.level == 0 else base.split(".")
                    sub = [s for s in sub if s]
                    # `from . import a, b` imports modules a and b; `from .a import x`, a.
                    names = [sub[0]] if sub else [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names
                         if a.name.startswith(PACKAGE + ".")]
            graph[path.stem].update(n for n in names if n in modules and n != path.stem)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as a path ``[a, b, ..., a]``, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            found = visit(nxt)
            if found:
                return found
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start)
        if found:
            return found
    return None


def test_the_graph_sees_imports() -> None:
    # The walk finds what is known to be there, so an empty graph cannot pass for a clean one.
    graph = import_graph()
    assert "decide" in (ROOT / "engine.py").read_text()
    assert "records" in graph["engine"]
    assert "engine" in graph["runtime"]


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_orchestrator_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle in orchestrator/: " + " -> ".join(cycle or [])
