"""The basic set's per-symbol indicators on one panel, which of them the bars allow, and the calendar features.

Part of :mod:`alphaforge.features` (definitions in its docstring); every name here is re-exported there."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import maximum_filter1d, minimum_filter1d

from alphaforge.features.kernels import (
    _NANOS_PER_DAY,
    _block_size,
    _ema,
    _Groups,
    _lag,
    _mask_before,
    _Rolling,
    _safe_divide,
    _short_mean,
    _wilder,
)
from alphaforge.features.processing import _TimestampGrid

if TYPE_CHECKING:
    from alphaforge.features import FeatureParams

_NANOS_PER_HOUR: int = 3_600_000_000_000


_NEEDS: dict[str, tuple[str, ...]] = {
    "atr": ("high", "low"),
    "stochastic": ("high", "low"),
    "volume": ("volume",),
    "spread": ("bid", "ask"),
    "order_imbalance": ("bid_size", "ask_size"),
}


_GROUP_NAMES: dict[str, tuple[str, ...]] = {
    "atr": ("atr_ratio",),
    "stochastic": ("stochastic_k", "stochastic_d"),
    "volume": ("volume_ratio", "log_dollar_volume"),
    "spread": ("spread",),
    "order_imbalance": ("order_imbalance",),
}


def _basic_plan(params: FeatureParams, present: set[str]) -> tuple[list[str], list[str]]:
    """The basic set's per-symbol features for bar columns ``present``, and the log lines of the skipped ones."""
    names = [f"log_return_{h}" for h in params.return_horizons]
    names += [f"sma_ratio_{w}" for w in params.ma_windows]
    names += [f"ema_ratio_{w}" for w in params.ma_windows]
    names += ["rsi", "macd", "macd_signal", "macd_hist", "bollinger_position"]
    names += [f"volatility_{w}" for w in params.volatility_windows]
    skipped: list[str] = []
    for group, needed in _NEEDS.items():
        missing = [c for c in needed if c not in present]
        if missing:
            skipped.append(
                f"features: skipping {', '.join(_GROUP_NAMES[group])}: the bars have no "
                f"{', '.join(repr(c) for c in missing)} column"
            )
        else:
            names += _GROUP_NAMES[group]
    return names, skipped


# --------------------------------------------------------------------------------------------
# The features of one panel
# --------------------------------------------------------------------------------------------


def _feature_block(params: FeatureParams) -> int:
    return _block_size(
        *params.ma_windows, params.bollinger_window, *params.volatility_windows, params.volume_window,
        params.stochastic_smooth,
    )


def _panel_features(
    panel: Callable[[str], np.ndarray], params: FeatureParams, names: set[str], block: int
) -> dict[str, np.ndarray]:
    """Every per-symbol time-series feature in ``names`` for one chunk of symbols."""
    out: dict[str, np.ndarray] = {}
    close = panel("close")
    log_close = np.log(close)
    for horizon in params.return_horizons:
        out[f"log_return_{horizon}"] = log_close - _lag(log_close, horizon)
    returns = out.get("log_return_1")
    if returns is None:
        returns = log_close - _lag(log_close, 1)

    close_rolling = _Rolling(close, block, second_moment=True)
    for window in params.ma_windows:
        out[f"sma_ratio_{window}"] = close / close_rolling.mean(window) - 1.0
    for window in params.ma_windows:
        out[f"ema_ratio_{window}"] = close / _ema(close, window) - 1.0

    change = close - _lag(close, 1)
    gain = _wilder(np.maximum(change, 0.0), params.rsi_window)
    loss = _wilder(np.maximum(-change, 0.0), params.rsi_window)
    out["rsi"] = _safe_divide(100.0 * gain, gain + loss, where_zero=50.0)

    macd_line = _ema(close, params.macd_fast) - _ema(close, params.macd_slow)
    signal = _ema(macd_line, params.macd_signal, start=params.macd_slow - 1)
    out["macd"] = macd_line / close
    out["macd_signal"] = signal / close
    out["macd_hist"] = (macd_line - signal) / close

    middle = close_rolling.mean(params.bollinger_window)
    band = params.bollinger_k * close_rolling.std(params.bollinger_window, ddof=0)
    out["bollinger_position"] = _safe_divide(close - middle, band, where_zero=0.0)

    return_rolling = _Rolling(returns, block, first_valid=1, second_moment=True)
    for window in params.volatility_windows:
        out[f"volatility_{window}"] = return_rolling.std(window, ddof=1)

    if "atr_ratio" in names:
        high, low = panel("high"), panel("low")
        previous_close = _lag(close, 1)
        true_range = np.maximum(high - low, np.maximum(np.abs(high - previous_close), np.abs(low - previous_close)))
        out["atr_ratio"] = _wilder(true_range, params.atr_window) / close
    if "stochastic_k" in names:
        high, low = panel("high"), panel("low")
        window = params.stochastic_window
        origin = (window - 1) // 2  # makes the centred scipy window the trailing one
        highest = maximum_filter1d(high, window, axis=1, origin=origin)
        lowest = minimum_filter1d(low, window, axis=1, origin=origin)
        stochastic_k = _mask_before(_safe_divide(close - lowest, highest - lowest, where_zero=0.5), window - 1)
        out["stochastic_k"] = stochastic_k
        out["stochastic_d"] = _short_mean(stochastic_k, params.stochastic_smooth, block, first_valid=window - 1)
    if "volume_ratio" in names:
        volume = panel("volume")
        window = params.volume_window
        # Not anchored: sums of non-negative values, so a window without volume sums to exactly 0.
        mean_volume = _Rolling(volume, block, anchored=False).mean(window)
        out["volume_ratio"] = _safe_divide(volume, mean_volume, where_zero=np.nan)
        dollar = _Rolling(close * volume, block, anchored=False).mean(window)
        dollar[dollar == 0] = np.nan
        out["log_dollar_volume"] = np.log(dollar)
    return out


# --------------------------------------------------------------------------------------------
# Features computed on the long rows directly
# --------------------------------------------------------------------------------------------


def _is_intraday(groups: _Groups) -> bool:
    """Whether most gaps between a symbol's consecutive bars are under one day (the median gap is)."""
    gaps = np.diff(groups.timestamps_ns)
    gaps[groups.starts[1:] - 1] = 0  # a gap across two symbols is no gap
    n_gaps = np.count_nonzero(gaps > 0)
    return n_gaps > 0 and 2 * np.count_nonzero((gaps > 0) & (gaps < _NANOS_PER_DAY)) > n_gaps


def _calendar(timestamps: _TimestampGrid, intraday: bool) -> dict[str, np.ndarray]:
    """Day of week (Monday 0), month (1..12) and, for intraday data, hour, all in UTC."""
    per_timestamp = calendar_values(timestamps.uniques_ns, intraday)
    return {name: values[timestamps.codes] for name, values in per_timestamp.items()}


def calendar_values(unique_ns: np.ndarray, intraday: bool) -> dict[str, np.ndarray]:
    """The calendar features of UTC timestamps given in nanoseconds (shared with the incremental engine)."""
    days = unique_ns // _NANOS_PER_DAY
    months = unique_ns.view("datetime64[ns]").astype("datetime64[M]").astype(np.int64)
    per_timestamp = {
        "day_of_week": ((days + 3) % 7).astype(np.float64),  # 1970-01-01 was a Thursday
        "month": (months % 12 + 1).astype(np.float64),
    }
    if intraday:
        per_timestamp["hour"] = ((unique_ns // _NANOS_PER_HOUR) % 24).astype(np.float64)
    return per_timestamp
