"""No import cycle among the modules of ``src/layerscope`` (module-level imports, read with ast).

An import inside a function runs later and is not counted; an import of ``a.b.c`` from outside
package ``a.b`` also runs ``a/b/__init__.py`` and counts as an edge to it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "layerscope"


def _modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _top_level_imports(tree: ast.Module):
    """Import nodes that run when the module is imported (not in functions or TYPE_CHECKING)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if "TYPE_CHECKING" not in test:
                todo.extend(node.body)
            todo.extend(node.orelse)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            todo.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                todo.extend(handler.body)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            todo.extend(node.body)


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets = []
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
                continue
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets.append(origin)
            targets += [f"{origin}.{alias.name}" for alias in node.names]
        for target in targets:
            if not target.startswith(PACKAGE):
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix not in modules or prefix == name:
                    continue
                own_ancestor = name.startswith(prefix + ".")
                if i < len(parts) and own_ancestor:
                    continue  # a package's own modules importing through it: Python allows it
                if i < len(parts) and prefix == PACKAGE:
                    continue  # the top package's __init__ exports lazily
                graph[name].add(prefix)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_relative_and_absolute_imports():
    graph = import_graph()
    assert "layerscope.model_types" in graph["layerscope.hf"]
    assert "layerscope.errors" in graph["layerscope.models"]
    assert "layerscope.hf" in graph["layerscope.models"]


def test_loading_modules_have_no_cycle():
    loading = {"layerscope.models", "layerscope.model_types", "layerscope.hf",
               "layerscope.checkpoint", "layerscope.factories", "layerscope.builtin_models",
               "layerscope.safeload", "layerscope.outputs"}
    graph = import_graph()
    sub = {m: graph[m] & loading for m in loading}
    assert find_cycles(sub) == []
    assert "layerscope.models" not in set().union(*(graph[m] for m in loading - {"layerscope.models"}))


def test_no_import_cycle_in_the_package():
    assert find_cycles(import_graph()) == []
