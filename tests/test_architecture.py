"""The layering stated in `fopt.LAYERS`: no import points up, and no modules import each other.

Every import counts, module-level or inside a function: a function-local import hides a
dependency from a reader, it does not remove it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fopt

SRC = Path(fopt.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """fopt modules imported anywhere in `path` (a `from pkg import name` counts as pkg.name
    when that is a module, else as pkg)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "fopt")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != "fopt":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    found.discard(module)
    return found


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {m: _imports(p, m) for m, p in MODULES.items()}


def _layer(module: str) -> int:
    best, index = -1, None
    for i, prefixes in enumerate(fopt.LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{module} is in no layer of fopt.LAYERS"
    return index


def _is_entry_point(module: str) -> bool:
    return module in ("fopt.cli", "fopt.__main__") or module.endswith(".cli")


def test_every_module_has_a_layer():
    for module in MODULES:
        if not _is_entry_point(module):
            _layer(module)


def test_no_import_points_up():
    upward = [f"{m} -> {t}" for m, targets in GRAPH.items() if not _is_entry_point(m)
              for t in targets if _layer(t) < _layer(m)]
    assert upward == [], "imports against the layering:\n" + "\n".join(sorted(upward))


def test_nothing_imports_an_entry_point():
    found = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
             if _is_entry_point(t) and m != "fopt.__main__"]
    assert found == [], "\n".join(found)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_the_checks_catch_a_circle_and_an_upward_import():
    # the same functions on a made-up graph: a circle, and the runtime importing a stage
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("fopt.runtime.onnxrt") > _layer("fopt.optimize.quantize")
    assert _layer("fopt.bench.measure.profile") > _layer("fopt.bench.costmodel.fit") > _layer("fopt.bench.run")
