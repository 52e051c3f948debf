"""dvc.yaml against the code: every stage declares the code it imports, the params it reads and the files it uses.

The stage's modules are derived from the code (``alphaforge.stages.<stage>`` and every ``alphaforge`` module it
imports, at any depth, module level or inside a function; ``alphaforge.config``'s own imports are the params
classes, which the loader needs and the stage does not call, so config.py counts but not what it imports). Its
params are the ``params.<section>[.<key>...]`` chains in the stage module and in the shared helpers it calls; its
files are the ``paths.<name>`` it touches (:class:`alphaforge.paths.Paths`). A change to any of them must make
``dvc repro`` rerun the stage, so each must be covered by a dependency, a params entry or an output.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from alphaforge.paths import Paths

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
LEAVES = {"alphaforge.config"}  # counted, but its imports (the params classes for the loader) are not followed
ALIASES = {"validate_": "validate", "max_closure_days": "max_closure"}  # attribute -> params.yaml key


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(name: str) -> set[str]:
    """The alphaforge modules ``name`` imports anywhere in its file (relative imports resolved)."""
    path = module_file(name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m.startswith("alphaforge") and module_file(m) is not None}


def closure(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # a package's __init__ runs first
        if name not in LEAVES:
            todo += sorted(imported_modules(name) - seen)
    return seen


def attribute_chains(tree: ast.AST, root: str) -> set[str]:
    """Every ``root.a.b...`` chain in ``tree`` (the longest one each time)."""
    chains = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, cursor = [], node
            while isinstance(cursor, ast.Attribute):
                parts.append(cursor.attr)
                cursor = cursor.value
            if isinstance(cursor, ast.Name) and cursor.id == root:
                chains.add(".".join(reversed(parts)))
    # keep only the longest chains (params.a.b also shows up as params.a)
    return {c for c in chains if not any(o != c and o.startswith(c + ".") for o in chains)}


def stage_trees(stage: str) -> list[ast.AST]:
    """The stage module, and the shared helpers in stages/_common.py (and other stage modules) it calls."""
    tree = ast.parse(module_file(f"alphaforge.stages.{stage}").read_text())
    trees = [tree]
    imported = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if (node.module or "").startswith("alphaforge.stages")}
    for module, name in imported:
        helper = ast.parse(module_file(module).read_text())
        trees += [n for n in helper.body if isinstance(n, ast.FunctionDef) and n.name == name]
    return trees


def declared_deps(stage: str) -> list[str]:
    return [str(next(iter(d))) if isinstance(d, dict) else str(d) for d in DVC[stage].get("deps", [])]


def declared_outs(stage: str) -> list[str]:
    return [str(next(iter(o))) if isinstance(o, dict) else str(o)
            for kind in ("outs", "metrics", "plots") for o in DVC[stage].get(kind, [])]


def covered(path: str, declared: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in declared)


@pytest.mark.parametrize("stage", sorted(DVC))
def test_the_stage_declares_every_module_it_imports(stage: str) -> None:
    deps = declared_deps(stage)
    assert f"pipelines/{stage}.py" in deps, f"dvc.yaml {stage}: add pipelines/{stage}.py to deps"
    modules = closure(f"alphaforge.stages.{stage}")
    missing = sorted(str(module_file(m).relative_to(REPO)) for m in modules
                     if not covered(str(module_file(m).relative_to(REPO)), deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports code it does not declare in deps: {missing}"


@pytest.mark.parametrize("stage", sorted(DVC))
def test_the_stage_declares_every_param_it_reads(stage: str) -> None:
    declared = [str(p) for p in DVC[stage].get("params", []) if not isinstance(p, dict)]
    if any(isinstance(p, dict) and "search_spaces.yaml" in p for p in DVC[stage].get("params", [])):
        declared.append("tune.search_spaces")
    reads = set().union(*(attribute_chains(t, "params") for t in stage_trees(stage)))
    reads = {".".join(ALIASES.get(p, p) for p in chain.split(".")) for chain in reads}
    # a method call on a section (params.train.models.get) reads the section it is called on
    reads = {r.rsplit(".", 1)[0] if r.rsplit(".", 1)[-1] in {"get", "model_dump", "model_copy"} else r for r in reads}
    reads.discard("model_dump")  # params.model_dump(): the whole params logged to MLflow as a record, not read
    missing = sorted(r for r in reads if not any(r == d or r.startswith(d + ".") for d in declared))
    assert not missing, f"dvc.yaml stage {stage!r} reads params it does not declare: {missing} (declared {declared})"


@pytest.mark.parametrize("stage", sorted(DVC))
def test_the_stage_declares_every_file_it_touches(stage: str) -> None:
    touched = set().union(*(attribute_chains(t, "paths") for t in stage_trees(stage)))
    names = {chain.split(".")[0] for chain in touched} & set(Paths.names())
    files = {str(getattr(Paths, name)) for name in names}
    if "spec" in {chain.split(".")[0] for chain in touched}:
        files.add(str(Paths.trained_dir))
    declared = declared_deps(stage) + declared_outs(stage)
    missing = sorted(f for f in files if not covered(f, declared)
                     and not any(d.startswith(f + "/") for d in declared_outs(stage)))
    assert not missing, f"dvc.yaml stage {stage!r} reads or writes files it does not declare: {missing}"


def test_every_declared_param_exists_in_params_yaml() -> None:
    """DVC refuses a stage whose params entry is not in params.yaml."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage, block in DVC.items():
        for key in block.get("params", []):
            if isinstance(key, dict):  # a whole other params file: it must exist
                assert all((REPO / name).is_file() for name in key), f"dvc.yaml {stage}: {list(key)} missing"
                continue
            node = params
            for part in str(key).split("."):
                assert isinstance(node, dict) and part in node, f"dvc.yaml {stage}: params.yaml has no {key}"
                node = node[part]


def test_every_dvc_stage_has_a_stage_module_and_runs_it() -> None:
    for stage, block in DVC.items():
        assert block["cmd"] == f"python pipelines/{stage}.py", stage
        assert module_file(f"alphaforge.stages.{stage}") is not None, stage
        assert f"from alphaforge.stages.{stage} import main" in (REPO / "pipelines" / f"{stage}.py").read_text()


def test_the_analysis_sees_a_missing_declaration() -> None:
    """The checks above can fail: the train stage imports alphaforge.splits and reads params.labels."""
    assert "alphaforge.splits" in closure("alphaforge.stages.train")
    assert "labels.horizon" in set().union(*(attribute_chains(t, "params") for t in stage_trees("train")))
    assert not covered("src/alphaforge/splits.py", ["src/alphaforge/split"])
