"""Rewrite each dvc.yaml stage's code dependencies (the ``src/alphaforge`` lines) from what the stage imports.

    python tools/dvc_deps.py          # rewrite dvc.yaml in place
    python tools/dvc_deps.py --check  # exit 1 and list the differences instead

The stage's modules are derived as ``tests/code/test_dvc_contract.py`` does (every alphaforge module it imports, at
any depth, config.py without the params classes it loads). A package whose every module is imported is listed as
its folder. Data, model and report dependencies and every comment are left as they are.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "code"))

from test_dvc_contract import DVC, closure, module_file  # noqa: E402


def code_deps(stage: str) -> list[str]:
    files = {module_file(m).relative_to(REPO) for m in closure(f"alphaforge.stages.{stage}")}
    files.discard(Path("src/alphaforge/__init__.py"))
    out: set[str] = set()
    for folder in sorted({f.parent for f in files}, key=lambda p: len(p.parts)):
        if folder == Path("src/alphaforge"):
            continue
        every = {p.relative_to(REPO) for p in (REPO / folder).rglob("*.py")}
        if every <= files and not any(str(folder).startswith(o + "/") for o in out):
            out.add(str(folder))
    for f in files:
        if not any(str(f).startswith(o + "/") for o in out):
            out.add(str(f))
    return ["src/alphaforge/__init__.py", *sorted(out)]


def rewrite(text: str) -> str:
    lines, out, stage, in_deps = text.split("\n"), [], None, False
    for line in lines:
        match = re.match(r"^  ([a-z_]+):", line)
        if match and match.group(1) in DVC:
            stage, in_deps = match.group(1), False
        if stage and re.match(r"^    deps:", line):
            in_deps = True
        elif stage and re.match(r"^    [a-z]+:", line):
            in_deps = False
        if in_deps and re.match(r"^      - src/alphaforge", line):
            continue  # regenerated below
        out.append(line)
        if in_deps and line.strip() == f"- pipelines/{stage}.py":
            out += [f"      - {dep}" for dep in code_deps(stage)]
    return "\n".join(out)


def main() -> int:
    path = REPO / "dvc.yaml"
    text = path.read_text()
    new = rewrite(text)
    if "--check" in sys.argv:
        if new != text:
            print("dvc.yaml's code dependencies are stale: run python tools/dvc_deps.py")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
