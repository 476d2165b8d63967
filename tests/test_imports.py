"""The package's import graph, read with `ast` (imports at module level and inside functions alike): no import
circle inside latentrt/. (No arrow up into benchmarks/, training/ or tests/: test_bench.py checks that.)"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "latentrt"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, name: str, is_package: bool) -> set[str]:
    """Every name the file imports: `import a.b`, `from a import b` (a, and a.b in case b is a module), relative
    forms; the caller keeps those that are modules."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, for every .py file under ``root``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        names = imported_names(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py")
        graph[name] = {n for n in names if n in files}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (and modules that import themselves), sorted."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reached = {name: reach(name) for name in graph}
    groups = {tuple(sorted(n for n in reached[name] if name in reached[n])) for name in graph if name in reached[name]}
    return sorted(list(g) for g in groups)


def test_circles_found_on_a_made_up_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}, "e": {"d"}}
    assert circles(graph) == [["a", "b", "c"], ["d"]]


def test_import_graph_reads_every_form(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    for f in ("__init__.py", "sub/__init__.py", "sub/b.py", "c.py"):
        (root / f).write_text("")
    (root / "a.py").write_text("import pkg.c\n\ndef f():\n    from .sub import b\n")
    (root / "sub" / "b.py").write_text("from .. import a\nimport os\n")
    graph = import_graph(root)
    assert graph["pkg.a"] == {"pkg.c", "pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg", "pkg.a"}
    assert circles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_no_import_circle():
    assert circles(import_graph()) == []
