"""The OOF frame's contract, checked with errors that name the column, the row and the rule, and the evaluation mode
(cross-sectional or single series).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from alphaforge.evaluate.params import NUMERIC_OOF_COLUMNS, OOF_COLUMNS, Mode
from alphaforge.schema import DataError


# ---------------------------------------------------------------------------------------------- inputs


def _row(label: Any) -> str:
    """A row label as a user would type it (numpy scalars shown as plain numbers)."""
    return repr(label.item() if isinstance(label, np.generic) else label)


def _validate_oof(oof: pd.DataFrame, model_columns: list[str]) -> None:
    """Raise :class:`DataError` naming column, row and rule when ``oof`` is not a usable OOF frame."""
    if not isinstance(oof, pd.DataFrame):
        raise DataError(f"OOF frame: expected a pandas DataFrame, got {type(oof).__name__}")
    required = [c for c in OOF_COLUMNS if c != "prediction"] + model_columns
    missing = [c for c in required if c not in oof.columns]
    if missing:
        raise DataError(f"OOF frame: missing required column(s) {missing}; rule: columns {required}")
    if oof.empty:
        raise DataError("OOF frame: no rows; rule: at least one out-of-fold prediction is needed")
    timestamps = oof["timestamp"]
    if not isinstance(timestamps.dtype, pd.DatetimeTZDtype) or str(timestamps.dt.tz) != "UTC":
        raise DataError(f"OOF frame column 'timestamp': dtype {timestamps.dtype}; rule: datetime64[ns, UTC]")
    if timestamps.isna().any():
        raise DataError(f"OOF frame column 'timestamp': missing at row {_row(timestamps.index[timestamps.isna()][0])}")
    if oof["symbol"].isna().any():
        raise DataError(f"OOF frame column 'symbol': missing at row {_row(oof.index[oof['symbol'].isna()][0])}")
    if not pd.api.types.is_integer_dtype(oof["fold"]):
        raise DataError(f"OOF frame column 'fold': dtype {oof['fold'].dtype}; rule: integer fold ids")
    for column in (*model_columns, *NUMERIC_OOF_COLUMNS):
        if not pd.api.types.is_numeric_dtype(oof[column]):
            raise DataError(f"OOF frame column {column!r}: dtype {oof[column].dtype}; rule: numeric")
        infinite = np.isinf(oof[column].to_numpy(dtype=float))
        if infinite.any():
            raise DataError(
                f"OOF frame column {column!r}: infinite value at row {_row(oof.index[infinite][0])}; "
                "rule: finite or NaN"
            )
    duplicated = oof.duplicated(["timestamp", "symbol"])
    if duplicated.any():
        first = oof.index[duplicated][0]
        raise DataError(
            f"OOF frame columns 'timestamp','symbol': duplicate key ({oof.at[first, 'timestamp']}, "
            f"{oof.at[first, 'symbol']!r}) at row {_row(first)}; rule: one row per (timestamp, symbol)"
        )
    spans = oof.groupby("fold")["timestamp"].agg(["min", "max"]).sort_values("min")
    for (fold_a, span_a), (fold_b, span_b) in zip(spans.iloc[:-1].iterrows(), spans.iloc[1:].iterrows()):
        if span_a["max"] >= span_b["min"]:
            raise DataError(
                f"OOF frame column 'fold': fold {fold_a} ends at {span_a['max']} but fold {fold_b} starts at "
                f"{span_b['min']}; rule: test folds are contiguous, time-ordered and non-overlapping"
            )


def _require_columns(frame: pd.DataFrame, columns: list[str], caller: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{caller}: missing required column(s) {missing}")


def evaluation_mode(frame: pd.DataFrame, min_cross_section: int) -> Mode:
    """``cross_sectional`` when the median number of symbols per timestamp is >= ``min_cross_section``."""
    _require_columns(frame, ["timestamp", "symbol"], "evaluation_mode")
    if frame.empty:
        raise DataError("evaluation_mode: empty frame; rule: at least one row")
    breadth = frame.groupby("timestamp")["symbol"].nunique()
    return "cross_sectional" if float(breadth.median()) >= min_cross_section else "single_series"
