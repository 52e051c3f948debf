"""Keeping the suite off the checkout's own pipeline outputs.

A checkout where `make run` has finished holds data/, models/, reports/, .alphaforge/ and a new dvc.lock; the
suite must pass the same there as on a fresh clone, and leave them as it found them. Two tools for that:

* :func:`subprocess_workdir`: the working directory for a process a test starts (the stream, ``bentoml serve``,
  ``alphaforge serve``, Airflow, a CLI call): a fresh folder holding an explicit params.yaml and nothing else,
  so a path the process resolves against its working directory finds no pipeline output.
* :func:`fingerprint` and :func:`changes`: what the pipeline-output paths of a checkout hold (existence, size and
  mtime of every file), and what differs between two fingerprints; tests/conftest.py compares the session's
  start with its end.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

# what `make run` (dvc repro), the service, the stream and Airflow write in a checkout; `make clean-state` removes
# most of them. The end-to-end tests run the pipeline in a copy (tests/integration/test_pipeline_e2e.py::copy_repo).
PIPELINE_OUTPUTS = (
    "data/raw", "data/validated", "data/features", "data/predictions", "data/regimes", "data/risk", "data/stream",
    "data/quarantine/rows.parquet", "data/quarantine/duplicates.parquet",
    "models", "reports", "logs", ".alphaforge", "dvc.lock",
)

#: The settings files one loader reads (alphaforge.config.load_params): params.yaml and what sits beside it.
SETTINGS_FILES = ("params.yaml", "runtime.yaml", "search_spaces.yaml")

Fingerprint = dict[str, tuple[int, int] | None]  # relative path -> (size, mtime_ns) of a file, None for a folder


def subprocess_workdir(folder: Path, params: dict | None = None) -> Path:
    """``folder`` (created), holding ``params`` as params.yaml, or a copy of the repository's settings files
    (params.yaml, runtime.yaml, search_spaces.yaml)."""
    folder.mkdir(parents=True, exist_ok=True)
    if params is None:
        for name in SETTINGS_FILES:
            shutil.copy(REPO_ROOT / name, folder / name)
    else:
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def fingerprint(root: Path = REPO_ROOT, paths: tuple[str, ...] = PIPELINE_OUTPUTS) -> Fingerprint:
    """Every file and folder under ``paths`` of ``root`` with its size and mtime (a stat each, no reads)."""
    found: Fingerprint = {}
    for name in paths:
        top = root / name
        if top.is_file():
            stat = top.stat()
            found[name] = (stat.st_size, stat.st_mtime_ns)
            continue
        for folder, dirs, files in os.walk(top):
            relative = Path(folder).relative_to(root)
            found[str(relative)] = None
            for file in files:
                try:
                    stat = os.stat(Path(folder) / file, follow_symlinks=False)
                except FileNotFoundError:  # removed while we walked
                    continue
                found[str(relative / file)] = (stat.st_size, stat.st_mtime_ns)
    return found


def changes(before: Fingerprint, after: Fingerprint) -> list[str]:
    """One line per path that appeared, disappeared or changed between two fingerprints."""
    lines = [f"created  {path}" for path in sorted(after.keys() - before.keys())]
    lines += [f"removed  {path}" for path in sorted(before.keys() - after.keys())]
    lines += [f"modified {path}" for path in sorted(before.keys() & after.keys()) if before[path] != after[path]]
    return lines
