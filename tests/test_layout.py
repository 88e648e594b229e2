"""The package layout shows the architecture (issue 29 item 5): a short top level, no import
circle among sfpo_lab's modules, no library file past ~400 lines. Static checks (AST, no
imports of sfpo_lab), about a second."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "sfpo_lab"
MAX_TOP_LEVEL = 12  # __init__.py + about 10 concepts (docs/architecture in the README)
MAX_LINES = 420  # STYLE.md: "files under ~400 lines"


def _modules() -> dict[str, Path]:
    """Dotted name -> file for every module of sfpo_lab (a package is its ``__init__``)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported, plus those under ``if TYPE_CHECKING:``
    (any ``if``/``try``/``with`` at module level; function and class bodies are skipped)."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)
    return found


def _edges(name: str, path: Path, known: set[str]) -> set[str]:
    """The sfpo_lab modules ``name`` imports at module level (``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = name.split(".")
            anchor = anchor if is_pkg else anchor[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.add(sub if sub in known else base)
    return {m for m in out if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_top_level_names_the_parts() -> None:
    entries = sorted(p.name for p in PKG.iterdir() if p.name != "__pycache__")
    entries = [e for e in entries if not e.startswith(".")]
    assert len(entries) <= MAX_TOP_LEVEL, f"sfpo_lab/ has {len(entries)} entries: {entries}"
    flat = [e for e in entries if e.endswith(".py") and e != "__init__.py"]
    assert not flat, f"flat modules beside the packages of sfpo_lab/: {flat}"


def test_no_import_circle_among_sfpo_lab_modules() -> None:
    modules = _modules()
    graph = {name: _edges(name, path, set(modules)) for name, path in modules.items()}
    cycles = _cycles(graph)
    assert not cycles, "module-level import circles (TYPE_CHECKING imports count): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_circle_check_sees_a_type_checking_circle(tmp_path: Path) -> None:
    """The check itself: a circle closed only under ``if TYPE_CHECKING:`` is found."""
    pkg = tmp_path / "sfpo_lab"
    pkg.mkdir()
    (pkg / "a.py").write_text("from sfpo_lab import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sfpo_lab.a import f\n"
    )
    (pkg / "c.py").write_text("def g():\n    from sfpo_lab import a\n")
    known = {"sfpo_lab.a", "sfpo_lab.b", "sfpo_lab.c"}
    graph = {m: _edges(m, pkg / f"{m.split('.')[1]}.py", known) for m in known}
    assert graph["sfpo_lab.c"] == set()  # a function-level import is no edge
    assert _cycles(graph) == [["sfpo_lab.a", "sfpo_lab.b"]]


def test_no_library_file_is_two_concepts() -> None:
    long = {
        str(path.relative_to(PKG.parent)): n
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines (split them by concept): {long}"
