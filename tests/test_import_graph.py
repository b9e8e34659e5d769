"""The modules of headstart import each other without cycles.

A cycle means neither module can be understood (or moved, or tested) without the other, and which one
loads first decides whether a name exists yet. The graph is read from the source (AST), not from what
happens to be imported at run time, so a function-local import (`def f(): from headstart.x import y`)
counts as much as a top-level one: it is the same dependency, merely deferred. Imports under
`if TYPE_CHECKING:` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "headstart"


def module_names(src: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every module of `package` under `src` (a package is its __init__)."""
    out: dict[str, Path] = {}
    for f in sorted((src / package).rglob("*.py")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth (functions, classes, try/if blocks), except TYPE_CHECKING's."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def _base(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom reads from (`from ..a import b` in headstart.x.y: headstart.a)."""
    if node.level == 0:
        return node.module or ""
    parts = name.split(".") if is_package else name.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """{module: modules of the package it imports}; `from a import b` points at a.b when b is a module."""
    modules = module_names(src, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _base(name, is_package, node)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in modules else base)
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) through each strongly connected component of more than one module
    (a component of more modules holds more cycles: removing this one may leave another)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph has ~100 nodes, so recursion depth is no concern
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(graph, comp) for comp in sorted(components)]


def _cycle_in(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first back to it)."""
    members, start = set(component), component[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in its own component {component}")


def test_headstart_has_no_import_cycles() -> None:
    cycles = find_cycles(import_graph(SRC, PACKAGE))
    listed = "\n".join(" -> ".join(c) for c in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s) in src/{PACKAGE}:\n{listed}"


def test_the_graph_sees_every_import_form(tmp_path: Path) -> None:
    """The checker itself: each import form makes an edge, and a cycle through any of them is found."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import pkg.b\n",  # top-level, absolute
        "b.py": "def f():\n    from pkg.sub import c\n",  # function-local; `c` is a submodule
        "sub/__init__.py": "",
        "sub/c.py": "from .. import d\n",  # relative, `from . import module`
        "d.py": "from .sub.e import thing\n",  # relative into a subpackage, a name from a module
        "sub/e.py": "class K:\n    def m(self):\n        from pkg import a\n",  # closes the cycle
        "f.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import g\n",
        "g.py": "import pkg.f\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.d"}
    assert graph["pkg.d"] == {"pkg.sub.e"}
    assert graph["pkg.sub.e"] == {"pkg.a"}
    assert graph["pkg.f"] == set()  # TYPE_CHECKING imports never run
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.d", "pkg.sub.e", "pkg.a"]]
    (pkg / "sub/e.py").write_text("")
    assert find_cycles(import_graph(tmp_path, "pkg")) == []
