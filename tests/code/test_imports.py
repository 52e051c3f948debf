"""The package's import graph: no cycles, and arrows that point one way.

Cycles and layering count every import, module level or inside a function (an ``if TYPE_CHECKING`` block names
types for annotations only and does not count): nothing below ``alphaforge.stages`` imports ``alphaforge.stages``
or ``alphaforge.cli``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "alphaforge"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
        names = {base} | {f"{base}.{alias.name}" for alias in node.names}
    found = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def imports(module: str, *, eager_only: bool) -> set[str]:
    """The package modules ``module`` imports: at module level only (``eager_only``), or anywhere; never what an
    ``if TYPE_CHECKING`` block names (annotations only)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(_targets(node, module))
            elif isinstance(node, ast.If):
                if not _is_type_checking(node):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                    visit(block)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                visit(node.body)
            elif not eager_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(node.body)
            elif not eager_only and isinstance(node, (ast.For, ast.While)):
                visit(node.body)

    visit(tree.body)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_import_cycle_in_the_package() -> None:
    """Counted over every import, late ones (inside a function) too: a late import that closes a loop is a cycle
    in the design, hidden from the interpreter only until someone moves it to the top."""
    graph = {m: imports(m, eager_only=False) for m in MODULES}
    found = cycles(graph)
    assert not found, f"import cycles: {found}"


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_below_the_stages_imports_the_stages_or_the_command_line() -> None:
    offenders = {m: sorted(t for t in imports(m, eager_only=False) if t == "alphaforge.cli" or
                           t == "alphaforge.stages" or t.startswith("alphaforge.stages."))
                 for m in MODULES if not (m == "alphaforge.cli" or m.startswith("alphaforge.stages"))}
    offenders = {m: t for m, t in offenders.items() if t}
    assert not offenders, f"the library imports the stages or the CLI: {offenders}"


def test_loading_the_params_imports_no_heavy_library() -> None:
    """``load_params`` is what every stage and the service start with: no torch, gymnasium, lightgbm, mlflow, nor
    numba (Alpha158's kernels load it on first use)."""
    code = ("import sys; from alphaforge.config import load_params; "
            "heavy = sorted(m for m in ('torch', 'gymnasium', 'lightgbm', 'mlflow', 'bentoml', 'evidently', 'numba') "
            "if m in sys.modules); print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing alphaforge.config imports {out}"


def test_no_module_in_the_package_is_over_600_lines() -> None:
    """Split a module that grows past this along the seams it has (a package re-exporting its old names)."""
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines: {long}"
