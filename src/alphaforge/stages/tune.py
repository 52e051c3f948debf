"""Stage ``tune``: walk-forward Optuna search per family (``tune.families``); best parameters to
models/tuned/best_params.json, a summary to reports/tune/summary.json.

The objective is the mean out-of-sample ``tune.metric`` over the walk-forward folds, pruned after each fold. The
study lives in ``tune.storage`` (SQLite under .alphaforge/ by default; PostgreSQL for several workers). Complete
trials' out-of-fold predictions are kept beside the study for the evaluate stage's PBO.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alphaforge.config import Params
from alphaforge.paths import Paths
from alphaforge.stages._main import stage_main

log = logging.getLogger(__name__)


def run(params: Params, root: str | Path = ".", workers: int = 1) -> dict[str, Any]:
    """Walk-forward Optuna search per family; best parameters to models/tuned/best_params.json.

    Complete trials' out-of-fold predictions are kept beside the study (``.alphaforge/tune_trials/<study>/``)
    for the evaluate stage's probability of backtest overfitting.
    """
    from alphaforge import tracking
    from alphaforge.tune import TuneJob, tune_stage

    paths = Paths(root)
    job = TuneJob(
        dataset_path=str(paths.dataset),
        tune=params.tune,
        walk_forward=params.train.walk_forward,
        purge=params.labels.horizon,
        target=params.labels.target,
        label_normalise=params.labels.normalise,
        feature_processing=params.features.processing,
        base_params={family: dict(params.train.models.get(family, {})) for family in params.tune.families},
        evaluation=params.evaluate,
        experiment=params.tracking.experiment if params.tracking.enabled else None,
        trials_dir=str(tracking.state_dir() / "tune_trials"),
    )
    return tune_stage(job, workers=workers, best_params_path=paths.best_params, summary_path=paths.tune_summary)


def _options(parser: Any) -> None:
    parser.add_argument("--workers", "-w", type=int, default=1, help="worker processes sharing each study")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("tune", run, argv, options=_options, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
