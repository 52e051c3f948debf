"""What several stages read: the trained spec, the run reference, the candidates' frame, the market."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from alphaforge.paths import Paths

if TYPE_CHECKING:
    from alphaforge.config import Params

log = logging.getLogger(__name__)


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, or ``default`` when the file does not exist (``None``: it must exist)."""
    if default is not None and not path.exists():
        return default
    return json.loads(path.read_text())


def read_spec(paths: Paths) -> dict[str, Any]:
    """The train stage's spec of the trained models; a clear error when it has not run."""
    if not paths.spec().is_file():
        raise FileNotFoundError(f"{paths.spec()} is missing: run the train stage first (dvc repro train)")
    return json.loads(paths.spec().read_text())


def read_run_reference(paths: Paths) -> dict[str, Any]:
    """The pipeline's MLflow run (``{"run_id", "experiment"}``) that the train stage recorded; {} if none."""
    return read_json(paths.run_reference, default={})


def candidate_frame(spec: dict[str, Any], paths: Paths) -> tuple[pd.DataFrame, dict[str, str], float]:
    """The out-of-sample frame every candidate is judged on, its signal columns, and the signal centre.

    With an ensemble, every candidate is judged on the rows the ensemble has out-of-sample predictions for
    (the meta walk-forward's test windows), so the table compares like with like. Classifiers' P(up) is
    centred on 0.5 to make a signal.
    """
    from alphaforge.train import task_of

    oof = pd.read_parquet(paths.stack_oof if paths.stack_oof.exists() else paths.oof)
    centre = 0.5 if task_of(spec["target"]) == "classification" else 0.0
    names = [*spec["families"], *(["ensemble"] if "prediction_ensemble" in oof.columns else [])]
    for name in names:
        oof[f"signal_{name}"] = oof[f"prediction_{name}"] - centre
    return oof, {name: f"signal_{name}" for name in names}, centre


def load_market(params: Params, paths: Paths) -> pd.DataFrame:
    """The market frame of the validated bars: execution returns, tradability, costs, baseline signals.

    Computed per series (a suspension splits a symbol): a position is closed at the last price before a
    suspension, never carried across it."""
    from alphaforge.evaluate import load_market_frame

    return load_market_frame(pd.read_parquet(paths.validated_bars), params.evaluate)
