"""Reference and current windows of a dataset, and the columns the drift tests look at."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from alphaforge.drift.params import DriftError, DriftParams
from alphaforge.schema import DataError


# --------------------------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Windows:
    """The two windows of a drift check: row subsets of one frame, and how the reference was chosen."""

    reference: pd.DataFrame
    current: pd.DataFrame
    reference_basis: str

    def describe(self) -> dict[str, Any]:
        return {name: _span(frame) for name, frame in (("reference", self.reference), ("current", self.current))} | {
            "reference_basis": self.reference_basis}


def _span(frame: pd.DataFrame) -> dict[str, Any]:
    return {"start": str(frame["timestamp"].min()), "end": str(frame["timestamp"].max()),
            "bars": int(frame["timestamp"].nunique()), "rows": len(frame),
            "symbols": int(frame["symbol"].nunique())}


def _require(frame: pd.DataFrame, columns: Sequence[str], caller: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{caller}: columns {missing} missing; rule: the frame needs {list(columns)}")
    if "timestamp" in columns and not isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype):
        raise DataError(f"{caller}: column 'timestamp' is {frame['timestamp'].dtype}; rule: timezone-aware (UTC)")


def _stamps(frame: pd.DataFrame) -> pd.DatetimeIndex:
    """The frame's distinct timestamps, sorted (timezone kept)."""
    return pd.DatetimeIndex(frame["timestamp"].unique()).sort_values()


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def split_windows(dataset: pd.DataFrame, params: DriftParams, reference_end: Any = None) -> Windows:
    """Current = the newest ``current_window_bars`` timestamps; reference = bars up to ``reference_end`` (the
    champion's train end; None: no champion) and before the current window, capped at ``reference_window_bars``.

    Raises :class:`DriftError` when the reference has fewer than ``min_reference_bars`` bars.
    """
    _require(dataset, ["timestamp", "symbol"], "split_windows")
    stamps = _stamps(dataset)
    if len(stamps) <= params.current_window_bars:
        raise DriftError(f"split_windows: {len(stamps)} bars in the dataset; rule: more than current_window_bars "
                         f"({params.current_window_bars}) so there is a reference before the current window")
    current_start = stamps[-params.current_window_bars]
    before = stamps[stamps < current_start]
    if reference_end is None:
        basis = "no champion: the bars before the current window"
    else:
        end = _utc(reference_end)
        basis = f"the champion's training period (train end {end})"
        if end >= current_start:
            basis += ", cut at the current window's start"
        before = before[before <= end]
    if params.reference_window_bars is not None:
        before = before[-params.reference_window_bars:]
    if len(before) < params.min_reference_bars:
        raise DriftError(f"split_windows: the reference ({basis}) has {len(before)} bars; rule: at least "
                         f"min_reference_bars ({params.min_reference_bars})")
    timestamps = dataset["timestamp"]
    reference = dataset[timestamps.isin(before)]
    current = dataset[timestamps >= current_start]
    return Windows(reference=reference, current=current, reference_basis=basis)


def drift_columns(frame: pd.DataFrame, params: DriftParams, features: Sequence[str] | None = None) -> list[str]:
    """The columns whose drift is measured: ``params.features``, else ``features`` (the model's), else every
    feature column of ``frame``; minus ``exclude_features`` patterns. Named columns must exist and be numeric."""
    from alphaforge.features import feature_columns

    chosen = list(params.features or features or feature_columns(frame))
    missing = [c for c in chosen if c not in frame.columns]
    if missing:
        raise DataError(f"drift_columns: features {missing} are not columns of the data; rule: every drift "
                        "feature must exist (check drift.features or the model spec)")
    chosen = [c for c in chosen if not any(fnmatch.fnmatchcase(c, p) for p in params.exclude_features)]
    not_numeric = [c for c in chosen if not pd.api.types.is_numeric_dtype(frame[c])]
    if not_numeric:
        raise DataError(f"drift_columns: features {not_numeric} are not numeric; rule: drift is measured on numbers")
    if not chosen:
        raise DriftError("drift_columns: no feature left after exclude_features; rule: at least one feature")
    return chosen
