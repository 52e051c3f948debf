"""The stack stage's fit: check the OOF frame, fit the combiner, evaluate it walk-forward."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.ensemble.base import EnsembleParams
from alphaforge.ensemble.combiners import Combiner, make_combiner
from alphaforge.ensemble.hedge import HedgeEnsemble, replay_hedge
from alphaforge.ensemble.meta import MetaEvaluation, walk_forward_meta_evaluation
from alphaforge.ensemble.oof import check_out_of_fold, fold_spans_from_metrics
from alphaforge.schema import DataError


# ------------------------------------------------------------------------------------------------ the stack stage


@dataclass
class StackResult:
    """What :func:`fit_stack` produced: the combiner fitted on every OOF row, its evaluation, the Hedge seed."""

    combiner: Combiner
    evaluation: MetaEvaluation
    hedge: HedgeEnsemble
    families: list[str]
    checked_rows: dict[str, int]
    metrics: dict[str, Any] = field(default_factory=dict)


def fit_stack(
    oof: pd.DataFrame,
    train_metrics: Mapping[str, Any],
    *,
    calendar: Sequence[Any] | pd.DatetimeIndex | pd.Series,
    spec: Mapping[str, Any],
    params: EnsembleParams,
) -> StackResult:
    """Check the OOF frame, judge the combiner by a walk-forward over it, fit it on all of it, seed the Hedge.

    ``train_metrics`` is ``reports/train_metrics.json`` (fold spans), ``calendar`` the dataset's
    timestamps, ``spec`` ``models/trained/spec.json`` (target, horizon, task, families).
    """
    families = list(params.families or spec["families"])
    unknown = [f for f in families if f not in spec["families"]]
    if unknown:
        raise DataError(f"stack: ensemble.families {unknown} were not trained (trained: {spec['families']})")
    target, horizon = spec["target"], int(spec["horizon"])
    checked = check_out_of_fold(oof, fold_spans_from_metrics(train_metrics), calendar=calendar, purge=horizon,
                                families=families)
    evaluation = walk_forward_meta_evaluation(oof, families, target, walk_forward=params.meta_walk_forward,
                                              purge=horizon, make=lambda: make_combiner(params, families))
    combiner = make_combiner(params, families).fit(oof, oof[target].to_numpy(dtype=np.float64))
    centre = 0.5 if spec.get("task") == "classification" else 0.0
    hedge = replay_hedge(HedgeEnsemble.from_params(families, params.hedge, centre=centre), oof, target)
    metrics = {
        "method": params.method,
        "meta_learner": params.meta_learner if params.method == "stacking" else None,
        "families": families,
        "target": target,
        "oof_rows_checked": checked,
        "weights": dict(combiner.weights_),
        "intercept": getattr(combiner, "intercept_", None),
        "meta_evaluation": evaluation.summary(),
        "hedge": hedge.report(),
    }
    return StackResult(combiner=combiner, evaluation=evaluation, hedge=hedge, families=families,
                       checked_rows=checked, metrics=metrics)
