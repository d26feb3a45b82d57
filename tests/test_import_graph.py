"""The modules of ``orchestrator/`` import one another without a circle.

A circle means no module of it can be read (or changed) without the others: the engine's
transition once lived in ``engine.py`` and ``kinds``/``fanout``/``control`` imported it
back. Every import counts, also those only for the type checker and those inside a
function, since a reader has to follow them all the same.
"""

from __future__ import annotations

import ast
import subprocess
import sys
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


# -- contracts are only contracts; transport is only plumbing ----------------------------

REPO = Path(__file__).resolve().parent.parent
#: What a module of contracts/ may not import: I/O (nats-py, FastStream, HTTP, telemetry)
#: and every package built on contracts.
CONTRACTS_REFUSE = frozenset({"nats", "faststream", "httpx", "opentelemetry", "transport",
                              "natsflow", "orchestrator", "gateway"})
#: What transport/ may not import: the parties built on it.
TRANSPORT_REFUSE = frozenset({"natsflow", "orchestrator", "gateway"})


def imported_roots(path: Path, package: str) -> dict[str, int]:
    """Top-level packages a module imports (relative imports resolved) -> first line."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        roots: list[str] = []
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            # A relative import stays inside the module's own package (a relative import
            # climbing out of it is refused by Python for a top-level package anyway).
            roots = [package] if node.level else [(node.module or "").split(".")[0]]
        for root in roots:
            found.setdefault(root, node.lineno)
    return found


def forbidden_imports(package: str, refused: frozenset[str]) -> list[str]:
    """``path:line imports X`` for every refused import under ``package/``."""
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for root, line in imported_roots(path, package).items():
            if root in refused:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {root}")
    return bad


def test_the_import_check_sees_imports(tmp_path: Path) -> None:
    # It finds what it must refuse, also inside a function and behind TYPE_CHECKING.
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        "from typing import TYPE_CHECKING\nimport nats.errors\nif TYPE_CHECKING:\n"
        "    from transport.keys import KeyStore\ndef f():\n    from . import x\n")
    roots = imported_roots(tmp_path / "pkg" / "m.py", "pkg")
    assert {"nats", "transport", "pkg", "typing"} <= roots.keys()
    # And the real tree is seen: transport imports nats-py and contracts.
    assert "nats" in imported_roots(REPO / "transport" / "publish.py", "transport")
    assert "contracts" in imported_roots(REPO / "transport" / "keys.py", "transport")


def test_contracts_import_no_io_and_nothing_built_on_them() -> None:
    bad = forbidden_imports("contracts", CONTRACTS_REFUSE)
    assert not bad, "contracts/ is the wire only:\n" + "\n".join(bad)


def test_transport_imports_no_party_built_on_it() -> None:
    bad = forbidden_imports("transport", TRANSPORT_REFUSE)
    assert not bad, "transport/ is plumbing only:\n" + "\n".join(bad)


def test_the_services_start_without_what_they_may_never_use() -> None:
    # contracts/language/_cel.py loads CEL's engine without its REPL (typer, rich,
    # prompt_toolkit: ~0.6 s of CPU at every process start on this machine), and
    # jsonschema is imported on the first schema; both still work when used, and
    # `import cel` after it still gives the whole package.
    script = (
        "import sys, orchestrator.service, gateway.app\n"
        "from contracts.language.expr import evaluate\n"
        "loaded = sorted(m for m in ('cel', 'cel.cli', 'prompt_toolkit', 'jsonschema')\n"
        "                if m in sys.modules)\n"
        "assert not loaded, loaded\n"
        "assert evaluate('input.n * 2', {'input': {'n': 21}}) == 42\n"
        "from contracts.language.schema import check_schema, validate_instance\n"
        "check_schema({'type': 'integer'}, field='f')\n"
        "validate_instance(1, {'type': 'integer'}, field='f')\n"
        "import cel\n"
        "assert cel.compile('1 + 1') is not None and cel.evaluate('2 * 3') == 6\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
