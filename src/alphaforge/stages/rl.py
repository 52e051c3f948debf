"""Stage ``rl`` (optional, ``dvc repro rl``): PPO and SAC agents trained on the walk-forward training slices and
judged out of sample against buy-and-hold and the ensemble's signal in the same environment; models/rl/,
reports/rl/ (the evaluate stage adds their rows to the leaderboard).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from alphaforge.config import Params
from alphaforge.paths import Paths
from alphaforge.stages._common import candidate_frame, read_run_reference, read_spec
from alphaforge.stages._main import stage_main

log = logging.getLogger(__name__)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    """Optional: PPO/SAC on the walk-forward slices vs buy-and-hold and the ensemble's signal, in one environment."""
    from alphaforge.rl import run_rl_stage
    from alphaforge.splits import WalkForward

    paths = Paths(root)
    dataset = pd.read_parquet(paths.dataset)
    bars = pd.read_parquet(paths.validated_bars)
    spec = read_spec(paths)
    signal = None
    if spec["target"] != "forward_volatility":
        oof, models, _ = candidate_frame(spec, paths)
        columns = [c for c in models.values() if c == params.rl.signal_column]
        if not columns:
            raise ValueError(f"rl.signal_column {params.rl.signal_column!r} is none of {sorted(models.values())}")
        signal = oof[["timestamp", "symbol", params.rl.signal_column]]
    if paths.rl_models.exists():
        shutil.rmtree(paths.rl_models)
    reference = read_run_reference(paths)
    return run_rl_stage(
        dataset, bars, WalkForward(params.train.walk_forward, purge=params.labels.horizon), params.rl,
        signal=signal, experiment=params.tracking.experiment if params.tracking.enabled else None,
        parent_run_id=reference.get("run_id"), reports_dir=paths.rl_reports, models_dir=paths.rl_models,
    )


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main("rl", run, argv, description=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
