"""The combiner's own out-of-sample record: a walk-forward over the OOF frame that refits the combiner
on the past only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.ensemble.base import ENSEMBLE_COLUMN, _require_columns, prediction_column
from alphaforge.ensemble.combiners import Combiner
from alphaforge.models.importance import rank_ic
from alphaforge.splits import WalkForward, WalkForwardParams

log = logging.getLogger("alphaforge.ensemble")


# ------------------------------------------------------------------------------------------------ meta evaluation


@dataclass
class MetaEvaluation:
    """The stack judged out of sample: its own OOF predictions and per-meta-fold reports."""

    oof: pd.DataFrame
    folds: list[dict[str, Any]]
    families: list[str]
    target: str

    def summary(self) -> dict[str, Any]:
        """Rank IC of the ensemble, each family and their plain average over the same meta-test rows."""
        frame = self.oof
        stamps = frame["timestamp"].to_numpy()
        y = frame[self.target].to_numpy(dtype=np.float64)
        scores = {"ensemble": rank_ic(frame[ENSEMBLE_COLUMN].to_numpy(dtype=np.float64), y, stamps)}
        for family in self.families:
            scores[family] = rank_ic(frame[prediction_column(family)].to_numpy(dtype=np.float64), y, stamps)
        average = frame[[prediction_column(f) for f in self.families]].mean(axis=1, skipna=False)
        scores["equal_weight"] = rank_ic(average.to_numpy(dtype=np.float64), y, stamps)
        finite = {k: v for k, v in scores.items() if math.isfinite(v)}
        return {
            "rows": len(frame),
            "rank_ic": {k: (v if math.isfinite(v) else None) for k, v in scores.items()},
            "best": max(finite, key=finite.__getitem__) if finite else None,
            "folds": self.folds,
        }


def walk_forward_meta_evaluation(
    oof: pd.DataFrame,
    families: Sequence[str],
    target: str,
    *,
    walk_forward: WalkForwardParams,
    purge: int,
    make: Callable[[], Combiner],
) -> MetaEvaluation:
    """The stack's own out-of-fold predictions: a walk-forward over the OOF timestamps.

    Each meta-fold fits a fresh combiner (``make()``) on the OOF rows before its test window,
    ``purge`` (+ ``walk_forward.embargo``) timestamps away (the label horizon: a row's label
    window must not overlap the test rows'), and predicts the test window. Returns the test rows
    with the original OOF columns, ``fold`` replaced by the meta-fold id (the base fold kept as
    ``base_fold``) and ``prediction_ensemble`` added, so the frame can go to
    :func:`alphaforge.evaluate.evaluate_oof` like any OOF frame.
    """
    _require_columns(oof, ["timestamp", "symbol", target, *[prediction_column(f) for f in families]],
                     "walk_forward_meta_evaluation")
    frame = oof.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)
    splitter = WalkForward(walk_forward, purge=purge)
    try:
        folds = splitter.split(frame["timestamp"])
    except ValueError as err:
        raise ValueError(f"stack: the meta walk-forward over {frame['timestamp'].nunique()} OOF timestamps does not "
                         f"fit; adjust ensemble.meta_walk_forward ({err})") from err
    pieces, reports = [], []
    y = frame[target].to_numpy(dtype=np.float64)
    for fold in folds:
        train = frame.iloc[fold.train_rows]
        combiner = make().fit(train, y[fold.train_rows])
        test = frame.iloc[fold.test_rows].copy()
        test[ENSEMBLE_COLUMN] = combiner.predict(test)
        if "fold" in test.columns:
            test = test.rename(columns={"fold": "base_fold"})
        test.insert(2, "fold", fold.number)
        pieces.append(test)
        score = rank_ic(test[ENSEMBLE_COLUMN].to_numpy(dtype=np.float64), test[target].to_numpy(dtype=np.float64),
                        test["timestamp"].to_numpy())
        reports.append({
            "fold": fold.number, "train_start": str(fold.train_start), "train_end": str(fold.train_end),
            "test_start": str(fold.test_start), "test_end": str(fold.test_end),
            "n_train": len(train), "n_test": len(test),
            "rank_ic": score if math.isfinite(score) else None,
            "weights": dict(combiner.weights_),
        })
        log.info("stack: meta-fold %d  train ..%s  test %s..%s  rank IC %.4f  weights %s", fold.number,
                 fold.train_end.date(), fold.test_start.date(), fold.test_end.date(), score,
                 {k: round(v, 4) for k, v in combiner.weights_.items()})
    result = pd.concat(pieces, ignore_index=True)
    return MetaEvaluation(oof=result, folds=reports, families=list(families), target=target)
