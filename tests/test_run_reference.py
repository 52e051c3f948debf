"""The one reader and writer of ``models/run.json``: which MLflow run a pipeline run logs to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alphaforge.tracking import read_run_reference, write_run_reference


def test_the_reference_round_trips_in_the_format_the_stages_read(tmp_path: Path) -> None:
    path = tmp_path / "models" / "run.json"
    path.parent.mkdir()
    write_run_reference(path, "abc123", "alphaforge")
    assert json.loads(path.read_text()) == {"run_id": "abc123", "experiment": "alphaforge"}
    assert read_run_reference(path) == {"run_id": "abc123", "experiment": "alphaforge"}


def test_a_missing_reference_names_the_file_and_the_stage_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"run\.json.*train stage"):
        read_run_reference(tmp_path / "run.json")
    assert read_run_reference(tmp_path / "run.json", missing_ok=True) == {}
