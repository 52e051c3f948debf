"""Lookback windows over a panel sorted by (symbol, timestamp), the checks that frame must pass, and batches
of whole timestamps for per-timestamp losses.

The window of row ``t`` is the ``lookback`` bars of the same symbol that *end at* ``t``: a strided view
(:func:`sequence_windows`), materialised one mini-batch at a time (:func:`window_batch`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from alphaforge.models.base import KEY_COLUMNS
from alphaforge.models.base import row_mask as _row_mask  # noqa: F401  (the one check, shared with tabular)


def sequence_windows(values: np.ndarray, symbol_codes: np.ndarray, lookback: int) -> tuple[np.ndarray, np.ndarray]:
    """Strided lookback windows over a panel's feature matrix, and the rows whose window is valid.

    ``values`` is the ``(n_rows, n_features)`` matrix of a panel sorted by (symbol, timestamp) and
    ``symbol_codes`` the symbol of each row (any integer codes). Returns ``(windows, valid_end_rows)``:

    * ``windows`` has shape ``(n_rows - lookback + 1, lookback, n_features)`` and is a read-only
      *view* of ``values`` (no copy): ``windows[r - (lookback - 1)]`` holds rows
      ``r - lookback + 1 .. r``, i.e. the window that *ends at* row ``r`` (bar ``r`` included,
      nothing after it). :func:`window_batch` gathers a batch of them by end row.
    * ``valid_end_rows`` (int64, ascending) are the rows ``r`` whose whole window belongs to the
      symbol of ``r``: windows never cross a symbol boundary, so the first ``lookback - 1`` rows of
      every symbol have none.
    """
    if values.ndim != 2:
        raise ValueError(f"values must be a 2-D (n_rows, n_features) matrix, got shape {values.shape}")
    if symbol_codes.shape != (values.shape[0],):
        raise ValueError(
            f"symbol_codes must have one code per row of values: shape {symbol_codes.shape} vs {values.shape[0]} rows"
        )
    if lookback < 1:
        raise ValueError(f"lookback must be >= 1, got {lookback}")
    n_rows, n_features = values.shape
    if n_rows < lookback:
        empty = sliding_window_view(np.empty((lookback, n_features), dtype=values.dtype), (lookback, n_features))
        return empty[:0, 0], np.empty(0, dtype=np.int64)
    windows = sliding_window_view(values, (lookback, n_features))[:, 0]
    # A window is valid when no symbol change happens inside it: the running count of changes at
    # its first row equals the count at its last row.
    changes = np.concatenate(([0], np.cumsum(symbol_codes[1:] != symbol_codes[:-1])))
    end_rows = np.arange(lookback - 1, n_rows, dtype=np.int64)
    valid = changes[end_rows] == changes[end_rows - (lookback - 1)]
    return windows, end_rows[valid]


def window_batch(windows: np.ndarray, end_rows: np.ndarray, lookback: int) -> np.ndarray:
    """Materialise (copy) the windows ending at ``end_rows``: shape ``(len(end_rows), lookback, n_features)``."""
    return np.ascontiguousarray(windows[np.asarray(end_rows, dtype=np.int64) - (lookback - 1)])


# --------------------------------------------------------------------------------------------
# Frame checks and preparation
# --------------------------------------------------------------------------------------------


def _timestamp_keys(frame: pd.DataFrame) -> np.ndarray:
    column = frame["timestamp"]
    if pd.api.types.is_datetime64_any_dtype(column):
        return pd.DatetimeIndex(column).asi8
    if pd.api.types.is_numeric_dtype(column):
        return column.to_numpy(dtype=np.int64)
    raise TypeError(f"column 'timestamp' must be datetime-like, got dtype {column.dtype}")


def _symbol_codes(frame: pd.DataFrame) -> np.ndarray:
    """Integer symbol codes, after checking the frame is sorted by (symbol, timestamp)."""
    missing = [column for column in KEY_COLUMNS if column not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks the key column(s) {missing}; expected {list(KEY_COLUMNS)} + features")
    codes, uniques = pd.factorize(frame["symbol"], sort=False)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"column 'symbol' is missing at row {frame.index[row]!r}")
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    if len(starts) != len(uniques):
        seen: set[int] = set()
        for start in starts:
            if codes[start] in seen:
                raise ValueError(
                    f"frame must be sorted by (symbol, timestamp): symbol {uniques[codes[start]]!r} "
                    f"starts a second block at row {frame.index[start]!r}"
                )
            seen.add(int(codes[start]))
    timestamps = _timestamp_keys(frame)
    same_symbol = codes[1:] == codes[:-1]
    backwards = same_symbol & (timestamps[1:] <= timestamps[:-1])
    if backwards.any():
        row = int(np.flatnonzero(backwards)[0]) + 1
        raise ValueError(
            f"frame must be sorted by (symbol, timestamp) with unique timestamps per symbol: row {frame.index[row]!r} "
            f"(symbol {frame['symbol'].iloc[row]!r}) is not after the row before it"
        )
    return codes.astype(np.int64)


def _feature_matrix(frame: pd.DataFrame, feature_names: list[str]) -> np.ndarray:
    """The raw float64 feature matrix; non-numeric columns and infinities raise, naming column and row."""
    missing = [name for name in feature_names if name not in frame.columns]
    if missing:
        raise KeyError(f"frame lacks the feature column(s) {missing} the model was fitted on")
    for name in feature_names:
        dtype = frame[name].dtype
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
            raise TypeError(f"feature column {name!r} must be numeric, got dtype {dtype}")
    values = frame[feature_names].to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(values)
    if infinite.any():
        row, column = (int(i) for i in np.argwhere(infinite)[0])
        raise ValueError(f"feature column {feature_names[column]!r} is infinite at row {frame.index[row]!r}")
    return values


def timestamp_batches(rows: np.ndarray, timestamps: np.ndarray, batch_size: int, rng: np.random.Generator
                      ) -> list[np.ndarray]:
    """``rows`` grouped into batches of whole timestamps (in random order), about ``batch_size`` rows each: a
    per-timestamp loss needs every symbol of a timestamp in the same batch. A timestamp larger than
    ``batch_size`` is a batch of its own."""
    order = np.argsort(timestamps[rows], kind="stable")
    ordered = rows[order]
    keys = timestamps[ordered]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    groups = np.split(ordered, starts[1:])
    batches: list[np.ndarray] = []
    current: list[np.ndarray] = []
    size = 0
    for index in rng.permutation(len(groups)):
        group = groups[index]
        if current and size + len(group) > batch_size:
            batches.append(np.concatenate(current))
            current, size = [], 0
        current.append(group)
        size += len(group)
    if current:
        batches.append(np.concatenate(current))
    return batches
