"""The out-of-fold check: every base prediction the combiners see must come from a fold that did not
train on its row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from alphaforge.ensemble.base import _require_columns, _utc, _utc_index, families_in, prediction_column
from alphaforge.schema import DataError


# ------------------------------------------------------------------------------------------------ the OOF check


@dataclass(frozen=True)
class FoldSpan:
    """Where one fold model of one family trained and where it was tested (inclusive timestamps)."""

    fold: int
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def fold_spans_from_metrics(train_metrics: Mapping[str, Any]) -> dict[str, dict[int, FoldSpan]]:
    """Per family, per fold id, the spans the train stage recorded in ``reports/train_metrics.json``."""
    families = train_metrics.get("families")
    if not isinstance(families, Mapping) or not families:
        raise DataError("train metrics: no 'families' mapping; rerun the train stage (reports/train_metrics.json)")
    spans: dict[str, dict[int, FoldSpan]] = {}
    for family, report in families.items():
        folds = report.get("folds") if isinstance(report, Mapping) else None
        if not folds:
            raise DataError(f"train metrics: family {family!r} has no 'folds' list with the fold spans")
        spans[family] = {}
        for entry in folds:
            try:
                span = FoldSpan(
                    fold=int(entry["fold"]),
                    train_start=_utc(entry["train_start"]), train_end=_utc(entry["train_end"]),
                    test_start=_utc(entry["test_start"]), test_end=_utc(entry["test_end"]),
                )
            except (KeyError, TypeError, ValueError) as err:
                raise DataError(f"train metrics: family {family!r} fold entry {entry!r} is unreadable: {err}") from err
            spans[family][span.fold] = span
    return spans


def check_out_of_fold(
    oof: pd.DataFrame,
    fold_spans: Mapping[str, Mapping[int, FoldSpan]],
    *,
    calendar: Sequence[Any] | pd.DatetimeIndex | pd.Series,
    purge: int,
    families: Sequence[str] | None = None,
) -> dict[str, int]:
    """Refuse any base prediction a meta-learner must not see; return the rows checked per family.

    For every row with a finite ``prediction_<family>``:

    * it must carry a fold id (a row without one is an in-sample prediction);
    * that fold must be one the train stage recorded for the family;
    * its timestamp must lie more than ``purge`` bars after the end of that fold's training span
      (on or before it, the base model trained on this very row; within ``purge`` bars, on rows
      whose labels overlap this row's label window);
    * and inside the fold's recorded test window.

    Bars are counted on ``calendar``, the sorted unique timestamps of the whole dataset (the OOF
    frame alone lacks the bars of the gap before the first test window). The first offence found
    raises :class:`DataError` naming the family, the fold, the row (index label, timestamp, symbol)
    and the rule.
    """
    caller = "stack: out-of-fold check"
    families = list(families) if families is not None else families_in(oof)
    if not families:
        raise DataError(f"{caller}: no prediction_<family> columns in the OOF frame")
    _require_columns(oof, ["timestamp", "symbol", "fold", *[prediction_column(f) for f in families]], caller)
    if purge < 0:
        raise ValueError(f"{caller}: purge must be >= 0 bars, got {purge}")
    stamps = _utc_index(oof["timestamp"])
    grid = _utc_index(pd.Index(calendar)).union(stamps).unique().sort_values()
    position = grid.get_indexer(stamps)
    folds_numeric = pd.to_numeric(oof["fold"], errors="coerce").astype("Float64")  # Int64 with <NA> too
    fold_values = folds_numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    checked: dict[str, int] = {}

    def describe(i: int) -> str:
        return f"row {oof.index[i]!r} (timestamp {stamps[i]}, symbol {oof['symbol'].iloc[i]!r})"

    for family in families:
        if family not in fold_spans:
            raise DataError(f"{caller}: family {family!r} has no fold spans in the train metrics; "
                            f"known: {sorted(fold_spans)}")
        predicted = np.isfinite(oof[prediction_column(family)].to_numpy(dtype=np.float64, na_value=np.nan))
        no_fold = predicted & ~np.isfinite(fold_values)
        if no_fold.any():
            i = int(np.flatnonzero(no_fold)[0])
            raise DataError(
                f"{caller}: family {family!r}, {describe(i)} has a prediction but no fold id: an in-sample "
                "prediction; rule: the meta-learner sees only out-of-fold predictions"
            )
        spans = fold_spans[family]
        for fold in np.unique(fold_values[predicted]).astype(int):
            rows = predicted & (fold_values == fold)
            if fold not in spans:
                i = int(np.flatnonzero(rows)[0])
                raise DataError(f"{caller}: family {family!r}, {describe(i)} names fold {fold}, which the train "
                                f"stage did not record (folds {sorted(spans)})")
            span = spans[fold]
            train_end_position = int(grid.searchsorted(span.train_end, side="right")) - 1
            bars_after = position[rows] - train_end_position
            indices = np.flatnonzero(rows)
            inside = stamps[indices] <= span.train_end
            if inside.any():
                i = int(indices[np.flatnonzero(inside)[0]])
                raise DataError(
                    f"{caller}: family {family!r} fold {fold}: {describe(i)} lies inside that fold model's training "
                    f"span {span.train_start} .. {span.train_end}: the base model predicted a row it trained on; "
                    "rule: the meta-learner sees only out-of-fold predictions"
                )
            purged = bars_after <= purge
            if purged.any():
                i = int(indices[np.flatnonzero(purged)[0]])
                raise DataError(
                    f"{caller}: family {family!r} fold {fold}: {describe(i)} is {int(bars_after[purged][0])} bar(s) "
                    f"after the training span's end {span.train_end}, within the purge of {purge} bars (its label "
                    "overlaps labels the model trained on); rule: out-of-fold rows start after train end + purge"
                )
            outside = (stamps[indices] < span.test_start) | (stamps[indices] > span.test_end)
            if outside.any():
                i = int(indices[np.flatnonzero(outside)[0]])
                raise DataError(
                    f"{caller}: family {family!r} fold {fold}: {describe(i)} lies outside that fold's test window "
                    f"{span.test_start} .. {span.test_end}; rule: a fold's predictions are its test window's"
                )
        checked[family] = int(predicted.sum())
    return checked
