"""Stage ``drift``: Evidently data drift, model performance and data quality of the newest bars against the
champion's training window; reports/drift/{report.html,features.csv,quality.csv,alert.json,summary.json}.

A performance drop needs ``drift.performance_z`` Newey-West standard errors; which alerts block a promotion is
``promote.drift_blocks``'s choice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.config import Params
from alphaforge.paths import Paths
from alphaforge.stages._common import read_spec
from alphaforge.stages._main import stage_main

log = logging.getLogger(__name__)


def champion_reference_end(params: Params) -> Any:
    """End of the champion's training window (None with tracking off or no champion yet)."""
    if not params.tracking.enabled:
        return None
    from alphaforge.drift import champion_reference_end as reference_end

    return reference_end(params.promote.model_name, http_max_retries=params.promote.http_max_retries,
                         http_timeout_seconds=params.promote.http_timeout_seconds)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Drift, model performance and data quality of the newest bars against the champion's training window."""
    from alphaforge.drift import run_drift
    from alphaforge.train import task_of

    paths = Paths(root)
    dataset = pd.read_parquet(paths.dataset)
    spec = read_spec(paths)
    source = paths.stack_oof if paths.stack_oof.exists() else paths.oof
    predictions = pd.read_parquet(source) if source.exists() else None
    reference_end = champion_reference_end(params)
    centre = 0.5 if task_of(spec["target"]) == "classification" else 0.0
    result = run_drift(dataset, predictions, params.drift, paths.drift_dir, features=spec["features"],
                       reference_end=reference_end, prediction_centre=centre, horizon=params.labels.horizon)
    return result.summary


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("drift", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
