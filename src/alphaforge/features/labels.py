"""The targets: forward-looking labels per symbol, and ``labels.normalise`` of the training label.

Part of :mod:`alphaforge.features`; every name here is re-exported there."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from alphaforge.features.kernels import _block_size, _check_bars, _chunks, _lag, _lead, _Rolling, _with_keys

LABEL_COLUMNS: tuple[str, ...] = ("forward_return", "forward_direction", "forward_volatility", "forward_return_1")


LabelNormalise = Literal["none", "cs_rank", "cs_zscore"]


def normalised_label(label: pd.Series, timestamps: pd.Series | np.ndarray, method: LabelNormalise) -> pd.Series:
    """``labels.normalise``: the training label transformed among the symbols of each timestamp (``cs_rank``:
    (percentile rank - 0.5) * 3.46; ``cs_zscore``: (y - mean) / sample std), so a model learns the cross-section
    rather than the market's move. Unknown labels stay NaN (never trained on; no Fillna here), as does a timestamp
    whose labels are all equal (cs_zscore) or a lone one (cs_zscore). Only labels of the same timestamp meet."""
    if method == "none":
        return label
    values = pd.Series(label.to_numpy(dtype=np.float64), index=label.index)
    grouped = values.groupby(np.asarray(timestamps), sort=False)
    if method == "cs_rank":
        return (grouped.rank(pct=True) - 0.5) * 3.46
    if method == "cs_zscore":
        std = grouped.transform("std")
        return (values - grouped.transform("mean")) / std.where(std > 0)
    raise ValueError(f"labels.normalise: unknown method {method!r}; choose none, cs_rank or cs_zscore")


def compute_labels(bars: pd.DataFrame, horizon: int, execution: str = "auto") -> pd.DataFrame:
    """What a position decided at each bar earns afterwards, per symbol: the targets (never features).

    A signal from bar t trades at bar t+1's execution price P (its open for ``execution="next_open"``, its close
    for ``next_close``; ``auto`` picks next_open when the bars have an open column), so the label is the return
    the strategy could earn (see :mod:`alphaforge.backtest.market`):

    * ``forward_return`` = log(P[t+1+h] / P[t+1]);
    * ``forward_direction`` = 1.0 if forward_return > 0 else 0.0 (NaN where it is NaN);
    * ``forward_volatility`` = sample std (ddof=1) of the h one-bar log close returns t+1..t+h
      (NaN for h = 1: one return has no sample std);
    * ``forward_return_1`` = log(P[t+2] / P[t+1]), the one bar a position decided at t is held.

    NaN where the symbol's future is not in ``bars`` (its last bars); never reaches into
    the next symbol. Same row order and index as ``bars``. ``frame.attrs["execution"]`` names the convention.
    """
    from alphaforge.backtest.market import execution_prices, resolve_execution

    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"compute_labels: horizon must be an integer >= 1 bar, got {horizon!r}")
    horizon = int(horizon)
    resolved = resolve_execution(list(bars.columns), execution)
    groups = _check_bars(bars, "compute_labels", close_only=True)
    close = bars["close"].to_numpy(dtype=np.float64)
    price = execution_prices(bars, resolved)
    values = np.empty((len(LABEL_COLUMNS), groups.n_rows))
    block = _block_size(horizon + 1)
    for chunk in _chunks(groups, block):
        log_close = np.log(chunk.panel(close))
        with np.errstate(invalid="ignore", divide="ignore"):
            log_entry = _lead(np.log(chunk.panel(price)), 1)
        forward_return = _lead(log_entry, horizon) - log_entry
        forward_return_1 = _lead(log_entry, 1) - log_entry
        returns = log_close - _lag(log_close, 1)
        past_volatility = _Rolling(returns, block, first_valid=1, second_moment=True).std(horizon, ddof=1)
        forward_volatility = _lead(past_volatility, horizon)
        direction = np.where(np.isnan(forward_return), np.nan, (forward_return > 0).astype(np.float64))
        for i, result in enumerate((forward_return, direction, forward_volatility, forward_return_1)):
            chunk.write(values[i], result)
    labels = _with_keys(bars, pd.DataFrame(values.T, columns=list(LABEL_COLUMNS), index=bars.index, copy=False))
    labels.attrs["execution"] = resolved
    return labels
