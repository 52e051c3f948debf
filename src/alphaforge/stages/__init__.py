"""The pipeline's stages, one module each: read inputs, call the library, write outputs atomically.

Each module has ``run(params, root=".", **options) -> dict`` (the stage, on the layout of
:class:`alphaforge.paths.Paths` under ``root``) and ``main()`` (what ``dvc.yaml`` runs through
``pipelines/<stage>.py``: ``--params``, ``--root``, exit code 2 with the message on a data, configuration or
promotion error). The ``alphaforge <stage>`` commands call :func:`run_stage`.

==========  ==========================================================================================
ingest      the configured source -> canonical bars (repairs counted)
validate    Great Expectations suite; fail or quarantine rows; series split at suspensions
regimes     market regime model on the first training window, causal regime probabilities
features    indicators / Alpha158 and execution-aligned labels
tune        walk-forward Optuna search per family
train       walk-forward training, OOF predictions, final models, MLflow run
stack       the ensemble over the families' OOF predictions, packaged as one pyfunc, registered
evaluate    out-of-sample backtests of models and naive baselines, leaderboard, tear sheets
drift       Evidently drift of the newest bars against the champion's training window
promote     the gate: significance, baselines, PBO, plausibility, champion; alias switch last
risk        GARCH / LightGBM / EWMA volatility forecasts, VaR backtests
rl          optional PPO / SAC agents against buy-and-hold and the ensemble's signal
monitor     served traffic against the champion's reference (not a DVC stage: run by the daily DAG)
==========  ==========================================================================================
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alphaforge.config import Params

STAGES: tuple[str, ...] = ("ingest", "validate", "regimes", "features", "tune", "train", "stack", "evaluate",
                           "drift", "promote", "risk", "rl", "monitor")


def run_stage(name: str, params: Params, root: str | Path = ".", **options: Any) -> dict[str, Any]:
    """Run one stage by name under ``root`` (``options`` go to stages that take them, e.g. tune's ``workers``)."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; choose from {list(STAGES)}")
    module = importlib.import_module(f"alphaforge.stages.{name}")
    return module.run(params, root=root, **options)


__all__ = ["STAGES", "run_stage"]
